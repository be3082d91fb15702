"""Frame NLL of a trained run on a whole split, in the polyphonic benchmark's unit: nats per frame.

    python -m musicgpt_jax.evaluate [--workdir runs/default] [--step N] [--data_dir DIR --dataset NAME] [--split test]
                                    [--unconditioned]

scores the validation split unless `--split` names another (test: once, for a reported figure), and prints
one JSON object: `nats_per_frame` = Σ NLL / Σ frames pooled over every frame of every sequence of the split
(the convention of Boulanger-Lewandowski et al. 2012; a frame's NLL is the sum over all its pitches), `frames`,
`sequences`, the checkpoint `step`, `dataset`, `split`, and the window (`max_len`, `stride`) used. A model told the
key or composer (`conditioning`) is given each piece's true ones, or "unknown" for both with `--unconditioned`.

How a split is scored (the start frame, sliding windows, batching): docs/RESULTS.md, "How a split is scored".

`evaluate_nll(params, model_cfg, sequences, batch_size)` is the library entry (no checkpoint needed). Errors from
the command line are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from musicgpt_jax import cli, cloud, conditioning, dynamics, host_memory, records
from musicgpt_jax.checkpoint import CheckpointError
from musicgpt_jax.configs import Config, ModelConfig
from musicgpt_jax.dataset_card import SPLITS
from musicgpt_jax.frames import with_start_frame
from musicgpt_jax.model import MusicTransformer, frame_log_likelihood
from musicgpt_jax.orbax_logs import quiet_orbax
from musicgpt_jax.pipeline import plan_windows
from musicgpt_jax.saved_run import load_config_dict, restore_params


class EvaluationError(ValueError):
    """Bad input to an evaluation (sequences, shapes, options); the message is one line."""


def _as_states(item: Any) -> np.ndarray:
    states = item["states"] if isinstance(item, dict) else item
    return np.asarray(states)


def make_window_nll(model_cfg: ModelConfig) -> Callable:
    """jit(params, inputs (B, W, P), targets (B, W, P), input and target velocity bins (B, W, P) or None (a model
    without dynamics), mask (B, W), steps (B, W): the inputs' indices in their sequences, labels: {"key",
    "composer"} (B,) or {}) -> per-window (notes NLL sums, velocity NLL sums, scored onsets), each (B,) float32;
    the last two are 0 without dynamics."""
    model = MusicTransformer(model_cfg)

    @jax.jit
    def window_nll(params, inputs, targets, input_velocities, target_velocities, mask, steps, labels):
        out, _ = model.apply(
            {"params": params}, inputs, deterministic=True, velocities=input_velocities, steps=steps, **labels
        )
        nll = -frame_log_likelihood(out, targets, model_cfg, params)
        notes = jnp.sum(jnp.where(mask > 0, nll, 0.0), axis=-1)
        if target_velocities is None:
            return notes, jnp.zeros_like(notes), jnp.zeros_like(notes)
        per_window = jax.vmap(
            lambda o, t, v, m: dynamics.velocity_nll(o, t, v, m, model_cfg, params), in_axes=(0, 0, 0, 0)
        )
        velocity, onsets = per_window(out, targets, target_velocities, mask)
        return notes, velocity, onsets

    return window_nll


def _as_velocities(item: Any, states: np.ndarray) -> np.ndarray:
    velocities = item.get("velocities") if isinstance(item, dict) else None
    return np.zeros_like(states) if velocities is None else np.asarray(velocities)


def _item_labels(model_cfg: ModelConfig, item: Any, unconditioned: bool) -> dict[str, np.int32]:
    """A sequence's key and composer labels: its record's, or "unknown" (`unconditioned`, or a bare array)."""
    if unconditioned or not isinstance(item, dict):
        return conditioning.labels(model_cfg, None, None)
    return conditioning.item_labels(model_cfg, item)


def evaluate_nll(
    params: Any,
    model_cfg: ModelConfig,
    sequences: Iterable[Any],
    batch_size: int = 16,
    stride: int | None = None,
    unconditioned: bool = False,
) -> dict[str, Any]:
    """Nats per frame over `sequences` ((T, P) state arrays, or dicts with "states"), pooled Σ NLL / Σ frames.

    Returns {"nats_per_frame", "nll_sum", "frames", "sequences", "windows", "window", "stride"} (module doc),
    and for a model with dynamics {"velocity_nats_per_onset", "onsets"}, from the dicts' "velocities". A model
    told the key or composer gets the dicts' "key" and "composer", or "unknown" when `unconditioned`.
    """
    items = list(sequences)
    seqs = [_as_states(s) for s in items]
    if not seqs:
        raise EvaluationError("no sequences to evaluate")
    if batch_size < 1:
        raise EvaluationError(f"batch_size {batch_size}: must be at least 1")
    for i, s in enumerate(seqs):
        if s.ndim != 2 or s.shape[1] != model_cfg.num_pitches:
            raise EvaluationError(f"sequence {i}: shape {s.shape}, expected (frames, {model_cfg.num_pitches})")
        if s.size and (s.min() < 0 or s.max() >= model_cfg.num_states):
            raise EvaluationError(f"sequence {i}: states outside [0, {model_cfg.num_states})")
    lengths = [int(s.shape[0]) for s in seqs]
    stride = max(1, model_cfg.max_len // 2) if stride is None else stride
    if not 1 <= stride <= model_cfg.max_len:
        raise EvaluationError(f"stride {stride}: must be in [1, max_len={model_cfg.max_len}]")
    window = max(1, min(model_cfg.max_len, max(lengths)))
    stride = min(stride, window)  # only matters when some sequence is longer than the window
    plan = plan_windows(lengths, window, stride)
    padded = [with_start_frame(s.astype(np.int32)) for s in seqs]
    bins = model_cfg.velocity_bins
    if bins:  # the start frame has no onsets; velocity bins at each sequence's onsets
        velocity_bins = [
            dynamics.onset_velocity_bins(p, with_start_frame(_as_velocities(i, s)), bins)
            for p, i, s in zip(padded, items, seqs, strict=True)
        ]
    window_nll = make_window_nll(model_cfg)
    item_labels = [_item_labels(model_cfg, item, unconditioned) for item in items]

    total, velocity_total, onsets = 0.0, 0.0, 0.0
    for b in range(0, len(plan), batch_size):
        rows = plan[b : b + batch_size]
        states = np.zeros((batch_size, window + 1, model_cfg.num_pitches), np.int32)
        velocities = np.full(states.shape, dynamics.NO_VELOCITY, np.int32)
        mask = np.zeros((batch_size, window), np.float32)
        steps = np.zeros((batch_size, window), np.int32)
        labels = {name: np.zeros((batch_size,), np.int32) for name in item_labels[0]}
        for r, (seq, start, first, end) in enumerate(rows):
            for name, value in item_labels[seq].items():
                labels[name][r] = value
            steps[r] = np.arange(start, start + window)
            piece = padded[seq][start : start + window + 1]
            states[r, : piece.shape[0]] = piece
            if bins:
                velocities[r, : piece.shape[0]] = velocity_bins[seq][start : start + window + 1]
            mask[r, first:end] = 1.0
        given, scored = (velocities[:, :-1], velocities[:, 1:]) if bins else (None, None)
        sums = window_nll(params, states[:, :-1], states[:, 1:], given, scored, mask, steps, labels)
        notes, velocity_sums, onset_counts = (float(np.sum(np.asarray(x, np.float64)[: len(rows)])) for x in sums)
        total, velocity_total, onsets = total + notes, velocity_total + velocity_sums, onsets + onset_counts
    frames = sum(lengths)
    velocity = {}
    if bins:
        velocity = {"velocity_nats_per_onset": velocity_total / onsets if onsets else float("nan"), "onsets": onsets}
    return {
        **velocity,
        "nats_per_frame": total / frames if frames else float("nan"),
        "nll_sum": total,
        "frames": frames,
        "sequences": len(seqs),
        "windows": len(plan),
        "window": window,
        "stride": stride,
    }


def evaluate_run(
    workdir: str,
    step: int | None = None,
    data_dir: str | None = None,
    dataset: str | None = None,
    split: str = "validation",
    batch_size: int = 16,
    stride: int | None = None,
    unconditioned: bool = False,
) -> dict[str, Any]:
    """Restore a run's checkpoint (latest or `step`) and evaluate it on a split of its dataset (or another);
    `unconditioned`: with the key and composer "unknown" (`evaluate_nll`)."""
    if split not in SPLITS:
        raise EvaluationError(f"--split {split!r}: unknown split (known: {', '.join(SPLITS)})")
    config_dict, step = load_config_dict(workdir, step)
    cfg = Config.from_dict(config_dict)
    data_dir = data_dir or cfg.data.data_dir
    dataset = dataset or cfg.data.dataset
    info = records.load_info(data_dir, dataset)
    if (info.num_pitches, info.num_states) != (cfg.model.num_pitches, cfg.model.num_states):
        raise EvaluationError(
            f"--dataset {dataset}: {info.num_pitches} pitches x {info.num_states} states, but "
            f"the model in {workdir} has {cfg.model.num_pitches} x {cfg.model.num_states}"
        )
    if not info.split_sizes.get(split):
        raise EvaluationError(f"--split {split}: dataset {dataset} in {data_dir} has no sequences in it")
    sequences = records.load_split(data_dir, dataset, split)
    params = restore_params(workdir, cfg, step)
    items = [sequences[i] for i in range(len(sequences))]
    result = evaluate_nll(params, cfg.model, items, batch_size, stride, unconditioned)
    return {
        **result,
        "step": step,
        "dataset": dataset,
        "split": split,
        "data_dir": str(data_dir),
        "workdir": str(workdir),
        "max_len": cfg.model.max_len,
        "conditioned": conditioning.conditioned(cfg.model) and not unconditioned,
    }


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as every error of the project (argparse adds the usage)
        self.exit(2, f"{self.prog}: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m musicgpt_jax.evaluate",
        description="Frame NLL (nats per frame, pooled over every frame of a split) of a trained run; prints JSON.",
        epilog="Errors print one line on stderr and exit with status 2.\n\nexamples:\n"
        "  python -m musicgpt_jax.evaluate   # the run in runs/default, on its own dataset's validation split\n"
        "  python -m musicgpt_jax.evaluate --workdir runs/jsb --dataset jsb_chorales --split test\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir", default="runs/default", help="the run's directory, holds checkpoints/ (default: %(default)s)"
    )
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--data_dir", help="records directory (default: the one the run trained on)")
    parser.add_argument("--dataset", help="dataset name (default: the one the run trained on)")
    parser.add_argument(
        "--split",
        default="validation",
        help="train, validation or test (default: %(default)s; read test only for a final figure)",
    )
    parser.add_argument("--batch_size", type=_positive_int, default=16, help="windows per forward pass (default: 16)")
    parser.add_argument(
        "--stride", type=_positive_int, help="sliding-window stride for long sequences (default: max_len/2)"
    )
    parser.add_argument(
        "--unconditioned",
        action="store_true",
        help="tell a model trained with key or composer conditioning 'unknown' for both (default: the true ones)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_orbax()  # stderr holds only our line

    try:
        cloud.require_access(args.workdir, args.data_dir)
        result = evaluate_run(
            args.workdir,
            args.step,
            args.data_dir,
            args.dataset,
            args.split,
            args.batch_size,
            args.stride,
            args.unconditioned,
        )
    except (EvaluationError, CheckpointError, records.DatasetNotFoundError, cloud.CloudError) as error:
        return cli.fail("evaluate", " ".join(str(error).split()))
    print(json.dumps(result, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    host_memory.reexec_with_malloc_tuning()
    sys.exit(main())
