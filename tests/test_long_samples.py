"""benchmarks/long_samples.py on a small trained run: its figures, and the cache agreeing with full recomputation
across window slides on the model's own samples."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicgpt_jax import configs, records
from musicgpt_jax.frames import HOLD, OFF, ONSET
from musicgpt_jax.train import train_and_evaluate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import long_samples  # noqa: E402


@pytest.fixture(scope="module")
def piano_run(synthetic_midi, tmp_path_factory) -> Path:
    """A one-layer 128-pitch model trained 30 steps (scheduled sampling on) on the synthetic pieces."""
    data_dir = tmp_path_factory.mktemp("records")
    records.build_midi_dataset(synthetic_midi, data_dir, "synthetic", test_percent=20, workers=1, progress=False)
    overrides = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64"]
    overrides += ["model.max_len=32", "train.steps=30", "train.batch_size=8", "train.warmup_steps=5"]
    overrides += ["train.eval_every=1000", "train.async_checkpoints=false", "train.scheduled_sampling=0.5"]
    cfg = configs.resolve("tiny", overrides)
    cfg.data.data_dir, cfg.data.dataset = str(data_dir), "synthetic"
    workdir = tmp_path_factory.mktemp("run")
    train_and_evaluate(cfg, str(workdir), progress=False)
    return workdir


def test_bar_figures_count_note_starts_per_bar_and_the_range():
    piece = np.zeros((64, 128), np.int32)
    piece[0, 60], piece[1:8, 60] = ONSET, HOLD  # one note in bar 1
    piece[32, [48, 52, 55]] = ONSET  # a chord and a re-struck note in bar 2
    piece[33, 48] = ONSET
    figures = long_samples.bar_figures(piece, 3, 32)
    assert figures["per_bar"] == [1, 4] and figures["max"] == 4 and (figures["low"], figures["high"]) == (48, 60)
    assert long_samples.bar_figures(np.full((64, 128), OFF), 3, 32)["low"] is None


def test_edge_bars_count_bars_beyond_the_untransposed_range():
    piece = np.zeros((96, 128), np.int32)
    piece[0:8, 40] = HOLD  # bar 1 inside
    piece[32, 34] = ONSET  # bar 2 below
    piece[64, 40], piece[70, 90] = ONSET, ONSET  # bar 3 above
    assert long_samples.edge_bars(piece, 32, 36, 88) == 2
    assert long_samples.edge_bars(piece, 32, 34, 90) == 0


def test_on_grid_share_is_the_share_of_onset_frames_on_the_grid():
    piece = np.zeros((32, 128), np.int32)
    piece[[0, 4, 8], 60] = ONSET  # three onset frames on the eighth-note grid
    piece[[9, 10], 64] = ONSET, HOLD  # one off it (a held note is no onset)
    assert long_samples.on_grid_share(piece, 3, 4) == 0.75
    assert long_samples.on_grid_share(np.zeros((8, 128), np.int32), 3, 4) == 1.0


def test_voice_shares_count_sounding_frames_by_notes_sounding():
    frames = np.zeros((10, 128), np.int32)
    frames[0:6, [60, 64, 67, 72]] = HOLD  # six four-note frames
    frames[6:8, [60, 64, 67]] = ONSET  # two three-note frames
    frames[8, :8] = HOLD  # one frame of eight (counted as 6+); frame 9 is silent and not counted
    shares = long_samples.voice_shares(frames)
    assert shares.shape == (long_samples.MAX_VOICES,)
    np.testing.assert_allclose(shares, [0, 0, 2 / 9, 6 / 9, 0, 1 / 9])


def test_long_samples_cli_scores_its_samples_cached_and_recomputed(piano_run, tmp_path):
    out = tmp_path / "figures.json"
    command = [sys.executable, str(REPO / "benchmarks" / "long_samples.py"), "--workdir", str(piano_run)]
    command += ["--bars", "3", "--num_samples", "2", "--recompute", "--voices", "--json", str(out)]
    command += ["--out", str(tmp_path / "s"), "--split", "test"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert (
        figures["bars"] == 3
        and len(figures["samples"]) == 2
        and all(len(s["per_bar"]) == 3 for s in figures["samples"])
    )
    assert (result.returncode == 1) == bool(figures["samples_over"] or figures["samples_outside_keyboard"])
    assert sorted(p.name for p in (tmp_path / "s").glob("*.mid")) == ["sample_00.mid", "sample_01.mid"]
    # 3 bars = 96 frames through a 32-frame window: several slides. Cached and recomputed contexts differ after
    # the first slide (half a window against a full one), but inside the first window they are the same.
    cached, recomputed = (np.asarray(figures["log_likelihood_per_bar"][k]) for k in ("cached", "recomputed"))
    assert cached.shape == recomputed.shape == (3,) and np.all(np.isfinite(cached))
    assert "first window" in result.stdout
    voices = figures["voices"]  # held-out, one step ahead (all frames, striking frames), bars 1-3 free-running
    assert len(voices) == 5 and "free-running, bars 1-3" in voices
    assert all(np.isclose(sum(shares), 1) or sum(shares) == 0 for shares in voices.values())
    assert sum(voices["held-out test frames"]) > 0.99  # the synthetic pieces' test split sounds
    assert isinstance(figures["edge_bars"], int) and 0 <= figures["edge_bars"] <= 6
    assert 0 <= figures["off_the_beat"] <= 2 and all(0 <= s["on_grid"] <= 1 for s in figures["samples"])
    first_window_gap = float(result.stdout.split("first window ")[1].split(",")[0])
    assert first_window_gap < 1e-3


def test_texture_counts_note_starts_per_bar_sounding_notes_and_silence():
    import texture_drift

    frames = np.zeros((32, 128), np.int32)
    frames[0, [60, 64]], frames[1:8, [60, 64]] = ONSET, HOLD  # two notes for 8 frames, then 24 silent ones
    figures = texture_drift.texture(frames != OFF, frames, 32)  # every sounding cell as a start: 16 starts
    assert figures == {"notes_per_bar": 16.0, "sounding_at_once": 2.0, "silent_share": 0.75}
    starts = texture_drift.drawn_starts(frames, frames)
    assert starts.sum() == 2  # read against the true previous frame, a held note starts once


def test_a_draw_holding_a_note_the_true_frame_before_lacks_starts_it():
    import texture_drift

    truth = np.zeros((2, 128), np.int32)
    drawn = np.zeros((2, 128), np.int32)
    drawn[1, 60] = HOLD  # the truth has pitch 60 off in frame 0: the draw's HOLD is a new note
    truth[0, 62], drawn[1, 62] = ONSET, HOLD  # the truth sounds 62 in frame 0: the draw continues it
    assert texture_drift.drawn_starts(drawn, truth)[1].nonzero()[0].tolist() == [60]


def test_texture_drift_measures_a_run_one_step_ahead_and_free_running(piano_run, tmp_path):
    import texture_drift

    out = tmp_path / "drift.json"
    argv = ["--workdir", str(piano_run), "--temperatures", "1.0", "--split", "test", "--train_windows", "2"]
    assert texture_drift.main([*argv, "--num_samples", "2", "--bars", "4", "--json", str(out)]) == 0
    (rows,) = json.loads(out.read_text()).values()
    assert {"held-out (test)", "one step ahead (test)", "held-out (train)", "free-running, all bars"} <= set(rows)
    for figures in rows.values():
        assert 0 <= figures["silent_share"] <= 1 and figures["notes_per_bar"] >= 0
