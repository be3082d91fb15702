"""One MIDI file to frames on disk, and a verdict: the work a conversion worker does for the records builder.

Kept apart from `records` so that worker processes import only the codec and numpy, not TFDS. The frames go to
a `.npz` file (no pickles) in the build's scratch folder rather than back through the pool's pipe: the parent
then streams them into the shards one at a time, and its memory does not grow with the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from musicgpt_jax import keys
from musicgpt_jax.dataset_card import sequence_stats
from musicgpt_jax.frames import Frames
from musicgpt_jax.midi_io import MidiDecodeError, midi_to_frames, read_midi


@dataclass(frozen=True)
class ConversionOptions:
    steps_per_quarter: int = 8
    sustain_pedal: bool = True
    include_drums: bool = False
    max_frames: int = 100_000


def frames_seconds(frames: Frames) -> float:
    """Duration of the frames in seconds, following their tempo map (a list of (step, bpm) from step 0 on)."""
    tempos = [(step, bpm) for step, bpm in frames.tempos if step < frames.num_frames] or [(0, 120.0)]
    ends = [step for step, _ in tempos[1:]] + [frames.num_frames]
    return sum(
        (end - step) * 60.0 / (bpm * frames.steps_per_quarter) for (step, bpm), end in zip(tempos, ends, strict=True)
    )


def convert_file(task: tuple[str, str, ConversionOptions]) -> dict[str, Any]:
    """Decode `path`, judge it, and save its frames to `out_path` (.npz) if it is kept.

    Returns {"status": "converted", frames, notes, seconds, ...sequence_stats, num_pitches, num_states,
    lowest_pitch, key (`keys.key_of_midi`)} or {"status": "skipped", "reason": "unreadable" | "no notes" |
    "too long", "detail": ...}.
    """
    path, out_path, options = task
    try:
        pm = read_midi(path)
        frames = midi_to_frames(
            pm,
            name=path,
            steps_per_quarter=options.steps_per_quarter,
            sustain_pedal=options.sustain_pedal,
            include_drums=options.include_drums,
        )
    except MidiDecodeError as error:
        return {"status": "skipped", "reason": "unreadable", "detail": str(error)}
    stats = sequence_stats(frames.states, frames.num_states)
    if stats["notes"] == 0:
        return {"status": "skipped", "reason": "no notes", "detail": f"{frames.num_frames} frames, no note"}
    if frames.num_frames > options.max_frames:
        return {
            "status": "skipped",
            "reason": "too long",
            "detail": f"{frames.num_frames} frames > max_frames {options.max_frames}",
        }
    np.savez_compressed(out_path, states=frames.states, velocities=frames.velocities)
    return {
        "status": "converted",
        **stats,
        "seconds": frames_seconds(frames),
        "num_pitches": frames.num_pitches,
        "num_states": frames.num_states,
        "lowest_pitch": frames.lowest_pitch,
        "key": keys.key_of_midi(pm, frames.states, frames.lowest_pitch),
    }
