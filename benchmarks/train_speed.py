"""Train-step speed on this machine: frames/s, and the step's FLOP rate over the dense matmul rate (one run).

    JAX_PLATFORMS=cpu python benchmarks/train_speed.py [--presets tiny small] [--steps 5] [--batch_size N]
    python benchmarks/train_speed.py --presets base --batch_size 0 --dtype bfloat16    # on a GPU / TPU

For each preset the real jitted train step (train.py's optimizer, shardings and donation, on one device) runs on
a batch of random frames; FLOPs per step come from XLA's cost analysis of the compiled step. The matmul rate is
measured in the same run (best of several float32 N×N products), so the ratio — the fraction of this machine's
dense matmul speed the train step achieves, an MFU against a measured peak — is robust to a noisy machine.
Goal: ≥ 0.5. `--batch_size` shrinks the preset's batch so that `small` finishes in a minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from musicgpt_jax import configs, sharding
from musicgpt_jax.hardware import measure_matmul_flops, peak_flops_per_device
from musicgpt_jax.model import MusicTransformer
from musicgpt_jax.train import create_train_state, global_batch, make_optimizer, make_train_step


def measure(preset: str, batch_size: int | None, steps: int, dtype: str) -> dict:
    cfg = configs.resolve(preset)
    if batch_size:
        cfg.train.batch_size = batch_size
    cfg.model.dtype = dtype
    mesh = sharding.make_mesh("", jax.devices()[:1])
    model, tx = MusicTransformer(cfg.model), make_optimizer(cfg.train)
    state, shardings = create_train_state(model, tx, cfg, mesh)
    b, t, p = cfg.train.batch_size, cfg.model.max_len, cfg.model.num_pitches
    rng = np.random.default_rng(0)
    frames = rng.integers(0, cfg.model.num_states, (b, t + 1, p)).astype(np.int32)
    batch = global_batch(
        {"inputs": frames[:, :-1], "targets": frames[:, 1:], "mask": np.ones((b, t), np.float32)}, mesh
    )
    step = jax.jit(
        make_train_step(model, tx, cfg.train.grad_accum),
        in_shardings=(shardings, None),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
    )
    with sharding.activate(mesh):
        compiled = step.lower(state, batch).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost["flops"])
        state, metrics = step(state, batch)  # warm-up
        jax.block_until_ready(metrics)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {
        "preset": preset,
        "batch": b,
        "frames": t,
        "step_s": seconds,
        "frames_per_s": b * t / seconds,
        "flops_per_step": flops,
        "flop_rate": flops / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset (median reported)")
    parser.add_argument("--batch_size", type=int, default=4, help="batch per step (0: the preset's own)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    args = parser.parse_args()
    size = 1024 if jax.devices()[0].platform == "cpu" else 8192  # big enough to reach a GPU's peak
    matmul = measure_matmul_flops(size=size, dtype=jnp.dtype(args.dtype), repeats=10)
    on_cpu = jax.devices()[0].platform == "cpu"
    peak, source = (matmul, "the measured matmul rate") if on_cpu else peak_flops_per_device()
    print(
        f"device: {jax.devices()[0].device_kind}; dense {args.dtype} {size}² matmul rate "
        f"{matmul / 1e12:.2f} TFLOP/s; peak {peak / 1e12:.1f} TFLOP/s ({source})"
    )
    print(
        f"{'preset':8} {'batch×frames':>13} {'step s':>8} {'frames/s':>10} {'GFLOP/step':>11} "
        f"{'GFLOP/s':>9} {'ratio':>6}"
    )
    for preset in args.presets:
        r = measure(preset, args.batch_size or None, args.steps, args.dtype)
        print(
            f"{preset:8} {r['batch']:>6}×{r['frames']:<6} {r['step_s']:8.3f} {r['frames_per_s']:10,.0f} "
            f"{r['flops_per_step'] / 1e9:11.1f} {r['flop_rate'] / 1e9:9.1f} {r['flop_rate'] / matmul:6.2f}"
            f"  MFU {r['flop_rate'] / peak:.1%}"
        )
    print(
        "ratio = the train step's FLOP rate / this machine's dense matmul rate, both measured in this run"
        " (goal ≥ 0.5); MFU = FLOP rate / peak"
    )


if __name__ == "__main__":
    main()
