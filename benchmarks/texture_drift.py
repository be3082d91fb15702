"""Where does a sample's texture go wrong: in the model's one-step-ahead choices, or only once it runs on its own?

    python benchmarks/texture_drift.py --workdir W [--steps 500,1000,2000] [--temperatures 1.0,0.9]
        [--split validation] [--train_windows 64] [--num_samples 8] [--bars 32] [--seed 1] [--json PATH]

For each saved checkpoint step and each temperature it prints three rows of the same three texture figures:

- **held-out**: the split's own frames (after the first bar), and the first `--train_windows` windows of the
  training split (what the model was fitted to);
- **one step ahead**: the model's draw of every one of those frames given the true frames before it (teacher
  forced; a draw's note start is an ONSET, or a HOLD where the true previous frame is off);
- **free-running**: `--num_samples` pieces of `--bars` bars sampled as `sample.py` does, by bar range.

The figures: note starts per bar, notes sounding at once (mean over sounding frames) and the silent share of
frames. One step ahead near the data but free-running off means the error compounds (exposure bias); one step
ahead already off means the model's per-frame choices are off at that temperature or training length.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from long_samples import one_step_draws  # noqa: E402

from musicgpt_jax import cli, compose, frame_choice, generation, records  # noqa: E402
from musicgpt_jax.frames import HOLD, OFF, ONSET, Meter, frames_before, note_starts  # noqa: E402
from musicgpt_jax.orbax_logs import quiet_orbax  # noqa: E402
from musicgpt_jax.saved_run import restore_params  # noqa: E402

FIGURES = ("notes_per_bar", "sounding_at_once", "silent_share")


def texture(starts: np.ndarray, states: np.ndarray, steps_per_bar: int) -> dict:
    """The three figures of (..., P) frames whose note starts are `starts` (..., P)."""
    sounding = (np.asarray(states) != OFF).sum(axis=-1).ravel()
    frames = max(sounding.size, 1)
    return {
        "notes_per_bar": float(starts.sum() / frames * steps_per_bar),
        "sounding_at_once": float(sounding[sounding > 0].mean()) if (sounding > 0).any() else 0.0,
        "silent_share": float((sounding == 0).sum() / frames),
    }


def drawn_starts(drawn: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Note starts of one-step draws: each draw follows the true frame before it, not the previous draw."""
    previous = frames_before(truth)
    return (drawn == ONSET) | ((drawn == HOLD) & (previous == OFF))


def one_step_rows(workdir: str, cfg, step: int, sequences, temperature: float, seed: int, spb: int) -> dict:
    params = restore_params(workdir, cfg, step)
    choice = frame_choice.Strategy("temperature", temperature, 1.0).arrays()
    allowed = jnp.asarray(generation.keyboard_of(cfg, generation.grid_of(cfg)))
    truth, drawn = one_step_draws(params, cfg.model, choice, allowed, sequences, seed, spb)
    return {
        "held-out": texture(note_starts(truth, cfg.model.num_states), truth, spb),
        "one step ahead": texture(drawn_starts(drawn, truth), drawn, spb),
    }


def free_rows(workdir: str, cfg, step: int, temperature: float, args, spb: int) -> dict:
    """The figures of `--num_samples` free-running pieces of `--bars` bars, as `sample.py` draws them (no files)."""
    grid = generation.grid_of(cfg)
    params = restore_params(workdir, cfg, step)
    strategy = frame_choice.Strategy("temperature", temperature, 1.0)
    allowed = generation.keyboard_of(cfg, grid)
    key = jax.random.key(args.seed)
    pieces, _ = generation.generate_pieces(
        params, cfg.model, None, args.num_samples, args.bars * spb, key, strategy, allowed
    )
    starts = np.stack([note_starts(piece, cfg.model.num_states) for piece in pieces])
    rows = {}
    bounds = [b for b in (0, 4, 16) if b < args.bars] + [args.bars]
    for a, b in [*zip(bounds, bounds[1:], strict=False), (0, args.bars)]:
        name = "all bars" if (a, b) == (0, args.bars) else f"bars {a + 1}-{b}"
        window = slice(a * spb, b * spb)
        rows[f"free-running, {name}"] = texture(starts[:, window], pieces[:, window], spb)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.Parser(
        prog="texture_drift.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", help="comma-separated checkpoint steps (default: the latest)")
    parser.add_argument("--temperatures", default="1.0,0.9")
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--train_windows", type=int, default=64, help="training windows scored one step ahead")
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--bars", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH")
    return parser.parse_args(argv)


def training_windows(cfg, count: int) -> list[dict]:
    """The first `count` windows' worth of training sequences, cut to whole windows (a fixed, cheap sample)."""
    taken, frames = [], 0
    for item in records.load_split(cfg.data.data_dir, cfg.data.dataset, "train"):
        if frames >= count * cfg.model.max_len:
            break
        take = min(len(item["states"]), count * cfg.model.max_len - frames)
        taken.append({k: np.asarray(v)[:take] if np.ndim(v) else v for k, v in item.items()})
        frames += take
    return taken


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_orbax()
    cfg, latest = compose.load_config(args.workdir)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else [latest]
    temperatures = [float(t) for t in args.temperatures.split(",")]
    spb = Meter((), generation.grid_of(cfg).steps_per_quarter).steps_per_bar()
    held = list(records.load_split(cfg.data.data_dir, cfg.data.dataset, args.split))
    train = training_windows(cfg, args.train_windows)
    results = {}
    header = f"{'':44s}" + "".join(f"{name:>18s}" for name in FIGURES)
    for step in steps:
        for temperature in temperatures:
            rows = {}
            for label, sequences in ((args.split, held), ("train", train)):
                one_step = one_step_rows(args.workdir, cfg, step, sequences, temperature, args.seed, spb)
                rows.update({f"{name} ({label})": figures for name, figures in one_step.items()})
            rows.update(free_rows(args.workdir, cfg, step, temperature, args, spb))
            results[f"step {step}, T {temperature:g}"] = rows
            print(f"\n{args.workdir} step {step}, temperature {temperature:g}\n{header}")
            for name, figures in rows.items():
                print(f"  {name:42s}" + "".join(f"{figures[k]:18.3f}" for k in FIGURES))
            sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
