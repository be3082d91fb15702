"""Multi-host start-up: JAX's multi-controller runtime, from flags, the environment, or a TPU VM's metadata.

- TPU VMs (a pod slice of several hosts): `jax.distributed.initialize()` finds everything by itself.
- GPU clusters and tests: `--coordinator_address HOST:PORT --num_processes N --process_id I`, or the
  environment variables `MUSICGPT_COORDINATOR_ADDRESS`, `MUSICGPT_NUM_PROCESSES`, `MUSICGPT_PROCESS_ID`.
- Otherwise: a single process, nothing to do.

CPU processes use gloo collectives. An unreachable coordinator fails after `MUSICGPT_INIT_TIMEOUT` seconds
(default 60) with one clear line rather than hanging.
"""

from __future__ import annotations

import os


class DistributedError(RuntimeError):
    """Bad or unreachable multi-host settings; the message is one line."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"${name}={value!r} is not an integer") from None


def _on_tpu_pod() -> bool:
    """A multi-host TPU VM slice advertises its workers in the environment set up by the TPU runtime."""
    hostnames = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hostnames


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int | None = None) -> bool:
    """Start the multi-controller runtime if this is a multi-process run; True when it was started."""
    import jax

    coordinator_address = coordinator_address or os.environ.get("MUSICGPT_COORDINATOR_ADDRESS")
    num_processes = num_processes if num_processes is not None else _env_int("MUSICGPT_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("MUSICGPT_PROCESS_ID")
    timeout_s = timeout_s or _env_int("MUSICGPT_INIT_TIMEOUT") or 60

    explicit = [coordinator_address, num_processes, process_id]
    if all(v is None for v in explicit):
        if _on_tpu_pod():
            jax.distributed.initialize()
            return True
        return False
    if any(v is None for v in explicit):
        raise DistributedError("multi-host needs all of --coordinator_address, --num_processes and "
                               f"--process_id (got {coordinator_address!r}, {num_processes!r}, {process_id!r})")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise DistributedError(f"--process_id {process_id} is not in [0, --num_processes {num_processes})")
    if ":" not in coordinator_address:
        raise DistributedError(f"--coordinator_address {coordinator_address!r} is not HOST:PORT")
    if num_processes == 1:
        return False
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    except Exception as error:  # noqa: BLE001 - the runtime raises several types; all mean the same here
        reason = " ".join(str(error).split())[:200]
        raise DistributedError(f"could not join the coordinator at {coordinator_address} as process "
                               f"{process_id} of {num_processes} within {timeout_s} s ({reason})") from None
    if jax.process_count() != num_processes:
        raise DistributedError(f"--num_processes {num_processes} does not match the "
                               f"{jax.process_count()} processes that joined")
    return True
