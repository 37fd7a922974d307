#!/usr/bin/env bash
# Create .venv (Python 3.11, the tested one, if present), install rlvr_jax (+ test extra) with the exact
# versions of requirements.lock, and bubblewrap for the code sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
"$PY" -c '' 2>/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "[setup] rlvr_jax needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1). Set PYTHON=/path/to/python3.11" >&2; exit 1; }
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# -c: the lock fixes the version of whatever the project needs, and installs nothing else.
.venv/bin/python -m pip install -q -c requirements.lock -e ".[test]"
# libtpu, for rlvr-plan's ahead-of-time TPU compiles on this CPU host (no TPU needed). It goes to
# .venv/libtpu, outside site-packages, so that ordinary runs do not probe for a TPU; rlvr-plan finds it
# there. The version is the one jax[tpu] pins for our jax (pyproject's plan extra brings the same).
LIBTPU=libtpu==0.0.42.1
if [ ! -f .venv/libtpu/.installed ] || [ "$(cat .venv/libtpu/.installed)" != "$LIBTPU" ]; then
  if .venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/libtpu "$LIBTPU"; then
    echo "$LIBTPU" > .venv/libtpu/.installed
  else
    echo "[setup] WARNING: could not install $LIBTPU: rlvr-plan and its tests are skipped" >&2
  fi
fi
if ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing bubblewrap (code-verifier sandbox) with apt-get"
    (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) \
      || echo "[setup] WARNING: apt-get could not install bubblewrap"
  fi
fi
if ! command -v bwrap >/dev/null; then
  cat >&2 <<'MSG'
######################################################################
# WARNING: bubblewrap (bwrap) is NOT installed.
# Code rewards cannot be computed in a sandbox: code verification will
# stop with an error, and the sandbox tests are SKIPPED.
# Install it with:  sudo apt-get install bubblewrap   (Debian/Ubuntu)
######################################################################
MSG
fi
