"""Voice-leading figures on hand-made progressions: consonance with the top line, parallel fifths and octaves."""

import numpy as np

from musicgpt_jax import voice_leading
from musicgpt_jax.frames import ONSET


def chords(*pitch_sets: tuple[int, ...], beat: int = 4) -> np.ndarray:
    states = np.zeros((beat * len(pitch_sets), 128), np.int32)
    for k, pitches in enumerate(pitch_sets):
        states[k * beat, list(pitches)] = ONSET
    return states


def test_consonance_counts_each_lower_note_against_the_top_on_the_beats():
    states = chords((48, 55, 64, 72), (50, 61, 67, 72))  # C: all consonant; then a 7th, a major 7th and a 4th
    assert voice_leading.consonance_with_top(states, 4) == (3 + 1, 3 + 3)


def test_parallel_fifths_and_octaves_are_pairs_moving_the_same_way_into_the_same_interval():
    states = chords((48, 55, 64), (50, 57, 65), (50, 57, 65))  # bass and tenor a fifth apart move up: a parallel
    assert voice_leading.parallel_motion(states, 4) == {"motions": 3, "fifths": 1, "octaves": 0}
    octaves = chords((48, 60), (47, 59))
    contrary = chords((48, 55), (41, 60))  # a fifth to a twelfth by contrary motion: not parallel
    assert voice_leading.parallel_motion(octaves, 4) == {"motions": 1, "fifths": 0, "octaves": 1}
    assert voice_leading.parallel_motion(contrary, 4) == {"motions": 1, "fifths": 0, "octaves": 0}
    figures = voice_leading.figures([states, octaves], 4)
    assert figures["parallel_fifths_per_100"] == 25.0 and figures["voice_pair_motions"] == 4
