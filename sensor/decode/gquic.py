"""gQUIC's CHLO handshake message (Q024-Q046, Q050): the server name in its SNI tag.

The QUIC decoder (`sensor.decode.quic`) finds the message in a client's cleartext STREAM or
decrypted CRYPTO frames; this module reads it. Pure functions; bad input is a `Weird`:
``quic.not_client_hello`` (not a CHLO) or ``quic.bad_chlo`` (a malformed tag table or SNI).
A CHLO is not TLS, so its `ClientHello` has no JA4.
"""

from __future__ import annotations

from sensor.model import ClientHello, Weird

__all__ = ["chlo_length", "parse_chlo"]

_NOT_CLIENT_HELLO = Weird("quic.not_client_hello")
_BAD_CHLO = Weird("quic.bad_chlo")


def parse_chlo(message: bytes) -> ClientHello | Weird:
    """The server name (SNI tag) of a gQUIC CHLO handshake message.

    Layout: tag "CHLO", entry count (uint16 LE), 2 bytes padding, then per entry a tag and the
    end offset of its value (uint32 LE, non-decreasing), then the values back to back.
    """
    if len(message) < 8 or message[:4] != b"CHLO":
        return _NOT_CLIENT_HELLO
    count = int.from_bytes(message[4:6], "little")
    values = 8 + 8 * count
    if values > len(message):
        return _BAD_CHLO
    sni: str | None = None
    start = 0
    for i in range(count):
        entry = 8 + 8 * i
        end = int.from_bytes(message[entry + 4 : entry + 8], "little")
        if end < start or values + end > len(message):
            return _BAD_CHLO
        if message[entry : entry + 4] == b"SNI\x00":
            raw = message[values + start : values + end]
            try:
                sni = raw.decode("ascii")
            except UnicodeDecodeError:
                return _BAD_CHLO
            if not sni or not sni.isprintable():
                return _BAD_CHLO
        start = end
    return ClientHello(sni=sni, legacy_version=0)


def chlo_length(buf: bytes | bytearray) -> int | None:
    """The length of the CHLO message starting ``buf``, None until its tag table is there."""
    if len(buf) < 8:
        return None
    count = int.from_bytes(buf[4:6], "little")
    values = 8 + 8 * count
    if len(buf) < values:
        return None
    last = int.from_bytes(buf[values - 4 : values], "little") if count else 0
    return values + last
