"""Coverage-guided fuzzing of the packet loop (`Pipeline.run_packets`) with atheris (libFuzzer).

    python -m bench.fuzz_atheris -runs=20000          # libFuzzer flags pass through
    python -m bench.fuzz_atheris --seconds 30

Each input is a little capture: one byte picks the link type, then records of (1 byte of time
step, 2 bytes of length, frame). The seed corpus is the demo capture's frames (sensor.lab.synth),
so the fuzzer starts from real DNS, DHCP, HTTP, TLS and QUIC-free TCP and mutates from there.
The check is the pipeline's promise: nothing escapes, and every packet read is counted as
decoded or skipped with a reason. A failing input is written to
tests/fuzz_corpus/pipeline-<what>-<hash>.bin (replayed by tests/test_fuzz.py) and re-raised.
At exit it prints the inputs run, the packets fuzzed and the executions per second.

atheris is pinned in requirements-dev.txt; tests/test_fuzz.py runs this target briefly in CI.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "fuzz_corpus"
LINKTYPES = (1, 113, 276, 101, 228, 229, 12, 14, 0, 999)
_REC = struct.Struct(">BH")


def packets_from_bytes(data: bytes) -> list[tuple[float, int, bytes]]:
    """The packets an input stands for (also used by the corpus replay in tests/test_fuzz.py)."""
    if not data:
        return []
    linktype = LINKTYPES[data[0] % len(LINKTYPES)]
    out: list[tuple[float, int, bytes]] = []
    pos, ts = 1, 1_700_000_000.0
    while pos < len(data):
        if pos + _REC.size > len(data):
            out.append((ts, linktype, data[pos:]))
            break
        step, length = _REC.unpack_from(data, pos)
        pos += _REC.size
        ts += step / 16.0  # up to 16 s a step: idle sweeps and timeouts happen too
        out.append((ts, linktype, data[pos : pos + length]))
        pos += length
    return out


def packets_to_bytes(linktype_index: int, frames: list[bytes]) -> bytes:
    buf = bytearray([linktype_index])
    for f in frames:
        buf += _REC.pack(1, len(f)) + f
    return bytes(buf)


def seeds() -> Iterator[bytes]:
    """Inputs built from the demo capture: a few consecutive frames at a time."""
    import dpkt

    from sensor.lab.synth import sample_home

    for index, linktype in enumerate(LINKTYPES[:3]):
        buf = io.BytesIO()
        sample_home(buf, linktype=linktype)
        frames = [bytes(f) for _ts, f in dpkt.pcap.Reader(io.BytesIO(buf.getvalue()))]
        frames = [f for f in frames if len(f) <= 2000]
        for start in range(0, len(frames), 6):
            yield packets_to_bytes(index, frames[start : start + 6])


class _Stats:
    inputs = 0
    packets = 0
    started = time.monotonic()


def _report() -> None:
    secs = max(time.monotonic() - _Stats.started, 1e-9)
    print(
        f"fuzz_atheris: {_Stats.inputs} inputs, {_Stats.packets} packets fuzzed in {secs:.1f} s: "
        f"{_Stats.inputs / secs:.0f} exec/s, {_Stats.packets / secs:.0f} packets/s",
        file=sys.stderr,
        flush=True,
    )


def _save_crasher(data: bytes, exc: BaseException) -> Path:
    CORPUS.mkdir(parents=True, exist_ok=True)
    what = type(exc).__name__.lower()
    path = CORPUS / f"pipeline-{what}-{hashlib.sha1(data).hexdigest()[:10]}.bin"
    path.write_bytes(data)
    print(f"fuzz_atheris: crasher written to {path}", file=sys.stderr, flush=True)
    return path


def main(argv: list[str] | None = None) -> None:
    import atheris

    args = list(sys.argv if argv is None else argv)
    # libFuzzer leaves through C exit(), past Python's atexit: the limits are enforced here, so
    # the figures get printed and the seed directory removed.
    seconds = float("inf")
    if "--seconds" in args:
        i = args.index("--seconds")
        seconds = float(args[i + 1])
        del args[i : i + 2]
    runs = next((int(a.split("=", 1)[1]) for a in args if a.startswith("-runs=")), -1)
    if not any(a.startswith("-rss_limit_mb") for a in args):
        args.append("-rss_limit_mb=1024")
    if not any(a.startswith("-max_len") for a in args):
        args.append("-max_len=4096")

    with atheris.instrument_imports(include=["sensor"]):
        from sensor.config import Config
        from sensor.pipeline import Pipeline

    class Sink:
        def flow(self, flow: object) -> None:
            pass

        def device(self, device: object) -> None:
            pass

    cfg = Config()

    def one_input(data: bytes) -> None:
        packets = packets_from_bytes(data)
        _Stats.inputs += 1
        _Stats.packets += len(packets)
        try:
            p = Pipeline(cfg, Sink())
            p.run_packets(packets)
            p.finish()
            stats = p.stats()
            decoded, skipped = stats["packets_decoded"], stats["packets_skipped"]
            assert isinstance(decoded, int) and isinstance(skipped, int)
            if stats["packets_read"] != len(packets) or decoded + skipped != len(packets):
                raise AssertionError(f"packets not all counted: {stats}")
            if any(not reason for reason in p.skipped):
                raise AssertionError("a skip without a reason")
        except Exception as exc:
            _save_crasher(data, exc)
            raise
        if _Stats.inputs == runs or time.monotonic() - _Stats.started >= seconds:
            finish(0)

    def finish(code: int) -> None:
        _report()
        shutil.rmtree(seed_dir, ignore_errors=True)
        os._exit(code)

    # Seeds: the demo capture, cut into inputs, in a temporary corpus directory libFuzzer
    # reads first (it also writes the interesting inputs it finds there, and they go with it).
    seed_dir = Path(tempfile.mkdtemp(prefix="phonehome-fuzz-"))
    for n, seed in enumerate(seeds()):
        (seed_dir / f"seed-{n:04d}").write_bytes(seed)
    if not any(not a.startswith("-") for a in args[1:]):
        args.append(str(seed_dir))
    args = [a for a in args if not a.startswith("-runs=")]  # counted here, seeds included

    atexit.register(shutil.rmtree, seed_dir, True)
    _Stats.started = time.monotonic()
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
