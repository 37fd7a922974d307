"""The TPU generations the planner knows (published peaks, the HBM libtpu lets a program use), the devices of
a named topology, and finding and setting up libtpu on a CPU host."""

from __future__ import annotations

import dataclasses
import os
import re
import sys

GiB = 2**30


class PlanError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published peaks of one JAX device of a TPU generation, and the HBM libtpu lets a program use."""

    hbm_bytes: int  # what libtpu reports as available HBM per device (its out-of-memory message)
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s of inter-chip interconnect per chip (all links, one direction)
    note: str = ""


# Peaks: Google Cloud TPU documentation, "TPU v5p", "TPU v5e", "TPU v6e" and "TPU v4" system architecture
# pages (bf16 TFLOP/s, HBM GB/s, ICI Gbps per chip). HBM available per device: libtpu 0.0.42.1's
# out-of-memory report when compiling for each topology with jax 0.10.2 (95.74G, 15.75G, 31.25G, 15.25G).
CHIPS = {
    "v5p": Chip(int(95.74 * GiB), 459e12, 2765e9, 4800e9 / 8),
    "v5e": Chip(int(15.75 * GiB), 197e12, 819e9, 1600e9 / 8),
    "v6e": Chip(int(31.25 * GiB), 918e12, 1640e9, 3584e9 / 8),
    # a v4 chip shows as two devices (one per TensorCore): half a chip's peaks per device
    "v4": Chip(int(15.25 * GiB), 275e12 / 2, 1200e9 / 2, 2400e9 / 8 / 2, note="per TensorCore (2 per chip)"),
}

# A real TPU's device_kind -> its CHIPS entry
DEVICE_KINDS = {
    "TPU v5": "v5p",
    "TPU v5p": "v5p",
    "TPU v5 lite": "v5e",
    "TPU v5e": "v5e",
    "TPU v6 lite": "v6e",
    "TPU v6e": "v6e",
    "TPU v4": "v4",
}


def chip_of(device_kind: str) -> Chip:
    """The CHIPS entry of a real TPU device (its device_kind, e.g. 'TPU v5' for v5p, 'TPU v5 lite')."""
    if device_kind not in DEVICE_KINDS:
        raise PlanError(f"no peak figures for device kind {device_kind!r}; known: {sorted(DEVICE_KINDS)}")
    return CHIPS[DEVICE_KINDS[device_kind]]


def chip_of_topology(name: str) -> Chip:
    """The CHIPS entry of a named topology, e.g. 'v5p:4x4x4'."""
    return CHIPS[name.split(":")[0]]


def topology_devices(name: str):
    """The devices of a named TPU slice, e.g. 'v5p:4x4x4' (needs libtpu, no TPU)."""
    gen = name.split(":", 1)[0]
    if gen not in CHIPS or not re.fullmatch(r"[a-z0-9]+:\d+(x\d+){1,2}", name):
        raise PlanError(
            f"unknown topology {name!r}; known generations: {', '.join(sorted(CHIPS))} "
            f"(e.g. v5p:4x4x4, v5p:2x2x1, v5e:2x2, v6e:4x4, v4:2x2x1)"
        )
    find_libtpu()
    try:
        from jax.experimental import topologies  # local: only the planner uses it, and it needs libtpu

        return topologies.get_topology_desc(platform="tpu", topology_name=name).devices
    except Exception as e:  # libtpu missing or the shape refused: say which
        raise PlanError(
            f"cannot describe TPU topology {name!r}: {type(e).__name__}: {str(e).splitlines()[0]}\n"
            f"(rlvr-plan needs libtpu: pip install -e '.[plan]')"
        ) from e


def find_libtpu() -> None:
    """libtpu from the `plan` extra, or from `.venv/libtpu` (scripts/setup.sh installs it there, outside
    site-packages, so that ordinary CPU runs do not probe for a TPU)."""
    try:
        import libtpu  # noqa: F401  # local: an optional dependency, probed only here
    except ImportError:
        target = os.path.join(sys.prefix, "libtpu")
        if os.path.isdir(target) and target not in sys.path:
            sys.path.insert(0, target)
    if not (os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio")):  # a CPU host, not a TPU VM
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")  # quiets libtpu's probing of this host
        # compiling only: several planners (or test workers) may load libtpu at once without its lockfile
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
