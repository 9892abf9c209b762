"""The flow table: bidirectional TCP/UDP flows with per-direction counters, idle timeouts and a
hard size cap whose evictions are counted.

Each flow is reachable under two keys, one per direction, each mapping to that direction's
`Half`; so the packet loop's fast path is one dict lookup and three attribute updates. A key is
the raw bytes ``src_addr + dst_addr + src_port + dst_port`` exactly as they sit in an IPv4
(IHL 5) or IPv6 header followed by the transport header, so the fast path can slice it in one go.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sensor.config import FlowsConfig
from sensor.model import Flow


class Half:
    """One direction of a flow: what the fast path touches."""

    __slots__ = ("entry", "ibytes", "inspect", "last", "nbytes", "packets", "up")

    def __init__(self, entry: FlowEntry, up: bool, inspect: int, ts: float) -> None:
        self.entry = entry
        self.up = up
        self.packets = 0
        self.nbytes = 0
        self.last = ts
        self.inspect = inspect
        """Payload packets still to hand to the decoders; 0 = count only (the fast path)."""
        self.ibytes = 0
        """Payload bytes handed to the decoders so far."""


class FlowEntry:
    """A flow in the table: the output record, its two halves and decoder state."""

    __slots__ = (
        "app",
        "dns_buf",
        "down",
        "final",
        "flow",
        "http",
        "is_tcp",
        "isn",
        "key_down",
        "key_up",
        "quic_state",
        "tls",
        "up",
    )

    def __init__(self, flow: Flow, key_up: bytes, key_down: bytes, is_tcp: bool) -> None:
        self.flow = flow
        self.key_up = key_up
        self.key_down = key_down
        self.is_tcp = is_tcp
        self.up = Half(self, True, 0, flow.first_seen)
        self.down = Half(self, False, 0, flow.first_seen)
        self.app: str | None = None
        """What the payload turned out to be: "tls", "http", "quic", "dns", "dhcp", "other"."""
        self.tls: Any = None
        self.http: Any = None
        self.isn: int | None = None
        """The client's first payload sequence number, when its SYN was seen."""
        self.dns_buf = b""
        self.quic_state: str | None = None
        """QUIC flows: where naming got to ("named", "ech_cover", "incomplete", "no_sni", a
        Weird reason); None until a client Initial was read."""
        self.final: tuple[Half, Half] | None = None
        """After conntrack said the connection ended: the halves the table hands its late
        packets (decoded, counted nowhere: the final counters already hold them)."""

    @property
    def last_seen(self) -> float:
        return max(self.up.last, self.down.last)

    def sync(self) -> Flow:
        """Copy the halves' counters into the flow record and return it."""
        f = self.flow
        f.packets_up, f.bytes_up = self.up.packets, self.up.nbytes
        f.packets_down, f.bytes_down = self.down.packets, self.down.nbytes
        f.last_seen = self.last_seen if (self.up.packets or self.down.packets) else f.first_seen
        return f


MAX_ENDING = 1024
"""Ended connections waiting for late packets at most: under a flood of short connections the
grace must not hold the table (and the memory bound) full of them."""

EndReason = str
"""Why a flow left the table: "idle", "evicted" (size cap) or "end" (shutdown/end of capture)."""


class FlowTable:
    def __init__(self, cfg: FlowsConfig, on_end: Callable[[FlowEntry, EndReason], None]) -> None:
        self.cfg = cfg
        self.on_end = on_end
        self.tcp: dict[bytes, Half] = {}
        self.udp: dict[bytes, Half] = {}
        self.entries: OrderedDict[bytes, FlowEntry] = OrderedDict()
        self.created = 0
        self.evicted_idle = 0
        self.evicted_cap = 0
        self.cap = cfg.max_flows
        """The size cap in force: `cfg.max_flows`, or lower once `shrink` was asked to fit
        the daemon's memory bound."""
        self.sweep_interval = min(cfg.tcp_idle_timeout, cfg.udp_idle_timeout) / 4
        self.ending: OrderedDict[bytes, tuple[FlowEntry, float]] = OrderedDict()
        """Ended connections waiting for their late packets (`end_later`), by key_up, due
        times in order."""
        self.late_packets = 0
        """Packets that reached a connection after its end (counted when it leaves the table)."""

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, flow: Flow, key_up: bytes, key_down: bytes) -> FlowEntry:
        """Insert a new flow (the caller checked neither key is present)."""
        entries = self.entries
        if len(entries) >= self.cap:
            self._evict_oldest(len(entries) - self.cap + 1)
        is_tcp = flow.proto == "tcp"
        entry = FlowEntry(flow, key_up, key_down, is_tcp)
        table = self.tcp if is_tcp else self.udp
        table[key_up] = entry.up
        table[key_down] = entry.down
        entries[key_up] = entry
        self.created += 1
        return entry

    def shrink(self, cap: int) -> int:
        """Lower the cap to `cap` (never raised again: the memory those flows took is what
        the bound allows) and end the oldest flows above it, as the cap would have. Returns
        how many were ended."""
        self.cap = max(16, min(self.cap, cap))
        return self._evict_oldest(len(self.entries) - self.cap)

    def _evict_oldest(self, count: int) -> int:
        """End the `count` oldest flows (the size cap's evictions); returns how many. Ended
        connections waiting for late packets go first: they are over, and a flood of short
        connections must not push live flows out."""
        entries = self.entries
        ended = 0
        while ended < count and self.ending:
            oldest, _ = next(iter(self.ending.values()))
            self.end(oldest, "end")
            ended += 1
        while ended < count and entries:
            _, victim = entries.popitem(last=False)
            self.evicted_cap += 1
            ended += 1
            self._remove(victim)
            self.on_end(victim, "evicted")
        return ended

    def _remove(self, entry: FlowEntry) -> None:
        table = self.tcp if entry.is_tcp else self.udp
        table.pop(entry.key_up, None)
        table.pop(entry.key_down, None)
        if entry.final is not None:
            self.ending.pop(entry.key_up, None)
            late_up, late_down = entry.final
            self.late_packets += late_up.packets + late_down.packets
            # Late packets' times count; their bytes are in the final counters already.
            entry.up.last = max(entry.up.last, late_up.last)
            entry.down.last = max(entry.down.last, late_down.last)

    def end_later(self, entry: FlowEntry, due: float) -> None:
        """Conntrack says the connection ended and its halves hold the final counters. Its
        sampled packets may still be on their way, so it stays reachable under its keys until
        `due` (`end_due`): late packets go to spare halves that keep the inspection budget
        (their payload is decoded: names, identifiers) and are counted nowhere."""
        if entry.final is not None or entry.key_up not in self.entries:
            return
        halves = []
        for half in (entry.up, entry.down):
            late = Half(entry, half.up, half.inspect, half.last)
            late.ibytes = half.ibytes
            halves.append(late)
        late_up, late_down = halves
        entry.final = (late_up, late_down)
        table = self.tcp if entry.is_tcp else self.udp
        table[entry.key_up] = late_up
        table[entry.key_down] = late_down
        self.ending[entry.key_up] = (entry, due)
        if len(self.ending) > MAX_ENDING:
            # A flood of short connections: the oldest waiting end goes at once.
            oldest, _ = next(iter(self.ending.values()))
            self.end(oldest, "end")

    def end_due(self, now: float) -> int:
        """End the connections whose grace ran out; returns how many."""
        ending = self.ending
        ended = 0
        while ending:
            entry, due = next(iter(ending.values()))
            if due > now:
                break
            self.end(entry, "end")
            ended += 1
        return ended

    def end(self, entry: FlowEntry, reason: EndReason) -> None:
        if self.entries.pop(entry.key_up, None) is not None:
            self._remove(entry)
            self.on_end(entry, reason)
        else:
            self.ending.pop(entry.key_up, None)

    def sweep(self, now: float) -> int:
        """End every flow idle for longer than its protocol's timeout; returns how many."""
        tcp_cut = now - self.cfg.tcp_idle_timeout
        udp_cut = now - self.cfg.udp_idle_timeout
        idle = [
            e
            for e in self.entries.values()
            if max(e.up.last, e.down.last) < (tcp_cut if e.is_tcp else udp_cut)
        ]
        for e in idle:
            self.evicted_idle += 1
            self.end(e, "idle")
        return len(idle)

    def flush(self) -> None:
        """End every flow (end of capture or shutdown)."""
        while self.entries:
            _, e = self.entries.popitem(last=False)
            self._remove(e)
            self.on_end(e, "end")
