"""A process pool that gives every task a hard time limit.

`concurrent.futures` cannot stop a task once it runs, so one pathological input would hang a whole run. Here
each worker process holds one task at a time; a worker that overruns its deadline is killed and a fresh one
takes its place, and a worker that dies (a crash in C code, say) costs only its own task. Results come back as
they finish, tagged with the task's index. The `spawn` start method is used so that no lock held by a parent
thread (tqdm's monitor, a logging handler) is copied into a child.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

_READY = "ready"


@dataclass(frozen=True)
class TimedOut:
    """The task ran past its time limit and its worker was killed."""

    seconds: float


@dataclass(frozen=True)
class Failed:
    """The task raised, or its worker died; `reason` says which, in one line."""

    reason: str


def _serve(conn: Connection, fn: Callable[[Any], Any]) -> None:
    """Worker loop: announce readiness, then run tasks until told to stop (None)."""
    conn.send(_READY)
    while (task := conn.recv()) is not None:
        index, arg = task
        try:
            conn.send((index, True, fn(arg)))
        except Exception as error:  # noqa: BLE001 - any failure of one task is that task's result
            conn.send((index, False, " ".join(f"{type(error).__name__}: {error}".split())))


class _Worker:
    def __init__(self, ctx: Any, fn: Callable[[Any], Any]) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child_conn, fn), daemon=True)
        self.process.start()
        child_conn.close()  # so that the child's death shows here as EOF
        self.ready = False
        self.task: int | None = None
        self.started = 0.0

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except OSError:
                kill = True
        if kill:
            self.process.kill()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def run_with_deadline(
    fn: Callable[[Any], Any], args: Sequence[Any], *, workers: int, timeout_s: float
) -> Iterator[tuple[int, Any]]:
    """Yield `(index, fn(args[index]))` for every task as it completes, in completion order.

    A task that raised or whose worker died yields `Failed`; one that ran past `timeout_s` yields `TimedOut`.
    `fn` must be a module-level function and its arguments and results picklable. Workers are started lazily
    (never more than there are tasks) and all are stopped when the iterator ends or is closed.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    ctx = multiprocessing.get_context("spawn")
    pending = deque(enumerate(args))
    pool = [_Worker(ctx, fn) for _ in range(min(workers, len(pending)))]
    try:
        while pending or any(w.task is not None for w in pool):
            for worker in pool:
                if worker.ready and worker.task is None and pending:
                    worker.task, arg = pending.popleft()
                    worker.started = time.monotonic()
                    worker.conn.send((worker.task, arg))
            deadlines = [w.started + timeout_s for w in pool if w.task is not None]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for conn in wait([w.conn for w in pool], timeout=wait_s):
                worker = next(w for w in pool if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    worker.stop(kill=True)
                    if not worker.ready:  # respawning would fail the same way, forever
                        raise RuntimeError(
                            f"a worker process exited while starting (exit code {worker.process.exitcode})"
                        ) from None
                    pool.remove(worker)
                    if pending:
                        pool.append(_Worker(ctx, fn))
                    if worker.task is not None:
                        yield (
                            worker.task,
                            Failed(f"worker process died (exit code {worker.process.exitcode})"),
                        )
                    continue
                if message == _READY:
                    worker.ready = True
                    continue
                index, ok, value = message
                worker.task = None
                yield index, (value if ok else Failed(value))
            now = time.monotonic()
            for worker in [w for w in pool if w.task is not None and now - w.started >= timeout_s]:
                worker.stop(kill=True)
                pool.remove(worker)
                if pending:
                    pool.append(_Worker(ctx, fn))
                yield worker.task, TimedOut(timeout_s)
    finally:
        for worker in pool:
            worker.stop(kill=worker.task is not None)
