#!/usr/bin/env bash
# Set up everything (ci/setup.sh), mount the bundled sample image, show it, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
mnt=$(mktemp -d /tmp/imagefs-demo.XXXXXX)
trap '.venv/bin/imagefs umount "$mnt" 2>/dev/null || true; rmdir "$mnt"' EXIT
.venv/bin/imagefs images examples/sample.tar
.venv/bin/imagefs mount examples/sample.tar "$mnt"
echo "== findmnt"; findmnt "$mnt" || true
echo "== ls -la $mnt"; ls -la "$mnt"
echo "== cat $mnt/etc/os-release"; cat "$mnt/etc/os-release"
echo "== find $mnt | head"; find "$mnt" | head -20
