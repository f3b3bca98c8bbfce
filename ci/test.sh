#!/usr/bin/env bash
# Set up everything (ci/setup.sh) and run the whole test suite, FUSE mounts included.
set -euo pipefail
cd "$(dirname "$0")/.."
# The compiled parts (imagefs._tarfast, imagefs._indexfast, the patched pyfuse3)
# must be there, or tests fail instead of quietly testing the fallbacks; setup.sh
# stops if it cannot build them.
export IMAGEFS_REQUIRE_C=1
bash ci/setup.sh
# podman is the oracle for `imagefs commit` (test_commit.py loads the result); only the tests need it.
if ! command -v podman >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  install_podman() {
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends podman >/dev/null
  }
  # setup.sh refreshes the package lists only when it installs something itself, so they
  # may be missing or stale here: if the install fails, refresh them and try once more.
  install_podman 2>/dev/null || { $SUDO apt-get update -qq && install_podman; } \
    || echo "ci/test.sh: warning: podman could not be installed; the podman load test will be skipped" >&2
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
