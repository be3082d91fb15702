"""Compose with a trained run: `python sample.py [--workdir runs/default] [--out samples] ...`.

With no arguments: 4 samples of 8 bars from the latest checkpoint in runs/default, written to samples/ as
sample_XX.mid, sample_XX.png (piano roll) and sample_XX.wav (FluidSynth with a soundfont when installed, else
a built-in synth), and index.html, a page to look at and listen to them.
"""

from __future__ import annotations

import argparse
import sys

from musicgpt_jax import host_memory

EPILOG = """\
examples:
  python sample.py --workdir runs/default --out samples         # then open samples/index.html
  python sample.py --workdir runs/default --prime theme.mid --include_prime --bars 16 --seed 3
  python sample.py --workdir runs/default --melody tune.mid          # keep the tune, write the voices under it
  python sample.py --workdir runs/default --prime piece.mid --fill 5:6   # rewrite bars 5-6, keep the rest
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as every error of the project
        self.exit(2, f"{self.prog}: {message}\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    from musicgpt_jax import compose

    parser = _Parser(
        prog="sample.py", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="runs/default", help="run to restore (default: runs/default)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", default="samples", help="output folder (default: samples)")
    parser.add_argument("--num_samples", type=int, default=4, help="pieces, one batch (default: 4)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--bars",
        type=int,
        help="length in bars of the primer's time signature, else 4/4 (default: 8; with --melody/--keep: the file's)",
    )
    length.add_argument("--frames", type=int, help="length in frames (time steps) instead of bars")
    compose.add_strategy_flags(parser)
    parser.add_argument("--seed", type=int, default=0, help="same seed, same MIDI (default: 0)")
    parser.add_argument("--prime", help="a MIDI file to continue")
    parser.add_argument("--prime_bars", type=int, default=4, help="use the primer's last K bars (default: 4)")
    parser.add_argument("--include_prime", action="store_true", help="start the output with the primer")
    parser.add_argument("--bpm", type=float, help="tempo (default: the primer's, else 120)")
    kept = parser.add_mutually_exclusive_group()
    kept.add_argument("--melody", help="a MIDI file whose notes are all kept; the model writes the rest (harmonise)")
    kept.add_argument("--keep", help="a MIDI file of notes to keep, after --prime's bars when given")
    kept.add_argument("--fill", metavar="A:B", help="rewrite bars A..B of --prime, keeping every other note")
    args = parser.parse_args(argv)
    if args.bars is None and args.frames is None and not (args.melody or args.keep or args.fill):
        args.bars = 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from absl import logging  # Orbax logs its read-only notes as warnings; they are not ours to show

    from musicgpt_jax import compose

    logging.set_verbosity(logging.ERROR)

    options = compose.SampleOptions(**vars(args))
    try:
        compose.sample_run(options)
    except compose.INPUT_ERRORS as error:
        print(f"sample.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    host_memory.reexec_with_malloc_tuning()
    sys.exit(main())
