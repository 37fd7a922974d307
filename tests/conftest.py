"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere, and one persistent XLA compilation
cache for the whole run (the test process, xdist workers and every subprocess a test starts inherit it):
many tests run the trainer, the study or two-process pods in subprocesses that compile the same tiny
programs, which then compile once."""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process of the run (xdist's workers inherit it)
    _cache = tempfile.mkdtemp(prefix="rlvr-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

from tests.gcs import gcs  # noqa: E402,F401 - the local Cloud Storage fixture, for every test module

# The longest test (8 min of a 2-core run) starts first, so the other worker's tests run beside it rather than
# one worker finishing alone; with `--dist worksteal` (scripts/test.sh) an idle worker takes queued tests.
FIRST = "tests/test_pod_rehearsal.py::test_rehearsal_resumes_training_and_the_study_on_gs"


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.nodeid != FIRST)  # stable: every other test keeps its order


@pytest.fixture(autouse=True)
def _no_warm_sandbox_left():
    """Code rewards scored in the test process keep a warm sandbox up (rlvr_jax/verifiers/warm.py); each test
    ends it, so a later test that counts this process's sandboxes starts from none."""
    yield
    warm = sys.modules.get("rlvr_jax.verifiers.warm")
    if warm is not None:
        warm.close()
