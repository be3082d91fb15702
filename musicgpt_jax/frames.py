"""The music format: frames of pitch states on a grid of steps, their notes, and their bars. numpy only.

A piece is a grid of ``T`` frames (time steps, ``steps_per_quarter`` per quarter note) by ``P`` pitches, column
``j`` being MIDI pitch ``lowest_pitch + j``. Each cell holds a state. With ``num_states=3`` (128-pitch MIDI data)
it is OFF, ONSET (a note starts in this frame) or HOLD (a note that started earlier still sounds); with
``num_states=2`` (the sustain-only polyphonic benchmarks) it is OFF or 1 = sounding, and every run of sounding
frames is one note. ``velocities`` holds the onset velocity at note starts, 0 elsewhere. The tempo map and the
time signatures ride along as metadata, in steps; ``Meter`` answers where the bars are.

A sequence the model reads begins with the start frame (``with_start_frame``): one all-OFF frame that the first
real frame is predicted from. Reading and writing MIDI is ``midi_io``'s job.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import numpy as np

OFF, ONSET, HOLD = 0, 1, 2
DEFAULT_TEMPO = 120.0  # quarter notes per minute before the first tempo change, as in MIDI
DEFAULT_TIME_SIGNATURE = (4, 4)  # before the first time signature, as in MIDI
DEFAULT_VELOCITY = 80  # what a note start without a velocity of its own (0 = unknown) is written at


@dataclasses.dataclass(frozen=True)
class Frames:
    """A piano roll on the step grid; see the module docstring for what the states mean."""

    states: np.ndarray  # (T, P) uint8
    velocities: np.ndarray  # (T, P) uint8
    steps_per_quarter: int = 8
    lowest_pitch: int = 0
    num_states: int = 3
    tempos: tuple[tuple[int, float], ...] = ((0, DEFAULT_TEMPO),)  # (step, quarter notes per minute)
    time_signatures: tuple[tuple[int, int, int], ...] = ((0, *DEFAULT_TIME_SIGNATURE),)  # (step, num, denom)

    def __post_init__(self) -> None:
        # Accept anything array-like (model output, lists from JSON) and store the canonical types.
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("states", np.asarray(self.states, dtype=np.uint8))
        set_("velocities", np.asarray(self.velocities, dtype=np.uint8))
        set_("tempos", tuple((int(s), float(q)) for s, q in self.tempos))
        set_("time_signatures", tuple((int(s), int(n), int(d)) for s, n, d in self.time_signatures))
        if self.states.ndim != 2 or self.velocities.shape != self.states.shape:
            raise ValueError(
                f"states {self.states.shape} and velocities {self.velocities.shape} must be one (T, P) shape"
            )

    @property
    def num_frames(self) -> int:
        return self.states.shape[0]

    @property
    def num_pitches(self) -> int:
        return self.states.shape[1]

    @property
    def meter(self) -> Meter:
        """The bars of this piece, from its time signatures."""
        return Meter(self.time_signatures, self.steps_per_quarter)

    def cut(self, start: int, end: int | None = None) -> Frames:
        """Frames ``[start, end)``, step ``start`` becoming step 0, with the tempo and time signature maps cut to
        match (the change in effect at ``start`` moves to step 0)."""
        return dataclasses.replace(
            self,
            states=self.states[start:end],
            velocities=self.velocities[start:end],
            tempos=_changes_from(self.tempos, start, DEFAULT_TEMPO),
            time_signatures=_changes_from(self.time_signatures, start, *DEFAULT_TIME_SIGNATURE),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frames):
            return NotImplemented
        meta = lambda f: (f.steps_per_quarter, f.lowest_pitch, f.num_states, f.tempos, f.time_signatures)
        return (
            meta(self) == meta(other)
            and np.array_equal(self.states, other.states)
            and np.array_equal(self.velocities, other.velocities)
        )

    __hash__ = None  # arrays are mutable


def _changes_from(changes: tuple[tuple, ...], start: int, *default: Any) -> tuple[tuple, ...]:
    """A (step, *value) map cut to begin at ``start``: the change in effect there (``default`` before the first
    change) at step 0, then the later changes, shifted."""
    in_effect = (0, *default)
    for change in sorted(changes):
        if change[0] <= start:
            in_effect = (0, *change[1:])
    return (in_effect, *((s - start, *v) for s, *v in sorted(changes) if s > start))


# ---------------------------------------------------------------------------------------------------- notes


def restart_held(states: Any, previous: Any, xp: ModuleType = np) -> Any:
    """THE rule for a HOLD after an OFF (3 states): a HOLD of a pitch that ``previous`` (the frame before, same
    shape) has off starts a note, so it is an ONSET. Model output and cut pieces may hold one; the sampler, the
    training targets under scheduled sampling, the written files and ``note_starts`` all read it this way.
    ``xp`` is the array module (numpy, or ``jax.numpy`` inside a traced function)."""
    return xp.where((states == HOLD) & (previous == OFF), ONSET, states)


def frames_before(states: np.ndarray) -> np.ndarray:
    """(T, P): each frame's previous frame, all OFF before the first."""
    states = np.asarray(states)
    return np.concatenate([np.full_like(states[:1], OFF), states[:-1]])


def note_starts(states: np.ndarray, num_states: int) -> np.ndarray:
    """(T, P) bool: where a note starts. With 3 states: an ONSET, or a HOLD after silence (``restart_held``);
    with 2 states: the first sounding frame of each run."""
    states = np.asarray(states)
    before = frames_before(states)
    if num_states == 2:
        return (states != OFF) & (before == OFF)
    return restart_held(states, before) == ONSET


def note_arrays(frames: Frames) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pitches, onsets, offsets, velocities) of the notes of ``frames``, sorted by pitch then onset. A note runs
    from its start (``note_starts``) while its pitch sounds and no other note starts there."""
    sounding = frames.states != OFF
    starts = note_starts(frames.states, frames.num_states)
    first, last = _runs(starts, starts | ~sounding)
    columns, onsets = np.divmod(first, frames.num_frames + 1)
    offsets = last - columns * (frames.num_frames + 1)
    return columns + frames.lowest_pitch, onsets, offsets, frames.velocities[onsets, columns].astype(np.int64)


def note_lengths(frames: Frames) -> np.ndarray:
    """The length in steps of every note of ``frames``, in the order of ``note_arrays``."""
    sounding = frames.states != OFF
    starts = note_starts(frames.states, frames.num_states)
    first, last = _runs(starts, starts | ~sounding)
    return last - first


def _runs(starts: np.ndarray, boundaries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat pitch-major indices of each run's first cell and of the boundary that ends it; every pitch's row gets
    one boundary cell after it, so every run ends inside its own row (vectorised, no Python loop)."""
    pad = lambda a, fill: np.concatenate([a.T, np.full((a.shape[1], 1), fill)], axis=1).ravel()
    first = np.flatnonzero(pad(starts, False))
    ends = np.flatnonzero(pad(boundaries, True))
    return first, ends[np.searchsorted(ends, first, side="right")]


def notes_of(frames: Frames) -> list[tuple[int, int, int, int]]:
    """The notes of ``frames`` as sorted (pitch, onset_step, offset_step, velocity); velocity 0 = unknown."""
    return list(zip(*(a.tolist() for a in note_arrays(frames)), strict=True))


# ---------------------------------------------------------------------------------------------------- sequences


def with_start_frame(states: Any, xp: ModuleType = np) -> Any:
    """``states`` (..., T, P) with the all-OFF start frame prepended on the time axis; ``xp`` is the array module
    (numpy, or ``jax.numpy`` inside a traced function)."""
    start = xp.full((*states.shape[:-2], 1, states.shape[-1]), OFF, states.dtype)
    return xp.concatenate([start, states], axis=-2)


# ---------------------------------------------------------------------------------------------------- bars


class Meter:
    """Where the bars of a piece are, from its time signatures (step, numerator, denominator).

    Each time signature starts a bar; before the first one the meter is 4/4. A bar lasts
    ``steps_per_quarter * 4 * numerator / denominator`` steps: bar lines and bar starts use that rounded to a
    whole step (at least 1), lengths in bars (``bars_between``) use it exactly. The two agree whenever a bar is
    a whole number of steps, as on every grid with 8 steps per quarter note.
    """

    def __init__(self, time_signatures: tuple[tuple[int, int, int], ...], steps_per_quarter: int):
        signatures = sorted(time_signatures)
        if not signatures or signatures[0][0] > 0:
            signatures.insert(0, (0, *DEFAULT_TIME_SIGNATURE))
        self.starts = np.array([s for s, _, _ in signatures], np.int64)
        self.bar_lengths = np.array([steps_per_quarter * 4 * n / d for _, n, d in signatures], np.float64)
        self.steps = np.maximum(1, np.round(self.bar_lengths)).astype(np.int64)  # on the grid
        self.bars_before = np.concatenate([[0.0], np.cumsum(np.diff(self.starts) / self.bar_lengths[:-1])])

    def _segment(self, steps: np.ndarray) -> np.ndarray:
        """Index of the time signature in effect at each step (the first one for steps before 0)."""
        return np.maximum(np.searchsorted(self.starts, steps, side="right") - 1, 0)

    def steps_per_bar(self, step: int = 0) -> int:
        """Steps in a bar of the time signature in effect at ``step``."""
        return int(self.steps[self._segment(np.int64(step))])

    def bar_start(self, step: int) -> int:
        """The first step of the bar that holds ``step``."""
        k = self._segment(np.int64(step))
        origin, length = int(self.starts[k]), int(self.steps[k])
        return origin + (step - origin) // length * length

    def bar_lines(self, length: int) -> list[int]:
        """Steps in ``[0, length]`` where a bar starts, ascending."""
        ends = [*self.starts[1:].tolist(), length]
        lines: list[int] = []
        for start, end, step in zip(self.starts.tolist(), ends, self.steps.tolist(), strict=True):
            lines.extend(s for s in range(start, min(end, length) + 1, step) if not lines or s > lines[-1])
        return lines

    def bars_between(self, begin: Any, end: Any) -> np.ndarray:
        """Length in bars of the step ranges ``[begin, end)`` (arrays); exact within one time signature."""
        begin, end = np.asarray(begin, np.int64), np.asarray(end, np.int64)
        seg_begin, seg_end = self._segment(begin), self._segment(end)
        position = lambda s, k: self.bars_before[k] + (s - self.starts[k]) / self.bar_lengths[k]
        within = (end - begin) / self.bar_lengths[seg_begin]
        return np.where(seg_begin == seg_end, within, position(end, seg_end) - position(begin, seg_begin))
