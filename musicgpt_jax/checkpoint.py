"""Orbax checkpoints under WORKDIR/checkpoints: train state, data-iterator state and the resolved config.

Each step directory holds three items: `state` (params, optimizer state, step, RNG key; restored straight onto the
current mesh's shardings), `data` (the grain iterator state, JSON) and `config` (JSON, so `sample.py --workdir`
needs no other flag). Orbax writes to a temporary directory and renames it when complete, so a crash mid-save
leaves the previous checkpoint usable; a checkpoint that fails to restore (truncated or corrupted files) is
reported and the next older one is tried.

Multi-host: every process writes the shards it holds into the same step directory and process 0 commits it, so
WORKDIR must be one location all processes see (gs://, or a shared filesystem; a local folder when all processes
run on one machine, as in the tests).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """No usable checkpoint; the message is one line."""


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def checkpoint_dir(workdir: str | epath.Path) -> epath.Path:
    """WORKDIR/checkpoints; local paths made absolute (Orbax requires it), gs:// left as it is."""
    path = epath.Path(workdir)
    if "://" not in str(workdir):
        path = epath.Path(os.path.abspath(os.fspath(workdir)))
    return path / CHECKPOINT_DIR


class Checkpointer:
    """A thin layer over `ocp.CheckpointManager` with the project's three items and corruption fallback."""

    def __init__(self, workdir: str | epath.Path, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only, read_only=read_only
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "config"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, data_state: dict, config: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config)
            ),
            force=True,
        )

    def read_config(self, step: int) -> dict:
        restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored["config"])

    def restore(
        self, abstract_state: Any, step: int | None = None, on_fallback: Callable[[str], None] = _warn
    ) -> tuple[Any, dict, int]:
        """(state, data_state, step) from `step`, or from the newest checkpoint that restores cleanly."""
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"{self.directory}: no checkpoint at step {step} (have: {steps})")
            candidates = [step]
        else:
            candidates = steps[::-1]
        if not candidates:
            raise CheckpointError(f"{self.directory}: no checkpoints")
        for i, candidate in enumerate(candidates):
            try:
                restored = self.manager.restore(
                    candidate,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                    ),
                )
                return restored["state"], dict(restored["data"]), candidate
            except Exception as error:  # noqa: BLE001 - any failure to read means this checkpoint is unusable
                reason = " ".join(str(error).split())[:300] or type(error).__name__
                if i + 1 < len(candidates):
                    moved = self._quarantine(candidate)
                    on_fallback(
                        f"{self.directory / str(candidate)}: checkpoint unreadable ({reason}); "
                        f"moved to {moved}; falling back to step {candidates[i + 1]}"
                    )
                else:
                    raise CheckpointError(
                        f"{self.directory / str(candidate)}: checkpoint unreadable ({reason})"
                    ) from error
        raise AssertionError("unreachable")

    def _quarantine(self, step: int) -> epath.Path:
        """Move an unreadable checkpoint out of the way (kept for inspection) so training can save that step."""
        target = self.directory.parent / "corrupt_checkpoints" / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.rmtree()
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:  # the others must not reload before process 0 has moved it
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_config_dict(workdir: str | epath.Path, step: int | None = None) -> tuple[dict, int]:
    """The resolved config saved with a checkpoint (the latest, or `step`), and that step."""
    directory = checkpoint_dir(workdir)
    if not directory.exists():
        raise CheckpointError(
            f"{workdir}: no checkpoints (expected {directory}); train first: python train.py --workdir {workdir}"
        )
    ckpt = Checkpointer(workdir, read_only=True, async_save=False)
    steps = ckpt.steps()
    if not steps:
        raise CheckpointError(f"{directory}: no checkpoints; train first: python train.py --workdir {workdir}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"{directory}: no checkpoint at step {step} (have: {steps})")
    config_file = directory / str(step) / "config" / "metadata"
    if config_file.exists():
        return json.loads(config_file.read_text()), step
    return ckpt.read_config(step), step
