"""Given notes: the model's lookahead input, sampling that keeps given notes exactly, and sample.py's --melody,
--keep and --fill end to end on a model trained here for a few steps."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from flax import linen as nn

from musicgpt_jax import compose, configs, decode, generation, given, keep, records
from musicgpt_jax.frames import HOLD, OFF, ONSET, Frames, notes_of
from musicgpt_jax.midi_io import frames_to_midi, midi_to_frames
from musicgpt_jax.model import MusicTransformer
from musicgpt_jax.train import train_and_evaluate

_spec = importlib.util.spec_from_file_location("sample_cli", REPO / "sample.py")
sample_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample_cli)


def small_model(lookahead: int, **fields) -> configs.ModelConfig:
    return configs.ModelConfig(
        num_pitches=24, num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_len=16, dropout=0.0, head="nade",
        given_lookahead=lookahead, **fields,
    )  # fmt: skip


def init(cfg: configs.ModelConfig):
    boxed = MusicTransformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4, cfg.num_pitches), jnp.int32))["params"]
    return nn.meta.unbox(boxed)


def melody(length: int, pitches: int) -> np.ndarray:
    """A line of 4-frame notes stepping up and down, with a rest, on a `pitches`-wide keyboard."""
    states = np.zeros((length, pitches), np.int32)
    for k, onset in enumerate(range(0, length - 3, 4)):
        if k % 5 == 4:
            continue  # a rest
        pitch = pitches - 4 + (k % 3)
        states[onset, pitch], states[onset + 1 : onset + 4, pitch] = ONSET, HOLD
    return states


def test_top_and_bass_lines_are_each_frames_highest_and_lowest_sounding_cell():
    states = np.zeros((3, 8), np.int32)
    states[0, [1, 4, 6]] = ONSET
    states[1, [1, 4]] = HOLD  # frame 2 is silent
    top, bass = given.line_mask(states, highest=True), given.line_mask(states, highest=False)
    assert np.argwhere(top).tolist() == [[0, 6], [1, 4]] and np.argwhere(bass).tolist() == [[0, 1], [1, 1]]
    codes = given.codes_of(states, top)
    assert codes[0, 6] == ONSET + 1 and codes[1, 4] == HOLD + 1 and np.count_nonzero(codes) == 2


def test_position_t_sees_given_frames_up_to_lookahead_ahead_and_no_further():
    cfg = small_model(lookahead=4)
    params = init(cfg)
    states = jnp.asarray(np.random.default_rng(0).integers(0, 3, (1, 8, cfg.num_pitches)), jnp.int32)
    codes = jnp.zeros((1, 8 + 4, cfg.num_pitches), jnp.int32)
    base, _ = MusicTransformer(cfg).apply({"params": params}, states, given=codes)
    for k in range(8):  # codes[:, k] are frame k+1's: position 0 predicts frame 1 and looks ahead to frame 5
        changed, _ = MusicTransformer(cfg).apply({"params": params}, states, given=codes.at[0, k, 5].set(ONSET + 1))
        sees = bool(jnp.any(changed[0, 0] != base[0, 0]))
        assert sees == (k <= cfg.given_lookahead), k


def test_without_the_stream_the_model_is_the_old_one_and_keeping_nothing_is_plain_sampling():
    old = small_model(lookahead=0)
    assert "given_embed" not in init(old)
    saved = configs.Config(model=old).to_dict()
    del saved["model"]["given_lookahead"]  # a config written before the field existed
    assert configs.Config.from_dict(saved).model == old
    params, rng = init(old), jax.random.key(3)
    plain = decode.generate(params, old, np.zeros((2, 0, 24), np.int32), 12, rng)
    nothing = np.zeros((2, 12, 24), np.int32)
    kept, _ = keep.generate_kept(params, old, nothing[:, :0], nothing, nothing.astype(bool), rng)
    np.testing.assert_array_equal(np.asarray(plain), kept)


@pytest.mark.parametrize("lookahead", [0, 3])
def test_kept_cells_come_out_as_given_and_are_not_held_on(lookahead):
    cfg = small_model(lookahead)
    params = jax.tree.map(lambda x: x * 20, init(cfg))  # large weights: the model would rather play other notes
    line = np.broadcast_to(melody(40, cfg.num_pitches), (3, 40, cfg.num_pitches))
    mask = line != OFF
    out, _ = keep.generate_kept(params, cfg, line[:, :0], line, mask, jax.random.key(1))
    np.testing.assert_array_equal(out[mask], line[mask])
    ended = np.concatenate([np.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1) & ~mask
    assert not np.any(out[ended] == HOLD)


# ---------------------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def given_run(synthetic_midi, tmp_path_factory) -> Path:
    """A one-layer 128-pitch model with the given-notes input, trained 12 steps on the synthetic pieces."""
    data_dir = tmp_path_factory.mktemp("records")
    records.build_midi_dataset(synthetic_midi, data_dir, "synthetic", test_percent=20, workers=1, progress=False)
    overrides = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64"]
    overrides += ["model.max_len=32", "model.given_lookahead=8", "train.steps=12", "train.batch_size=8"]
    overrides += ["train.warmup_steps=2", "train.eval_every=1000", "train.async_checkpoints=false"]
    cfg = configs.resolve("tiny", overrides)
    cfg.data.data_dir, cfg.data.dataset = str(data_dir), "synthetic"
    workdir = tmp_path_factory.mktemp("run")
    train_and_evaluate(cfg, str(workdir), progress=False)
    return workdir


def piece_file(path: Path, synthetic_midi: Path, top_only: bool) -> tuple[Path, Frames]:
    """A synthetic piece (its top line only when `top_only`) written back to MIDI; the frames it reads as."""
    frames = midi_to_frames(sorted(synthetic_midi.glob("*.mid"))[0])
    if top_only:
        line = given.line_mask(frames.states, highest=True)
        frames = dataclasses.replace(
            frames, states=np.where(line, frames.states, OFF), velocities=np.where(line, frames.velocities, 0)
        )
    frames_to_midi(frames).write(str(path))
    return path, midi_to_frames(path)


def test_melody_notes_are_kept_exactly_and_the_model_writes_more(given_run, synthetic_midi, tmp_path, capsys):
    path, tune = piece_file(tmp_path / "tune.mid", synthetic_midi, top_only=True)
    out = tmp_path / "h"
    code = sample_cli.main(
        ["--workdir", str(given_run), "--melody", str(path), "--out", str(out), "--num_samples", "2"]
    )
    assert code == 0, capsys.readouterr().err
    wanted = set(notes_of(tune))
    for midi in sorted(out.glob("sample_*.mid")):
        written = midi_to_frames(midi)
        notes = set(notes_of(written))
        assert wanted <= notes and len(notes) > len(wanted)  # every given note, bit for bit, and more
        assert written.num_frames >= tune.num_frames - 1 and written.tempos == tune.tempos
    assert "kept as given" in (out / "index.html").read_text()


def test_fill_rewrites_only_the_gap(given_run, synthetic_midi, tmp_path, capsys):
    path, piece = piece_file(tmp_path / "piece.mid", synthetic_midi, top_only=False)
    lines = piece.meter.bar_lines(piece.num_frames)
    begin, end = lines[1], lines[2]  # bar 2
    out = tmp_path / "f"
    argv = ["--workdir", str(given_run), "--prime", str(path), "--fill", "2:2", "--out", str(out), "--num_samples", "1"]
    assert sample_cli.main(argv) == 0, capsys.readouterr().err
    written = midi_to_frames(out / "sample_00.mid")
    outside = [n for n in notes_of(piece) if n[2] <= begin or n[1] >= end]  # (pitch, onset, offset, velocity)
    assert outside and set(outside) <= set(notes_of(written))
    np.testing.assert_array_equal(written.states[:begin], piece.states[:begin])


def test_bad_kept_input_is_one_line(given_run, synthetic_midi, tmp_path, capsys):
    empty = tmp_path / "empty.mid"
    frames_to_midi(Frames(np.zeros((8, 128)), np.zeros((8, 128)))).write(str(empty))
    text = tmp_path / "notes.mid"
    text.write_text("not a MIDI file\n")
    tune, piece = piece_file(tmp_path / "tune.mid", synthetic_midi, top_only=True)
    bars = len(piece.meter.bar_lines(piece.num_frames))
    run = ["--workdir", str(given_run), "--out", str(tmp_path / "o")]
    cases = {
        "no notes": [*run, "--melody", str(empty)],
        "notes.mid": [*run, "--melody", str(text)],
        "longer than": [*run, "--melody", str(tune), "--frames", str(16 * 32 + 1)],
        "outside the piece": [*run, "--prime", str(tune), "--fill", f"{bars + 1}:{bars + 2}"],
        "expected A:B": [*run, "--prime", str(tune), "--fill", "3-4"],
        "needs --prime": [*run, "--fill", "1:2"],
    }
    for reason, argv in cases.items():
        assert sample_cli.main(argv) == 1, reason
        err = capsys.readouterr().err
        assert reason in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_a_training_window_gives_cells_as_they_are_and_leaves_the_rest_unknown():
    states = np.zeros((200, 24), np.int32)
    states[1:] = melody(199, 24)
    states[1:, 3] = HOLD  # a held bass under it
    states[1::16, 3] = ONSET
    rng = np.random.default_rng(0)
    tasks = set()
    for _ in range(40):
        codes = given.draw_given(states, 5, 32, 8, rng)
        assert codes.shape == (40, 24)
        known = codes != given.UNKNOWN
        np.testing.assert_array_equal(codes[known] - 1, states[6:46][known])  # frames start+1 .. start+T+L
        tasks.add("none" if not known.any() else "gap" if known.all(axis=1).any() else "line")
    assert tasks == {"none", "gap", "line"}


def test_a_model_with_dynamics_keeps_the_given_onsets_velocity_bins():
    cfg = small_model(lookahead=2, velocity_bins=4)
    params = jax.tree.map(lambda x: x * 20, init(cfg))
    line = np.broadcast_to(melody(24, cfg.num_pitches), (2, 24, cfg.num_pitches))
    bins = np.where(line == ONSET, 3, 0)
    out, out_bins = keep.generate_kept(
        params, cfg, line[:, :0], line, line != OFF, jax.random.key(2), kept_velocities=bins
    )
    onsets = line == ONSET
    np.testing.assert_array_equal(out[line != OFF], line[line != OFF])
    np.testing.assert_array_equal(out_bins[onsets], bins[onsets])


def test_keep_after_a_primer_keeps_the_notes_after_it(given_run, synthetic_midi, tmp_path, capsys):
    path, tune = piece_file(tmp_path / "tune.mid", synthetic_midi, top_only=True)
    primer, _ = piece_file(tmp_path / "primer.mid", synthetic_midi, top_only=False)
    out = tmp_path / "k"
    argv = ["--workdir", str(given_run), "--keep", str(path), "--prime", str(primer), "--prime_bars", "1"]
    assert sample_cli.main([*argv, "--out", str(out), "--num_samples", "1"]) == 0, capsys.readouterr().err
    written = midi_to_frames(out / "sample_00.mid")
    grid = generation.grid_of(compose.load_config(str(given_run))[0])
    offset = len(generation.read_primer(str(primer), grid, 1, 32).states)  # the primer's last bar comes first
    shifted = {(p, start + offset, end + offset, velocity) for p, start, end, velocity in notes_of(tune)}
    assert shifted <= set(notes_of(written))


def test_the_piano_roll_draws_kept_notes_in_another_colour(tmp_path):
    from PIL import Image

    from musicgpt_jax import pianoroll

    states = np.zeros((64, 128), np.uint8)
    states[0:32, 60], states[0, 60] = HOLD, ONSET
    states[32:64, 64], states[32, 64] = HOLD, ONSET
    frames = Frames(states, np.where(states == ONSET, 80, 0))
    kept = np.zeros(states.shape, bool)
    kept[:32] = True  # the first note was given, the second written
    pianoroll.draw_piano_roll(frames, tmp_path / "k.png", kept=kept)
    pianoroll.draw_piano_roll(frames, tmp_path / "p.png")
    orange = lambda path: np.count_nonzero(
        np.apply_along_axis(
            lambda c: c[0] > 200 and c[2] < 100 and c[1] > 80, -1, np.asarray(Image.open(path))[..., :3]
        )
    )
    assert orange(tmp_path / "k.png") > 200 and orange(tmp_path / "p.png") < orange(tmp_path / "k.png") / 10
