#!/usr/bin/env bash
# Run the tar scanner's tests and fuzzing against imagefs/_tarfast.c built with
# AddressSanitizer and UndefinedBehaviorSanitizer (not part of CI: minutes, and
# it swaps the built extension for the time of the run).
# Usage: bash ci/sanitize.sh [EXAMPLES]     (after ci/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
so=$($PY -c 'import imagefs._tarfast as t; print(t.__file__)')
inc=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
cp "$so" "$so.orig"
trap 'mv "$so.orig" "$so"' EXIT
gcc -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -shared -fPIC -I"$inc" imagefs/_tarfast.c -o "$so"
LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 IMAGEFS_REQUIRE_C=1 IMAGEFS_FUZZ_EXAMPLES="${1:-2000}" \
  $PY -m pytest -q -p no:cacheprovider tests/test_tarscan.py tests/test_fuzz.py -k "tarscan or scan or seed"
