"""Statistics of MIDI sets: exact answers on constructed pieces, the CLI, skips, a real-music comparison."""

import json
import math
import subprocess
import sys

import numpy as np
import pretty_midi
import pytest
from conftest import REPO, require_shared

from musicgpt_jax import stats
from musicgpt_jax.frames import HOLD, ONSET, Frames, notes_of
from musicgpt_jax.midi_io import midi_to_frames

NOT_MIDI = "These are not the notes you are looking for.\n"  # a text file named .mid
STEP = 0.0625  # seconds per 32nd note at 120 bpm; 60 ticks at 480 per quarter, so every time is exact


def write_midi(path, notes, *, time_signature=(4, 4)):
    """notes: (pitch, onset_step, offset_step) on the 32nd grid; tempo 120, 480 ticks per quarter."""
    midi = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120.0)
    midi.time_signature_changes.append(pretty_midi.TimeSignature(*time_signature, 0.0))
    piano = pretty_midi.Instrument(program=0)
    for pitch, onset, offset in notes:
        piano.notes.append(pretty_midi.Note(velocity=80, pitch=pitch, start=onset * STEP, end=offset * STEP))
    midi.instruments.append(piano)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.write(str(path))
    return path


def stats_of_midi(tmp_path, notes, **kwargs):
    return stats.compute_stats([midi_to_frames(write_midi(tmp_path / "piece.mid", notes, **kwargs))])


@pytest.mark.parametrize("time_signature", [(4, 4), (3, 4)])
def test_rest_of_three_bars_in_the_middle(tmp_path, time_signature):
    bar = 8 * 4 * time_signature[0] // time_signature[1]
    # one bar of C4, three bars of rest, one bar of E4
    notes = [(60, 0, bar), (64, 4 * bar, 5 * bar)]
    result = stats_of_midi(tmp_path, notes, time_signature=time_signature)
    assert result["longest_silence_bars"] == 3.0
    assert result["silent_fraction"] == 3 / 5
    assert result["num_frames"] == 5 * bar
    assert result["pieces_with_long_silence_fraction"] == 1.0
    assert result["notes_per_bar"] == 2 / 5
    assert result["pieces"][0]["longest_silence_bars"] == 3.0


def test_silence_below_two_bars_is_not_long(tmp_path):
    result = stats_of_midi(tmp_path, [(60, 0, 32), (62, 95, 96)])  # rest of 63 steps: just under 2 bars
    assert result["longest_silence_bars"] == 63 / 32
    assert result["pieces_with_long_silence_fraction"] == 0.0


def test_held_chord_after_a_bar_of_rest(tmp_path):
    chord = (60, 64, 67)
    result = stats_of_midi(tmp_path, [(p, 32, 96) for p in chord])  # extent: 32 silent + 64 sounding steps
    assert result["polyphony_mean_sounding"] == 3.0
    assert result["polyphony_mean_all"] == 3 * 64 / 96
    assert result["polyphony_max"] == 3
    assert result["silent_fraction"] == 1 / 3
    assert result["longest_silence_bars"] == 1.0
    assert (result["pitch_min"], result["pitch_max"]) == (60, 67)
    expected_classes = np.zeros(12)
    expected_classes[[0, 4, 7]] = 1 / 3
    np.testing.assert_array_equal(result["pitch_class_histogram"], expected_classes)
    assert result["polyphony_histogram"][0] == 1 / 3 and result["polyphony_histogram"][3] == 2 / 3
    assert result["repeated_note_fraction"] == 0.0


def test_repeated_notes(tmp_path):
    # onset times 0, 8, 16, 24, 32, 40, 48 with onsets C, C, C, D, CE, CE, E: nine onsets, five repeated
    # (C at 8 and 16; C and E at 40; E at 48). C at 32 follows D, so it is not.
    c, d, e = 60, 62, 64
    notes = [(c, 0, 8), (c, 8, 16), (c, 16, 24), (d, 24, 32), (c, 32, 40), (e, 32, 40)]
    notes += [(c, 40, 48), (e, 40, 48), (e, 48, 56)]
    result = stats_of_midi(tmp_path, notes)
    assert result["num_notes"] == 9
    assert result["repeated_note_fraction"] == 5 / 9
    assert result["silent_fraction"] == 0.0


def test_note_lengths_fall_in_log2_bins(tmp_path):
    lengths = [1, 2, 3, 4, 7, 8, 16, 31, 32, 63, 64, 100]
    result = stats_of_midi(tmp_path, [(40 + i, 0, n) for i, n in enumerate(lengths)])
    assert result["note_length_bins"] == ["1", "2-3", "4-7", "8-15", "16-31", "32-63", ">=64"]
    np.testing.assert_array_equal(result["note_length_histogram"], np.array([1, 2, 2, 1, 2, 2, 2]) / 12)
    assert result["polyphony_max"] == 12


def test_pooled_over_pieces_and_silence_summary(tmp_path):
    a = midi_to_frames(write_midi(tmp_path / "a.mid", [(60, 0, 32), (60, 128, 160)]))  # 3-bar rest
    b = midi_to_frames(write_midi(tmp_path / "b.mid", [(60, 0, 64)]))  # no rest
    result = stats.compute_stats([a, b], names=["a", "b"])
    assert result["num_pieces"] == 2
    assert result["silent_fraction"] == 96 / (160 + 64)
    assert result["pieces_with_long_silence_fraction"] == 0.5
    assert result["repeated_note_fraction"] == 1 / 3
    assert [p["name"] for p in result["pieces"]] == ["a", "b"]
    assert stats.silence_summary(a) == {
        "silent_fraction": 96 / 160,
        "longest_silence_bars": 3.0,
        "trailing_silence_bars": (a.num_frames - 160) / 32,
    }


def test_frames_in_memory_with_trailing_silence_and_no_notes():
    states = np.zeros((256, 128), dtype=np.uint8)
    states[0, 60], states[1:32, 60] = ONSET, HOLD  # one bar of C4, then seven bars of nothing
    frames = Frames(states=states, velocities=np.where(states == ONSET, 80, 0).astype(np.uint8))
    assert stats.silence_summary(frames) == {
        "silent_fraction": 0.0,
        "longest_silence_bars": 0.0,
        "trailing_silence_bars": 7.0,
    }
    silent = Frames(states=np.zeros_like(states), velocities=np.zeros_like(states))
    assert stats.silence_summary(silent)["silent_fraction"] == 1.0
    assert stats.silence_summary(silent)["longest_silence_bars"] == 8.0
    result = stats.compute_stats([silent])
    assert result["pieces_without_notes"] == 1 and result["pitch_class_histogram"] is None
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize("num_states", [3, 2])
def test_vectorised_counts_agree_with_the_codecs_notes(num_states):
    rng = np.random.default_rng(num_states)
    for _ in range(5):
        # random states, HOLDs after silence included: a sampler may write them, and they start a note
        odds = {3: [0.5, 0.2, 0.3], 2: [0.5, 0.5]}[num_states]  # OFF, ONSET (or sounding), HOLD
        states = rng.choice(num_states, size=(300, 16), p=odds).astype(np.uint8)
        frames = Frames(states=states, velocities=np.zeros_like(states), num_states=num_states, lowest_pitch=21)
        notes = notes_of(frames)
        lengths = np.array([off - on for _, on, off, _ in notes])
        expected = np.bincount(np.minimum(np.floor(np.log2(lengths)).astype(int), 6), minlength=7)
        result = stats.compute_stats([frames])
        assert result["num_notes"] == len(notes)
        np.testing.assert_allclose(result["note_length_histogram"], expected / len(notes))
        assert (result["pitch_min"], result["pitch_max"]) == (min(notes)[0], max(notes)[0])
        onset_times = sorted({on for _, on, _, _ in notes})
        previous_time = dict(zip(onset_times[1:], onset_times[:-1], strict=True))
        struck = {(p, on) for p, on, _, _ in notes}
        repeated = sum((p, previous_time.get(on)) in struck for p, on, _, _ in notes)
        assert result["repeated_note_fraction"] == repeated / len(notes)


def test_a_midi_file_without_notes_counts_as_a_piece(tmp_path):
    result = stats.compute_stats([midi_to_frames(write_midi(tmp_path / "empty.mid", []))])
    assert result["num_pieces"] == 1 and result["pieces_without_notes"] == 1 and result["num_frames"] == 0
    assert result["silent_fraction"] is None and result["longest_silence_bars"] == 0.0
    json.dumps(result, allow_nan=False)


def make_samples_dir(root):
    write_midi(root / "one.mid", [(60, 0, 32), (64, 128, 160)])
    write_midi(root / "nested" / "two.MIDI", [(p, 0, 64) for p in (60, 64, 67)])
    (root / "notes.txt").write_text("not music")
    return root


def test_cli_writes_json_and_png(tmp_path):
    samples = make_samples_dir(tmp_path / "samples")
    reference = tmp_path / "reference"
    for i in range(4):
        write_midi(reference / f"r{i}.mid", [(60 + i, 0, 16), (62 + i, 16, 32 + 8 * i)])
    done = subprocess.run(
        [sys.executable, "-m", "musicgpt_jax.stats", str(samples), "--reference", str(reference)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert json.loads((samples / "stats.json").read_text()) == printed
    assert (samples / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert printed["samples"]["num_pieces"] == 2 and printed["samples"]["skipped"] == []
    assert [p["name"] for p in printed["samples"]["pieces"]] == ["nested/two.MIDI", "one.mid"]
    assert printed["samples"]["longest_silence_bars"] == 3.0
    assert printed["split_half_pieces"] == [2, 2]
    for entry in printed["distances"].values():
        assert math.isfinite(entry["distance"]) and math.isfinite(entry["split_half"])


@pytest.mark.parametrize("json_flag", ["--json", "--out"])  # --out: the old name, kept as an alias
def test_cli_json_and_png_flags(tmp_path, capsys, json_flag):
    samples = make_samples_dir(tmp_path / "samples")
    out, png = tmp_path / "out" / "s.json", tmp_path / "s.png"
    out.parent.mkdir()
    assert stats.main([str(samples), json_flag, str(out), "--png", str(png)]) == 0
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out)
    assert png.stat().st_size > 0 and not (samples / "stats.json").exists()
    assert "distances" not in json.loads(out.read_text())


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_dir_is_one_line_and_exit_2(tmp_path, capsys, kind):
    target = tmp_path / "nothing"
    if kind == "empty":
        target.mkdir()
        (target / "readme.txt").write_text("no midi here")
    assert stats.main([str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and str(target) in lines[0]


def test_missing_reference_dir_is_an_error(tmp_path, capsys):
    samples = make_samples_dir(tmp_path / "samples")
    assert stats.main([str(samples), "--reference", str(tmp_path / "nope")]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_broken_midi_is_skipped_and_reported(tmp_path, capsys):
    samples = make_samples_dir(tmp_path / "samples")
    (samples / "broken.mid").write_text(NOT_MIDI)
    assert stats.main([str(samples)]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "broken.mid" in line]
    assert len(warning) == 1 and len(captured.err.splitlines()) == 1
    report = json.loads(captured.out)["samples"]
    assert [s["file"] for s in report["skipped"]] == ["broken.mid"]
    assert report["skipped"][0]["reason"] and "\n" not in report["skipped"][0]["reason"]
    assert report["num_pieces"] == 2


def test_only_broken_files_is_an_error(tmp_path, capsys):
    (tmp_path / "broken.mid").write_text(NOT_MIDI)
    assert stats.main([str(tmp_path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "broken.mid" in lines[0]


def test_compare_is_zero_against_itself(tmp_path):
    result = stats.stats_of_dir(make_samples_dir(tmp_path))
    distances = stats.compare(result, result)
    assert set(distances) == set(stats.HISTOGRAMS) | set(stats.SCALARS)
    assert all(entry["distance"] == 0.0 for entry in distances.values())


def link_files(pattern, target):
    target.mkdir()
    for path in sorted(require_shared("midi/real").glob(pattern)):
        (target / path.name).symlink_to(path)
    return target


def test_real_music_against_a_reference_has_a_yardstick(tmp_path):
    reference = link_files("nott_*.mid", tmp_path / "nott")
    samples = link_files("tonejs_[bc]*.mid", tmp_path / "tonejs")  # Bach and Debussy piano pieces
    report = stats.measure(samples, reference)
    assert report["reference"]["num_pieces"] == 28 and report["reference"]["skipped"] == []
    assert report["split_half_pieces"] == [14, 14]
    for key, entry in report["distances"].items():
        assert math.isfinite(entry["distance"]) and entry["distance"] >= 0, key
        assert math.isfinite(entry["split_half"]) and entry["split_half"] >= 0, key
    # piano music is far thicker than folk melody with block chords, and the yardstick knows it
    polyphony = report["distances"]["polyphony_histogram"]
    assert polyphony["distance"] > polyphony["split_half"]
    assert stats.measure(samples, reference)["distances"] == report["distances"]  # deterministic
    stats.plot_report(report, tmp_path / "real.png")
    json.dumps(report, allow_nan=False)


def test_velocity_histogram_mean_and_spread_of_note_starts():
    """Velocities count once per note start (not per held frame); 0 (unknown) is left out; distances see them."""
    states = np.zeros((32, 128), np.uint8)
    velocities = np.zeros((32, 128), np.uint8)
    for step, pitch, velocity in ((0, 60, 20), (0, 64, 100), (8, 60, 100), (16, 67, 0)):
        states[step, pitch], velocities[step, pitch] = ONSET, velocity
        states[step + 1 : step + 4, pitch] = HOLD
    loud = stats.compute_stats([Frames(states, velocities)])
    assert loud["velocity_histogram"] == [0.0, 1 / 3, 0.0, 0.0, 0.0, 0.0, 2 / 3, 0.0]  # 20 -> 17-32, 100 -> 97-112
    assert loud["velocity_mean"] == pytest.approx(220 / 3)
    assert loud["velocity_std"] == pytest.approx(np.std([20, 100, 100]))
    even = stats.compute_stats([Frames(states, np.where(velocities > 0, 64, 0).astype(np.uint8))])
    assert even["velocity_histogram"][3] == 1.0 and even["velocity_std"] == 0.0
    distance = stats.compare(loud, even)["velocity_histogram"]["distance"]
    assert distance == pytest.approx(1.0)  # no overlap at all
    assert stats.compute_stats([Frames(states, np.zeros_like(velocities))])["velocity_histogram"] is None
