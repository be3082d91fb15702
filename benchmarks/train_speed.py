"""Train-step speed on this machine: frames/s, and the step's FLOP rate over the dense matmul rate (one run).

    JAX_PLATFORMS=cpu python benchmarks/train_speed.py [--presets tiny small] [--steps 5] [--batch_size N]
    python benchmarks/train_speed.py --presets base --batch_size 0 --dtype bfloat16    # on a GPU / TPU
    python benchmarks/train_speed.py --presets base --batch_size 0 --dtype bfloat16 --config.model.remat=false
    python benchmarks/train_speed.py --presets tiny small --json speed.jsonl    # one JSON object a line, to a file

For each preset the real jitted train step (`train_step.jit_train_step`: train.py's optimizer, shardings and donation,
on one device) runs on a batch of random frames. Two FLOP counts per step are reported:
- XLA: the cost analysis of the compiled step. It counts what is executed, remat recompute included, and does not
  see inside fused custom calls (cuDNN attention).
- model: nanoGPT's 6·N + 12·L·d·T per frame (`model.flops_per_frame`), the convention for MFU: no recompute.
The matmul rate is measured in the same run (best of several N×N products in the compute dtype), so the ratio —
the fraction of this machine's dense matmul speed the train step achieves — is robust to a noisy machine.
Goal on CPU: ratio ≥ 0.5. On an accelerator MFU is model FLOP/s over the datasheet peak (goal ≥ 50% on an H100).
`--batch_size` sets the batch (0: the preset's own); the CPU default of 16 keeps `small` to about a minute.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicgpt_jax import cli, configs, host_memory, sharding  # noqa: E402
from musicgpt_jax.hardware import measure_matmul_flops, peak_flops_per_device  # noqa: E402
from musicgpt_jax.model import GatedMLP, MusicTransformer, count_params, flops_per_frame  # noqa: E402
from musicgpt_jax.train_state import create_train_state, make_optimizer  # noqa: E402
from musicgpt_jax.train_step import global_batch, jit_train_step  # noqa: E402


def measure(variant: str, batch_size: int | None, steps: int, dtype: str, overrides: list[str]) -> dict:
    """`variant` is PRESET or PRESET:section.field=value,... (applied after `overrides`)."""
    preset, _, own = variant.partition(":")
    cfg = configs.resolve(preset, [f"model.dtype={dtype}", *overrides, *filter(None, own.split(","))])
    if batch_size:
        cfg.train.batch_size = batch_size
    mesh = sharding.make_mesh("", jax.devices()[:1])
    model, tx = MusicTransformer(cfg.model), make_optimizer(cfg.train)
    state, shardings = create_train_state(model, tx, cfg, mesh)
    num_params = count_params(state.params)
    b, t, p = cfg.train.batch_size, cfg.model.max_len, cfg.model.num_pitches
    rng = np.random.default_rng(0)
    frames = rng.integers(0, cfg.model.num_states, (b, t + 1, p)).astype(np.int32)
    rows = {"inputs": frames[:, :-1], "targets": frames[:, 1:], "mask": np.ones((b, t), np.float32)}
    if cfg.model.velocity_bins:  # dynamics (the piano preset): a velocity bin beside each state
        bins = rng.integers(0, cfg.model.velocity_bins, (b, t + 1, p)).astype(np.int32)
        rows.update(input_velocities=bins[:, :-1], target_velocities=bins[:, 1:])
    batch = global_batch(rows, mesh)
    step = jit_train_step(model, tx, cfg.train.grad_accum, shardings, cfg.train)  # as train.py's, own samples too
    with sharding.activate(mesh):
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        memory = compiled.memory_analysis()
        state, metrics = step(state, batch)  # warm-up
        jax.block_until_ready(metrics)
        times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    seconds = float(np.median(times))
    temp_bytes = getattr(memory, "temp_size_in_bytes", 0) if memory is not None else 0
    return {
        "variant": variant,
        "params": num_params,
        "batch": b,
        "frames": t,
        "compile_s": compile_s,
        "step_s": seconds,
        "frames_per_s": b * t / seconds,
        "xla_flops_per_step": float(cost.get("flops", 0.0)),
        "model_flops_per_step": flops_per_frame(cfg.model, num_params) * b * t,
        "temp_gib": temp_bytes / 2**30,
        "page_faults_per_step": faults / steps,
        "loss": float(metrics["loss"]),
        "mlp_flops_per_s": measure_mlp_block(cfg, b * t, steps),
    }


def measure_mlp_block(cfg: configs.Config, tokens: int, steps: int) -> float:
    """FLOP/s of the preset's gated MLP alone (the model's own module), forward + backward on `tokens` frames:
    three matmuls and a SiLU, the best case for a step made of the preset's matrix shapes."""
    mlp = GatedMLP(cfg.model)
    x = jax.random.normal(jax.random.key(0), (1, tokens, cfg.model.d_model), jnp.dtype(cfg.model.dtype))
    params = mlp.init(jax.random.key(1), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(mlp.apply(p, x).astype(jnp.float32) ** 2), argnums=(0, 1)))
    jax.block_until_ready(grad(params, x))
    best = float("inf")
    for _ in range(max(steps, 3)):
        start = time.perf_counter()
        jax.block_until_ready(grad(params, x))
        best = min(best, time.perf_counter() - start)
    return 3 * 3 * 2 * tokens * cfg.model.d_model * cfg.model.mlp_dim / best  # 3 matmuls, each ×3 with backward


PROG = "train_speed.py"


def main(argv: list[str] | None = None) -> None:
    parser = cli.Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["tiny", "small"],
        help="presets to time; --config.SECTION.FIELD=VALUE overrides apply to each "
        "(PRESET:section.field=value,... is the old per-variant spelling)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset (median reported)")
    parser.add_argument("--batch_size", type=int, default=16, help="batch per step (0: the preset's own)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        metavar="PATH",
        help="also write one JSON object per preset, a line each, to PATH (-: on stdout instead of the table)",
    )
    args, overrides = cli.parse_with_overrides(parser, sys.argv[1:] if argv is None else argv)
    if any(":" in variant for variant in args.presets):
        cli.deprecated(PROG, "--presets PRESET:section.field=value", "--config.SECTION.FIELD=VALUE")
    if args.json == "":
        cli.deprecated(PROG, "--json without a PATH", "--json PATH")
        args.json = "-"
    to_stdout = args.json == "-"  # JSON lines instead of the table
    # Written as each preset finishes, so a later preset's failure loses nothing.
    json_lines = (sys.stdout if to_stdout else open(args.json, "w")) if args.json else None  # noqa: SIM115
    on_cpu = jax.devices()[0].platform == "cpu"
    size = 1024 if on_cpu else 8192  # big enough to reach a GPU's peak
    matmul = measure_matmul_flops(size=size, dtype=jnp.dtype(args.dtype), repeats=10)
    peak, source = (matmul, "the measured matmul rate") if on_cpu else peak_flops_per_device()
    tuned = host_memory.malloc_tuning_active()
    header = (
        f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; dense {args.dtype} {size}² matmul rate "
        f"{matmul / 1e12:.2f} TFLOP/s; peak {peak / 1e12:.1f} TFLOP/s ({source})"
        + (f"; overrides: {' '.join(overrides)}" if overrides else "")
        + ("; glibc malloc tuned (musicgpt_jax.host_memory)" if tuned else "; glibc malloc as is")
    )
    width = max(8, *map(len, args.presets))
    if not to_stdout:
        print(header, flush=True)
        print(
            f"{'variant':{width}} {'params':>7} {'batch×frames':>13} {'compile s':>9} {'step s':>8} {'frames/s':>10} "
            f"{'XLA TFLOP/s':>12} {'model TFLOP/s':>14} {'ratio':>6} {'MFU':>6} {'MLP ratio':>9} {'faults/step':>11} "
            f"{'temp GiB':>8}",
            flush=True,
        )
    for variant in args.presets:
        try:
            r = measure(variant, args.batch_size or None, args.steps, args.dtype, overrides)
        except Exception as e:  # noqa: BLE001 - one variant out of memory must not hide the others
            print(f"{variant:{width}} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
            continue
        xla_rate, model_rate = r["xla_flops_per_step"] / r["step_s"], r["model_flops_per_step"] / r["step_s"]
        r.update(
            matmul_flops_per_s=matmul,
            ratio=xla_rate / matmul,
            mfu=model_rate / peak,
            mlp_ratio=r["mlp_flops_per_s"] / matmul,
            malloc_tuned=tuned,
        )
        if json_lines is not None:
            json_lines.write(json.dumps(r) + "\n")
            json_lines.flush()
            if to_stdout:
                continue
        print(
            f"{variant:{width}} {r['params'] / 1e6:6.1f}M {r['batch']:>6}×{r['frames']:<6} {r['compile_s']:9.1f} "
            f"{r['step_s']:8.3f} {r['frames_per_s']:10,.0f} {xla_rate / 1e12:12.3f} {model_rate / 1e12:14.3f} "
            f"{r['ratio']:6.2f} {r['mfu']:6.1%} {r['mlp_ratio']:9.2f} {r['page_faults_per_step']:11,.0f} "
            f"{r['temp_gib']:8.2f}",
            flush=True,
        )
    if json_lines is not None and not to_stdout:
        json_lines.close()
    if not to_stdout:
        print(
            "ratio = XLA-counted FLOP rate of the train step / this machine's dense matmul rate, both measured in "
            "this run (goal on CPU >= 0.5); MFU = model FLOP rate (6N + 12LdT per frame) / peak (goal >= 50% on an "
            "H100); MLP ratio = the same for the preset's gated MLP alone, forward + backward on the batch's "
            "frames: what a step made only of the preset's matrix shapes reaches; faults/step: minor page faults"
        )


if __name__ == "__main__":
    host_memory.reexec_with_malloc_tuning()
    main()
