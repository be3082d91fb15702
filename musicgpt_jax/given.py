"""Given notes: notes the model is told it must keep, anywhere in the piece, later frames included.

A model with `model.given_lookahead` = L > 0 has a second input beside the frames: for each frame a code per pitch,
`UNKNOWN` (0, the model writes it) or 1 + the state it must have (off, onset, hold). Input position t predicts frame
t+1 and sees the codes of frames t+1 .. t+1+L (`GivenEmbed`): those of the frame it writes, exactly, and a summary of
the L after it, so the voices it writes under a given melody know where the melody goes next, and a gap knows what
comes after it. The input is a (B, T + L, P) array, codes of frames 1 .. T+L of the sequence whose input frames are
0 .. T-1 (frame 0 may be the start frame).

Training draws, per window, what is given (`draw_given`, `TASK_WEIGHTS`): nothing (plain composition: the same
checkpoint still composes), the top line (the highest sounding note of each frame), the bass line (the lowest), or
everything outside a gap. The loss leaves out the given cells (`free_cells`): the model is never asked to copy.
Sampling forces the given states (`musicgpt_jax.keep`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from musicgpt_jax.configs import ModelConfig
from musicgpt_jax.frames import OFF

UNKNOWN = 0  # a code: the model writes this cell; 1 + state: the cell must have that state
TASKS = ("none", "top", "bass", "gap")
TASK_WEIGHTS = (0.3, 0.35, 0.15, 0.2)  # how often training gives each
GAP_FRAMES = (16, 96)  # a training gap's length is drawn from this range (frames), then cut to the window


def codes_of(states: np.ndarray, given: np.ndarray) -> np.ndarray:
    """(T, P) codes: 1 + the state where `given`, `UNKNOWN` elsewhere."""
    return np.where(given, np.asarray(states, np.int32) + 1, UNKNOWN).astype(np.int32)


def line_mask(states: np.ndarray, highest: bool) -> np.ndarray:
    """(T, P) bool: the cell of each frame's highest (else lowest) sounding pitch; nothing in silent frames."""
    sounding = np.asarray(states) != OFF
    order = sounding[:, ::-1] if highest else sounding
    first = np.argmax(order, axis=1)
    pitch = sounding.shape[1] - 1 - first if highest else first
    mask = np.zeros_like(sounding)
    frames = np.flatnonzero(sounding.any(axis=1))
    mask[frames, pitch[frames]] = True
    return mask


def task_mask(states: np.ndarray, task: str, gap: tuple[int, int] | None = None) -> np.ndarray:
    """(T, P) bool: the cells of `states` that `task` gives; "gap" gives every cell outside frames gap[0]..gap[1]-1."""
    if task == "none":
        return np.zeros(states.shape, bool)
    if task in ("top", "bass"):
        return line_mask(states, highest=task == "top")
    if task == "gap":
        mask = np.ones(states.shape, bool)
        mask[gap[0] : gap[1]] = False
        return mask
    raise ValueError(f"given task {task!r}: expected one of {', '.join(TASKS)}")


def window_codes(
    states: np.ndarray, start: int, seq_len: int, lookahead: int, task: str, gap: tuple[int, int] | None = None
) -> np.ndarray:
    """(seq_len + lookahead, P) codes of frames start+1 .. start+seq_len+lookahead of `states` (start frame
    prepended); frames past the piece's end are `UNKNOWN`. `gap` counts from frame start+1."""
    span = np.asarray(states[start + 1 : start + 1 + seq_len + lookahead])
    codes = np.zeros((seq_len + lookahead, states.shape[1]), np.int32)
    codes[: len(span)] = codes_of(span, task_mask(span, task, gap))
    return codes


def draw_given(states: np.ndarray, start: int, seq_len: int, lookahead: int, rng: np.random.Generator) -> np.ndarray:
    """A training window's given codes (`window_codes`) for a task drawn from `TASK_WEIGHTS`."""
    task = TASKS[int(rng.choice(len(TASKS), p=TASK_WEIGHTS))]
    gap = None
    if task == "gap":
        length = int(rng.integers(GAP_FRAMES[0], GAP_FRAMES[1] + 1))
        begin = int(rng.integers(0, seq_len))
        gap = (begin, min(begin + length, seq_len + lookahead))
    return window_codes(states, start, seq_len, lookahead, task, gap)


def free_cells(given: jax.Array, length: int) -> jax.Array:
    """(B, length, P) float32: 1 where the target cell is the model's to write, 0 where it is given."""
    return (given[:, :length] == UNKNOWN).astype(jnp.float32)


class GivenEmbed(nn.Module):
    """Codes (B, T + L, P) -> (B, T, D): position t sees the given notes of its target frame (codes t) through one
    table, and of the L frames after it (codes t+1 .. t+L) through another, weighted per frame ahead and channel.
    None: nothing given (all `UNKNOWN`)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, codes: jax.Array | None, batch: int, length: int) -> jax.Array:
        cfg, ahead = self.cfg, self.cfg.given_lookahead
        if codes is None:
            codes = jnp.zeros((batch, length + ahead, cfg.num_pitches), jnp.int32)
        if codes.shape[1] != length + ahead:
            raise ValueError(f"given codes of {codes.shape[1]} frames: expected {length} + lookahead {ahead}")
        table = self.param(
            "table",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("pitch", "state", "embed")),
            (cfg.num_pitches, cfg.num_states + 1, 2 * cfg.d_model),
            jnp.float32,
        )
        weights = self.param(
            "lookahead",
            nn.with_logical_partitioning(nn.initializers.constant(1.0 / ahead), (None, "embed")),
            (ahead, cfg.d_model),
            jnp.float32,
        )
        dtype = table.dtype if cfg.dtype == "float32" else jnp.dtype(cfg.dtype)
        one_hot = jax.nn.one_hot(codes, cfg.num_states + 1, dtype=dtype)
        flat = one_hot.reshape(-1, cfg.num_pitches * (cfg.num_states + 1)) @ table.astype(dtype).reshape(
            -1, 2 * cfg.d_model
        )
        now, later = jnp.split(flat.reshape(codes.shape[0], codes.shape[1], -1), 2, axis=-1)
        out = now[:, :length]
        for k in range(1, ahead + 1):
            out = out + later[:, k : k + length] * weights[k - 1].astype(dtype)
        return out


def cell_log_likelihood(out: jax.Array, targets: jax.Array, cfg: ModelConfig, params: Any) -> jax.Array:
    """log p(state_p | ...) per (batch, time, pitch): the terms `model.frame_log_likelihood` sums."""
    from musicgpt_jax import dynamics
    from musicgpt_jax.model import nade_logits, nade_parameters

    out = dynamics.notes_output(out, cfg)
    head = nade_parameters(cfg, params)
    logits = out if head is None else nade_logits(head, out, targets)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
