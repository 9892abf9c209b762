"""`phonehome update-data` end to end against an HTTP server on 127.0.0.1 serving the
providers' real files (and broken ones), `--from DIR`, atomic writes and the manifest."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from sensor.config import Config, parse_config
from sensor.enrich.cloud import CloudRanges
from sensor.update import datafiles
from sensor.update.datafiles import (
    ALL_SOURCES,
    DATA_SUBDIR,
    LOCK_FILE,
    MANIFEST,
    SourceResult,
    UpdateError,
    add_arguments,
    find_service_tags_link,
    format_result,
    main,
    read_manifest,
    update,
)
from sensor.validate import validate
from tests.enrich.test_doh import SAMPLE_MD
from tests.relay_fixtures import CONSENSUS, ONIONOO, PROTONVPN
from tests.shared_data import CLOUD_FILES, SHARED, shared
from tests.update.loopback import LoopbackServer, serving

# our source name -> the shared folder's file name, and the name the provider publishes it as
PUBLISHED = {
    "aws": "ip-ranges.json",
    "google": "cloud.json",
    "azure": "ServiceTags_Public_20250721.json",
    "oracle": "public_ip_ranges.json",
    "cloudflare-v4": "ips-v4",
    "cloudflare-v6": "ips-v6",
    "fastly": "public-ip-list",
    "digitalocean": "google.csv",
    "linode": "linode-geofeed.csv",
}
SHARED_FILES = {name: (CLOUD_FILES[name], published) for name, published in PUBLISHED.items()}

# sources without a shared file: small fixtures
VULTR = json.dumps(
    {"subnets": [{"ip_prefix": "45.32.0.0/20", "alpha2code": "US", "region": "US-NJ"}]}
).encode()
HUAWEI = b"# geofeed\n1.92.0.0/16,CN,CN-BJ,Beijing,\n94.74.64.0/18,SG,,Singapore,\n"
SMALL_AWS = json.dumps(
    {"prefixes": [{"ip_prefix": "52.74.0.0/16", "region": "ap-southeast-1", "service": "EC2"}]}
).encode()
SMALL_GOOGLE = json.dumps(
    {"prefixes": [{"ipv4Prefix": "34.87.0.0/17", "scope": "asia-southeast1"}]}
).encode()
SMALL_LIST = b"173.245.48.0/20\n103.21.244.0/22\n"
# iptoasn's ip2asn-combined.tsv layout, gzipped as published (made-up rows in real ranges)
IP2ASN = gzip.compress(
    b"1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n"
    b"1.0.1.0\t1.0.3.255\t0\tNone\tNot routed\n"
    b"47.74.0.0\t47.74.255.255\t45102\tCN\tALIBABA-CN-NET Alibaba US Technology Co., Ltd.\n"
    b"2400:cb00::\t2400:cb00:ffff:ffff:ffff:ffff:ffff:ffff\t13335\tUS\tCLOUDFLARENET\n"
)
# Exodus Privacy's trackers export layout
EXODUS = json.dumps(
    {
        "trackers": {
            "1": {"name": "Teemo", "network_signature": "databerries\\.com", "id": 1},
            "2": {"name": "Adjust", "network_signature": "adjust\\.com|adj\\.st", "id": 2},
        }
    }
).encode()


def shared_bytes(name: str) -> bytes:
    return shared(SHARED_FILES[name][0])


# --- a loopback HTTP server -------------------------------------------------------------------


@dataclass
class Route:
    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    length: int | bool | None = True
    """True: the real Content-Length; an int: that (a lie); None: no header."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            route = Route(b"not found", status=404)
        self.send_response(route.status)
        for key, value in route.headers.items():
            self.send_header(key, value)
        if route.length is True:
            self.send_header("Content-Length", str(len(route.body)))
        elif isinstance(route.length, int):
            self.send_header("Content-Length", str(route.length))
        self.end_headers()
        # the client may give up early (size limits): expected in some tests
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(route.body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(LoopbackServer):
    routes: dict[str, Route]

    def __init__(self) -> None:
        super().__init__(_Handler)

    def serve(self, path: str, body: bytes, **kwargs: Any) -> str:
        self.routes[path] = Route(body, **kwargs)
        return self.url(path)


@pytest.fixture
def server() -> Iterator[_Server]:
    with serving(_Server()) as srv:
        yield srv


def loopback_urls(srv: _Server) -> dict[str, str]:
    return {s.name: srv.url(f"/{s.name}") for s in ALL_SOURCES}


def serve_everything(srv: _Server) -> dict[str, str]:
    """Every source on the server; Azure behind a download page, as Microsoft does it."""
    urls = loopback_urls(srv)
    for name in SHARED_FILES:
        if name != "azure":
            srv.serve(f"/{name}", shared_bytes(name))
    srv.serve("/vultr", VULTR)
    srv.serve("/huawei", HUAWEI)
    srv.serve("/asn", IP2ASN)
    srv.serve("/owners", EXODUS)
    srv.serve("/doh", SAMPLE_MD)
    srv.serve("/tor", ONIONOO)
    srv.serve("/vpn-protonvpn", PROTONVPN)
    srv.serve("/dl/ServiceTags_Public_20250721.json", shared_bytes("azure"))
    escaped = f"{srv.base}/dl/ServiceTags_Public_20250721.json".replace("/", "\\/")
    page = (
        "<html><a href='/dl/ServiceTags_Public_20250714.json'>last week</a>"
        f'<script>{{"url":"{escaped}"}}</script>'
        "<a href='https://elsewhere.example/ServiceTags_Public_20991231.json'>not ours</a>"
        "</html>"
    )
    urls["azure"] = srv.serve("/azure-page", page.encode(), headers={"Content-Type": "text/html"})
    return urls


def by_name(results: list[SourceResult]) -> dict[str, SourceResult]:
    return {r.name: r for r in results}


# --- end to end -------------------------------------------------------------------------------


def test_update_everything(server: _Server, tmp_path: Path) -> None:
    urls = serve_everything(server)
    results = update(tmp_path, urls, timeout=10)
    assert [r.name for r in results] == [s.name for s in ALL_SOURCES]
    assert {r.name: r.status for r in results} == {s.name: "updated" for s in ALL_SOURCES}
    assert (by_name(results)["asn"].records, by_name(results)["owners"].records) == (3, 3)
    assert by_name(results)["doh"].records == 3
    assert "/dl/ServiceTags_Public_20250714.json" not in server.hits  # the newest link won

    data = tmp_path / DATA_SUBDIR
    manifest = json.loads((data / MANIFEST).read_text())
    assert manifest["version"] == 1
    for src in ALL_SOURCES:
        path = data / src.filename
        entry = manifest["sources"][src.name]
        content = path.read_bytes()
        assert entry["file"] == src.filename
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
        assert entry["size"] == len(content)
        assert entry["records"] == len(src.parse(content)) > 0
        assert entry["fetched"].endswith("Z")
        assert "last_error" not in entry
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert manifest["sources"]["azure"]["origin"].endswith("/dl/ServiceTags_Public_20250721.json")
    assert manifest["sources"]["aws"]["origin"] == urls["aws"]
    assert sorted(p.name for p in data.iterdir() if p.name.endswith(".tmp")) == []

    ranges = CloudRanges.load_dir(data)
    assert ranges.errors == {}
    info = ranges.lookup("52.74.0.1")
    assert info is not None and (info.provider, info.country) == ("aws", "SG")
    info = ranges.lookup("1.92.1.1")
    assert info is not None and (info.provider, info.city) == ("huawei", "Beijing")

    again = update(tmp_path, urls, timeout=10)
    assert {r.status for r in again} == {"unchanged"}


def test_failures_keep_the_last_good_copy(server: _Server, tmp_path: Path) -> None:
    urls = loopback_urls(server)
    names = ["aws", "google", "cloudflare-v4", "fastly"]
    server.serve("/aws", SMALL_AWS)
    server.serve("/google", SMALL_GOOGLE)
    server.serve("/cloudflare-v4", SMALL_LIST)
    server.serve("/fastly", b'{"addresses": ["151.101.0.0/16"]}')
    first = by_name(update(tmp_path, urls, sources=names))
    assert {r.status for r in first.values()} == {"updated"}
    data = tmp_path / DATA_SUBDIR
    before = {n: (data / f).read_bytes() for n, f in
              [("aws", "ip-ranges.json"), ("google", "cloud.json"), ("cloudflare-v4", "ips-v4"),
               ("fastly", "public-ip-list")]}  # fmt: skip
    old_manifest = read_manifest(data)

    del server.routes["/aws"]  # 404
    server.serve("/google", b"<html><body>Sign in to the hotel Wi-Fi</body></html>")  # wrong
    server.serve("/cloudflare-v4", SMALL_LIST, length=len(SMALL_LIST) + 100)  # cut short
    server.serve("/fastly", b'{"addresses": ["151.101.0.0/16"')  # truncated file, honest length
    second = by_name(update(tmp_path, urls, sources=names))
    assert {r.status for r in second.values()} == {"failed"}
    assert "HTTP 404" in (second["aws"].error or "")
    assert "not a valid cloud.json" in (second["google"].error or "")
    assert "truncated" in (second["cloudflare-v4"].error or "")
    assert "not a valid public-ip-list" in (second["fastly"].error or "")
    for name, result in second.items():
        assert result.kept_previous and result.records == first[name].records
        assert not result.ok
    assert {n: (data / f).read_bytes() for n, f in
            [("aws", "ip-ranges.json"), ("google", "cloud.json"), ("cloudflare-v4", "ips-v4"),
             ("fastly", "public-ip-list")]} == before  # fmt: skip
    manifest = read_manifest(data)
    for name in names:
        assert manifest[name]["sha256"] == old_manifest[name]["sha256"]
        assert manifest[name]["fetched"] == old_manifest[name]["fetched"]
        assert manifest[name]["last_error"] == second[name].error
        assert manifest[name]["last_origin"] == urls[name]

    # fixed upstream: the errors go away
    server.serve("/aws", SMALL_AWS)
    third = by_name(update(tmp_path, urls, sources=["aws"]))
    assert third["aws"].status == "unchanged"
    assert "last_error" not in read_manifest(data)["aws"]


def test_failed_first_download_has_no_copy(server: _Server, tmp_path: Path) -> None:
    (result,) = update(tmp_path, loopback_urls(server), sources=["oracle"])
    assert result.status == "failed" and not result.kept_previous and result.records is None
    assert "no copy" in format_result(result)
    assert not (tmp_path / DATA_SUBDIR / "public_ip_ranges.json").exists()
    assert read_manifest(tmp_path / DATA_SUBDIR)["oracle"]["last_error"] == result.error


def test_oversize_is_rejected(server: _Server, tmp_path: Path) -> None:
    body = shared_bytes("aws")
    urls = loopback_urls(server)
    server.serve("/aws", body)  # announced by Content-Length
    server.serve("/google", body, length=None)  # only noticed while reading
    results = by_name(update(tmp_path, urls, sources=["aws", "google"], max_bytes=100_000))
    assert "larger than the limit" in (results["aws"].error or "")
    assert "larger than the limit" in (results["google"].error or "")
    assert not (tmp_path / DATA_SUBDIR / "ip-ranges.json").exists()
    assert not (tmp_path / DATA_SUBDIR / "cloud.json").exists()


def test_gzip_encoding_and_gzip_bomb(server: _Server, tmp_path: Path) -> None:
    urls = loopback_urls(server)
    server.serve("/aws", gzip.compress(SMALL_AWS), headers={"Content-Encoding": "gzip"})
    bomb = gzip.compress(b'{"prefixes": [' + b" " * 5_000_000 + b"]}")
    server.serve("/google", bomb, headers={"Content-Encoding": "gzip"})
    results = by_name(update(tmp_path, urls, sources=["aws", "google"], max_bytes=1_000_000))
    assert results["aws"].status == "updated"
    assert (tmp_path / DATA_SUBDIR / "ip-ranges.json").read_bytes() == SMALL_AWS
    assert "decompressed" in (results["google"].error or "")


def test_hostile_json_is_rejected(server: _Server, tmp_path: Path) -> None:
    urls = loopback_urls(server)
    server.serve("/aws", b"[" * 200_000 + b"]" * 200_000)
    server.serve("/google", b'{"prefixes": [{"ipv4Prefix": "34.87.0.0/17", "scope": 1}]}')
    results = update(tmp_path, urls, sources=["aws", "google"])
    assert [r.status for r in results] == ["failed", "failed"]


def test_shrunken_file_needs_force(server: _Server, tmp_path: Path) -> None:
    urls = loopback_urls(server)
    server.serve("/linode", shared_bytes("linode"))
    assert update(tmp_path, urls, sources=["linode"])[0].status == "updated"
    server.serve("/linode", b"172.239.30.0/24,FR,FR-IDF,Paris,\n")
    (shrunk,) = update(tmp_path, urls, sources=["linode"])
    assert shrunk.status == "failed" and "looks truncated" in (shrunk.error or "")
    (forced,) = update(tmp_path, urls, sources=["linode"], allow_shrink=True)
    assert forced.status == "updated" and forced.records == 1


def test_redirects(server: _Server, tmp_path: Path) -> None:
    server.serve("/moved", b"", status=302, headers={"Location": server.url("/real")})
    server.serve("/real", SMALL_AWS)
    server.serve("/sneaky", b"", status=302, headers={"Location": "ftp://127.0.0.1/x.json"})
    urls = {"aws": server.url("/moved"), "google": server.url("/sneaky")}
    results = by_name(update(tmp_path, urls, sources=["aws", "google"]))
    assert results["aws"].status == "updated"
    assert "non-HTTP" in (results["google"].error or "")


def test_bad_urls(tmp_path: Path) -> None:
    urls = {"aws": "file:///etc/passwd", "google": "http://127.0.0.1:9/closed"}
    results = by_name(update(tmp_path, urls, sources=["aws", "google"], timeout=10))
    assert "unsupported URL scheme" in (results["aws"].error or "")
    assert "cannot fetch" in (results["google"].error or "")


def test_unknown_source_names(tmp_path: Path) -> None:
    with pytest.raises(UpdateError, match="unknown source 'nonesuch'"):
        update(tmp_path, {"nonesuch": "http://127.0.0.1:9/"})
    with pytest.raises(UpdateError, match="unknown source"):
        update(tmp_path, sources=["nonesuch"])


def test_progress_reports_bytes(server: _Server, tmp_path: Path) -> None:
    body = shared_bytes("oracle")
    urls = loopback_urls(server)
    server.serve("/oracle", body)
    calls: list[tuple[str, int, int | None]] = []
    update(tmp_path, urls, sources=["oracle"], progress=lambda *a: calls.append(a))
    assert calls and calls[-1] == ("oracle", len(body), len(body))
    assert all(done <= len(body) for _, done, _ in calls)


def test_one_update_at_a_time(tmp_path: Path) -> None:
    data = tmp_path / DATA_SUBDIR
    data.mkdir()
    with open(data / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(UpdateError, match="another update-data"):
            update(tmp_path, sources=["aws"])


def test_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UpdateError, match="cannot create"):
        update(blocker / "state", sources=["aws"])


# --- atomic replacement -------------------------------------------------------------------------


def test_failed_replace_leaves_old_file_and_no_debris(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = loopback_urls(server)
    server.serve("/aws", SMALL_AWS)
    update(tmp_path, urls, sources=["aws"])
    target = tmp_path / DATA_SUBDIR / "ip-ranges.json"
    new = SMALL_AWS.replace(b"52.74.0.0/16", b"52.75.0.0/16")
    server.serve("/aws", new)

    real_replace = os.replace

    def broken_replace(src: str, dst: str) -> None:
        if str(dst).endswith("ip-ranges.json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", broken_replace)
    (result,) = update(tmp_path, urls, sources=["aws"])
    monkeypatch.undo()
    assert result.status == "failed" and "No space left" in (result.error or "")
    assert result.kept_previous
    assert target.read_bytes() == SMALL_AWS
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")] == []
    manifest_text = (tmp_path / DATA_SUBDIR / MANIFEST).read_text()
    assert json.loads(manifest_text)["sources"]["aws"]["sha256"] == (
        hashlib.sha256(SMALL_AWS).hexdigest()
    )


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content that is longer")
    datafiles.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_corrupt_manifest_is_rebuilt(server: _Server, tmp_path: Path) -> None:
    data = tmp_path / DATA_SUBDIR
    data.mkdir()
    (data / MANIFEST).write_text("{not json")
    server.serve("/aws", SMALL_AWS)
    (result,) = update(tmp_path, loopback_urls(server), sources=["aws"])
    assert result.status == "updated"
    assert read_manifest(data)["aws"]["records"] == 1


# --- Azure's download page ----------------------------------------------------------------------


def test_find_service_tags_link() -> None:
    page_url = "https://www.microsoft.com/en-us/download/details.aspx?id=56519"
    page = (
        b'<a href="https://download.microsoft.com/download/7/1/D/ID/ServiceTags_Public_20250714'
        b'.json">x</a>{"url":"https:\\/\\/download.microsoft.com\\/download\\/7\\/1\\/D\\/ID\\/'
        b'ServiceTags_Public_20250721.json"}'
        b'<a href="https://evil.example/ServiceTags_Public_20991231.json">y</a>'
    )
    assert find_service_tags_link(page, page_url) == (
        "https://download.microsoft.com/download/7/1/D/ID/ServiceTags_Public_20250721.json"
    )
    assert find_service_tags_link(b"<html>moved</html>", page_url) is None
    assert (
        find_service_tags_link(b"<a href='files/ServiceTags_Public_20250101.json'>", page_url)
        == "https://www.microsoft.com/en-us/download/files/ServiceTags_Public_20250101.json"
    )


def test_azure_direct_json_and_page_without_link(server: _Server, tmp_path: Path) -> None:
    tiny = json.dumps(
        {"values": [{"name": "AzureCloud.eastus",
                     "properties": {"region": "eastus", "addressPrefixes": ["20.42.0.0/17"]}}]}
    ).encode()  # fmt: skip
    (direct,) = update(tmp_path, {"azure": server.serve("/tags.json", tiny)}, sources=["azure"])
    assert direct.status == "updated" and direct.origin == server.url("/tags.json")
    page = server.serve("/page", b"<html>Microsoft moved this page</html>")
    (linkless,) = update(tmp_path, {"azure": page}, sources=["azure"])
    assert linkless.status == "failed" and "neither Service Tags JSON" in (linkless.error or "")
    assert linkless.kept_previous


# --- --from DIR ---------------------------------------------------------------------------------


def test_import_from_dir_by_content_whatever_the_names(tmp_path: Path) -> None:
    """Files as mirrors and aggregators name them (the shared folder's own names, and worse):
    every source is recognised by its content; a stray file is ignored."""
    src = tmp_path / "mirror"
    src.mkdir()
    for name, (shared_name, _) in SHARED_FILES.items():
        path = SHARED / shared_name
        if not path.is_file():
            pytest.skip(f"shared data file {path} not present")
        shutil.copyfile(path, src / f"{name}-download.dat")
    (src / "vultr.json").write_bytes(VULTR)
    (src / "feed (1).csv").write_bytes(HUAWEI)
    (src / "notes.txt").write_text("not a range file\n")
    (src / "other-geofeed.csv").write_text("192.0.2.0/24,NL,,,\n")  # nobody's blocks
    results = by_name(update(tmp_path / "state", from_dir=src))
    for name in (*SHARED_FILES, "vultr", "huawei"):
        assert results[name].status == "updated", results[name]
    assert results["linode"].origin == str((src / "linode-download.dat").resolve())
    assert results["huawei"].origin == str((src / "feed (1).csv").resolve())
    assert results["azure"].records is not None and results["azure"].records > 50_000


def test_identify_by_content() -> None:
    from sensor.enrich.cloud import identify

    for name, (shared_name, _) in SHARED_FILES.items():
        path = SHARED / shared_name
        if not path.is_file():
            pytest.skip(f"shared data file {path} not present")
        assert identify(path.read_bytes()) == name, shared_name
    assert identify(VULTR) == "vultr"
    assert identify(HUAWEI) == "huawei"
    assert identify(SMALL_AWS) == "aws" and identify(SMALL_GOOGLE) == "google"
    for junk in (b"", b"\0\1\2", b"{}", b"[1]", b"hello\n", b"192.0.2.0/24,NL\n", b"{nope"):
        assert identify(junk) is None, junk
    assert identify(b"192.0.2.0/24\n2001:db8::/32\n") is None  # mixed: neither list


def test_import_from_dir(tmp_path: Path) -> None:
    src = tmp_path / "usb"
    src.mkdir()
    for shared_name, published in SHARED_FILES.values():
        path = SHARED / shared_name
        if not path.is_file():
            pytest.skip(f"shared data file {path} not present")
        shutil.copyfile(path, src / published)
    # an older Azure file beside the newer one: the newest date wins
    (src / "ServiceTags_Public_20250101.json").write_bytes(
        b'{"values": [{"name": "X", "properties": {"addressPrefixes": ["20.0.0.0/8"]}}]}'
    )
    state = tmp_path / "state"
    results = by_name(update(state, from_dir=src))
    for name in SHARED_FILES:
        assert results[name].status == "updated", results[name]
        assert results[name].origin == str((src / SHARED_FILES[name][1]).resolve())
    assert results["azure"].records is not None and results["azure"].records > 50_000
    assert results["vultr"].status == "skipped" and results["vultr"].ok
    assert results["huawei"].status == "skipped"
    manifest = read_manifest(state / DATA_SUBDIR)
    assert set(manifest) == set(SHARED_FILES)
    assert (state / DATA_SUBDIR / "ServiceTags_Public.json").read_bytes() == (
        (SHARED / SHARED_FILES["azure"][0]).read_bytes()
    )


def test_import_from_dir_rejects_bad_and_big_files(tmp_path: Path) -> None:
    src = tmp_path / "usb"
    src.mkdir()
    (src / "ip-ranges.json").write_bytes(SMALL_AWS)
    (src / "cloud.json").write_bytes(b"garbage")
    (src / "ips-v4").write_bytes(SMALL_LIST * 1000)
    results = by_name(update(tmp_path / "state", from_dir=src, max_bytes=10_000))
    assert results["aws"].status == "updated"
    assert results["google"].status == "failed"
    assert "larger than the limit" in (results["cloudflare-v4"].error or "")


def test_import_from_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(UpdateError, match="not a directory"):
        update(tmp_path, from_dir=tmp_path / "nope")


# --- the command ------------------------------------------------------------------------------


def command(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="phonehome update-data")
    add_arguments(parser)
    return parser.parse_args(args)


def config(state: Path, urls: dict[str, str], *, geo: bool = False) -> Config:
    doc: dict[str, Any] = {"paths": {"state_dir": str(state)}, "update": {"urls": urls}}
    if not geo:  # skip preparing the embedded geo data (tested once below)
        doc["geo"] = {"country_db": "/nonexistent/c.mmdb", "asn_db": "/nonexistent/a.mmdb"}
    cfg = parse_config(doc)
    validate(cfg)
    return cfg


def test_main_all_ok(server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    urls = loopback_urls(server)
    server.serve("/aws", SMALL_AWS)
    rc = main(command(["--only", "aws"]), config(tmp_path, urls))
    out, err = capsys.readouterr()
    assert rc == 0
    assert out.splitlines()[0].split()[:3] == ["aws", "updated", "1"]
    assert err == ""  # stderr is not a terminal here: no progress output


def test_main_reports_failure_with_exit_1(
    server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = loopback_urls(server)
    server.serve("/aws", SMALL_AWS)
    rc = main(command(["--only", "aws", "--only", "google"]), config(tmp_path, urls))
    out, _ = capsys.readouterr()
    assert rc == 1
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "updated" in lines["aws"]
    assert "FAILED" in lines["google"] and "HTTP 404" in lines["google"]
    assert (tmp_path / DATA_SUBDIR / "ip-ranges.json").is_file()  # the good one is written


def test_main_nothing_attempted_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(command(["--from", str(tmp_path / "absent")]), config(tmp_path / "state", {}))
    assert rc == 2
    assert "not a directory" in capsys.readouterr().err


def test_config_rejects_unknown_sources_and_bad_urls() -> None:
    from sensor.config import ConfigError

    with pytest.raises(ConfigError, match=r"urls\.nonesuch: unknown source \(known: asn, aws"):
        config(Path("/x"), {"nonesuch": "http://127.0.0.1:9/"})
    for url in ("file:///etc/passwd", "ftp://example.com/x", "http://", "http://[::1"):
        with pytest.raises(ConfigError, match=r"update\.urls\.aws: must be an http"):
            config(Path("/x"), {"aws": url})


def test_main_from_dir_nothing_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(command(["--from", str(empty)]), config(tmp_path / "state", {}))
    out, err = capsys.readouterr()
    assert rc == 1
    assert "no source files found" in err
    assert all("skipped" in line for line in out.splitlines())


def test_main_force_flag(server: _Server, tmp_path: Path) -> None:
    urls = loopback_urls(server)
    server.serve("/cloudflare-v4", SMALL_LIST * 10)
    cfg = config(tmp_path, urls)
    assert main(command(["--only", "cloudflare-v4"]), cfg) == 0
    server.serve("/cloudflare-v4", b"173.245.48.0/20\n")
    assert main(command(["--only", "cloudflare-v4"]), cfg) == 1
    assert main(command(["--only", "cloudflare-v4", "--force"]), cfg) == 0


def test_main_prepares_geo_cache(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from sensor.enrich import geo
    from tests.enrich.test_geo import _fake_embedded

    fake = _fake_embedded(tmp_path / "fake.dat.gz")
    monkeypatch.setattr(geo, "embedded_data_path", lambda: fake)
    server.serve("/aws", SMALL_AWS)
    rc = main(command(["--only", "aws"]), config(tmp_path, loopback_urls(server), geo=True))
    assert rc == 0
    assert (geo.geo_cache_dir(tmp_path) / geo.CACHE_FILE).is_file()
    assert "FAKE-1" in capsys.readouterr().out


def test_add_arguments() -> None:
    args = command(["--from", "/media/usb", "--only", "aws", "--force"])
    assert args.from_dir == Path("/media/usb") and args.only == ["aws"] and args.force
    with pytest.raises(SystemExit):
        command(["--only", "nonesuch"])


def test_asn_and_owner_datasets_keep_the_last_good_copy(server: _Server, tmp_path: Path) -> None:
    urls = loopback_urls(server)
    server.serve("/asn", IP2ASN)
    server.serve("/owners", EXODUS)
    first = by_name(update(tmp_path, urls, sources=["asn", "owners"]))
    assert {r.status for r in first.values()} == {"updated"}
    data = tmp_path / DATA_SUBDIR
    before = {p.name: p.read_bytes() for p in (data / "ip-to-asn", data / "domain-owners.json")}

    server.serve("/asn", b"1.0.0.0\t1.0.0.255\tAS13335\tUS\tX\n")  # not an AS number
    server.serve("/owners", b'{"trackers": {}}')  # valid JSON, no names: rejected
    second = by_name(update(tmp_path, urls, sources=["asn", "owners"]))
    assert "not a valid ip-to-asn: line 1: not an AS number" in (second["asn"].error or "")
    assert "no host names" in (second["owners"].error or "")
    assert all(r.kept_previous and r.status == "failed" for r in second.values())
    assert {p.name: p.read_bytes() for p in (data / "ip-to-asn", data / "domain-owners.json")} == (
        before
    )
    assert "names" in format_result(first["owners"])


def test_import_asn_and_owner_datasets_under_their_published_names(tmp_path: Path) -> None:
    src = tmp_path / "usb"
    src.mkdir()
    (src / "ip2asn-combined.tsv.gz").write_bytes(IP2ASN)
    (src / "trackers.json").write_bytes(EXODUS)
    results = by_name(update(tmp_path / "state", from_dir=src, sources=["asn", "owners"]))
    assert results["asn"].status == results["owners"].status == "updated"
    assert (tmp_path / "state" / DATA_SUBDIR / "ip-to-asn").read_bytes() == IP2ASN


# --- relay lists ------------------------------------------------------------------------------


def test_relay_lists_fetched_validated_and_kept(server: _Server, tmp_path: Path) -> None:
    from sensor.enrich.relays import TOR_FILE, RelayMatcher

    urls = loopback_urls(server)
    server.serve("/tor", ONIONOO)
    server.serve("/vpn-protonvpn", PROTONVPN)
    first = by_name(update(tmp_path, urls, sources=["tor", "vpn-protonvpn"], timeout=10))
    assert (first["tor"].status, first["tor"].records) == ("updated", 3)
    assert (first["vpn-protonvpn"].status, first["vpn-protonvpn"].records) == ("updated", 3)
    assert "ORPorts" in format_result(first["tor"])
    # Onionoo answering with an error page, then an empty consensus: the last good copy stays.
    server.serve("/tor", b"<html>503</html>", status=200)
    server.serve("/vpn-protonvpn", b"# moved\n")
    second = by_name(update(tmp_path, urls, sources=["tor", "vpn-protonvpn"], timeout=10))
    assert second["tor"].status == second["vpn-protonvpn"].status == "failed"
    assert second["tor"].kept_previous and "not a valid" in (second["tor"].error or "")
    assert (tmp_path / DATA_SUBDIR / TOR_FILE).read_bytes() == ONIONOO
    matcher, errors = RelayMatcher.load(tmp_path / DATA_SUBDIR)
    assert errors == [] and len(matcher.tor) == 3 and "protonvpn" in matcher.vpns
    # A directory authority's consensus document is accepted as well.
    server.serve("/tor", CONSENSUS)
    (third,) = update(tmp_path, urls, sources=["tor"], timeout=10)
    assert (third.status, third.records) == ("updated", 3)


def test_relay_lists_imported_by_name(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "details.json").write_bytes(ONIONOO)
    (inbox / "protonvpn_entry_ips.txt").write_bytes(PROTONVPN)
    got = by_name(update(tmp_path / "state", from_dir=inbox, sources=["tor", "vpn-protonvpn"]))
    assert got["tor"].status == got["vpn-protonvpn"].status == "updated"
