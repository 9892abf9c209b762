"""The detection stage: outbound plaintext and flow volumes in, Observations out.

Scans what the packet loop hands over (HTTP requests, DNS query names, the first bytes of other
flows) for identifiers, learns identifiers seen in plaintext so that their encoded and hashed
forms are caught later, and reports uploads and countries as flows grow and end. Every method
returns the Observations it made ("identifier", "upload", "country"); `sensor.stages` hands them
to the alert stage's one way in, `AlertStage.observe`. It never decides what is alarming, and
knows nothing of the alert stage.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from sensor.config import Config
from sensor.detect import extract, placeholders
from sensor.detect.identifiers import (
    Finding,
    KnownIdentifiers,
    Location,
    Scanner,
)
from sensor.detect.learn_rate import LearnRate
from sensor.enrich.stage import Enricher
from sensor.files import errno_name, write_atomically
from sensor.model import Destination, Device, DeviceRef, Flow, HttpRequest, Observation

log = logging.getLogger(__name__)

KEY_BYTES = 32
MAX_ACCOUNTED_FLOWS = 262144
MAX_LEARNED_ON_DISK = 16384
"""Keyed hashes kept in learned.json, oldest dropped first: a host sending a new identifier
with every request must not grow the file (and each save) without bound."""
LEARNED_SAVE_INTERVAL = 10.0
"""Seconds between saves of learned.json while new identifiers are learned: a crash or a
power cut loses at most this much learning."""


def load_or_create_key(path: Path) -> tuple[bytes, bool]:
    """The install's HMAC key (created 0600 on first use); (key, persistent).

    Without a writable place the key is random for this run only: keyed hashes then do not
    match across runs, which costs correlation, never secrecy."""
    try:
        return _whole_key(path, path.read_bytes())
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot read %s: %s; using a key for this run only", path, exc)
        return secrets.token_bytes(KEY_BYTES), False
    key = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        return key, True
    except FileExistsError:  # another process made it first: use theirs
        try:
            theirs = path.read_bytes()
        except OSError:
            theirs = b""
        return _whole_key(path, theirs)
    except OSError as exc:
        log.info("cannot create %s (%s); keyed hashes are per run", path, exc)
        return key, False


def read_key(path: Path) -> tuple[bytes, str | None]:
    """The install's key when it can be read, never creating or changing anything (`analyze`
    without --record); else a key for this run only and a sentence saying why."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        reason = "does not exist"
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror or exc})"
    else:
        if len(data) >= KEY_BYTES:
            return data[:KEY_BYTES], None
        reason = f"holds {len(data)} bytes, not a key"
    return secrets.token_bytes(KEY_BYTES), (
        f"identity key {path} {reason}: using a throwaway key, so keyed hashes in this "
        "report do not match the daemon's"
    )


def _whole_key(path: Path, data: bytes) -> tuple[bytes, bool]:
    """The key `path` holds; a key for this run only when it is short (or empty), left for
    its owner to look at: keyed hashes of an IMEI under a short key would be guessable."""
    if len(data) >= KEY_BYTES:
        return data[:KEY_BYTES], True
    log.warning("%s holds %d bytes, not a key; a key for this run only", path, len(data))
    return secrets.token_bytes(KEY_BYTES), False


class Detector:
    def __init__(
        self,
        cfg: Config,
        key: bytes,
        enricher: Enricher | None,
        learned_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.enricher = enricher
        per_device = {d.mac: d.identifiers for d in cfg.devices if d.identifiers}
        # No home country stays unknown here as in enrich: only +CC numbers are numbers.
        known = KnownIdentifiers.from_mapping(
            cfg.identifiers.as_mapping(),
            key=key,
            home_region=cfg.site.home_country,
            devices=per_device,
        )
        if known.rejected:
            log.warning("%d configured identifiers could not be used", known.rejected)
        self.scanner = Scanner(
            known,
            contacts_min=cfg.detect.contacts_min,
            max_learned=cfg.detect.max_learned if cfg.detect.learn else 0,
        )
        self.placeholders = placeholders.default()
        self._placeholder_hashes = self.placeholders.by_keyed_hash(key)
        self.placeholders_seen: Counter[str] = Counter()
        """Findings dropped as placeholders, by reason (never alerted, never learned)."""
        self.learned_path = learned_path
        self.learned_on_disk: dict[tuple[str, str], None] = dict.fromkeys(
            _read_learned(learned_path) if learned_path else ()
        )
        """What learned.json holds (insertion order: oldest first)."""
        self._accounted: OrderedDict[str, int] = OrderedDict()
        """Upload bytes already accounted per live flow (uid)."""
        self._learn_rate = LearnRate(cfg.detect.learn_rate, cfg.detect.learn_burst)
        self._learned = self.scanner.learned
        self._learning = cfg.detect.learn
        self.findings = 0
        self.learned = 0
        self.scanned_bytes = 0
        self._unsaved = False
        """Identifiers learned since learned.json was last written."""
        self._next_save = 0.0
        self.write_errors: Counter[str] = Counter()
        """Failed writes of learned.json by errno name (phonehome_state_write_errors_total)."""
        self._failing = False

    # --- outbound plaintext -------------------------------------------------------------------

    def http_request(
        self, flow: Flow, device: Device | None, req: HttpRequest, ts: float
    ) -> list[Observation]:
        return self._scan(flow, device, extract.request_parts(req), ts)

    def dns_query(
        self, flow: Flow, device: Device | None, qname: str, ts: float
    ) -> list[Observation]:
        return self._scan(
            flow, device, [("dns", extract.dns_name_parts(qname))], ts, dns_name=qname
        )

    def payload(
        self, flow: Flow, device: Device | None, data: bytes, ts: float
    ) -> list[Observation]:
        return self._scan(flow, device, [("payload", data)], ts)

    def _scan(
        self,
        flow: Flow,
        device: Device | None,
        parts: Sequence[tuple[Location, bytes]],
        ts: float,
        dns_name: str | None = None,
    ) -> list[Observation]:
        out: list[Observation] = []
        seen: set[tuple[str, str, str]] = set()
        dst: Destination | None = None
        who: DeviceRef | None = None
        for location, data in parts:
            self.scanned_bytes += len(data)
            for f in self.scanner.scan(data, location):
                dedupe = (f.kind, f.keyed_hash, f.encoding)
                if dedupe in seen:
                    continue
                seen.add(dedupe)
                reason = self._placeholder(f, data)
                if reason is not None:
                    self.placeholders_seen[reason] += 1
                    continue
                self.findings += 1
                if self._learning and not f.known and f.encoding == "plain":
                    self._learn(f, data, device, ts)
                if dst is None:
                    dst = self._destination(flow, dns_name)
                    who = self._device(device, flow)
                assert who is not None
                out.append(
                    Observation(
                        what="identifier",
                        ts=ts,
                        device=who,
                        dst=dst,
                        flow_uid=flow.uid,
                        identifier=f.kind,
                        encoding=f.encoding,
                        location=f.location,
                        value=f.redacted,
                        keyed_hash=f.keyed_hash,
                        known=f.known,
                    )
                )
        return out

    def _placeholder(self, f: Finding, data: bytes) -> str | None:
        """Why the finding is a placeholder (sensor/data/placeholders.toml), else None. Listed
        values are recognised by keyed hash in any encoding; the MAC group-bit rule on the
        matched text; e-mail domain rules on the redacted value's domain."""
        hit = self._placeholder_hashes.get((f.kind, f.keyed_hash))
        if hit is None and f.kind == "mac" and f.encoding == "plain":
            raw = data[f.offset : f.offset + f.length].decode("latin-1")
            hit = self.placeholders.mac_reason(raw)
        elif hit is None and f.kind == "email":
            hit = self.placeholders.email_domain_reason(f.redacted.rpartition("@")[2])
        return hit

    def _learn(self, f: Finding, data: bytes, device: Device | None, ts: float) -> None:
        # Every finding of a value not learned yet comes here: under a flood, the lookup and
        # the refusal below are most of what learning costs per finding.
        learned = self._learned
        if learned.touch_hash(f.kind, f.keyed_hash):
            return  # seen before: no cost but a lookup
        owner = device.mac if device else None
        if not self._learn_rate.allow(owner, ts):
            learned.shed["rate"] += 1  # `refuse`, without the call
            return
        raw = data[f.offset : f.offset + f.length]
        if self.scanner.learn(f, raw, owner=owner):
            self.learned += 1
            on_disk = self.learned_on_disk
            on_disk[(f.kind, f.keyed_hash)] = None
            if len(on_disk) > MAX_LEARNED_ON_DISK:
                del on_disk[next(iter(on_disk))]
            self._unsaved = self.learned_path is not None

    def _destination(self, flow: Flow, dns_name: str | None) -> Destination:
        if dns_name is not None:
            # Data in a DNS name goes to whoever serves that domain, wherever that is; the
            # resolver is only the first hop. We cannot place it: country unknown.
            return Destination(ip=flow.dst_ip, port=flow.dst_port, server_name=dns_name)
        if self.enricher is None:
            return Destination(ip=flow.dst_ip, port=flow.dst_port, server_name=flow.server_name)
        return self.enricher.destination(flow.dst_ip, flow.dst_port, flow.server_name)

    def _device(self, device: Device | None, flow: Flow) -> DeviceRef:
        if self.enricher is None:
            return DeviceRef(mac=flow.device_mac, ip=flow.src_ip)
        return self.enricher.device_ref(device, flow.device_mac, flow.src_ip)

    # --- volumes and countries, as flows grow and end -----------------------------------------

    def upload_progress(
        self, flow: Flow, device: Device | None, dst: Destination, ts: float
    ) -> list[Observation]:
        """A live flow's upload grew (conntrack counters): report the new bytes now, so a
        long upload alerts while it runs, not when its conntrack entry finally expires."""
        if dst.country is None:
            return []
        who = self._device(device, flow)
        out: list[Observation] = []
        if flow.uid not in self._accounted:
            out.append(_country(flow, who, dst))
        new = flow.bytes_up - self._accounted.get(flow.uid, 0)
        self._accounted[flow.uid] = flow.bytes_up
        self._accounted.move_to_end(flow.uid)
        while len(self._accounted) > MAX_ACCOUNTED_FLOWS:
            self._accounted.popitem(last=False)
        if dst.abroad and new > 0:
            out.append(_upload(flow, ts, who, dst, new))
        return out

    def fingerprint(
        self, flow: Flow, device: Device | None, ja4: str, ts: float
    ) -> list[Observation]:
        """A device showed a TLS client fingerprint new to it (the new_fingerprint rule)."""
        return [
            Observation(
                what="fingerprint",
                ts=ts,
                device=self._device(device, flow),
                dst=self._destination(flow, None),
                flow_uid=flow.uid,
                fingerprint=ja4,
                since=device.ja4_since if device is not None else None,
            )
        ]

    def flow_end(self, flow: Flow, device: Device | None, dst: Destination) -> list[Observation]:
        """A flow ended: its country (unless reported while it ran) and the upload bytes not
        reported yet."""
        already = self._accounted.pop(flow.uid, None)
        if dst.country is None:
            return []
        who = self._device(device, flow)
        out: list[Observation] = []
        if already is None:
            out.append(_country(flow, who, dst))
        new = flow.bytes_up - (already or 0)
        if dst.abroad and new > 0:
            out.append(_upload(flow, flow.last_seen, who, dst, new))
        return out

    def tick(self, now: float) -> None:
        if self._unsaved:
            mono = time.monotonic()  # `now` is packet time in `analyze`
            if mono >= self._next_save:
                self._next_save = mono + LEARNED_SAVE_INTERVAL
                self._save_learned()

    def close(self) -> None:
        if self._unsaved:
            self._save_learned()

    def _save_learned(self) -> None:
        """learned.json now; a failure is counted by errno name and logged when the file
        starts failing, the set stays marked unsaved for the next try."""
        assert self.learned_path is not None
        try:
            _write_learned(self.learned_path, self.learned_on_disk)
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "cannot save learned identifiers to %s: %s; retrying every %.0f s",
                    self.learned_path,
                    exc,
                    LEARNED_SAVE_INTERVAL,
                )
            self.write_errors[errno_name(exc)] += 1
            self._failing = True
            return
        if self._failing:
            log.info("%s written again", self.learned_path)
        self._failing = False
        self._unsaved = False

    def stats(self) -> dict[str, object]:
        return {
            "findings": self.findings,
            "learned": self.learned,
            "learned_on_disk": len(self.learned_on_disk),
            "scanned_bytes": self.scanned_bytes,
            "placeholders": dict(self.placeholders_seen),
            "learning": self.scanner.learned.stats(),
            "write_errors": dict(self.write_errors),
        }


def _country(flow: Flow, who: DeviceRef, dst: Destination) -> Observation:
    """A device talked to `dst`'s country (at the flow's start)."""
    return Observation(what="country", ts=flow.first_seen, device=who, dst=dst, flow_uid=flow.uid)


def _upload(flow: Flow, ts: float, who: DeviceRef, dst: Destination, new: int) -> Observation:
    """`new` bytes a device sent to `dst` since the last report for this flow."""
    return Observation(what="upload", ts=ts, device=who, dst=dst, flow_uid=flow.uid, bytes_up=new)


def _read_learned(path: Path) -> list[tuple[str, str]]:
    try:
        rows = json.loads(path.read_text())
        return [(str(r["kind"]), str(r["keyed_hash"])) for r in rows]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return []


def _write_learned(path: Path, learned: Iterable[tuple[str, str]]) -> None:
    """Keyed hashes only (never values), atomically, mode 0600."""
    rows = [{"kind": k, "keyed_hash": h} for k, h in learned]  # oldest first
    write_atomically(path, json.dumps(rows).encode())
