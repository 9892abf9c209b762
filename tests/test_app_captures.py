"""Real app traffic from nDPI's test suite: every TLS server name tshark reads is ours too,
and each gets a company or organisation as its party.

tests/captures/apps/ holds the first flights (TLS ClientHellos, QUIC Initials, DNS) of Android
and iOS apps (Instagram, Facebook, WhatsApp, Snapchat, WeChat, Netflix, Google services, a
video app) from nDPI's test captures (sources and licences: tests/README.md). They are also
the second input set of `bench.party_coverage`, the coverage figure of issue 19.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sensor.enrich.party import COMPANY_SOURCES
from tests.pipeline_helpers import run_analyze

TSHARK = shutil.which("tshark")
CAPTURES = sorted(Path(__file__).with_name("captures").joinpath("apps").glob("*.pcap"))


def _tshark_names(path: Path) -> set[str]:
    assert TSHARK is not None
    out = subprocess.run(
        [
            TSHARK,
            "-r",
            str(path),
            "-Y",
            "tls.handshake.type == 1",
            "-T",
            "fields",
            "-e",
            "tls.handshake.extensions_server_name",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {n for n in out.split() if n}


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_every_server_name_tshark_reads_is_ours() -> None:
    assert len(CAPTURES) == 10
    flows, _, _, _ = run_analyze(*CAPTURES)
    ours = {f["server_name"] for f in flows if f.get("server_name")}
    theirs = set().union(*map(_tshark_names, CAPTURES))
    assert len(theirs) >= 25
    assert theirs - ours == set()


def test_named_flows_have_a_company_as_party() -> None:
    """Every name that can have a party (not an address) has one from the vendor map."""
    flows, _, _, _ = run_analyze(*CAPTURES)
    named = [f for f in flows if f.get("server_name")]
    assert len(named) >= 80
    bare = sorted(
        f["server_name"]
        for f in named
        if f.get("party_source") is not None and f["party_source"] not in COMPANY_SOURCES
    )
    assert bare == []
    no_party = {f["server_name"] for f in named if f.get("party_source") is None}
    assert no_party == {"192.168.115.75"}  # a Host header holding an address
