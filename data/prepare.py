"""Prepare training data: MIDI files (or a benchmark file) → TFDS ArrayRecord shards + manifest + card.

With no arguments: export music21's Bach chorales to data/default_corpus (once) and build `bach_chorales` into
data/records; a complete dataset built from the same files with the same options is left as it is.

    python data/prepare.py
    python data/prepare.py --midi_dir ~/midi --dataset my_piano [--workers 8]
    python data/prepare.py --midi_dir maestro-v3.0.0 --dataset maestro  # MAESTRO's own train/validation/test
    python data/prepare.py --benchmark ../shared/data/polyphonic/JSB_Chorales.mat
    python data/prepare.py --midi_dir ~/midi --dataset my_piano --data_dir gs://BUCKET/data  # the cloud extra

A gs:// --data_dir is built in a local scratch folder, then uploaded with its card last (the card marks a
dataset complete, so a reader never takes a half-uploaded one).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # runnable from a checkout without `pip install -e .`

from musicgpt_jax import configs  # noqa: E402 - standard library only: cheap for the spawned workers too

EPILOG = """\
Errors print one line on stderr and exit with status 2.

examples:
  python data/prepare.py                                    # the Bach chorales -> data/records/bach_chorales
  python data/prepare.py --midi_dir ~/midi --dataset my_piano  # then: python train.py --dataset my_piano ...
  python data/prepare.py --benchmark ../shared/data/polyphonic/JSB_Chorales.mat
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    sys.path.insert(0, str(REPO_ROOT))  # runnable from a checkout without `pip install -e .`
    from musicgpt_jax import cli

    parser = cli.Parser(
        prog="prepare.py",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--midi_dir",
        help="folder searched recursively for .mid/.midi/.kar files "
        "(default: the Bach chorales, exported to data/default_corpus)",
    )
    parser.add_argument(
        "--data_dir", default=configs.DEFAULT_DATA_DIR, help="where datasets are written (default: %(default)s)"
    )
    parser.add_argument(
        "--dataset",
        "--name",
        dest="dataset",
        help=f"dataset name, as train.py --dataset takes it (default: {configs.DEFAULT_DATASET}, the --midi_dir "
        "folder's name, or the benchmark's name, e.g. jsb_chorales; --name is the old spelling)",
    )
    parser.add_argument(
        "--steps_per_quarter",
        type=int,
        default=8,
        help="frames per quarter note (default: %(default)s = 32nds)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count(),
        help="conversion processes (default: all %(default)s cores)",
    )
    parser.add_argument(
        "--val_percent",
        type=float,
        default=configs.DEFAULT_SPLIT_PERCENT,
        help="percent of files in validation (default: %(default)s)",
    )
    parser.add_argument(
        "--test_percent",
        type=float,
        default=configs.DEFAULT_SPLIT_PERCENT,
        help="percent of files in test (default: %(default)s)",
    )
    parser.add_argument(
        "--hash_split",
        action="store_true",
        help="split by file hash even where --midi_dir holds MAESTRO's metadata (maestro-v*.csv/.json), "
        "whose split is used by default; files it does not list are split by hash either way",
    )
    parser.add_argument(
        "--metadata",
        metavar="CSV",
        help="each file's composer from this CSV (columns canonical_composer, midi_filename: the path under "
        "--midi_dir), instead of the MAESTRO metadata in --midi_dir, which is read by default",
    )
    parser.add_argument("--no_sustain_pedal", action="store_true", help="ignore CC64 (pedal) when reading MIDI")
    parser.add_argument("--include_drums", action="store_true", help="keep drum tracks (dropped by default)")
    parser.add_argument(
        "--max_frames",
        type=int,
        default=configs.DEFAULT_MAX_FRAMES,
        help="skip longer files as 'too long' (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=configs.DEFAULT_TIMEOUT_S,
        help="seconds allowed per file (default: %(default)s)",
    )
    parser.add_argument("--benchmark", metavar="FILE", help="import a polyphonic-benchmark .mat/.json file instead")
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical dataset exists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported here, not at the top: conversion workers are spawned processes that re-import this file.
    from musicgpt_jax import cli, cloud

    try:
        cloud.require_access(args.data_dir)
    except cloud.CloudError as error:
        return cli.fail("prepare.py", str(error))
    if cloud.is_remote(args.data_dir):
        return _build_and_upload(args)
    return _build(args, args.data_dir)


def _build_and_upload(args: argparse.Namespace) -> int:
    """Build into a local scratch folder, then upload the dataset to the gs:// --data_dir (unless the one there has
    the same fingerprint), its card last."""
    import tempfile

    from etils import epath

    from musicgpt_jax import cloud, records

    with tempfile.TemporaryDirectory(prefix="musicgpt-prepare-") as scratch:
        found: list = []
        code = _build(args, scratch, report=False, results=found)
        if code:
            return code
        (result,) = found
        remote = epath.Path(args.data_dir) / result.path.name
        try:
            there = records.load_card(args.data_dir, result.path.name)
        except records.DatasetNotFoundError:
            there = {}
        if there.get("fingerprint") == result.card.get("fingerprint") and not args.force:
            print(f"{remote}: up to date (same input files and options); nothing to do (--force rebuilds)")
            return 0
        if (remote / records.CARD_FILE).exists():
            (remote / records.CARD_FILE).unlink()  # first: from now on readers see no dataset there
        if remote.exists():
            remote.rmtree()
        cloud.upload_tree(result.path, remote, last=[records.CARD_FILE])
    print(result.summary())
    print(f"wrote {remote} (manifest: {remote / records.MANIFEST_FILE})")
    return 0


def _build(args: argparse.Namespace, data_dir: str, report: bool = True, results: list | None = None) -> int:
    """Build the dataset the flags ask for into local folder `data_dir`; its BuildResult appended to `results`."""
    from musicgpt_jax import corpus, records

    try:
        if args.benchmark:
            result = records.build_benchmark_dataset(args.benchmark, data_dir, args.dataset, force=args.force)
        else:
            if args.midi_dir is None:
                corpus.export_default_corpus(corpus.DEFAULT_CORPUS_DIR, workers=args.workers)
                midi_dir, name = corpus.DEFAULT_CORPUS_DIR, args.dataset or configs.DEFAULT_DATASET
            else:
                midi_dir, name = args.midi_dir, args.dataset or records.dataset_name_for(args.midi_dir)
            result = records.build_midi_dataset(
                midi_dir,
                data_dir,
                name,
                steps_per_quarter=args.steps_per_quarter,
                sustain_pedal=not args.no_sustain_pedal,
                include_drums=args.include_drums,
                val_percent=args.val_percent,
                test_percent=args.test_percent,
                max_frames=args.max_frames,
                timeout_s=args.timeout,
                workers=args.workers,
                force=args.force,
                use_metadata=not args.hash_split,
                composer_metadata=args.metadata,
            )
    except (records.InputError, corpus.BenchmarkFormatError) as error:
        print(f"prepare.py: {error}", file=sys.stderr)
        return 2
    if results is not None:
        results.append(result)
    if not report:
        return 0
    if not result.rebuilt:
        print(f"{result.path}: up to date (same input files and options); nothing to do (--force rebuilds)")
    print(result.summary())
    if result.rebuilt:
        print(f"wrote {result.path} (manifest: {result.path / records.MANIFEST_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
