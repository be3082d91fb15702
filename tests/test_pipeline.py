"""The input pipeline on sequences the test makes: shapes, masks, determinism, per-process shares, transposition."""

from __future__ import annotations

import numpy as np
import pytest

from musicgpt_jax import pipeline

PITCHES, SEQ_LEN = 24, 16


def make_source(lengths=(5, 16, 40, 23, 70, 9), pitch: int | None = None) -> list[dict]:
    """Sequences whose frame t sounds one pitch (state 1): `pitch`, or (t + i) % PITCHES for sequence i."""
    source = []
    for i, n in enumerate(lengths):
        states = np.zeros((n, PITCHES), np.int32)
        t = np.arange(n)
        states[t, pitch if pitch is not None else (t + i) % PITCHES] = 1
        source.append({"states": states})
    return source


def batches(source, n: int, **kwargs) -> list[dict]:
    kwargs = {"seq_len": SEQ_LEN, "batch_size": 4, "seed": 0, **kwargs}
    ds = pipeline.train_dataset(source, **kwargs)
    return [ds[i] for i in range(n)]


def test_batches_have_the_promised_shapes_and_inputs_lead_targets_by_one_frame():
    for batch in batches(make_source(), 6):
        assert batch["inputs"].shape == batch["targets"].shape == (4, SEQ_LEN, PITCHES)
        assert batch["mask"].shape == (4, SEQ_LEN) and batch["mask"].dtype == np.float32
        assert batch["source_index"].shape == batch["window_index"].shape == (4,)
        np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


def test_the_mask_covers_exactly_the_real_frames_and_padding_is_silent():
    source = make_source()
    for batch in batches(source, 12):
        for row in range(4):
            length = source[int(batch["source_index"][row])]["states"].shape[0]
            valid = int(batch["mask"][row].sum())
            assert np.all(batch["mask"][row, :valid] == 1) and np.all(batch["mask"][row, valid:] == 0)
            assert valid == min(SEQ_LEN, length)  # a window starts at most len - SEQ_LEN in: always full
            assert batch["targets"][row, valid:].sum() == 0
            assert batch["targets"][row, :valid].sum(axis=1).tolist() == [1] * valid  # one note per real frame


def test_a_window_at_the_start_begins_with_the_empty_start_frame():
    short = make_source(lengths=(5,))
    batch = batches(short, 1, batch_size=1)[0]
    assert batch["inputs"][0, 0].sum() == 0  # the prepended start frame
    np.testing.assert_array_equal(batch["targets"][0, :5], short[0]["states"])


def test_same_seed_same_batches_other_seed_other_order():
    source = make_source()
    first, again, other = batches(source, 8), batches(source, 8), batches(source, 8, seed=1)
    for a, b in zip(first, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["window_index"], c["window_index"]) for a, c in zip(first, other, strict=True))


def test_every_window_is_seen_once_per_epoch():
    source = make_source()
    windows = sum(max(1, -(-len(s["states"]) // SEQ_LEN)) for s in source)
    ds = pipeline.train_dataset(source, seq_len=SEQ_LEN, batch_size=1, seed=3)
    seen = [int(ds[i]["window_index"][0]) for i in range(windows)]
    assert sorted(seen) == list(range(windows))


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_read_disjoint_shares_that_make_up_the_global_batch(processes):
    source = make_source(lengths=(40,) * 30)  # 90 windows: the 5 batches of 8 below are within one epoch
    global_batch = 8
    whole = batches(source, 5, batch_size=global_batch)
    shares = [
        batches(source, 5, batch_size=global_batch // processes, process_index=p, process_count=processes)
        for p in range(processes)
    ]
    for b in range(5):
        rows = [shares[p][b] for p in range(processes)]
        for key in whole[b]:
            np.testing.assert_array_equal(np.concatenate([r[key] for r in rows]), whole[b][key])
        ids = [set(r["window_index"].tolist()) for r in rows]
        assert all(ids[p].isdisjoint(ids[q]) for p in range(processes) for q in range(p + 1, processes))


def test_transposition_stays_within_its_range_and_uses_it():
    middle, limit = PITCHES // 2, 3
    shifts = set()
    for batch in batches(make_source(pitch=middle), 40, transpose=limit, batch_size=8):
        for row in range(8):
            real = batch["mask"][row] == 1
            pitches = np.flatnonzero(batch["targets"][row, real].sum(axis=0))
            assert len(pitches) == 1  # one shift per window, inputs and targets alike
            inputs = np.flatnonzero(batch["inputs"][row].sum(axis=0))
            assert set(inputs.tolist()) <= set(pitches.tolist())
            shifts.add(int(pitches[0]) - middle)
            assert int(batch["transposition"][row]) == int(pitches[0]) - middle  # what a model may condition on
    assert shifts == set(range(-limit, limit + 1))


def test_notes_transposed_off_the_keyboard_are_dropped():
    states = np.zeros((3, 5), np.int32)
    states[:, 0], states[:, 4] = 1, 2
    up = pipeline.transpose_states(states, 2)
    assert up[:, 2].tolist() == [1, 1, 1] and up.sum() == 3  # pitch 4 fell off the top
    down = pipeline.transpose_states(states, -4)
    assert down[:, 0].tolist() == [2, 2, 2] and down.sum() == 6


def test_evaluation_batches_score_every_frame_once_with_padding_rows_masked():
    source = make_source()
    frames = sum(len(s["states"]) for s in source)
    got = list(pipeline.eval_batches(source, seq_len=SEQ_LEN, batch_size=3))
    assert sum(float(b["mask"].sum()) for b in got) == frames
    assert all(b["inputs"].shape == (3, SEQ_LEN, PITCHES) for b in got)
    halves = [list(pipeline.eval_batches(source, seq_len=SEQ_LEN, batch_size=2, process_index=p, process_count=2))
              for p in range(2)]  # fmt: skip
    assert sum(float(b["mask"].sum()) for share in halves for b in share) == frames


def test_window_starts_make_the_first_and_last_frames_targets_as_often_as_the_middle():
    rng = np.random.default_rng(0)
    for length in (5, 17, 18, 40, 300):  # start frame included; 17 = exactly one window of SEQ_LEN + 1
        covered = np.zeros(length)
        for _ in range(20_000):
            start = pipeline.window_start(rng, length, SEQ_LEN)
            assert 0 <= start <= max(0, length - SEQ_LEN - 1)  # the window fits (or the piece is shorter)
            covered[start + 1 : start + 1 + SEQ_LEN] += 1  # the window's targets
        targets = covered[1:]  # frame 0, the start frame, is never a target
        assert targets.min() >= 0.45 * targets.max(), (length, targets.min(), targets.max())
