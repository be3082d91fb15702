"""The cached decode loop: one prefill over the primer, then a compiled scan that adds one frame per step.

`sample_loop` is the loop itself and sees the model through a function (state, frame) -> (head output, state);
`generate` builds that function from the model and its key-value cache, and draws each frame with
`frame_choice.sample_frame`. `compose.py` turns the frames into MIDI.

Sequence convention (as in training): a piece starts with the all-OFF start frame (`frames.with_start_frame`),
and the logits at frame t predict frame t+1. The context of a generation is that start frame followed by the
primer, cut to its last `max_len` frames when longer (the start frame is dropped first, then the oldest primer
frames).

The cache holds `max_len` positions (the training window), or fewer when the whole sequence fits in fewer:
a step attends over the whole cache, masked, so its cost follows the cache's length. When a `max_len` cache
is full, the window slides: the newest half of the frames it holds is re-prefilled at positions
0..half-1 (rotary attention only sees relative positions) and decoding goes on from position `half`. The
slide is a `lax.cond` inside the scan, so shapes stay fixed and nothing leaves the compiled loop. Entries of
the cache beyond the current position are stale but masked out by the causal mask.

Compilation: `generate` and `decode_logits` build one jitted function per (model config, mesh, number of
steps) and jax.jit keeps one executable per input shape, so a second call with the same shapes (any seed,
primer content or temperature) compiles nothing. `TRACE_COUNTS` counts traces, for tests.

Dynamics (`cfg.velocity_bins` > 0): a frame is then the pair (states, velocity bins). Each step draws the states
as before, then their velocities given them (`frame_choice.sample_velocities`), and feeds both back; the window
keeps the velocities beside the states for the slide. `generate_with_velocities` returns both; a primer's own
velocities are its context.

With a mesh, the cache is constrained to the rule table's `cache_*` axes and batch-major arrays to `batch`;
the parameters are expected to be placed on that mesh already.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from musicgpt_jax import sharding
from musicgpt_jax.configs import ModelConfig
from musicgpt_jax.dynamics import NO_VELOCITY
from musicgpt_jax.frame_choice import Strategy, sample_frame, sample_velocities
from musicgpt_jax.frames import with_start_frame
from musicgpt_jax.model import CACHE_LOGICAL_AXES, Cache, MusicTransformer, init_cache

TRACE_COUNTS: collections.Counter[str] = collections.Counter()


class DecodeState(NamedTuple):
    cache: Cache
    window: jax.Array  # (B, cache length, P) int32: the frames the cache holds, at their cache positions
    index: jax.Array  # () int32: the cache position the next frame is written to
    velocity_window: jax.Array | None = None  # (B, cache length, P) int32: the frames' velocity bins (dynamics)
    offset: jax.Array | int = 0  # () int32: the sequence index of the frame at cache position 0 (start frame: 0)
    given: jax.Array | None = None  # (B, frames, P) int32: the given notes' codes by sequence index (`given`)
    labels: dict[str, jax.Array] | None = None  # {"key", "composer"} (B,) int32: the piece's (`conditioning`)


def context_of(primer: jax.Array, max_len: int, fill: int = 0) -> jax.Array:
    """The start frame followed by `primer` (B, Tp, P), cut to its last `max_len` frames; for velocity bins the
    start frame holds `fill` (no velocity) instead of OFF."""
    with_start = with_start_frame(primer, jnp)
    return with_start.at[:, 0].set(fill)[:, -max_len:] if fill else with_start[:, -max_len:]


def _constrain(x: jax.Array, mesh: Mesh | None, logical_axes: tuple[str | None, ...]) -> jax.Array:
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, sharding.logical_sharding(mesh, logical_axes))


def _constrain_state(state: DecodeState, mesh: Mesh | None) -> DecodeState:
    cache = {k: _constrain(v, mesh, CACHE_LOGICAL_AXES) for k, v in state.cache.items()}
    velocity_window = state.velocity_window
    if velocity_window is not None:
        velocity_window = _constrain(velocity_window, mesh, ("batch", None, None))
    window = _constrain(state.window, mesh, ("batch", None, None))
    return DecodeState(cache, window, state.index, velocity_window, state.offset, state.given, state.labels)


def given_inputs(cfg: ModelConfig, given: jax.Array | None, first: jax.Array, length: int) -> dict[str, jax.Array]:
    """The model's `given` input for `length` input frames from sequence index `first`: the codes of frames
    first+1 .. first+length+lookahead of the whole sequence's codes `given` (none for a model without the input)."""
    if given is None or not cfg.given_lookahead:
        return {}
    size = (given.shape[0], length + cfg.given_lookahead, given.shape[2])
    return {"given": jax.lax.dynamic_slice(given, (0, first + 1, 0), size)}


def _velocity_inputs(velocities: jax.Array | None) -> dict[str, jax.Array]:
    return {} if velocities is None else {"velocities": velocities}


def prefill(
    params: Any,
    cfg: ModelConfig,
    context: jax.Array,
    mesh: Mesh | None = None,
    cache_len: int | None = None,
    velocities: jax.Array | None = None,
    offset: jax.Array | int = 0,
    given: jax.Array | None = None,
    labels: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, DecodeState]:
    """Run `context` (B, T, P) into an empty cache: (logits of every position, state).

    The cache has `cache_len` positions (default `max_len`); one shorter than `max_len` never slides, so it
    must hold every frame the decode will feed. A model with dynamics also takes the context's velocity bins.
    `offset` is the sequence index of the context's first frame (0: it is the start frame; more when the front
    of a long primer was cut), so that a model with `beat_steps` knows where each frame falls in the beat.
    `given` (B, frames, P): the codes of notes to keep, by sequence index (`musicgpt_jax.keep`), padded with
    `given_lookahead` + 1 unknown frames past the last frame fed. `labels`: the key and composer the model is
    told (`conditioning.request`; None: unknown), kept in the state for every later step.
    """
    batch, length, pitches = context.shape
    cache_len = cache_len or cfg.max_len
    if not length <= cache_len <= cfg.max_len:
        raise ValueError(f"prefill of {length} frames into a {cache_len}-position cache (context {cfg.max_len})")
    model = MusicTransformer(cfg)
    cache = init_cache(cfg, batch, cache_len)
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    offset = jnp.asarray(offset, jnp.int32)
    logits, cache = model.apply(
        {"params": params},
        context,
        positions,
        cache=cache,
        cache_index=0,
        steps=positions + offset,
        **_velocity_inputs(velocities),
        **given_inputs(cfg, given, offset, length),
        **(labels or {}),
    )
    window = jnp.zeros((batch, cache_len, pitches), jnp.int32).at[:, :length].set(context)
    velocity_window = None
    if velocities is not None:
        velocity_window = jnp.full((batch, cache_len, pitches), NO_VELOCITY, jnp.int32).at[:, :length].set(velocities)
    state = DecodeState(cache, window, jnp.asarray(length, jnp.int32), velocity_window, offset, given, labels)
    return logits, _constrain_state(state, mesh)


def _slide(params: Any, cfg: ModelConfig, state: DecodeState) -> DecodeState:
    """Keep the newest half of the window: move it to positions 0..half-1 and rebuild the cache from it."""
    length = cfg.max_len
    half = length // 2
    window = jnp.roll(state.window, -(length - half), axis=1)
    velocity_window = state.velocity_window
    if velocity_window is not None:
        velocity_window = jnp.roll(velocity_window, -(length - half), axis=1)
    batch = window.shape[0]
    positions = jnp.broadcast_to(jnp.arange(half), (batch, half))
    extra = {} if velocity_window is None else {"velocities": velocity_window[:, :half]}
    offset = state.offset + (length - half)
    _, cache = MusicTransformer(cfg).apply(
        {"params": params},
        window[:, :half],
        positions,
        cache=state.cache,
        cache_index=0,
        steps=positions + offset,
        **extra,
        **given_inputs(cfg, state.given, offset, half),
        **(state.labels or {}),
    )
    return DecodeState(cache, window, jnp.asarray(half, jnp.int32), velocity_window, offset, state.given, state.labels)


def decode_step(
    params: Any,
    cfg: ModelConfig,
    state: DecodeState,
    frame: jax.Array,
    mesh: Mesh | None = None,
    velocities: jax.Array | None = None,
) -> tuple[jax.Array, DecodeState]:
    """Feed one frame (B, P), with its velocity bins (B, P) for a model with dynamics: (the head's output for
    the frame after it — logits (B, P, S), or (B, P·S + H) for the NADE head —, new state). Slides when full."""
    if state.window.shape[1] == cfg.max_len:  # a shorter cache is never full (see `prefill`)
        state = jax.lax.cond(state.index >= cfg.max_len, lambda s: _slide(params, cfg, s), lambda s: s, state)
        state = _constrain_state(state, mesh)
    index = state.index
    window = jax.lax.dynamic_update_slice(state.window, frame[:, None].astype(jnp.int32), (0, index, 0))
    velocity_window, extra = state.velocity_window, {}
    if velocities is not None:
        fed = velocities[:, None].astype(jnp.int32)
        velocity_window = jax.lax.dynamic_update_slice(velocity_window, fed, (0, index, 0))
        extra = {"velocities": fed}
    positions = jnp.full((frame.shape[0], 1), index)
    steps = positions + state.offset
    extra.update(given_inputs(cfg, state.given, state.offset + index, 1))
    extra.update(state.labels or {})
    logits, cache = MusicTransformer(cfg).apply(
        {"params": params}, frame[:, None], positions, cache=state.cache, cache_index=index, steps=steps, **extra
    )
    state = DecodeState(cache, window, index + 1, velocity_window, state.offset, state.given, state.labels)
    return logits[:, 0], _constrain_state(state, mesh)


NextOutput = Callable[[Any, Any], tuple[jax.Array, Any]]  # (state, frame) -> (head output, state)
ChooseFrame = Callable[[jax.Array, jax.Array, Any], Any]  # (head output, key, previous) -> frame


def sample_loop(
    next_output: NextOutput,
    choose_frame: ChooseFrame,
    output: jax.Array,
    state: Any,
    previous: Any,
    num_frames: int,
    rng: jax.Array,
) -> Any:
    """`num_frames` frames (B, num_frames, P), each chosen from the output for the one before and fed back.
    A frame may be any pytree of (B, ...) arrays (dynamics: states and velocity bins); each leaf is stacked so.

    The loop sees the model only through `next_output` (feed a frame, get the head's output for the next one and
    the new state: the cache here), as the Flax lm1b sampler sees its model through a tokens-to-logits function.
    `output` and `previous` are the output after the context and its last frame; frame k is chosen with
    `fold_in(rng, k)`.
    """
    first = choose_frame(output, jax.random.fold_in(rng, 0), previous)

    def step(carry, t):
        state, frame = carry
        output, state = next_output(state, frame)
        following = choose_frame(output, jax.random.fold_in(rng, t), frame)
        return (state, following), following

    _, rest = jax.lax.scan(step, (state, first), jnp.arange(1, num_frames))
    return jax.tree.map(lambda f, r: jnp.concatenate([f[:, None], jnp.swapaxes(r, 0, 1)], axis=1), first, rest)


def _generate(
    params, primer, rng, choice, allowed, primer_velocities=None, labels=None, *, cfg: ModelConfig, num_frames, mesh
):
    """The frames (B, num_frames, P) after `primer`; with dynamics (`cfg.velocity_bins`) a frame is the pair
    (states, velocity bins) and `primer_velocities` are the primer's bins; `labels` as `prefill` takes them."""
    TRACE_COUNTS["generate"] += 1
    constrain = lambda x: _constrain(x, mesh, ("batch", None, None))
    dynamic = bool(cfg.velocity_bins)
    context = constrain(context_of(primer, cfg.max_len))
    velocity_context = constrain(context_of(primer_velocities, cfg.max_len, NO_VELOCITY)) if dynamic else None
    fed = context.shape[1] + num_frames - 1  # the last sampled frame is never fed
    offset = primer.shape[1] + 1 - context.shape[1]  # the sequence index of the context's first frame
    cache_len = min(cfg.max_len, fed)
    outputs, state = prefill(params, cfg, context, mesh, cache_len, velocity_context, offset, labels=labels)

    def next_output(state: DecodeState, frame: Any) -> tuple[jax.Array, DecodeState]:
        states, bins = frame if dynamic else (frame, None)
        return decode_step(params, cfg, state, states, mesh, bins)

    def choose_frame(output: jax.Array, key: jax.Array, previous: Any) -> Any:
        before = previous[0] if dynamic else previous
        states = sample_frame(output, key, choice, before, cfg.num_states, cfg, params, allowed)
        if not dynamic:
            return states
        return states, sample_velocities(output, states, jax.random.fold_in(key, 1), choice, cfg, params)

    previous = (context[:, -1], velocity_context[:, -1]) if dynamic else context[:, -1]
    frames = sample_loop(next_output, choose_frame, outputs[:, -1], state, previous, num_frames, rng)
    return jax.tree.map(constrain, frames)


def _decode_logits(params, frames, *, cfg: ModelConfig, prefill_len: int, mesh: Mesh | None):
    TRACE_COUNTS["decode_logits"] += 1
    frames = _constrain(frames, mesh, ("batch", None, None))
    cache_len = min(cfg.max_len, frames.shape[1])
    prefill_logits, state = prefill(params, cfg, frames[:, :prefill_len], mesh, cache_len)

    def step(state, frame):
        logits, state = decode_step(params, cfg, state, frame, mesh)
        return state, logits

    _, step_logits = jax.lax.scan(step, state, jnp.swapaxes(frames[:, prefill_len:], 0, 1))
    return jnp.concatenate([prefill_logits, jnp.swapaxes(step_logits, 0, 1)], axis=1)


def _config_key(cfg: ModelConfig) -> tuple:
    return tuple(sorted(dataclasses.asdict(cfg).items()))


@functools.lru_cache(maxsize=64)
def _jitted_generate(cfg_key: tuple, mesh: Mesh | None, num_frames: int) -> Callable:
    return jax.jit(functools.partial(_generate, cfg=ModelConfig(**dict(cfg_key)), num_frames=num_frames, mesh=mesh))


@functools.lru_cache(maxsize=64)
def _jitted_decode_logits(cfg_key: tuple, mesh: Mesh | None, prefill_len: int) -> Callable:
    return jax.jit(
        functools.partial(_decode_logits, cfg=ModelConfig(**dict(cfg_key)), prefill_len=prefill_len, mesh=mesh)
    )


def _check(cfg: ModelConfig, states: Any, mesh: Mesh | None) -> None:
    if cfg.max_len < 2:
        raise ValueError(f"max_len={cfg.max_len}: decoding needs a context of at least 2 frames")
    if np.ndim(states) != 3 or np.shape(states)[2] != cfg.num_pitches:
        raise ValueError(f"frames of shape {np.shape(states)}: expected (batch, time, {cfg.num_pitches})")
    if mesh is not None and np.shape(states)[0] % sharding.data_parallel_size(mesh):
        raise ValueError(
            f"batch {np.shape(states)[0]} is not divisible by the mesh's data*fsdp = "
            f"{sharding.data_parallel_size(mesh)}"
        )


def _run(fn: Callable, mesh: Mesh | None, *args) -> jax.Array:
    if mesh is None:
        return fn(*args)
    with sharding.activate(mesh):
        return fn(*args)


def generate(
    params: Any,
    cfg: ModelConfig,
    primer_states: Any,
    num_frames: int,
    rng: jax.Array,
    temperature: float = 1.0,
    mesh: Mesh | None = None,
    strategy: Strategy | None = None,
    allowed: Any = None,
    labels: dict[str, Any] | None = None,
) -> jax.Array:
    """Sample `num_frames` frames (B, num_frames, P) int32 that follow `primer_states` (B, Tp, P).

    `Tp` may be 0 (start from the empty frame alone). Frame k is sampled with `fold_in(rng, k)`, so the same
    key and inputs give the same music. Each choice is drawn by `strategy` (default: plain `temperature`;
    temperature 0 is argmax); pitches where `allowed` (P,) bool is False are never sounded. A model with
    dynamics draws velocities too (`generate_with_velocities`); only the states are returned. `labels`: the key
    and composer to write in, {"key", "composer"} (B,) int32 (`conditioning.request`; None: unknown).
    """
    frames = _sample(params, cfg, primer_states, None, num_frames, rng, temperature, mesh, strategy, allowed, labels)
    return frames[0] if cfg.velocity_bins else frames


def generate_with_velocities(
    params: Any,
    cfg: ModelConfig,
    primer_states: Any,
    primer_velocities: Any,
    num_frames: int,
    rng: jax.Array,
    **options,
) -> tuple[jax.Array, jax.Array]:
    """`generate` for a model with dynamics (`cfg.velocity_bins` > 0): (states, velocity bins), each
    (B, num_frames, P) int32, bins `dynamics.NO_VELOCITY` off the onsets. `primer_velocities` (B, Tp, P) are the
    primer's bins (`dynamics.onset_velocity_bins`; None: none known), which the model hears as it heard them
    in training. `options` are `generate`'s (temperature, mesh, strategy, allowed, labels)."""
    if not cfg.velocity_bins:
        raise ValueError("generate_with_velocities: the model has no dynamics (model.velocity_bins=0)")
    return _sample(params, cfg, primer_states, primer_velocities, num_frames, rng, **options)


def _sample(
    params,
    cfg,
    primer_states,
    primer_velocities,
    num_frames,
    rng,
    temperature=1.0,
    mesh=None,
    strategy=None,
    allowed=None,
    labels=None,
):
    """`generate`'s checks and arguments, then the one jitted `_generate`, with or without dynamics."""
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: must be at least 1")
    _check(cfg, primer_states, mesh)
    primer = jnp.asarray(primer_states, jnp.int32)
    velocities = None
    if cfg.velocity_bins:
        if primer_velocities is None:
            velocities = jnp.full(primer.shape, NO_VELOCITY, jnp.int32)
        else:
            velocities = jnp.asarray(primer_velocities, jnp.int32)
            if velocities.shape != primer.shape:
                raise ValueError(f"primer velocities of shape {velocities.shape}: expected {primer.shape}")
    fn = _jitted_generate(_config_key(cfg), mesh, int(num_frames))
    strategy = strategy or Strategy("temperature", temperature)
    allowed = jnp.ones((cfg.num_pitches,), bool) if allowed is None else jnp.asarray(allowed, bool)
    if labels:
        labels = {name: jnp.broadcast_to(jnp.asarray(v, jnp.int32), primer.shape[:1]) for name, v in labels.items()}
    return _run(fn, mesh, params, primer, rng, strategy.arrays(), allowed, velocities, labels or None)


def decode_logits(
    params: Any, cfg: ModelConfig, frames: Any, prefill_len: int = 1, mesh: Mesh | None = None
) -> jax.Array:
    """Teacher forcing through the decode path: logits (B, T, P, S) for a given sequence (B, T, P).

    The first `prefill_len` frames go through one prefill, the rest one decode step each (sliding the window
    as `generate` does); entry t holds the logits of frame t+1. For tests and benchmarks.
    """
    if not 1 <= prefill_len <= min(cfg.max_len, np.shape(frames)[1]):
        raise ValueError(f"prefill_len={prefill_len}: must be in 1..min(max_len, frames)")
    _check(cfg, frames, mesh)
    fn = _jitted_decode_logits(_config_key(cfg), mesh, int(prefill_len))
    return _run(fn, mesh, params, jnp.asarray(frames, jnp.int32))
