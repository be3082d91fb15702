"""Train the music Transformer: `python train.py [--config PRESET|PATH] [--workdir DIR] ...`.

With no arguments: prepares the default corpus if needed and trains the `tiny` preset into runs/default.
A workdir that already holds checkpoints resumes from the latest one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from musicgpt_jax import configs, host_memory

EPILOG = """\
Any --config.SECTION.FIELD=VALUE overrides a preset field, e.g. --config.train.learning_rate=3e-4
--config.model.num_layers=6. A workdir trained on another dataset is refused: give each dataset its own.

examples:
  python train.py --workdir runs/default                        # the tiny demo: Bach chorales, minutes on CPU
  python data/prepare.py --midi_dir ~/midi --dataset my_piano   # your own MIDI, then:
  python train.py --config small --dataset my_piano --workdir runs/my_piano
"""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument(
        "--config",
        default="tiny",
        help="preset name (tiny, small, base, large, jsb, "
        "nottingham, musedata, piano_midi) or a config .json (default: tiny)",
    )
    parser.add_argument("--workdir", default="runs/default", help="checkpoints, metrics and TensorBoard logs")
    parser.add_argument("--data_dir", help=f"where the prepared records are (default: {configs.DEFAULT_DATA_DIR})")
    parser.add_argument("--dataset", help=f"dataset name under --data_dir (default: {configs.DEFAULT_DATASET})")
    parser.add_argument("--steps", type=int, help="total training steps (overrides the preset)")
    parser.add_argument(
        "--mesh", help="device mesh, e.g. data=2,fsdp=2,tensor=1 (one size may be -1); default: all devices on fsdp"
    )
    parser.add_argument(
        "--coordinator_address", help="multi-host: HOST:PORT of process 0 (GPU clusters; automatic on TPU VMs)"
    )
    parser.add_argument("--num_processes", type=int, help="multi-host: number of processes")
    parser.add_argument("--process_id", type=int, help="multi-host: this process's index")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--data_log", help=argparse.SUPPRESS)  # diagnostic: FILE.process_I gets each batch's rows
    args, rest = parser.parse_known_args(argv)
    try:
        return args, configs.split_overrides(rest)
    except configs.ConfigError as error:
        parser.error(str(error))


def _dataset_ready(records, data_dir: str, name: str) -> bool:
    try:
        records.load_info(data_dir, name)
    except records.DatasetNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    from musicgpt_jax import distributed

    try:
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    except distributed.DistributedError as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 2

    from musicgpt_jax import records
    from musicgpt_jax.checkpoint import CheckpointError, quiet_orbax_errors
    from musicgpt_jax.sharding import MeshError
    from musicgpt_jax.train import TrainingError, train_and_evaluate

    try:
        cfg = configs.resolve(args.config, overrides)
    except configs.ConfigError as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 2
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    if args.dataset:
        cfg.data.dataset = args.dataset
    if args.steps is not None:
        cfg.train.steps = args.steps
    if args.mesh is not None:
        cfg.mesh = args.mesh

    default_data = (
        not args.data_dir
        and not args.dataset
        and cfg.data.data_dir == configs.DEFAULT_DATA_DIR
        and cfg.data.dataset == configs.DEFAULT_DATASET
    )
    if default_data and not _dataset_ready(records, cfg.data.data_dir, cfg.data.dataset):
        print("train.py: preparing the default corpus first (python data/prepare.py)", file=sys.stderr)
        prepare = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "prepare.py")
        if subprocess.call([sys.executable, prepare]) != 0:
            return 1

    import jax

    data_log = f"{args.data_log}.process_{jax.process_index()}" if args.data_log else None
    quiet_orbax_errors()  # a failed save is reported once, below, not as Orbax's tracebacks
    try:
        metrics = train_and_evaluate(cfg, args.workdir, progress=not args.no_progress, data_log=data_log)
    except (TrainingError, CheckpointError, MeshError, configs.ConfigError, records.DatasetNotFoundError) as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # metrics or TensorBoard files: a full disk, say
        print(f"train.py: {error.filename or args.workdir}: {error.strerror or error}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        print(
            f"train.py: stopped at step {metrics['step']} ({summary}); checkpoints in {args.workdir}/checkpoints",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    host_memory.reexec_with_malloc_tuning()
    code = main()
    if code:  # the error is reported, in one line: skip the teardown, where writers a full disk broke
        sys.stdout.flush()  # (a checkpoint's, TensorBoard's) would print tracebacks of their own
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
