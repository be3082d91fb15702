"""Reading a trained run back: the config saved with its checkpoints, and its state or parameters on one device
(what `sample.py`, `evaluate`, the benchmarks and a resume read)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
from etils import epath

from musicgpt_jax import sharding
from musicgpt_jax.checkpoint import Checkpointer, CheckpointError, _one_line, _warn, checkpoint_dir
from musicgpt_jax.configs import Config, ConfigError
from musicgpt_jax.model import MusicTransformer
from musicgpt_jax.orbax_logs import quiet_orbax_notes
from musicgpt_jax.train_state import abstract_train_state, evaluation_params, make_optimizer, train_state_shardings


def load_config_dict(workdir: str | epath.Path, step: int | None = None) -> tuple[dict, int]:
    """The resolved config saved with a checkpoint (`step`, or else the newest one whose config reads), and that
    step. CheckpointError when no such config can be read (another program's checkpoint, say)."""
    directory = checkpoint_dir(workdir)
    if not directory.exists():
        raise CheckpointError(
            f"{workdir}: no checkpoints (expected {directory}); train first: python train.py --workdir {workdir}"
        )
    with quiet_orbax_notes():  # Orbax warns that a read-only manager saves nothing: we know
        ckpt = Checkpointer(workdir, read_only=True, async_save=False)
    try:
        steps = ckpt.steps()
        if not steps:
            raise CheckpointError(f"{directory}: no checkpoints; train first: python train.py --workdir {workdir}")
        if step is not None and step not in steps:
            raise CheckpointError(f"{directory}: no checkpoint at step {step} (have: {steps})")
        config, step, config_file = _read_newest_config(ckpt, steps[::-1] if step is None else [step])
    finally:
        ckpt.close()
    try:
        Config.from_dict(config)
    except (ConfigError, AttributeError, TypeError) as error:
        raise CheckpointError(f"{config_file}: a config this version cannot read ({error})") from None
    return config, step


def _read_newest_config(ckpt: Checkpointer, candidates: list[int]) -> tuple[dict, int, epath.Path]:
    """(config, step, its file) of the first of `candidates` whose config reads (a damaged checkpoint's is skipped:
    restoring reports it); CheckpointError with the first one's reason when none does."""
    first_reason = ""
    for step in candidates:
        config_file = ckpt.directory / str(step) / "config" / "metadata"
        try:
            config = json.loads(config_file.read_text()) if config_file.exists() else ckpt.read_config(step)
        except Exception as error:  # noqa: BLE001 - Orbax and json raise many types for a folder that is not ours
            first_reason = first_reason or _one_line(error, 200)
            continue
        return config, step, config_file
    raise CheckpointError(
        f"{ckpt.directory / str(candidates[0])}: not a checkpoint of this project (no readable config: {first_reason})"
    )


def restore_state(
    workdir: str | epath.Path, cfg: Config, step: int | None = None, on_fallback: Callable[[str], None] = _warn
) -> tuple[Any, dict, int]:
    """(train state, data-iterator state, step) of a checkpoint (the latest that restores, or `step`) on one
    device, read-only: a damaged checkpoint is reported through `on_fallback` and left where it is."""
    mesh = sharding.make_mesh("", devices=jax.devices()[:1])
    model, tx = MusicTransformer(cfg.model), make_optimizer(cfg.train)
    target = abstract_train_state(train_state_shardings(model, tx, cfg, mesh), model, tx, cfg)
    with quiet_orbax_notes():  # Orbax warns that a read-only manager saves nothing: we know
        checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
    try:
        return checkpointer.restore(target, step, on_fallback)
    finally:
        checkpointer.close()


def restore_params(workdir: str | epath.Path, cfg: Config, step: int | None = None) -> Any:
    """The parameters of a checkpoint (the latest, or `step`) on one device — their moving average when training
    kept one (`train.ema_decay`); the rest of the optimizer state is dropped."""
    state, _, _ = restore_state(workdir, cfg, step)
    return evaluation_params(state)
