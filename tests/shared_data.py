"""The providers' real cloud-range files (mid-2025), kept in ../shared beside the repository and
never committed: where they are and what each is called. Tests that need one skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cloud-ranges"

CLOUD_FILES = {
    "aws": "aws-ip-ranges.json",
    "google": "google-cloud-ip-ranges.json",
    "azure": "microsoft-azure-ip-ranges.json",
    "oracle": "oracle-cloud-ip-ranges.json",
    "cloudflare-v4": "cloudflare-v4-ip-ranges.txt",
    "cloudflare-v6": "cloudflare-v6-ip-ranges.txt",
    "fastly": "fastly-ip-ranges.json",
    "digitalocean": "digitalocean.csv",
    "linode": "linode.txt",
}
"""Our source name -> its file in SHARED."""


def shared(file_name: str) -> bytes:
    """A file of SHARED; the test is skipped where it is absent."""
    path = SHARED / file_name
    if not path.is_file():
        pytest.skip(f"shared data file {path} not present")
    return path.read_bytes()
