"""HTTP/1.x requests: request line, headers, and the first bytes of the body.

`parse_http_request` decodes one request from the start of a buffer; `parse_http_requests`
walks pipelined requests; `HttpRequestAssembler` follows one client→server byte stream
across segments. Nothing here raises: malformed input returns a `Weird`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sensor.model import HttpRequest, Weird

HEADER_CAP = 16 * 1024
"""Largest request line + header block accepted (bytes, including the empty line)."""
MAX_HEADERS = 128
MAX_METHOD_LEN = 32
DEFAULT_BODY_BUDGET = 4096

_METHODS = frozenset(
    {b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"}
)
_VERSIONS = {b"HTTP/1.0": "HTTP/1.0", b"HTTP/1.1": "HTTP/1.1"}
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_CTL = bytes(range(0x20)) + b"\x7f"
_MAX_CHUNK_LINE = 1024

_BodyState = Literal["complete", "partial", "bad"]


def looks_like_http_request(payload: bytes | bytearray) -> bool:
    """Cheap first-segment test: a known method followed by a space."""
    space = payload.find(b" ", 0, 8)
    return space > 0 and bytes(payload[:space]) in _METHODS


@dataclass(slots=True)
class _Head:
    method: str
    path: str
    version: str
    headers: tuple[tuple[str, str], ...]
    host: str | None
    user_agent: str | None
    content_length: int | None
    chunked: bool
    body_start: int
    """Offset of the first body byte in the buffer the head was parsed from."""


def _skip_empty_lines(data: bytes | bytearray, off: int) -> int:
    # RFC 9112 §2.2: ignore empty lines before the request line (left over from a previous
    # body's CRLF, typically).
    size = len(data)
    while off < size and data[off] in (0x0D, 0x0A):
        off += 1
    return off


def _find_head_end(data: bytes | bytearray, start: int, scan_from: int, limit: int) -> int:
    """Offset just past the empty line ending the header block, or -1. Bare LF accepted."""
    scan_from = max(start, scan_from)
    lf_lf = data.find(b"\n\n", scan_from, limit)
    lf_crlf = data.find(b"\n\r\n", scan_from, limit)
    if lf_lf < 0 and lf_crlf < 0:
        return -1
    if lf_crlf < 0 or 0 <= lf_lf < lf_crlf:
        return lf_lf + 2
    return lf_crlf + 3


def _request_line(line: bytes) -> tuple[str, str, str] | Weird:
    if line.endswith(b"\r"):
        line = line[:-1]
    first = line.find(b" ")
    last = line.rfind(b" ")
    if first <= 0 or last == first:
        return Weird("http.bad_request_line")
    method = line[:first]
    # Splitting at the first and the last space keeps targets with raw spaces readable.
    target = line[first + 1 : last].strip(b" ")
    version = line[last + 1 :]
    if not _TCHAR.issuperset(method) or not target:
        return Weird("http.bad_request_line")
    if len(target.translate(None, _CTL)) != len(target):
        return Weird("http.bad_request_line")
    known = _VERSIONS.get(version)
    if known is None:
        return Weird(
            "http.bad_version" if version.startswith(b"HTTP/") else "http.bad_request_line"
        )
    return method.decode("ascii"), target.decode("utf-8", "backslashreplace"), known


def _early_check(data: bytes | bytearray, start: int) -> Weird | None:
    """Reject a buffer that cannot become a request before its header block is complete."""
    head = bytes(data[start : start + MAX_METHOD_LEN + 1])
    space = head.find(b" ")
    method = head if space < 0 else head[:space]
    if space == 0 or not _TCHAR.issuperset(method):
        return Weird("http.bad_request_line")
    if space < 0 and len(head) > MAX_METHOD_LEN:
        return Weird("http.bad_request_line")
    line_end = data.find(b"\n", start, start + HEADER_CAP)
    if line_end >= 0:
        got = _request_line(bytes(data[start:line_end]))
        if isinstance(got, Weird):
            return got
    return None


def _content_length(values: list[str]) -> int | Weird | None:
    if not values:
        return None
    # RFC 9110 §8.6: a list of identical values ("5, 5") is the same as one value.
    items = {item.strip() for value in values for item in value.split(",")}
    if len(items) != 1:
        return Weird("http.bad_content_length")
    (item,) = items
    if not item.isdigit() or not item.isascii() or len(item) > 18:
        return Weird("http.bad_content_length")
    return int(item)


def _parse_head(
    data: bytes | bytearray, start: int = 0, scan_from: int = 0
) -> _Head | Weird | None:
    """Parse the request line and headers at data[start:]; None while they are incomplete."""
    limit = start + HEADER_CAP  # leading empty lines count against the cap too
    too_long = len(data) >= limit
    start = _skip_empty_lines(data, start)
    if start >= len(data):
        return Weird("http.headers_too_long") if too_long else None
    end = _find_head_end(data, start, scan_from, limit)
    if end < 0:
        early = _early_check(data, start)
        if early is not None:
            return early
        if too_long:
            return Weird("http.headers_too_long")
        return None

    lines = bytes(data[start:end]).split(b"\n")
    got = _request_line(lines[0])
    if isinstance(got, Weird):
        return got
    method, path, version = got

    names: list[str] = []
    values: list[str] = []
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            break
        if line[0] in (0x20, 0x09):
            # Obsolete line folding: RFC 9112 §5.2 lets a recipient replace it with a space.
            if not names:
                return Weird("http.bad_header")
            folded = line.strip(b" \t").decode("utf-8", "backslashreplace")
            values[-1] = f"{values[-1]} {folded}"
            continue
        colon = line.find(b":")
        if colon <= 0 or not _TCHAR.issuperset(line[:colon]):
            return Weird("http.bad_header")
        if len(names) >= MAX_HEADERS:
            return Weird("http.too_many_headers")
        names.append(line[:colon].decode("ascii").lower())
        values.append(line[colon + 1 :].strip(b" \t").decode("utf-8", "backslashreplace"))

    headers = tuple(zip(names, values, strict=True))
    host = user_agent = None
    lengths: list[str] = []
    codings = ""
    for name, value in headers:
        if name == "host":
            host = value if host is None else host
        elif name == "user-agent":
            user_agent = value if user_agent is None else user_agent
        elif name == "content-length":
            lengths.append(value)
        elif name == "transfer-encoding":
            codings = value
    content_length = _content_length(lengths)
    if isinstance(content_length, Weird):
        return content_length
    # Chunked framing when it is the final coding (RFC 9112 §6.3); it overrides Content-Length.
    chunked = codings.rsplit(",", 1)[-1].strip().lower() == "chunked"
    return _Head(method, path, version, headers, host, user_agent, content_length, chunked, end)


def _dechunk(data: bytes | bytearray, off: int, budget: int) -> tuple[bytes, int, _BodyState]:
    """Decode chunked framing from `off`: (body up to budget, end offset, state).

    Framing is followed past the budget (without copying) so pipelined requests can be found.
    """
    out = bytearray()
    size = len(data)
    while True:
        line_end = data.find(b"\n", off, off + _MAX_CHUNK_LINE)
        if line_end < 0:
            state: _BodyState = "partial" if size - off < _MAX_CHUNK_LINE else "bad"
            return bytes(out), -1, state
        size_text = bytes(data[off:line_end]).split(b";", 1)[0].strip(b" \t\r")
        if not size_text or len(size_text) > 16 or not _HEX.issuperset(size_text):
            return bytes(out), -1, "bad"
        chunk = int(size_text, 16)
        off = line_end + 1
        if chunk == 0:
            end = _find_trailer_end(data, off)
            return bytes(out), end, ("partial" if end < 0 else "complete")
        if len(out) < budget:
            out += data[off : off + min(chunk, budget - len(out))]
        off += chunk
        if off >= size:
            return bytes(out), -1, "partial"
        # The chunk data ends with CRLF (tolerate bare LF).
        if data[off] == 0x0D:
            off += 1
        if off >= size:
            return bytes(out), -1, "partial"
        if data[off] != 0x0A:
            return bytes(out), -1, "bad"
        off += 1


def _find_trailer_end(data: bytes | bytearray, off: int) -> int:
    """After the last chunk: trailer lines, then an empty line. Offset past it, or -1."""
    while True:
        line_end = data.find(b"\n", off, off + HEADER_CAP)
        if line_end < 0:
            return -1
        empty = line_end == off or (line_end == off + 1 and data[off] == 0x0D)
        off = line_end + 1
        if empty:
            return off


def _body(data: bytes | bytearray, head: _Head, budget: int) -> tuple[bytes, int, _BodyState]:
    """(body up to budget, offset past the whole body or -1, state)."""
    start = head.body_start
    if head.chunked:
        return _dechunk(data, start, budget)
    if head.content_length is None:
        return b"", start, "complete"  # a request without framing headers has no body
    end = start + head.content_length
    body = bytes(data[start : start + min(head.content_length, budget)])
    return (body, end, "complete") if end <= len(data) else (body, -1, "partial")


def _request(head: _Head, body: bytes) -> HttpRequest:
    return HttpRequest(
        method=head.method,
        path=head.path,
        version=head.version,
        host=head.host,
        user_agent=head.user_agent,
        headers=head.headers,
        body=body,
        content_length=head.content_length,
    )


def parse_http_request(
    data: bytes | bytearray, body_budget: int = DEFAULT_BODY_BUDGET
) -> HttpRequest | Weird | None:
    """Decode the request at the start of `data`.

    Returns None while the header block is incomplete (and under `HEADER_CAP`). Once it is
    complete the request is returned with whatever body bytes are present, at most
    `body_budget` (chunked bodies are de-chunked). To follow a stream, prefer
    `HttpRequestAssembler`, which does not re-parse the headers on every segment.
    """
    head = _parse_head(data)
    if head is None or isinstance(head, Weird):
        return head
    body, _end, state = _body(data, head, max(0, body_budget))
    if state == "bad":
        return Weird("http.bad_chunked")
    return _request(head, body)


def parse_http_requests(
    data: bytes | bytearray, body_budget: int = DEFAULT_BODY_BUDGET
) -> tuple[list[HttpRequest | Weird], int]:
    """Decode pipelined requests: those that are complete (headers and whole body), and the
    offset where the first incomplete one starts. A Weird ends the walk (framing is lost); the
    returned offset is then the end of the buffer."""
    out: list[HttpRequest | Weird] = []
    off = 0
    budget = max(0, body_budget)
    while off < len(data):
        head = _parse_head(data, off)
        if head is None:
            break
        if isinstance(head, Weird):
            out.append(head)
            return out, len(data)
        body, end, state = _body(data, head, budget)
        if state == "partial":
            break
        if state == "bad":
            out.append(Weird("http.bad_chunked"))
            return out, len(data)
        out.append(_request(head, body))
        off = end
    return out, off


class HttpRequestAssembler:
    """Collects one client→server byte stream into requests, one segment at a time.

    Buffers at most the header cap plus the body budget. A request is returned once its
    headers are complete and either its whole body or `body_budget` body bytes have arrived,
    or when `finish` is called. After a request whose body outran the budget, the rest of a
    Content-Length body is skipped; when the framing cannot be followed (a Weird, or a chunked
    body past the budget) the assembler waits for a segment that starts a new request.
    """

    def __init__(self, body_budget: int = DEFAULT_BODY_BUDGET) -> None:
        self.body_budget = max(0, body_budget)
        self._buf = bytearray()
        self._head: _Head | None = None
        self._scanned = 0
        self._skip = 0
        self._resync = False

    def feed(self, payload: bytes | bytearray) -> HttpRequest | Weird | None:
        """Add a segment's payload; return the next finished request, if any.

        Several pipelined requests can finish at once: call `feed(b"")` until it returns None,
        or use `feed_all`.
        """
        if self._skip and payload:
            dropped = min(self._skip, len(payload))
            self._skip -= dropped
            payload = payload[dropped:]
        if self._resync and payload:
            if not looks_like_http_request(payload):
                return None
            self._resync = False
        self._buf += payload
        return self._step()

    def feed_all(self, payload: bytes | bytearray) -> list[HttpRequest | Weird]:
        """Add a segment's payload; return every request it finished."""
        out: list[HttpRequest | Weird] = []
        got = self.feed(payload)
        while got is not None:
            out.append(got)
            got = self._step()
        return out

    def finish(self) -> HttpRequest | Weird | None:
        """The stream ended: return a request still waiting for its body, with what arrived.

        An unfinished header block is reported as ``http.incomplete_headers``.
        """
        result: HttpRequest | Weird | None = None
        if self._head is not None:
            body, _end, _state = _body(self._buf, self._head, self.body_budget)
            result = _request(self._head, body)
        elif _skip_empty_lines(self._buf, 0) < len(self._buf):
            result = Weird("http.incomplete_headers")
        self._skip = 0
        self._reset(resync=False)
        return result

    def _reset(self, resync: bool) -> None:
        self._buf.clear()
        self._head = None
        self._scanned = 0
        self._resync = resync

    def _step(self) -> HttpRequest | Weird | None:
        buf = self._buf
        if not buf or self._resync:
            return None
        if self._head is None:
            head = _parse_head(buf, 0, self._scanned)
            if head is None:
                self._scanned = max(0, len(buf) - 2)
                return None
            if isinstance(head, Weird):
                self._reset(resync=True)
                return head
            self._head = head
        head = self._head
        body, end, state = _body(buf, head, self.body_budget)
        if state == "bad":
            self._reset(resync=True)
            return Weird("http.bad_chunked")
        if state == "complete":
            del buf[:end]
            self._head = None
            self._scanned = 0
            return _request(head, body)
        raw_body = len(buf) - head.body_start
        if len(body) < self.body_budget and raw_body <= 2 * self.body_budget + _MAX_CHUNK_LINE:
            return None  # keep waiting for the body
        # Enough body for us; drop the rest of this request as it arrives.
        if head.chunked:
            self._reset(resync=True)
        else:
            self._skip = head.body_start + (head.content_length or 0) - len(buf)
            self._reset(resync=False)
        return _request(head, body)
