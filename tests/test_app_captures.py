"""Real app traffic from nDPI's test suite: every TLS server name tshark reads is ours too,
and each gets a company or organisation as its party.

tests/captures/apps/ holds the first flights (TLS ClientHellos, QUIC Initials, DNS) of 48
captures of app and online-service traffic (Android and iOS apps such as Instagram, WhatsApp,
Snapchat, WeChat, KakaoTalk, Alexa, Webex and an iPhone's own services; messengers, meetings,
social networks, streaming and games) from nDPI's test captures (sources, licences and how they
were chosen: tests/README.md). They are also the second input set of `bench.party_coverage`,
the coverage figure of issue 19.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sensor.enrich.party import COMPANY_SOURCES
from sensor.names import redact_name
from tests.pipeline_helpers import run_analyze

TSHARK = shutil.which("tshark")
CAPTURES = sorted(Path(__file__).with_name("captures").joinpath("apps").glob("*.pcap*"))


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
    assert len(CAPTURES) == 48
    flows, _, _, _ = run_analyze(*CAPTURES)
    ours = {f["server_name"] for f in flows if f.get("server_name")}
    theirs = set().union(*map(_tshark_names, CAPTURES))
    assert len(theirs) >= 150
    # ours are written redacted: a label that looks like data ("e0d67c50....baas.nintendo.com")
    # becomes "…", so tshark's names are compared in that form
    assert {redact_name(n) for n in theirs} - ours == set()


def test_named_flows_have_a_company_as_party() -> None:
    """Every name that can have a party (not an address) has one from the vendor map, but
    for four left as bare domains, each for a reason (tests/README.md)."""
    flows, _, _, _ = run_analyze(*CAPTURES)
    named = [f for f in flows if f.get("server_name")]
    assert len(named) >= 400
    bare = sorted(
        f["server_name"]
        for f in named
        if f.get("party_source") is not None and f["party_source"] not in COMPANY_SOURCES
    )
    assert bare == [
        "apptv.cachefly.net",  # a CDN customer: the customer is the party, not the CDN
        "c.aaxads.com",
        "ocs.labgency.ws",
        "www.aaxdetect.com",
    ]
    no_party = {f["server_name"] for f in named if f.get("party_source") is None}
    # addresses written as SNIs: in 1kxun, two Microsoft ones in teams, a Sonos speaker's on
    # the LAN
    assert no_party == {"192.168.115.75", "52.114.250.152", "52.114.250.153", "192.168.1.70"}
