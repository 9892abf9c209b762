from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode.http import (
    HEADER_CAP,
    HttpRequestAssembler,
    looks_like_http_request,
    parse_http_request,
    parse_http_requests,
)
from sensor.model import HttpRequest, Weird
from tests.builders_proto import chunked, http_request


def _req(data: bytes, budget: int = 4096) -> HttpRequest:
    got = parse_http_request(data, budget)
    assert isinstance(got, HttpRequest), got
    return got


# --- looks_like_http_request ------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"]
)
def test_looks_like_http_request_methods(method: str) -> None:
    assert looks_like_http_request(f"{method} / HTTP/1.1\r\n".encode())


@pytest.mark.parametrize(
    "payload",
    [b"", b"GET", b"GET/ HTTP/1.1", b"get / HTTP/1.1", b"\x16\x03\x01\x02\x00", b"HTTP/1.1 200 OK"],
)
def test_looks_like_http_request_rejects(payload: bytes) -> None:
    assert not looks_like_http_request(payload)


# --- single requests --------------------------------------------------------------------------


def test_get() -> None:
    req = _req(http_request("GET", "/v1/ping?id=42", headers=[("User-Agent", "Roku/DVP-14.0")]))
    assert req == HttpRequest(
        method="GET",
        path="/v1/ping?id=42",
        version="HTTP/1.1",
        host="www.example.com",
        user_agent="Roku/DVP-14.0",
        headers=(("host", "www.example.com"), ("user-agent", "Roku/DVP-14.0")),
        body=b"",
        content_length=None,
    )


def test_header_order_case_and_whitespace() -> None:
    data = (
        b"GET / HTTP/1.0\r\nX-B:  two \r\nx-a:\tone\r\nHOST: Example.com:8080\r\n"
        b"X-B: again\r\nUser-Agent: first\r\nUser-Agent: second\r\n\r\n"
    )
    req = _req(data)
    assert req.version == "HTTP/1.0"
    assert req.headers == (
        ("x-b", "two"),
        ("x-a", "one"),
        ("host", "Example.com:8080"),
        ("x-b", "again"),
        ("user-agent", "first"),
        ("user-agent", "second"),
    )
    assert (req.host, req.user_agent) == ("Example.com:8080", "first")


def test_post_with_body_and_budget() -> None:
    body = b'{"serial":"SN-0001","mac":"02:00:5e:10:00:01"}'
    data = http_request("POST", "/telemetry", body=body)
    assert _req(data).body == body
    assert _req(data).content_length == len(body)
    assert _req(data, budget=10).body == body[:10]
    assert _req(data, budget=0).body == b""
    # Body not all there yet: what has arrived.
    assert _req(data[:-5]).body == body[:-5]


def test_no_framing_headers_means_no_body() -> None:
    data = http_request("GET", "/a") + b"trailing garbage"
    assert _req(data).body == b""


def test_bare_lf_and_leading_empty_lines() -> None:
    data = b"\r\n\nPOST /x HTTP/1.1\nHost: h.example.com\nContent-Length: 3\n\nabc"
    req = _req(data)
    assert (req.method, req.host, req.body) == ("POST", "h.example.com", b"abc")
    mixed = b"GET / HTTP/1.1\r\nHost: m.example.com\n\r\n"
    assert _req(mixed).host == "m.example.com"


def test_obs_fold_joins_value() -> None:
    req = _req(b"GET / HTTP/1.1\r\nX-Long: part one\r\n  part two\r\n\r\n")
    assert req.headers == (("x-long", "part one part two"),)


def test_target_with_raw_space_and_non_ascii() -> None:
    req = _req(b"GET /a b/\xc3\xa9\xff HTTP/1.1\r\n\r\n")
    assert req.path == "/a b/\u00e9\\xff"


def test_other_methods_are_parsed() -> None:
    assert _req(b"PROPFIND /dav HTTP/1.1\r\n\r\n").method == "PROPFIND"


def test_partial_headers_return_none_at_every_prefix() -> None:
    data = http_request("GET", "/", headers=[("User-Agent", "x"), ("Accept", "*/*")])
    for cut in range(len(data) - 1):
        assert parse_http_request(data[:cut]) is None, cut
    assert isinstance(parse_http_request(data), HttpRequest)


def test_headers_too_long() -> None:
    big = http_request(headers=[("X-Pad", "a" * HEADER_CAP)])
    assert parse_http_request(big) == Weird("http.headers_too_long")
    assert parse_http_request(big[: HEADER_CAP - 100]) is None
    assert parse_http_request(big[: HEADER_CAP + 1]) == Weird("http.headers_too_long")
    many = http_request(headers=[(f"X-{i}", "v") for i in range(200)])
    assert parse_http_request(many) == Weird("http.too_many_headers")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1 extra\r\n\r\n", "http.bad_request_line"),
        (b"GET /\r\n\r\n", "http.bad_request_line"),
        (b"GET\r\n\r\n", "http.bad_request_line"),
        (b"GET  HTTP/1.1\r\n\r\n", "http.bad_request_line"),
        (b"G(T / HTTP/1.1\r\n\r\n", "http.bad_request_line"),
        (b"GET /\x00 HTTP/1.1\r\n\r\n", "http.bad_request_line"),
        (b"GET / FTP/1.0\r\n\r\n", "http.bad_request_line"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http.bad_version"),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", "http.bad_header"),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "http.bad_header"),
        (b"GET / HTTP/1.1\r\n: a\r\n\r\n", "http.bad_header"),
        (b"GET / HTTP/1.1\r\n folded\r\n\r\n", "http.bad_header"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "http.bad_content_length",
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "http.bad_content_length"),
        (b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", "http.bad_content_length"),
        (b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n", "http.bad_content_length"),
    ],
)
def test_malformed(data: bytes, reason: str) -> None:
    assert parse_http_request(data) == Weird(reason)


def test_repeated_equal_content_length_is_fine() -> None:
    req = _req(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok")
    assert (req.content_length, req.body) == (2, b"ok")


def test_garbage_is_rejected_before_headers_complete() -> None:
    assert parse_http_request(b"\x16\x03\x01\x02\x00\x01\x00") == Weird("http.bad_request_line")
    assert parse_http_request(b"GET / HTTP/3\r\nHost: a") == Weird("http.bad_version")
    assert parse_http_request(b"A" * 40) == Weird("http.bad_request_line")
    assert parse_http_request(b"GET / HTTP/1.1\r\nHost: a") is None


def test_chunked_body() -> None:
    body = b"hello chunked world, twenty-nine+"
    head = http_request("POST", "/c", headers=[("Transfer-Encoding", "chunked")])
    data = head + chunked(body, 7)
    req = _req(data)
    assert (req.body, req.content_length) == (body, None)
    assert _req(data, budget=9).body == body[:9]
    assert body.startswith(_req(data[:-12]).body)  # partial: what has arrived
    ext = head + b"5;name=val\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert _req(ext).body == b"hello"
    assert parse_http_request(head + b"zz\r\nhello\r\n0\r\n\r\n") == Weird("http.bad_chunked")
    assert parse_http_request(head + b"5\r\nhelloXX0\r\n\r\n") == Weird("http.bad_chunked")


def test_chunked_is_the_final_coding_only() -> None:
    data = http_request(headers=[("Transfer-Encoding", "chunked, gzip")]) + b"raw"
    assert _req(data).body == b""


def test_every_prefix_of_a_post_never_raises() -> None:
    data = http_request("POST", "/x", body=b"0123456789")
    for cut in range(len(data) + 1):
        got = parse_http_request(data[:cut])
        assert got is None or isinstance(got, HttpRequest), (cut, got)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(parse_http_request(data), HttpRequest | Weird | type(None))
    assert isinstance(
        parse_http_request(b"GET / HTTP/1.1\r\n" + data), HttpRequest | Weird | type(None)
    )
    assert isinstance(parse_http_requests(data)[0], list)
    HttpRequestAssembler(16).feed_all(data)


# --- pipelining -------------------------------------------------------------------------------


def test_pipelined_requests() -> None:
    one = http_request("GET", "/1")
    two = http_request("POST", "/2", body=b"abcdef")
    three = http_request("POST", "/3", headers=[("Transfer-Encoding", "chunked")]) + chunked(b"xyz")
    four = http_request("GET", "/4")
    data = one + two + three + four[:-3]
    reqs, consumed = parse_http_requests(data, body_budget=4)
    assert [r.path for r in reqs if isinstance(r, HttpRequest)] == ["/1", "/2", "/3"]
    assert [r.body for r in reqs if isinstance(r, HttpRequest)] == [b"", b"abcd", b"xyz"]
    assert consumed == len(one + two + three)
    assert parse_http_requests(data[consumed:] + four[-3:]) == (
        [parse_http_request(four)],
        len(four),
    )


def test_pipelined_stops_at_weird() -> None:
    data = http_request("GET", "/1") + b"BAD\x00LINE\r\n\r\n" + http_request("GET", "/3")
    reqs, consumed = parse_http_requests(data)
    assert reqs[-1] == Weird("http.bad_request_line") and len(reqs) == 2
    assert consumed == len(data)


# --- assembler --------------------------------------------------------------------------------


def _feed_bytes(asm: HttpRequestAssembler, data: bytes) -> list[HttpRequest | Weird]:
    out: list[HttpRequest | Weird] = []
    for i in range(len(data)):
        out.extend(asm.feed_all(data[i : i + 1]))
    return out


def test_assembler_waits_for_content_length_body() -> None:
    data = http_request("POST", "/up", body=b"0123456789")
    asm = HttpRequestAssembler()
    results: list[HttpRequest | Weird | None] = [
        asm.feed(data[i : i + 1]) for i in range(len(data))
    ]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == parse_http_request(data)


def test_assembler_stops_at_budget_and_skips_the_rest() -> None:
    body = bytes(range(256)) * 4
    data = http_request("PUT", "/blob", body=body) + http_request("GET", "/next")
    asm = HttpRequestAssembler(body_budget=100)
    got = _feed_bytes(asm, data)
    assert [r.path for r in got if isinstance(r, HttpRequest)] == ["/blob", "/next"]
    assert isinstance(got[0], HttpRequest) and got[0].body == body[:100]


def test_assembler_segments_in_any_split() -> None:
    stream = (
        http_request("GET", "/a")
        + http_request("POST", "/b", body=b"hello")
        + http_request("POST", "/c", headers=[("Transfer-Encoding", "chunked")])
        + chunked(b"chunky data", 3)
        + http_request("GET", "/d", eol=b"\n")
    )
    expected, consumed = parse_http_requests(stream)
    assert consumed == len(stream) and len(expected) == 4
    for cut in range(0, len(stream) + 1, 7):
        for cut2 in (cut + 1, cut + 50):
            asm = HttpRequestAssembler()
            got = asm.feed_all(stream[:cut]) + asm.feed_all(stream[cut:cut2])
            got += asm.feed_all(stream[cut2:])
            assert got == expected, (cut, cut2)
            assert asm.finish() is None


def test_assembler_pipelined_in_one_segment_with_feed() -> None:
    asm = HttpRequestAssembler()
    first = asm.feed(http_request("GET", "/1") + http_request("GET", "/2"))
    assert isinstance(first, HttpRequest) and first.path == "/1"
    second = asm.feed(b"")
    assert isinstance(second, HttpRequest) and second.path == "/2"
    assert asm.feed(b"") is None


def test_assembler_finish() -> None:
    asm = HttpRequestAssembler()
    data = http_request("POST", "/p", body=b"0123456789")
    assert asm.feed(data[:-4]) is None
    done = asm.finish()
    assert isinstance(done, HttpRequest) and done.body == b"012345"
    assert asm.feed(b"GET / HTTP/1.1\r\nHost: a") is None
    assert asm.finish() == Weird("http.incomplete_headers")
    assert asm.finish() is None


def test_assembler_resyncs_after_weird() -> None:
    asm = HttpRequestAssembler()
    assert asm.feed(b"GET / HTTP/1.1\r\nbroken header\r\n\r\n") == Weird("http.bad_header")
    assert asm.feed(b"more junk from the broken request") is None
    assert asm.feed(b"\x00\x01") is None
    req = asm.feed(http_request("GET", "/ok"))
    assert isinstance(req, HttpRequest) and req.path == "/ok"


def test_assembler_chunked_past_budget_resyncs() -> None:
    asm = HttpRequestAssembler(body_budget=8)
    head = http_request("POST", "/c", headers=[("Transfer-Encoding", "chunked")])
    req = asm.feed(head + b"40\r\n" + b"z" * 20)
    assert isinstance(req, HttpRequest) and req.body == b"z" * 8
    assert asm.feed(b"z" * 44 + b"\r\n0\r\n\r\n") is None
    nxt = asm.feed(http_request("GET", "/after"))
    assert isinstance(nxt, HttpRequest) and nxt.path == "/after"


def test_endless_empty_lines_are_bounded() -> None:
    assert parse_http_request(b"\r\n" * 100) is None
    assert parse_http_request(b"\r\n" * HEADER_CAP) == Weird("http.headers_too_long")
    asm = HttpRequestAssembler()
    results = [asm.feed(b"\r\n" * 1000) for _ in range(10)]
    assert Weird("http.headers_too_long") in results


def test_assembler_huge_headers() -> None:
    asm = HttpRequestAssembler()
    assert asm.feed(b"GET / HTTP/1.1\r\n") is None
    results = [asm.feed(b"X-Pad: " + b"a" * 1000 + b"\r\n") for _ in range(20)]
    assert Weird("http.headers_too_long") in results
    assert results[-1] is None  # dropped while resyncing
