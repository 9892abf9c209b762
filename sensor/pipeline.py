"""decode -> flows: the packet loop shared by `analyze` and the daemon.

Most packets of a home network are bulk TLS data and ACKs of flows we already know and have
finished naming. For those, `run` does fixed-offset header reads, one slice for the flow key, one
dict lookup and three counter updates: no objects, no decoders. Everything else (a new flow, a
packet of a flow whose first payload packets are still being inspected, anything unusual) goes to
`_slow`, which decodes fully with the decode/ modules and never lets an exception out.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import logging
import socket
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sensor.config import Config
from sensor.decode import dhcp as dhcp_dec
from sensor.decode import dns as dns_dec
from sensor.decode import http as http_dec
from sensor.decode import ndp
from sensor.decode import quic as quic_dec
from sensor.decode import tls as tls_dec
from sensor.decode.ip import TCP, UDP, ip_str, parse_ip, parse_transport
from sensor.decode.link import Link, lan_source_mac, mac_str, parse_link
from sensor.detect import placeholders
from sensor.ech import EchCovers, packaged_public_names
from sensor.fastcount import LINK_LAYOUTS as _LINK_LAYOUTS
from sensor.fastcount import count_known
from sensor.fingerprints import remember as remember_ja4
from sensor.flows import FlowEntry, FlowTable, Half
from sensor.model import ClientHello, Device, DhcpMessage, DnsMessage, Flow, HttpRequest, Weird
from sensor.names import DnsCache, host_only, redact_name
from sensor.pipeline_consumers import FlowSink as FlowSink
from sensor.pipeline_consumers import NullObserver, Observer
from sensor.sources.pcap import MAX_RECORD, Chunk, Packet

if TYPE_CHECKING:
    from sensor.fastpath import Columns

log = logging.getLogger(__name__)

_SYN = 0x02
_ACK = 0x10
_RST = 0x04
_FIN = 0x01

_DNS_PORTS = (53,)
_DHCP_PORTS = (67, 68)
_DHCP6_PORTS = (546, 547)
_SMALL_PROTOCOL_INSPECT = 64
"""Packets per direction inspected on DNS/DHCP flows (small, and every packet matters)."""
_UNLIMITED = 1 << 30

MAX_DEVICES = 4096
MAX_DEVICE_IPS = 16
MAX_USER_AGENTS = 8
MAX_DNS_QUERIES = 16
MAX_ASKED = 4096
"""(flow, query name) pairs remembered so each name is scanned once per flow."""
MAX_FRAGMENTS = 4096
MAX_IP_MAC = 65536
MAX_LAN_CACHE = 65536


class Pipeline:
    def __init__(self, cfg: Config, sink: FlowSink, observer: Observer | None = None) -> None:
        self.cfg = cfg
        self.sink = sink
        self.observer: Observer = observer or NullObserver()
        self.flows = FlowTable(cfg.flows, self._on_flow_end)
        self.dns = DnsCache(cfg.dns.max_cache, cfg.dns.ttl_grace)
        self.quic = quic_dec.QuicInitialTracker()
        self.ech_covers = EchCovers(packaged_public_names())
        self.devices: OrderedDict[str, Device] = OrderedDict()
        self.ip_mac: OrderedDict[str, str] = OrderedDict()
        self.skipped: Counter[str] = Counter()
        self.weird: Counter[str] = Counter()
        self.quic_unnamed: Counter[str] = Counter()
        """QUIC flows that ended without a name from their Initials, by why: "no_sni",
        "incomplete" (the CRYPTO stream never completed), "no_client_initial" (none seen, e.g.
        a capture that starts mid-connection), or the Weird reason that stopped decoding."""
        self.packets_read = 0
        self.packets_decoded = 0
        self.packets_fast = 0
        self.devices_dropped = 0
        self.not_devices: Counter[str] = Counter()
        """MACs refused as devices because they are placeholders (all-zero, multicast,
        Android's 02:00:00:00:00:00...), by the placeholders file's reason."""
        self._fragments: OrderedDict[tuple[bytes, bytes, int, int], Half] = OrderedDict()
        self._asked: OrderedDict[tuple[str, str], str] = OrderedDict()
        """(flow uid, query name) already handed to the observer -> the name redacted: each
        name is scanned and cut once per flow (the flow's own list holds the redacted names,
        so it cannot tell two names with data labels apart)."""
        self._lan_cache: dict[bytes, bool] = {}
        self._lan_v4: list[tuple[int, int]] = []
        self._lan_v6: list[tuple[int, int]] = []
        for net in cfg.site.lan_networks:
            n = ipaddress.ip_network(net, strict=False)
            rng = (int(n.network_address), int(n.broadcast_address))
            (self._lan_v4 if n.version == 4 else self._lan_v6).append(rng)
        self._next_sweep = 0.0
        self._uid = 0
        self.gateway_addresses: frozenset[bytes] = frozenset()
        """The gateway's own addresses (packed): connections they open are not a LAN
        device's (the daemon fills it in)."""
        self.conntrack_not_lan = 0
        """Conntrack entries passed over as the gateway's own connections."""
        self.last_ts = 0.0
        self.on_dns_answer: Callable[[str, str, str, int], object] | None = None
        """(resolver, question name, address, TTL) of every DNS answer (the daemon's policy)."""

    # --- the packet loop ------------------------------------------------------------------------

    def run_packets(self, packets: Iterable[Packet]) -> None:
        """Feed single packets (live sources, tests), each frame as it is (not re-packed into
        pcap records), through the steps of `_run_pure`. Never raises on packet content."""
        tcp = self.flows.tcp
        udp = self.flows.udp
        slow = self._slow
        next_sweep = self._next_sweep
        n = 0
        fast = 0
        ts = self.last_ts
        for ts, lt, frame in packets:
            n += 1
            if ts >= next_sweep:
                next_sweep = self._sweep(ts)
            layout = _LINK_LAYOUTS.get(lt)
            if layout is not None and count_known(tcp, udp, ts, layout, frame, 0, len(frame)):
                fast += 1
            else:
                slow(ts, lt, frame)
        self._loop_end(next_sweep, ts, n, fast)

    def run(self, chunks: Iterable[Chunk]) -> None:
        """Feed chunks of pcap-format records through decode and the flow table. Never raises
        on packet content.

        Big chunks go through `_run_columns` when numpy is installed (whole-array header
        reads, one flow-table lookup per flow key and chunk), the rest through `_run_pure`.
        Both give the same flows, devices and counters.
        """
        self._run_columns(chunks)

    def _run_columns(self, chunks: Iterable[Chunk]) -> None:
        """`run` with sensor.fastpath. Per chunk: walk the records and read their fields as
        arrays; then, between idle sweeps (which happen at exactly the packets where the pure
        loop makes them), look each flow key up once. Packets of known flows whose inspection
        is over change no decision: they are counted in whole-array sums. Every other packet
        (new flows, payload under inspection, anything unusual) goes one by one, in capture
        order, through the same steps as in `_run_pure`.

        Small chunks, link types the fast path does not know, and everything when numpy is
        missing, go through `_run_pure` chunk by chunk (numpy is imported at the first big
        chunk: a small capture does not pay for it).
        """
        for chunk in chunks:
            if (
                chunk.end - chunk.start < _MIN_COLUMNS
                or chunk.linktype not in _LINK_LAYOUTS
                or not _fastpath_available()
            ):
                self._run_pure((chunk,))
                continue
            from sensor import fastpath

            cols = fastpath.columns(chunk)
            n = cols.n
            if not n:
                continue
            ts = cols.ts
            a = 0
            due = fastpath.first_at_least(ts, 0, self._next_sweep)
            while True:
                if due > a:
                    self._columns_segment(chunk, cols, a, due)
                if due == n:
                    break
                self._sweep(float(ts[due]))
                a = due
                due = fastpath.first_at_least(ts, due + 1, self._next_sweep)
            self.packets_read += n
            self.last_ts = float(ts[-1])

    def _columns_segment(self, chunk: Chunk, cols: Columns, a: int, b: int) -> None:
        """Packets [a, b) of a chunk, with no idle sweep due among them.

        The pure loop's outcome for a packet depends only on its flow's state: no flow yet, or
        payload while the direction is being inspected, means the slow path; anything else is
        three counter updates, which commute. So only the packets that may take the slow path
        (and the one after which a flow turns out to be past inspection) are visited one by
        one, in capture order; all others are summed per flow in whole-array operations.
        """
        from sensor import fastpath

        seg = fastpath.Segment(cols, a, b)
        keys, key_tcp = cols.keys, cols.key_tcp
        tcp = self.flows.tcp
        udp = self.flows.udp
        heap = list(seg.others)  # the packets to visit, as a heap of chunk indices
        every: set[int] = set()  # keys whose every packet is visited
        new_packets = 0
        # With timestamps running backwards, a packet that the slow path counts to a flow out
        # of the keys' sight (an IP fragment, say) would need its order among the summed ones.
        one_by_one = bool(heap) and not seg.ordered
        if not one_by_one:
            for k, count, last in zip(seg.keys, seg.packets, seg.last, strict=True):
                h = (tcp if key_tcp[k] else udp).get(keys[k])
                if h is None:
                    i = seg.first(k)
                    new_packets += count
                elif h.last > last:  # its time runs backwards: keep its last-seen exact
                    every.add(k)
                    i = seg.first(k)
                elif h.inspect:
                    i = seg.first_payload(k)
                else:
                    continue
                if i is not None:
                    heap.append(i)
            # Each new flow could push an old one out of the table (size cap) in mid-chunk,
            # before its packets here were counted.
            one_by_one = len(self.flows) + len(seg.others) + new_packets > self.flows.cap
        slow = self._slow
        buf = chunk.buf
        lt = chunk.linktype
        other = len(keys)
        fast = 0
        if one_by_one:
            for ts, s, e, k, payload, iplen in zip(*fastpath.pending(cols, a, b), strict=True):
                if k == other:
                    slow(ts, lt, buf[s:e])
                    continue
                h = (tcp if key_tcp[k] else udp).get(keys[k])
                if h is None or (payload and h.inspect):
                    slow(ts, lt, buf[s:e])
                    continue
                h.packets += 1
                h.nbytes += iplen
                h.last = ts
                fast += 1
            self.packets_fast += fast
            self.packets_decoded += fast
            return
        key_at = cols.key
        ts_at = cols.ts
        start_at = cols.start
        end_at = cols.end
        has_payload = cols.payload
        iplen_at = cols.iplen
        visited: list[int] = []
        heappop = heapq.heappop
        heapq.heapify(heap)
        while heap:
            i = heappop(heap)
            k = key_at.item(i)
            ts = ts_at.item(i)
            if k == other:
                slow(ts, lt, buf[start_at.item(i) : end_at.item(i)])
                continue
            visited.append(i)
            table = tcp if key_tcp[k] else udp
            key = keys[k]
            h = table.get(key)
            if h is None or (h.inspect and has_payload.item(i)):
                slow(ts, lt, buf[start_at.item(i) : end_at.item(i)])
                h = table.get(key)
            else:
                h.packets += 1
                h.nbytes += iplen_at.item(i)
                h.last = ts
                fast += 1
            # This key's next packet that could take the slow path.
            if h is None or k in every:
                i = seg.after(k, i)
            elif h.inspect:
                i = seg.payload_after(k, i)
            else:
                continue
            if i is not None:
                heapq.heappush(heap, i)
        exact = not seg.others  # else timestamps are in order: the latest is the last
        for k, count, nbytes, last, after in zip(
            *fastpath.summed(cols, a, b, visited), strict=True
        ):
            h = (tcp if key_tcp[k] else udp)[keys[k]]
            h.packets += count
            h.nbytes += nbytes
            fast += count
            if after and (exact or last > h.last):
                h.last = last
        self.packets_fast += fast
        self.packets_decoded += fast

    def _run_pure(self, chunks: Iterable[Chunk]) -> None:
        """`run` in pure Python, the hot loop: records are walked in place; a packet of a known
        flow whose inspection is over costs a record-header unpack and `count_known`."""
        tcp = self.flows.tcp
        udp = self.flows.udp
        slow = self._slow
        known = count_known
        next_sweep = self._next_sweep
        n = 0
        fast = 0
        ts = self.last_ts
        for chunk in chunks:
            buf = chunk.buf
            pos = chunk.start
            end = chunk.end
            lt = chunk.linktype
            res = chunk.tsres
            unpack_from = chunk.header.unpack_from
            start_n = n
            layout = _LINK_LAYOUTS.get(lt)
            while pos + 16 <= end:
                sec, frac, caplen, _ = unpack_from(buf, pos)
                s = pos + 16
                e = s + caplen
                if e > end or caplen > MAX_RECORD:  # incomplete, or corrupt: capture decides
                    break
                pos = e
                n += 1
                ts = sec + frac * res
                if ts >= next_sweep:
                    next_sweep = self._sweep(ts)
                if layout is not None and known(tcp, udp, ts, layout, buf, s, caplen):
                    fast += 1
                else:
                    slow(ts, lt, buf[s:e])
            chunk.stop = pos
            chunk.count = n - start_n
        self._loop_end(next_sweep, ts, n, fast)

    def _loop_end(self, next_sweep: float, ts: float, n: int, fast: int) -> None:
        """What a loop keeps in locals, handed back: the next sweep, the time, the counts."""
        self._next_sweep = next_sweep
        self.last_ts = ts
        self.packets_read += n
        self.packets_fast += fast
        self.packets_decoded += fast

    def _sweep(self, ts: float) -> float:
        if self._next_sweep:
            self.flows.sweep(ts)
            try:
                self.observer.tick(ts)
            except Exception:
                log.exception("observer tick failed")
        self._next_sweep = ts + self.flows.sweep_interval
        return self._next_sweep

    def _skip(self, reason: str) -> None:
        """A packet that could not be counted to a flow."""
        self.skipped[reason] += 1

    def _weird(self, reason: str) -> None:
        """A payload a decoder could not make sense of (its packet was still counted)."""
        self.weird[reason] += 1

    def _slow(self, ts: float, lt: int, frame: bytes) -> None:
        try:
            self._decode(ts, lt, frame)
        except Exception as exc:  # a decoder bug must not stop the capture
            self._weird("internal." + type(exc).__name__)
            log.debug("packet decode failed", exc_info=True)

    def _decode(self, ts: float, lt: int, frame: bytes) -> None:
        link = parse_link(lt, frame)
        if isinstance(link, Weird):
            return self._skip(link.reason)
        ipk = parse_ip(frame, link.offset, link.ethertype)
        if isinstance(ipk, Weird):
            return self._skip(ipk.reason)
        if ipk.proto != TCP and ipk.proto != UDP:
            if ipk.proto == ndp.ICMPV6:
                self._icmp6(frame[ipk.l4 : ipk.end], ts)
            return self._skip("ip.not_tcp_udp")
        if ipk.frag_offset:
            # A later fragment: no ports. Count it to the flow its first fragment opened.
            h = self._fragments.get((ipk.src, ipk.dst, ipk.proto, ipk.frag_id or 0))
            if h is None:
                return self._skip("ip.fragment_without_first")
            h.packets += 1
            h.nbytes += ipk.length
            h.last = ts
            self.packets_decoded += 1
            return None
        tr = parse_transport(frame, ipk)
        if isinstance(tr, Weird):
            return self._skip(tr.reason)
        is_tcp = ipk.proto == TCP
        key = ipk.src + ipk.dst + frame[ipk.l4 : ipk.l4 + 4]
        table = self.flows.tcp if is_tcp else self.flows.udp
        h = table.get(key)
        if h is None:
            entry = self._new_flow(ts, ipk.src, ipk.dst, tr.sport, tr.dport, is_tcp, tr.flags, link)
            h = entry.up if entry.key_up == key else entry.down
        entry = h.entry
        h.packets += 1
        h.nbytes += ipk.length
        h.last = ts
        self.packets_decoded += 1
        if ipk.more_fragments:
            frags = self._fragments
            frags[(ipk.src, ipk.dst, ipk.proto, ipk.frag_id or 0)] = h
            if len(frags) > MAX_FRAGMENTS:
                frags.popitem(last=False)
        flow = entry.flow
        if h.up and flow.device_mac is None:
            mac = lan_source_mac(link.src_mac, link.pkttype)
            if mac is not None:
                flow.device_mac = mac
                self._note_device(mac, flow.src_ip, ts)
        if is_tcp:
            if tr.flags & _SYN and h.up:
                entry.isn = (tr.seq + 1) & 0xFFFFFFFF
            if tr.payload and h.inspect:
                self._inspect_tcp(entry, h, tr.seq, tr.payload, ts)
        elif tr.payload and h.inspect:
            self._inspect_udp(entry, h, tr.sport, tr.dport, tr.payload, ts)
        return None

    # --- flows ----------------------------------------------------------------------------------

    def is_lan(self, addr: bytes) -> bool:
        hit = self._lan_cache.get(addr)
        if hit is None:
            x = int.from_bytes(addr, "big")
            ranges = self._lan_v4 if len(addr) == 4 else self._lan_v6
            hit = any(lo <= x <= hi for lo, hi in ranges)
            if len(self._lan_cache) >= MAX_LAN_CACHE:
                self._lan_cache.clear()
            self._lan_cache[addr] = hit
        return hit

    def _new_flow(
        self,
        ts: float,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        is_tcp: bool,
        flags: int,
        link: Link | None,
        opener_is_src: bool = False,
    ) -> FlowEntry:
        src_lan, dst_lan = self.is_lan(src), self.is_lan(dst)
        if src_lan != dst_lan:
            up = src_lan
        elif opener_is_src:  # conntrack's original direction is the opener's
            up = True
        elif is_tcp and flags & _SYN:
            up = not flags & _ACK  # SYN opens, SYN-ACK answers
        elif sport < 1024 <= dport or (sport in _SERVER_PORTS and dport not in _SERVER_PORTS):
            up = False  # first seen packet came from the service side
        else:
            up = True
        if not up:
            src, dst, sport, dport = dst, src, dport, sport
        client_ip = ip_str(src)
        server_ip = ip_str(dst)
        self._uid += 1
        mac = None
        if link is None:  # a conntrack event: no frame
            pass
        elif not up:
            # A server's answer names the client only as its destination: that attributes
            # the flow to a device already known, but never makes one (a destination MAC may
            # be all zeros in a cooked capture, or the router's own on a routed segment).
            dst_mac = link.dst_mac
            if dst_mac is not None and not dst_mac[0] & 1:
                known = mac_str(dst_mac)
                mac = known if known in self.devices else None
        else:
            mac = lan_source_mac(link.src_mac, link.pkttype)
        if mac is None:  # the kernel's neighbour table (live) or an earlier packet's source
            mac = self.ip_mac.get(client_ip)
        if mac is not None:
            self._note_device(mac, client_ip, ts)
        flow = Flow(
            uid=f"F{self._uid:x}",
            proto="tcp" if is_tcp else "udp",
            src_ip=client_ip,
            src_port=sport,
            dst_ip=server_ip,
            dst_port=dport,
            device_mac=mac,
            first_seen=ts,
            last_seen=ts,
        )
        ports = sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
        rports = ports[2:] + ports[:2]
        entry = self.flows.add(flow, src + dst + ports, dst + src + rports)
        name = self.dns.lookup(client_ip, server_ip, ts)
        if name is not None:
            flow.server_name, flow.name_source = name, "dns"
        budget = self.cfg.flows.inspect_packets
        if dns_dec.MDNS_PORT in (sport, dport):
            entry.app = "mdns"
        elif dport in _DNS_PORTS or sport in _DNS_PORTS:
            entry.app = "dns"
            entry.up.inspect = entry.down.inspect = _SMALL_PROTOCOL_INSPECT
        elif not is_tcp and (dport in _DHCP_PORTS or dport in _DHCP6_PORTS):
            entry.app = "dhcp"
            entry.up.inspect = entry.down.inspect = _SMALL_PROTOCOL_INSPECT
        else:
            entry.up.inspect = budget
        return entry

    def _on_flow_end(self, entry: FlowEntry, reason: str) -> None:
        if entry.http is not None:  # a request whose body never completed
            res = entry.http.finish()
            entry.http = None
            if isinstance(res, HttpRequest):
                self._http_request(entry, res, entry.up.last)
        flow = entry.sync()
        if entry.app == "quic" and entry.quic_state != "named":
            self.quic_unnamed[entry.quic_state or "no_client_initial"] += 1
        if flow.server_name is None and entry.app not in ("dns", "mdns", "dhcp"):
            name = self.dns.lookup(flow.src_ip, flow.dst_ip, flow.first_seen, flow.last_seen)
            if name is not None:
                flow.server_name, flow.name_source = name, "dns"
        if flow.device_mac is None:
            flow.device_mac = self.ip_mac.get(flow.src_ip)
            if flow.device_mac is not None:
                self._note_device(flow.device_mac, flow.src_ip, flow.last_seen)
        if entry.app:
            flow.extra["app"] = entry.app
        try:
            self.sink.flow(flow)
        except BrokenPipeError:
            raise  # the reader of our output went away: stop
        except Exception:  # a failing sink must not stop the packet loop
            log.exception("flow sink failed")

    # --- payload inspection ---------------------------------------------------------------------

    def _done(self, h: Half) -> None:
        h.inspect = 0

    def _spend(self, h: Half, size: int) -> None:
        """Charge a payload packet to the direction's inspection budget.

        A ClientHello still being reassembled is not charged per packet: its assembler bounds
        itself (bytes and segments), and a hello with post-quantum key shares easily spans more
        segments than the budget. Nor is a QUIC datagram while the client's Initials are being
        reassembled: Chrome's first flight spans several datagrams, a Retry or a version
        negotiation starts it again, and 0-RTT packets come in between; the tracker bounds
        itself (CRYPTO bytes, flows)."""
        h.ibytes += size
        entry = h.entry
        if entry.tls is None and not (entry.app == "quic" and self.quic.in_progress(entry.key_up)):
            h.inspect -= 1
        if h.ibytes >= self.cfg.flows.inspect_bytes:
            h.inspect = 0

    def _inspect_tcp(self, entry: FlowEntry, h: Half, seq: int, payload: bytes, ts: float) -> None:
        self._spend(h, len(payload))
        if entry.app == "dns":
            self._dns_tcp(entry, h, payload, ts)
            return
        if not h.up:
            return
        if entry.app is None:
            in_order = entry.isn is None or entry.isn == seq
            if in_order and http_dec.looks_like_http_request(payload):
                entry.app = "http"
                entry.http = http_dec.HttpRequestAssembler(self.cfg.flows.http_body_budget)
                h.inspect = _UNLIMITED  # HTTP: the byte budget decides
            elif in_order and not tls_dec.looks_like_tls(payload):
                entry.app = "other"
            else:
                # TLS, or a segment that arrived before the stream's first: let TLS reassemble.
                entry.app = "tls"
                entry.tls = tls_dec.ClientHelloAssembler(isn=entry.isn)
        if entry.app == "tls":
            res = entry.tls.feed(seq, payload)
            if res is None:
                return
            entry.tls = None
            if isinstance(res, Weird):
                self._weird(res.reason)
                if res.reason == "tls.not_tls":
                    entry.app = "other"  # its bytes were buffered; later ones get scanned
                self._done(h)
                return
            self._client_hello(entry, res, "tls", ts)
            self._done(h)
        elif entry.app == "http":
            self._http_feed(entry, h, payload, ts)
        elif entry.app == "other":
            self._observe(self.observer.payload, entry.flow, payload, ts)

    def _observe(self, hook: Any, flow: Flow, *args: Any) -> None:
        dev = self.devices.get(flow.device_mac) if flow.device_mac else None
        try:
            hook(flow, dev, *args)
        except Exception:  # a failing detector must not stop the packet loop
            self._weird("internal.observer")
            log.exception("observer failed")

    def _http_feed(self, entry: FlowEntry, h: Half, payload: bytes, ts: float) -> None:
        asm = entry.http
        if asm is None:
            if not http_dec.looks_like_http_request(payload):
                return  # body bytes past the budget, or a response-less upload
            asm = entry.http = http_dec.HttpRequestAssembler(self.cfg.flows.http_body_budget)
        res = asm.feed(payload)
        if res is None:
            return
        entry.http = None
        if isinstance(res, Weird):
            self._weird(res.reason)
            return
        self._http_request(entry, res, ts)

    def _http_request(self, entry: FlowEntry, req: HttpRequest, ts: float) -> None:
        flow = entry.flow
        if len(flow.http) < self.cfg.flows.max_http_requests:
            flow.http.append(req)
        # Named before detection: an alert names its server, and repeats are suppressed per
        # server name (an address the phone never looked up would have none).
        if req.host and flow.name_source in (None, "dns"):
            host = host_only(req.host)
            if host:
                flow.server_name, flow.name_source = redact_name(host), "http"
        # The device learns the request's User-Agent before detection sees the request: an
        # alert on it names the device as this request shows it (kind, vendor).
        if req.user_agent and flow.device_mac:
            dev = self.devices.get(flow.device_mac)
            if (
                dev is not None
                and req.user_agent not in dev.user_agents
                and len(dev.user_agents) < MAX_USER_AGENTS
            ):
                dev.user_agents.append(req.user_agent)
        self._observe(self.observer.http_request, flow, req, ts)

    def _client_hello(self, entry: FlowEntry, ch: ClientHello, source: str, ts: float) -> None:
        flow = entry.flow
        if ch.alpn:
            flow.alpn = ch.alpn
        flow.ja4 = ch.ja4
        dev = self.devices.get(flow.device_mac) if flow.device_mac else None
        if ch.ja4 is not None and dev is not None and remember_ja4(dev.ja4, ch.ja4):
            self._observe(self.observer.fingerprint, flow, ch.ja4, ts)
        if ch.sni:
            sni = redact_name(ch.sni.lower().rstrip("."))
            if ch.ech and self.ech_covers.is_cover(sni):
                # An ECH cover never names the flow: a name from DNS stays, or none
                # (sensor.ech says why a hello with ECH and another name is named by it).
                flow.ech, flow.outer_server_name = True, sni
                if flow.server_name is None:  # the answer may have come after the SYN
                    name = self.dns.lookup(flow.src_ip, flow.dst_ip, flow.first_seen, ts)
                    if name is not None:
                        flow.server_name, flow.name_source = name, "dns"
            else:
                flow.server_name = sni
                flow.name_source = "tls" if source == "tls" else "quic"
        # DNS bypass: SNI and ALPN say DoT, DoQ or DoH
        self._observe(self.observer.client_hello, flow, entry.up.last)

    def _inspect_udp(
        self, entry: FlowEntry, h: Half, sport: int, dport: int, payload: bytes, ts: float
    ) -> None:
        self._spend(h, len(payload))
        app = entry.app
        if app == "dns":
            self._dns_message(entry, dns_dec.parse_dns(payload), ts)
        elif app == "dhcp":
            if dport in _DHCP_PORTS or sport in _DHCP_PORTS:
                self._dhcp(dhcp_dec.parse_dhcp(payload), ts)
            else:
                self._dhcp(dhcp_dec.parse_dhcpv6(payload), ts, entry.flow.device_mac)
        elif h.up and app == "other":
            self._observe(self.observer.payload, entry.flow, payload, ts)
        elif h.up and app in (None, "quic"):
            if app is None and not quic_dec.looks_like_quic(payload):
                entry.app = "other"
                self._observe(self.observer.payload, entry.flow, payload, ts)
                return
            entry.app = "quic"
            tracker = self.quic
            res = tracker.feed(payload, entry.key_up)
            if tracker.last_version is not None and entry.quic_state != "named":
                entry.flow.quic_version = quic_dec.version_name(tracker.last_version)
            if res is None:
                if tracker.in_progress(entry.key_up):
                    entry.quic_state = "incomplete"
                return
            if isinstance(res, Weird):
                self._weird(res.reason)
                entry.quic_state = res.reason
            else:
                self._client_hello(entry, res, "quic", ts)
                named = "ech_cover" if entry.flow.ech else "named"
                entry.quic_state = named if res.sni else "no_sni"
            self._done(h)

    # --- DNS and DHCP ----------------------------------------------------------------------------

    def _dns_tcp(self, entry: FlowEntry, h: Half, payload: bytes, ts: float) -> None:
        if h.up:
            return  # queries carry nothing we need from TCP
        buf = entry.dns_buf + payload
        msgs, rest = dns_dec.split_tcp_dns(buf)
        entry.dns_buf = rest[:65538]
        for m in msgs:
            self._dns_message(entry, dns_dec.parse_dns(m), ts)

    def _dns_message(self, entry: FlowEntry, msg: DnsMessage | Weird, ts: float) -> None:
        if isinstance(msg, Weird):
            self._weird(msg.reason)
            return
        flow = entry.flow
        queries = flow.extra.setdefault("dns_queries", [])
        assert isinstance(queries, list)
        # Names are kept (query list, cache: flow records, alerts) with data labels cut; the
        # detector gets each name as sent, once per flow.
        asked = self._asked
        for qname, _qtype in msg.questions:
            shown = asked.get((flow.uid, qname))
            new = shown is None
            if shown is None:
                shown = redact_name(qname)
            if shown not in queries and len(queries) < MAX_DNS_QUERIES:
                queries.append(shown)
            if new and not msg.is_response:
                asked[(flow.uid, qname)] = shown
                if len(asked) > MAX_ASKED:
                    asked.popitem(last=False)
                self._observe(self.observer.dns_query, flow, qname, ts)
        if not msg.is_response:
            return
        for cover in msg.ech_public_names:
            self.ech_covers.learn(cover)
        for address, qname, ttl in dns_dec.resolve_chain(msg):
            if not dns_dec.is_local_name(qname):
                shown = asked.get((flow.uid, qname)) or redact_name(qname)
                self.dns.put(flow.src_ip, address, shown, ttl, ts)
                if self.on_dns_answer is not None:
                    # The policy's domain sets; it checks the answering resolver itself.
                    self.on_dns_answer(flow.dst_ip, qname, address, ttl)

    def _dhcp(self, msg: DhcpMessage | Weird, ts: float, fallback_mac: str | None = None) -> None:
        if isinstance(msg, Weird):
            self._weird(msg.reason)
            return
        if msg.dns_servers:
            self._resolvers_offered(msg.dns_servers, ts)
        mac = msg.client_mac or fallback_mac
        if mac is None or msg.message_type in (2, 5, 6, 7):  # server replies describe no client
            return
        dev = self._device(mac, ts)
        if dev is None:
            return
        if msg.hostname:
            dev.hostname = msg.hostname[:255]
        if msg.vendor_class:
            dev.dhcp_vendor_class = msg.vendor_class[:255]
        if msg.param_list:
            dev.dhcp_params = msg.param_list[:64]
        for ip in (msg.requested_ip, msg.client_ip):
            if ip:
                self._note_device(mac, ip, ts)

    def _icmp6(self, icmp: bytes, ts: float) -> None:
        """Router Advertisements: the resolvers they hand out (RDNSS)."""
        got = ndp.parse_ra_resolvers(icmp)
        if isinstance(got, Weird):
            self._weird(got.reason)
        elif got:
            self._resolvers_offered(got, ts)

    def _resolvers_offered(self, addresses: tuple[str, ...], ts: float) -> None:
        try:
            self.observer.resolvers_offered(addresses, ts)
        except Exception:
            self._weird("internal.observer")
            log.exception("observer failed")

    # --- devices --------------------------------------------------------------------------------

    def _device(self, mac: str, ts: float) -> Device | None:
        dev = self.devices.get(mac)
        if dev is None:
            reason = _placeholder_mac(mac)
            if reason is not None:
                self.not_devices[reason] += 1
                return None
            if len(self.devices) >= MAX_DEVICES:
                self.devices_dropped += 1
                return None
            dev = self.devices[mac] = Device(mac=mac, first_seen=ts)
        dev.last_seen = ts
        return dev

    def _note_device(self, mac: str, ip: str, ts: float) -> None:
        if ip in _NOT_HOST_ADDRESSES:
            return
        dev = self._device(mac, ts)
        if dev is None and mac not in self.devices and _placeholder_mac(mac) is not None:
            return  # no device, and no address of a device either
        if dev is not None and ip not in dev.ips and len(dev.ips) < MAX_DEVICE_IPS:
            dev.ips.add(ip)
        self.learn_neighbour(ip, mac)

    def learn_neighbour(self, ip: str, mac: str) -> None:
        """An address's MAC (from a packet, or the kernel's neighbour table); bounded, the
        least recently learned go first (a flood of invented neighbours cannot grow it)."""
        ip_mac = self.ip_mac
        ip_mac[ip] = mac
        ip_mac.move_to_end(ip)
        if len(ip_mac) > MAX_IP_MAC:
            ip_mac.popitem(last=False)

    # --- live operation -------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Time passes without packets (the daemon's loop): end connections whose grace for
        late packets ran out; sweep idle flows when due."""
        if self.flows.ending:
            self.flows.end_due(now)
        if now >= self._next_sweep:
            self._sweep(now)

    def account_conntrack(
        self,
        proto: str,
        src: str,
        sport: int,
        dst: str,
        dport: int,
        bytes_orig: int,
        packets_orig: int,
        bytes_reply: int,
        packets_reply: int,
        now: float,
        final: bool = False,
        ct_id: int = 0,
    ) -> None:
        """Counters of one conntrack entry (original tuple = the opener, before NAT; `ct_id`
        its CTA_ID) into the flow it belongs to; a flow we had not seen (its first packets
        were missed, or it predates us, or left the table while open) is created. `final` (a
        DESTROY event) ends the flow."""
        if proto not in ("tcp", "udp"):
            return
        family = socket.AF_INET6 if ":" in src else socket.AF_INET
        try:  # inet_pton: a tenth of ipaddress's cost, on every conntrack event and dump entry
            sb = socket.inet_pton(family, src)
            db = socket.inet_pton(family, dst)
        except (OSError, ValueError):
            return
        if sb in self.gateway_addresses or not (self.is_lan(sb) or self.is_lan(db)):
            # The gateway's own connections (loopback, its WAN side, its LAN address opening
            # one): conntrack sees the whole namespace, but only LAN devices are accounted.
            self.conntrack_not_lan += 1
            return
        is_tcp = proto == "tcp"
        key = sb + db + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
        flows = self.flows
        flows.remember_open = True  # counters are cumulative: see flows.OpenEnded
        h = (flows.tcp if is_tcp else flows.udp).get(key)
        counts = (bytes_orig, packets_orig, bytes_reply, packets_reply)
        if h is not None and h.entry.final is not None:
            ended = h.entry
            orig, reply = (ended.up, ended.down) if h.up else (ended.down, ended.up)
            same = flows.conntrack_counts(ended, h.up, ct_id, counts)
            held = (orig.counted_bytes, orig.counted_packets)
            if final and (*held, reply.counted_bytes, reply.counted_packets) == same:
                return  # the same end again
            # Other counters for this tuple after its end: a new connection reusing it.
            self.flows.end(ended, "end")
            h = None
        if h is None:
            if not flows.open_ended.worth_a_flow(key, counts, ct_id, final):
                return
            entry = self._new_flow(now, sb, db, sport, dport, is_tcp, 0, None, True)
            h = entry.up if entry.key_up == key else entry.down
        entry = h.entry
        bytes_orig, packets_orig, bytes_reply, packets_reply = flows.conntrack_counts(
            entry, h.up, ct_id, counts
        )
        orig, reply = (entry.up, entry.down) if h.up else (entry.down, entry.up)
        before = entry.up.counted_bytes
        for half, nbytes, npackets in (
            (orig, bytes_orig, packets_orig),
            (reply, bytes_reply, packets_reply),
        ):
            if final:
                # Conntrack's final counters hold every packet of the connection: exact, even
                # when sampled packets were counted before (they are among them).
                half.nbytes, half.packets = nbytes, npackets
                half.ct_bytes, half.ct_packets = nbytes, npackets
                half.last = max(half.last, now)
            elif nbytes > half.counted_bytes or npackets > half.counted_packets:
                # Apart from the sampled counts, not onto them: sampled packets read after
                # this reading may be among what it counted (see `Half.ct_bytes`).
                half.ct_bytes = max(half.ct_bytes, nbytes)
                half.ct_packets = max(half.ct_packets, npackets)
                half.last = max(half.last, now)
        if entry.up.counted_bytes > before:
            self._progress(entry, entry.up.counted_bytes - before, now)
        if final:
            grace = self.cfg.flows.end_grace
            if grace > 0:
                self.flows.end_later(entry, now + grace)
            else:
                self.flows.end(entry, "end")

    def _progress(self, entry: FlowEntry, new_up: int, now: float) -> None:
        self._observe(self.observer.upload_progress, entry.sync(), new_up, now)

    def set_gateway_addresses(self, addresses: Iterable[str]) -> None:
        """The gateway's own addresses (connections they open are left out of the accounting);
        loopback needs no listing: it is never a LAN address."""
        packed = set()
        for addr in addresses:
            try:
                family = socket.AF_INET6 if ":" in addr else socket.AF_INET
                packed.add(socket.inet_pton(family, addr))
            except (OSError, ValueError):
                continue
        self.gateway_addresses = frozenset(packed)
        # the gateway's resolver is the network's own (DNS bypass)
        self.observer.gateway_addresses(sorted(ip_str(p) for p in packed))

    def retarget(self, cfg: Config, sink: FlowSink, observer: Observer) -> None:
        """New configuration and stages (SIGHUP); flows and devices carry over."""
        self.cfg = cfg
        self.sink = sink
        self.observer = observer

    def finish(self) -> None:
        """End every flow and report every device."""
        self.flows.flush()
        for dev in self.devices.values():
            try:
                self.sink.device(dev)
            except BrokenPipeError:
                raise
            except Exception:
                log.exception("device sink failed")

    def stats(self) -> dict[str, object]:
        return {
            "packets_read": self.packets_read,
            "packets_decoded": self.packets_decoded,
            "packets_fast_path": self.packets_fast,
            "packets_skipped": sum(self.skipped.values()),
            "skipped": dict(sorted(self.skipped.items())),
            "weird": dict(sorted(self.weird.items())),
            "quic_unnamed": dict(sorted(self.quic_unnamed.items())),
            "flows": self.flows.created,
            "flows_evicted": {"idle": self.flows.evicted_idle, "cap": self.flows.evicted_cap},
            "flows_late_packets": self.flows.late_packets,
            "flows_continued": self.flows.continued,
            "conntrack_not_lan": self.conntrack_not_lan,
            "devices": len(self.devices),
            "devices_dropped": self.devices_dropped,
            "not_devices": dict(sorted(self.not_devices.items())),
            "dns_cache": len(self.dns),
        }


_MIN_COLUMNS = 512 << 10
"""Chunks smaller than this (bytes) take the pure loop even with numpy: the arrays cost about
0.2 ms a chunk before they save anything, which a few hundred packets do not pay back. A pcap
file's chunks are 4 MiB; re-packed ones (pcapng, merged files) hold 512 packets."""


@functools.cache
def _fastpath_available() -> bool:
    """numpy is optional: without it the pure loop runs. (Cached: a failed import would
    search the path again at every call.)"""
    try:
        import sensor.fastpath  # noqa: F401
    except ImportError:
        return False
    return True


_NOT_HOST_ADDRESSES = frozenset(("0.0.0.0", "::", "255.255.255.255"))
_SERVER_PORTS = frozenset((53, 67, 80, 123, 443, 547, 853, 1883, 5222, 5228, 8080, 8443, 8883))


@functools.lru_cache(maxsize=4096)
def _placeholder_mac(mac: str) -> str | None:
    """Why `mac` can be no device (sensor/data/placeholders.toml), else None."""
    return placeholders.default().mac_reason(mac)
