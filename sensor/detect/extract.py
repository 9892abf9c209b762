"""Turn what a device sent into byte strings worth scanning for identifiers.

Pure functions, bytes in, bytes out; they never raise on malformed input (a part that cannot be
decoded is scanned as it is). Each part is tagged with the location the scanner reports:
``url`` (the request target, raw and percent-decoded), ``header`` (all headers but Cookie),
``cookie``, ``body`` (after de-chunking, bounded decompression and per-content-type decoding) and
``dns`` (a query name with its long labels decoded).
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
import zlib
from typing import Final

from sensor.detect.identifiers import Location
from sensor.model import HttpRequest

MAX_DECOMPRESSED: Final = 1 << 20
"""Default cap on the bytes a compressed body may expand to (defeats zip bombs)."""
MAX_MULTIPART_PARTS: Final = 64

Part = tuple[Location, bytes]

_JSON_ESCAPE: Final = re.compile(rb"\\u([0-9a-fA-F]{4})|\\/")
_HEX_LABEL: Final = re.compile(r"[0-9a-f]+")
_B32_LABEL: Final = re.compile(r"[a-z2-7]+")
_JWT: Final = re.compile(r"[A-Za-z0-9_-]{8,}\.([A-Za-z0-9_-]{8,})\.[A-Za-z0-9_-]*")
_MIN_ENCODED_LABEL: Final = 16


def request_parts(req: HttpRequest, *, max_decompressed: int = MAX_DECOMPRESSED) -> list[Part]:
    """Every scannable part of one HTTP request."""
    parts: list[Part] = [(loc, data) for loc, data in url_parts(req.path)]
    header_lines: list[bytes] = []
    cookies: list[bytes] = []
    content_type = content_encoding = transfer_encoding = ""
    for name, value in req.headers:
        raw = value.encode("utf-8", "surrogateescape")
        if name == "cookie":
            cookies.append(raw)
            continue
        header_lines.append(name.encode("ascii", "replace") + b": " + raw)
        if name == "content-type":
            content_type = value
        elif name == "content-encoding":
            content_encoding = value
        elif name == "transfer-encoding":
            transfer_encoding = value
        elif name == "authorization":
            decoded = _decode_authorization(value)
            if decoded:
                parts.append(("header", decoded))
    if header_lines:
        block = b"\r\n".join(header_lines)
        parts.append(("header", block))
        if b"%" in block:
            parts.append(("header", percent_decode(block)))
    if cookies:
        block = b"; ".join(cookies)
        parts.append(("cookie", block))
        if b"%" in block:
            parts.append(("cookie", percent_decode(block)))
    if req.body:
        for data in body_parts(
            req.body,
            content_type=content_type,
            content_encoding=content_encoding,
            transfer_encoding=transfer_encoding,
            max_decompressed=max_decompressed,
        ):
            parts.append(("body", data))
    return parts


def url_parts(target: str) -> list[Part]:
    """The request target as sent and, if it has escapes, percent-decoded (``+`` kept)."""
    raw = target.encode("utf-8", "surrogateescape")
    parts: list[Part] = [("url", raw)]
    if b"%" in raw:
        parts.append(("url", percent_decode(raw)))
    return parts


def percent_decode(data: bytes) -> bytes:
    """Percent-decoding, applied twice when the first pass revealed more escapes (``%2540``)."""
    once = urllib.parse.unquote_to_bytes(data)
    if b"%" in once and once != data and re.search(rb"%[0-9a-fA-F]{2}", once):
        return urllib.parse.unquote_to_bytes(once)
    return once


def form_decode(data: bytes) -> bytes:
    """``application/x-www-form-urlencoded`` decoding: ``+`` is a space, then percent-escapes."""
    return urllib.parse.unquote_to_bytes(data.replace(b"+", b" "))


def json_unescape(data: bytes) -> bytes:
    r"""Replace JSON ``\uXXXX`` and ``\/`` escapes; everything else is left as it is."""

    def repl(m: re.Match[bytes]) -> bytes:
        code = m.group(1)
        if code is None:
            return b"/"
        return chr(int(code, 16)).encode("utf-8", "surrogatepass")

    return _JSON_ESCAPE.sub(repl, data)


def dechunk(data: bytes) -> bytes | None:
    """Undo HTTP/1.1 chunked framing; None if ``data`` does not start with a chunk header.
    A truncated or broken stream gives the chunks before the damage."""
    out = bytearray()
    off = 0
    chunks = 0
    size = len(data)
    while off < size:
        line_end = data.find(b"\n", off, off + 1024)
        if line_end < 0:
            break
        size_text = data[off:line_end].split(b";", 1)[0].strip(b" \t\r")
        try:
            chunk = int(size_text, 16)
        except ValueError:
            break
        if chunk == 0:
            break
        chunks += 1
        off = line_end + 1
        out += data[off : off + chunk]
        off += chunk
        if data[off : off + 2] == b"\r\n":
            off += 2
        elif data[off : off + 1] == b"\n":
            off += 1
        elif off < size:
            break
    return bytes(out) if chunks else None


def decompress(data: bytes, encoding: str, limit: int = MAX_DECOMPRESSED) -> bytes | None:
    """Inflate a gzip or deflate (zlib-wrapped or raw) body to at most ``limit`` bytes.

    A truncated stream gives what could be inflated; None if the encoding is not one we can
    undo or the data is not in it.
    """
    enc = encoding.strip().lower()
    if enc in ("gzip", "x-gzip"):
        attempts: tuple[int, ...] = (16 + zlib.MAX_WBITS,)
    elif enc == "deflate":
        attempts = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    else:
        return None
    for wbits in attempts:
        out = _inflate(data, wbits, limit)
        if out is not None:
            return out
    return None


def _inflate(data: bytes, wbits: int, limit: int) -> bytes | None:
    out = bytearray()
    pending = data
    try:
        while pending and len(out) < limit:
            d = zlib.decompressobj(wbits)
            out += d.decompress(pending, limit - len(out))
            if not d.eof:
                break
            pending = d.unused_data  # another gzip member follows
    except zlib.error:
        return bytes(out) if out else None
    return bytes(out)


def body_parts(
    body: bytes,
    *,
    content_type: str = "",
    content_encoding: str = "",
    transfer_encoding: str = "",
    max_decompressed: int = MAX_DECOMPRESSED,
) -> list[bytes]:
    """The body, de-chunked and (where it was compressed and could be) inflated, first; then
    whatever decoded views of it the headers or its first bytes call for."""
    if "chunked" in transfer_encoding.lower():
        plain = dechunk(body)
        if plain is not None:
            body = plain
    out = [body]
    encodings = [e for e in content_encoding.lower().replace(" ", "").split(",") if e]
    if not encodings and body[:2] == b"\x1f\x8b":
        encodings = ["gzip"]  # some SDKs gzip without saying so
    inflated: bytes | None = body
    for enc in reversed(encodings):
        if enc == "identity" or inflated is None:
            continue
        inflated = decompress(inflated, enc, max_decompressed)
    if encodings and inflated is not None and inflated is not body:
        body = inflated
        out = [body]
    out.extend(_decoded_views(body, content_type))
    return out


def _decoded_views(body: bytes, content_type: str) -> list[bytes]:
    ctype, _, params = content_type.partition(";")
    ctype = ctype.strip().lower()
    head = body[:64].lstrip()
    views: list[bytes] = []
    if ctype.startswith("multipart/"):
        boundary = _param(params, "boundary")
        if boundary:
            for part in multipart_parts(body, boundary.encode("latin-1", "replace")):
                views.append(part)
                unescaped = json_unescape(part)
                if unescaped != part:
                    views.append(unescaped)
        return views
    if ctype == "application/x-www-form-urlencoded" or (
        not ctype and b"=" in head and (b"%" in body or b"+" in body) and b" " not in head
    ):
        decoded = form_decode(body)
        if decoded != body:
            views.append(decoded)
    is_json = ctype.endswith("json") or head[:1] in (b"{", b"[")
    if (is_json and b"\\" in body) or b"\\u" in body:
        unescaped = json_unescape(body)
        if unescaped != body:
            views.append(unescaped)
    return views


def multipart_parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts of a ``multipart/*`` body (each with its own headers); a part sent with
    ``Content-Transfer-Encoding: base64`` (or quoted-printable) also yields its decoded
    content."""
    out: list[bytes] = []
    delimiter = b"--" + boundary
    for chunk in body.split(delimiter)[1 : MAX_MULTIPART_PARTS + 1]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.strip(b"\r\n")
        out.append(chunk)
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = chunk.partition(b"\n\n")
        if not sep:
            continue
        cte = _header_value(head, b"content-transfer-encoding").lower()
        try:
            if cte == b"base64":
                out.append(base64.b64decode(b"".join(content.split()), validate=False))
            elif cte == b"quoted-printable":
                out.append(binascii.a2b_qp(content))
        except (binascii.Error, ValueError):
            pass
    return out


def dns_name_parts(qname: str) -> bytes:
    """A query name as scannable bytes: the name, its labels joined (data split over labels),
    and hex or base32 decodings of long labels and of runs of such labels, one per line."""
    name = qname.strip().rstrip(".").lower()
    labels = [label for label in name.split(".") if label]
    pieces = [name.encode("utf-8", "replace"), "".join(labels).encode("utf-8", "replace")]
    for run in _label_runs(labels):
        if len(run) < _MIN_ENCODED_LABEL:
            continue
        if _HEX_LABEL.fullmatch(run) and len(run) % 2 == 0:
            pieces.append(bytes.fromhex(run))
        if _B32_LABEL.fullmatch(run):
            decoded = _b32(run)
            if decoded is not None:
                pieces.append(decoded)
    return b"\n".join(pieces)


def _label_runs(labels: list[str]) -> list[str]:
    """Each label, and each run of two or more consecutive labels joined (an encoded payload
    longer than 63 characters has to be split over labels)."""
    runs = list(labels)
    for i in range(len(labels)):
        for j in range(i + 2, min(len(labels), i + 8) + 1):
            runs.append("".join(labels[i:j]))
    return list(dict.fromkeys(runs))


def _b32(text: str) -> bytes | None:
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        return base64.b32decode(padded)
    except (binascii.Error, ValueError):
        return None


def _param(params: str, name: str) -> str | None:
    for item in params.split(";"):
        key, _, value = item.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"') or None
    return None


def _header_value(head: bytes, name: bytes) -> bytes:
    for line in head.splitlines():
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return b""


def _decode_authorization(value: str) -> bytes | None:
    """Decoded credentials: Basic (``user:password``) or the claims of a bearer JWT."""
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    try:
        if scheme.lower() == "basic" and token:
            return base64.b64decode(token + "=" * (-len(token) % 4), validate=False)
        m = _JWT.fullmatch(token) if scheme.lower() == "bearer" else None
        if m:
            claims = m.group(1)
            return base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4))
    except (binascii.Error, ValueError):
        return None
    return None
