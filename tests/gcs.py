"""A local Cloud Storage for tests: launch/gcs_emulator.py (gcp-storage-emulator, from the test extra, with
the object generations tensorstore needs) on a free port, and the environment every client reads
(`emulator_env`); subprocesses get it through `env`."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("gcs_emulator", os.path.join(REPO, "launch", "gcs_emulator.py"))
gcs_emulator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gcs_emulator)
emulator_env = gcs_emulator.emulator_env

BUCKET = "rlvr-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator() -> tuple[subprocess.Popen, dict]:
    """Start the emulator (in memory) and create BUCKET; returns (process, environment)."""
    try:
        import gcp_storage_emulator  # noqa: F401
    except ImportError:
        pytest.skip("gcp-storage-emulator is not installed (pip install -e '.[test]')")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    script = os.path.join(REPO, "launch", "gcs_emulator.py")
    proc = subprocess.Popen(
        [sys.executable, script, "--port", str(port), "--bucket", BUCKET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=1).read()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"gcp-storage-emulator did not start on {url}")
            time.sleep(0.2)
    return proc, emulator_env(url)


@pytest.fixture(scope="session")
def gcs():
    """gs://BUCKET on one emulator per test process; its environment stays applied for the session (clients
    cache their endpoint, so one emulator serves every test that asks)."""
    proc, env = start_emulator()
    os.environ.update(env)
    try:
        yield f"gs://{BUCKET}"
    finally:
        proc.kill()
        proc.wait()
