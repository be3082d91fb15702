"""Keys and composers: parsing, a MIDI file's key signature, Krumhansl-Kessler estimation, the records' labels, the
pipeline's transposed key, the model's key input, and sample.py --key / --composer on a conditioned checkpoint."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pretty_midi
import pytest
from flax import linen as nn
from test_sample import run_cli, save_checkpoints

from musicgpt_jax import conditioning, configs, keys, pipeline, records
from musicgpt_jax.frames import HOLD, ONSET, Frames
from musicgpt_jax.midi_io import midi_to_frames, read_midi, write_midi
from musicgpt_jax.model import MusicTransformer

C_MAJOR_TRIADS = ((60, 64, 67), (65, 69, 72), (67, 71, 74), (60, 64, 67))  # I IV V I
SCALE = (60, 62, 64, 65, 67, 69, 71, 72)


def a_minor_states() -> np.ndarray:
    """An A natural-minor scale (A to A, the white keys) then i-iv-v-i, A minor's triads (a half note each)."""
    scale = [57, 59, 60, 62, 64, 65, 67, 69]
    triads = [(57, 60, 64), (62, 65, 69), (64, 67, 71), (57, 60, 64)]
    states = np.zeros((len(scale) * 8 + len(triads) * 16, 128), np.uint8)
    for k, pitch in enumerate(scale):
        states[8 * k : 8 * k + 8, pitch] = HOLD
        states[8 * k, pitch] = ONSET
    for k, chord in enumerate(triads):
        start = len(scale) * 8 + 16 * k
        states[start : start + 16, list(chord)] = HOLD
        states[start, list(chord)] = ONSET
    return states


def c_major_states(shift: int = 0) -> np.ndarray:
    """A C-major scale (one quarter note each) then I-IV-V-I (a half note each), moved `shift` semitones."""
    states = np.zeros((len(SCALE) * 8 + len(C_MAJOR_TRIADS) * 16, 128), np.uint8)
    for k, pitch in enumerate(SCALE):
        states[8 * k : 8 * k + 8, pitch + shift] = HOLD
        states[8 * k, pitch + shift] = ONSET
    for k, chord in enumerate(C_MAJOR_TRIADS):
        start = len(SCALE) * 8 + 16 * k
        for pitch in chord:
            states[start : start + 16, pitch + shift] = HOLD
            states[start, pitch + shift] = ONSET
    return states


@pytest.mark.parametrize(
    "text, name",
    [("D minor", "D minor"), ("d minor", "D minor"), ("F# major", "F# major"), ("Bb minor", "Bb minor"),
     ("C# major", "Db major"), ("  a  MIN ", "A minor"), ("Cb major", "B major")],
)  # fmt: skip
def test_key_spellings_parse_to_their_key(text, name):
    assert keys.key_name(keys.parse_key(text)) == name


@pytest.mark.parametrize("text", ["H major", "D", "D dorian", "", "C## major"])
def test_a_bad_key_is_a_one_line_error_naming_it(text):
    with pytest.raises(ValueError) as error:
        keys.parse_key(text)
    assert repr(text) in str(error.value) and "major or minor" in str(error.value) and "\n" not in str(error.value)


def test_transposing_a_key_keeps_its_mode_and_unknown_stays_unknown():
    assert keys.key_name(keys.transpose_key(keys.parse_key("A minor"), 5)) == "D minor"
    assert keys.key_name(keys.transpose_key(keys.parse_key("C major"), -1)) == "B major"
    assert keys.transpose_key(keys.UNKNOWN, 3) == keys.UNKNOWN


def test_estimate_finds_c_major_and_its_transpositions():
    for shift in range(-5, 7):
        assert keys.estimate_key(c_major_states(shift)) == keys.transpose_key(0, shift), shift
    assert keys.estimate_key(np.zeros((16, 128), np.uint8)) == keys.UNKNOWN


def test_estimate_reads_a_keyboard_that_starts_above_pitch_0():
    states = c_major_states(2)[:, 21:109]  # D major on the 88 keys from A0
    assert keys.key_name(keys.estimate_key(states, lowest_pitch=21)) == "D major"


def signed_midi(tmp_path, states: np.ndarray, signature: str | None) -> tuple[pretty_midi.PrettyMIDI, np.ndarray]:
    """`states` written as a MIDI file with `signature` (or none) as its key signature, read back."""
    path = tmp_path / "signed.mid"
    write_midi(Frames(states, np.where(states == ONSET, 80, 0).astype(np.uint8)), path)
    pm = pretty_midi.PrettyMIDI(str(path))
    pm.key_signature_changes = [] if signature is None else [pretty_midi.KeySignature(keys.parse_key(signature), 0.0)]
    pm.write(str(path))
    return read_midi(path), midi_to_frames(path).states


def test_a_key_signature_fixes_the_accidentals_and_the_notes_the_mode(tmp_path):
    c_major = c_major_states()
    # The signature of no accidentals, written as "C major", over music in C major and over music in A minor.
    pm, states = signed_midi(tmp_path, c_major, "C major")
    assert keys.key_name(keys.key_of_midi(pm, states)) == "C major"
    minor = a_minor_states()
    assert keys.key_name(keys.estimate_key(minor)) == "A minor"
    pm, states = signed_midi(tmp_path, minor, "C major")
    assert keys.key_name(keys.key_of_midi(pm, states)) == "A minor"
    # A signature the notes do not fit still decides the accidentals: C major music under one sharp is G major or
    # E minor, never C major.
    pm, states = signed_midi(tmp_path, c_major, "E minor")
    assert keys.key_name(keys.key_of_midi(pm, states)) in ("G major", "E minor")
    pm, states = signed_midi(tmp_path, c_major, None)
    assert keys.key_name(keys.key_of_midi(pm, states)) == "C major"


def test_relative_keys_share_a_signature():
    for name, pair in (("Eb major", ("Eb major", "C minor")), ("C minor", ("Eb major", "C minor")),
                       ("A major", ("A major", "F# minor")), ("B minor", ("D major", "B minor"))):  # fmt: skip
        assert tuple(keys.key_name(k) for k in keys.relative_keys(keys.parse_key(name))) == pair


def test_records_keep_each_pieces_key_and_composer(tmp_path, capsys):
    folder = tmp_path / "midi"
    folder.mkdir()
    for name, shift in (("a.mid", 0), ("b.mid", 7), ("c.mid", 2)):
        states = c_major_states(shift)
        write_midi(Frames(states, np.where(states == ONSET, 80, 0).astype(np.uint8)), folder / name)
    table = tmp_path / "composers.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows([["canonical_composer", "midi_filename"], ["Anna Magdalena", "a.mid"], ["Carl", "b.mid"]])
    result = records.build_midi_dataset(
        folder, tmp_path / "records", "tonal", val_percent=0, test_percent=0, composer_metadata=table, progress=False
    )
    train = records.load_split(tmp_path / "records", "tonal", "train")
    found = {train[i]["name"]: (keys.key_name(train[i]["key"]), train[i]["composer"]) for i in range(len(train))}
    assert found == {"a.mid": ("C major", "Anna Magdalena"), "b.mid": ("G major", "Carl"), "c.mid": ("D major", "")}
    card = result.card
    assert card["keys"] == {"counts": {"C major": 1, "D major": 1, "G major": 1}, "unknown": 0}
    assert card["composers"] == {"counts": {"Anna Magdalena": 1, "Carl": 1}, "unknown": 1}
    summary = result.summary()
    assert "keys (3): C major 1, D major 1, G major 1" in summary
    assert "composers (2): Anna Magdalena 1, Carl 1; unknown 1" in summary
    assert conditioning.composers_of_card(card) == ("Anna Magdalena", "Carl")
    with pytest.raises(records.InputError, match="missing.csv"):
        records.build_midi_dataset(folder, tmp_path / "r2", "tonal", composer_metadata=tmp_path / "missing.csv")


def test_old_records_without_labels_read_as_unknown():
    item = records.FrameSequences._item({"states": np.zeros((2, 4)), "velocities": np.zeros((2, 4)), "name": b"x"})
    assert item["key"] == keys.UNKNOWN and item["composer"] == ""


def test_the_pipeline_moves_the_key_with_the_transposition():
    cfg = configs.ModelConfig(condition_on_key=True, composers=("Carl",))
    source = [{"states": c_major_states(), "velocities": np.zeros((96, 128), np.uint8), "key": 0, "composer": "Carl"}]
    ds = pipeline.train_dataset(source, seq_len=32, batch_size=1, seed=0, transpose=5, labels_for=cfg)
    for i in range(12):
        batch = ds[i]
        shift = int(batch["transposition"][0])
        assert batch["key"][0] == keys.transpose_key(0, shift) and batch["composer"][0] == 0
    dropped = pipeline.train_dataset(source, seq_len=32, batch_size=1, seed=0, labels_for=cfg, condition_dropout=1.0)
    assert dropped[0]["key"][0] == keys.UNKNOWN and dropped[0]["composer"][0] == 1
    plain = pipeline.train_dataset(source, seq_len=32, batch_size=1, seed=0, transpose=5)
    assert "key" not in plain[0] and "composer" not in plain[0]
    (example,) = pipeline.eval_examples(source[:1] * 1, seq_len=128, labels_for=cfg)
    assert example["key"] == 0 and example["composer"] == 0


def test_the_key_changes_a_conditioned_models_output_and_old_configs_have_no_such_input():
    old = configs.ModelConfig(num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_len=16)
    new = dataclasses.replace(old, condition_on_key=True, composers=("A", "B"))
    states = jnp.asarray(c_major_states()[None, :16], jnp.int32)
    params = nn.meta.unbox(MusicTransformer(new).init(jax.random.key(0), states)["params"])
    assert params["key_embed"]["table"].shape == (25, 32) and params["composer_embed"]["table"].shape == (3, 32)
    outputs = [MusicTransformer(new).apply({"params": params}, states, key=jnp.array([k]))[0] for k in (0, 14)]
    assert not np.allclose(outputs[0], outputs[1])
    unknown = MusicTransformer(new).apply({"params": params}, states)[0]
    told = MusicTransformer(new).apply({"params": params}, states, key=jnp.array([24]), composer=jnp.array([2]))[0]
    np.testing.assert_array_equal(unknown, told)
    old_params = MusicTransformer(old).init(jax.random.key(0), states)["params"]
    assert "key_embed" not in old_params and "composer_embed" not in old_params
    plain = MusicTransformer(old).apply({"params": old_params}, states)[0]
    np.testing.assert_array_equal(plain, MusicTransformer(old).apply({"params": old_params}, states, key=None)[0])


def test_composers_come_from_the_card_only_when_asked():
    card = {"composers": {"counts": {"Ravel": 2, "Bach": 5}, "unknown": 1}}
    asked = configs.ModelConfig(condition_on_composer=True)
    assert conditioning.with_composers(asked, card).composers == ("Bach", "Ravel")
    assert conditioning.with_composers(configs.ModelConfig(), card).composers == ()
    cfg = configs.resolve("tiny", ["model.composers=Bach, Ravel"])
    assert cfg.model.composers == ("Bach", "Ravel")
    assert configs.Config.from_dict(cfg.to_dict()).model.composers == ("Bach", "Ravel")
    assert configs.piano().model.condition_on_key and configs.piano().model.condition_on_composer
    assert not configs.tiny().model.condition_on_key and not configs.jsb().model.condition_on_composer


@pytest.fixture(scope="module")
def conditioned_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("conditioned_run")
    model = configs.ModelConfig(
        num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_len=32, condition_on_key=True, composers=("Bach",)
    )
    save_checkpoints(workdir, model, "bach_chorales", steps=(1,))
    return workdir


def test_sample_with_a_key_and_composer_writes_midi_and_differs_from_unconditioned(conditioned_run, tmp_path, capsys):
    common = ["--workdir", str(conditioned_run), "--num_samples", "1", "--bars", "1", "--keyboard", "all"]
    code, _, err = run_cli([*common, "--out", str(tmp_path / "d"), "--key", "d minor", "--composer", "Bach"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*common, "--out", str(tmp_path / "u")], capsys)
    assert code == 0, err
    told, plain = (midi_to_frames(tmp_path / d / "sample_00.mid").states for d in ("d", "u"))
    assert told.shape != plain.shape or not np.array_equal(told, plain)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--key", "H major"], "--key 'H major' is not a key"),
        (["--composer", "Liszt"], "'Liszt': not one the model knows (Bach)"),
    ],
)
def test_sample_refuses_a_key_or_composer_the_model_cannot_take(flags, expected, conditioned_run, tmp_path, capsys):
    argv = ["--workdir", str(conditioned_run), "--out", str(tmp_path / "o"), "--bars", "1", *flags]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("sample.py: ") and expected in err
    assert not (tmp_path / "o").exists()


def test_sample_refuses_a_key_for_a_model_without_key_conditioning(tmp_path, capsys):
    workdir = tmp_path / "plain"
    save_checkpoints(workdir, configs.ModelConfig(num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_len=32),
                     "bach_chorales", steps=(1,))  # fmt: skip
    code, _, err = run_cli(["--workdir", str(workdir), "--out", str(tmp_path / "o"), "--key", "C major"], capsys)
    assert code == 2 and err.count("\n") == 1 and "trained without key conditioning" in err
