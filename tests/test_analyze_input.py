"""`phonehome analyze` input: standard input, pipes and process substitution (read without a
seek), compressed captures recognised by content, link types it cannot decode named, the same
file given twice refused, damaged captures kept up to the damage."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dpkt
import pytest

from sensor.analyze import Options, analyze
from sensor.lab.synth import PcapWriter, write_sample
from sensor.sources.pcap import CaptureFile

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "xz": lzma.compress,
    "bzip2": bz2.compress,
}

DEADLINE = 60  # seconds: liveness only


def sample_bytes(tmp_path: Path, pcapng: bool = False) -> bytes:
    path = tmp_path / ("s.pcapng" if pcapng else "s.pcap")
    write_sample(str(path), pcapng=pcapng)
    return path.read_bytes()


def run_json(*paths: str, **kw: Any) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    opts = Options(fmt="json", progress=False, **kw)
    rc = analyze(list(paths), options=opts, out=out, err=err)
    return rc, [json.loads(x) for x in out.getvalue().splitlines()], err.getvalue()


def summary(recs: list[dict[str, Any]]) -> tuple[int, list[tuple[Any, ...]]]:
    """(packets read, sorted flow 5-tuples with byte counts): what two runs must agree on."""
    (stats,) = [r for r in recs if r["type"] == "stats"]
    flows = sorted(
        (f["src_ip"], f["src_port"], f["dst_ip"], f["dst_port"], f["bytes_up"], f["bytes_down"])
        for f in recs
        if f["type"] == "flow"
    )
    return stats["packets_read"], flows


def cli(
    args: list[str], stdin: bytes | None = None, shell: bool = False
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PHONEHOME_CONFIG": "/nonexistent/phonehome.toml"}
    env.pop("NO_COLOR", None)
    argv: Any
    if shell:
        argv = ["bash", "-c", " ".join([sys.executable, "-m", "sensor", "analyze", *args])]
    else:
        argv = [sys.executable, "-m", "sensor", "analyze", *args]
    return subprocess.run(
        argv, input=stdin, capture_output=True, timeout=DEADLINE, env=env, check=False
    )


def cli_records(proc: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(x) for x in proc.stdout.decode().splitlines()]


# --- standard input and other streams ------------------------------------------------------------


@pytest.fixture
def expected(tmp_path: Path) -> tuple[int, list[tuple[Any, ...]]]:
    path = tmp_path / "plain.pcap"
    path.write_bytes(sample_bytes(tmp_path))
    rc, recs, err = run_json(str(path))
    assert rc == 0, err
    return summary(recs)


@pytest.mark.parametrize("name", ["-", "/dev/stdin"])
def test_stdin_pipe(tmp_path: Path, expected: Any, name: str) -> None:
    proc = cli(["--json", name], stdin=sample_bytes(tmp_path))
    assert summary(cli_records(proc)) == expected
    assert b"Illegal seek" not in proc.stderr and b"Traceback" not in proc.stderr


def test_process_substitution(tmp_path: Path, expected: Any) -> None:
    gz = tmp_path / "x.pcap.gz"
    gz.write_bytes(gzip.compress(sample_bytes(tmp_path)))
    proc = cli(["--json", f"<(zcat {gz})"], shell=True)
    assert summary(cli_records(proc)) == expected
    # and the compressed file itself through a pipe
    proc = cli(["--json", "-"], stdin=gz.read_bytes())
    assert summary(cli_records(proc)) == expected


def _feed_fifo(fifo: Path, data: bytes, piece: int) -> threading.Thread:
    def writer() -> None:
        with open(fifo, "wb", buffering=0) as fh:
            for i in range(0, len(data), piece):
                fh.write(data[i : i + piece])

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    return t


def _big_capture(n: int = 4000) -> bytes:
    """More than one read chunk (4 MiB) of UDP frames with odd sizes, so records straddle
    the chunk boundaries."""
    buf = io.BytesIO()
    w = PcapWriter(buf)
    rnd = random.Random(n)  # incompressible, so compressed files span many blocks too
    for i in range(n):
        payload = rnd.randbytes(1000 + (i * 7) % 450)
        udp = dpkt.udp.UDP(sport=40000 + i % 5, dport=443, data=payload)
        udp.ulen = len(udp)
        ip = dpkt.ip.IP(
            src=bytes([192, 168, 1, 23]), dst=bytes([203, 0, 113, 9]), p=17, data=udp, ttl=64
        )
        ip.len = len(ip)
        eth = dpkt.ethernet.Ethernet(
            src=bytes.fromhex("640980123456"), dst=bytes.fromhex("00005e005301"), data=ip
        )
        w.write(1_700_000_000 + i * 0.001, bytes(eth))
    return buf.getvalue()


@pytest.mark.parametrize("compress", [None, "gzip"])
def test_fifo_with_short_reads_across_chunks(tmp_path: Path, compress: str | None) -> None:
    data = _big_capture()
    assert len(data) > 4 << 20
    disk = tmp_path / "big.pcap"
    disk.write_bytes(data)
    rc, recs, err = run_json(str(disk))
    assert rc == 0, err
    want = summary(recs)
    assert want[0] == 4000
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    feed = gzip.compress(data, compresslevel=1) if compress else data
    writer = _feed_fifo(fifo, feed, 65_521)  # a prime: reads end mid-record
    rc, recs, err = run_json(str(fifo))
    writer.join(DEADLINE)
    assert rc == 0, err
    assert summary(recs) == want
    assert "truncated" not in err and "warning" not in err


def test_capture_file_never_seeks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader's only file operations are reads: a seek on the raw file fails the test."""
    path = tmp_path / "big.pcap"
    path.write_bytes(_big_capture(3500))

    def no_seek(*_: object) -> int:
        raise AssertionError("seek on a capture")

    cf = CaptureFile(path)
    monkeypatch.setattr(cf._source.raw, "seek", no_seek)
    assert sum(c.count for c in _walked(cf)) == 3500


def _walked(cf: CaptureFile) -> list[Any]:
    from sensor.sources.pcap import walk_records

    chunks = []
    for chunk in cf.chunks():
        walk_records(chunk)
        chunks.append(chunk)
    return chunks


# --- compressed captures ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
@pytest.mark.parametrize("pcapng", [False, True], ids=["pcap", "pcapng"])
def test_compressed_by_content_not_name(
    tmp_path: Path, expected: Any, kind: str, pcapng: bool
) -> None:
    data = COMPRESSORS[kind](sample_bytes(tmp_path, pcapng))
    misleading = tmp_path / "capture.pcap"  # a compressed file named like a plain one
    misleading.write_bytes(data)
    rc, recs, err = run_json(str(misleading))
    assert rc == 0, err
    assert summary(recs) == expected
    (stats,) = [r for r in recs if r["type"] == "stats"]
    assert stats["files"][0]["compression"] == kind
    assert stats["files"][0]["format"] == ("pcapng" if pcapng else "pcap")


def test_plain_capture_named_gz(tmp_path: Path, expected: Any) -> None:
    path = tmp_path / "capture.pcap.gz"
    path.write_bytes(sample_bytes(tmp_path))
    rc, recs, err = run_json(str(path))
    assert rc == 0, err
    assert summary(recs) == expected


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_truncated_compressed_capture_keeps_what_it_held(tmp_path: Path, kind: str) -> None:
    plain = _big_capture(1500)  # bzip2 works in 900 kB blocks: more than one
    data = COMPRESSORS[kind](plain)
    path = tmp_path / "cut"
    path.write_bytes(data[: len(data) * 2 // 3])
    rc, recs, err = run_json(str(path))
    assert rc == 0, err
    (stats,) = [r for r in recs if r["type"] == "stats"]
    assert 0 < stats["packets_read"] < 1500
    assert any(kind in w and "ends early or is corrupt" in w for w in stats["warnings"]), err
    assert "warning" in err


def test_truncated_pcap_through_a_pipe_keeps_what_it_held(tmp_path: Path) -> None:
    plain = sample_bytes(tmp_path)
    proc = cli(["--json", "-"], stdin=plain[: len(plain) - 100])
    recs = cli_records(proc)
    (stats,) = [r for r in recs if r["type"] == "stats"]
    assert 0 < stats["packets_read"] < 261
    assert any("truncated" in w for w in stats["warnings"])
    assert b"truncated" in proc.stderr


def test_compressed_garbage_is_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "notes.gz"
    path.write_bytes(gzip.compress(b"meeting notes, not packets\n" * 10))
    rc, recs, err = run_json(str(path))
    assert rc == 2 and recs == []
    assert "not a pcap or pcapng capture file (gzip-compressed)" in err


def test_compressed_header_cut_short_says_so(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(sample_bytes(tmp_path))[:15])
    rc, _, err = run_json(str(path))
    assert rc == 2 and "gzip data ends early or is corrupt" in err


def test_zstd_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(40))
    rc, _, err = run_json(str(path))
    assert rc == 2 and "zstd" in err and "phonehome analyze -" in err


# --- link types -------------------------------------------------------------------------------


@pytest.mark.parametrize("pcapng", [False, True], ids=["pcap", "pcapng"])
def test_radiotap_named_in_a_warning(tmp_path: Path, pcapng: bool) -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, 127, pcapng)
    for i in range(3):
        w.write(1_700_000_000 + i, b"\x00\x00\x08\x00\x00\x00\x00\x00" + bytes(40))
    path = tmp_path / "wifi.pcap"
    path.write_bytes(buf.getvalue())
    rc, recs, err = run_json(str(path))
    assert rc == 0
    assert "link type 127 (IEEE802_11_RADIOTAP) not supported" in err
    (stats,) = [r for r in recs if r["type"] == "stats"]
    assert any("IEEE802_11_RADIOTAP" in w for w in stats["warnings"])
    assert stats["packets_decoded"] == 0


def test_supported_link_type_has_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "plain.pcap"
    path.write_bytes(sample_bytes(tmp_path))
    rc, _, err = run_json(str(path))
    assert rc == 0 and "link type" not in err


# --- the same file twice ----------------------------------------------------------------------


def test_same_file_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.pcap"
    path.write_bytes(sample_bytes(tmp_path))
    link = tmp_path / "b.pcap"
    link.symlink_to(path)
    hard = tmp_path / "c.pcap"
    os.link(path, hard)
    for args in ([path, path], [path, link], [hard, path], [tmp_path / "." / "a.pcap", path]):
        rc, recs, err = run_json(*(str(a) for a in args))
        assert rc == 2 and recs == [], args
        assert "give each capture once" in err
    other = tmp_path / "other.pcap"
    other.write_bytes(path.read_bytes())  # a copy is another capture
    rc, _, err = run_json(str(path), str(other))
    assert rc == 0, err


def test_stdin_twice_is_refused(tmp_path: Path) -> None:
    proc = cli(["-", "/dev/stdin"], stdin=sample_bytes(tmp_path))
    assert proc.returncode == 2
    assert b"give each capture once" in proc.stderr
