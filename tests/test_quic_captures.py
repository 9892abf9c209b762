"""Real QUIC captures from other projects' test suites: our names equal tshark's.

tests/captures/quic/ holds client first flights recorded by real clients (Chrome, Firefox,
curl, Meta's apps, Google apps on gQUIC, the QUIC interop runner's clients...) and kept in the
test suites of nDPI and Zeek (sources and licences: tests/README.md). Each file was cut down to
its client Initials and gQUIC packets with a version (tshark display filter, see the README), so
they stay small and hold no application data.

For every flow that tshark names (`tls.handshake.extensions_server_name` or `gquic.tag.sni`),
`phonehome analyze` must give the same name, source "quic", and a `quic_version`; no flow may
get a different name, and we name nothing tshark does not. The families are counted, so the
corpus keeps covering what it claims to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline_helpers import run_analyze

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

CAPTURES = sorted(Path(__file__).with_name("captures").joinpath("quic").glob("*.pcap*"))
FIELDS = [
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "udp.srcport",
    "udp.dstport",
    "tls.handshake.extensions_server_name",
    "gquic.tag.sni",
]
Key = frozenset[tuple[str, int]]


def family(version: str) -> str:
    if version.startswith("Q"):
        return "gquic-cleartext" if version <= "Q046" else "gquic-encrypted"
    if version.startswith("T"):
        return "gquic-encrypted"
    v = int(version, 16)
    if v == 0x00000001:
        return "v1"
    if v == 0x6B3343CF:
        return "v2"
    if v >> 12 == 0xFACEB or v == 0xFACEFEED:
        return "mvfst"
    if v & 0x0F0F0F0F == 0x0A0A0A0A:
        return "forcing-negotiation"
    draft = v & 0xFF
    if v >> 8 == 0xFF0000:
        for low, high in ((23, 26), (27, 28), (29, 32), (33, 34)):
            if low <= draft <= high:
                return f"drafts {low}-{high}"
    return "other"


def tshark_names(path: Path, config_dir: Path) -> dict[Key, set[str]]:
    assert TSHARK is not None
    cmd = [TSHARK, "-r", str(path), "-n", "-Y", "udp", "-T", "fields", "-E", "separator=/t"]
    cmd += ["-E", "occurrence=a", "-E", "aggregator=|"]
    for f in FIELDS:
        cmd += ["-e", f]
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(config_dir))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    names: dict[Key, set[str]] = defaultdict(set)
    for line in proc.stdout.splitlines():
        row = {k: v.split("|") for k, v in zip(FIELDS, line.split("\t"), strict=True)}
        src = row["ip.src"][0] or row["ipv6.src"][0]
        dst = row["ip.dst"][0] or row["ipv6.dst"][0]
        key = frozenset(((src, int(row["udp.srcport"][0])), (dst, int(row["udp.dstport"][0]))))
        for f in ("tls.handshake.extensions_server_name", "gquic.tag.sni"):
            names[key].update(v.strip().lower().rstrip(".") for v in row[f] if v)
    return {k: v for k, v in names.items() if v}


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    config_dir = tmp_path_factory.mktemp("wireshark-config")
    same: Counter[str] = Counter()
    problems: list[str] = []
    ours_only: list[str] = []
    unnamed: Counter[str] = Counter()
    # One analyze run over every file (as a user would run it; files merge by time): loading
    # the enrichment data once, not per file. Flows are matched by 5-tuple across the corpus.
    theirs: dict[Key, set[str]] = defaultdict(set)
    where: dict[Key, str] = {}
    for path in CAPTURES:
        for key, names in tshark_names(path, config_dir).items():
            theirs[key] |= names
            where[key] = path.name
    flows, _, stats, err = run_analyze(*CAPTURES)
    assert err == "", err
    unnamed.update(stats["quic_unnamed"])
    ours: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for f in flows:
        ours[frozenset(((f["src_ip"], f["src_port"]), (f["dst_ip"], f["dst_port"])))].append(f)
    for key, names in theirs.items():
        # A 5-tuple reused after an idle timeout is two flow records: the named one counts.
        named = [f for f in ours.get(key, []) if f["name_source"] == "quic"]
        if not named:
            problems.append(f"{where[key]}: {sorted(names)} unnamed by us {ours.get(key)}")
        for flow in named:
            if flow["server_name"] not in names:
                problems.append(f"{where[key]}: tshark {sorted(names)}, ours {flow['server_name']}")
            else:
                same[family(flow["quic_version"])] += 1
    for key, records in ours.items():
        for flow in records:
            if flow["name_source"] == "quic" and key not in theirs:
                ours_only.append(f"{flow['server_name']} {flow['quic_version']}")
    return {"same": same, "problems": problems, "ours_only": ours_only, "unnamed": unnamed}


def test_corpus_is_there() -> None:
    assert len(CAPTURES) >= 40
    assert sum(p.stat().st_size for p in CAPTURES) < 600_000


def test_every_name_tshark_finds_we_find(compared: dict[str, Any]) -> None:
    """Done when >= 99% of the flows tshark names get our same name and none another one; on
    this corpus it is all of them."""
    assert compared["problems"] == []
    assert compared["ours_only"] == []


def test_families_covered(compared: dict[str, Any]) -> None:
    """Real flows named alike per family, three or more each. Drafts 33-34 have none with a
    server name here (both captures are hellos without SNI); the tshark agreement test
    (tests/test_tshark_agreement.py) adds flights built from those drafts."""
    same = compared["same"]
    for fam in ("v1", "v2", "drafts 29-32", "mvfst", "gquic-cleartext", "gquic-encrypted"):
        assert same[fam] >= 3, (fam, same)
    assert same["drafts 27-28"] >= 3, same
    assert same["drafts 23-26"] >= 2, same
    assert same["forcing-negotiation"] >= 3, same
    assert sum(same.values()) >= 90, same


def test_unnamed_flows_have_reasons(compared: dict[str, Any]) -> None:
    """Hellos without SNI (drafts 33/34, DNS over QUIC, a C2 sample) and damaged captures are
    counted by why, not guessed."""
    unnamed = compared["unnamed"]
    assert unnamed["no_sni"] >= 5, unnamed
    assert set(unnamed) <= {
        "no_sni",
        "incomplete",
        "no_client_initial",
        "quic.decrypt_failed",
        "quic.truncated",
    }, unnamed
