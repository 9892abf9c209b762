"""`phonehome analyze`: which settings it uses, and that it changes nothing unless --record.

The read-only test runs against a real HTTP listener on loopback standing in for
Alertmanager, and a state directory a `--record` run filled first (identity key, learned
identifiers, event log, geo cache)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor.analyze import Options, analyze, check_country, load_identifiers_file
from sensor.cli import main
from sensor.config import ConfigError
from sensor.lab.synth import DEMO_IMEI, DEMO_PHONE, write_sample

# --- helpers ------------------------------------------------------------------------------------


def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.pcap"
    if not path.exists():
        write_sample(str(path))
    return path


def records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def alerts_of(text: str) -> list[dict[str, Any]]:
    return [r for r in records(text) if r["type"] == "alert"]


def stats_of(text: str) -> dict[str, Any]:
    (stats,) = [r for r in records(text) if r["type"] == "stats"]
    return stats


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["analyze", *args])
    out, err = capsys.readouterr()
    return rc, out, err


class _Listener(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, str]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.requests.append(("POST", self.path))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[http.server.HTTPServer]:
    """An HTTP server on loopback standing in for Alertmanager; `.requests` lists the hits."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Listener)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def snapshot(tree: Path) -> dict[str, tuple[str, int, int, str]]:
    """Every entry under `tree`: kind, mode, mtime and content hash."""
    out: dict[str, tuple[str, int, int, str]] = {}
    for p in sorted(tree.rglob("*")):
        st = p.lstat()
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(tree))] = ("file", st.st_mode, st.st_mtime_ns, digest)
        else:
            out[str(p.relative_to(tree))] = ("dir", st.st_mode, st.st_mtime_ns, "")
    return out


def router_config(tmp_path: Path, url: str) -> tuple[Path, Path]:
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "phonehome.toml"
    cfg.write_text(
        f'[site]\nhome_country = "ID"\n[paths]\nstate_dir = "{state}"\n'
        f'[alertmanager]\nurl = "{url}"\nretries = 0\n'
        f'[identifiers]\nphone = ["{DEMO_PHONE}"]\n'
    )
    return cfg, state


# --- read-only unless --record ------------------------------------------------------------------


def test_without_record_state_dir_and_alertmanager_are_untouched(
    tmp_path: Path, listener: http.server.HTTPServer
) -> None:
    url = f"http://127.0.0.1:{listener.server_address[1]}"
    cfg, state = router_config(tmp_path, url)
    pcap = sample(tmp_path)
    # A --record run first: it must fill the state directory and reach the listener, or the
    # read-only run below would prove nothing.
    out, err = io.StringIO(), io.StringIO()
    opts = Options(config_path=str(cfg), fmt="json", record=True, progress=False)
    assert analyze([str(pcap)], options=opts, out=out, err=err) == 0, err.getvalue()
    assert alerts_of(out.getvalue())
    assert listener.requests, "the --record run did not reach Alertmanager"  # type: ignore[attr-defined]
    names = {p.name for p in state.rglob("*")}
    assert {"identity.key", "learned.json", "events.jsonl"} <= names, names
    assert any(p.is_file() for p in (state / "cache").rglob("*")), "no geo cache written"
    before = snapshot(state)
    hits = len(listener.requests)  # type: ignore[attr-defined]

    out, err = io.StringIO(), io.StringIO()
    opts = Options(config_path=str(cfg), fmt="json", progress=False)
    assert analyze([str(pcap)], options=opts, out=out, err=err) == 0, err.getvalue()
    alerts = alerts_of(out.getvalue())
    assert any(a["severity"] == "critical" and a["identifier"] == "imei" for a in alerts)
    assert snapshot(state) == before
    assert len(listener.requests) == hits  # type: ignore[attr-defined]
    stats = stats_of(out.getvalue())
    assert stats["recorded"] is False and stats["key"] == "install"


def test_without_record_nothing_is_created(tmp_path: Path) -> None:
    """A state directory with no key yet: a throwaway key, said in the output; no key,
    no geo cache and no event log created."""
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{state}"\n')
    out, err = io.StringIO(), io.StringIO()
    opts = Options(config_path=str(cfg), fmt="text", progress=False)
    assert analyze([str(sample(tmp_path))], options=opts, out=out, err=err) == 0
    assert list(state.iterdir()) == []
    assert "throwaway key" in err.getvalue()
    assert "key: throwaway" in out.getvalue()
    assert "read-only" in out.getvalue()


def test_record_flag_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--record" in text and "Read-only unless --record" in text


# --- which configuration ------------------------------------------------------------------------


def test_default_config_is_read_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "phonehome.toml"
    cfg.write_text(f'[site]\nhome_country = "ID"\n[identifiers]\nimei = ["{DEMO_IMEI}"]\n')
    monkeypatch.setenv("PHONEHOME_CONFIG", str(cfg))
    rc, out, err = cli(capsys, "--json", str(sample(tmp_path)))
    assert rc == 0, err
    imei = [a for a in alerts_of(out) if a["identifier"] == "imei"]
    assert imei and all(a["severity"] == "critical" for a in imei)
    assert stats_of(out)["config"] == str(cfg)


def test_missing_default_config_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PHONEHOME_CONFIG", str(tmp_path / "absent.toml"))
    rc, out, err = cli(capsys, "--json", str(sample(tmp_path)))
    assert rc == 0, err
    assert stats_of(out)["config"] is None
    # An explicit --config that does not exist is an error, as before.
    rc, out, err = cli(capsys, "--config", str(tmp_path / "absent.toml"), str(sample(tmp_path)))
    assert rc == 2 and "absent.toml" in err


def _as_nobody(fn: Any) -> tuple[int, str, str]:
    """Run `fn() -> (rc, out, err)` as an unprivileged user: in a forked child that drops
    root (root reads every file), or here when the tests already run unprivileged."""
    if os.geteuid() != 0:
        result: tuple[int, str, str] = fn()
        return result
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            data = json.dumps(fn()).encode()
            with os.fdopen(w, "wb") as fh:
                fh.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the unprivileged child failed"
    rc, out, err = json.loads(data)
    return int(rc), str(out), str(err)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's own are private to root)."""
    with tempfile.TemporaryDirectory(prefix="phonehome-analyze-") as name:
        base = Path(name)
        base.chmod(0o755)
        yield base


def test_unreadable_config_and_key_mean_defaults_and_throwaway_key(shared_dir: Path) -> None:
    base = shared_dir  # the unprivileged user reaches the capture, not the secrets
    pcap = sample(base)
    pcap.chmod(0o644)
    state = base / "state"
    state.mkdir(mode=0o755)
    key = state / "identity.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    cfg = base / "phonehome.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{state}"\n[detect]\nkey_file = "{key}"\n')
    cfg.chmod(0o640)
    other = base / "readable.toml"
    other.write_text(f'[paths]\nstate_dir = "{state}"\n')
    other.chmod(0o644)

    def run(config: str, default: bool) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        opts = Options(config_path=config, config_is_default=default, fmt="json", progress=False)
        rc = analyze([str(pcap)], options=opts, out=out, err=err)
        return rc, out.getvalue(), err.getvalue()

    rc, out, err = _as_nobody(lambda: run(str(cfg), True))
    assert rc == 0, err
    assert f"cannot read {cfg} (permission denied)" in err
    assert stats_of(out)["config"] is None
    assert any("cannot read" in n for n in stats_of(out)["notes"])
    # A readable config naming an unreadable key: said, and a throwaway key.
    rc, out, err = _as_nobody(lambda: run(str(other), False))
    assert rc == 0, err
    assert f"identity key {key} cannot be read" in err and "throwaway" in err
    assert stats_of(out)["key"] == "throwaway"


# --- --home-country and --identifiers-file ------------------------------------------------------


def test_home_country_flag_makes_the_leak_critical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PHONEHOME_CONFIG", str(tmp_path / "absent.toml"))
    rc, out, _ = cli(capsys, "--json", str(sample(tmp_path)))
    assert {a["severity"] for a in alerts_of(out)} == {"warning"}
    rc, out, err = cli(capsys, "--json", "--home-country", "id", str(sample(tmp_path)))
    assert rc == 0, err
    assert {a["severity"] for a in alerts_of(out)} == {"critical"}
    assert stats_of(out)["home_country"] == "ID"


@pytest.mark.parametrize("bad", ["X", "XYZ", "1A", "", "XX", "UK"])
def test_home_country_must_be_an_iso_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    rc, out, err = cli(capsys, "--home-country", bad, str(sample(tmp_path)))
    assert rc == 2 and out == ""
    assert "--home-country" in err and "ISO 3166-1 alpha-2" in err
    if bad == "UK":
        assert "did you mean GB?" in err
    with pytest.raises(ValueError):
        check_country(bad)


def test_analyze_and_check_agree_on_a_bad_identifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[site]\nhome_country = "DE"\n[identifiers]\nimei = ["12345"]\n')
    rc, out, err = cli(capsys, "--config", str(cfg), str(sample(tmp_path)))
    assert rc == 2 and out == ""
    assert "identifiers.imei[0]" in err, err
    ids = _ids_file(tmp_path, 'imei = ["490154203237518", "490154203237519"]\n')
    rc, out, err = cli(capsys, "--identifiers-file", str(ids), str(sample(tmp_path)))
    assert rc == 2 and out == ""
    assert f"{ids}: imei[1]" in err, err


def _ids_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "ids.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "table"])
def test_identifiers_file_adds_identifiers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    nested: bool,
) -> None:
    monkeypatch.setenv("PHONEHOME_CONFIG", str(tmp_path / "absent.toml"))
    head = "[identifiers]\n" if nested else ""
    ids = _ids_file(tmp_path, f'{head}phone = ["{DEMO_PHONE}"]\n')
    rc, out, err = cli(
        capsys, "--json", "--home-country", "ID", "--identifiers-file", str(ids),
        str(sample(tmp_path)),
    )  # fmt: skip
    assert rc == 0, err
    phone = [a for a in alerts_of(out) if a["identifier"] == "phone"]
    assert phone and phone[0]["severity"] == "critical"
    assert DEMO_PHONE not in out and DEMO_PHONE not in err
    assert load_identifiers_file(str(ids)).phone == (DEMO_PHONE,)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_identifiers_file_readable_by_others_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    ids = _ids_file(tmp_path, f'imei = ["{DEMO_IMEI}"]\n', mode)
    rc, out, err = cli(capsys, "--identifiers-file", str(ids), str(sample(tmp_path)))
    assert rc == 2 and out == ""
    assert str(ids) in err and "readable by group or others" in err and "chmod 600" in err
    assert DEMO_IMEI not in err


def test_identifiers_file_errors_name_file_and_key_never_the_value(tmp_path: Path) -> None:
    ids = _ids_file(tmp_path, 'imei = "861234567890127"\n')
    with pytest.raises(ConfigError) as exc:
        load_identifiers_file(str(ids))
    assert exc.value.key == "imei" and str(ids) in str(exc.value)
    ids = _ids_file(tmp_path, 'pin = ["1234"]\n')
    with pytest.raises(ConfigError) as exc:
        load_identifiers_file(str(ids))
    assert "pin" in str(exc.value)
    ids = _ids_file(tmp_path, 'imei = ["861234567890127"\n')  # broken TOML
    with pytest.raises(ConfigError) as exc:
        load_identifiers_file(str(ids))
    assert "861234567890127" not in str(exc.value) and "end of file" in str(exc.value)
    ids = _ids_file(tmp_path, 'imei = ["861234567890127" x]\n')
    with pytest.raises(ConfigError) as exc:
        load_identifiers_file(str(ids))
    assert "861234567890127" not in str(exc.value) and "line 1" in str(exc.value)


def test_identifiers_never_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """No option takes an identifier's value: only a file does."""
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = capsys.readouterr().out
    for flag in ("--imei", "--phone", "--identifier ", "--email"):
        assert flag not in text


def test_record_flag_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[site]\nhome_country = "ID"\n[paths]\nstate_dir = "{state}"\n')
    rc, out, err = cli(capsys, "--config", str(cfg), str(sample(tmp_path)))
    assert rc == 0, err
    assert list(state.iterdir()) == []
    rc, out, err = cli(capsys, "--config", str(cfg), "--record", str(sample(tmp_path)))
    assert rc == 0, err
    logged = [json.loads(x) for x in (state / "events.jsonl").read_text().splitlines()]
    assert any(r["type"] == "alert" and r["severity"] == "critical" for r in logged)
    assert (state / "identity.key").stat().st_size == 32
    assert "alerts recorded (--record)" in out


@pytest.mark.parametrize("top", ["0", "-3"])
def test_top_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str], top: str) -> None:
    rc, out, err = cli(capsys, "--top", top, str(sample(tmp_path)))
    assert rc == 2 and out == "" and "--top" in err
