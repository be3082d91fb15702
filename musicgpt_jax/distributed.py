"""Multi-host start-up: JAX's multi-controller runtime, from flags, the environment, or a TPU VM's metadata.

- TPU VMs (a pod slice of several hosts): `jax.distributed.initialize()` finds everything by itself.
- GPU clusters and tests: `--coordinator_address HOST:PORT --num_processes N --process_id I`, or the
  environment variables `MUSICGPT_COORDINATOR_ADDRESS`, `MUSICGPT_NUM_PROCESSES`, `MUSICGPT_PROCESS_ID`.
- Otherwise: a single process, nothing to do.

CPU processes use gloo collectives. An unreachable coordinator fails after `MUSICGPT_INIT_TIMEOUT` seconds
(default 60) with one clear line rather than hanging: processes other than 0 first wait for the coordinator's port
to accept connections themselves, because the runtime aborts the whole process (with a C++ stack trace) when it
cannot register, instead of raising. Process 0 likewise checks that it can bind the port. When the coordinator is
up but not every process joins in time, the runtime would abort the same way; a watchdog prints one line and exits
with status 2 first.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time


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


def _split_address(address: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" ("[v6addr]:PORT" too)."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"--coordinator_address {address!r} is not HOST:PORT")
    return host, int(port)


def _check_port_free(port: int) -> None:
    """Process 0 serves the coordinator on `port` (all interfaces): fail clearly if something holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            raise DistributedError(
                f"process 0 cannot serve the coordinator on port {port} "
                f"({error.strerror or error}); is another run using it?"
            ) from None


def _wait_for_coordinator(host: str, port: int, address: str, timeout_s: int, deadline: float) -> None:
    """Until `deadline`, try to connect to the coordinator's port (process 0 may start later than us)."""
    reason = "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return
        except OSError as error:
            reason = error.strerror or str(error) or type(error).__name__
        if time.monotonic() >= deadline:
            raise DistributedError(
                f"could not reach the coordinator at {address} within {timeout_s} s "
                f"({reason}); is process 0 running there?"
            )
        time.sleep(0.25)


def _give_up(message: str) -> None:
    """Watchdog: one line on stderr, then exit status 2 (the runtime is still blocked in C++)."""
    print(f"{os.path.basename(sys.argv[0]) or 'python'}: {message}", file=sys.stderr, flush=True)
    os._exit(2)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int | None = None,
) -> bool:
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
        raise DistributedError(
            "multi-host needs all of --coordinator_address, --num_processes and "
            f"--process_id (got {coordinator_address!r}, {num_processes!r}, {process_id!r})"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise DistributedError(f"--process_id {process_id} is not in [0, --num_processes {num_processes})")
    host, port = _split_address(coordinator_address)
    if num_processes == 1:
        return False
    deadline = time.monotonic() + timeout_s
    if process_id == 0:
        _check_port_free(port)
    else:
        _wait_for_coordinator(host, port, coordinator_address, timeout_s, deadline)
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # The runtime aborts the process (a C++ stack trace) when not every process joins in time, so a watchdog says
    # so in one line and exits first; the runtime's own timeout is set later than the watchdog's.
    remaining = max(1.0, deadline - time.monotonic())
    watchdog = threading.Timer(
        remaining,
        _give_up,
        (
            f"not all {num_processes} processes joined the coordinator at {coordinator_address} within "
            f"{timeout_s} s (this is process {process_id}); are the others running, with the same "
            "--coordinator_address and --num_processes?",
        ),
    )
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=round(remaining) + 30,
        )
    except Exception as error:  # noqa: BLE001 - the runtime raises several types; all mean the same here
        reason = " ".join(str(error).split())[:200]
        raise DistributedError(
            f"could not join the coordinator at {coordinator_address} as process "
            f"{process_id} of {num_processes} within {timeout_s} s ({reason})"
        ) from None
    finally:
        watchdog.cancel()
    if jax.process_count() != num_processes:
        raise DistributedError(
            f"--num_processes {num_processes} does not match the {jax.process_count()} processes that joined"
        )
    return True
