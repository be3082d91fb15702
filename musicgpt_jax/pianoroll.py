"""A piano-roll picture of frames: notes as bars, onsets darker, bar lines, the primer shaded (Agg).

When the notes have varied loudness (velocities), each note is coloured by its velocity, with a colour bar; music
of one loudness keeps the plain blue picture."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from musicgpt_jax.frames import OFF, Frames, note_starts  # noqa: E402

PITCH_MARGIN = 2


def note_velocities(states: np.ndarray, velocities: np.ndarray, num_states: int) -> np.ndarray:
    """(T, P) the velocity of the note sounding in each cell (its start's velocity; 0 where nothing sounds)."""
    starts = note_starts(states, num_states)
    steps = np.arange(len(states))[:, None]
    latest_start = np.maximum.accumulate(np.where(starts, steps, 0), axis=0) if len(states) else starts
    held = np.take_along_axis(np.asarray(velocities), latest_start, axis=0) if len(states) else velocities
    return np.where(states != OFF, held, 0)


def _has_dynamics(velocities: np.ndarray) -> bool:
    return np.unique(velocities[velocities > 0]).size > 1


KEPT_COLOURS = "Oranges"  # notes the model was told to keep (`musicgpt_jax.keep`), apart from the blue it wrote


def draw_piano_roll(
    frames: Frames, path: str | os.PathLike, title: str = "", prime_frames: int = 0, kept: np.ndarray | None = None
) -> None:
    """Write a PNG of `frames` to `path`; the first `prime_frames` frames are marked as the primer, and the cells
    where `kept` (T, P) is True are drawn in orange: notes that were given, not written."""
    states = np.asarray(frames.states)
    length = max(1, states.shape[0])
    sounding = np.flatnonzero((states != OFF).any(axis=0))
    low = max(0, (sounding.min() if sounding.size else 0) - PITCH_MARGIN)
    high = min(states.shape[1] - 1, (sounding.max() if sounding.size else states.shape[1] - 1) + PITCH_MARGIN)
    # 0 off, 1 sounding, 2 note start: onsets (or, sustain-only, the start of each run) stand out.
    image = (states[:, low : high + 1] != OFF).astype(np.float32)
    image[note_starts(states[:, low : high + 1], frames.num_states)] = 2.0

    width = float(np.clip(length / 24, 6, 40))
    fig, ax = plt.subplots(figsize=(width, 4.5), dpi=100)
    extent = (0, length, frames.lowest_pitch + low - 0.5, frames.lowest_pitch + high + 0.5)
    shown = dict(origin="lower", aspect="auto", interpolation="nearest", extent=extent)
    loudness = note_velocities(states, np.asarray(frames.velocities), frames.num_states)[:, low : high + 1]
    if kept is None and _has_dynamics(loudness):  # with kept notes, colour says given or written instead
        coloured = ax.imshow(np.ma.masked_equal(loudness, 0).T, cmap="plasma", vmin=1, vmax=127, **shown)
        onsets = np.ma.masked_less(image, 2.0)
        ax.imshow(onsets.T, cmap="Greys", vmin=0, vmax=2.0, alpha=0.3, **shown)  # onsets a shade darker
        fig.colorbar(coloured, ax=ax, pad=0.01, fraction=0.02, label="velocity")
    else:
        ax.imshow(image.T, cmap="Blues", vmin=0, vmax=2.2, **shown)
    if kept is not None:
        given = np.where(np.asarray(kept, bool)[:, low : high + 1], image, 0.0)
        ax.imshow(np.ma.masked_equal(given, 0.0).T, cmap=KEPT_COLOURS, vmin=-0.6, vmax=2.2, **shown)
        ax.plot([], [], color="tab:orange", linewidth=6, label="kept (given)")
        ax.plot([], [], color="tab:blue", linewidth=6, label="written by the model")
        ax.legend(loc="upper right", fontsize=8)
    for step in frames.meter.bar_lines(length):
        ax.axvline(step, color="0.3", linewidth=0.7, zorder=3)
    if prime_frames:
        ax.axvspan(0, prime_frames, color="orange", alpha=0.15, label="primer")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel(f"step ({frames.steps_per_quarter} per quarter note); grey lines: bars")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)
