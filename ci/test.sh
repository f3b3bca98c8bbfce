#!/usr/bin/env bash
# Set up everything (ci/setup.sh) and run the whole test suite, FUSE mounts included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
