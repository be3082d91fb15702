"""Preprocessing speed on the default corpus: files/s and frames/s with 1 worker and all workers, and ratio.

Each run is a full build (hash, convert in the pool, write shards, manifest, card) into a scratch folder; the
default corpus is exported first if it is not there yet (not timed). Shard writing is serial, so the ratio
stays below the number of cores.

    python benchmarks/prepare_speed.py [--workers N]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without `pip install -e .`


def timed_build(midi_dir: str, workers: int) -> tuple[float, int, int]:
    """Seconds, converted files and frames of one build with `workers` processes."""
    from musicgpt_jax import records

    with tempfile.TemporaryDirectory() as data_dir:
        start = time.perf_counter()
        result = records.build_midi_dataset(midi_dir, data_dir, "speed", workers=workers, progress=False)
        seconds = time.perf_counter() - start
    return seconds, result.card["files"]["converted"], result.card["frames"]


def main() -> None:
    from musicgpt_jax import cli

    parser = cli.Parser(prog="prepare_speed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="the 'all workers' run")
    args = parser.parse_args()
    from musicgpt_jax import corpus

    corpus.export_default_corpus(corpus.DEFAULT_CORPUS_DIR)
    rates = {}
    for workers in (1, args.workers):
        seconds, files, frames = timed_build(corpus.DEFAULT_CORPUS_DIR, workers)
        rates[workers] = files / seconds
        print(
            f"workers={workers:<3d} {files} files, {frames:,} frames in {seconds:.2f} s: "
            f"{files / seconds:.1f} files/s, {frames / seconds:,.0f} frames/s"
        )
    print(f"speed-up with {args.workers} workers: {rates[args.workers] / rates[1]:.2f}x (on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
