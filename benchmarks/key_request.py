"""Does a model trained with key conditioning write in the key it is asked for? And what does the key tell it?

    python benchmarks/key_request.py --workdir runs/piano [--split validation] [--keys "C major,A minor"]
        [--num_samples 4] [--bars 8] [--seed 0] [--json PATH]

For each requested key, samples `--num_samples` pieces of `--bars` bars told that key, and as many told nothing
(key and composer unknown); estimates the key of every 4-bar window of every sample (`keys.estimate_key`,
Krumhansl-Kessler) and prints the share of windows whose estimated key is the one asked for, conditioned vs
unconditioned (for the unconditioned samples: the share matching each key, the chance level of that key for this
model). Then the validation NLL of the same model given each piece's true key and composer vs both "unknown"
(`evaluate.evaluate_nll`). Runs in a couple of minutes on a CPU for a small model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from musicgpt_jax import cli, compose, conditioning, generation, keys, records  # noqa: E402
from musicgpt_jax.evaluate import evaluate_nll  # noqa: E402
from musicgpt_jax.orbax_logs import quiet_orbax  # noqa: E402
from musicgpt_jax.saved_run import restore_params  # noqa: E402

WINDOW_BARS = 4
DEFAULT_KEYS = "C major,A minor,D minor,Eb major"


def window_keys(states: np.ndarray, steps_per_bar: int, lowest_pitch: int) -> list[int]:
    """The estimated key of each whole 4-bar window of one piece (T, P); windows with no notes are left out."""
    size = WINDOW_BARS * steps_per_bar
    found = [keys.estimate_key(states[s : s + size], lowest_pitch) for s in range(0, len(states) - size + 1, size)]
    return [k for k in found if k != keys.UNKNOWN]


def share(found: list[int], key: int) -> float | None:
    return sum(k == key for k in found) / len(found) if found else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.Parser(
        prog="key_request.py", description=__doc__.split("\n\n")[0], tool="key_request",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--workdir", required=True, help="a run trained with model.condition_on_key")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--split", default="validation", help="split scored for the NLL (default: %(default)s)")
    parser.add_argument("--keys", default=DEFAULT_KEYS, help="comma-separated keys to ask for (default: %(default)s)")
    parser.add_argument("--num_samples", type=int, default=4, help="pieces per key, one batch (default: %(default)s)")
    parser.add_argument("--bars", type=int, default=8, help=f"bars per piece, >= {WINDOW_BARS} (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    parser.add_argument("--json", help="write the figures to this JSON file")
    compose.add_strategy_flags(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_orbax()
    if args.bars < WINDOW_BARS or args.num_samples < 1:
        return cli.fail("key_request", f"--bars {args.bars} --num_samples {args.num_samples}: need >= 4 and >= 1")
    try:
        cfg, step = compose.load_config(args.workdir, args.step)
        asked = [keys.parse_key(k) for k in args.keys.split(",") if k.strip()]
        conditioning.request(cfg.model, keys.key_name(asked[0]) if asked else None, None)
    except (ValueError, *compose.INPUT_ERRORS) as error:
        return cli.fail("key_request", " ".join(str(error).split()))
    grid = generation.grid_of(cfg)
    bar = generation.steps_per_bar(grid, None)
    params = restore_params(args.workdir, cfg, step)
    options = compose.SampleOptions(**compose.strategy_options(args))
    strategy = compose.strategy_of(options, cfg)
    allowed = generation.keyboard_of(cfg, grid) if args.keyboard == "corpus" else None

    def sample(labels: dict) -> list[int]:
        states, _ = generation.generate_pieces(
            params, cfg.model, None, args.num_samples, args.bars * bar, jax.random.key(args.seed), strategy, allowed,
            labels,
        )  # fmt: skip
        return [k for piece in states for k in window_keys(piece, bar, grid.lowest_pitch)]

    free = sample(conditioning.request(cfg.model, None, None))
    rows = []
    for key in asked:
        told = sample(conditioning.request(cfg.model, keys.key_name(key), None))
        rows.append({"key": keys.key_name(key), "conditioned": share(told, key), "unconditioned": share(free, key),
                     "windows": len(told)})  # fmt: skip
    percent = lambda x: "n/a" if x is None else f"{100 * x:5.1f}%"
    print(f"{args.workdir} step {step}: estimated key of each {WINDOW_BARS}-bar window equals the one asked for")
    print(f"{'key':<10} {'asked':>7} {'unknown':>8}  windows")
    for row in rows:
        print(f"{row['key']:<10} {percent(row['conditioned']):>7} {percent(row['unconditioned']):>8}  {row['windows']}")
    print(f"(unknown: {len(free)} windows of the samples told no key; the share of them in each key)")

    try:
        source = records.load_split(cfg.data.data_dir, cfg.data.dataset, args.split)
    except (records.DatasetNotFoundError, ValueError, KeyError) as error:
        return cli.fail("key_request", " ".join(str(error).split()))
    items = [source[i] for i in range(len(source))]
    nll = {
        name: evaluate_nll(params, cfg.model, items, unconditioned=unconditioned)["nats_per_frame"]
        for name, unconditioned in (("true key and composer", False), ("unknown", True))
    }
    print(f"{args.split} NLL, nats per frame: " + "; ".join(f"{name} {value:.4f}" for name, value in nll.items()))
    if args.json:
        figures = {"workdir": args.workdir, "step": step, "window_bars": WINDOW_BARS, "bars": args.bars,
                   "num_samples": args.num_samples, "seed": args.seed, "keys": rows, "unconditioned_windows": len(free),
                   "split": args.split, "nll": nll}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
