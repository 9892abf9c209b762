from __future__ import annotations

import itertools
import struct
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode.dns import (
    MAX_ANSWERS,
    MAX_CHAIN,
    is_local_name,
    is_mdns_port,
    parse_dns,
    resolve_chain,
    split_tcp_dns,
    wire_name_text,
)
from sensor.model import DnsMessage, DnsRecord, Weird
from tests.builders_proto import (
    QR,
    dns_query,
    dns_response,
    encode_name,
    https_params,
    https_response,
    raw_dns,
    raw_rr,
    svcb_rdata,
    tcp_dns,
)

A4 = struct.pack("!4B", 203, 0, 113, 5)


def _msg(data: bytes) -> DnsMessage:
    got = parse_dns(data)
    assert isinstance(got, DnsMessage), got
    return got


# --- messages ---------------------------------------------------------------------------------


def test_query() -> None:
    msg = _msg(dns_query("WWW.Example.COM", 28, id=0xBEEF))
    assert msg == DnsMessage(0xBEEF, False, 0, (("www.example.com", 28),), ())


def test_response_with_compressed_cname_chain() -> None:
    data = dns_response(
        "www.example.com",
        chain=["www.example.com.cdn.example.net", "edge.cdn.example.net"],
        addrs=["203.0.113.5", "203.0.113.6"],
        ttl=60,
        chain_ttls=[300, 20],
    )
    # dpkt compresses the repeated suffixes: the parse must follow the pointers.
    assert b"\xc0" in data
    msg = _msg(data)
    assert msg.is_response and msg.rcode == 0
    assert msg.answers == (
        DnsRecord("www.example.com", 5, 300, "www.example.com.cdn.example.net"),
        DnsRecord("www.example.com.cdn.example.net", 5, 20, "edge.cdn.example.net"),
        DnsRecord("edge.cdn.example.net", 1, 60, "203.0.113.5"),
        DnsRecord("edge.cdn.example.net", 1, 60, "203.0.113.6"),
    )
    assert resolve_chain(msg) == [
        ("203.0.113.5", "www.example.com", 20),
        ("203.0.113.6", "www.example.com", 20),
    ]


def test_aaaa() -> None:
    msg = _msg(dns_response("v6.example.com", addrs=["2001:db8::1", "2001:db8:0:1::5"], ttl=7))
    assert msg.questions == (("v6.example.com", 28),)
    assert [(r.rtype, r.value) for r in msg.answers] == [
        (28, "2001:db8::1"),
        (28, "2001:db8:0:1::5"),
    ]
    assert resolve_chain(msg) == [
        ("2001:db8::1", "v6.example.com", 7),
        ("2001:db8:0:1::5", "v6.example.com", 7),
    ]


def test_nxdomain_rcode() -> None:
    msg = _msg(dns_response("nope.example.com", rcode=3))
    assert msg.rcode == 3 and msg.answers == ()
    assert resolve_chain(msg) == []


def test_uppercase_owner_names_are_lowered() -> None:
    answers = [raw_rr("Mixed.EXAMPLE.com", 1, 5, A4)]
    msg = _msg(raw_dns(questions=[("MIXED.example.COM", 1)], answers=answers))
    assert msg.questions == (("mixed.example.com", 1),)
    assert msg.answers[0].name == "mixed.example.com"
    assert resolve_chain(msg) == [("203.0.113.5", "mixed.example.com", 5)]


def test_other_types_are_skipped() -> None:
    answers = [
        raw_rr("example.com", 16, 60, b"\x05hello"),  # TXT
        raw_rr("example.com", 15, 60, b"\x00\x0a" + encode_name("mx.example.com")),  # MX
        raw_rr("example.com", 1, 60, A4, rclass=3),  # CHAOS class
        raw_rr("example.com", 1, 60, A4),
    ]
    msg = _msg(raw_dns(questions=[("example.com", 1)], answers=answers))
    assert msg.answers == (DnsRecord("example.com", 1, 60, "203.0.113.5"),)


def test_mdns_cache_flush_class_and_high_ttl() -> None:
    answers = [raw_rr("printer.local", 1, 0x80000001, A4, rclass=0x8001)]
    msg = _msg(raw_dns(id=0, flags=QR | 0x0400, answers=answers))
    assert msg.answers == (DnsRecord("printer.local", 1, 0, "203.0.113.5"),)


def test_label_bytes_are_escaped() -> None:
    # One label "evil.com" is not the two labels "evil" "com".
    name = b"\x08evil.com\x03net\x00"
    weird = b"\x06a\\b\x07\x03x\x00"
    q = name + b"\x00\x01\x00\x01" + weird + b"\x00\x01\x00\x01"
    msg = _msg(raw_dns(flags=0, raw_questions=q, qdcount=2))
    assert msg.questions == (("evil\\.com.net", 1), ("a\\\\b\\007\\003x", 1))


# --- SVCB / HTTPS -----------------------------------------------------------------------------


def test_https_hints_become_address_records() -> None:
    data = https_response(
        "www.example.com",
        "svc.example.net",
        ipv4hint=["192.0.2.1", "192.0.2.2"],
        ipv6hint=["2001:db8::443"],
        ttl=120,
    )
    msg = _msg(data)
    assert msg.answers == (
        DnsRecord("www.example.com", 65, 120, "svc.example.net"),
        DnsRecord("www.example.com", 1, 120, "192.0.2.1"),
        DnsRecord("www.example.com", 1, 120, "192.0.2.2"),
        DnsRecord("www.example.com", 28, 120, "2001:db8::443"),
    )
    assert resolve_chain(msg) == [
        ("192.0.2.1", "www.example.com", 120),
        ("192.0.2.2", "www.example.com", 120),
        ("2001:db8::443", "www.example.com", 120),
    ]


def test_svcb_service_mode_dot_target_is_owner_and_alias_mode_kept() -> None:
    svc = _msg(https_response("_dns.example.com", "", ipv4hint=["192.0.2.53"], rtype=64))
    assert svc.answers[0] == DnsRecord("_dns.example.com", 64, 300, "_dns.example.com")
    alias = _msg(https_response("example.com", "alias.example.net", priority=0, alpn=()))
    assert alias.answers == (DnsRecord("example.com", 65, 300, "alias.example.net"),)


def test_https_behind_cname() -> None:
    rdata = svcb_rdata(1, "", https_params(ipv4hint=["198.51.100.7"]))
    answers = [
        raw_rr("example.com", 5, 50, encode_name("cdn.example.net")),
        raw_rr("cdn.example.net", 65, 900, rdata),
    ]
    msg = _msg(raw_dns(questions=[("example.com", 65)], answers=answers))
    assert resolve_chain(msg) == [("198.51.100.7", "example.com", 50)]


@pytest.mark.parametrize(
    "params",
    [
        [(4, b"\xc0\x00\x02")],  # ipv4hint not a multiple of 4
        [(6, b"\x20\x01" * 4)],  # ipv6hint not a multiple of 16
        [(4, b"")],
    ],
)
def test_bad_hint_lengths(params: list[tuple[int, bytes]]) -> None:
    rdata = svcb_rdata(1, "svc.example.net", params)
    data = raw_dns(questions=[("example.com", 65)], answers=[raw_rr("example.com", 65, 1, rdata)])
    assert parse_dns(data) == Weird("dns.bad_svcb")


def test_svc_param_overrunning_rdata() -> None:
    rdata = svcb_rdata(1, "svc.example.net") + struct.pack("!HH", 4, 8) + b"\xc0\x00\x02\x01"
    data = raw_dns(questions=[("example.com", 65)], answers=[raw_rr("example.com", 65, 1, rdata)])
    assert parse_dns(data) == Weird("dns.bad_svcb")


# --- names: compression abuse -----------------------------------------------------------------


def _with_answer_name(name_wire: bytes) -> bytes:
    return raw_dns(questions=[("example.com", 1)], answers=[raw_rr(name_wire, 1, 1, A4)])


def test_pointer_to_itself() -> None:
    # The question starts at offset 12: a name that is just a pointer to offset 12.
    data = raw_dns(flags=0, raw_questions=b"\xc0\x0c\x00\x01\x00\x01", qdcount=1)
    assert parse_dns(data) == Weird("dns.pointer_loop")


def test_pointer_loop_between_two_names() -> None:
    # Question name at 12: "a" then a pointer to 20; at 20: "b" then a pointer back to 12.
    q = b"\x01a\xc0\x14" + b"\x00\x01\x00\x01"  # 12..19
    second = b"\x01b\xc0\x0c"  # at 20
    data = raw_dns(flags=0, raw_questions=q + second, qdcount=1)
    assert parse_dns(data) == Weird("dns.pointer_loop")


def test_pointer_out_of_range() -> None:
    assert parse_dns(_with_answer_name(b"\xff\xff")) == Weird("dns.bad_pointer")


@pytest.mark.parametrize("byte", [0x40, 0x80, 0xBF])
def test_reserved_label_types(byte: int) -> None:
    assert parse_dns(_with_answer_name(bytes([byte, 0]))) == Weird("dns.bad_label")


def test_name_too_long() -> None:
    long_name = ".".join(["a" * 63] * 4)  # 4 * 64 + 1 = 257 octets
    data = raw_dns(flags=0, raw_questions=encode_name(long_name) + b"\x00\x01\x00\x01", qdcount=1)
    assert parse_dns(data) == Weird("dns.name_too_long")
    ok_name = ".".join(["a" * 63] * 3 + ["a" * 61])  # exactly 255
    assert _msg(raw_dns(flags=0, questions=[(ok_name, 1)])).questions[0][0] == ok_name


def test_pointer_chain_growing_past_limit() -> None:
    # Each name adds a 63-byte label and points at the previous one: every pointer is legal,
    # the name they spell is too long. The question's name points at the last of them.
    base = 12 + 6  # after the question (2-byte pointer, qtype, qclass)
    names = b"\x3f" + b"x" * 63 + b"\x00"
    last = base
    for _ in range(4):
        here = base + len(names)
        names += b"\x3f" + b"y" * 63 + struct.pack("!H", 0xC000 | last)
        last = here
    q = struct.pack("!H", 0xC000 | last) + b"\x00\x01\x00\x01" + names
    assert parse_dns(raw_dns(flags=0, raw_questions=q, qdcount=1)) == Weird("dns.name_too_long")


def test_bad_rdata_lengths() -> None:
    a5 = raw_dns(questions=[("example.com", 1)], answers=[raw_rr("example.com", 1, 1, A4 + b"x")])
    assert parse_dns(a5) == Weird("dns.bad_rdata")
    aaaa4 = raw_dns(questions=[("example.com", 28)], answers=[raw_rr("example.com", 28, 1, A4)])
    assert parse_dns(aaaa4) == Weird("dns.bad_rdata")
    cname = raw_rr("example.com", 5, 1, encode_name("cdn.example.net") + b"junk")
    assert parse_dns(raw_dns(answers=[cname])) == Weird("dns.bad_rdata")


def test_too_many_questions_and_answer_cap() -> None:
    assert parse_dns(raw_dns(qdcount=1000)) == Weird("dns.too_many_questions")
    answers = [raw_rr("example.com", 1, 1, bytes([192, 0, 2, i % 256])) for i in range(300)]
    msg = _msg(raw_dns(questions=[("example.com", 1)], answers=answers))
    assert len(msg.answers) == MAX_ANSWERS


# --- truncation -------------------------------------------------------------------------------

SAMPLES = {
    "query": dns_query("www.example.com"),
    "cname_chain": dns_response(
        "a.example.com", ["b.example.net", "c.example.org"], ["203.0.113.5", "2001:db8::5"]
    ),
    "https": https_response("example.com", "svc.example.net", ["192.0.2.1"], ["2001:db8::1"]),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_prefix_is_weird(name: str) -> None:
    data = SAMPLES[name]
    assert isinstance(parse_dns(data), DnsMessage)
    for cut in range(len(data)):
        got = parse_dns(data[:cut])
        assert isinstance(got, Weird), (cut, got)
        assert got.reason.startswith("dns."), got


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_single_byte_corruption_is_contained(name: str) -> None:
    data = SAMPLES[name]
    for i in range(len(data)):
        for value in (0x00, 0x3F, 0xC0, 0xFF):
            parse_dns(data[:i] + bytes([value]) + data[i + 1 :])


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    got = parse_dns(data)
    assert isinstance(got, DnsMessage | Weird)
    if isinstance(got, DnsMessage):
        resolve_chain(got)


# --- resolve_chain ----------------------------------------------------------------------------


def _response(answers: list[DnsRecord], qname: str = "q.example.com") -> DnsMessage:
    return DnsMessage(1, True, 0, ((qname, 1),), tuple(answers))


def test_chain_loop_terminates() -> None:
    msg = _response(
        [
            DnsRecord("q.example.com", 5, 10, "a.example.net"),
            DnsRecord("a.example.net", 5, 10, "b.example.net"),
            DnsRecord("b.example.net", 5, 10, "a.example.net"),
            DnsRecord("b.example.net", 1, 10, "203.0.113.9"),
        ]
    )
    assert resolve_chain(msg) == [("203.0.113.9", "q.example.com", 10)]
    self_loop = _response([DnsRecord("q.example.com", 5, 10, "q.example.com")])
    assert resolve_chain(self_loop) == []


def test_chain_length_is_capped() -> None:
    names = ["q.example.com"] + [f"n{i}.example.net" for i in range(MAX_CHAIN + 5)]
    records = [DnsRecord(a, 5, 10, b) for a, b in itertools.pairwise(names)]
    near = _response([*records, DnsRecord(names[MAX_CHAIN], 1, 10, "203.0.113.1")])
    assert resolve_chain(near) == [("203.0.113.1", "q.example.com", 10)]
    far = _response([*records, DnsRecord(names[MAX_CHAIN + 1], 1, 10, "203.0.113.2")])
    assert resolve_chain(far) == []


def test_unreachable_addresses_are_left_out() -> None:
    msg = _response(
        [
            DnsRecord("q.example.com", 1, 10, "203.0.113.1"),
            DnsRecord("other.example.org", 1, 10, "198.51.100.66"),
        ]
    )
    assert resolve_chain(msg) == [("203.0.113.1", "q.example.com", 10)]


def test_same_address_twice_keeps_lowest_ttl_and_queries_give_nothing() -> None:
    msg = _response(
        [
            DnsRecord("q.example.com", 1, 50, "203.0.113.1"),
            DnsRecord("q.example.com", 1, 5, "203.0.113.1"),
        ]
    )
    assert resolve_chain(msg) == [("203.0.113.1", "q.example.com", 5)]
    query = DnsMessage(1, False, 0, (("q.example.com", 1),), msg.answers)
    assert resolve_chain(query) == []


# --- TCP --------------------------------------------------------------------------------------


def test_split_tcp_dns_whole_and_partial() -> None:
    one, two = SAMPLES["query"], SAMPLES["cname_chain"]
    stream = tcp_dns(one, two)
    assert split_tcp_dns(stream) == ([one, two], b"")
    assert split_tcp_dns(stream[:-1]) == ([one], stream[2 + len(one) : -1])
    assert split_tcp_dns(b"") == ([], b"")
    assert split_tcp_dns(b"\x00") == ([], b"\x00")
    assert split_tcp_dns(b"\x00\x00\x00\x05ab") == ([b""], b"\x00\x05ab")


def test_split_tcp_dns_across_every_segment_boundary() -> None:
    stream = tcp_dns(SAMPLES["query"], SAMPLES["https"], SAMPLES["cname_chain"])
    for cut in range(len(stream) + 1):
        rest = b""
        got: list[bytes] = []
        for segment in (stream[:cut], stream[cut:]):
            msgs, rest = split_tcp_dns(rest + segment)
            got.extend(msgs)
        assert rest == b""
        assert [parse_dns(m) for m in got] == [
            parse_dns(SAMPLES[k]) for k in ("query", "https", "cname_chain")
        ]


def test_split_tcp_dns_accepts_memoryview_and_bytearray() -> None:
    stream = tcp_dns(SAMPLES["query"])
    assert split_tcp_dns(bytearray(stream)) == ([SAMPLES["query"]], b"")
    assert split_tcp_dns(memoryview(stream)) == ([SAMPLES["query"]], b"")


# --- local names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "printer.local",
        "Printer.LOCAL.",
        "_ipp._tcp.local",
        "router.lan",
        "nas.home.arpa",
        "5.113.0.203.in-addr.arpa",
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
        "wpad",
        "localhost",
        "",
    ],
)
def test_local_names(name: str) -> None:
    assert is_local_name(name)


@pytest.mark.parametrize("name", ["www.example.com", "local.example.com", "lan.example.net"])
def test_remote_names(name: str) -> None:
    assert not is_local_name(name)


def test_mdns_port() -> None:
    assert is_mdns_port(5353)
    assert not is_mdns_port(53)


def test_mdns_response_names_are_local() -> None:
    msg = _msg(raw_dns(id=0, answers=[raw_rr("tv.local", 1, 120, A4, rclass=0x8001)]))
    assert all(is_local_name(rr.name) for rr in msg.answers)


def test_wire_name_text() -> None:
    assert wire_name_text(encode_name("Host.Example.com")) == "host.example.com"
    assert wire_name_text(b"\x04host") == "host"  # partial name: no root label
    assert wire_name_text(b"\x09host") is None
    assert wire_name_text(b"\xc0\x0c") is None


# --- ECH configurations in HTTPS answers (RFC 9849 4, RFC 9460 "ech") ---------------------------


def test_https_ech_public_name() -> None:
    from tests.builders_proto import https_ech_response

    msg = parse_dns(https_ech_response("private.example.org", ["192.0.2.80"], "cover.example.net"))
    assert isinstance(msg, DnsMessage)
    assert msg.ech_public_names == ("cover.example.net",)
    assert ("192.0.2.80", "private.example.org", 300) in resolve_chain(msg)


def test_ech_config_list_other_versions_and_garbage() -> None:
    from tests.builders_proto import ech_config_list, raw_dns, raw_rr, svcb_rdata

    good = ech_config_list("a.example", "b.example")
    other = b"\xfe\x0a\x00\x03abc"  # an older draft's config: skipped
    mixed = (len(other) + len(good) - 2).to_bytes(2, "big") + other + good[2:]
    for value, names in (
        (mixed, ("a.example", "b.example")),
        (good[:-5], ("a.example",)),  # cut inside the second config
        (b"\x00", ()),
        (b"", ()),
    ):
        rdata = svcb_rdata(1, "", [(5, value)])
        wire = raw_dns(
            1, questions=[("x.example", 65)], answers=[raw_rr("x.example", 65, 60, rdata)]
        )
        msg = parse_dns(wire)
        assert isinstance(msg, DnsMessage), value
        assert msg.ech_public_names == names


def test_zeek_ech_capture() -> None:
    """Zeek's dns/ech.pcap (tests/README.md): real HTTPS answers for defo.ie and
    cloudflare-ech.com with ECH configurations and address hints."""
    path = Path(__file__).parents[1] / "captures" / "dns" / "zeek-dns-ech.pcap"
    got = []
    with path.open("rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            ip = dpkt.ip6.IP6(buf) if buf[0] >> 4 == 6 else dpkt.ip.IP(buf)
            msg = parse_dns(bytes(ip.data.data))
            assert isinstance(msg, DnsMessage)
            if msg.is_response:
                got.append((msg.questions[0][0], msg.ech_public_names, sorted(resolve_chain(msg))))
    assert got == [
        (
            "defo.ie",
            ("cover.defo.ie",),
            [("213.108.108.101", "defo.ie", 1791), ("2a00:c6c0:0:116:5::10", "defo.ie", 1791)],
        ),
        (
            "cloudflare-ech.com",
            ("cloudflare-ech.com",),
            [
                ("104.18.10.118", "cloudflare-ech.com", 300),
                ("104.18.11.118", "cloudflare-ech.com", 300),
                ("2606:4700::6812:a76", "cloudflare-ech.com", 300),
                ("2606:4700::6812:b76", "cloudflare-ech.com", 300),
            ],
        ),
    ]
