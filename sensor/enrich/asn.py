"""AS number and organisation of an address from a free IP-to-ASN dataset.

`phonehome update-data` fetches one (the `asn` source) into the data folder as `ASN_FILE`;
`GeoDB` consults it (see geo.py for the precedence). Two published layouts are read, told
apart by their first line, gzipped or not:

- iptoasn.com's ip2asn-combined.tsv(.gz) (public domain, PDDL): ``range_start <TAB>
  range_end <TAB> AS_number <TAB> country_code <TAB> AS_description``, IPv4 then IPv6, sorted;
  AS 0 marks unrouted space ("Not routed") and is skipped.
- DB-IP's "IP to ASN Lite" CSV (CC BY 4.0: reports that show its data must say "IP to ASN
  data by DB-IP", https://db-ip.com): ``start_ip,end_ip,asn,organisation``.

Ranges are arbitrary (not CIDR) and disjoint; they go into a `geo.RangeIndex` whose values
index a table of distinct (asn, organisation) pairs, about 16 bytes a range for IPv4.
"""

from __future__ import annotations

import csv
import gzip
import io
import socket
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from sensor.enrich.geo import IpKey, RangeIndex

ASN_FILE: Final = "ip-to-asn"
"""The dataset's name in the state directory's data folder (its layout is sniffed)."""
MAX_ROWS: Final = 3_000_000
"""Ranges one file may have (iptoasn's combined file has ~650,000 in 2025)."""
MAX_TEXT: Final = 256 << 20
"""Bytes a file may have once decompressed (iptoasn's is ~30 MB)."""
MAX_ORG: Final = 200
_MASK64: Final = (1 << 64) - 1


class AsnDataError(ValueError):
    """An IP-to-ASN file that does not parse; the message names the line and why."""


@dataclass(frozen=True, slots=True)
class AsnData:
    index: RangeIndex
    table: list[tuple[int, str | None]]
    """(AS number, organisation) by index value."""
    kind: str
    """"iptoasn" or "dbip"."""

    def __len__(self) -> int:
        return len(self.index)

    @property
    def asns(self) -> int:
        return len({asn for asn, _ in self.table})

    def lookup_key(self, key: IpKey) -> tuple[int, str | None] | None:
        i = self.index.find(key)
        return self.table[i] if i >= 0 else None

    @property
    def nbytes(self) -> int:
        return self.index.nbytes


def _lines(data: bytes) -> Iterator[bytes]:
    """The file's lines, gunzipped on the fly if gzipped (a whole decompressed copy, grown by
    doubling, would cost several times the file), at most MAX_TEXT bytes in all."""
    if data[:2] != b"\x1f\x8b":
        yield from io.BytesIO(data)
        return
    total = 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            for line in fh:
                total += len(line)
                if total > MAX_TEXT:
                    raise AsnDataError(f"larger than {MAX_TEXT} bytes once decompressed")
                yield line
    except EOFError:
        raise AsnDataError("truncated gzip stream") from None
    except (OSError, zlib.error) as exc:
        raise AsnDataError(f"bad gzip data: {exc}") from None


def _address(text: str, line: int) -> tuple[int, int]:
    """(family, integer) of an address."""
    try:
        if ":" in text:
            return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):
        raise AsnDataError(f"line {line}: not an address: {text[:60]!r}") from None


def _rows(data: bytes, kind: list[str]) -> Iterator[tuple[int, str, str, str, str]]:
    """(line number, start, end, asn, organisation) in either layout, line by line; the
    layout (told by the first line) goes into `kind`."""
    tsv = False
    for n, raw in enumerate(_lines(data), 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise AsnDataError(f"line {n}: not UTF-8") from None
        if n == 1:
            tsv = "\t" in line
            kind.append("iptoasn" if tsv else "dbip")
        if not line.strip():
            continue
        if tsv:
            parts = line.split("\t")
            if len(parts) != 5:
                raise AsnDataError(f"line {n}: expected 5 tab-separated fields")
            yield n, parts[0], parts[1], parts[2], parts[4]
        else:
            row = next(csv.reader([line]), [])
            if len(row) != 4:
                raise AsnDataError(f"line {n}: expected start,end,asn,organisation")
            yield n, row[0], row[1], row[2], row[3]


def parse(data: bytes) -> AsnData:
    """Read an iptoasn TSV or DB-IP ASN CSV (see the module doc); AsnDataError if malformed,
    unsorted, overlapping, empty or too big."""
    kind: list[str] = []
    table: list[tuple[int, str | None]] = []
    ids: dict[tuple[int, str], int] = {}
    # straight into the index's arrays: a list of tuples would cost ~150 bytes a range
    s4, e4, v4 = array("I"), array("I"), array("I")
    s6hi, s6lo, e6hi, e6lo, v6 = array("Q"), array("Q"), array("Q"), array("Q"), array("I")
    last = {4: -1, 6: -1}
    for n, start, stop, asn_text, org_text in _rows(data, kind):
        if n > MAX_ROWS:
            raise AsnDataError(f"more than {MAX_ROWS} ranges")
        asn_text = asn_text.strip()
        if not asn_text.isdigit() or not 0 <= int(asn_text) < 1 << 32:
            raise AsnDataError(f"line {n}: not an AS number: {asn_text[:20]!r}")
        asn = int(asn_text)
        fam, first = _address(start.strip(), n)
        fam_end, final = _address(stop.strip(), n)
        if fam != fam_end or final < first:
            raise AsnDataError(f"line {n}: bad range {start[:45]} - {stop[:45]}")
        if first <= last[fam]:
            raise AsnDataError(f"line {n}: ranges not sorted or overlapping")
        last[fam] = final
        if asn == 0:  # iptoasn: not routed
            continue
        value = ids.get((asn, org_text))
        if value is None:
            org = " ".join(org_text.split())[:MAX_ORG] or None
            if org in ("Not routed", "None"):
                org = None
            value = ids[(asn, org_text)] = len(table)
            table.append((asn, org))
        if fam == 4:
            if e4 and e4[-1] + 1 == first and v4[-1] == value:
                e4[-1] = final
            else:
                s4.append(first)
                e4.append(final)
                v4.append(value)
        else:
            s6hi.append(first >> 64)
            s6lo.append(first & _MASK64)
            e6hi.append(final >> 64)
            e6lo.append(final & _MASK64)
            v6.append(value)
    if not v4 and not v6:
        raise AsnDataError("no routed ranges")
    index = RangeIndex.from_arrays([s4, e4, v4, s6hi, s6lo, e6hi, e6lo, v6])
    return AsnData(index, table, kind[0] if kind else "iptoasn")
