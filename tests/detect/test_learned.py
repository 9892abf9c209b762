"""Learned identifiers: adding one is cheap whatever was learned before, the automaton over them
is compiled in batches within a time budget, and a host flooding new values pushes out only its
own (what is dropped is counted)."""

from __future__ import annotations

import base64
import hashlib
import random
from pathlib import Path

import pytest

from bench.learn_bench import write_capture
from sensor.config import parse_config
from sensor.detect import learned as learned_module
from sensor.detect.identifiers import KnownIdentifiers, LearnedIdentifiers, Scanner, keyed_hash
from tests.detect import corpus as C
from tests.test_metrics import Wired, parse, total

KEY = b"test-key"


def _imeis(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return list(dict.fromkeys(C.fake_imei(rng) for _ in range(n)))


class _Clock:
    """Stands in for time.monotonic and time.perf_counter: the compile budget is wall time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.compile_takes = 0.0
        self._reads = 0

    def monotonic(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.now  # a busy process: CPU time runs with wall time

    def perf_counter(self) -> float:
        # Each compile reads it twice: the second read comes `compile_takes` later.
        self._reads += 1
        if self._reads % 2 == 0:
            self.now += self.compile_takes
        return self.now


def test_add_does_not_compile_and_compile_searches_every_value() -> None:
    learned = LearnedIdentifiers(KEY, "GB", capacity=100)
    values = _imeis(10, 1)
    for v in values:
        assert learned.add("imei", v, "dev")
    assert not learned.add("imei", values[0], "dev")  # present: touched, not added again
    assert learned.automaton is None and learned.pending == 10 and learned.dirty
    learned.compile()
    assert learned.pending == 0 and not learned.dirty and learned.compiles == 1
    assert [h for _, h in learned.hashes()] == [
        keyed_hash(KEY, "imei", v) for v in values[1:] + values[:1]
    ]


def test_capacity_drops_from_the_device_holding_the_most() -> None:
    learned = LearnedIdentifiers(KEY, "GB", capacity=8)
    mine = _imeis(3, 2)
    for v in mine:
        learned.add("imei", v, "victim")
    learned.compile()
    flood = _imeis(500, 3)
    for v in flood:
        learned.add("imei", v, "flooder")
    assert len(learned) == 8
    assert all(learned.has_canonical("imei", v) for v in mine)
    assert learned.added == 503
    # Five of the flooder's values fit; the rest were dropped, never searched for.
    assert learned.shed == {"evicted": 0, "unsearched": 495, "rate": 0}
    learned.compile()
    learned.add("imei", _imeis(1, 4)[0], "flooder")
    assert learned.shed == {"evicted": 1, "unsearched": 495, "rate": 0}


def test_compiles_are_paced_by_the_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(learned_module.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(learned_module.time, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(learned_module.time, "process_time", clock.process_time)
    learned = LearnedIdentifiers(KEY, "GB", capacity=64)
    assert not learned.compile_due()  # nothing to compile
    learned.add("imei", _imeis(1, 5)[0], None)
    clock.compile_takes = 0.5  # a slow compile, far over the burst allowance
    assert learned.compile_due()
    learned.compile()
    learned.add("imei", _imeis(1, 6)[0], None)
    assert not learned.compile_due()
    # The 0.45 s over budget is paid back at the duty cycle: 7.5 s of busy time (a twentieth
    # of CPU time and a hundredth of wall time).
    clock.now += 7.4
    assert not learned.compile_due()
    clock.now += 0.2
    assert learned.compile_due()


def test_a_flood_of_new_values_keeps_other_devices_detection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host sending a new IMEI in every request: each is found in plain, learning sheds what
    the budget cannot compile, and another device's learned IMEI is still caught in base64."""
    clock = _Clock()
    monkeypatch.setattr(learned_module.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(learned_module.time, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(learned_module.time, "process_time", clock.process_time)
    scanner = Scanner(KnownIdentifiers(KEY, "GB"), max_learned=32)
    victim = _imeis(1, 7)[0]
    (f,) = scanner.scan(f"imei={victim}".encode(), "url")
    data = f"imei={victim}".encode()
    assert scanner.learn(f, data[f.offset : f.offset + f.length], owner="victim")
    clock.compile_takes = 1.0  # every compile exhausts the budget for a while
    flood = _imeis(300, 8)
    for v in flood:
        body = f"imei={v}".encode()
        (g,) = scanner.scan(body, "url")
        assert (g.kind, g.encoding, g.known) == ("imei", "plain", False)
        scanner.learn(g, body[g.offset : g.offset + g.length], owner="flooder")
        clock.now += 0.005  # 200 requests a second
    learned = scanner.learned
    assert learned.compiles <= 2  # 1.5 s of busy time, 1 s compiles at 6 % of the time
    assert learned.has_canonical("imei", victim)
    assert learned.shed["unsearched"] > 250
    b64 = base64.b64encode(f'{{"imei":"{victim}"}}'.encode())
    found = scanner.scan(b64, "body")
    assert [(x.kind, x.encoding, x.known, x.owner) for x in found] == [
        ("imei", "base64", True, "victim")
    ]
    md5 = hashlib.md5(victim.encode()).hexdigest().encode()
    assert [x.encoding for x in scanner.scan(b"h=" + md5, "body")] == ["md5"]


def test_no_capacity_learns_nothing() -> None:
    scanner = Scanner(KnownIdentifiers(KEY, "GB"), max_learned=0, auto_learn=True)
    scanner.scan(f"imei={_imeis(1, 9)[0]}".encode(), "url")
    assert scanner.learned_count == 0 and scanner.learned.added == 0


def test_the_biggest_owner_loses_first_as_sizes_change() -> None:
    learned = LearnedIdentifiers(KEY, "GB", capacity=6)
    values = iter(_imeis(40, 10))
    for owner, n in (("a", 3), ("b", 2), ("c", 1)):
        for _ in range(n):
            learned.add("imei", next(values), owner)
    learned.add("imei", next(values), "c")  # 7 > 6: "a" (3) loses one
    learned.add("imei", next(values), "c")  # a 2, b 2, c 3: "c" loses one
    counts: dict[str | None, int] = {}
    for _kind, _value, owner in learned._order:
        counts[owner] = counts.get(owner, 0) + 1
    assert counts == {"a": 2, "b": 2, "c": 2}
    for _ in range(30):
        learned.add("imei", next(values), "b")
    counts = {}
    for _kind, _value, owner in learned._order:
        counts[owner] = counts.get(owner, 0) + 1
    assert counts == {"a": 2, "b": 2, "c": 2}


def test_a_device_over_its_learning_rate_is_shed_and_counted(tmp_path: Path) -> None:
    """Through the detection stage and the exporter: one device sends 9 new identifiers in
    each of 40 requests within a few seconds of packet time; it teaches `learn_burst` of
    them, the rest are counted as shed (rate), and all are still reported."""
    state = tmp_path / "state"
    state.mkdir()
    capture = tmp_path / "leaks.pcap"
    write_capture(capture, flows=40, devices=1)
    cfg = parse_config(
        {
            "site": {"home_country": "ID"},
            "paths": {"state_dir": str(state)},
            "detect": {"learn_rate": 0.01, "learn_burst": 20},
        }
    )
    w = Wired(cfg)
    try:
        w.feed(capture)
        detector = w.stages.detector
        assert detector is not None
        assert detector.findings >= 360
        series = parse(w.exporter.render())
        assert total(series, "phonehome_identifiers_learned_total") == 20
        assert total(series, "phonehome_identifiers_learned_shed_total", reason="rate") == 340
        assert total(series, "phonehome_identifiers_learned_in_memory") == 20
    finally:
        w.close()


def test_learned_digests_are_found_as_whole_tokens() -> None:
    """Digest forms of learned values are looked up as tokens, not searched for: in either hex
    case, in base64 with or without padding, in either alphabet; not inside a longer run."""
    scanner = Scanner(KnownIdentifiers(KEY, "GB"), auto_learn=True)
    imei = _imeis(1, 11)[0]
    scanner.scan(f"imei={imei}".encode(), "url")
    scanner.rebuild()
    sha1 = hashlib.sha1(imei.encode()).digest()
    sha256 = hashlib.sha256(imei.encode()).digest()
    cases = {
        b'{"h":"' + sha1.hex().upper().encode() + b'"}': "sha1",
        b"sig=" + base64.b64encode(sha256) + b"&x=1": "sha256_base64",
        b"sig=" + base64.urlsafe_b64encode(sha256).rstrip(b"=") + b"&x=1": "sha256_base64",
        b"h=" + hashlib.md5(imei.encode()).hexdigest().encode(): "md5",
    }
    for data, encoding in cases.items():
        found = scanner.scan(data, "body")
        assert [(f.kind, f.encoding, f.known) for f in found] == [("imei", encoding, True)], data
    assert scanner.scan(b"h=" + sha1.hex().encode() + b"00ff", "body") == []
