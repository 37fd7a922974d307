"""Meshes, logical-to-mesh axis rules, and creation of sharded state through abstract shapes.

The only module that builds meshes, PartitionSpecs and NamedShardings. Model code names axes
logically (``batch``, ``embed``, ``heads`` ...); ``RULES`` maps each to a mesh axis (or None).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import warnings
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (str), several mesh axes (tuple) or None (replicated).
# Parameters are sharded over fsdp (ZeRO-3 style) and tensor; activations over the batch axes.
RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "layers": None,  # the stacked layer axis of a scanned pass: every device holds its shard of each layer
    "length": None,
    "cache_len": None,
    "embed": "fsdp",
    "vocab": "tensor",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "act_embed": None,
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}

# Weights laid out for decoding (the rollout engine): whole within each batch shard, split over `tensor`
# only, so a decode step all-gathers no weight; the trainer's FSDP layout is resharded to it once per rollout.
DECODE_RULES: dict[str, Any] = {**RULES, "embed": None}


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """Sizes of the (data, fsdp, tensor) axes; one of them may be -1 for "the rest"."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    @classmethod
    def of(cls, section) -> MeshShape:
        """The sizes a config's `mesh` section gives (any object with data, fsdp and tensor attributes)."""
        return cls(int(section.data), int(section.fsdp), int(section.tensor))

    @classmethod
    def parse(cls, text: str) -> MeshShape:
        """The sizes a command's `--mesh DATA,FSDP,TENSOR` flag gives, e.g. "1,-1,1"."""
        parts = text.split(",")
        if len(parts) != 3 or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise ValueError(f"mesh {text!r}: expected three comma-separated sizes DATA,FSDP,TENSOR, e.g. 1,-1,1")
        return cls(*(int(p) for p in parts))

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ValueError(f"mesh {sizes}: at most one axis may be -1")
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh {sizes}: sizes must be positive or -1")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not divisible by {known}"
                )
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, but {num_devices} are available"
            )
        return tuple(sizes)


def make_mesh(shape: MeshShape = MeshShape(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    sizes = shape.resolve(len(devices))
    # Auto axes: XLA propagates shardings from the ones we pin (GSPMD), rather than typing every op.
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if devices == jax.devices():
        return jax.make_mesh(sizes, MESH_AXES, devices=devices, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=auto)


def _axis_size(mesh_axis_sizes: Mapping[str, int], target) -> int:
    if target is None:
        return 1
    names = (target,) if isinstance(target, str) else tuple(target)
    return math.prod(mesh_axis_sizes[n] for n in names)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int] | None,
    mesh_axis_sizes: Mapping[str, int],
    rules: Mapping[str, Any] = RULES,
    where: str = "",
) -> P:
    """PartitionSpec for one array. Two logical axes landing on one mesh axis is an error; a dim
    that the mesh axis does not divide is replicated (with a warning), which is what GQA models
    with fewer KV heads than tensor shards need."""
    spec, used = [], {}
    for i, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"{where}: logical axis {name!r} has no sharding rule (known: {sorted(rules)})")
        target = rules[name]
        mesh_names = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        mesh_names = tuple(n for n in mesh_names if mesh_axis_sizes.get(n, 1) > 1)
        for n in mesh_names:
            if n in used:
                raise ValueError(f"{where}: logical axes {used[n]!r} and {name!r} both map to mesh axis {n!r}")
            used[n] = name
        size = _axis_size(mesh_axis_sizes, mesh_names)
        if shape is not None and size > 1 and shape[i] % size:
            warnings.warn(
                f"{where}: dim {i} ({name}={shape[i]}) is not divisible by mesh {mesh_names} "
                f"of size {size}; replicating it"
            )
            mesh_names = ()
        spec.append(None if not mesh_names else (mesh_names[0] if len(mesh_names) == 1 else mesh_names))
    return P(*spec)


def _mesh_sizes(mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes if hasattr(mesh, "axis_sizes") else mesh.devices.shape))


def _is_var(x):
    return isinstance(x, nnx.Variable)


def logical_axes_tree(abstract_state) -> Any:
    """Pure-dict tree of each parameter's logical axes (from the ``logical_axes`` metadata)."""

    def axes_of(path, var):
        axes = var.get_metadata().get("logical_axes")
        if axes is None:
            raise ValueError(f"parameter {'/'.join(map(str, path))} has no logical_axes metadata")
        return tuple(axes)

    tree = jax.tree_util.tree_map_with_path(axes_of, abstract_state, is_leaf=_is_var)
    return nnx.to_pure_dict(nnx.State(tree)) if isinstance(tree, nnx.State) else tree


def tree_shardings(abstract_params, axes_tree, mesh: Mesh, rules: Mapping[str, Any] = RULES):
    """NamedShardings for a pure-dict tree of ShapeDtypeStructs given its logical axes."""
    sizes = _mesh_sizes(mesh)

    def one(path, leaf, axes):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return NamedSharding(mesh, logical_to_spec(axes, leaf.shape, sizes, rules, where=name))

    return jax.tree_util.tree_map_with_path(
        one,
        abstract_params,
        axes_tree,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x),
    )


def abstract_pure(abstract_state):
    """nnx.State of ShapeDtypeStruct Variables -> pure dict of ShapeDtypeStructs."""
    return nnx.to_pure_dict(abstract_state)


def create_sharded(make_module: Callable[[], nnx.Module], mesh: Mesh, rules: Mapping[str, Any] = RULES):
    """Build a module's parameters directly in their shardings: abstract shapes first, then one jit
    with out_shardings. Returns (graphdef, params pure dict, shardings tree)."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make_module))
    axes = logical_axes_tree(abstract_state)
    shardings = tree_shardings(abstract_pure(abstract_state), axes, mesh, rules)

    @jax.jit
    def init():
        return nnx.to_pure_dict(nnx.split(make_module())[1])

    params = jax.jit(init, out_shardings=shardings)()
    return graphdef, params, shardings


def bytes_per_device(
    abstract_tree, axes_tree, mesh_axis_sizes: Mapping[str, int], rules: Mapping[str, Any] = RULES, dtype=None
) -> int:
    """Largest per-device bytes of a tree under the rules, for any mesh size (no devices needed)."""
    total = 0
    leaves = jax.tree_util.tree_leaves(abstract_tree)
    axes_leaves = jax.tree_util.tree_leaves(axes_tree, is_leaf=lambda x: isinstance(x, tuple))
    for leaf, axes in zip(leaves, axes_leaves):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec = logical_to_spec(axes, leaf.shape, mesh_axis_sizes, rules)
        shard = [math.ceil(d / _axis_size(mesh_axis_sizes, s)) for d, s in zip(leaf.shape, spec)]
        itemsize = np.dtype(dtype or leaf.dtype).itemsize
        total += math.prod(shard) * itemsize
    return total


# ---- activation sharding constraints, active inside `activate(mesh)` ------------------------
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("rlvr_jax_mesh", default=None)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Mapping[str, Any] = RULES):
    """Makes `constrain` pin activations to `mesh` while tracing code inside this block."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield mesh
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def deactivate():
    """No mesh active inside this block (code run per device under shard_map sees local blocks)."""
    token = _ACTIVE.set(None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class ActivatedJit:
    """A jitted function traced with `sharding.activate(mesh)` on, so activation constraints apply."""

    def __init__(self, fn, mesh):
        self.fn, self.mesh = fn, mesh

    def __call__(self, *args):
        with activate(self.mesh):
            return self.fn(*args)

    def cache_size(self) -> int:
        """Programs compiled so far (jax's count): the tests bound recompilation with it."""
        return self.fn._cache_size()


def active_mesh() -> Mesh | None:
    """The mesh `activate` set for the function being traced, if any."""
    active = _ACTIVE.get()
    return None if active is None else active[0]


def logical_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=None) -> P:
    """The PartitionSpec the rules give an activation of this shape on `mesh` (for shard_map)."""
    active = _ACTIVE.get()
    rules = rules or (active[1] if active is not None else RULES)
    return logical_to_spec(logical_axes, shape, _mesh_sizes(mesh), rules, where="activation")


def constrain(x, logical_axes: Sequence[str | None]):
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(logical_axes, x.shape, _mesh_sizes(mesh), rules, where="activation")
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def batch_sharding(mesh: Mesh, ndim: int, rules: Mapping[str, Any] = RULES) -> NamedSharding:
    """Sharding of a [batch, ...] host array fed to a jitted step."""
    spec = logical_to_spec(("batch",) + (None,) * (ndim - 1), None, _mesh_sizes(mesh), rules)
    return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _path_keys(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def like_params_shardings(tree_abstract, param_shardings, mesh: Mesh):
    """Shardings for a tree that embeds copies of the params tree (optimizer moments): a leaf whose
    path ends with a parameter's path, with that parameter's shape, gets its sharding; anything else
    (step counters, scalars) is replicated."""
    by_path = {}
    for path, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]:
        by_path[_path_keys(path)] = s
    rep = replicated(mesh)

    def pick(path, leaf):
        keys = _path_keys(path)
        for n in range(len(keys)):
            s = by_path.get(keys[n:])
            if s is not None:
                return s
        return rep

    return jax.tree_util.tree_map_with_path(pick, tree_abstract)


def init_optimizer_state(optimizer, params, param_shardings, mesh: Mesh):
    """optimizer.init(params) created directly in its shardings; returns (state, shardings)."""
    abstract = jax.eval_shape(optimizer.init, params)
    shardings = like_params_shardings(abstract, param_shardings, mesh)
    return jax.jit(optimizer.init, out_shardings=shardings)(params), shardings


def batch_problems(sizes: dict[str, int], batch_shards: int, process_count: int = 1) -> list[str]:
    """For each named batch size that the mesh cannot split, one line naming the setting, the batch shards
    (data x fsdp) and processes it must divide into, and the nearest sizes that would work."""
    unit = batch_shards * process_count // math.gcd(batch_shards, process_count)
    problems = []
    for name, size in sizes.items():
        if size % unit:
            lower, upper = size // unit * unit, (size // unit + 1) * unit
            works = " or ".join(str(n) for n in (lower, upper) if n > 0)
            problems.append(
                f"{name}={size} must be a multiple of {unit} (batch shards data*fsdp={batch_shards}, "
                f"processes={process_count}): use {works}"
            )
    return problems
