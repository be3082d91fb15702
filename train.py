"""Train the music Transformer: `python train.py [--config PRESET|PATH] [--workdir DIR] ...`.

With no arguments: prepares the default corpus if needed and trains the `tiny` preset into runs/default.
A workdir that already holds checkpoints resumes from the latest one, with the config and dataset saved there
(`--workdir W` alone is enough); flags given explicitly still override it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from musicgpt_jax import cli, cloud, configs, host_memory

PROG = "train.py"
EPILOG = """\
presets (--config NAME):
{presets}

Any --config.SECTION.FIELD=VALUE overrides a preset field, e.g. --config.train.learning_rate=3e-4
--config.model.num_layers=6. A workdir trained on another dataset is refused: give each dataset its own.
`--workdir W` alone resumes W with the config and dataset saved in its checkpoints.

examples:
  python train.py --workdir runs/default                        # the tiny demo: Bach chorales, minutes on CPU
  python data/prepare.py --midi_dir ~/midi --dataset my_piano   # your own MIDI, then:
  python train.py --config small --dataset my_piano --workdir runs/my_piano
"""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    width = max(map(len, configs.PRESETS))
    presets = "\n".join(f"  {name:{width}}  {configs.SUMMARIES.get(name, '')}" for name in configs.PRESETS)
    parser = cli.Parser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG.format(presets=presets),
    )
    parser.add_argument(
        "--config",
        help="preset name (listed below) or a config .json (default: the workdir's saved config, else tiny)",
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
    return cli.parse_with_overrides(parser, argv)


def resolve_config(args: argparse.Namespace, overrides: list[str]) -> configs.Config:
    """The preset or .json `--config` names; without one, the config saved in the workdir's checkpoints (a resume),
    else `tiny`. The overrides apply on top either way. ConfigError or CheckpointError on a bad one."""
    from musicgpt_jax import checkpoint, saved_run

    if args.config is None and checkpoint.checkpoint_dir(args.workdir).exists():
        saved, step = saved_run.load_config_dict(args.workdir)
        print(f"{PROG}: resuming {args.workdir} with the config saved at step {step}", file=sys.stderr)
        cfg = configs.Config.from_dict(saved)
        return configs.apply_overrides(cfg, overrides)
    return configs.resolve(args.config or "tiny", overrides)


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
    from musicgpt_jax.checkpoint import CheckpointError
    from musicgpt_jax.orbax_logs import quiet_orbax
    from musicgpt_jax.sharding import MeshError
    from musicgpt_jax.train import TrainingError, train_and_evaluate

    try:
        cloud.require_access(args.workdir, args.data_dir)  # before the workdir's saved config is read
        cfg = resolve_config(args, overrides)
        cloud.require_access(cfg.data.data_dir)
    except (configs.ConfigError, CheckpointError, cloud.CloudError) as error:
        return cli.fail(PROG, str(error))
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
    quiet_orbax()  # a failed save is reported once, below, not as Orbax's tracebacks
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
