"""Dynamics: each onset's velocity, in bins, modelled jointly with the notes of its frame (`velocity_bins` > 0).

- Bins: MIDI velocity 1..127 in `velocity_bins` bins of ceil(127 / bins) velocities each, as Performance RNN
  quantises (32 bins of 4; the last holds 125..127). A bin is written back as its centre. In a batch, a cell
  without a known velocity (no onset, or velocity 0 in the data) holds `NO_VELOCITY`.
- Input (`VelocityEmbed`): the sum over a frame's onset cells of one learned vector per bin, added to the
  frame embedding, so the model hears how loud the music has been (a crescendo can go on).
- Output (`VelocityHead`): per frame, a context of `HIDDEN` units and `velocity_bins` direct logits from the
  hidden state, appended to the notes head's output (`with_velocity_part`; `notes_output` strips it, so the
  notes' likelihood and sampling see only their own part). Given the frame's states (teacher-forced targets in
  training, the chosen frame in sampling) `velocity_logits` gives, for every pitch,
      direct + bias[p] + tanh(context + Σ_q U[q, state_q]) · W[p]
  so a note's loudness depends on the whole chord it is part of: p(frame, velocities) = p(frame) ·
  Π_onsets p(velocity_p | context, frame).
- `velocity_nll` scores the target onsets; `sample_velocities` draws the bins of a chosen frame.

jax, flax and numpy only (no MIDI library): the decode loop imports it on machines without one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from musicgpt_jax.configs import ModelConfig
from musicgpt_jax.frames import ONSET

NO_VELOCITY = -1
MAX_VELOCITY = 127
HIDDEN = 64  # units of the velocity head's hidden layer


# ---------------------------------------------------------------------------------------------------- bins


def bin_size(num_bins: int) -> int:
    """MIDI velocities per bin."""
    return -(-MAX_VELOCITY // num_bins)


def velocity_to_bin(velocities: Any, num_bins: int) -> np.ndarray:
    """MIDI velocities (any shape) -> bins int32 in [0, num_bins); `NO_VELOCITY` where the velocity is 0."""
    v = np.asarray(velocities).astype(np.int32)
    bins = (np.clip(v, 1, MAX_VELOCITY) - 1) // bin_size(num_bins)
    return np.where(v > 0, bins, NO_VELOCITY).astype(np.int32)


def bin_to_velocity(bins: Any, num_bins: int) -> np.ndarray:
    """Bins -> the MIDI velocity at each bin's centre (uint8); 0 where a bin is negative (`NO_VELOCITY`)."""
    b = np.asarray(bins).astype(np.int32)
    low = 1 + np.clip(b, 0, num_bins - 1) * bin_size(num_bins)
    high = np.minimum(MAX_VELOCITY, low + bin_size(num_bins) - 1)
    return np.where(b >= 0, (low + high + 1) // 2, 0).astype(np.uint8)


def onset_velocity_bins(states: np.ndarray, velocities: np.ndarray, num_bins: int) -> np.ndarray:
    """(T, P) bins of the onset cells of `states`, `NO_VELOCITY` elsewhere: what a batch holds."""
    bins = velocity_to_bin(velocities, num_bins)
    return np.where(np.asarray(states) == ONSET, bins, NO_VELOCITY).astype(np.int32)


# ---------------------------------------------------------------------------------------------------- model parts


def _init(stddev: float, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


def _known_onsets(states: jax.Array, velocities: jax.Array) -> jax.Array:
    return (states == ONSET) & (velocities >= 0)


class VelocityEmbed(nn.Module):
    """(B, T, d_model): Σ over each frame's onsets of a learned vector per velocity bin. `velocities` None (model
    init, notes-only callers) adds nothing."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, states: jax.Array, velocities: jax.Array | None) -> jax.Array:
        cfg = self.cfg
        table = self.param("table", _init(0.02, ("state", "embed")), (cfg.velocity_bins, cfg.d_model), jnp.float32)
        if velocities is None:
            return jnp.zeros((*states.shape[:2], cfg.d_model), jnp.float32)
        known = _known_onsets(states, velocities)
        counts = jnp.sum(jax.nn.one_hot(velocities, cfg.velocity_bins) * known[..., None], axis=-2)  # (B, T, V)
        return counts @ table


class VelocityHead(nn.Module):
    """The state-independent part of the velocity output, (B, T, HIDDEN + V): context and direct logits, one
    matmul of the hidden state. The
    state weights, per-pitch output weights and biases are read by `velocity_logits` from the parameter tree."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        cfg, bins = self.cfg, self.cfg.velocity_bins
        self.param("state_weights", _init(0.02, ("pitch", "state", "nade")), (cfg.num_pitches, cfg.num_states, HIDDEN))
        self.param("output_weights", _init(0.02, ("pitch", "nade", "state")), (cfg.num_pitches, HIDDEN, bins))
        zeros = nn.initializers.zeros
        self.param("bias", nn.with_logical_partitioning(zeros, ("pitch", "state")), (cfg.num_pitches, bins))
        kernel = self.param("kernel", _init(0.02, ("embed", "nade")), (cfg.d_model, HIDDEN + bins))
        context_bias = self.param("context_bias", nn.with_logical_partitioning(zeros, ("nade",)), (HIDDEN + bins,))
        out = h.astype(jnp.float32).reshape(-1, h.shape[-1]) @ kernel + context_bias
        return out.reshape(*h.shape[:-1], HIDDEN + bins)


def with_velocity_part(notes: jax.Array, velocity: jax.Array, cfg: ModelConfig) -> jax.Array:
    """The model's output with dynamics: the notes head's output flattened per frame, then the velocity part."""
    if cfg.head != "nade":
        notes = notes.reshape(*notes.shape[:-2], -1)
    return jnp.concatenate([notes, velocity.astype(notes.dtype)], axis=-1)


def notes_output(out: jax.Array, cfg: ModelConfig | None) -> jax.Array:
    """The notes head's part of the model's output (all of it without dynamics)."""
    if cfg is None or not cfg.velocity_bins:
        return out
    notes = out[..., : -(HIDDEN + cfg.velocity_bins)]
    if cfg.head != "nade":
        notes = notes.reshape(*notes.shape[:-1], cfg.num_pitches, cfg.num_states)
    return notes


def velocity_logits(out: jax.Array, states: jax.Array, cfg: ModelConfig, params: Any) -> jax.Array:
    """Logits (..., P, V) of every pitch's velocity bin, given the model's output `out` (..., F) for a frame and
    that frame's states (..., P)."""
    head = params["velocity_head"]
    part = out[..., -(HIDDEN + cfg.velocity_bins) :].astype(jnp.float32)
    context, direct = part[..., :HIDDEN], part[..., HIDDEN:]
    weights = head["state_weights"]  # (P, S, H)
    one_hot = jax.nn.one_hot(states, cfg.num_states, dtype=jnp.float32)
    chord = one_hot.reshape(*states.shape[:-1], -1) @ weights.reshape(-1, HIDDEN)
    hidden = jnp.tanh(context + chord)
    per_pitch = jnp.einsum("...h,phv->...pv", hidden, head["output_weights"])
    return direct[..., None, :] + head["bias"] + per_pitch


def velocity_nll(
    out: jax.Array,
    target_states: jax.Array,
    target_velocities: jax.Array,
    mask: jax.Array,
    cfg: ModelConfig,
    params: Any,
) -> tuple[jax.Array, jax.Array]:
    """(sum of the velocity NLL over the target onsets with a known velocity, number of those onsets), over the
    masked frames: nats per onset is their ratio."""
    logits = velocity_logits(out, target_states, cfg, params)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.maximum(target_velocities, 0)[..., None], axis=-1)[..., 0]
    scored = _known_onsets(target_states, target_velocities) & (mask[..., None] > 0)
    return -jnp.sum(jnp.where(scored, picked, 0.0)), jnp.sum(scored.astype(jnp.float32))


def sample_velocities(
    out: jax.Array, states: jax.Array, rng: jax.Array, choose_fn: Any, cfg: ModelConfig, params: Any
) -> jax.Array:
    """Bins (B, P) int32 of a chosen frame `states` (B, P), drawn from the output `out` (B, F) by `choose_fn`
    (logits, key) -> choice; `NO_VELOCITY` where the frame has no onset."""
    bins = choose_fn(velocity_logits(out, states, cfg, params), rng)
    return jnp.where(states == ONSET, bins, NO_VELOCITY).astype(jnp.int32)
