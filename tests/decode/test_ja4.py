"""JA4 against the specification's worked example and rules (FoxIO-LLC/ja4,
technical_details/JA4.md), and on hellos from real clients. Agreement with an independent
implementation on captures is in tests/test_ja4_agreement.py."""

from __future__ import annotations

import hashlib

import pytest

from sensor.decode.ja4 import EMPTY_HASH, alpn_chars, fingerprint, version_code
from sensor.decode.tls import parse_client_hello
from sensor.model import ClientHello
from tests.builders import client_hello_message, ech_client_hello, synthetic_client_hello

# The specification's example: 15 ciphers, 16 extensions (SNI and ALPN among them), h2.
SPEC_CIPHERS = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8]
SPEC_CIPHERS += [0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
SPEC_EXTENSIONS = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005]
SPEC_EXTENSIONS += [0x0023, 0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015]
SPEC_SIGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]


def spec(**changes: object) -> str:
    args: dict[str, object] = {
        "quic": False,
        "legacy_version": 0x0303,
        "supported_versions": [0x0304, 0x0303],
        "ciphers": SPEC_CIPHERS,
        "extensions": SPEC_EXTENSIONS,
        "signature_algorithms": SPEC_SIGS,
        "first_alpn": b"h2",
    }
    args.update(changes)
    return fingerprint(**args)  # type: ignore[arg-type]


def test_spec_example() -> None:
    assert spec() == "t13d1516h2_8daaf6152771_e5627efa2ab1"


def test_spec_hash_inputs() -> None:
    # The strings the specification hashes, and their truncated sha256 as it prints them.
    ciphers = "002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"
    exts = "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"
    sigs = "0403,0804,0401,0503,0805,0501,0806,0601"
    assert hashlib.sha256(ciphers.encode()).hexdigest()[:12] == "8daaf6152771"
    assert hashlib.sha256(f"{exts}_{sigs}".encode()).hexdigest()[:12] == "e5627efa2ab1"
    # Without signature algorithms the string ends without an underscore.
    assert spec(signature_algorithms=[]).endswith("_6d807ffa2a79")


def test_grease_is_ignored_everywhere() -> None:
    greased = spec(
        ciphers=[0x0A0A, *SPEC_CIPHERS],
        extensions=[0x1A1A, *SPEC_EXTENSIONS, 0xFAFA],
        signature_algorithms=[0x2A2A, *SPEC_SIGS],
        supported_versions=[0x3A3A, 0x0304, 0x0303],
    )
    assert greased == spec()


def test_order_does_not_matter_but_sigalg_order_does() -> None:
    assert spec(ciphers=SPEC_CIPHERS[::-1], extensions=SPEC_EXTENSIONS[::-1]) == spec()
    assert spec(signature_algorithms=SPEC_SIGS[::-1]) != spec()


def test_quic_and_sni_markers() -> None:
    assert spec(quic=True).startswith("q13d")
    no_sni = spec(extensions=[e for e in SPEC_EXTENSIONS if e != 0])
    assert no_sni.startswith("t13i1515h2_8daaf6152771_")
    # SNI and ALPN are counted but not hashed: the third part does not change without SNI.
    assert no_sni.split("_")[2] == spec().split("_")[2]


@pytest.mark.parametrize(
    ("legacy", "supported", "code"),
    [
        (0x0303, [0x0304, 0x0303], "13"),
        (0x0303, [0x7A7A, 0x0303], "12"),
        (0x0303, [], "12"),
        (0x0302, [], "11"),
        (0x0301, [], "10"),
        (0x0300, [], "s3"),
        (0x0002, [], "s2"),
        (0xFEFD, [], "d2"),
        (0x0303, [0x0305], "00"),
    ],
)
def test_version(legacy: int, supported: list[int], code: str) -> None:
    assert version_code(legacy, supported) == code


@pytest.mark.parametrize(
    ("alpn", "chars"),
    [
        (None, "00"),
        (b"", "00"),
        (b"h2", "h2"),
        (b"http/1.1", "h1"),
        (b"h3", "h3"),
        (b"x", "xx"),
        # The specification's examples for ends that are not ASCII letters or digits.
        (b"\xab", "ab"),
        (b"\x20", "20"),
        (b"\xab\xcd", "ad"),
        (b"\x20\x61", "21"),
        (b"\x30\xab", "3b"),
        (b"\x61\x20", "60"),
        (b"\x30\x31\xab\xcd", "3d"),
        (b"\x30\xab\xcd\x31", "01"),
    ],
)
def test_alpn_chars(alpn: bytes | None, chars: str) -> None:
    assert alpn_chars(alpn) == chars


def test_empty_lists_read_as_zeros() -> None:
    empty = spec(ciphers=[0x0A0A], extensions=[0x0000, 0x0010], signature_algorithms=[])
    assert empty == f"t13d0002h2_{EMPTY_HASH}_{EMPTY_HASH}"


def test_counts_cap_at_99() -> None:
    many = spec(ciphers=list(range(1, 200)), extensions=[0, *range(0x100, 0x200)])
    assert many.startswith("t13d9999h2_")


# --- through the decoder -------------------------------------------------------------------


def test_decoder_keeps_what_ja4_reads() -> None:
    hello = parse_client_hello(synthetic_client_hello("g.example", grease=True))
    assert isinstance(hello, ClientHello)
    assert hello.ciphers == (0x1A1A, 0x1301, 0x1302, 0xC02F)
    assert hello.extensions == (0x0A0A, 0x0000, 0x002B, 0x0010, 0xFAFA)
    # 3 ciphers, 3 extensions without GREASE; the first ALPN name is the GREASE one (0x5a5a,
    # "ZZ"), which FoxIO's tools and ja4plus take as sent.
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.ja4 is not None and hello.ja4.startswith("t13d0303ZZ_")
    quic = parse_client_hello(synthetic_client_hello("g.example", grease=True), quic=True)
    assert isinstance(quic, ClientHello) and quic.ja4 == "q" + hello.ja4[1:]


def test_python_ssl_hello() -> None:
    hello = parse_client_hello(client_hello_message("ja4.example", alpn=["h2", "http/1.1"]))
    assert isinstance(hello, ClientHello)
    assert hello.ja4 is not None
    part_a, part_b, part_c = hello.ja4.split("_")
    assert part_a.startswith("t13d") and part_a.endswith("h2")
    assert int(part_a[4:6]) == len(hello.ciphers)
    assert int(part_a[6:8]) == len(hello.extensions)
    assert len(part_b) == len(part_c) == 12
    assert hello.signature_algorithms  # OpenSSL always offers them
    assert not hello.ech


def test_ech_extension_marks_the_hello() -> None:
    hello = parse_client_hello(ech_client_hello("cloudflare-ech.com"))
    assert isinstance(hello, ClientHello)
    assert hello.ech
    assert hello.sni == "cloudflare-ech.com"
    assert 0xFE0D in hello.extensions
    assert hello.ja4 is not None and hello.ja4.startswith("t13d")


def test_inner_ech_type_is_not_outer() -> None:
    # An "inner" ECH extension (type 1) belongs inside the encrypted hello; seen in the clear
    # it hides nothing.
    msg = synthetic_client_hello("x.example", extra_extensions=[(0xFE0D, b"\x01")])
    hello = parse_client_hello(msg)
    assert isinstance(hello, ClientHello) and not hello.ech


def test_bad_signature_algorithms_do_not_lose_the_name() -> None:
    msg = synthetic_client_hello("x.example", extra_extensions=[(0x000D, b"\x00\x05\x04")])
    hello = parse_client_hello(msg)
    assert isinstance(hello, ClientHello)
    assert hello.sni == "x.example"
    assert hello.signature_algorithms == ()
