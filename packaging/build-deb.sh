#!/usr/bin/env bash
# Build the Phonehome Debian package (Debian 12, this machine's architecture) with dpkg-deb.
#   packaging/build-deb.sh [OUTDIR]        (default: dist/; `make deb`)
#
# The package carries a private Python environment in $PHONEHOME_PREFIX (/opt/phonehome) with
# the pinned dependencies of requirements.txt, on Debian's own python3.11: bookworm lacks
# publicsuffixlist, geoip2fast and ahocorasick-rs, and its cryptography (38), netaddr (0.8),
# phonenumbers (8.12) and pyroute2 (0.7) are older than the versions the code is tested with.
# The environment is built in the staging tree and moved: nothing in it names the staging
# path (checked below), the interpreter is /usr/bin/python3.11, bytecode is made by postinst.
#
# Needs: python3.11 with python3.11-venv and python3.11-dev, gcc, pkg-config, libsystemd-dev
# (systemd-python is built from source), dpkg-deb, and PyPI (pip's cache is used).
# Environment: PHONEHOME_PREFIX, PHONEHOME_PYTHON (/usr/bin/python3.11), SOURCE_DATE_EPOCH,
# DEB_MAINTAINER.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

out=${1:-dist}
prefix=${PHONEHOME_PREFIX:-/opt/phonehome}
python=${PHONEHOME_PYTHON:-/usr/bin/python3.11}
maintainer=${DEB_MAINTAINER:-Phonehome developers <phonehome@example.org>}
build=$repo/build/deb
stage=$build/root
venv=$stage$prefix

die() { echo "build-deb: $*" >&2; exit 1; }
log() { echo "build-deb: $*" >&2; }

command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
[ -x "$python" ] || die "$python not found (apt-get install python3.11 python3.11-venv)"
# The package depends on Debian's interpreter; a pyenv or /usr/local one would not be there.
"$python" -c 'import sys; sys.exit(sys.base_prefix != "/usr")' ||
	die "$python is not Debian's (sys.base_prefix is not /usr)"
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' sensor/__init__.py)
[ -n "$version" ] || die "no __version__ in sensor/__init__.py"
arch=$(dpkg --print-architecture)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# A cache of its own: pip's shared one may hold wheels built by another interpreter (a pyenv
# systemd-python carries that interpreter's RUNPATH and headers).
export PIP_CACHE_DIR=$repo/build/pip-cache-deb
started=$(date +%s)

rm -rf "$build"
mkdir -p "$build/src" "$stage" "$out"

# --- the sources: what is in the working tree (tracked and new files, not ignored ones) -----
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	# (-c lists tracked files deleted in the tree too: only existing ones are copied)
	git ls-files -z -co --exclude-standard -- sensor pyproject.toml README.md |
		while IFS= read -r -d '' f; do [ ! -f "$f" ] || printf '%s\0' "$f"; done |
		tar --null -T - -cf - | tar -xf - -C "$build/src"
else
	tar -cf - --exclude=__pycache__ sensor pyproject.toml README.md | tar -xf - -C "$build/src"
fi

# --- the private environment ------------------------------------------------------------------
log "python environment in $prefix ($("$python" -V))"
"$python" -m venv "$venv"
vpy=$venv/bin/python3
# requirements.txt, plus packaging/requirements-deb.txt for what the code imports but
# requirements.txt does not pin yet (a name pinned in both: requirements.txt wins).
reqs=$build/requirements.txt
cp requirements.txt "$reqs"
pinned=$(sed -n 's/^\([A-Za-z0-9_.-]*\)[=<>!~ ].*/\1/p' requirements.txt |
	tr 'A-Z_.' 'a-z--' | sort -u)
while read -r line; do
	name=$(printf '%s\n' "$line" | sed -n 's/^\([A-Za-z0-9_.-]*\)[=<>!~ ].*/\1/p' | tr 'A-Z_.' 'a-z--')
	[ -n "$name" ] || continue
	if printf '%s\n' "$pinned" | grep -qx "$name"; then
		log "requirements-deb.txt: $name is pinned in requirements.txt now; drop it here"
	else
		printf '%s\n' "$line" >>"$reqs"
	fi
done < <(sed 's/#.*//' "$here/requirements-deb.txt")
pip=("$vpy" -m pip --quiet --no-input)
# PEP 517 builds for the projects without wheels (systemd-python, geoip2fast).
"${pip[@]}" install --no-compile --prefer-binary --use-pep517 -r "$reqs"
"${pip[@]}" install --no-compile --no-deps --use-pep517 "$build/src"
"${pip[@]}" check

site=$(echo "$venv"/lib/python3*/site-packages)
# The dependencies' own test suites are not needed (nor their shebangs and interpreters).
find "$site" -mindepth 2 -maxdepth 2 -type d \( -name tests -o -name test \) -exec rm -rf {} +
# phonenumbers' geocoder data (19 MB of place names per number prefix): Phonehome validates
# and formats numbers, it never geocodes them (phonenumbers.geocoder would not import).
rm -rf "$site/phonenumbers/geodata" "$site/phonenumbers/geocoder.py"
# Modules are not scripts: blank their shebang lines (a blank keeps traceback line numbers).
find "$site" -type f -name '*.py' ! -perm /111 -exec grep -lZ -m1 '^#!' {} + |
	xargs -0 -r sed -i '1s/^#!.*$//'
# Debug symbols out, as dh_strip would.
find "$site" -type f -name '*.so' -exec strip --strip-unneeded \
	--remove-section=.comment --remove-section=.note {} +
if find "$site" -type f -name '*.so' -exec readelf -d {} + | grep -E 'RPATH|RUNPATH' | grep -v '\$ORIGIN'; then
	die "an extension module has a build-time library path (see above)"
fi

# Every module of the package imports, except those needing optional or lab-only packages.
"$vpy" -I - <<'EOF'
import importlib, pkgutil, sys
import sensor
OPTIONAL = {"numpy", "aioquic"}  # sensor.fastpath (speed-up), sensor.lab.servers (test lab)
bad = []
for mod in pkgutil.walk_packages(sensor.__path__, "sensor."):
    if mod.name == "sensor.__main__":  # runs the command line
        continue
    try:
        importlib.import_module(mod.name)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in OPTIONAL:
            bad.append(f"{mod.name}: {exc}")
if bad:
    sys.exit("build-deb: missing runtime dependencies:\n  " + "\n  ".join(bad))
EOF

# Drop the installer and the scripts pip wrote (they name the staging path), and the record of
# the local source directory.
"${pip[@]}" uninstall --yes pip setuptools
find "$venv/bin" -mindepth 1 ! -name 'python*' -delete
find "$venv" -name direct_url.json -path '*/phonehome-*.dist-info/*' -delete
find "$venv" -depth -type d -name __pycache__ -exec rm -rf {} +
find "$venv" -depth -type d -empty -delete
# pyvenv.cfg's informational `command` line is the only text naming the staging path.
sed -i "s|^command = .*|command = $python -m venv $prefix|" "$venv/pyvenv.cfg"
if grep -rIl --fixed-strings "$stage" "$venv" >"$build/leaks"; then
	die "files name the staging path: $(tr '\n' ' ' <"$build/leaks")"
fi

# --- the rest of the tree --------------------------------------------------------------------
install -D -m 0755 /dev/stdin "$stage/usr/bin/phonehome" <<EOF
#!/bin/sh
# Phonehome runs in its own Python environment; -I: no PYTHON* variables, no user or
# current-directory modules (it runs as root at times).
exec $prefix/bin/python3 -I -m sensor "\$@"
EOF
for unit in phonehome.service phonehome-update-data.service phonehome-update-data.timer; do
	install -D -m 0644 "$here/$unit" "$stage/lib/systemd/system/$unit"
done
grep -q "^ExecStart=/usr/bin/phonehome " "$stage/lib/systemd/system/phonehome.service" ||
	die "phonehome.service does not start /usr/bin/phonehome"
install -D -m 0644 "$here/phonehome-sysctl.conf" "$stage/usr/lib/sysctl.d/phonehome.conf"
install -D -m 0644 "$here/phonehome-modules.conf" "$stage/usr/lib/modules-load.d/phonehome.conf"
# Not a conffile: postinst copies the example to /etc/phonehome/phonehome.toml when there is
# none. A conffile would be replaced on upgrade when unedited, and the example sets no home
# country (the owner must): an upgraded sensor would stop (debian NEWS for 0.2.0).
install -D -m 0644 etc/phonehome.toml "$stage/usr/share/phonehome/phonehome.toml.example"
# Prometheus rules, Grafana dashboards and the fleet reference configuration (etc/fleet),
# whatever the tree holds now; not the Python that
# generates the dashboard JSON (the JSON itself is shipped).
for part in prometheus grafana fleet; do
	if [ -d "etc/$part" ] && [ -n "$(ls -A "etc/$part")" ]; then
		mkdir -p "$stage/usr/share/phonehome/$part"
		tar -C "etc/$part" --exclude='*.py' --exclude=__pycache__ -cf - . |
			tar -C "$stage/usr/share/phonehome/$part" -xf -
	fi
done
doc=$stage/usr/share/doc/phonehome
install -D -m 0644 README.md "$doc/README.md"
gzip -9n "$doc/README.md"
install -D -m 0644 "$here/deb/NEWS.Debian" "$doc/NEWS.Debian"
gzip -9n "$doc/NEWS.Debian"
install -D -m 0644 "$here/phonehome.1" "$stage/usr/share/man/man1/phonehome.1"
gzip -9n "$stage/usr/share/man/man1/phonehome.1"
install -D -m 0644 "$here/deb/lintian-overrides" "$stage/usr/share/lintian/overrides/phonehome"
sed -i "s|@PREFIX@|${prefix#/}|g" "$stage/usr/share/lintian/overrides/phonehome"
case $prefix in
/opt/*) ;;
*) sed -i '/dir-or-file-in-opt/d' "$stage/usr/share/lintian/overrides/phonehome" ;;
esac

changelog_date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
	printf 'phonehome (%s) unstable; urgency=medium\n\n' "$version"
	printf '  * Package of %s (commit %s).\n\n' "$version" "$commit"
	printf ' -- %s  %s\n' "$maintainer" "$changelog_date"
} | gzip -9n >"$doc/changelog.gz"

# The bundled projects and their licences, from their own metadata.
first_year=$(git log --reverse --format=%cd --date=format:%Y 2>/dev/null | sed -n 1p)
"$vpy" -I - "$venv" "$prefix" "${first_year:-$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)}" \
	>"$doc/copyright" <<'EOF'
import sys
from importlib import metadata
from pathlib import Path
venv, prefix, year = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
site = next(venv.glob("lib/python3*/site-packages"))
print(f"Phonehome\n\nCopyright (C) {year} the Phonehome developers\nLicense: Apache-2.0\n"
      " On Debian systems the full text of the Apache License 2.0 is in\n"
      " /usr/share/common-licenses/Apache-2.0.\n\n"
      "Bundled in " + prefix + " (a private Python environment), each under its own licence;\n"
      "the licence texts are in each project's .dist-info directory there.\n")
for dist in sorted(metadata.distributions(path=[str(site)]), key=lambda d: d.metadata["Name"].lower()):
    md = dist.metadata
    if md["Name"] == "phonehome":
        continue
    lic = md.get("License-Expression") or ""
    if not lic:
        classifiers = [c.split(" :: ")[-1] for c in md.get_all("Classifier") or []
                       if c.startswith("License ::")]
        lic = ", ".join(classifiers) or (md.get("License") or "see its licence files").splitlines()[0]
    files = sorted(str(Path(f)) for f in dist.files or []
                   if "licen" in str(f).lower() or "copying" in str(f).lower())
    print(f"{md['Name']} {md['Version']}: {lic}")
    for f in files:
        print(f"  {prefix}/{site.relative_to(venv)}/{f}")
print("\ngeoip2fast's embedded data: This product includes GeoLite2 data created by MaxMind,\n"
      "available from https://www.maxmind.com (CC BY-SA 4.0).")
EOF

# --- DEBIAN/ -------------------------------------------------------------------------------
mkdir -p "$stage/DEBIAN"
for script in postinst prerm postrm; do
	sed "s|@PREFIX@|$prefix|g" "$here/deb/$script" >"$stage/DEBIAN/$script"
	chmod 0755 "$stage/DEBIAN/$script"
done

# Permissions as Debian wants them whatever the umask and the wheels said: directories 0755,
# files 0644, executables 0755; extension modules are not executables.
find "$stage" -path "$stage/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
find "$stage" -path "$stage/DEBIAN" -prune -o -type f -perm /111 -name '*.so*' -exec chmod 0644 {} +
find "$stage" -path "$stage/DEBIAN" -prune -o -type f ! -perm /111 -exec chmod 0644 {} +
find "$stage" -path "$stage/DEBIAN" -prune -o -type f -perm /111 -exec chmod 0755 {} +

installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<EOF
Package: phonehome
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: python$pyver, libc6, libgcc-s1, libsystemd0, nftables, procps, adduser, ca-certificates
Suggests: prometheus, prometheus-alertmanager
Section: net
Priority: optional
Description: network sensor: which LAN device phones home to which cloud
 Phonehome runs on the Linux gateway of a home or office network and shows,
 per device, which vendor clouds it talks to, where those servers are and how
 much it uploads there, and raises an alert when a phone sends identifiers
 (IMEI, phone numbers, contact lists, advertising IDs) out of the country, in
 clear or merely encoded. Alerts go to an event log, the journal and
 Alertmanager.
 .
 The service is installed disabled: set site.home_country in
 /etc/phonehome/phonehome.toml, run "phonehome check", then enable
 phonehome.service and phonehome-update-data.timer.
EOF
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
	xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"

find "$stage" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
deb=$out/phonehome_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
log "$deb: $(du -k "$deb" | cut -f1) KiB, installed $installed_size KiB, $(($(date +%s) - started)) s"
echo "$deb"
