"""The jitted train and eval steps, with parallel scheduled sampling, and the global batch they are fed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from musicgpt_jax import sharding
from musicgpt_jax.configs import TrainConfig
from musicgpt_jax.frame_choice import sample_frame
from musicgpt_jax.frames import restart_held
from musicgpt_jax.model import MusicTransformer, loss_sums, model_inputs
from musicgpt_jax.train_state import TrainState


def with_own_samples(
    model: MusicTransformer, params: Any, inputs: jax.Array, rng: jax.Array, rate: float | jax.Array, **velocities
):
    """`inputs` (B, T, P) with each frame after the first replaced, with probability `rate`, by a frame the model
    samples (temperature 1) from the true frames before it: parallel scheduled sampling (Duckworth et al. 2019).
    With dynamics the input velocities stay the true ones (`velocities`): only the notes are the model's.

    Trained on such inputs against the true targets, the model learns to lead its own stray notes back to the
    music instead of continuing them (docs/RESULTS.md, "Long samples").
    """
    sample_rng, mix_rng = jax.random.split(rng)
    params = jax.lax.stop_gradient(params)
    out, _ = model.apply({"params": params}, inputs, deterministic=True, **velocities)
    batch, length, pitches = inputs.shape
    flat_out = out[:, :-1].reshape(batch * (length - 1), *out.shape[2:])
    previous = inputs[:, :-1].reshape(-1, pitches)
    sampled = sample_frame(flat_out, sample_rng, 1.0, previous, model.cfg.num_states, model.cfg, params)
    sampled = jax.lax.stop_gradient(sampled.reshape(batch, length - 1, pitches)).astype(inputs.dtype)
    replace = jax.random.bernoulli(mix_rng, rate, (batch, length - 1, 1))
    return inputs.at[:, 1:].set(jnp.where(replace, sampled, inputs[:, 1:]))


def restart_held_notes(inputs: jax.Array, targets: jax.Array, num_states: int) -> jax.Array:
    """Targets (B, T, P) made consistent with inputs that may hold the model's samples: a HOLD of a pitch that
    the frame before it has off is an ONSET (`frames.restart_held`, as `sample_frame` and the MIDI writer read it),
    so the model never learns a HOLD after an OFF."""
    if num_states != 3:
        return targets
    return restart_held(targets, inputs, jnp)


def scheduled_sampling_rate(cfg: TrainConfig, step: jax.Array) -> jax.Array:
    """The share of input frames that are the model's own samples at `step`: 0 until
    `cfg.scheduled_sampling_start` (an untrained model's samples are noise), then rising linearly to
    `cfg.scheduled_sampling` half-way through the rest of the schedule."""
    start = cfg.scheduled_sampling_start
    ramp = max(1, ((cfg.schedule_steps or cfg.steps) - start) // 2)
    return cfg.scheduled_sampling * jnp.clip((step.astype(jnp.float32) - start) / ramp, 0.0, 1.0)


def make_train_step(
    model: MusicTransformer, tx: optax.GradientTransformation, grad_accum: int, tcfg: TrainConfig | None = None
) -> Callable:
    """train_step(state, batch) -> (state, metrics); `batch` leaves are (global_batch, ...). With
    `tcfg.scheduled_sampling` > 0 a share of the input frames is the model's own samples (`with_own_samples`)."""
    own_samples = tcfg is not None and tcfg.scheduled_sampling > 0

    def batch_loss(params, micro, rng, step):
        inputs, targets, extra = micro["inputs"], micro["targets"], model_inputs(micro)
        if own_samples:
            own_rng, rate = jax.random.fold_in(rng, 1), scheduled_sampling_rate(tcfg, step)  # dropout keeps `rng`
            inputs = jax.lax.cond(  # before the start, no extra forward pass
                rate > 0, lambda x: with_own_samples(model, params, x, own_rng, rate, **extra), lambda x: x, inputs
            )
            targets = restart_held_notes(inputs, targets, model.cfg.num_states)
        out, _ = model.apply({"params": params}, inputs, deterministic=False, rngs={"dropout": rng}, **extra)
        return loss_sums(out, micro, targets, model.cfg, params)

    grad_fn = jax.value_and_grad(batch_loss, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if grad_accum == 1:
            (nll_sum, sums), grads = grad_fn(state.params, batch, rng, state.step)
        else:
            micro_batches = jax.tree.map(
                lambda x: x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:]), batch
            )

            def accumulate(carry, xs):
                micro, i = xs
                (nll, n), g = grad_fn(state.params, micro, jax.random.fold_in(rng, i), state.step)
                return jax.tree.map(jnp.add, carry, (nll, n, g)), None

            keys = ("frames", "notes_nll") + (("velocity_nll", "onsets") if model.cfg.velocity_bins else ())
            zeros = (jnp.zeros(()), dict.fromkeys(keys, jnp.zeros(())), jax.tree.map(jnp.zeros_like, state.params))
            (nll_sum, sums, grads), _ = jax.lax.scan(accumulate, zeros, (micro_batches, jnp.arange(grad_accum)))
        frames = jnp.maximum(sums["frames"], 1.0)
        grads = jax.tree.map(lambda g: g / frames, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": nll_sum / frames, "grad_norm": optax.global_norm(grads), "frames": frames}
        if "onsets" in sums:  # dynamics: the loss is notes + velocities; each apart, velocities per onset
            metrics["notes_nll"] = sums["notes_nll"] / frames
            metrics["velocity_nll"] = sums["velocity_nll"] / jnp.maximum(sums["onsets"], 1.0)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def jit_train_step(
    model: MusicTransformer,
    tx: optax.GradientTransformation,
    grad_accum: int,
    state_shardings: Any,
    tcfg: TrainConfig | None = None,
) -> Callable:
    """The train step as training runs it: state sharded by the rule table (in and out) and donated.
    Trace and call it inside `sharding.activate(mesh)`."""
    return jax.jit(
        make_train_step(model, tx, grad_accum, tcfg),
        in_shardings=(state_shardings, None),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


def make_eval_step(model: MusicTransformer) -> Callable:
    """eval_step(params, batch) -> {"nll_sum" (the notes), "frames"} over the batch's unmasked frames; with
    dynamics also {"velocity_nll", "onsets"}."""

    def eval_step(params, batch) -> dict:
        out, _ = model.apply({"params": params}, batch["inputs"], deterministic=True, **model_inputs(batch))
        _, sums = loss_sums(out, batch, batch["targets"], model.cfg, params)
        return {"nll_sum": sums.pop("notes_nll"), **sums}

    return eval_step


def global_batch(local: dict, mesh: Mesh) -> dict:
    """Each process's rows -> one global jax.Array per key, batch axis split over ("data", "fsdp")."""
    return {
        k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, v.ndim), v) for k, v in local.items()
    }
