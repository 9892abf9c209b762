#!/usr/bin/env bash
# Install the Debian/Ubuntu packages that Phonehome's tests, demo and benchmarks use.
#   packaging/system-deps.sh [test|demo|bench]
# Idempotent: packages already present are not fetched again.
set -euo pipefail

# libsystemd-dev and pkg-config build systemd-python (journal, sd_notify) in the venv.
want=(python3-venv libsystemd-dev pkg-config gcc)
case "${1:-test}" in
  demo) want+=(iproute2 nftables conntrack) ;;
  test) want+=(tshark prometheus prometheus-alertmanager systemd-journal-remote iproute2 nftables conntrack
               python3.11-venv python3.11-dev lintian mmdebstrap systemd-container systemd stress-ng) ;;
  deb) want+=(python3.11-venv python3.11-dev) ;;
  bench) want+=(tshark libndpi-bin iperf3 iproute2 nftables conntrack prometheus) ;;
  *) echo "usage: $0 [test|demo|bench|deb]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3-venv is only needed when the python3 on PATH is Debian's own.
if [ "$(command -v python3)" != "/usr/bin/python3" ]; then
  missing=("${missing[@]/python3-venv/}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer no without a prompt.
echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
