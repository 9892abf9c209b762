"""Live packet sources for a gateway: nfnetlink_log (NFLOG) and an AF_PACKET socket with a BPF
filter. Both yield the `Packet` tuples (timestamp, link type, frame) the pipeline eats.

Selection happens in the kernel, so only packets that can carry names, identifiers or device
facts reach Python; conntrack counts the bytes of everything else.

- `NflogSource` (sensor.sources.nflog) reads the packets that the nftables rules of
  `sensor.kernel.nftables.nft_rules` send to an NFLOG group: every DNS and DHCP packet to, from
  or through the gateway, and the first N packets of each direction of every forwarded
  connection (stateful: conntrack counts them). Frames come out as Linux cooked v2 (SLL2, link
  type 276) carrying the sender's MAC, so the pipeline finds the LAN device of upstream packets
  as it does in a capture file.
- `PacketSocketSource` (sensor.sources.packet) taps interfaces with AF_PACKET and a classic BPF
  program (sensor.sources.bpf): DNS, DHCP, TCP SYN/FIN/RST, TCP payloads that start a TLS
  handshake or an HTTP request, upstream plain HTTP, QUIC long-header packets. Stateless, so a
  ClientHello split over several segments loses its later segments (unless GRO merged them into
  one frame before the tap); NFLOG has no such gap. `wide=True` accepts everything (mirror
  ports, bridges where nothing else counts bytes). Reads a TPACKET_V3 memory-mapped ring, or
  plain recv.

Both sources: `fileno()` for poll/select, `read(max_packets)` that never blocks, `pending()`,
`stats()`, `close()`; a malformed message is counted, never raised. `live_packets` turns a
source into the packet stream `Pipeline.run_packets` consumes (the daemon reads its sources in
its own loop).
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterator
from typing import Protocol

from sensor.sources.pcap import Packet


class LiveCaptureError(OSError):
    """A live source cannot be opened (no permission, group taken, interface missing...)."""


class LiveSource(Protocol):
    """What the daemon's packet loop needs from a live source."""

    def fileno(self) -> int: ...

    def read(self, max_packets: int = 1024) -> list[Packet]: ...

    def pending(self) -> int:
        """Packets already taken from the kernel that the next `read` returns, although the
        descriptor may not turn readable again for them: a loop that waits on `fileno()`
        must read again at once while this is non-zero, or they wait for the next packet
        (on a quiet network, indefinitely)."""
        ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


def live_packets(
    source: LiveSource,
    stop: Callable[[], bool],
    *,
    poll_timeout: float = 0.25,
    max_packets: int = 4096,
) -> Iterator[Packet]:
    """The packets of a live source, as `Pipeline.run_packets` takes them (each frame as it
    came, not re-packed), until `stop()` says so.

    `stop` is checked after every read and at least every `poll_timeout` seconds.
    """
    poller = select.poll()
    poller.register(source.fileno(), select.POLLIN | select.POLLERR)
    while not stop():
        packets = source.read(max_packets)
        if packets:
            yield from packets
        else:
            poller.poll(max(0, int(poll_timeout * 1000)))
