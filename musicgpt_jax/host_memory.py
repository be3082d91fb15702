"""Keep XLA:CPU's per-step scratch memory mapped between steps: glibc malloc settings, applied by re-executing.

XLA:CPU allocates a compiled step's temporaries as one block (150 MB for `tiny` at batch 16), from a worker thread's
malloc arena. glibc serves a block that size with a fresh `mmap` and unmaps it when the step ends, so every step
faults its whole scratch memory in again: 37,000 page faults per step, and tiny's step took 1.8 times as long on 2
cores (docs/PERFORMANCE.md). With one arena, no mmap and no trimming, the block is reused from the heap; transparent
huge pages cover the first touch. glibc reads these tunables only when a process starts, hence the re-exec.

The new process also gets `JAX_PLATFORMS=cpu` unless it names platforms itself. The settings apply only where the
CPU runs the model (an accelerator's step memory is its own). They are skipped when `GLIBC_TUNABLES` is already set
(a user's own choice is kept) or with `MUSICGPT_MALLOC_TUNING=0`.
"""

from __future__ import annotations

import glob
import os
import platform
import sys

MALLOC_TUNABLES = ":".join(
    (
        "glibc.malloc.arena_max=1",  # one arena: large blocks come from the heap, not a thread arena's mmap
        "glibc.malloc.mmap_max=0",  # never mmap a block; freed blocks are reused
        # Never hand the heap's top back to the kernel (2**62 bytes: a 4 GiB threshold still trimmed small's
        # 6.7 GiB block at batch 16 after every step).
        "glibc.malloc.trim_threshold=4611686018427387904",
        "glibc.malloc.hugetlb=1",  # transparent huge pages: 2 MB faults instead of 4 KB ones
    )
)
DISABLE_VARIABLE = "MUSICGPT_MALLOC_TUNING"


def accelerator_device_files() -> list[str]:
    """An NVIDIA GPU's or a TPU's device files (TPU v4: /dev/accel*, v5e and later: /dev/vfio/*)."""
    return glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/accel[0-9]*") + glob.glob("/dev/vfio/[0-9]*")


def accelerator_present() -> bool:
    """Whether JAX will run on a GPU or TPU here: JAX_PLATFORMS, else the device files of one."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() not in ("cpu", "")
    return bool(accelerator_device_files())


def malloc_tuning_wanted() -> bool:
    """Whether this process should run under `MALLOC_TUNABLES` (and does not yet)."""
    return (
        sys.platform == "linux"
        and platform.libc_ver()[0] == "glibc"
        and "GLIBC_TUNABLES" not in os.environ
        and os.environ.get(DISABLE_VARIABLE, "1") != "0"
        and not accelerator_present()
    )


def malloc_tuning_active() -> bool:
    return os.environ.get("GLIBC_TUNABLES") == MALLOC_TUNABLES


def reexec_with_malloc_tuning() -> None:
    """Replace this process by itself (same PID, arguments and interpreter flags) under `MALLOC_TUNABLES`.

    Call it first thing in a script's `__main__` block, before JAX allocates anything; a no-op where not wanted.
    """
    if not malloc_tuning_wanted():
        return
    env = {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES}
    # No accelerator here: say so to JAX too, which otherwise probes for a TPU through libtpu (installed for
    # `musicgpt_jax.aot`) and logs errors when there is none.
    env.setdefault("JAX_PLATFORMS", "cpu")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
