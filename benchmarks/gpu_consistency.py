"""The bf16 train step on an accelerator computes the float32 step's function: loss and gradients compared.

    python benchmarks/gpu_consistency.py [--steps 20]

One model (4 layers, d_model 256, 4 heads of 64, 512 frames, batch 8), one batch of real-looking frames (random
chords held for random lengths, so the loss has structure), the same float32 parameters. The loss and gradients of
three variants are compared with float32 + XLA attention as the reference, by ‖x − ref‖ / ‖ref‖ over all gradient
leaves together: bf16 + XLA attention and bf16 + cuDNN flash attention (expected 1e-3 .. 2e-2; NaN never passes).
Then `--steps` bf16 train steps on that batch with each attention kernel: the loss must fall, and alike.
Needs only jax, flax and optax (no data libraries): it runs in a bare accelerator image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicgpt_jax import cli, configs, sharding  # noqa: E402
from musicgpt_jax.model import MusicTransformer, frame_nll  # noqa: E402
from musicgpt_jax.train_state import create_train_state, make_optimizer  # noqa: E402
from musicgpt_jax.train_step import global_batch, jit_train_step  # noqa: E402


def chord_frames(rng: np.random.Generator, batch: int, length: int, pitches: int) -> np.ndarray:
    """Onset/hold frames of random 3-4 note chords held for 2-16 frames: structured enough to learn."""
    out = np.zeros((batch, length, pitches), np.int32)
    for b in range(batch):
        t = 0
        while t < length:
            hold = int(rng.integers(2, 17))
            notes = rng.choice(np.arange(48, 84), size=int(rng.integers(3, 5)), replace=False)
            out[b, t, notes] = 1
            out[b, t + 1 : t + hold, notes] = 2
            t += hold
    return out


def config(dtype: str, attention: str) -> configs.Config:
    cfg = configs.resolve("tiny", [f"model.dtype={dtype}", f"model.attention={attention}"])
    m = cfg.model
    m.num_layers, m.d_model, m.num_heads, m.mlp_dim, m.max_len, m.dropout = 4, 256, 4, 768, 512, 0.0
    cfg.train.batch_size = 8
    return cfg


def loss_and_grads(cfg: configs.Config, params, batch: dict):
    model = MusicTransformer(cfg.model)

    def loss(p, b):
        logits, _ = model.apply({"params": p}, b["inputs"])
        total, frames = frame_nll(logits, b["targets"], b["mask"])
        return total / frames

    return jax.jit(jax.value_and_grad(loss))(params, batch)


def relative_error(x, ref) -> float:
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.sum((a.astype(jnp.float32) - b) ** 2), x, ref))
    norm = jax.tree.leaves(jax.tree.map(lambda b: jnp.sum(b**2), ref))
    return float(jnp.sqrt(sum(leaves) / sum(norm)))


def main() -> None:
    parser = cli.Parser(
        prog="gpu_consistency.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    ref_cfg = config("float32", "xla")
    mesh = sharding.make_mesh("", jax.devices()[:1])
    frames = chord_frames(np.random.default_rng(0), 8, ref_cfg.model.max_len + 1, ref_cfg.model.num_pitches)
    local = {"inputs": frames[:, :-1], "targets": frames[:, 1:], "mask": np.ones(frames[:, 1:].shape[:2], np.float32)}
    batch = global_batch(local, mesh)
    model, tx = MusicTransformer(ref_cfg.model), make_optimizer(ref_cfg.train)
    state, shardings = create_train_state(model, tx, ref_cfg, mesh)
    params = state.params
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}", flush=True)
    with sharding.activate(mesh):
        ref_loss, ref_grads = loss_and_grads(ref_cfg, params, batch)
        print(f"float32 + xla: loss {float(ref_loss):.4f} (reference)", flush=True)
        failures = 0
        for dtype, attention in (("bfloat16", "xla"), ("bfloat16", "cudnn")):
            try:
                loss, grads = loss_and_grads(config(dtype, attention), params, batch)
            except Exception as e:  # noqa: BLE001 - report which kernel is unavailable and go on
                print(f"{dtype} + {attention}: FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                failures += 1
                continue
            loss_err = abs(float(loss) - float(ref_loss)) / abs(float(ref_loss))
            grad_err = relative_error(grads, ref_grads)
            ok = np.isfinite(grad_err) and loss_err < 2e-2 and grad_err < 5e-2
            failures += not ok
            print(
                f"{dtype} + {attention}: loss {float(loss):.4f} (rel. err {loss_err:.1e}), "
                f"gradients rel. err {grad_err:.1e}  {'ok' if ok else 'MISMATCH'}",
                flush=True,
            )
    for attention in ("xla", "cudnn"):
        cfg = config("bfloat16", attention)
        model = MusicTransformer(cfg.model)
        try:
            state, shardings = create_train_state(model, tx, cfg, mesh)  # outside the rules context, as in training
            step = jit_train_step(model, tx, 1, shardings)
            losses = []
            with sharding.activate(mesh):
                for _ in range(args.steps):
                    state, metrics = step(state, batch)
                    losses.append(float(metrics["loss"]))
        except Exception as e:  # noqa: BLE001
            print(f"bf16 train steps + {attention}: FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            failures += 1
            continue
        falling = losses[-1] < 0.5 * losses[0] and all(np.isfinite(losses))
        failures += not falling
        print(
            f"bf16 train, {args.steps} steps + {attention}: loss {losses[0]:.2f} -> {losses[-1]:.2f}  "
            f"{'ok' if falling else 'NOT FALLING'}",
            flush=True,
        )
    print("consistency: " + ("all ok" if not failures else f"{failures} FAILED"))


if __name__ == "__main__":
    main()
