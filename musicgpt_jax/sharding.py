"""The device mesh and THE logical-axis rule table.

Model code names every parameter and activation axis logically (`embed`, `mlp`, `heads`, `batch`, ...);
`LOGICAL_AXIS_RULES` below is the only place that says which mesh axis each one is split over, so changing the
parallelism never touches model code.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or axes, or None = replicated). The order matters only for duplicates.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("pitch", None),
    ("state", None),
    ("nade", None),
    ("norm", None),
    ("layers", None),
    # decode cache
    ("cache_layers", None),
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", None),
    ("cache_heads", "tensor"),
    ("cache_head_dim", None),
)


class MeshError(ValueError):
    """A mesh spec that is malformed or does not fit the devices; one-line message."""


def parse_mesh(spec: str, num_devices: int) -> dict[str, int]:
    """`"data=2,fsdp=-1,tensor=1"` -> sizes for all three axes; one size may be -1 (all that is left).

    An empty spec puts every device on `fsdp`.
    """
    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    if not spec:
        sizes["fsdp"] = num_devices
        return sizes
    given: set[str] = set()
    for item in spec.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name not in sizes:
            raise MeshError(f"--mesh {spec}: '{item}' is not AXIS=SIZE with AXIS in {', '.join(MESH_AXES)}")
        if name in given:
            raise MeshError(f"--mesh {spec}: axis {name} is given twice")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise MeshError(f"--mesh {spec}: size '{value}' of {name} is not an integer") from None
        if sizes[name] == 0 or sizes[name] < -1:
            raise MeshError(f"--mesh {spec}: size of {name} must be positive or -1")
        given.add(name)
    wildcards = [k for k, v in sizes.items() if v == -1]
    if len(wildcards) > 1:
        raise MeshError(f"--mesh {spec}: only one axis may be -1")
    known = math.prod(v for v in sizes.values() if v != -1)
    if wildcards:
        if num_devices % known:
            raise MeshError(f"--mesh {spec}: {known} does not divide the {num_devices} devices")
        sizes[wildcards[0]] = num_devices // known
    elif known != num_devices:
        # Axes left out absorb nothing: the product must equal the device count.
        raise MeshError(f"--mesh {spec}: data*fsdp*tensor = {known}, but there are {num_devices} devices")
    return sizes


def make_mesh(spec: str = "", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: all, every process)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:
        device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except (AssertionError, ValueError, NotImplementedError):
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None]) -> NamedSharding:
    """The NamedSharding the rule table prescribes for one array's logical axes."""
    spec = nn.logical_to_mesh_axes(tuple(logical_axes), LOGICAL_AXIS_RULES)
    return NamedSharding(mesh, spec)


def tree_shardings(mesh: Mesh, logical_specs):
    """Map a pytree of logical PartitionSpecs (from `nn.get_partition_spec`) to NamedShardings."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch-major arrays: the leading axis over ("data", "fsdp"), the rest replicated."""
    return logical_sharding(mesh, ("batch",) + (None,) * (ndim - 1))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


@contextlib.contextmanager
def activate(mesh: Mesh) -> Iterator[None]:
    """Make `mesh` current and the rule table active, so the model's logical constraints take effect."""
    set_mesh = getattr(jax, "set_mesh", None) or jax.sharding.use_mesh
    with set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        yield
