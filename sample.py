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
  python sample.py --workdir runs/piano --key "D minor" --composer "Frédéric Chopin"
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    from musicgpt_jax import cli, compose, frames

    parser = cli.Parser(
        prog="sample.py", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = compose.SampleOptions()  # every flag's default is the options' own
    parser.add_argument("--workdir", default=default.workdir, help="run to restore (default: %(default)s)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", default=default.out, help="output folder (default: %(default)s)")
    parser.add_argument(
        "--num_samples", type=int, default=default.num_samples, help="pieces, one batch (default: %(default)s)"
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--bars",
        type=int,
        help=f"length in bars of the primer's time signature, else 4/4 (default: {default.bars}; with --melody or "
        "--keep: the file's)",
    )
    length.add_argument("--frames", type=int, help="length in frames (time steps) instead of bars")
    compose.add_strategy_flags(parser)
    parser.add_argument("--seed", type=int, default=default.seed, help="same seed, same MIDI (default: %(default)s)")
    parser.add_argument("--prime", help="a MIDI file to continue")
    parser.add_argument(
        "--prime_bars", type=int, default=default.prime_bars, help="use the primer's last K bars (default: %(default)s)"
    )
    parser.add_argument("--include_prime", action="store_true", help="start the output with the primer")
    parser.add_argument("--bpm", type=float, help=f"tempo (default: the primer's, else {frames.DEFAULT_TEMPO:g})")
    parser.add_argument(
        "--key",
        help='the key to write in, e.g. "D minor", "F# major", "Bb minor" (a model trained with '
        "model.condition_on_key; default: unknown, as the model chooses)",
    )
    parser.add_argument(
        "--composer",
        help="write in this composer's manner: one of the names the model was trained with (model.composers; "
        "default: unknown)",
    )
    kept = parser.add_mutually_exclusive_group()
    kept.add_argument("--melody", help="a MIDI file whose notes are all kept; the model writes the rest (harmonise)")
    kept.add_argument("--keep", help="a MIDI file of notes to keep, after --prime's bars when given")
    kept.add_argument("--fill", metavar="A:B", help="rewrite bars A..B of --prime, keeping every other note")
    args = parser.parse_args(argv)
    if args.bars is None and args.frames is None and not (args.melody or args.keep or args.fill):
        args.bars = default.bars
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from musicgpt_jax import cli, cloud, compose
    from musicgpt_jax.orbax_logs import quiet_orbax

    quiet_orbax()
    try:
        cloud.require_access(args.workdir)
    except cloud.CloudError as error:
        return cli.fail("sample.py", str(error))
    if cloud.is_remote(args.out):
        return cli.fail("sample.py", f"--out {args.out}: samples go to a local folder (copy them up after)")

    options = compose.SampleOptions(**vars(args))
    try:
        compose.sample_run(options)
    except compose.ConditionError as error:
        return cli.fail("sample.py", str(error))
    except compose.INPUT_ERRORS as error:
        print(f"sample.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    host_memory.reexec_with_malloc_tuning()
    sys.exit(main())
