"""A piano-roll picture of frames: notes as bars, onsets darker, bar lines, the primer shaded (Agg)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from musicgpt_jax.frames import OFF, Frames, note_starts  # noqa: E402

PITCH_MARGIN = 2


def draw_piano_roll(frames: Frames, path: str | os.PathLike, title: str = "", prime_frames: int = 0) -> None:
    """Write a PNG of `frames` to `path`; the first `prime_frames` frames are marked as the primer."""
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
    ax.imshow(
        image.T,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="Blues",
        vmin=0,
        vmax=2.2,
        extent=(0, length, frames.lowest_pitch + low - 0.5, frames.lowest_pitch + high + 0.5),
    )
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
