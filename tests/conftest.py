"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.gcs import gcs  # noqa: E402,F401 - the local Cloud Storage fixture, for every test module

# The longest tests first: pytest-xdist hands tests out in collection order, so a multi-minute test
# collected late would run alone at the end while the other worker idles.
LONGEST_FIRST = ("test_pod_rehearsal.py", "test_install.py", "test_experiment.py", "test_multihost.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its order
