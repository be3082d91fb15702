"""Ahead-of-time compilation of the train step for a Cloud TPU topology, on a CPU host: memory per chip.

`python -m musicgpt_jax.aot --config base --topology v5e:2x4` answers "does this preset fit that slice?" before any
TPU is rented: libtpu describes the topology's chips (v4 and v5p as "megacore": one device per chip), the real train
step (`train_state`, `train_step`) is compiled for them, and XLA:TPU reports bytes per chip and FLOPs (counted with
the layer scan unrolled, `step_flops`), with an estimate of the time per 1,000 steps at an assumed share of the
chips' bf16 peak (`--utilization`), and of one H100's from the same FLOPs. What the numbers mean:
docs/PERFORMANCE.md, "Ahead-of-time compilation for TPU".
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from musicgpt_jax import cli, configs, sharding, train_state, train_step
from musicgpt_jax.configs import Config
from musicgpt_jax.model import MusicTransformer, count_params, flops_per_frame, model_inputs

GIB = 1024**3

# HBM per chip by TPU generation (Cloud TPU documentation); the topology name's prefix selects the row.
HBM_BYTES: dict[str, int] = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB}
# Datasheet dense bf16 peak FLOP/s per chip (Cloud TPU documentation; NVIDIA's H100 SXM datasheet).
PEAK_BF16_FLOPS: dict[str, float] = {"v4": 275e12, "v5e": 197e12, "v5p": 459e12, "v6e": 918e12}
H100_PEAK_BF16_FLOPS = 989e12
# The share of the peak the estimates assume for the executed FLOPs (XLA's count, remat recompute included): about
# what `base` reached on an H200 as the preset is (36.7% MFU by nanoGPT's count, x 1.27 for the recompute, 47%).
DEFAULT_UTILIZATION = 0.4
# Chip config libtpu needs for one device per chip (v4 and v5p have two TensorCores fused as a megacore).
_CHIP_CONFIG = {"v4": "megacore", "v5p": "megacore", "v5e": "default", "v6e": "default"}

# XLA:TPU's refusal of a program over HBM; the two phrasings seen in libtpu releases.
_OOM = (
    re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM"),
    re.compile(r"Used ([\d.]+)([KMGT]?) of [\d.]+[KMGT]? hbm"),
)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": GIB, "T": 1024**4}


class AOTError(ValueError):
    """A bad topology, mesh or batch for ahead-of-time compilation; the message is one line."""


@dataclasses.dataclass
class AOTReport:
    """What XLA:TPU says about one train step of `preset` on `topology`; bytes are per chip."""

    preset: str
    topology: str
    chips: int
    device_kind: str
    mesh: dict[str, int]
    batch_size: int
    seq_len: int
    num_params: int
    compiled: bool  # False: XLA:TPU refused the program for lack of HBM; only the total is known
    argument_bytes: int  # train state + batch shards
    output_bytes: int | None
    alias_bytes: int | None  # outputs written in place of the donated train state
    temp_bytes: int | None
    code_bytes: int | None
    total_bytes: int  # arguments + outputs - aliased + temporaries + code
    hbm_bytes: int
    fits: bool
    flops_per_step: float  # XLA's HLO cost analysis of the whole step (remat recompute and own samples included)
    flops_per_chip: float  # flops_per_step / chips
    model_flops_per_step: float  # nanoGPT's 6N + 12LdT per frame, for comparison
    tpu_program_flops_per_chip: float | None  # the compiled TPU program's own count: a loop body counts once
    compile_seconds: float
    # Estimates, not measurements: flops_per_step over `utilization` x the peak bf16 FLOP/s of the slice's chips,
    # and of one H100 (a FLOP count, not a compile for it). None in reports written before the fields existed.
    utilization: float | None = None
    estimated_seconds_per_1000_steps: float | None = None
    h100_estimated_seconds_per_1000_steps: float | None = None

    def verdict(self) -> str:
        need, has = self.total_bytes / GIB, self.hbm_bytes / GIB
        fits = "fits" if self.fits else "does not fit"
        return f"{self.preset} on {self.topology}: needs {need:.2f} GiB per chip, the chip has {has:.0f} GiB — {fits}"


def generation(topology: str) -> str:
    """'v5e:2x4' -> 'v5e'; an unknown generation is an AOTError."""
    name = topology.partition(":")[0].lower()
    if name not in HBM_BYTES or ":" not in topology:
        raise AOTError(
            f"--topology {topology}: expected GENERATION:SHAPE with GENERATION in "
            f"{', '.join(HBM_BYTES)}, e.g. v5e:2x4 or v4:2x2x1"
        )
    return name


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """libtpu prints metadata-server warnings on fd 2 when it loads on a host without a TPU; hide them."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def require_libtpu() -> None:
    """libtpu (the `aot` extra) describes TPU chips; without it, an AOTError naming the extra to install."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise AOTError(
            "libtpu is not installed: pip install -e '.[aot]' (the `aot` extra) to compile for a TPU topology"
        ) from None


def topology_devices(topology: str) -> list[jax.Device]:
    """Compile-only devices, one per chip, of a Cloud TPU topology such as 'v5e:2x4' or 'v5p:2x2x1'."""
    from jax.experimental import topologies

    gen = generation(topology)
    require_libtpu()
    # Compile-only use needs no exclusive hold on TPU chips: without this, libtpu's lockfile lets one process
    # on the host load it at a time, so two AOT runs (or a test beside a CLI run) would fail.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        with _stderr_silenced():
            desc = topologies.get_topology_desc(
                platform="tpu", topology_name=topology, chip_config_name=_CHIP_CONFIG[gen]
            )
    except Exception as error:  # libtpu raises JaxRuntimeError (or RuntimeError when libtpu is missing)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AOTError(f"--topology {topology}: {reason}") from None
    return list(desc.devices)


def abstract_batch(cfg: Config, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch train.py feeds (`pipeline.window_example` rows), sharded as `train_step.global_batch`."""
    b, t, p = cfg.train.batch_size, cfg.model.max_len, cfg.model.num_pitches
    shapes = {
        "inputs": ((b, t, p), jnp.int32),
        "targets": ((b, t, p), jnp.int32),
        "mask": ((b, t), jnp.float32),
        "transposition": ((b,), jnp.int32),
        "steps": ((b, t), jnp.int32),
    }
    if cfg.model.velocity_bins:  # dynamics: the velocity bins beside the states (`pipeline.bin_velocities`)
        shapes.update(input_velocities=((b, t, p), jnp.int32), target_velocities=((b, t, p), jnp.int32))
    return {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))
        for k, (shape, dtype) in shapes.items()
    }


def _bytes(value: str, unit: str) -> int:
    return int(float(value) * _UNITS[unit])


def _shard_bytes(tree: Any) -> int:
    """Bytes one chip holds of a pytree of sharded ShapeDtypeStructs (its largest shard of each leaf)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def step_flops(cfg: Config) -> float:
    """XLA's FLOP count of one whole train step (all chips together), from HLO cost analysis.

    XLA counts a loop body once, whatever its trip count, so the count is taken from the same step with the
    layer scan unrolled and gradient accumulation off (same frames, same matmuls): lowered, not compiled, on
    the host's backend. It counts neither branch of a `lax.cond`, so with scheduled sampling the forward pass
    that draws the model's own samples (`train_step.with_own_samples`, every step after its start) is counted
    apart and added.
    """
    cfg = for_tpu(cfg)
    flat_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, scan_layers=False), train=dataclasses.replace(cfg.train, grad_accum=1)
    )
    model = MusicTransformer(flat_cfg.model)
    tx = train_state.make_optimizer(flat_cfg.train)
    mesh = sharding.make_mesh("", jax.devices()[:1])  # global shapes: the count is for the whole step
    state_shardings = train_state.train_state_shardings(model, tx, flat_cfg, mesh)
    state = train_state.abstract_train_state(state_shardings, model, tx, flat_cfg)
    batch = abstract_batch(flat_cfg, mesh)
    lowered = jax.jit(train_step.make_train_step(model, tx, 1, flat_cfg.train)).lower(state, batch)
    flops = float((lowered.cost_analysis() or {}).get("flops", 0.0))
    if flat_cfg.train.scheduled_sampling > 0:

        def own_samples(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
            extra = model_inputs(batch)
            return train_step.with_own_samples(model, params, batch["inputs"], jax.random.key(0), 0.5, **extra)

        lowered = jax.jit(own_samples).lower(state.params, batch)
        flops += float((lowered.cost_analysis() or {}).get("flops", 0.0))
    return flops


def for_tpu(cfg: Config) -> Config:
    """A copy of `cfg` whose automatic choices are the ones a TPU host would make (this host is a CPU)."""
    cfg = copy.deepcopy(cfg)
    if cfg.model.attention == "auto":
        cfg.model.attention = "xla"
    return cfg


def seconds_per_1000_steps(flops_per_step: float, chips: int, peak_flops: float, utilization: float) -> float:
    """An estimate: 1,000 steps of `flops_per_step` on `chips` chips running at `utilization` of `peak_flops`."""
    return 1000 * flops_per_step / (chips * peak_flops * utilization)


def compile_train_step(cfg: Config, topology: str, utilization: float = DEFAULT_UTILIZATION) -> AOTReport:
    """Compile `cfg`'s train step for `topology` on this host and report memory per chip, FLOPs, and the time per
    1,000 steps estimated at `utilization` of the chips' (and of one H100's) peak bf16 FLOP/s."""
    if not 0 < utilization <= 1:
        raise AOTError(f"--utilization {utilization}: must be in (0, 1]")
    cfg = for_tpu(cfg)
    gen = generation(topology)
    devices = topology_devices(topology)
    try:
        mesh = sharding.make_mesh(cfg.mesh, devices)
    except sharding.MeshError as error:
        raise AOTError(f"{error} (on the {len(devices)} chips of {topology})") from None
    dp = sharding.data_parallel_size(mesh)
    tcfg = cfg.train
    if tcfg.batch_size % (dp * tcfg.grad_accum):
        raise AOTError(
            f"--batch_size {tcfg.batch_size} must be divisible by data*fsdp={dp} times grad_accum={tcfg.grad_accum}"
        )

    model = MusicTransformer(cfg.model)
    tx = train_state.make_optimizer(tcfg)
    state_shardings = train_state.train_state_shardings(model, tx, cfg, mesh)
    abstract_state = train_state.abstract_train_state(state_shardings, model, tx, cfg)
    batch = abstract_batch(cfg, mesh)
    # As in train.py's loop: the same step function, shardings and donation, traced under the rules.
    step_fn = train_step.jit_train_step(model, tx, tcfg.grad_accum, state_shardings, tcfg)
    start = time.perf_counter()
    with sharding.activate(mesh):
        lowered = step_fn.lower(abstract_state, batch)
    memory: dict[str, int | None] = {
        "argument": _shard_bytes((abstract_state, batch)),
        "output": None,
        "alias": None,
        "temp": None,
        "code": None,
    }
    tpu_flops = None
    try:
        with _stderr_silenced(), warnings.catch_warnings():
            # JAX's persistent cache (if a process turned it on) stores compile-only executables but cannot load
            # them back without a TPU client: it warns and compiles again, which is what happens anyway.
            warnings.filterwarnings("ignore", "Error reading persistent compilation cache entry")
            compiled = lowered.compile()
    except Exception as error:  # XLA:TPU refuses a program over HBM; anything else is a real failure
        oom = next((m for m in (r.search(str(error)) for r in _OOM) if m), None)
        if oom is None:
            raise
        compiled_ok = False
        total = max(_bytes(*oom.group(1, 2)), memory["argument"])
    else:
        compiled_ok = True
        stats = compiled.memory_analysis()
        memory = {
            "argument": stats.argument_size_in_bytes,
            "output": stats.output_size_in_bytes,
            "alias": stats.alias_size_in_bytes,
            "temp": stats.temp_size_in_bytes,
            "code": stats.generated_code_size_in_bytes,
        }
        total = (
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes
            + stats.generated_code_size_in_bytes
        )
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        tpu_flops = float((cost or {}).get("flops", 0.0))
    compile_seconds = time.perf_counter() - start
    flops = step_flops(cfg)
    hbm = HBM_BYTES[gen]
    num_params = count_params(abstract_state.params)
    return AOTReport(
        preset=cfg.preset,
        topology=topology,
        chips=len(devices),
        device_kind=devices[0].device_kind,
        mesh=dict(mesh.shape),
        batch_size=tcfg.batch_size,
        seq_len=cfg.model.max_len,
        num_params=num_params,
        compiled=compiled_ok,
        argument_bytes=memory["argument"],
        output_bytes=memory["output"],
        alias_bytes=memory["alias"],
        temp_bytes=memory["temp"],
        code_bytes=memory["code"],
        total_bytes=total,
        hbm_bytes=hbm,
        fits=compiled_ok and total <= hbm,
        flops_per_step=flops,
        flops_per_chip=flops / len(devices),
        model_flops_per_step=flops_per_frame(cfg.model, num_params) * tcfg.batch_size * cfg.model.max_len,
        tpu_program_flops_per_chip=tpu_flops,
        compile_seconds=compile_seconds,
        utilization=utilization,
        estimated_seconds_per_1000_steps=seconds_per_1000_steps(flops, len(devices), PEAK_BF16_FLOPS[gen], utilization),
        h100_estimated_seconds_per_1000_steps=seconds_per_1000_steps(flops, 1, H100_PEAK_BF16_FLOPS, utilization),
    )


def format_report(report: AOTReport) -> str:
    """Human-readable lines: the slice, memory per chip against HBM, FLOPs."""

    def gib(n: int | None) -> str:
        return f"{(n or 0) / GIB:8.3f} GiB"

    mesh = ",".join(f"{k}={v}" for k, v in report.mesh.items())
    lines = [
        f"{report.preset} ({report.num_params / 1e6:.1f}M parameters), batch {report.batch_size} x "
        f"{report.seq_len} frames, on {report.topology}: {report.chips} x {report.device_kind}, "
        f"mesh {mesh}",
        f"  arguments    {gib(report.argument_bytes)}  (train state + batch)",
    ]
    if report.compiled:
        lines += [
            f"  outputs      {gib(report.output_bytes)}  ({gib(report.alias_bytes).strip()} of them "
            "in place of the donated state)",
            f"  temporaries  {gib(report.temp_bytes)}",
            f"  code         {gib(report.code_bytes)}",
        ]
    else:
        lines.append("  (XLA:TPU refused to compile for lack of HBM; the total is from its message)")
    lines += [
        f"  total        {gib(report.total_bytes)}  of {report.hbm_bytes / GIB:.0f} GiB HBM per chip "
        f"({report.total_bytes / report.hbm_bytes:.0%})",
        f"  FLOPs/step   {report.flops_per_step:.3e}  ({report.flops_per_chip:.3e} per chip; "
        f"6N+12LdT estimate {report.model_flops_per_step:.3e})",
    ]
    if report.estimated_seconds_per_1000_steps is not None:
        gen = generation(report.topology)
        lines.append(
            f"  estimate     {report.estimated_seconds_per_1000_steps / 60:.1f} min per 1,000 steps on "
            f"{report.topology} at {report.utilization:.0%} of {report.chips} x "
            f"{PEAK_BF16_FLOPS[gen] / 1e12:.0f} TFLOP/s bf16; one H100 "
            f"{report.h100_estimated_seconds_per_1000_steps / 60:.1f} min at {report.utilization:.0%} of "
            f"{H100_PEAK_BF16_FLOPS / 1e12:.0f} (from FLOPs/step, not measured)"
        )
    lines.append(f"  compiled in {report.compile_seconds:.1f} s")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = cli.Parser(
        tool="aot",
        prog="python -m musicgpt_jax.aot",
        description=__doc__.splitlines()[0],
        epilog="Any --config.SECTION.FIELD=VALUE overrides a preset field, e.g. --config.model.remat=false. "
        "Exit status: 0 fits, 1 does not fit, 2 bad arguments.",
    )
    parser.add_argument("--config", default="tiny", help="preset name or a config .json (default: tiny)")
    parser.add_argument(
        "--topology",
        default="v5e:2x4",
        help="Cloud TPU topology GENERATION:SHAPE, GENERATION in v4, v5e, v5p, v6e (default: v5e:2x4)",
    )
    parser.add_argument(
        "--mesh",
        help="data=D,fsdp=F,tensor=T over the topology's chips (default: the config's, i.e. all chips on fsdp)",
    )
    parser.add_argument("--batch_size", type=int, help="global batch (default: the preset's)")
    parser.add_argument(
        "--utilization",
        type=float,
        default=DEFAULT_UTILIZATION,
        help="share of the peak bf16 FLOP/s the time estimates assume for the executed FLOPs "
        f"(default: {DEFAULT_UTILIZATION})",
    )
    parser.add_argument(
        "--json", nargs="?", const="", metavar="PATH", help="write the report as JSON to PATH (-: stdout, alone)"
    )
    args, overrides = cli.parse_with_overrides(parser, argv)
    if args.json == "":
        cli.deprecated("aot", "--json without a PATH", "--json PATH (or --json - for stdout)")
        args.json = "-"
    return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if "JAX_PLATFORMS" not in os.environ:
        # Compile-only: this host's own backend is never used, so do not let JAX probe for a local TPU.
        with contextlib.suppress(RuntimeError):
            jax.config.update("jax_platforms", "cpu")
    # Nothing to gain from a persistent compilation cache: a compile-only executable cannot be loaded back.
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        cfg = configs.resolve(args.config, overrides)
        if args.mesh is not None:
            cfg.mesh = args.mesh
        if args.batch_size is not None:
            if args.batch_size < 1:
                raise AOTError(f"--batch_size {args.batch_size}: must be positive")
            cfg.train.batch_size = args.batch_size
        report = compile_train_step(cfg, args.topology, args.utilization)
    except (configs.ConfigError, AOTError) as error:
        print(f"aot: {error}", file=sys.stderr)
        return 2
    to_stdout = args.json == "-"
    if args.json and not to_stdout:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    print(json.dumps(dataclasses.asdict(report), indent=2) if to_stdout else format_report(report))
    if not report.fits:
        print(f"aot: {report.verdict()}", file=sys.stderr)
        return 1
    if not to_stdout:
        print(report.verdict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
