#!/usr/bin/env bash
# Build strongSwan's load-tester plugin for the charon Debian ships (5.9.8), into a cache
# directory outside git, and print the path of the shared object.
#
#   tests/loadtester/build.sh            # build if needed; prints .../libstrongswan-load-tester.so
#   LOADTESTER_DIR=/some/dir tests/loadtester/build.sh
#
# Debian does not package the plugin.  The source is the upstream release tarball that the
# Debian archive serves as the source package's .orig file (apt checks its hash against the
# signed Sources index).  apt runs with a private sources list and lists directory, so the
# system's apt configuration and caches are not touched.  The plugin is LD_PRELOADed into
# Debian's charon, whose libcharon is built with mediation: configure must say
# --enable-mediation too, or daemon_t/ike_sa_t have another layout and charon crashes.
# Only what the plugin needs is compiled (libstrongswan's generated OID table and the
# plugin itself).  Idempotent: a stamp records version and flags; a lock serialises
# concurrent callers.  Nothing of strongSwan's source or build output goes into git.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${LOADTESTER_DIR:-$ROOT/build/loadtester}
SO=$OUT/libstrongswan-load-tester.so
CONFIGURE_FLAGS="--enable-mediation --enable-load-tester"
# Packages the build needs (also in the Makefile's APT_PACKAGES, so `make test` installs them).
BUILD_DEPS="gcc make pkg-config libssl-dev libgmp-dev perl bzip2 debian-archive-keyring"

say() { echo "[loadtester] $*" >&2; }
die() { say "error: $*"; exit 1; }

# The plugin must match the charon that will load it: same upstream version.
installed=$(dpkg-query -W -f='${Version}' strongswan-charon 2>/dev/null) \
    || die "strongswan-charon is not installed (apt-get install strongswan-charon)"
UPSTREAM=${installed%%-*}
UPSTREAM=${UPSTREAM#*:}
STAMP="strongswan $UPSTREAM; $CONFIGURE_FLAGS"

if [ -f "$SO" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
    echo "$SO"
    exit 0
fi

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
# Another caller may have finished the build while we waited for the lock.
if [ -f "$SO" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
    echo "$SO"
    exit 0
fi
start=$(date +%s)

missing=$(for p in $BUILD_DEPS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    [ "$(id -u)" = 0 ] || die "missing build packages (need root to install): $missing"
    say "installing build packages: $missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
fi

# ---------------------------------------------------------------- the source tarball
# The mirror apt already uses for the release (not -security/-updates), and the codename.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v c="$codename" '
    /^URIs:/ { uri = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == c) { print uri; exit } }')
if [ -z "$mirror" ]; then
    mirror=$(grep -hE "^deb +(\[[^]]*\] +)?[a-z]+://[^ ]+ +$codename( |$)" /etc/apt/sources.list \
        /etc/apt/sources.list.d/*.list 2>/dev/null | head -1 | sed -E 's/^deb +(\[[^]]*\] +)?([^ ]+).*/\2/')
fi
mirror=${mirror:-http://deb.debian.org/debian}

APT=$OUT/apt
SRC=$OUT/src
mkdir -p "$APT/lists/partial" "$SRC"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $codename main" \
    > "$APT/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$APT/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
          -o APT::Sandbox::User=root -q)
orig=strongswan_$UPSTREAM.orig.tar.bz2
if [ ! -f "$SRC/$orig" ]; then
    say "fetching the strongSwan $UPSTREAM source from $mirror ($codename)"
    apt-get "${apt_opts[@]}" update >&2
    # --download-only: the .orig tarball is all we need, hash-checked by apt.
    (cd "$SRC" && apt-get "${apt_opts[@]}" source --download-only strongswan >&2) \
        || [ -f "$SRC/$orig" ] || die "apt-get source strongswan failed"
    [ -f "$SRC/$orig" ] || die "no $orig from the archive (has Debian moved past $UPSTREAM?)"
fi

# ---------------------------------------------------------------- configure and build
tree=$SRC/strongswan-$UPSTREAM
rm -rf "$tree"
tar -C "$SRC" -xjf "$SRC/$orig"
cd "$tree"
say "configure $CONFIGURE_FLAGS"
# shellcheck disable=SC2086
./configure -q $CONFIGURE_FLAGS >"$OUT/configure.log" 2>&1 \
    || { tail -30 "$OUT/configure.log" >&2; die "configure failed (log: $OUT/configure.log)"; }
jobs=$(nproc 2>/dev/null || echo 1)
say "make (the OID table, then the plugin)"
{
    make -C src/libstrongswan asn1/oid.c asn1/oid.h
    make -j"$jobs" -C src/libcharon/plugins/load_tester
} >"$OUT/make.log" 2>&1 || { tail -30 "$OUT/make.log" >&2; die "make failed (log: $OUT/make.log)"; }
built=src/libcharon/plugins/load_tester/.libs/libstrongswan-load-tester.so
[ -f "$built" ] || die "no $built after make"
cp "$built" "$SO.tmp"
mv "$SO.tmp" "$SO"
# Keep the tarball (a rebuild needs no network) but not the 100 MB tree.
cd "$OUT"
rm -rf "$tree"
echo "$STAMP" > "$OUT/stamp"
say "built $SO in $(( $(date +%s) - start )) s"
echo "$SO"
