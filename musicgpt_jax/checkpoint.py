"""Orbax checkpoints under WORKDIR/checkpoints: train state, data-iterator state and the resolved config.

Each step directory holds four items: `state` (params, optimizer state, step, RNG key; restored straight onto the
current mesh's shardings), `data` (the grain iterator state, JSON), `config` (JSON, so `sample.py --workdir`
needs no other flag) and `digest` (JSON: two checksums of every state array, `state_digest.py`). Orbax writes to a
temporary directory and renames it when complete, so a crash mid-save leaves the previous checkpoint usable.

A checkpoint that does not restore (a truncated or missing file, a missing item) or whose arrays do not match
their digest (flipped bytes can decode without error into other numbers) is skipped for the newest one that
does: one line each, and once a good one is found the bad ones are moved to WORKDIR/corrupt_checkpoints (kept,
never deleted; left in place by read-only readers). When none restores, nothing is moved. A save that fails (a
full disk) raises CheckpointError with one line naming the last good checkpoint.

Multi-host: every process writes the shards it holds into the same step directory and process 0 commits it, so
WORKDIR must be one location all processes see (gs://, or a shared filesystem; a local folder when all processes
run on one machine, as in the tests).

Reading a run back (its config, its parameters) is `saved_run.py`; quieting Orbax's own output, `orbax_logs.py`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from musicgpt_jax import cloud
from musicgpt_jax.state_digest import digest_mismatch, state_digest

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """No usable checkpoint; the message is one line."""


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one short line (TensorStore's spec dump cut off)."""
    text = " ".join(str(error).split()).split(" See full TensorStore details")[0]
    return text[:limit] or type(error).__name__


def _no_space(error: BaseException) -> bool:
    """Whether a full disk is behind `error` (an OSError, or Orbax/TensorStore's message for one)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def checkpoint_dir(workdir: str | epath.Path) -> epath.Path:
    """WORKDIR/checkpoints; local paths made absolute (Orbax requires it), gs:// left as it is."""
    path = epath.Path(workdir)
    if "://" not in str(workdir):
        path = epath.Path(os.path.abspath(os.fspath(workdir)))
    return path / CHECKPOINT_DIR


class Checkpointer:
    """A thin layer over `ocp.CheckpointManager` with the project's four items, corruption fallback and one-line
    save errors."""

    def __init__(self, workdir: str | epath.Path, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only, read_only=read_only
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config", "digest")
        )
        self._pending: int | None = None  # the step of the last save started
        self._failed = False  # a save failure has been reported: later waits do not raise it again
        self._known_good = set(self.steps())  # for error messages when the store cannot be listed any more

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, data_state: dict, config: dict) -> None:
        """Start saving `step` (in the background when asynchronous). CheckpointError, one line, when this save or
        the previous one fails (a full disk, say); finished checkpoints are left as they are."""
        self.wait()  # Orbax would wait for the previous save here anyway; its failure is reported first
        self._check_room(step, state)
        digest = state_digest(state)
        with self._save_errors(step):
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state),
                    config=ocp.args.JsonSave(config),
                    digest=ocp.args.JsonSave(digest),
                ),
                force=True,
            )
        self._pending = step

    @contextlib.contextmanager
    def _save_errors(self, step: int | None) -> Iterator[None]:
        """Turn a failed save into CheckpointError naming the step, the reason and the last good checkpoint."""
        try:
            yield
        except Exception as error:
            self._failed = True
            text = _one_line(error, 200)
            match = re.search(r"/(\d+)\.orbax-checkpoint-tmp", text)
            finished = self._finished_steps()
            failed = int(match.group(1)) if match else self._pending if self._pending not in finished else step
            good = [s for s in finished if s != failed]
            reason = "no space left on device" if _no_space(error) else text
            raise CheckpointError(
                f"{self.directory}: could not save the checkpoint of step {failed} ({reason}); the last good "
                f"checkpoint is {f'step {good[-1]}' if good else 'none'}"
            ) from error

    def _check_room(self, step: int, state: Any) -> None:
        """CheckpointError before anything is written when a local disk has less room than the newest checkpoint
        takes (or, before the first, than the state's bytes), plus 1 MiB."""
        if "://" in str(self.directory):
            return
        finished = self._finished_steps()
        if finished:
            folder = os.fspath(self.directory / str(finished[-1]))
            need = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
        else:
            need = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
        need += 1 << 20
        free = shutil.disk_usage(self.directory).free
        if free < need:
            self._failed = True
            raise CheckpointError(
                f"{self.directory}: could not save the checkpoint of step {step} (no space left on device: "
                f"{free / 2**20:.1f} MiB free, about {need / 2**20:.1f} MiB needed); the last good checkpoint is "
                f"{f'step {finished[-1]}' if finished else 'none'}"
            )

    def _finished_steps(self) -> list[int]:
        """Finished checkpoints: step folders on disk (Orbax's temporary folders excluded), or in an object store
        the steps Orbax has committed; when the store cannot be read (a bucket gone), the ones this run knows."""
        try:
            if cloud.is_remote(self.directory):
                cloud.forget_listings(self.directory)
                self.manager.reload()
                return sorted(self.manager.all_steps())
            return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        except Exception:  # noqa: BLE001 - an unreachable store or a vanished folder: say what is known
            return sorted(self._known_good)

    def read_config(self, step: int) -> dict:
        restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored["config"])

    def restore(
        self, abstract_state: Any, step: int | None = None, on_fallback: Callable[[str], None] = _warn
    ) -> tuple[Any, dict, int]:
        """(state, data_state, step) from `step`, or from the newest checkpoint that restores and matches its
        digest. Each newer one that does not is reported in one line through `on_fallback` and (unless read-only)
        moved to WORKDIR/corrupt_checkpoints; when none restores, nothing is moved and CheckpointError is raised."""
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"{self.directory}: no checkpoint at step {step} (have: {steps})")
            candidates = [step]
        else:
            candidates = steps[::-1]
        if not candidates:
            raise CheckpointError(f"{self.directory}: no checkpoints")
        unreadable: list[tuple[int, str]] = []
        for candidate in candidates:
            mismatch = self.shape_mismatch(candidate, abstract_state)
            if mismatch is not None:  # another model's checkpoint, not a damaged one: no fallback, nothing moved
                raise CheckpointError(f"{self.directory / str(candidate)}: {mismatch}")
            try:
                state, data_state = self._restore_verified(candidate, abstract_state)
            except Exception as error:  # noqa: BLE001 - any failure to read means this checkpoint is unusable
                unreadable.append((candidate, _one_line(error)))
                continue
            for bad, reason in unreadable:
                moved = "" if self.read_only else f"moved to {self._quarantine(bad)}; "
                on_fallback(
                    f"{self.directory / str(bad)}: checkpoint unreadable ({reason}); {moved}falling back to step "
                    f"{candidate}"
                )
            return state, data_state, candidate
        newest, reason = unreadable[0]
        others = f"; the {len(unreadable) - 1} older ones do not restore either" if len(unreadable) > 1 else ""
        raise CheckpointError(f"{self.directory / str(newest)}: checkpoint unreadable ({reason}){others}")

    def _restore_verified(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state, data_state) of `step` with every item read and the arrays checked against their digest
        (checkpoints written before digests existed are taken as they are)."""
        items = {
            "state": ocp.args.StandardRestore(abstract_state),
            "data": ocp.args.JsonRestore(),
            "config": ocp.args.JsonRestore(),
        }
        has_digest = (self.directory / str(step) / "digest").exists()
        if has_digest:
            items["digest"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        mismatch = digest_mismatch(restored["state"], dict(restored["digest"])) if has_digest else None
        if mismatch is not None:
            raise CheckpointError(mismatch)
        return restored["state"], dict(restored["data"])

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
        """Move an unreadable checkpoint to WORKDIR/corrupt_checkpoints/STEP (STEP.1, STEP.2, ... when taken),
        kept for inspection and never deleted, so training can save that step again."""
        target = self.directory.parent / "corrupt_checkpoints" / str(step)
        copies = 0
        while target.exists():
            copies += 1
            target = target.parent / f"{step}.{copies}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            cloud.move(self.directory / str(step), target)  # in an object store: copy, check, then delete
        self._known_good.discard(step)
        if jax.process_count() > 1:  # the others must not reload before process 0 has moved it
            multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
        if cloud.is_remote(self.directory):
            cloud.forget_listings(self.directory)
        self.manager.reload()
        return target

    def wait(self) -> None:
        """Wait for the save in flight; CheckpointError (one line) if it failed."""
        with self._save_errors(self._pending):
            self.manager.wait_until_finished()
        if self._pending is not None:
            self._known_good.add(self._pending)

    def close(self) -> None:
        """Finish the save in flight and release the manager; a failure already reported is not raised again."""
        reported = self._failed
        try:
            self.wait()
        except CheckpointError:
            if not reported:
                raise
        finally:
            try:
                self.manager.close()
            except Exception:
                if not self._failed:
                    raise


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"embed/table": shape, ...} of a tree of arrays, abstract arrays or Orbax array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    name = lambda key: str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))
    return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}
