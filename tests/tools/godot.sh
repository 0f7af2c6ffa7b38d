#!/usr/bin/env bash
# Run the Godot 4 binary installed by tests/tools/install_godot.sh, through its root's loader.
# Usage: tests/tools/godot.sh [godot args...], e.g. godot.sh --headless --script /abs/test.gd
# Root: $SFBRIDGE_GODOT_ROOT, else ~/.cache/sfbridge-ci/godot-root.
set -euo pipefail
ROOT="${SFBRIDGE_GODOT_ROOT:-$HOME/.cache/sfbridge-ci/godot-root}"
LIBDIR="$ROOT/usr/lib/x86_64-linux-gnu"
LOADER="$ROOT/usr/lib64/ld-linux-x86-64.so.2"
[ -e "$LOADER" ] || LOADER="$LIBDIR/ld-linux-x86-64.so.2"
if [ ! -x "$ROOT/usr/bin/godot" ]; then
    echo "no godot in $ROOT (run tests/tools/install_godot.sh)" >&2
    exit 127
fi
exec "$LOADER" --library-path "$LIBDIR:$LIBDIR/pulseaudio" "$ROOT/usr/bin/godot" "$@"
