"""A piano-roll picture of frames: notes as bars, onsets darker, bar lines, the primer shaded (Agg)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from musicgpt_jax.frames import OFF, ONSET, Frames  # noqa: E402

PITCH_MARGIN = 2


def bar_lines(frames: Frames, length: int) -> list[int]:
    """Steps where a bar starts, from the time signature map, up to `length`."""
    signatures = sorted(frames.time_signatures) or [(0, 4, 4)]
    lines: list[int] = []
    for i, (start, numerator, denominator) in enumerate(signatures):
        end = signatures[i + 1][0] if i + 1 < len(signatures) else length
        step = max(1, round(frames.steps_per_quarter * 4 * numerator / denominator))
        lines.extend(range(start, min(end, length) + 1, step))
    return lines


def draw_piano_roll(frames: Frames, path: str | os.PathLike, title: str = "", prime_frames: int = 0) -> None:
    """Write a PNG of `frames` to `path`; the first `prime_frames` frames are marked as the primer."""
    states = np.asarray(frames.states)
    length = max(1, states.shape[0])
    sounding = np.flatnonzero((states != OFF).any(axis=0))
    low = max(0, (sounding.min() if sounding.size else 0) - PITCH_MARGIN)
    high = min(states.shape[1] - 1, (sounding.max() if sounding.size else states.shape[1] - 1) + PITCH_MARGIN)
    # 0 off, 1 sounding, 2 note start: onsets (or, sustain-only, the start of each run) stand out.
    image = (states[:, low : high + 1] != OFF).astype(np.float32)
    before = np.zeros_like(image)
    before[1:] = image[:-1]
    starts = (image > 0) & ((before == 0) if frames.num_states == 2 else (states[:, low : high + 1] == ONSET))
    image[starts] = 2.0

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
    for step in bar_lines(frames, length):
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
