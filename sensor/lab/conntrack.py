"""`conntrack -L -o extended` output read back: what the lab's gateway tracks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """One line of `conntrack -L -o extended`."""

    family: str
    """"ipv4" or "ipv6"."""
    proto: str
    state: str | None
    orig: dict[str, str]
    """The original direction: src, dst, sport, dport, packets, bytes (with accounting on)."""
    reply: dict[str, str]
    flags: tuple[str, ...] = ()

    @property
    def orig_bytes(self) -> int:
        return int(self.orig.get("bytes", 0))

    @property
    def reply_bytes(self) -> int:
        return int(self.reply.get("bytes", 0))


_CONNTRACK_TUPLE_KEYS = frozenset(
    ("src", "dst", "sport", "dport", "type", "code", "id", "packets", "bytes")
)


def parse_conntrack(text: str) -> list[ConntrackEntry]:
    """Entries from `conntrack -L -o extended` output (summary lines on stderr are not here)."""
    out = []
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) < 5 or tokens[0] not in ("ipv4", "ipv6"):
            continue
        family, proto = tokens[0], tokens[2]
        state: str | None = None
        orig: dict[str, str] = {}
        reply: dict[str, str] = {}
        flags = []
        # family, l3 number, proto name, proto number, timeout, [state], key=value…
        side = orig
        for tok in tokens[5:]:
            if tok.startswith("[") and tok.endswith("]"):
                flags.append(tok.strip("[]"))
            elif "=" in tok:
                key, value = tok.split("=", 1)
                if key == "src" and "src" in orig:
                    side = reply  # the second tuple is the reply direction
                if key in _CONNTRACK_TUPLE_KEYS:
                    side[key] = value
            elif not orig and state is None:
                state = tok
        out.append(ConntrackEntry(family, proto, state, orig, reply, tuple(flags)))
    return out
