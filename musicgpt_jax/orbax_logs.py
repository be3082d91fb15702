"""The one place the storage libraries' own output is quieted (Orbax's notes and background tracebacks, gcsfs's
retries): their failures still reach the caller as exceptions, which the tools report in one line."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from typing import Any


def _from_orbax(text: str) -> bool:
    return "orbax" in text or "tensorstore" in text or "Event loop is closed" in text


class _QuietOrbaxErrors(logging.Filter):
    """Drops Orbax's error logs (tracebacks from its background threads, asyncio's "exception was never
    retrieved" for its tasks): each such failure also reaches `Checkpointer`, which reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        text = f"{record.pathname} {record.getMessage()}"
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        return not _from_orbax(text)


def quiet_orbax() -> None:
    """For command-line tools, the one place the storage libraries' own output is quieted: Orbax's notes and
    warnings (a read-only manager "saves nothing", ...), the errors its background work prints
    (`quiet_orbax_errors`), and gcsfs's logged tracebacks of each retry on an unreachable bucket. Failures still
    reach the caller as exceptions, reported in one line."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    quiet_orbax_errors()


def quiet_orbax_errors() -> None:
    """For command-line tools: drop the error output Orbax's background work prints when a save or restore
    fails (logged tracebacks, and TensorStore callbacks on a closed event loop); `Checkpointer` reports each such
    failure in one line instead."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietOrbaxErrors) for f in logger.filters):
            logger.addFilter(_QuietOrbaxErrors())
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        trace = "".join(traceback.format_tb(unraisable.exc_traceback))
        if not _from_orbax(f"{unraisable.exc_value!r} {unraisable.object!r} {trace}"):
            previous(unraisable)

    if getattr(previous, "__name__", "") != "_quiet_unraisable":
        hook.__name__ = "_quiet_unraisable"
        sys.unraisablehook = hook


@contextlib.contextmanager
def quiet_orbax_notes() -> Iterator[None]:
    """Orbax's notes and warnings dropped while the block runs, for library code (errors still show)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)
