#!/usr/bin/env bash
# Install a Godot 4 binary for the client tests into a self-contained root folder.
#
# Debian 12 ships only Godot 3; Debian unstable ("sid") ships Godot 4, which needs a newer
# libc. We debootstrap a minimal sid root into a folder and run the binary through that
# root's dynamic loader (see tests/tools/godot.sh) -- no chroot, no container.
#
# Usage: tests/tools/install_godot.sh [ROOTDIR]
#   ROOTDIR defaults to $SFBRIDGE_GODOT_ROOT, else ~/.cache/sfbridge-ci/godot-root.
# Idempotent: if ROOTDIR already holds a working godot, it exits 0 at once.
# Needs root (debootstrap). Exit codes: 0 ok, 1 failed (e.g. sid temporarily uninstallable).
set -euo pipefail

ROOT="${1:-${SFBRIDGE_GODOT_ROOT:-$HOME/.cache/sfbridge-ci/godot-root}}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ -x "$ROOT/usr/bin/godot" ] && [ -f "$ROOT/.sfbridge-complete" ]; then
    if SFBRIDGE_GODOT_ROOT="$ROOT" "$HERE/godot.sh" --headless --version >/dev/null 2>&1; then
        echo "godot already installed in $ROOT"
        exit 0
    fi
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y --no-install-recommends debootstrap >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y --no-install-recommends debootstrap >/dev/null; }
    else
        echo "debootstrap is missing (apt-get install debootstrap, as root)" >&2
        exit 1
    fi
fi

# A half-finished earlier attempt is useless to debootstrap: start over -- but only ever delete
# an empty folder or one that looks like a debootstrap root (never a mistyped path).
case "$ROOT" in
    ""|/|"$HOME"|"$HOME/") echo "refusing to use '$ROOT' as the Godot root" >&2; exit 1 ;;
esac
if [ -e "$ROOT" ]; then
    if [ -z "$(ls -A "$ROOT" 2>/dev/null)" ] || [ -d "$ROOT/debootstrap" ] || [ -f "$ROOT/.sfbridge-complete" ] \
        || { [ -d "$ROOT/usr/bin" ] && [ -d "$ROOT/var/lib/dpkg" ]; }; then
        rm -rf "$ROOT"
    else
        echo "$ROOT exists and is not a Godot root made by this script; remove it or pick another path" >&2
        exit 1
    fi
fi
mkdir -p "$(dirname "$ROOT")"
MIRROR="${SFBRIDGE_DEBIAN_MIRROR:-}"
if [ -z "$MIRROR" ]; then
    # Reuse the host's configured Debian mirror (keeps any local proxy/mirror setup).
    MIRROR="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -oE '^(URIs:|deb) +[a-z]+://[^ ]+/debian/?$|^(URIs:|deb) +[a-z]+://[^ ]+/debian/? ' \
        | awk '{print $2}' | head -n1 || true)"
fi
echo "debootstrap sid into $ROOT (mirror: ${MIRROR:-debootstrap default}) ..."
debootstrap --variant=minbase --include=godot,ca-certificates sid "$ROOT" ${MIRROR:+"$MIRROR"}
# The .deb cache is ~180 MB and not needed to run.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb
touch "$ROOT/.sfbridge-complete"
SFBRIDGE_GODOT_ROOT="$ROOT" "$HERE/godot.sh" --headless --version
