"""Generating pieces with a trained model's parameters, on the music's grid; no files written.

The grid and primer rules: how the model's columns map onto MIDI pitches and steps (`Grid`, `grid_of`), which
pitches may sound (`keyboard_of`), the primer as the last bars of a MIDI file (`read_primer`), a bar's length;
then `generate_pieces`, the one call of the decode loop with or without dynamics, and `output_frames`, the frames
a piece's file holds. `compose` (sample.py) and `training_samples` (TensorBoard) both generate through here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from musicgpt_jax import decode, dynamics
from musicgpt_jax.configs import Config, ModelConfig
from musicgpt_jax.frame_choice import Strategy
from musicgpt_jax.frames import (
    DEFAULT_TEMPO,
    DEFAULT_TIME_SIGNATURE,
    DEFAULT_VELOCITY,
    OFF,
    Frames,
    Meter,
    frames_before,
    note_starts,
    restart_held,
)
from musicgpt_jax.midi_io import midi_to_frames

# Temperature 0.9: chosen on the validation chorales (docs/RESULTS.md, "Long samples"); top_p: the nucleus default.
DEFAULT_STRATEGY = Strategy("temperature", 0.9, 0.95)


def run_strategy(cfg: Config) -> Strategy:
    """The strategy a run samples with when not told otherwise: its preset's temperature (`SamplingConfig`)."""
    return Strategy(DEFAULT_STRATEGY.name, cfg.sampling.temperature, DEFAULT_STRATEGY.top_p)


class SampleError(ValueError):
    """Bad input to sampling (flag, primer, workdir); the message is one line naming it and the reason."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """How the model's frames map onto music: time resolution and keyboard."""

    steps_per_quarter: int
    lowest_pitch: int
    num_pitches: int
    num_states: int


def keyboard_of(cfg: Config, grid: Grid) -> np.ndarray:
    """(P,) bool: the model columns the run's training data sounds, widened by its transposition unless the run
    says not to (`SamplingConfig.widen_keyboard`); all when the dataset card is not at hand."""
    try:
        from musicgpt_jax import records

        counts = np.asarray(records.load_card(cfg.data.data_dir, cfg.data.dataset)["pitch_histogram"]["counts"])
    except (OSError, ValueError, KeyError, ImportError):
        return np.ones(grid.num_pitches, bool)
    used = np.flatnonzero(counts)
    if counts.shape != (grid.num_pitches,) or not used.size:
        return np.ones(grid.num_pitches, bool)
    columns = np.arange(grid.num_pitches)
    widen = cfg.data.transpose if cfg.sampling.widen_keyboard else 0
    return (columns >= used[0] - widen) & (columns <= used[-1] + widen)


def grid_of(cfg: Config) -> Grid:
    """The run's time grid and keyboard: from its dataset card if present, else from the model's shape."""
    model = cfg.model
    try:
        from musicgpt_jax import records

        info = records.load_info(cfg.data.data_dir, cfg.data.dataset)
        if (info.num_pitches, info.num_states) == (model.num_pitches, model.num_states):
            return Grid(info.steps_per_quarter, info.lowest_pitch, model.num_pitches, model.num_states)
    except (OSError, ValueError, KeyError, ImportError):
        pass
    if model.num_pitches == 88:
        from musicgpt_jax import corpus

        return Grid(corpus.benchmark_steps_per_quarter(cfg.data.dataset), 21, 88, model.num_states)
    return Grid(8, 0, model.num_pitches, model.num_states)


def to_grid(frames: Frames, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Codec frames (128 pitches, 3 states) -> (states, velocities) on the model's keyboard and states."""
    columns = slice(grid.lowest_pitch, grid.lowest_pitch + grid.num_pitches)
    states = frames.states[:, columns].astype(np.int32)
    if grid.num_states == 2:
        states = (states != OFF).astype(np.int32)
    velocities = np.where(note_starts(states, grid.num_states), frames.velocities[:, columns], 0)
    return states, velocities.astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Primer:
    states: np.ndarray  # (T, P) on the model's grid
    velocities: np.ndarray
    tempos: tuple[tuple[int, float], ...]
    time_signatures: tuple[tuple[int, int, int], ...]
    steps_per_bar: int
    cut_to_context: bool


def read_primer(path: str, grid: Grid, prime_bars: int, context: int) -> Primer:
    """The last `prime_bars` bars of a MIDI file on the model's grid, cut to fit `context` frames."""
    frames = midi_to_frames(path, steps_per_quarter=grid.steps_per_quarter)
    states, _ = to_grid(frames, grid)
    if not np.any(states != OFF):
        highest = grid.lowest_pitch + grid.num_pitches - 1
        where = f" in the model's range (MIDI {grid.lowest_pitch}..{highest})" if frames.num_frames else ""
        raise SampleError(f"--prime {path}: no notes{where}")
    meter, end = frames.meter, frames.num_frames
    start = _primer_start(meter, end, prime_bars)
    cut = end - start > context
    if cut:
        start = _window_start(meter, end, context)
    kept = frames.cut(start)
    states, velocities = to_grid(kept, grid)
    return Primer(states, velocities, kept.tempos, kept.time_signatures, meter.steps_per_bar(end - 1), cut)


def _primer_start(meter: Meter, end: int, bars: int) -> int:
    """The first step of the last `bars` bars before `end` (step 0 when the piece has fewer)."""
    lines = meter.bar_lines(end - 1)
    return lines[max(0, len(lines) - bars)]


def _window_start(meter: Meter, end: int, context: int) -> int:
    """The start of the last `context` frames before `end`, moved on to the next bar line when there is one
    before `end`, so bar lines stay where they were."""
    start = end - context
    return next((line for line in meter.bar_lines(end - 1) if line >= start), start)


def steps_per_bar(grid: Grid, primer: Primer | None) -> int:
    """The length of a bar of the output: the primer's last bar, else a bar of MIDI's default meter."""
    return primer.steps_per_bar if primer else Meter((), grid.steps_per_quarter).steps_per_bar()


def generate_pieces(
    params: Any,
    model: ModelConfig,
    primer: Primer | None,
    num_pieces: int,
    num_frames: int,
    rng: jax.Array,
    strategy: Strategy,
    allowed: np.ndarray | None,
    labels: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`num_pieces` pieces of `num_frames` frames after `primer` (None: from the empty start), as one batch:
    (states (N, T, P), MIDI velocities (N, T, P) of a model with dynamics, else None). With dynamics the
    primer's velocities are context and the generated ones are returned. `labels`: the key and composer asked
    for (`conditioning.request`; None: unknown)."""
    prime_states = primer.states if primer is not None else np.zeros((0, model.num_pitches), np.int32)
    batch = np.broadcast_to(prime_states, (num_pieces, *prime_states.shape))
    if not model.velocity_bins:
        states = decode.generate(
            params, model, batch, num_frames, rng, strategy=strategy, allowed=allowed, labels=labels
        )
        return np.asarray(states), None
    prime_velocities = primer.velocities if primer is not None else np.zeros_like(prime_states)
    prime_bins = dynamics.onset_velocity_bins(prime_states, prime_velocities, model.velocity_bins)
    generated, bins = decode.generate_with_velocities(
        params, model, batch, np.broadcast_to(prime_bins, batch.shape), num_frames, rng, strategy=strategy,
        allowed=allowed, labels=labels,
    )  # fmt: skip
    return np.asarray(generated), dynamics.bin_to_velocity(np.asarray(bins), model.velocity_bins)


def output_frames(
    generated: np.ndarray,
    grid: Grid,
    primer: Primer | None,
    include_prime: bool,
    bpm: float | None,
    generated_velocities: np.ndarray | None = None,
) -> Frames:
    """The frames one sample file holds: the generated frames, after the primer when it is included.
    `generated_velocities` (MIDI velocities, 0 where unknown) are the generated onsets' own."""
    prime_states = primer.states if primer is not None and include_prime else generated[:0]
    states = np.concatenate([prime_states, generated]).astype(np.int32)
    if grid.num_states == 3:  # a HOLD after silence (a note the primer's cut left sounding) starts here
        states = restart_held(states, frames_before(states))
    velocities = np.zeros(states.shape, np.uint8)
    if len(prime_states):
        velocities[: len(prime_states)] = primer.velocities
    if generated_velocities is not None:
        velocities[len(prime_states) :] = generated_velocities
    # every note start gets a velocity: the primer's own, else the default (generated notes, cut notes)
    velocities = np.where(velocities > 0, velocities, DEFAULT_VELOCITY)
    velocities = np.where(note_starts(states, grid.num_states), velocities, 0)
    if primer is None:
        tempos, signatures = ((0, bpm or DEFAULT_TEMPO),), ((0, *DEFAULT_TIME_SIGNATURE),)
    elif include_prime:
        tempos = ((0, bpm),) if bpm else primer.tempos
        signatures = primer.time_signatures
    else:
        tempos = ((0, bpm or primer.tempos[-1][1]),)
        signatures = ((0, *primer.time_signatures[-1][1:]),)
    return Frames(
        states,
        velocities,
        steps_per_quarter=grid.steps_per_quarter,
        lowest_pitch=grid.lowest_pitch,
        num_states=grid.num_states,
        tempos=tempos,
        time_signatures=signatures,
    )
