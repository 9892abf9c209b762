"""Country and autonomous system of a server address, IPv4 and IPv6.

Where the answers come from, first match wins:

1. Lab/demo overrides: a few prefixes with a fixed answer (documentation ranges in the lab),
   most specific prefix first. Fields an override leaves out come from the databases.
2. Private, documentation and other special-purpose addresses: an empty `GeoInfo`.
3. MaxMind-format databases named by `GeoConfig.country_db` / `GeoConfig.asn_db` (GeoLite2,
   DB-IP lite, ...), read with `maxminddb`.
4. For the AS (when no MaxMind ASN database is configured): the free IP-to-ASN dataset
   `phonehome update-data` fetched (iptoasn or DB-IP ASN Lite, `asn.py`), number and
   organisation together.
5. The embedded default: the data files the `geoip2fast` package ships (GeoLite2 country and
   ASN, IPv4 and IPv6). They carry the AS organisation but not the AS number, so
   `GeoInfo.asn` is None unless an ASN database or dataset is there; they also name the
   organisation where the dataset has a number but no name.

The embedded data is a pickle of per-chunk Python lists. We unpickle it with a loader that
refuses every global (the file holds only lists, strings and integers), flatten it into sorted
interval arrays (`RangeIndex`, a few bytes per range instead of Python objects) and answer with
`bisect`. `RangeIndex`, `ip_key` and `parse_prefix` are shared with `cloud.py`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import logging
import pickle
import re
import socket
import sys
import tomllib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sensor.files import write_atomically

if TYPE_CHECKING:
    from sensor.config import GeoConfig
    from sensor.enrich.asn import AsnData

log = logging.getLogger(__name__)

T = TypeVar("T")

IpKey = tuple[int, int, int]
"""(4, address, 0) or (6, high 64 bits, low 64 bits): an address as integers."""

_V4_MAPPED: Final = b"\0" * 10 + b"\xff\xff"
_NAT64_WKP: Final = bytes.fromhex("0064ff9b") + b"\0" * 8
_MASK64: Final = (1 << 64) - 1
_DIGITS: Final = re.compile(r"[0-9]{1,3}")
_COUNTRY: Final = re.compile(r"[A-Z]{2}")

DEFAULT_CACHE_SIZE: Final = 65_536
"""Addresses whose answer `GeoDB` remembers (least recently used go first)."""

EMBEDDED_PACKAGE: Final = "geoip2fast"
EMBEDDED_FILE: Final = "geoip2fast-asn-ipv6.dat.gz"
"""The geoip2fast data file with country and ASN for IPv4 and IPv6."""
CACHE_SUBDIR: Final = "cache"
"""Folder under the state directory for the embedded data's cache."""
CACHE_FILE: Final = "geo-embedded.cache"
_CACHE_MAGIC: Final = b"PHGEO\n"
_CACHE_FORMAT: Final = 1

# Special-purpose ranges (IANA IPv4/IPv6 special-purpose registries): never geolocated.
# Any IPv6 address outside 2000::/3 (global unicast) is special too; see `is_special`.
SPECIAL_PREFIXES: Final = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.31.196.0/24",
    "192.52.193.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "192.175.48.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "2001::/23",
    "2001:db8::/32",
    "3fff::/20",
)


class GeoDataError(ValueError):
    """A geo data file (embedded, MaxMind or overrides) could not be used; says which and why."""


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """Where an address sits, as far as the data knows."""

    country: str | None = None
    """ISO 3166-1 alpha-2 code, upper case."""
    asn: int | None = None
    """Autonomous system number (None with the embedded data, which has only names)."""
    asn_org: str | None = None
    """Organisation holding the AS, as the database spells it."""


EMPTY_GEO: Final = GeoInfo()


# --- addresses as integers --------------------------------------------------------------------


def ip_key(ip: str) -> IpKey | None:
    """Address text -> `IpKey`; None if it is not an address.

    IPv4-mapped (::ffff:a.b.c.d) and NAT64 well-known-prefix (64:ff9b::a.b.c.d) addresses give
    the key of the IPv4 address they carry; a zone index (fe80::1%eth0) is ignored.
    """
    try:
        if ":" in ip:
            if "%" in ip:
                ip = ip.partition("%")[0]
            b = socket.inet_pton(socket.AF_INET6, ip)
            head = b[:12]
            if head in (_V4_MAPPED, _NAT64_WKP):
                return (4, int.from_bytes(b[12:], "big"), 0)
            return (6, int.from_bytes(b[:8], "big"), int.from_bytes(b[8:], "big"))
        return (4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big"), 0)
    except (OSError, ValueError, TypeError):
        return None


def key_text(key: IpKey) -> str:
    """`IpKey` -> canonical address text."""
    fam, a, b = key
    if fam == 4:
        return socket.inet_ntop(socket.AF_INET, a.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, ((a << 64) | b).to_bytes(16, "big"))


def parse_prefix(text: str) -> tuple[int, int, int]:
    """'192.0.2.0/24', '2001:db8::/32' or a bare address -> (family, first, last) integers.

    Host bits are masked off (like ``strict=False``). ValueError names the bad text.
    """
    addr, sep, plen_text = text.strip().partition("/")
    if ":" in addr:
        family, bits, af = 6, 128, socket.AF_INET6
    else:
        family, bits, af = 4, 32, socket.AF_INET
    try:
        packed = socket.inet_pton(af, addr)
    except (OSError, ValueError):
        raise ValueError(f"not an IP prefix: {text!r}") from None
    if sep:
        if not _DIGITS.fullmatch(plen_text) or int(plen_text) > bits:
            raise ValueError(f"bad prefix length: {text!r}")
        plen = int(plen_text)
    else:
        plen = bits
    size = 1 << (bits - plen)
    first = int.from_bytes(packed, "big") & ~(size - 1)
    return family, first, first + size - 1


# --- interval index ---------------------------------------------------------------------------


def flatten(
    intervals: Iterable[tuple[int, int, int, T]],
    combine: Callable[[T, T | None], T],
) -> list[tuple[int, int, T]]:
    """Nested intervals -> disjoint ones, the innermost (most specific) interval winning.

    `intervals` are (first, last, rank, payload) of one address family; they must nest or be
    disjoint, as CIDR prefixes do. For two identical intervals the higher rank counts as the
    inner one. `combine(inner, enclosing)` gives the value of an interval from its payload and
    the value of the interval around it (None at top level), so an inner entry can inherit
    fields it lacks. Adjacent pieces with equal values are merged.
    """
    out: list[tuple[int, int, T]] = []

    def emit(first: int, last: int, value: T) -> None:
        if out:
            pf, pl, pv = out[-1]
            if pl + 1 == first and pv == value:
                out[-1] = (pf, last, pv)
                return
        out.append((first, last, value))

    stack: list[tuple[int, T]] = []  # (last, value) of the enclosing chain, innermost on top
    cursor = 0
    for first, last, _rank, payload in sorted(intervals, key=lambda t: (t[0], -t[1], t[2])):
        while stack and stack[-1][0] < first:
            end, value = stack.pop()
            if cursor <= end:
                emit(cursor, end, value)
                cursor = end + 1
        if stack:
            if cursor < first:
                emit(cursor, first - 1, stack[-1][1])
            # Not a CIDR-style nesting (partial overlap): keep it inside its encloser.
            last = min(last, stack[-1][0])
        stack.append((last, combine(payload, stack[-1][1] if stack else None)))
        cursor = first
    while stack:
        end, value = stack.pop()
        if cursor <= end:
            emit(cursor, end, value)
            cursor = end + 1
    return out


class RangeIndex:
    """Disjoint, sorted address intervals -> small integer values, found by bisection.

    IPv4 bounds are 32-bit arrays; IPv6 bounds are split into high and low 64-bit arrays (a
    128-bit Python int would cost ~50 bytes each). `find` returns the value or -1.
    """

    __slots__ = ("_e4", "_e6hi", "_e6lo", "_s4", "_s6hi", "_s6lo", "_v4", "_v6")

    def __init__(
        self,
        v4: Iterable[tuple[int, int, int]] = (),
        v6: Iterable[tuple[int, int, int]] = (),
    ) -> None:
        """`v4`/`v6`: sorted, non-overlapping (first, last, value) with value >= 0."""
        self._s4 = array("I")
        self._e4 = array("I")
        self._v4 = array("I")
        for first, last, value in v4:
            self._s4.append(first)
            self._e4.append(last)
            self._v4.append(value)
        self._s6hi = array("Q")
        self._s6lo = array("Q")
        self._e6hi = array("Q")
        self._e6lo = array("Q")
        self._v6 = array("I")
        for first, last, value in v6:
            self._s6hi.append(first >> 64)
            self._s6lo.append(first & _MASK64)
            self._e6hi.append(last >> 64)
            self._e6lo.append(last & _MASK64)
            self._v6.append(value)
        _check_sorted(self._s4, self._e4, "IPv4")

    @classmethod
    def from_values(
        cls, v4: Sequence[tuple[int, int, T]], v6: Sequence[tuple[int, int, T]]
    ) -> tuple[RangeIndex, list[T]]:
        """Intervals with arbitrary (hashable) values -> index plus the table of values."""
        table: list[T] = []
        ids: dict[T, int] = {}

        def intern(rows: Sequence[tuple[int, int, T]]) -> Iterable[tuple[int, int, int]]:
            for first, last, value in rows:
                vid = ids.get(value)
                if vid is None:
                    vid = ids[value] = len(table)
                    table.append(value)
                yield first, last, vid

        return cls(intern(v4), intern(v6)), table

    def find(self, key: IpKey) -> int:
        fam, a, b = key
        if fam == 4:
            i = bisect_right(self._s4, a) - 1
            if i >= 0 and a <= self._e4[i]:
                return self._v4[i]
            return -1
        shi = self._s6hi
        j = bisect_right(shi, a)
        k = j - 1
        if k >= 0 and shi[k] == a:
            # several ranges start in this /64: order them by the low half
            k = bisect_right(self._s6lo, b, bisect_left(shi, a, 0, j), j) - 1
        if k < 0:
            return -1
        ehi = self._e6hi[k]
        if a < ehi or (a == ehi and b <= self._e6lo[k]):
            return self._v6[k]
        return -1

    def __len__(self) -> int:
        return len(self._s4) + len(self._s6hi)

    _FIELDS: Final = ("_s4", "_e4", "_v4", "_s6hi", "_s6lo", "_e6hi", "_e6lo", "_v6")

    def arrays(self) -> list[array[int]]:
        """The backing arrays, in `_FIELDS` order (for the on-disk cache)."""
        return [getattr(self, name) for name in self._FIELDS]

    @classmethod
    def from_arrays(cls, arrays: Sequence[array[int]]) -> RangeIndex:
        """Inverse of `arrays`; ValueError if they do not fit together."""
        index = cls()
        if len(arrays) != len(cls._FIELDS):
            raise ValueError("wrong number of arrays")
        for name, arr in zip(cls._FIELDS, arrays, strict=True):
            if arr.typecode != getattr(index, name).typecode:
                raise ValueError(f"{name}: wrong element type {arr.typecode!r}")
            setattr(index, name, arr)
        n4, n6 = len(index._s4), len(index._s6hi)
        if {len(index._e4), len(index._v4)} != {n4} or {
            len(a) for a in (index._s6lo, index._e6hi, index._e6lo, index._v6)
        } - {n6}:
            raise ValueError("array lengths differ")
        return index

    def intervals(
        self, wanted: Container[int]
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The IPv4 and IPv6 (first, last) intervals whose value is in `wanted` (for the
        policy's destination sets)."""
        v4 = [(s, e) for s, e, v in zip(self._s4, self._e4, self._v4, strict=True) if v in wanted]
        v6 = [
            ((shi << 64) | slo, (ehi << 64) | elo)
            for shi, slo, ehi, elo, v in zip(
                self._s6hi, self._s6lo, self._e6hi, self._e6lo, self._v6, strict=True
            )
            if v in wanted
        ]
        return v4, v6

    def values(self) -> array[int]:
        """Every value id held, both families (for checks)."""
        return self._v4 + self._v6

    @property
    def nbytes(self) -> int:
        """Memory the arrays hold."""
        arrays = (self._s4, self._e4, self._v4, self._s6hi, self._s6lo, self._e6hi, self._e6lo)
        return sum(a.itemsize * len(a) for a in (*arrays, self._v6))


def _check_sorted(starts: array[int], ends: array[int], what: str) -> None:
    for i in range(1, len(starts)):
        if starts[i] <= ends[i - 1]:
            raise ValueError(f"{what} intervals overlap or are unsorted at {i}")


def build_index(
    prefixes: Iterable[tuple[str, int, T]],
    combine: Callable[[T, T | None], T],
) -> tuple[RangeIndex, list[T]]:
    """(prefix text, rank, payload) -> index with most-specific-wins semantics (see `flatten`)."""
    v4: list[tuple[int, int, int, T]] = []
    v6: list[tuple[int, int, int, T]] = []
    for text, rank, payload in prefixes:
        fam, first, last = parse_prefix(text)
        (v4 if fam == 4 else v6).append((first, last, rank, payload))
    return RangeIndex.from_values(flatten(v4, combine), flatten(v6, combine))


def _innermost(inner: T, _outer: T | None) -> T:
    return inner


def _special_index() -> RangeIndex:
    index, _ = build_index(((p, 0, True) for p in SPECIAL_PREFIXES), _innermost)
    return index


def is_special(key: IpKey, special: RangeIndex) -> bool:
    """Private, loopback, link-local, documentation, multicast, reserved...: not on the map."""
    if key[0] == 6 and key[1] >> 61 != 1:  # outside 2000::/3
        return True
    return special.find(key) >= 0


def geo_cache_dir(state_dir: str | Path) -> Path:
    """Where `GeoDB.open` and `update-data` keep the embedded data's cache."""
    return Path(state_dir) / CACHE_SUBDIR


# --- embedded data (geoip2fast) -----------------------------------------------------------------


class _NoGlobals(pickle.Unpickler):
    """The data files hold only builtin containers; refuse anything that would run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed in geo data")


def embedded_data_path() -> Path | None:
    """Where the geoip2fast data file is, without importing the package; None if absent."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / EMBEDDED_FILE
        if path.is_file():
            return path
    return None


class EmbeddedGeo:
    """Country codes and AS organisations from the geoip2fast data files, IPv4 and IPv6."""

    __slots__ = ("asn_index", "countries", "country_index", "info", "orgs")

    def __init__(
        self,
        country_index: RangeIndex,
        countries: list[str],
        asn_index: RangeIndex,
        orgs: list[str],
        info: str,
    ) -> None:
        self.country_index = country_index
        self.countries = countries
        self.asn_index = asn_index
        self.orgs = orgs
        self.info = info
        """The data's own description, e.g. 'MAXMIND:GeoLite2-CountryASN-IPv4IPv6-en-20240618'."""

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        cache_dir: str | Path | None = None,
        write_cache: bool = True,
    ) -> EmbeddedGeo:
        """Read a geoip2fast country+ASN file (default: the one the package ships).

        With `cache_dir`, the flattened arrays are kept there (`CACHE_FILE`) and read back on
        the next start while the source file is unchanged: ~30 ms and ~20 MB instead of ~1.3 s
        and a transient ~130 MB for unpickling. A cache that cannot be read or written is
        ignored (logged at debug level). Without `write_cache` an existing cache is only read
        (`analyze` without --record leaves the state directory as it found it).
        """
        if path is None:
            path = embedded_data_path()
            if path is None:
                raise GeoDataError(f"{EMBEDDED_PACKAGE}: package or {EMBEDDED_FILE} not found")
        path = Path(path)
        try:
            st = path.stat()
        except OSError as exc:
            raise GeoDataError(f"{path}: cannot read: {exc}") from None
        source = {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        cache = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
        if cache is not None:
            try:
                return cls._read_cache(cache, source)
            except FileNotFoundError:
                pass
            except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
                log.debug("geo: ignoring cache %s: %s", cache, exc)
        try:
            with gzip.open(path, "rb") as fh:
                data = _NoGlobals(fh).load()
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
            raise GeoDataError(f"{path}: cannot read: {exc}") from None
        try:
            geo = cls._from_pickle(data)
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise GeoDataError(f"{path}: unexpected layout: {exc}") from None
        del data
        if cache is not None and write_cache:
            try:
                geo._write_cache(cache, source)
            except OSError as exc:
                log.debug("geo: cannot write cache %s: %s", cache, exc)
        return geo

    def _write_cache(self, cache: Path, source: dict[str, Any]) -> None:
        arrays = self.country_index.arrays() + self.asn_index.arrays()
        payload = b"".join(a.tobytes() for a in arrays)
        header = {
            "format": _CACHE_FORMAT,
            "source": source,
            "byteorder": sys.byteorder,
            "info": self.info,
            "arrays": [[a.typecode, a.itemsize, len(a)] for a in arrays],
            "sha256": hashlib.sha256(payload).hexdigest(),
            "countries": self.countries,
            "orgs": self.orgs,
        }
        head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
        # Private like every state file, whatever the umask (public data, but the state
        # directory's contents are the service user's alone).
        cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = _CACHE_MAGIC + len(head).to_bytes(4, "little") + head + payload
        write_atomically(cache, data, unique=True)

    @classmethod
    def _read_cache(cls, cache: Path, source: dict[str, Any]) -> EmbeddedGeo:
        raw = memoryview(cache.read_bytes())
        if bytes(raw[: len(_CACHE_MAGIC)]) != _CACHE_MAGIC:
            raise ValueError("not a geo cache file")
        pos = len(_CACHE_MAGIC)
        hlen = int.from_bytes(raw[pos : pos + 4], "little")
        pos += 4
        header = json.loads(bytes(raw[pos : pos + hlen]))
        pos += hlen
        if (
            header["format"] != _CACHE_FORMAT
            or header["source"] != source
            or header["byteorder"] != sys.byteorder
        ):
            raise ValueError("stale (source or format changed)")
        if hashlib.sha256(raw[pos:]).hexdigest() != header["sha256"]:
            raise ValueError("checksum mismatch")
        arrays: list[array[int]] = []
        for typecode, itemsize, count in header["arrays"]:
            arr = array(typecode)
            if arr.itemsize != itemsize:
                raise ValueError("element size differs on this machine")
            end = pos + itemsize * count
            arr.frombytes(raw[pos:end])
            arrays.append(arr)
            pos = end
        if pos != len(raw) or len(arrays) != 2 * len(RangeIndex._FIELDS):
            raise ValueError("size mismatch")
        half = len(RangeIndex._FIELDS)
        countries = [str(c) for c in header["countries"]]
        orgs = [str(o) for o in header["orgs"]]
        country_index = RangeIndex.from_arrays(arrays[:half])
        asn_index = RangeIndex.from_arrays(arrays[half:])
        if max(country_index.values(), default=-1) >= len(countries) or max(
            asn_index.values(), default=-1
        ) >= len(orgs):
            raise ValueError("value out of range")
        return cls(country_index, countries, asn_index, orgs, str(header["info"]))

    @classmethod
    def _from_pickle(cls, data: Any) -> EmbeddedGeo:
        version, source, _total, tables = data
        if version not in (120, 121) or not (source.get("country") and source.get("asn")):
            raise ValueError(f"need a country+ASN file (version {version}, {source})")
        (_idx, _idx_asn, names_c, names_asn, first, first_asn, id_c, id_asn, nlen, nlen_asn) = (
            tables
        )
        countries: list[str] = []
        country_ids: list[int] = []
        for entry in names_c:
            code = str(entry).partition(":")[0]
            # Entries 01..15 and 99 are geoip2fast's private/reserved/not-found markers.
            if _COUNTRY.fullmatch(code):
                country_ids.append(len(countries))
                countries.append(code)
            else:
                country_ids.append(-1)
        orgs = [str(n) for n in names_asn]
        # Index 0 is '<unknown>'; IANA.ORG marks reserved space, which we handle ourselves.
        org_ids = [-1 if n in ("<unknown>", "IANA.ORG", "") else i for i, n in enumerate(orgs)]
        country_index = _index_from_chunks(first, nlen, id_c, country_ids)
        asn_index = _index_from_chunks(first_asn, nlen_asn, id_asn, org_ids)
        return cls(country_index, countries, asn_index, orgs, str(source.get("info", "")))

    def country(self, key: IpKey) -> str | None:
        i = self.country_index.find(key)
        return self.countries[i] if i >= 0 else None

    def asn_org(self, key: IpKey) -> str | None:
        i = self.asn_index.find(key)
        return self.orgs[i] if i >= 0 else None

    @property
    def nbytes(self) -> int:
        return self.country_index.nbytes + self.asn_index.nbytes


def _index_from_chunks(
    first_chunks: list[Any],
    len_chunks: list[Any],
    id_chunks: list[Any],
    remap: Sequence[int],
) -> RangeIndex:
    """geoip2fast's chunked (first address, prefix length, name id) lists -> RangeIndex.

    Its IPv6 entries follow the IPv4 ones in the same lists (as integers >= 2**32). Chunks are
    dropped as soon as they are converted, to keep the peak memory of a cold start down.
    """
    if not (len(first_chunks) == len(len_chunks) == len(id_chunks)):
        raise ValueError("chunk lists differ in length")
    index = RangeIndex()
    s4, e4, v4 = index._s4, index._e4, index._v4
    s6hi, s6lo, e6hi, e6lo, v6 = index._s6hi, index._s6lo, index._e6hi, index._e6lo, index._v6
    # the range being extended: (family, first, last, value)
    cur_fam, cur_first, cur_last, cur_value = 0, 0, -1, -1

    def flush() -> None:
        if cur_fam == 4:
            s4.append(cur_first)
            e4.append(cur_last)
            v4.append(cur_value)
        elif cur_fam == 6:
            s6hi.append(cur_first >> 64)
            s6lo.append(cur_first & _MASK64)
            e6hi.append(cur_last >> 64)
            e6lo.append(cur_last & _MASK64)
            v6.append(cur_value)

    for n in range(len(first_chunks)):
        firsts, lens, ids = first_chunks[n], len_chunks[n], id_chunks[n]
        first_chunks[n] = len_chunks[n] = id_chunks[n] = None
        if not (len(firsts) == len(lens) == len(ids)):
            raise ValueError(f"chunk {n} lists differ in length")
        for first, plen, nid in zip(firsts, lens, ids, strict=True):
            value = remap[nid]
            if value < 0:
                continue
            if first < 1 << 32:
                fam, last = 4, first + (1 << (32 - plen)) - 1
            else:
                fam, last = 6, first + (1 << (128 - plen)) - 1
            if fam == cur_fam:
                if first <= cur_last:  # overlap in the source: the earlier range keeps its part
                    first = cur_last + 1
                    if first > last:
                        continue
                if first == cur_last + 1 and value == cur_value:
                    cur_last = last
                    continue
            elif fam < cur_fam:
                raise ValueError("IPv4 entry after IPv6 entries")
            flush()
            cur_fam, cur_first, cur_last, cur_value = fam, first, last, value
    flush()
    return index


# --- MaxMind DB ---------------------------------------------------------------------------------


class MaxMindDB:
    """A MaxMind-format database (country, city or ASN) read with `maxminddb`."""

    __slots__ = ("_errors", "_reader", "path")

    def __init__(self, path: str | Path) -> None:
        import maxminddb  # optional dependency: only needed when a database is configured

        self.path = str(path)
        self._errors = (ValueError, maxminddb.InvalidDatabaseError)
        try:
            self._reader = maxminddb.open_database(self.path)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise GeoDataError(f"{self.path}: cannot open MaxMind database: {exc}") from None

    def record(self, address: str) -> dict[str, Any] | None:
        try:
            rec = self._reader.get(address)
        except self._errors:  # IPv6 against an IPv4-only database, or a damaged record
            return None
        return rec if isinstance(rec, dict) else None

    def country(self, address: str) -> str | None:
        rec = self.record(address)
        if rec is None:
            return None
        # GeoLite2/DB-IP: country.iso_code, else registered_country; ip-location-db: country_code
        for field in ("country", "registered_country"):
            sub = rec.get(field)
            if isinstance(sub, dict):
                code = sub.get("iso_code")
                if isinstance(code, str) and _COUNTRY.fullmatch(code):
                    return code
        code = rec.get("country_code")
        if isinstance(code, str) and _COUNTRY.fullmatch(code.upper()):
            return code.upper()
        return None

    def asn(self, address: str) -> tuple[int | None, str | None]:
        rec = self.record(address)
        if rec is None:
            return None, None
        number = rec.get("autonomous_system_number")
        org = rec.get("autonomous_system_organization")
        return (
            number if isinstance(number, int) and not isinstance(number, bool) else None,
            org if isinstance(org, str) and org else None,
        )

    def close(self) -> None:
        self._reader.close()


# --- overrides ----------------------------------------------------------------------------------


def load_overrides(path: str | Path) -> list[tuple[str, GeoInfo]]:
    """Read lab/demo fixtures::

        [[prefix]]
        net = "203.0.113.0/24"
        country = "CN"
        asn = 4808
        asn_org = "China Unicom Beijing Province Network"

    Every key but `net` is optional. GeoDataError names the file, entry and reason.
    """
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise GeoDataError(f"{source}: cannot read: {exc}") from None
    return parse_overrides(data, source)


def parse_overrides(data: dict[str, Any], source: str = "<overrides>") -> list[tuple[str, GeoInfo]]:
    unknown = set(data) - {"prefix"}
    if unknown:
        raise GeoDataError(f"{source}: {sorted(unknown)[0]}: unknown key")
    entries = data.get("prefix", [])
    if not isinstance(entries, list):
        raise GeoDataError(f"{source}: prefix: expected an array of tables [[prefix]]")
    out: list[tuple[str, GeoInfo]] = []
    for i, entry in enumerate(entries):
        where = f"{source}: prefix[{i}]"
        if not isinstance(entry, dict):
            raise GeoDataError(f"{where}: expected a table")
        extra = set(entry) - {"net", "country", "asn", "asn_org"}
        if extra:
            raise GeoDataError(f"{where}.{sorted(extra)[0]}: unknown key")
        net = entry.get("net")
        if not isinstance(net, str):
            raise GeoDataError(f"{where}.net: required, a prefix like '203.0.113.0/24'")
        try:
            parse_prefix(net)
        except ValueError as exc:
            raise GeoDataError(f"{where}.net: {exc}") from None
        country = entry.get("country")
        if country is not None and not (isinstance(country, str) and _COUNTRY.fullmatch(country)):
            raise GeoDataError(f"{where}.country: must be a two-letter upper-case country code")
        asn = entry.get("asn")
        if asn is not None and (
            isinstance(asn, bool) or not isinstance(asn, int) or not 0 <= asn < 1 << 32
        ):
            raise GeoDataError(f"{where}.asn: must be an integer between 0 and 4294967295")
        org = entry.get("asn_org")
        if org is not None and not isinstance(org, str):
            raise GeoDataError(f"{where}.asn_org: must be a string")
        out.append((net, GeoInfo(country, asn, org)))
    return out


def _merge(inner: GeoInfo, outer: GeoInfo | None) -> GeoInfo:
    """Fields the inner (more specific) entry leaves out come from the outer one."""
    if outer is None:
        return inner
    return GeoInfo(
        inner.country if inner.country is not None else outer.country,
        inner.asn if inner.asn is not None else outer.asn,
        inner.asn_org if inner.asn_org is not None else outer.asn_org,
    )


# --- the lookup service ---------------------------------------------------------------------------


def merge_intervals(rows: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping or adjacent intervals joined."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(rows):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def subtract_intervals(
    keep: list[tuple[int, int]], cut: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """`keep` minus `cut`; both sorted and disjoint."""
    out: list[tuple[int, int]] = []
    j = 0
    for first, last in keep:
        start = first
        while j < len(cut) and cut[j][1] < start:
            j += 1
        k = j
        while k < len(cut) and cut[k][0] <= last:
            if cut[k][0] > start:
                out.append((start, cut[k][0] - 1))
            start = max(start, cut[k][1] + 1)
            k += 1
        if start <= last:
            out.append((start, last))
    return out


class GeoDB:
    """Country and ASN for addresses: overrides, then MaxMind databases, then embedded data.

    Lookups are cached (bounded LRU of `cache_size` addresses; 0 turns the cache off).
    """

    def __init__(
        self,
        *,
        embedded: EmbeddedGeo | None = None,
        country_db: MaxMindDB | None = None,
        asn_db: MaxMindDB | None = None,
        asn_data: AsnData | None = None,
        overrides: Sequence[tuple[str, GeoInfo]] = (),
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.embedded = embedded
        self.country_db = country_db
        self.asn_db = asn_db
        self.asn_data = asn_data
        self.errors: list[str] = []
        """Problems met while opening the configured data (each also logged)."""
        self._special = _special_index()
        self._overrides: RangeIndex | None = None
        self._override_values: list[GeoInfo] = []
        if overrides:
            self._overrides, self._override_values = build_index(
                ((net, 0, info) for net, info in overrides), _merge
            )
        self._cached: Callable[[str], GeoInfo]
        if cache_size > 0:
            self._cached = functools.lru_cache(maxsize=cache_size)(self._lookup)
        else:
            self._cached = self._lookup

    @classmethod
    def open(
        cls,
        cfg: GeoConfig | None = None,
        *,
        overrides_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        write_cache: bool = True,
        asn_data: AsnData | None = None,
    ) -> GeoDB:
        """The databases `cfg` names, the embedded data for whatever they do not cover.

        `cache_dir` (normally `geo_cache_dir(state_dir)`) keeps the embedded data ready to load
        in ~0.1 s; without it every start unpickles the package's data file (~0.6 s).

        A configured database that cannot be opened is logged, listed in `errors`, and the
        embedded data stands in for it; a broken overrides file raises GeoDataError.
        """
        errors: list[str] = []
        country_db = asn_db = None
        if cfg is not None and cfg.country_db:
            try:
                country_db = MaxMindDB(cfg.country_db)
            except GeoDataError as exc:
                errors.append(str(exc))
        if cfg is not None and cfg.asn_db:
            try:
                asn_db = MaxMindDB(cfg.asn_db)
            except GeoDataError as exc:
                errors.append(str(exc))
        embedded = None
        if country_db is None or asn_db is None:
            try:
                embedded = EmbeddedGeo.load(cache_dir=cache_dir, write_cache=write_cache)
            except GeoDataError as exc:
                errors.append(str(exc))
        overrides = load_overrides(overrides_path) if overrides_path is not None else []
        db = cls(
            embedded=embedded,
            country_db=country_db,
            asn_db=asn_db,
            asn_data=asn_data,
            overrides=overrides,
            cache_size=cache_size,
        )
        for err in errors:
            log.warning("geo: %s", err)
        db.errors = errors
        return db

    def lookup(self, ip: str) -> GeoInfo:
        """Country and ASN of `ip`; an empty GeoInfo when unknown, special or not an address."""
        return self._cached(ip)

    def intervals(
        self, *, country: str | None = None, asn: int | None = None
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Every (first, last) interval, IPv4 and IPv6, that `lookup` places in `country` or
        `asn`, from the overrides and the embedded data (the overrides win where they
        overlap). MaxMind databases are not enumerated. Unsorted; may touch."""
        over4: list[tuple[int, int]] = []
        over6: list[tuple[int, int]] = []
        hit4: list[tuple[int, int]] = []
        hit6: list[tuple[int, int]] = []
        if self._overrides is not None:
            every = range(len(self._override_values))
            over4, over6 = self._overrides.intervals(every)
            ids = {
                i
                for i, info in enumerate(self._override_values)
                if (country is not None and info.country == country)
                or (asn is not None and info.asn == asn)
            }
            hit4, hit6 = self._overrides.intervals(ids)
        base4: list[tuple[int, int]] = []
        base6: list[tuple[int, int]] = []
        if country is not None and self.embedded is not None:
            ids = {i for i, c in enumerate(self.embedded.countries) if c == country}
            base4, base6 = self.embedded.country_index.intervals(ids)
        v4 = subtract_intervals(merge_intervals(base4), merge_intervals(over4)) + hit4
        v6 = subtract_intervals(merge_intervals(base6), merge_intervals(over6)) + hit6
        return v4, v6

    def cache_clear(self) -> None:
        clear = getattr(self._cached, "cache_clear", None)
        if clear is not None:
            clear()

    def cache_stats(self) -> dict[str, int]:
        """hits, misses, size and maxsize of the lookup cache (all 0 without a cache)."""
        info = getattr(self._cached, "cache_info", None)
        if info is None:
            return {"hits": 0, "misses": 0, "size": 0, "maxsize": 0}
        ci = info()
        return {"hits": ci.hits, "misses": ci.misses, "size": ci.currsize, "maxsize": ci.maxsize}

    def describe(self) -> list[str]:
        """What answers the lookups, for logs and status output."""
        parts = []
        if self._overrides is not None:
            parts.append(f"overrides: {len(self._override_values)} prefixes")
        if self.country_db is not None:
            parts.append(f"country: {self.country_db.path}")
        if self.asn_db is not None:
            parts.append(f"asn: {self.asn_db.path}")
        elif self.asn_data is not None:
            parts.append(f"asn: {self.asn_data.kind} dataset, {len(self.asn_data)} ranges")
        if self.embedded is not None:
            parts.append(f"embedded: {EMBEDDED_PACKAGE} {self.embedded.info}")
        return parts

    def _lookup(self, ip: str) -> GeoInfo:
        key = ip_key(ip)
        if key is None:
            return EMPTY_GEO
        override = None
        if self._overrides is not None:
            i = self._overrides.find(key)
            if i >= 0:
                override = self._override_values[i]
        if is_special(key, self._special):
            return override if override is not None else EMPTY_GEO
        if override is not None and None not in (override.country, override.asn, override.asn_org):
            return override
        info = self._from_databases(key)
        if override is not None:
            return _merge(override, info)
        return info

    def _from_databases(self, key: IpKey) -> GeoInfo:
        country = asn = org = None
        text = None
        if self.country_db is not None:
            text = key_text(key)
            country = self.country_db.country(text)
        elif self.embedded is not None:
            country = self.embedded.country(key)
        if self.asn_db is not None:
            asn, org = self.asn_db.asn(text if text is not None else key_text(key))
        else:
            hit = self.asn_data.lookup_key(key) if self.asn_data is not None else None
            if hit is not None:
                asn, org = hit
            if org is None and self.embedded is not None:
                org = self.embedded.asn_org(key)
        if country is None and asn is None and org is None:
            return EMPTY_GEO
        return GeoInfo(country, asn, org)
