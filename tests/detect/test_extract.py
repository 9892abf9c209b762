from __future__ import annotations

import base64
import gzip
import json
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.detect.extract import (
    body_parts,
    dechunk,
    decompress,
    dns_name_parts,
    form_decode,
    json_unescape,
    multipart_parts,
    percent_decode,
    request_parts,
    url_parts,
)
from sensor.detect.identifiers import KnownIdentifiers, Scanner
from sensor.model import HttpRequest
from tests.detect import corpus as C

IMEI = "353456789012348"


def request(
    path: str = "/",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> HttpRequest:
    return HttpRequest(
        "POST" if body else "GET",
        path,
        "HTTP/1.1",
        "api.example.net",
        None,
        (("host", "api.example.net"), *headers),
        body,
        len(body),
    )


def test_url_parts_raw_and_decoded() -> None:
    assert url_parts("/a?b=c") == [("url", b"/a?b=c")]
    assert url_parts("/a?e=bob%40example.org&p=%2B44") == [
        ("url", b"/a?e=bob%40example.org&p=%2B44"),
        ("url", b"/a?e=bob@example.org&p=+44"),
    ]
    assert percent_decode(b"e=bob%2540example.org") == b"e=bob@example.org"


def test_headers_and_cookies_are_separate_parts() -> None:
    req = request(
        "/x",
        (
            ("user-agent", "okhttp"),
            ("cookie", "uid=bob%40example.org"),
            ("cookie", "b=2"),
            ("x-imei", IMEI),
        ),
    )
    parts = request_parts(req)
    assert ("cookie", b"uid=bob%40example.org; b=2") in parts
    assert ("cookie", b"uid=bob@example.org; b=2") in parts
    (header,) = [d for loc, d in parts if loc == "header"]
    assert b"x-imei: " + IMEI.encode() in header and b"cookie" not in header


def test_authorization_is_decoded() -> None:
    basic = "Basic " + base64.b64encode(b"bob@example.org:pw").decode()
    assert ("header", b"bob@example.org:pw") in request_parts(
        request(headers=(("authorization", basic),))
    )
    claims = base64.urlsafe_b64encode(b'{"sub":"bob@example.org"}').rstrip(b"=").decode()
    jwt = f"Bearer eyJhbGciOiJIUzI1NiJ9.{claims}.c2lnbmF0dXJl"
    assert ("header", b'{"sub":"bob@example.org"}') in request_parts(
        request(headers=(("authorization", jwt),))
    )


def test_dechunk() -> None:
    assert dechunk(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n") == b"hello world"
    assert dechunk(b"5\r\nhello\r\n6\r\n wo") == b"hello wo"  # truncated by the body budget
    assert dechunk(b'{"a": 1}') is None
    # the decoder usually de-chunks already: then the body is left alone
    assert body_parts(b'{"a": 1}', transfer_encoding="chunked")[0] == b'{"a": 1}'


def test_decompress_gzip_deflate_and_raw_deflate() -> None:
    data = b'{"imei": "%s"}' % IMEI.encode()
    assert decompress(gzip.compress(data), "gzip") == data
    assert decompress(gzip.compress(data) + gzip.compress(data), "x-gzip") == data * 2
    assert decompress(zlib.compress(data), "deflate") == data
    raw = zlib.compressobj(wbits=-15)
    assert decompress(raw.compress(data) + raw.flush(), "deflate") == data
    assert decompress(data, "br") is None
    assert decompress(b"not gzip", "gzip") is None


def test_truncated_gzip_gives_what_arrived() -> None:
    data = json.dumps({"k": ["x" * 20] * 500, "imei": IMEI}).encode()
    packed = gzip.compress(data)
    out = decompress(packed[: len(packed) // 2], "gzip")
    assert out is not None and 0 < len(out) < len(data) and data.startswith(out)


def test_zip_bomb_is_capped() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20))
    assert len(bomb) < 128 << 10
    out = decompress(bomb, "gzip", limit=1 << 20)
    assert out is not None and len(out) == 1 << 20
    parts = body_parts(bomb, content_encoding="gzip", max_decompressed=4096)
    assert max(len(p) for p in parts) == 4096


def test_gzip_sniffed_without_header() -> None:
    data = b'{"email": "bob@example.org"}'
    assert body_parts(gzip.compress(data))[0] == data


def test_form_and_json_views() -> None:
    form = b"e=bob%40example.org&p=%2B44+20+7946+0123"
    assert form_decode(form) == b"e=bob@example.org&p=+44 20 7946 0123"
    assert body_parts(form, content_type="application/x-www-form-urlencoded") == [
        form,
        form_decode(form),
    ]
    js = b'{"e": "bob\\u0040example.org", "u": "http:\\/\\/x"}'
    assert json_unescape(js) == b'{"e": "bob@example.org", "u": "http://x"}'
    assert body_parts(js, content_type="application/json; charset=utf-8")[1] == json_unescape(js)


def test_multipart() -> None:
    inner = base64.b64encode(b"imei=" + IMEI.encode())
    body = (
        b"--XyZ\r\ncontent-disposition: form-data; name=a\r\n\r\nhello\r\n"
        b"--XyZ\r\ncontent-transfer-encoding: base64\r\n\r\n" + inner + b"\r\n--XyZ--\r\n"
    )
    parts = multipart_parts(body, b"XyZ")
    assert b"imei=" + IMEI.encode() in parts
    views = body_parts(body, content_type='multipart/form-data; boundary="XyZ"')
    assert b"imei=" + IMEI.encode() in views


def test_dns_name_parts() -> None:
    hexed = IMEI.encode().hex()
    assert IMEI.encode() in dns_name_parts(f"{hexed}.t.example.net").split(b"\n")
    split = f"{hexed[:20]}.{hexed[20:]}.t.example.net"
    assert IMEI.encode() in dns_name_parts(split).split(b"\n")
    b32 = base64.b32encode(IMEI.encode()).decode().rstrip("=").lower()
    assert IMEI.encode() in dns_name_parts(f"{b32}.x.example.net.").split(b"\n")
    assert dns_name_parts("www.example.net").split(b"\n")[0] == b"www.example.net"


def test_leaks_inside_requests_are_found_end_to_end() -> None:
    corpus = C.build_corpus(n_imei=10, n_contacts=5, n_decoy=10)
    scanner = C.scanner_for(corpus)
    missed = []
    for sample in C.request_samples(random.Random(7), corpus.known_values):
        found = scanner.scan_parts(request_parts(sample.request))
        if not any(f.kind == sample.kind and f.known for f in found):
            missed.append(sample.name)
    assert not missed


def test_benign_requests_are_clean() -> None:
    corpus = C.build_corpus(n_imei=10, n_contacts=5, n_decoy=10)
    scanner = C.scanner_for(corpus)
    rng = random.Random(11)
    noisy = {}
    for i in range(300):
        found = scanner.scan_parts(request_parts(C.benign_request(rng)))
        if found:
            noisy[i] = [(f.kind, f.location) for f in found]
    assert not noisy


def test_structural_find_through_gzip_and_escapes() -> None:
    scanner = Scanner(KnownIdentifiers(b"k", "GB"))
    body = gzip.compress(json.dumps({"imei": IMEI, "mail": "bob\u0040example.org"}).encode())
    req = request("/up", (("content-encoding", "gzip"),), body)
    found = scanner.scan_parts(request_parts(req))
    assert {(f.kind, f.location) for f in found} == {("imei", "body"), ("email", "body")}


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", ""])
@settings(max_examples=100, deadline=None)
@given(
    body=st.binary(max_size=300),
    ctype=st.sampled_from(
        ["", "application/json", "multipart/x; boundary=a", "application/x-www-form-urlencoded"]
    ),
)
def test_body_parts_never_raise(encoding: str, body: bytes, ctype: str) -> None:
    parts = body_parts(
        body, content_type=ctype, content_encoding=encoding, transfer_encoding="chunked"
    )
    assert parts and all(isinstance(p, bytes) for p in parts)


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=120))
def test_dns_name_parts_never_raise(name: str) -> None:
    assert isinstance(dns_name_parts(name), bytes)
