"""How each choice within a frame is drawn: the named sampling strategies (greedy, temperature, nucleus).

A choice is one pitch's next state (off / onset / hold, or off / on), drawn from that pitch's logits: all at once
for the independent head, low pitch to high for the NADE head. The strategies are named as MaxText names its own:

- `greedy`: the most likely state (temperature and top_p are ignored);
- `temperature`: a draw from softmax(logits / temperature);
- `nucleus`: the same draw restricted to the smallest set of states whose probability reaches `top_p`.

A strategy enters the compiled decode loop as two arrays (`Strategy.arrays`), so a new temperature or top_p
compiles nothing; temperature 0 is greedy whatever the name.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

STRATEGIES = ("greedy", "temperature", "nucleus")


class ChoiceArrays(NamedTuple):
    temperature: jax.Array  # () float32; 0 = argmax
    top_p: jax.Array  # () float32 in (0, 1]; 1 = the whole distribution


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
