"""The piano-roll picture: each note's loudness carried from its start, and both kinds of picture written."""

import numpy as np
from PIL import Image

from musicgpt_jax.frames import HOLD, ONSET, Frames
from musicgpt_jax.pianoroll import draw_piano_roll, note_velocities


def two_notes(loud: int, soft: int) -> tuple[np.ndarray, np.ndarray]:
    states = np.zeros((16, 128), np.uint8)
    velocities = np.zeros_like(states)
    states[0, 60], states[1:6, 60], velocities[0, 60] = ONSET, HOLD, loud
    states[6, 60], states[7:9, 60], velocities[6, 60] = ONSET, HOLD, soft  # re-struck: its own velocity
    states[4, 72], velocities[4, 72] = ONSET, soft
    return states, velocities


def test_a_note_keeps_its_start_velocity_until_it_ends():
    states, velocities = two_notes(100, 30)
    held = note_velocities(states, velocities, 3)
    assert held[:6, 60].tolist() == [100] * 6 and held[6:9, 60].tolist() == [30] * 3
    assert held[9:, 60].tolist() == [0] * 7 and held[4, 72] == 30 and held[5, 72] == 0


def test_velocities_colour_the_picture_only_when_they_vary(tmp_path):
    states, velocities = two_notes(100, 30)
    draw_piano_roll(Frames(states, velocities), tmp_path / "dynamics.png")
    draw_piano_roll(Frames(states, np.where(velocities > 0, 80, 0).astype(np.uint8)), tmp_path / "plain.png")
    dynamics = np.asarray(Image.open(tmp_path / "dynamics.png").convert("RGB"), np.int32)
    plain = np.asarray(Image.open(tmp_path / "plain.png").convert("RGB"), np.int32)
    # the plain picture is shades of blue only; the coloured one has warm pixels (red above blue)
    assert not ((plain[..., 0] - plain[..., 2]) > 60).any()
    assert ((dynamics[..., 0] - dynamics[..., 2]) > 60).sum() > 100
