#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for imagefs: system packages, a venv, the project.
# Idempotent; safe to run again.  Usage: bash ci/setup.sh   (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev zstd; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "ci/setup.sh: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true

# pyfuse3, patched for speed (ci/patch_pyfuse3.py says what and why); rebuilt
# when the patch level changes.  If that build fails, the stock wheel works too.
PYFUSE3_VERSION=$(python3 ci/patch_pyfuse3.py --version)
PATCH_LEVEL=$(python3 ci/patch_pyfuse3.py --level)
if ! .venv/bin/python -c "import pyfuse3._pyfuse3 as p; assert p.IMAGEFS_PATCH == $PATCH_LEVEL" 2>/dev/null; then
  src=$(mktemp -d)
  if .venv/bin/python -m pip download -q --no-deps --no-binary pyfuse3 -d "$src" "pyfuse3==$PYFUSE3_VERSION" \
     && tar -xzf "$src/pyfuse3-$PYFUSE3_VERSION.tar.gz" -C "$src" \
     && .venv/bin/python ci/patch_pyfuse3.py "$src/pyfuse3-$PYFUSE3_VERSION" \
     && .venv/bin/python -m pip install -q --force-reinstall --no-deps "$src/pyfuse3-$PYFUSE3_VERSION"; then
    echo "ci/setup.sh: installed pyfuse3 $PYFUSE3_VERSION with imagefs patch level $PATCH_LEVEL" >&2
  elif [ -n "${IMAGEFS_REQUIRE_C:-}" ]; then
    echo "ci/setup.sh: could not build the patched pyfuse3 (IMAGEFS_REQUIRE_C is set: the tests need it)" >&2
    exit 1
  else
    echo "ci/setup.sh: warning: could not build the patched pyfuse3; using the stock one (slower opens)" >&2
  fi
  rm -rf "$src"
fi
# Editable, so the tests and the CLI run this checkout; setuptools warns about
# that mode in a box on every install, which says nothing here.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e '.[test]'
# An editable install has no bytecode until a run writes it (none is written under
# PYTHONDONTWRITEBYTECODE, or by a user who cannot write here): every start would
# compile imagefs again, 50-80 ms of each mount.
.venv/bin/python -m compileall -q imagefs cli.py >/dev/null
