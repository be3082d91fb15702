"""Peak FLOP rates for MFU: datasheet numbers for accelerators, a measured dense-matmul rate for CPUs."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Dense bf16 peak per chip (FLOP/s), from vendor datasheets.
_PEAK_BF16 = {
    "h100": 989e12,
    "h200": 989e12,
    "a100": 312e12,
    "l4": 121e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,
    "tpu v6e": 918e12,
}


def measure_matmul_flops(size: int = 1024, dtype=jnp.float32, repeats: int = 5) -> float:
    """This device's dense matmul rate in FLOP/s: best of `repeats` jitted size×size products."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def peak_flops_per_device(device: jax.Device | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for one device."""
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    for name, flops in _PEAK_BF16.items():
        if name in kind:
            return flops, f"datasheet bf16 peak of {device.device_kind}"
    return measure_matmul_flops(), f"measured float32 matmul rate of {device.device_kind}"
