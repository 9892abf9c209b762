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
from typing import Any, NamedTuple

from sensor.config import FlowsConfig
from sensor.model import Flow, NameSource


class Half:
    """One direction of a flow: what the fast path touches."""

    __slots__ = (
        "ct_bytes",
        "ct_packets",
        "entry",
        "ibytes",
        "inspect",
        "last",
        "nbytes",
        "packets",
        "up",
    )

    def __init__(self, entry: FlowEntry, up: bool, inspect: int, ts: float) -> None:
        self.entry = entry
        self.up = up
        self.packets = 0
        self.nbytes = 0
        """Packets and bytes sampled (the packet loop counts them here)."""
        self.ct_packets = 0
        self.ct_bytes = 0
        """Conntrack's latest reading of this direction (the flow's own: less a continuation's
        base). Kept apart from the sampled counts: NFLOG hands packets over in batches (up to
        its flush timeout later), so a dump may already hold packets still on their way to
        us. The direction counts the larger of the two, never their sum."""
        self.last = ts
        self.inspect = inspect
        """Payload packets still to hand to the decoders; 0 = count only (the fast path)."""
        self.ibytes = 0
        """Payload bytes handed to the decoders so far."""

    @property
    def counted_packets(self) -> int:
        """What the direction counts: the larger of the sampled and conntrack's (so bytes)."""
        return max(self.packets, self.ct_packets)

    @property
    def counted_bytes(self) -> int:
        return max(self.nbytes, self.ct_bytes)


class FlowEntry:
    """A flow in the table: the output record, its two halves and decoder state."""

    __slots__ = (
        "app",
        "base",
        "ct_id",
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
        self.base: Counted | None = None
        """A continuation (the connection's earlier flow left the table while it was still
        open): what the earlier records counted. The halves count only what came since."""
        self.ct_id = 0
        """Conntrack's id of the connection, once conntrack reported it (0: not yet)."""

    @property
    def last_seen(self) -> float:
        return max(self.up.last, self.down.last)

    def sync(self) -> Flow:
        """Copy the halves' counters into the flow record and return it."""
        f = self.flow
        up, down = self.up, self.down
        f.packets_up, f.bytes_up = up.counted_packets, up.counted_bytes
        f.packets_down, f.bytes_down = down.counted_packets, down.counted_bytes
        f.last_seen = self.last_seen if (f.packets_up or f.packets_down) else f.first_seen
        return f


MAX_ENDING = 1024
"""Ended connections waiting for late packets at most: under a flood of short connections the
grace must not hold the table (and the memory bound) full of them."""

Counts = tuple[int, int, int, int]
"""Conntrack's cumulative counters: (orig bytes, orig packets, reply bytes, reply packets)."""


class Counted(NamedTuple):
    """What the records of a connection ended while still open (evicted at the size cap, shed
    for memory, swept idle) counted, kept so a later dump, packet or end of the same
    connection adds only what came since (see `OpenEnded`)."""

    first_uid: str
    ct_id: int
    bytes_up: int
    packets_up: int
    bytes_down: int
    packets_down: int
    server_name: str | None
    name_source: NameSource | None

    def since(self, orig_is_up: bool, counts: Counts) -> Counts:
        """Conntrack's cumulative `counts` less what was counted already (never below 0)."""
        bo, po, br, pr = counts
        if orig_is_up:
            ub, up, db, dp = self.bytes_up, self.packets_up, self.bytes_down, self.packets_down
        else:
            db, dp, ub, up = self.bytes_up, self.packets_up, self.bytes_down, self.packets_down
        return (max(0, bo - ub), max(0, po - up), max(0, br - db), max(0, pr - dp))

    def reversed(self) -> Counted:
        return self._replace(
            bytes_up=self.bytes_down,
            packets_up=self.packets_down,
            bytes_down=self.bytes_up,
            packets_down=self.packets_up,
        )


MAX_OPEN_ENDED = 32768
"""Connections ended while still open remembered at most (least recently seen forgotten
first): about 14 MB at most (`make bench`: bench/open_ended_bench.py). Memory shedding lowers
it with the flow table's cap, to MIN_OPEN_ENDED at least."""
MIN_OPEN_ENDED = 1024


class OpenEnded:
    """Connections whose flow left the table while conntrack still held them. Conntrack's
    counters are cumulative: without this, each later dump of such a connection (every
    `daemon.conntrack_interval`) started a new flow with all its bytes again, and a phone's
    long-lived connection under a flood of other flows was counted ten times over.

    Keyed by the flow's key_up; a remembered connection is forgotten when its continuation
    flow starts (which carries it on), when conntrack's end comes for it, or when pushed out.
    """

    def __init__(self, size: int = MAX_OPEN_ENDED) -> None:
        self.size = size
        self.counted: OrderedDict[bytes, Counted] = OrderedDict()
        self.pushed_out = 0
        """Remembered connections forgotten for room (a later dump of one counts it again)."""

    def __len__(self) -> int:
        return len(self.counted)

    def remember(self, entry: FlowEntry) -> None:
        base = entry.base
        up, down, flow = entry.up, entry.down, entry.flow
        counted = self.counted
        counted[entry.key_up] = Counted(
            base.first_uid if base is not None else flow.uid,
            entry.ct_id or (base.ct_id if base is not None else 0),
            up.counted_bytes + (base.bytes_up if base is not None else 0),
            up.counted_packets + (base.packets_up if base is not None else 0),
            down.counted_bytes + (base.bytes_down if base is not None else 0),
            down.counted_packets + (base.packets_down if base is not None else 0),
            flow.server_name,
            flow.name_source,
        )
        counted.move_to_end(entry.key_up)
        if len(counted) > self.size:
            counted.popitem(last=False)
            self.pushed_out += 1

    def resize(self, size: int) -> None:
        self.size = size
        counted = self.counted
        while len(counted) > size:
            counted.popitem(last=False)
            self.pushed_out += 1

    def take(self, key_up: bytes, key_down: bytes) -> Counted | None:
        """The remembered connection a new flow continues (forgotten here), if any."""
        prior = self.counted.pop(key_up, None)
        if prior is None:
            prior = self.counted.pop(key_down, None)
            if prior is not None:
                prior = prior.reversed()
        return prior

    def worth_a_flow(self, key: bytes, counts: Counts, ct_id: int, final: bool) -> bool:
        """Conntrack reports a connection with no flow in the table (`key`: its original
        direction): whether it makes one. Not when it counted nothing, nor when it is a
        remembered one with nothing new since; its end (`final`) forgets it then."""
        counted = self.counted
        prior = counted.get(key)
        orig_is_up = True
        if prior is None and counted:
            rkey = key[len(key) // 2 - 2 : -4] + key[: len(key) // 2 - 2] + key[-2:] + key[-4:-2]
            prior = counted.get(rkey)
            key, orig_is_up = rkey, False
        if prior is not None:
            if ct_id and prior.ct_id and ct_id != prior.ct_id:
                # Another connection on the same addresses and ports: the remembered one's end
                # was lost (event overrun), so it is over.
                del counted[key]
            else:
                counts = prior.since(orig_is_up, counts)
                if not any(counts):
                    if final:
                        del counted[key]
                    else:
                        counted.move_to_end(key)  # still open: keep it longest
                    return False
        return bool(counts[0] or counts[2])


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
        self.open_ended = OpenEnded()
        self.remember_open = False
        """Remember flows ended while their connection may still be open (`OpenEnded`): set
        once conntrack reports (live), where counters are cumulative; never in `analyze`."""
        self.continued = 0
        """Flows that continue a connection ended while still open (`extra.continued_from`)."""

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, flow: Flow, key_up: bytes, key_down: bytes) -> FlowEntry:
        """Insert a new flow (the caller checked neither key is present)."""
        entries = self.entries
        # Taken before the cap makes room: the flow pushed out may push this one out of memory.
        prior = self.open_ended.take(key_up, key_down) if self.open_ended.counted else None
        if len(entries) >= self.cap:
            self._evict_oldest(len(entries) - self.cap + 1)
        is_tcp = flow.proto == "tcp"
        entry = FlowEntry(flow, key_up, key_down, is_tcp)
        table = self.tcp if is_tcp else self.udp
        table[key_up] = entry.up
        table[key_down] = entry.down
        entries[key_up] = entry
        self.created += 1
        if prior is not None:
            self._continue(entry, prior)
        return entry

    def _continue(self, entry: FlowEntry, prior: Counted) -> None:
        entry.base = prior
        flow = entry.flow
        flow.extra["continued_from"] = prior.first_uid
        if flow.server_name is None and prior.server_name is not None:
            flow.server_name, flow.name_source = prior.server_name, prior.name_source
        self.continued += 1

    def conntrack_counts(
        self, entry: FlowEntry, orig_is_up: bool, ct_id: int, counts: Counts
    ) -> Counts:
        """Conntrack's cumulative counters as the flow's own: less what the connection's
        earlier records counted, when the flow continues one."""
        if ct_id and not entry.ct_id:
            base = entry.base
            if base is not None and base.ct_id and base.ct_id != ct_id:
                # Made by a packet on the remembered addresses and ports, but conntrack says it
                # is another connection: not a continuation.
                entry.base = None
                entry.flow.extra.pop("continued_from", None)
                self.continued -= 1
            entry.ct_id = ct_id
        base = entry.base
        return counts if base is None else base.since(orig_is_up, counts)

    def shrink(self, cap: int) -> int:
        """Lower the cap to `cap` (never raised again: the memory those flows took is what
        the bound allows) and end the oldest flows above it, as the cap would have. Returns
        how many were ended."""
        self.cap = max(16, min(self.cap, cap))
        ended = self._evict_oldest(len(self.entries) - self.cap)
        # What the shed flows leave remembered (about 0.5 KB each) is held to the cap too.
        self.open_ended.resize(max(MIN_OPEN_ENDED, min(self.open_ended.size, self.cap)))
        return ended

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
            if self.remember_open and victim.final is None:
                self.open_ended.remember(victim)
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
            if self.remember_open and e.final is None:
                self.open_ended.remember(e)
        return len(idle)

    def flush(self) -> None:
        """End every flow (end of capture or shutdown)."""
        while self.entries:
            _, e = self.entries.popitem(last=False)
            self._remove(e)
            self.on_end(e, "end")
