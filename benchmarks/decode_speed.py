"""Decode speed of the KV-cache sampler, printed as ratios against the goals.

    python benchmarks/decode_speed.py [--d_model 256] [--num_layers 4] [--max_len 2048] [--frames 1024]

1. Per-frame decode time early (positions 64..127) and late (the 64 positions before the cache is full,
   i.e. up to position max_len) in the window: goal late/early <= 1.5. The cache has a fixed length, so a
   step costs the same anywhere; this checks that nothing grows with the position.
2. Cached generation of `--frames` frames vs full recompute (one jitted forward pass over a fixed
   `--frames`-long buffer per frame, what a cache-free sampler with static shapes does; timed per frame and
   multiplied, since 1024 such passes would take minutes on a laptop CPU): goal >= 20x.
3. Frames per second of `generate` (256 frames from an empty start) at batch 1 and 16.

A step attends over the whole cache, which `generate` sizes to the sequence (at most `max_len`), so a
frame costs about what (1.) measures once the sequence is as long as the context, less before.

Every timing excludes compilation (each function runs once before it is timed). Parameters are random:
speed does not depend on their values. On a CPU-only machine with libtpu installed, set JAX_PLATFORMS=cpu.
The model has the independent head (ModelConfig's default); every preset trains the NADE head, whose decode this
does not time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicgpt_jax import cli, decode, host_memory  # noqa: E402
from musicgpt_jax.configs import ModelConfig  # noqa: E402
from musicgpt_jax.model import MusicTransformer, count_params, init_cache  # noqa: E402


def best_time(fn: Callable[[], jax.Array], repeats: int = 1) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def random_params(cfg: ModelConfig):
    shapes = jax.eval_shape(
        MusicTransformer(cfg).init, jax.random.key(0), jnp.zeros((1, 4, cfg.num_pitches), jnp.int32)
    )["params"]
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.02, s.shape), s.dtype), nn.meta.unbox(shapes))


def per_frame_at(params, cfg: ModelConfig, positions: tuple[int, ...], steps: int = 64, rounds: int = 3) -> list[float]:
    """Seconds per decode step for `steps` steps from each cache position (batch 1); the positions are
    timed in turn, `rounds` times, best of each, so a busy machine hits them alike."""

    @jax.jit
    def run(params, index):
        window = jnp.zeros((1, cfg.max_len, cfg.num_pitches), jnp.int32)
        state = decode.DecodeState(init_cache(cfg, 1), window, index)

        def step(state, _):
            logits, state = decode.decode_step(params, cfg, state, jnp.zeros((1, cfg.num_pitches), jnp.int32))
            return state, logits[0, 0, 0]

        return jax.lax.scan(step, state, None, length=steps)[1]

    best = [float("inf")] * len(positions)
    for _ in range(rounds):
        for i, position in enumerate(positions):
            seconds = best_time(lambda p=position: run(params, jnp.asarray(p, jnp.int32)), repeats=1)
            best[i] = min(best[i], seconds / steps)
    return best


def recompute_per_frame(params, cfg: ModelConfig, length: int) -> float:
    """Seconds for one full forward pass over a `length`-frame buffer and sampling the next frame."""

    @jax.jit
    def step(params, frames, rng):
        logits, _ = MusicTransformer(cfg).apply({"params": params}, frames)
        return jax.random.categorical(rng, logits[:, length // 2], axis=-1)

    frames = jnp.zeros((1, length, cfg.num_pitches), jnp.int32)
    return best_time(lambda: step(params, frames, jax.random.key(0)), repeats=3)


def generate_seconds(params, cfg: ModelConfig, batch: int, frames: int) -> float:
    primer = np.zeros((batch, 0, cfg.num_pitches), np.int32)
    return best_time(lambda: decode.generate(params, cfg, primer, frames, jax.random.key(0)))


def main(argv: list[str] | None = None) -> None:
    parser = cli.Parser(
        prog="decode_speed.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--max_len", type=int, default=2048)
    parser.add_argument("--frames", type=int, default=1024, help="frames for cached vs recompute")
    args = parser.parse_args(argv)
    cfg = ModelConfig(
        num_layers=args.num_layers,
        d_model=args.d_model,
        num_heads=args.num_heads,
        mlp_dim=3 * args.d_model,
        max_len=args.max_len,
        dropout=0.0,
    )
    params = random_params(cfg)
    print(
        f"model: {count_params(params) / 1e6:.2f}M parameters, {cfg.num_layers} layers, "
        f"d_model {cfg.d_model}, the {cfg.head} head, context {cfg.max_len} frames of {cfg.num_pitches} pitches; "
        f"{jax.devices()[0].platform}, 1 device",
        flush=True,
    )

    early, late = per_frame_at(params, cfg, (64, cfg.max_len - 64))
    print(
        f"per-frame decode: {early * 1e3:.2f} ms at position 64, {late * 1e3:.2f} ms at position "
        f"{cfg.max_len} (the 64 frames before it): ratio {late / early:.2f} (goal <= 1.5)",
        flush=True,
    )

    cached = generate_seconds(params, cfg, 1, args.frames)
    recompute = recompute_per_frame(params, cfg, args.frames) * args.frames
    print(
        f"{args.frames} frames, batch 1: cached {cached:.2f} s, full recompute {recompute:.1f} s "
        f"(measured per frame x {args.frames}): {recompute / cached:.0f}x faster (goal >= 20x)",
        flush=True,
    )

    batch_frames = 256
    for batch in (1, 16):
        seconds = generate_seconds(params, cfg, batch, batch_frames)
        print(
            f"generate, batch {batch:2d}: {batch * batch_frames / seconds:8.0f} frames/s "
            f"({batch_frames} frames per sequence, a {batch_frames}-position cache, "
            f"{seconds:.2f} s)",
            flush=True,
        )


if __name__ == "__main__":
    host_memory.reexec_with_malloc_tuning()
    main()
