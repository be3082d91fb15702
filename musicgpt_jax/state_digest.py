"""Checksums of a train state's arrays, saved beside each checkpoint: flipped bytes can decode without error into
other numbers, so a restored state is checked against the digest saved with it. The same on any mesh."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _as_uint32(x: jax.Array) -> jax.Array:
    """The bit patterns of `x` as uint32 (8-byte types gain a trailing axis of 2)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_sums(x: jax.Array) -> jax.Array:
    """(2,) uint32: sums over the elements' bit patterns b_i, weighted by their flat index i: sum b_i (2i + 1) and
    sum rot16(b_i) (i * 0x9E3779B1 | 1). A change of one element changes the first (odd weights), and integer sums
    wrap around, so the order of summation, hence the sharding, does not matter."""
    bits = _as_uint32(jnp.asarray(x))
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride & 0xFFFFFFFF)
        stride *= bits.shape[axis]
    rotated = (bits << 16) | (bits >> 16)
    first = jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)
    second = jnp.sum(rotated * ((index * jnp.uint32(0x9E3779B1)) | 1), dtype=jnp.uint32)
    return jnp.stack([first, second])


_tree_sums = jax.jit(lambda leaves: [_leaf_sums(x) for x in leaves])


def state_digest(state: Any) -> dict[str, str]:
    """{leaf path: "DTYPE:SUMS"} for every array of `state` (see `_leaf_sums`); the same on any mesh."""
    paths_leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    digest = {}
    for (path, leaf), sums in zip(paths_leaves, _tree_sums([leaf for _, leaf in paths_leaves]), strict=True):
        hex_sums = "".join(f"{int(v):08x}" for v in np.asarray(sums.addressable_data(0)))
        digest[jax.tree_util.keystr(path)] = f"{leaf.dtype}:{hex_sums}"
    return digest


def digest_mismatch(state: Any, saved: dict[str, str]) -> str | None:
    """The first array of `state` whose digest differs from the saved one (same dtype only), or None."""
    for path, value in state_digest(state).items():
        if path in saved and saved[path] != value and saved[path].split(":")[0] == value.split(":")[0]:
            return f"array {path} does not match the digest saved with it (changed bytes)"
    return None
