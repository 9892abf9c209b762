"""sensor.kernel.nftables: the one `nft` runner (its errors), and the capture rules' table script.
The rules themselves and their loading are tested on the lab gateway (tests/sources/test_live.py,
tests/lab/test_firewall.py); the policy table's in tests/lab/test_policy.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sensor.kernel.nftables import NftError, drop_table, load_script, run_nft


def fake_nft(tmp_path: Path, body: str) -> str:
    path = tmp_path / "nft"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_run_nft_hands_back_the_exit_status(tmp_path: Path) -> None:
    nft = fake_nft(tmp_path, 'cat; echo "args: $*" >&2; exit 3')
    proc = run_nft(["list", "tables"], stdin="in", nft=nft)
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == 3 and proc.stdout == "in" and "args: list tables" in proc.stderr


def test_an_nft_that_cannot_run_is_an_nft_error(tmp_path: Path) -> None:
    with pytest.raises(NftError, match="no-such-nft"):
        run_nft(["list", "tables"], nft=str(tmp_path / "no-such-nft"))
    slow = fake_nft(tmp_path, "sleep 10")
    with pytest.raises(NftError, match="timed out"):
        run_nft([], nft=slow, timeout=0.2)


def test_a_refused_script_names_nfts_last_words(tmp_path: Path) -> None:
    nft = fake_nft(tmp_path, 'cat >/dev/null; printf "one\\ntwo\\nthree\\nfour\\n" >&2; exit 1')
    with pytest.raises(NftError) as err:
        load_script("table inet x\n", nft=nft)
    assert str(err.value) == "nft failed: two / three / four"
    silent = fake_nft(tmp_path, "exit 2")
    with pytest.raises(NftError, match="exit status 2"):
        load_script("", nft=silent)
    ok = fake_nft(tmp_path, 'read line; echo "loaded $line $*"')
    assert load_script("table inet x\n", nft=ok) == "loaded table inet x -f -\n"


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
def test_drop_table_is_valid_nft_syntax() -> None:
    proc = subprocess.run(
        ["nft", "-c", "-f", "-"],
        input=drop_table("phonehome_check"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 or "Operation not permitted" in proc.stderr, proc.stderr
