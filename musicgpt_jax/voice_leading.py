"""Voice-leading figures of chorale-like music on the frame grid: what `stats` does not measure.

Both figures read the music on the beats (every `steps_per_beat` frames, counted from the piece's first frame):

- `consonance_with_top`: the share of (beat, lower note) pairs whose interval below the top note is consonant
  (unison/octave, thirds, fourth, fifth, sixths; seconds, sevenths and the tritone are not);
- `parallel_motion`: voices are the sounding pitches of a beat in order (bass first); between two beats with the
  same number of voices, each pair of voices that both move is a voice-pair motion, and a parallel fifth (octave)
  is one where the pair is a perfect fifth (an octave or unison) apart, as pitch classes, on both beats and both
  move the same way.
"""

from __future__ import annotations

import numpy as np

from musicgpt_jax.frames import OFF

CONSONANT = frozenset({0, 3, 4, 5, 7, 8, 9})  # semitones mod 12 below the top note


def beat_chords(states: np.ndarray, steps_per_beat: int) -> list[np.ndarray]:
    """The sounding pitches (column indices, ascending) of every beat frame."""
    return [np.flatnonzero(frame != OFF) for frame in np.asarray(states)[::steps_per_beat]]


def consonance_with_top(states: np.ndarray, steps_per_beat: int) -> tuple[int, int]:
    """(consonant pairs, pairs): each note below the top note of a beat, against it."""
    consonant = pairs = 0
    for chord in beat_chords(states, steps_per_beat):
        if len(chord) < 2:
            continue
        intervals = (chord[-1] - chord[:-1]) % 12
        consonant += sum(int(i) in CONSONANT for i in intervals)
        pairs += len(intervals)
    return consonant, pairs


def parallel_motion(states: np.ndarray, steps_per_beat: int) -> dict[str, int]:
    """{"motions", "fifths", "octaves"}: voice-pair motions between consecutive beats and the parallels among them."""
    counts = {"motions": 0, "fifths": 0, "octaves": 0}
    chords = beat_chords(states, steps_per_beat)
    for before, after in zip(chords[:-1], chords[1:], strict=True):
        if len(before) != len(after) or len(before) < 2:
            continue
        moves = after - before
        for i in range(len(before)):
            for j in range(i + 1, len(before)):
                if moves[i] == 0 or moves[j] == 0:
                    continue
                counts["motions"] += 1
                if np.sign(moves[i]) != np.sign(moves[j]):
                    continue
                was, now = (before[j] - before[i]) % 12, (after[j] - after[i]) % 12
                if was == now == 7:
                    counts["fifths"] += 1
                elif was == now == 0:
                    counts["octaves"] += 1
    return counts


def figures(pieces: list[np.ndarray], steps_per_beat: int) -> dict[str, float | None]:
    """Pooled over `pieces` (each (T, P) states): consonance share, parallels per 100 voice-pair motions."""
    consonant = pairs = 0
    motion = {"motions": 0, "fifths": 0, "octaves": 0}
    for states in pieces:
        c, p = consonance_with_top(states, steps_per_beat)
        consonant, pairs = consonant + c, pairs + p
        for key, value in parallel_motion(states, steps_per_beat).items():
            motion[key] += value
    per_100 = lambda n: 100.0 * n / motion["motions"] if motion["motions"] else None
    return {
        "consonance_with_top": consonant / pairs if pairs else None,
        "parallel_fifths_per_100": per_100(motion["fifths"]),
        "parallel_octaves_per_100": per_100(motion["octaves"]),
        "voice_pair_motions": motion["motions"],
    }
