#!/usr/bin/env bash
# Create .venv with Python 3.11, install rlvr_jax (+ test extra), and bubblewrap for the code sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
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
