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

from musicgpt_jax.configs import Config, ConfigError

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
            mismatch = self.shape_mismatch(candidate, abstract_state)
            if mismatch is not None:  # another model's checkpoint, not a damaged one: no fallback, nothing moved
                raise CheckpointError(f"{self.directory / str(candidate)}: {mismatch}")
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

    def shape_mismatch(self, step: int, abstract_state: Any) -> str | None:
        """How the parameters stored at `step` differ from those `abstract_state` holds (the first difference,
        one line), or None. Checked before restoring: Orbax would fail on the first array, after starting
        background reads that print tracebacks at exit. Unreadable metadata gives None (restoring reports it)."""
        wanted = getattr(abstract_state, "params", None)
        if wanted is None:
            return None
        try:
            with ocp.StandardCheckpointer() as reader:
                stored = reader.metadata(self.directory / str(step) / "state").item_metadata["params"]
            stored = _shapes(stored)
        except Exception:  # noqa: BLE001 - any failure to read metadata: leave the verdict to the restore
            return None
        for path, shape in _shapes(wanted).items():
            if path not in stored:
                return f"parameter {path} of the model in its config is not in the checkpoint (another model's run?)"
            if stored[path] != shape:
                return (
                    f"parameter {path} has shape {stored[path]} in the checkpoint but {shape} in the model of "
                    "its config (another model's run?)"
                )
        return None

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


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"embed/table": shape, ...} of a tree of arrays, abstract arrays or Orbax array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    name = lambda key: str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))
    return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def load_config_dict(workdir: str | epath.Path, step: int | None = None) -> tuple[dict, int]:
    """The resolved config saved with a checkpoint (the latest, or `step`), and that step. CheckpointError when
    the step holds no config this version of the project can read (another program's checkpoint, say)."""
    directory = checkpoint_dir(workdir)
    if not directory.exists():
        raise CheckpointError(
            f"{workdir}: no checkpoints (expected {directory}); train first: python train.py --workdir {workdir}"
        )
    ckpt = Checkpointer(workdir, read_only=True, async_save=False)
    try:
        steps = ckpt.steps()
        if not steps:
            raise CheckpointError(f"{directory}: no checkpoints; train first: python train.py --workdir {workdir}")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(f"{directory}: no checkpoint at step {step} (have: {steps})")
        config_file = directory / str(step) / "config" / "metadata"
        try:
            config = json.loads(config_file.read_text()) if config_file.exists() else ckpt.read_config(step)
        except Exception as error:  # noqa: BLE001 - Orbax and json raise many types for a folder that is not ours
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            raise CheckpointError(
                f"{directory / str(step)}: not a checkpoint of this project (no readable config: {reason})"
            ) from None
    finally:
        ckpt.close()
    try:
        Config.from_dict(config)
    except (ConfigError, AttributeError, TypeError) as error:
        raise CheckpointError(f"{config_file}: a config this version cannot read ({error})") from None
    return config, step
