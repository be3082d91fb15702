"""The per-frame choice: the next frame drawn from the head's output, by a named strategy.

`sample_frame` is the one entry point (the decode loop and scheduled sampling call it). It draws every pitch's
state at once for the independent head, and pitch by pitch, low to high, for the NADE head (`nade_sample`);
pitches off the keyboard stay off, and a HOLD drawn after an OFF starts a note (`frames.restart_held`).

Each choice is one pitch's next state (off / onset / hold, or off / on), drawn from that pitch's logits by a
strategy, named as MaxText names its own:

- `greedy`: the most likely state (temperature and top_p are ignored);
- `temperature`: a draw from softmax(logits / temperature);
- `nucleus`: the same draw restricted to the smallest set of states whose probability reaches `top_p`.

A strategy enters the compiled decode loop as two arrays (`Strategy.arrays`), so a new temperature or top_p
compiles nothing; temperature 0 is greedy whatever the name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from musicgpt_jax import dynamics
from musicgpt_jax.configs import ModelConfig
from musicgpt_jax.frames import HOLD, OFF, restart_held
from musicgpt_jax.model import nade_parameters, split_nade_output

STRATEGIES = ("greedy", "temperature", "nucleus")


class ChoiceArrays(NamedTuple):
    temperature: jax.Array  # () float32; 0 = argmax
    top_p: jax.Array | None  # () float32 in (0, 1]; 1 = the whole distribution; None: that, skipping the cut


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str = "temperature"
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"--strategy {self.name}: unknown (known: {', '.join(STRATEGIES)})")
        if not self.temperature >= 0:
            raise ValueError(f"--temperature {self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p {self.top_p}: must be in (0, 1]")

    def arrays(self) -> ChoiceArrays:
        temperature = 0.0 if self.name == "greedy" else self.temperature
        top_p = self.top_p if self.name == "nucleus" else 1.0
        return ChoiceArrays(jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32))

    def describe(self) -> str:
        if self.name == "greedy" or self.temperature == 0:
            return "greedy"
        if self.name == "nucleus":
            return f"nucleus (top_p {self.top_p:g}, temperature {self.temperature:g})"
        return f"temperature {self.temperature:g}"


def choose(logits: jax.Array, rng: jax.Array, choice: ChoiceArrays) -> jax.Array:
    """One state per row of `logits` (..., S), int32, drawn by the strategy `choice`."""
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits.astype(jnp.float32) / jnp.maximum(choice.temperature, 1e-6)
    if choice.top_p is None:  # a plain draw, without the sort (scheduled sampling draws a whole batch this way)
        return jnp.where(choice.temperature > 0, jax.random.categorical(rng, scaled, axis=-1), greedy).astype(jnp.int32)
    probs = jax.nn.softmax(scaled, axis=-1)
    descending = jnp.sort(probs, axis=-1)[..., ::-1]
    reached = jnp.cumsum(descending, axis=-1) >= choice.top_p
    # The smallest kept probability: the one at which the cumulative sum first reaches top_p (the last if never,
    # as rounding can leave the total a hair under 1).
    first = jnp.where(reached.any(axis=-1), jnp.argmax(reached, axis=-1), descending.shape[-1] - 1)
    cutoff = jnp.take_along_axis(descending, first[..., None], axis=-1)
    kept = jnp.where(probs >= cutoff, scaled, -jnp.inf)
    sampled = jax.random.categorical(rng, kept, axis=-1)
    return jnp.where(choice.temperature > 0, sampled, greedy).astype(jnp.int32)


def _restrict(logits: jax.Array, allowed: jax.Array | None) -> jax.Array:
    """Logits (..., P, S) or (..., S) for one pitch with every state but OFF impossible where `allowed` is False."""
    if allowed is None:
        return logits
    sounding = jnp.arange(logits.shape[-1]) != OFF
    return jnp.where(~allowed[..., None] & sounding, -jnp.inf, logits)


class Kept(NamedTuple):
    """Notes a frame must keep (`musicgpt_jax.keep`): `forced` (..., P) the state a pitch must have, -1 where the
    model chooses; `no_hold` (..., P) where it must not choose HOLD (the frame after a kept note ends: a HOLD would
    lengthen it)."""

    forced: jax.Array
    no_hold: jax.Array


def _pick_states(
    logits: jax.Array, rng: jax.Array, choice: ChoiceArrays, previous: jax.Array, num_states: int, kept=None
):
    if kept is not None and num_states == 3:
        logits = jnp.where(kept.no_hold[..., None] & (jnp.arange(num_states) == HOLD), -jnp.inf, logits)
    states = choose(logits, rng, choice)
    if num_states == 3:  # a HOLD only continues a sounding note: after an OFF it starts one
        states = restart_held(states, previous, jnp)
    return states if kept is None else jnp.where(kept.forced >= 0, kept.forced, states)


def nade_sample(
    head: dict, out: jax.Array, rng: jax.Array, choice: ChoiceArrays, previous: jax.Array, allowed=None, kept=None
) -> jax.Array:
    """Sample a frame (B, P) pitch by pitch, low to high, from the head's output `out` (B, P·S + H); a `kept`
    pitch takes its given state, which the pitches above it are then drawn given."""
    direct, context = split_nade_output(head, out)
    num_pitches, num_states = head["input_weights"].shape[:2]
    allowed = jnp.ones((num_pitches,), bool) if allowed is None else allowed

    def pitch_step(activation, xs):
        w_in, w_out, direct_p, key, prev, allowed_p, kept_p = xs
        logits = _restrict(direct_p + jnp.tanh(activation) @ w_out, allowed_p)  # (B, S)
        state = _pick_states(logits, key, choice, prev, num_states, kept_p)
        return activation + w_in[state], state

    keys = jax.random.split(rng, previous.shape[-1])
    kept_t = None if kept is None else Kept(kept.forced.T, kept.no_hold.T)
    xs = (head["input_weights"], head["output_weights"], jnp.swapaxes(direct, 0, 1), keys, previous.T, allowed, kept_t)
    _, states = jax.lax.scan(pitch_step, context.astype(jnp.float32), xs)
    return states.T


def sample_frame(
    out: jax.Array,
    rng: jax.Array,
    choice: ChoiceArrays | float | jax.Array,
    previous: jax.Array,
    num_states: int,
    cfg: ModelConfig | None = None,
    params: Any = None,
    allowed: jax.Array | None = None,
    kept: Kept | None = None,
) -> jax.Array:
    """Sample the next frame (B, P) from the head's output for one position (logits (B, P, S), or (B, P·S + H)),
    keeping states consistent with the previous frame.

    `choice` is a strategy's arrays (`Strategy.arrays`) or a bare temperature (0 = argmax, per pitch
    in order for the NADE head). Pitches where `allowed` (P,) is False stay off. With 3 states a HOLD drawn on
    a pitch that was off starts a note (`frames.restart_held`). A model with dynamics
    (`cfg.velocity_bins`) needs `cfg`; the frame's velocities are drawn after it, given it (`sample_velocities`).
    `kept` pitches take their given states, whatever `allowed` says (`Kept`).
    """
    if not isinstance(choice, ChoiceArrays):
        choice = ChoiceArrays(jnp.asarray(choice, jnp.float32), None)
    out = dynamics.notes_output(out, cfg)  # with dynamics, velocities are drawn after (`sample_velocities`)
    head = nade_parameters(cfg, params)
    if head is not None:
        return nade_sample(head, out, rng, choice, previous, allowed, kept)
    return _pick_states(_restrict(out, allowed), rng, choice, previous, num_states, kept)


def sample_velocities(
    out: jax.Array,
    states: jax.Array,
    rng: jax.Array,
    choice: ChoiceArrays | float | jax.Array,
    cfg: ModelConfig,
    params: Any,
) -> jax.Array:
    """The velocity bins (B, P) of a frame `states` (B, P) chosen from the output `out` (B, F) of a model with
    dynamics, drawn by the same strategy; `dynamics.NO_VELOCITY` off the onsets."""
    if not isinstance(choice, ChoiceArrays):
        choice = ChoiceArrays(jnp.asarray(choice, jnp.float32), None)
    return dynamics.sample_velocities(out, states, rng, lambda logits, key: choose(logits, key, choice), cfg, params)
