"""Each connection is one flow however its sampled packets and its conntrack end interleave: an
ended connection waits `flows.end_grace` for late packets, which join it (names, device) while
its counters stay conntrack's final ones. The gateway's own connections are not accounted."""

from __future__ import annotations

import socket
import struct

import dpkt
import pytest

from sensor import flows
from sensor.config import Config, FlowsConfig
from sensor.model import Device, Flow
from sensor.pipeline import Pipeline
from sensor.sources.nflog import NFULNL_MSG_PACKET, NflogParser
from sensor.sources.pcap import Packet

PHONE_MAC = b"\x02\x00\x00\x00\x00\x05"
GW_MAC = b"\x02\x00\x00\x00\x00\x01"
PHONE = "192.168.1.5"
SERVER = "203.0.113.7"
T0 = 1_700_000_000.0


class _Collect:
    def __init__(self) -> None:
        self.flows: list[Flow] = []

    def flow(self, flow: Flow) -> None:
        self.flows.append(flow)

    def device(self, device: Device) -> None:
        pass


def _frame(up: bool, flags: int, seq: int, payload: bytes = b"", sport: int = 40000) -> bytes:
    phone, server = bytes([192, 168, 1, 5]), bytes([203, 0, 113, 7])
    tcp = dpkt.tcp.TCP(sport=sport, dport=80, flags=flags, seq=seq, data=payload)
    if not up:
        tcp.sport, tcp.dport = 80, sport
    ip = dpkt.ip.IP(src=phone if up else server, dst=server if up else phone, p=6, data=tcp)
    ip.len = 20 + 20 + len(payload)
    src, dst = (PHONE_MAC, GW_MAC) if up else (GW_MAC, PHONE_MAC)
    return bytes(dpkt.ethernet.Ethernet(src=src, dst=dst, type=0x0800, data=ip))


SYN = _frame(True, dpkt.tcp.TH_SYN, 1000)
RST = _frame(False, dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK, 0)
REQUEST = _frame(
    True,
    dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH,
    1001,
    b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
)


def _pipeline(grace: float = 0.25) -> tuple[Pipeline, _Collect]:
    sink = _Collect()
    return Pipeline(Config(flows=FlowsConfig(end_grace=grace)), sink), sink


def _destroy(p: Pipeline, now: float, up: tuple[int, int], down: tuple[int, int]) -> None:
    p.account_conntrack("tcp", PHONE, 40000, SERVER, 80, up[0], up[1], down[0], down[1], now, True)


def test_refused_connection_whose_end_comes_before_its_packets_is_one_flow() -> None:
    p, sink = _pipeline()
    _destroy(p, T0 + 0.001, (60, 1), (40, 1))  # SYN answered by RST: conntrack ends it at once
    assert not sink.flows  # waiting for its late packets
    p.run_packets([(T0, 1, SYN), (T0 + 0.0005, 1, RST)])  # NFLOG's batch, 50 ms later
    p.advance(T0 + 0.1)
    assert not sink.flows
    p.advance(T0 + 0.3)
    (flow,) = sink.flows
    assert (flow.bytes_up, flow.packets_up, flow.bytes_down, flow.packets_down) == (60, 1, 40, 1)
    assert p.stats()["flows_late_packets"] == 2  # both joined it
    p.finish()
    assert len(sink.flows) == 1


def test_trailing_rst_after_the_end_joins_the_named_flow() -> None:
    p, sink = _pipeline()
    p.run_packets([(T0, 1, SYN), (T0 + 0.01, 1, REQUEST)])
    _destroy(p, T0 + 0.02, (200, 3), (120, 2))
    p.run_packets([(T0 + 0.015, 1, RST)])  # sampled before the end, delivered after it
    p.advance(T0 + 1)
    p.finish()
    (flow,) = sink.flows
    assert flow.server_name == "api.example.com"
    assert (flow.bytes_up, flow.packets_up, flow.bytes_down, flow.packets_down) == (200, 3, 120, 2)


def test_late_request_names_the_flow_conntrack_ended() -> None:
    p, sink = _pipeline()
    _destroy(p, T0 + 0.02, (200, 3), (120, 2))
    p.run_packets([(T0, 1, SYN), (T0 + 0.01, 1, REQUEST)])
    p.advance(T0 + 1)
    (flow,) = sink.flows
    assert flow.server_name == "api.example.com"
    assert flow.bytes_up == 200


def test_counters_are_conntracks_final_ones_whatever_was_sampled() -> None:
    p, sink = _pipeline()
    p.run_packets([(T0, 1, SYN), (T0 + 0.01, 1, REQUEST)])
    sampled = len(SYN) - 14 + len(REQUEST) - 14
    _destroy(p, T0 + 0.02, (sampled + 52, 3), (0, 0))
    p.advance(T0 + 1)
    (flow,) = sink.flows
    assert (flow.bytes_up, flow.packets_up) == (sampled + 52, 3)


def test_a_new_connection_on_an_ended_tuple_is_a_new_flow() -> None:
    p, sink = _pipeline(grace=5.0)
    p.run_packets([(T0, 1, SYN)])
    _destroy(p, T0 + 0.01, (60, 1), (40, 1))
    _destroy(p, T0 + 0.02, (60, 1), (40, 1))  # the same end, told twice
    assert not sink.flows
    _destroy(p, T0 + 0.03, (120, 2), (80, 2))  # another connection on the same tuple
    assert len(sink.flows) == 1
    p.finish()
    assert [(f.bytes_up, f.bytes_down) for f in sink.flows] == [(60, 40), (120, 80)]


def test_without_grace_the_end_is_at_once() -> None:
    p, sink = _pipeline(grace=0.0)
    _destroy(p, T0, (60, 1), (40, 1))
    assert len(sink.flows) == 1


def test_the_gateways_own_connections_are_not_accounted() -> None:
    p, sink = _pipeline()
    p.set_gateway_addresses(["192.168.1.1", "198.51.100.2", "not an address"])
    # Prometheus scraping the exporter on loopback; the gateway's own upstream DNS; the
    # gateway's LAN address reaching a LAN host.
    p.account_conntrack("tcp", "127.0.0.1", 50000, "127.0.0.1", 14663, 500, 5, 9000, 5, T0, True)
    p.account_conntrack("udp", "198.51.100.2", 5353, "192.0.2.53", 53, 80, 1, 200, 1, T0, True)
    p.account_conntrack("tcp", "192.168.1.1", 50001, PHONE, 9100, 400, 4, 800, 4, T0, True)
    # A LAN device asking the gateway's resolver: its own traffic.
    p.account_conntrack("udp", PHONE, 5000, "192.168.1.1", 53, 70, 1, 150, 1, T0, True)
    p.finish()
    assert [(f.src_ip, f.dst_port) for f in sink.flows] == [(PHONE, 53)]
    assert p.stats()["conntrack_not_lan"] == 3


def test_a_flood_of_ends_waits_no_longer_than_the_table_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flows, "MAX_ENDING", 2)
    p, sink = _pipeline()
    for port in (40001, 40002, 40003):
        p.account_conntrack("tcp", PHONE, port, SERVER, 80, 60, 1, 40, 1, T0, True)
    assert [f.src_port for f in sink.flows] == [40001]  # the oldest waiting end went at once
    p.advance(T0 + 1)
    assert [f.src_port for f in sink.flows] == [40001, 40002, 40003]


def test_at_the_size_cap_waiting_ends_go_before_live_flows() -> None:
    sink = _Collect()
    p = Pipeline(Config(flows=FlowsConfig(max_flows=16)), sink)
    p.run_packets([(T0, 1, _frame(True, dpkt.tcp.TH_SYN, 5, sport=39999))])  # a live flow
    for port in range(40001, 40031):  # a flood of short connections, each ended at once
        p.account_conntrack("tcp", PHONE, port, SERVER, 80, 60, 1, 40, 1, T0 + 0.001, True)
    assert len(p.flows) <= 16
    assert 39999 not in [f.src_port for f in sink.flows]  # the live flow stayed
    assert p.flows.evicted_cap == 0


def test_a_connection_known_only_from_conntrack_makes_its_neighbours_device() -> None:
    # Live, a connection's first sign may be a conntrack event (no frame, no MAC): the kernel's
    # neighbour table names the address's MAC, and that is a device like one seen in a frame.
    p, sink = _pipeline(grace=0.0)
    p.learn_neighbour(PHONE, "02:00:00:00:00:05")
    p.learn_neighbour("192.168.1.9", "00:00:00:00:00:00")  # a placeholder is never a device
    _destroy(p, T0, (60, 1), (40, 1))
    p.account_conntrack("tcp", "192.168.1.9", 40001, SERVER, 80, 60, 1, 40, 1, T0, True)
    assert sink.flows[0].device_mac == "02:00:00:00:00:05"
    assert list(p.devices) == ["02:00:00:00:00:05"]
    assert p.devices["02:00:00:00:00:05"].ips == {PHONE}
# --- connections whose flow left the table while still open -------------------------------------


def _dump(p: Pipeline, port: int, up: tuple[int, int], down: tuple[int, int], now: float,
          final: bool = False, ct_id: int = 0) -> None:  # fmt: skip
    """One conntrack record (dump entry, or DESTROY with `final`) of the phone's connection
    from `port`, its CTA_ID `ct_id` (default: one per port)."""
    p.account_conntrack(
        "tcp", PHONE, port, SERVER, 443, up[0], up[1], down[0], down[1], now, final,
        ct_id=ct_id or port,
    )  # fmt: skip


def _flood(p: Pipeline, ports: range, now: float) -> None:
    """Other connections, each reported once by conntrack, enough to fill the table."""
    for port in ports:
        p.account_conntrack("tcp", "192.168.1.9", port, SERVER, 80, 60, 1, 40, 1, now, ct_id=port)


def _remembered(p: Pipeline, port: int) -> bool:
    key = bytes([192, 168, 1, 5, 203, 0, 113, 7]) + port.to_bytes(2, "big") + bytes([1, 187])
    return key in p.flows.open_ended.counted


def _of(sink: _Collect, port: int) -> list[Flow]:
    return [f for f in sink.flows if f.src_ip == PHONE and f.src_port == port]


def test_an_open_connection_pushed_out_of_a_full_table_is_counted_once() -> None:
    sink = _Collect()
    p = Pipeline(Config(flows=FlowsConfig(max_flows=16, end_grace=0.0)), sink)
    phone = (40001, 40002)  # the phone's two long-lived connections
    # Cumulative counters at each of ten periodic dumps: growing at some, not at others.
    ups = [(713, 9), (713, 9), (900, 11), (900, 11), (900, 11), (1500, 15), (1500, 15),
           (2100, 20), (2100, 20), (2100, 20)]  # fmt: skip
    downs = [(4000, 8), (4000, 8), (5000, 10), (5000, 10), (5000, 10), (5000, 10), (6000, 12),
             (6000, 12), (6000, 12), (6000, 12)]  # fmt: skip
    for i, (up, down) in enumerate(zip(ups, downs, strict=True)):
        now = T0 + 10 * i
        for port in phone:
            _dump(p, port, up, down, now)
        # Between two dumps a flood fills the table: the phone's flows are pushed out.
        _flood(p, range(50000 + 100 * i, 50000 + 100 * i + 40), now + 1)
        assert not any(e.flow.src_ip == PHONE for e in p.flows.entries.values())
    for port in phone:
        _dump(p, port, ups[-1], downs[-1], T0 + 100, final=True)  # the end: nothing new
    p.finish()
    for port in phone:
        records = _of(sink, port)
        # One record per dump that found growth since the last, none for the others.
        assert len(records) == 5
        first, *rest = records
        assert "continued_from" not in first.extra
        assert all(r.extra["continued_from"] == first.uid for r in rest)
        assert sum(r.bytes_up for r in records) == 2100
        assert sum(r.packets_up for r in records) == 20
        assert sum(r.bytes_down for r in records) == 6000
        assert sum(r.packets_down for r in records) == 12
        assert [r.bytes_up for r in records] == [713, 187, 600, 0, 600]
    assert p.stats()["flows_continued"] == 8
    assert not any(_remembered(p, port) for port in phone)  # their ends forgot them


def test_the_end_of_a_pushed_out_connection_adds_what_came_since_and_closes_it() -> None:
    sink = _Collect()
    p = Pipeline(Config(flows=FlowsConfig(max_flows=16)), sink)
    _dump(p, 40001, (713, 9), (4000, 8), T0)
    _flood(p, range(50000, 50040), T0 + 1)
    _dump(p, 40001, (800, 10), (4100, 9), T0 + 2, final=True)
    _dump(p, 40001, (800, 10), (4100, 9), T0 + 2, final=True)  # the same end, told twice
    p.finish()
    first, last = _of(sink, 40001)
    assert (first.bytes_up, first.bytes_down) == (713, 4000)
    assert (last.bytes_up, last.packets_up, last.bytes_down, last.packets_down) == (87, 1, 100, 1)
    assert last.extra["continued_from"] == first.uid
    assert not _remembered(p, 40001)


def test_another_connection_on_the_same_addresses_and_ports_is_counted_whole() -> None:
    sink = _Collect()
    p = Pipeline(Config(flows=FlowsConfig(max_flows=16, end_grace=0.0)), sink)
    _dump(p, 40001, (713, 9), (4000, 8), T0, ct_id=1)
    _flood(p, range(50000, 50040), T0 + 1)
    # The first connection's end was lost (an event overrun); a new one took its tuple.
    _dump(p, 40001, (300, 4), (500, 4), T0 + 2, ct_id=2)
    p.finish()
    _, second = _of(sink, 40001)
    assert (second.bytes_up, second.bytes_down) == (300, 500)
    assert "continued_from" not in second.extra


def test_a_sampled_packet_of_a_pushed_out_connection_continues_it() -> None:
    sink = _Collect()
    p = Pipeline(Config(flows=FlowsConfig(max_flows=16, end_grace=0.0)), sink)
    p.account_conntrack("tcp", PHONE, 40000, SERVER, 80, 500, 5, 900, 5, T0, ct_id=9)
    _flood(p, range(50000, 50040), T0 + 1)
    p.run_packets([(T0 + 2, 1, REQUEST)])  # more of it, sampled
    (live,) = [e for e in p.flows.entries.values() if e.flow.src_ip == PHONE]
    assert live.flow.extra["continued_from"] == _of(sink, 40000)[0].uid
    p.account_conntrack("tcp", PHONE, 40000, SERVER, 80, 600, 6, 950, 6, T0 + 3, True, ct_id=9)
    p.finish()
    _, cont = _of(sink, 40000)
    assert (cont.bytes_up, cont.packets_up, cont.bytes_down, cont.packets_down) == (100, 1, 50, 1)
    assert cont.server_name == "api.example.com"


def test_an_idle_connection_swept_and_dumped_again_is_counted_once() -> None:
    sink = _Collect()
    p = Pipeline(Config(flows=FlowsConfig(tcp_idle_timeout=300, end_grace=0.0)), sink)
    _dump(p, 40001, (713, 9), (4000, 8), T0)
    p.advance(T0 + 1)  # the first sweep is scheduled
    p.advance(T0 + 400)  # a push channel quiet for minutes: swept idle
    assert len(_of(sink, 40001)) == 1
    _dump(p, 40001, (713, 9), (4000, 8), T0 + 410)  # the next dump: nothing new
    _dump(p, 40001, (800, 10), (4100, 9), T0 + 420)  # a heartbeat
    p.finish()
    first, cont = _of(sink, 40001)
    assert (cont.bytes_up, cont.bytes_down) == (87, 100)
    assert cont.extra["continued_from"] == first.uid


def test_without_conntrack_nothing_is_remembered() -> None:
    sink = _Collect()
    p = Pipeline(Config(flows=FlowsConfig(max_flows=16)), sink)
    for port in range(40000, 40040):
        p.run_packets([(T0, 1, _frame(True, dpkt.tcp.TH_SYN, 5, sport=port))])
    p.run_packets([(T0 + 1, 1, _frame(True, dpkt.tcp.TH_ACK, 6, sport=40000))])
    p.finish()
    assert len(p.flows.open_ended) == 0
    assert not any("continued_from" in f.extra for f in sink.flows)


def test_connections_remembered_are_bounded() -> None:
    sink = _Collect()
    p = Pipeline(Config(flows=FlowsConfig(max_flows=16, end_grace=0.0)), sink)
    p.flows.open_ended.size = 32
    _flood(p, range(50000, 50100), T0)
    assert len(p.flows.open_ended) == 32
    assert p.flows.open_ended.pushed_out == 100 - 16 - 32


def test_memory_shedding_lowers_what_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "MIN_OPEN_ENDED", 8)
    sink = _Collect()
    p = Pipeline(Config(flows=FlowsConfig(max_flows=64, end_grace=0.0)), sink)
    _flood(p, range(50000, 50100), T0)
    assert len(p.flows.open_ended) == 100 - 64
    p.flows.shrink(20)  # the daemon's memory bound: the table keeps 20 flows
    assert len(p.flows) == 20
    assert len(p.flows.open_ended) == 20
    assert p.flows.open_ended.size == 20


def test_a_full_memory_still_continues_its_oldest_connection() -> None:
    sink = _Collect()
    p = Pipeline(Config(flows=FlowsConfig(max_flows=16, end_grace=0.0)), sink)
    p.flows.open_ended.size = 4
    _dump(p, 40001, (713, 9), (4000, 8), T0)
    _flood(p, range(50000, 50019), T0 + 1)  # the phone's is the oldest of the four remembered
    assert _remembered(p, 40001)
    # Its continuation pushes a flow out of the table, which is remembered in turn.
    _dump(p, 40001, (800, 10), (4100, 9), T0 + 2)
    p.finish()
    first, cont = _of(sink, 40001)
    assert (cont.bytes_up, cont.bytes_down) == (87, 100)
    assert cont.extra["continued_from"] == first.uid


# --- a conntrack dump that comes before the connection's sampled packets -------------------------


def _nflog_datagram(frames: list[bytes]) -> bytes:
    """One nfnetlink_log datagram holding `frames` (Ethernet, as `_frame` builds them), each
    a packet message as the kernel sends it for the forward hook: no timestamp (the kernel
    gives none unless something asked for packet timestamps), the sender's MAC."""

    def attr(atype: int, data: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(data), atype) + data
        return raw + b"\0" * (-len(raw) % 4)

    out = b""
    for seq, frame in enumerate(frames):
        attrs = (
            attr(1, struct.pack(">HBx", 0x0800, 2))
            + attr(4, struct.pack(">I", 3))
            + attr(5, struct.pack(">I", 4))
            + attr(8, struct.pack(">HH8s", 6, 0, frame[6:12]))
            + attr(12, struct.pack(">I", seq))
            + attr(9, frame[14:])
        )
        body = struct.pack(">BBH", socket.AF_INET, 0, 7) + attrs
        out += struct.pack("=IHHII", 16 + len(body), NFULNL_MSG_PACKET, 0, 0, 0) + body
    return out


def test_a_dump_before_the_connections_sampled_packets_counts_them_once() -> None:
    # NFLOG hands packets over in batches (up to its flush timeout, 50 ms, later): a periodic
    # dump in between already counts the whole connection, and its sampled packets, read
    # after it, are among what it counted.
    ack, psh, fin = dpkt.tcp.TH_ACK, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN
    body = b"POST /pass/v2/register HTTP/1.1\r\nHost: api.example.com\r\n\r\n" + b"x" * 400
    up = [
        _frame(True, dpkt.tcp.TH_SYN, 1000),
        _frame(True, ack, 1001),
        _frame(True, psh, 1001, body),
        _frame(True, ack, 1001 + len(body)),
        _frame(True, fin | ack, 1001 + len(body)),
        _frame(True, ack, 1002 + len(body)),
    ]
    down = [
        _frame(False, dpkt.tcp.TH_SYN | ack, 5000),
        _frame(False, psh, 5001, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        _frame(False, fin | ack, 5040),
    ]
    order = [up[0], down[0], up[1], up[2], down[1], up[3], up[4], down[2], up[5]]
    truth = (
        sum(len(f) - 14 for f in up),
        len(up),
        sum(len(f) - 14 for f in down),
        len(down),
    )
    p, sink = _pipeline()
    # The dump first: the connection, in TIME_WAIT, with all its packets.
    p.account_conntrack("tcp", PHONE, 40000, SERVER, 80, *truth, T0 + 0.01, ct_id=7)
    parser = NflogParser(now=lambda: T0 + 0.05)
    packets: list[Packet] = []
    data = _nflog_datagram(order)
    parser.parse(data, len(data), packets)
    assert len(packets) == len(order) and not parser.counters.malformed
    p.run_packets(packets)  # then NFLOG's batch
    (entry,) = p.flows.entries.values()
    f = entry.sync()
    assert entry.flow.server_name == "api.example.com"  # the packets reached the flow
    assert (f.bytes_up, f.packets_up, f.bytes_down, f.packets_down) == truth
    for i in range(3):  # later dumps, nothing new
        p.account_conntrack("tcp", PHONE, 40000, SERVER, 80, *truth, T0 + 1 + i, ct_id=7)
    p.finish()
    (flow,) = sink.flows
    assert (flow.bytes_up, flow.packets_up, flow.bytes_down, flow.packets_down) == truth
