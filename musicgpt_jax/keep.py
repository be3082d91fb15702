"""Sampling with kept notes: the model writes every cell it is not given and keeps the given ones exactly.

`generate_kept(params, cfg, primer, kept_states, kept_mask, ...)` decodes `kept_states.shape[1] - after` frames
after a primer. `kept_mask` says which cells of those frames, and of `after` frames past them (a gap's right side:
seen, never written), are given. At every frame:

- the model's `given` input (`musicgpt_jax.given`) holds the given cells of the frame it writes and of the
  `given_lookahead` frames after it, so it knows the notes to come (a model without the input is only clamped);
- the frame head is forced to the given cells' states (`frame_choice.Kept`): the NADE head draws low to high and
  each pitch above a given one is drawn given it; the frame after a given note ends may not HOLD it on;
- with dynamics, a given onset keeps its velocity bin.

The primer is given as a whole (its cells are part of the piece). A HOLD in a given cell whose frame before is not
given starts its note there (`kept_grid`), so every given note comes out exactly as given: pitch, onset, length.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from musicgpt_jax import decode, dynamics
from musicgpt_jax.configs import ModelConfig
from musicgpt_jax.dynamics import NO_VELOCITY
from musicgpt_jax.frame_choice import Kept, Strategy, sample_frame, sample_velocities
from musicgpt_jax.frames import HOLD, OFF, ONSET
from musicgpt_jax.given import UNKNOWN, codes_of


def kept_grid(states: np.ndarray, mask: np.ndarray, after_primer: bool) -> np.ndarray:
    """`states` (T, P) with a given HOLD whose frame before is not given made an ONSET (the primer, all given,
    is the frame before frame 0 when `after_primer`): given notes are cut where the given region starts."""
    previous_given = np.concatenate([np.full_like(mask[:1], after_primer), mask[:-1]])
    return np.where(mask & (states == HOLD) & ~previous_given, ONSET, states).astype(np.int32)


def no_hold_cells(mask: np.ndarray, before_sounding: np.ndarray | None = None) -> np.ndarray:
    """(T, P) bool: free cells right after a given cell (or, at frame 0, after a primer note `before_sounding`)."""
    previous = np.concatenate(
        [np.zeros_like(mask[:1]) if before_sounding is None else before_sounding[None], mask[:-1]]
    )
    return previous & ~mask


def _generate_kept(
    params,
    primer,
    given,
    forced,
    no_hold,
    forced_bins,
    primer_velocities,
    rng,
    choice,
    allowed,
    *,
    cfg,
    num_frames,
    mesh,
):
    decode.TRACE_COUNTS["generate_kept"] += 1
    context = decode.context_of(primer, cfg.max_len)
    fed = context.shape[1] + num_frames - 1
    offset = primer.shape[1] + 1 - context.shape[1]
    dynamic = primer_velocities is not None
    velocity_context = decode.context_of(primer_velocities, cfg.max_len, NO_VELOCITY) if dynamic else None
    outputs, state = decode.prefill(
        params, cfg, context, mesh, min(cfg.max_len, fed), velocity_context, offset, given=given
    )

    def choose(output, k, previous):
        key = jax.random.fold_in(rng, k)
        kept = Kept(forced[:, k], no_hold[:, k])
        states = sample_frame(output, key, choice, previous[0], cfg.num_states, cfg, params, allowed, kept)
        if not dynamic:
            return states, previous[1]
        bins = sample_velocities(output, states, jax.random.fold_in(key, 1), choice, cfg, params)
        return states, jnp.where(forced_bins[:, k] >= 0, forced_bins[:, k], bins)

    previous = (context[:, -1], velocity_context[:, -1] if dynamic else jnp.zeros_like(context[:, -1]))
    first = choose(outputs[:, -1], 0, previous)

    def step(carry, k):
        state, frame = carry
        output, state = decode.decode_step(params, cfg, state, frame[0], mesh, frame[1] if dynamic else None)
        following = choose(output, k, frame)
        return (state, following), following

    _, rest = jax.lax.scan(step, (state, first), jnp.arange(1, num_frames))
    return jax.tree.map(lambda f, r: jnp.concatenate([f[:, None], jnp.swapaxes(r, 0, 1)], axis=1), first, rest)


@functools.lru_cache(maxsize=16)
def _jitted(cfg_key: tuple, mesh: Mesh | None, num_frames: int) -> Callable:
    cfg = ModelConfig(**dict(cfg_key))
    return jax.jit(functools.partial(_generate_kept, cfg=cfg, num_frames=num_frames, mesh=mesh))


def given_codes(primer: np.ndarray, kept_states: np.ndarray, kept_mask: np.ndarray, lookahead: int) -> np.ndarray:
    """(B, 1 + Tp + T + lookahead + 1, P) codes by sequence index: the start frame, the primer (all given), the kept
    cells, then unknown frames so that every slice the decode takes exists."""
    batch, _, pitches = kept_states.shape
    start = np.zeros((batch, 1, pitches), np.int32)
    prime = codes_of(primer, np.ones(primer.shape, bool))
    tail = np.full((batch, lookahead + 1, pitches), UNKNOWN, np.int32)
    return np.concatenate([start, prime, codes_of(kept_states, kept_mask), tail], axis=1)


def generate_kept(
    params: Any,
    cfg: ModelConfig,
    primer: np.ndarray,
    kept_states: np.ndarray,
    kept_mask: np.ndarray,
    rng: jax.Array,
    strategy: Strategy | None = None,
    allowed: Any = None,
    after: int = 0,
    primer_velocities: np.ndarray | None = None,
    kept_velocities: np.ndarray | None = None,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Write the frames after `primer` (B, Tp, P) that `kept_states` (B, T, P) and `kept_mask` (B, T, P) describe,
    all but the last `after` of them (those are only seen): (states (B, T - after, P), velocity bins or None).

    With dynamics, `primer_velocities` and `kept_velocities` are velocity bins (`dynamics.onset_velocity_bins`)."""
    primer, kept_mask = np.asarray(primer, np.int32), np.asarray(kept_mask, bool)
    num_frames = kept_states.shape[1] - after
    if num_frames < 1:
        raise ValueError(f"{kept_states.shape[1]} kept frames, {after} after: nothing to write")
    after_primer = primer.shape[1] > 0
    states = np.stack([kept_grid(s, m, after_primer) for s, m in zip(kept_states, kept_mask, strict=True)])
    sounding = primer[:, -1] != OFF if after_primer else [None] * len(states)
    no_hold = np.stack([no_hold_cells(m, b) for m, b in zip(kept_mask, sounding, strict=True)])
    given = given_codes(primer, states, kept_mask, cfg.given_lookahead)
    forced = np.where(kept_mask, states, -1)[:, :num_frames]
    dynamic = bool(cfg.velocity_bins)
    if dynamic:
        if primer_velocities is None:
            primer_velocities = np.full(primer.shape, NO_VELOCITY, np.int32)
        bins = np.full(states.shape, -1, np.int32) if kept_velocities is None else np.asarray(kept_velocities)
        forced_bins = np.where(kept_mask & (states == ONSET), bins, -1)[:, :num_frames]
        primer_velocities = jnp.asarray(primer_velocities, jnp.int32)
    else:
        forced_bins, primer_velocities = np.zeros((1,), np.int32), None
    strategy = strategy or Strategy("temperature", 1.0)
    allowed = jnp.ones((cfg.num_pitches,), bool) if allowed is None else jnp.asarray(allowed, bool)
    fn = _jitted(decode._config_key(cfg), mesh, int(num_frames))
    args = (
        params,
        jnp.asarray(primer),
        jnp.asarray(given),
        jnp.asarray(forced, jnp.int32),
        jnp.asarray(no_hold[:, :num_frames]),
    )
    out_states, out_bins = decode._run(
        fn, mesh, *args, jnp.asarray(forced_bins, jnp.int32), primer_velocities, rng, strategy.arrays(), allowed
    )
    return np.asarray(out_states), (np.asarray(out_bins) if dynamic else None)


def velocity_bins_of(states: np.ndarray, velocities: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """MIDI velocities at the onsets of `states` -> the model's bins (`dynamics.NO_VELOCITY` elsewhere)."""
    return dynamics.onset_velocity_bins(states, velocities, cfg.velocity_bins)
