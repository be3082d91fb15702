"""The numpy-only music format (frames.py): note starts and notes, the start frame, the Meter, cutting a piece."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicgpt_jax.frames import (
    HOLD,
    OFF,
    ONSET,
    Frames,
    Meter,
    note_arrays,
    note_lengths,
    note_starts,
    notes_of,
    restart_held,
    with_start_frame,
)

SPQ = 8


def test_frames_module_does_not_import_pretty_midi_or_jax():
    code = "import sys, musicgpt_jax.frames; print('pretty_midi' in sys.modules, 'jax' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert result.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------------- notes


def test_note_starts_with_three_states():
    column = [ONSET, HOLD, ONSET, HOLD, OFF, HOLD, HOLD, OFF, ONSET]
    states = np.array(column, np.uint8)[:, None]
    # an ONSET starts a note even right after a HOLD; a HOLD after silence starts one too
    assert np.flatnonzero(note_starts(states, 3)[:, 0]).tolist() == [0, 2, 5, 8]


def test_a_hold_after_an_off_is_an_onset_everywhere():
    # the rule's home: a HOLD of a pitch the frame before has off starts a note; other states stay as they are
    states = np.array([[HOLD, HOLD, ONSET, OFF, HOLD, ONSET]], np.uint8)
    previous = np.array([[OFF, HOLD, OFF, HOLD, ONSET, ONSET]], np.uint8)
    assert restart_held(states, previous).tolist() == [[ONSET, HOLD, ONSET, OFF, HOLD, ONSET]]
    # ... the same with jax.numpy (the sampler and the training step call it traced)
    import jax.numpy as jnp

    assert np.asarray(restart_held(jnp.asarray(states), jnp.asarray(previous), jnp)).tolist() == [
        [ONSET, HOLD, ONSET, OFF, HOLD, ONSET]
    ]
    # ... and note_starts reads a piece by it: a piece and its restarted copy have the same notes
    rng = np.random.default_rng(0)
    piece = rng.integers(0, 3, (40, 6)).astype(np.uint8)
    restarted = restart_held(piece, np.concatenate([np.zeros_like(piece[:1]), piece[:-1]]))
    np.testing.assert_array_equal(note_starts(piece, 3), restarted == ONSET)


def test_note_starts_with_two_states_are_the_first_frames_of_runs():
    states = np.array([[1, 0], [1, 1], [0, 1], [1, 1], [1, 0]], np.uint8)
    starts = note_starts(states, 2)
    assert np.argwhere(starts).tolist() == [[0, 0], [1, 1], [3, 0]]


def test_notes_and_lengths_in_pitch_then_onset_order():
    states = np.zeros((6, 3), np.uint8)
    states[:, 2] = [ONSET, HOLD, ONSET, OFF, HOLD, HOLD]
    states[1:3, 0] = [ONSET, HOLD]
    velocities = np.where(states == ONSET, 90, 0)
    frames = Frames(states, velocities, lowest_pitch=60)
    assert notes_of(frames) == [(60, 1, 3, 90), (62, 0, 2, 90), (62, 2, 3, 90), (62, 4, 6, 0)]
    assert note_lengths(frames).tolist() == [2, 2, 1, 2]
    pitches, onsets, offsets, _ = note_arrays(frames)
    assert (offsets - onsets).tolist() == note_lengths(frames).tolist()
    assert pitches.tolist() == [60, 62, 62, 62]


def test_sustain_only_runs_are_one_note_each():
    states = np.array([[1], [1], [0], [1]], np.uint8)
    frames = Frames(states, np.zeros_like(states), num_states=2, lowest_pitch=21)
    assert notes_of(frames) == [(21, 0, 2, 0), (21, 3, 4, 0)]


def test_no_notes():
    frames = Frames(np.zeros((0, 128)), np.zeros((0, 128)))
    assert notes_of(frames) == [] and note_lengths(frames).size == 0


# ---------------------------------------------------------------------------------------------------- start frame


def test_with_start_frame_prepends_one_off_frame_and_keeps_the_dtype():
    states = np.full((3, 4), HOLD, np.int32)
    out = with_start_frame(states)
    assert out.shape == (4, 4) and out.dtype == np.int32
    assert (out[0] == OFF).all() and (out[1:] == states).all()


def test_with_start_frame_on_a_batch_and_with_jax_numpy():
    jnp = pytest.importorskip("jax.numpy")
    batch = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) % 3
    expected = with_start_frame(batch)
    assert expected.shape == (2, 4, 4) and (expected[:, 0] == OFF).all()
    assert np.array_equal(np.asarray(with_start_frame(jnp.asarray(batch), jnp)), expected)


# ---------------------------------------------------------------------------------------------------- the meter


def test_meter_with_several_time_signatures():
    # 4/4 (32 steps) from 0, 3/4 (24) from 64, 6/8 (24) from 112, 2/4 (16) from 136
    meter = Meter(((0, 4, 4), (64, 3, 4), (112, 6, 8), (136, 2, 4)), SPQ)
    assert meter.bar_lines(170) == [0, 32, 64, 88, 112, 136, 152, 168]
    assert [meter.steps_per_bar(s) for s in (0, 63, 64, 111, 112, 136, 1000)] == [32, 32, 24, 24, 24, 16, 16]
    assert [meter.bar_start(s) for s in (0, 31, 32, 70, 88, 111, 112, 140, 152)] == [
        0,
        0,
        32,
        64,
        88,
        88,
        112,
        136,
        152,
    ]
    assert meter.bars_between([0, 64, 0, 40], [64, 112, 136, 50]).tolist() == [2.0, 2.0, 5.0, 10 / 32]


def test_a_time_signature_change_mid_bar_starts_a_new_bar():
    meter = Meter(((0, 4, 4), (40, 3, 4)), SPQ)  # the 4/4 bar from 32 is cut short at 40
    assert meter.bar_lines(100) == [0, 32, 40, 64, 88]
    assert meter.bar_start(39) == 32 and meter.bar_start(40) == 40
    assert meter.bars_between([0], [64]).tolist() == [1 + 8 / 32 + 1]


def test_before_the_first_time_signature_the_meter_is_four_four():
    meter = Meter(((48, 3, 4),), SPQ)
    assert meter.bar_lines(100) == [0, 32, 48, 72, 96]
    assert meter.steps_per_bar(0) == 32 and meter.steps_per_bar(48) == 24
    assert meter.bar_start(40) == 32 and meter.bar_start(50) == 48
    assert meter.bars_between([0, 0], [48, 72]).tolist() == [1.5, 2.5]
    assert Meter((), SPQ).bar_lines(64) == [0, 32, 64]


def test_meter_of_frames_and_coarse_grids():
    frames = Frames(np.zeros((10, 2)), np.zeros((10, 2)), steps_per_quarter=2, time_signatures=((0, 6, 8),))
    assert frames.meter.steps_per_bar() == 6 and frames.meter.bar_lines(12) == [0, 6, 12]
    # a bar that is not a whole number of steps: lines on the rounded grid, lengths exact
    odd = Meter(((0, 7, 16),), 2)
    assert odd.steps_per_bar() == 4 and odd.bars_between([0], [7]).tolist() == [2.0]


# ---------------------------------------------------------------------------------------------------- cutting


def piece() -> Frames:
    states = np.zeros((100, 2), np.uint8)
    states[::10, 0] = ONSET
    return Frames(
        states,
        np.where(states == ONSET, 70, 0),
        tempos=((0, 100.0), (30, 90.0), (60, 80.0)),
        time_signatures=((0, 4, 4), (32, 3, 4), (80, 2, 4)),
    )


def test_cut_keeps_the_changes_in_effect_and_shifts_the_later_ones():
    cut = piece().cut(40, 90)
    assert cut.num_frames == 50 and np.array_equal(cut.states, piece().states[40:90])
    assert cut.tempos == ((0, 90.0), (20, 80.0))
    assert cut.time_signatures == ((0, 3, 4), (40, 2, 4))
    assert cut.meter.bar_lines(50) == [0, 24, 40]  # bars now count from the cut


def test_cut_on_a_change_and_at_zero():
    assert piece().cut(60).tempos == ((0, 80.0),)
    assert piece().cut(0) == piece()


def test_cut_before_the_first_change_uses_midi_defaults():
    frames = Frames(np.zeros((50, 1)), np.zeros((50, 1)), tempos=((20, 90.0),), time_signatures=((40, 3, 4),))
    cut = frames.cut(10)
    assert cut.tempos == ((0, 120.0), (10, 90.0))
    assert cut.time_signatures == ((0, 4, 4), (30, 3, 4))
