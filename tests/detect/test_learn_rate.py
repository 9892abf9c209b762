"""The per-device learning rate: the same answers as a token bucket refilled at `rate` a
second up to `burst`, one device's flood never costs another its tokens, and the devices
tracked are bounded."""

from __future__ import annotations

import random

from sensor.detect.learn_rate import LearnRate


class _Bucket:
    """The plain token bucket the rate is defined by."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens: dict[str, tuple[float, float]] = {}

    def allow(self, device: str, ts: float) -> bool:
        tokens, at = self.tokens.get(device, (float(self.burst), ts))
        tokens = min(float(self.burst), tokens + (ts - at) * self.rate)
        ok = tokens >= 1.0 - 1e-9
        self.tokens[device] = (tokens - 1.0 if ok else tokens, ts)
        return ok


def test_same_answers_as_a_token_bucket() -> None:
    rng = random.Random(14)
    for rate, burst in ((2.0, 64), (0.5, 1), (10.0, 3), (100.0, 1000)):
        fast, ref = LearnRate(rate, burst), _Bucket(rate, burst)
        ts = 0.0
        answers = []
        for _ in range(20000):
            ts += rng.expovariate(rate * 4.5)  # each device a little over its rate
            device = rng.choice("abc")
            got = fast.allow(device, ts)
            assert got == ref.allow(device, ts), (rate, burst, ts, device)
            answers.append(got)
        assert any(answers) and not all(answers)


def test_a_burst_then_the_rate() -> None:
    r = LearnRate(2.0, 64)
    assert sum(r.allow("flooder", 10.0) for _ in range(1000)) == 64
    assert r.allow("phone", 10.0)  # another device keeps its own bucket
    assert sum(r.allow("flooder", 10.0 + i / 1000) for i in range(1, 5001)) == 10  # 5 s at 2/s


def test_devices_tracked_are_bounded() -> None:
    r = LearnRate(1.0, 1, max_devices=100)
    for i in range(1000):
        assert r.allow(f"dev{i}", 0.0)
    assert len(r) == 100
