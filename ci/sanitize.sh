#!/usr/bin/env bash
# Run the tests of the C halves (imagefs/_tarfast.c: the tar scanner's tests and
# fuzzing; imagefs/_indexfast.c: the union rules, the index property test and
# the readdirplus records)
# against both extensions built with AddressSanitizer and UndefinedBehaviorSanitizer.
# Not part of CI: minutes, and it swaps the built extensions for the time of the run.
# -s: a sanitizer that halts the process must not have its report held in pytest's capture.
# Usage: bash ci/sanitize.sh [EXAMPLES]     (after ci/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
inc=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
swapped=()
restore() {
  for so in "${swapped[@]}"; do mv "$so.orig" "$so"; done
}
trap restore EXIT
# Where the built extensions are, asked before any is swapped (importing an
# instrumented one without the ASan runtime preloaded fails).
read -r -a sos <<<"$($PY -c 'import imagefs._tarfast as t, imagefs._indexfast as i; print(t.__file__, i.__file__)')"
[ "${#sos[@]}" -eq 2 ] || { echo "ci/sanitize.sh: the C extensions are not built (run ci/setup.sh)" >&2; exit 1; }
for so in "${sos[@]}"; do
  mod=$(basename "$so"); mod=${mod%%.*}
  cp "$so" "$so.orig"
  swapped+=("$so")
  gcc -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -shared -fPIC -I"$inc" "imagefs/$mod.c" -o "$so"
done
LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 IMAGEFS_REQUIRE_C=1 IMAGEFS_FUZZ_EXAMPLES="${1:-2000}" \
  IMAGEFS_UNION_PROFILE=union-random \
  $PY -m pytest ${PYTEST_ARGS:--q} -s -p no:cacheprovider tests/test_tarscan.py tests/test_fuzz.py tests/test_merge.py \
    tests/test_union_property.py tests/test_readdirplus.py \
    -k "tarscan or scan or seed or merge or union or index or rule or readdirplus"
