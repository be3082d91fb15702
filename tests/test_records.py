"""Records: MIDI files in, shards + manifest + card out, and back through the reader. On pieces and broken files
written here (tests/synthetic.py), and on the real and broken files of ../shared when it is there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import numpy as np
import pytest
import synthetic
from conftest import REPO, SHARED, require_shared

from musicgpt_jax import corpus, records
from musicgpt_jax.midi_io import midi_to_frames

MIDI = SHARED / "midi"
JSB = SHARED / "polyphonic" / "JSB_Chorales.mat"
PREPARE = REPO / "data" / "prepare.py"


def midi_inputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mid", ".midi"))


def link_folder(target: Path, files: list[Path]) -> Path:
    target.mkdir(parents=True)
    for f in files:
        (target / f.name).symlink_to(f)
    return target


def read_manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / records.MANIFEST_FILE).read_text().splitlines()]


def read_split_by_name(data_dir: Path, name: str) -> dict[str, dict]:
    return {item["name"]: item for s in records.SPLITS for item in records.load_split(str(data_dir), name, s)}


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PREPARE), *args], capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------ files written here


@pytest.fixture(scope="module")
def written(synthetic_midi, tmp_path_factory):
    """The synthetic pieces, a copy of one, and broken files under broken/, prepared by data/prepare.py.

    Returns (input folder, records folder, {path: reason} of the files that must be skipped, stdout)."""
    tmp = tmp_path_factory.mktemp("written")
    folder = link_folder(tmp / "in", sorted(synthetic_midi.glob("*.mid")))
    (folder / "zz_copy_of_chorale_00.mid").write_bytes((synthetic_midi / "chorale_00.mid").read_bytes())
    broken = synthetic.write_broken_files(folder / "broken", synthetic_midi / "chorale_00.mid")
    done = run_prepare(
        "--midi_dir", str(folder), "--data_dir", str(tmp / "out"), "--dataset", "written", "--workers", "2"
    )
    assert done.returncode == 0, done.stderr
    return folder, tmp / "out", {f"broken/{name}": reason for name, reason in broken.items()}, done.stdout


def test_written_and_broken_files_are_all_accounted_for(written):
    folder, data_dir, skipped, stdout = written
    pieces = sorted(p.name for p in folder.glob("*.mid") if not p.name.startswith("zz_"))
    assert len(pieces) == 36 and len(skipped) == 6
    manifest = read_manifest(data_dir / "written")
    status = {e["path"]: e for e in manifest}
    assert sorted(status) == sorted([*pieces, "zz_copy_of_chorale_00.mid", *skipped])
    for path, reason in skipped.items():
        entry = status[path]
        assert (entry["status"], entry["reason"]) == ("skipped", reason), entry
        assert entry["detail"] and "\n" not in entry["detail"], entry
        if reason == "unreadable":  # the codec's one-line message, naming the file
            assert entry["detail"].startswith(f"{folder / path}: "), entry
    assert status["zz_copy_of_chorale_00.mid"]["status"] == "duplicate"
    assert status["zz_copy_of_chorale_00.mid"]["duplicate_of"] == "chorale_00.mid"
    assert all(status[name]["status"] == "converted" for name in pieces)

    card = json.loads((data_dir / "written" / records.CARD_FILE).read_text())
    assert card["files"] == {"inputs": 43, "converted": 36, "skipped": 6, "duplicate": 1}
    assert card["skipped_by_reason"] == {"unreadable": 4, "no notes": 2}
    assert "written: 43 inputs -> 36 converted, 6 skipped" in stdout and "1 duplicates" in stdout

    info = records.load_info(str(data_dir), "written")
    assert (info.num_pitches, info.num_states, info.lowest_pitch, info.steps_per_quarter) == (128, 3, 0, 8)
    items = read_split_by_name(data_dir, "written")
    assert sorted(items) == pieces and sum(info.split_sizes.values()) == 36
    for name in pieces:
        frames = midi_to_frames(folder / name)
        np.testing.assert_array_equal(items[name]["states"], frames.states, err_msg=name)
        np.testing.assert_array_equal(items[name]["velocities"], frames.velocities, err_msg=name)
        assert status[name]["frames"] == frames.num_frames and items[name]["states"].dtype == np.uint8
    for split in records.SPLITS:
        in_split = [e for e in manifest if e.get("split") == split and e["status"] == "converted"]
        assert info.split_frames[split] == sum(e["frames"] for e in in_split)


def test_synthetic_benchmark_records_are_the_codecs_rolls(synthetic_midi, synthetic_benchmark):
    """The fallback of `benchmark_data`: the written pieces through the codec, as 88-pitch sustain-only rolls at
    eighth notes, imported from the benchmark's .json format with their splits, in their order."""
    info = records.load_info(synthetic_benchmark.data_dir, synthetic_benchmark.dataset)
    assert (info.num_pitches, info.num_states, info.lowest_pitch, info.steps_per_quarter) == (88, 2, 21, 2)
    assert info.split_sizes == {"train": 24, "validation": 6, "test": 6}
    paths = sorted(synthetic_midi.glob("*.mid"))
    expected = {
        "train": [p for i, p in enumerate(paths) if i % 6 < 4],
        "validation": paths[4::6],
        "test": paths[5::6],
    }
    for split, split_paths in expected.items():
        source = records.load_split(synthetic_benchmark.data_dir, synthetic_benchmark.dataset, split)
        for i, path in enumerate(split_paths):
            assert source[i]["name"] == f"{split}/{i:04d}"
            np.testing.assert_array_equal(source[i]["states"], synthetic.benchmark_roll(path), err_msg=path.name)
    test = records.load_split(synthetic_benchmark.data_dir, synthetic_benchmark.dataset, "test")
    assert max(len(test[i]["states"]) for i in range(len(test))) > 128  # long enough for sliding windows


def test_same_inputs_give_identical_shards_and_adding_files_moves_none(synthetic_midi, tmp_path):
    pieces = sorted(synthetic_midi.glob("*.mid"))
    folder = link_folder(tmp_path / "in", pieces[:24])
    synthetic.write_broken_files(folder / "broken", pieces[0])
    one = records.build_midi_dataset(folder, tmp_path / "one", "w", workers=2, progress=False)
    two = records.build_midi_dataset(folder, tmp_path / "two", "w", workers=1, progress=False)
    files = sorted(p.relative_to(one.path) for p in one.path.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two.path) for p in two.path.rglob("*") if p.is_file())
    assert any("array_record" in str(f) for f in files)
    for f in files:
        if f.name != records.CARD_FILE:  # the card names its source folder
            assert (one.path / f).read_bytes() == (two.path / f).read_bytes(), f

    grown = link_folder(tmp_path / "grown", pieces)
    synthetic.write_broken_files(grown / "broken", pieces[0])
    (grown / "zz_copy.mid").write_bytes(pieces[3].read_bytes())
    three = records.build_midi_dataset(grown, tmp_path / "three", "w", workers=2, progress=False)
    before = {e["path"]: e.get("split") for e in read_manifest(one.path)}
    after = {e["path"]: e for e in read_manifest(three.path)}
    assert all(after[path].get("split") == split for path, split in before.items())
    assert len(after) == len(before) + len(pieces) - 24 + 1
    assert after["zz_copy.mid"]["status"] == "duplicate" and after["zz_copy.mid"]["duplicate_of"] == pieces[3].name
    assert "zz_copy.mid" not in read_split_by_name(tmp_path / "three", "w")
    assert records.split_of("0" * 64, 5, 5) == "test" and records.split_of("f" * 64, 5, 5) == "train"


def test_a_file_past_its_time_limit_is_skipped_and_the_run_goes_on(synthetic_midi, tmp_path):
    folder = link_folder(tmp_path / "in", [synthetic_midi / "chorale_00.mid"])
    synthetic.write_long_file(folder / "long.mid")  # takes about a second
    result = records.build_midi_dataset(folder, tmp_path / "out", "t", workers=1, timeout_s=0.2, progress=False)
    status = {e["path"]: e for e in read_manifest(result.path)}
    assert status["long.mid"]["reason"] == "timed out"
    assert status["chorale_00.mid"]["status"] == "converted"
    assert result.card["files"] == {"inputs": 2, "converted": 1, "skipped": 1, "duplicate": 0}


def test_an_interrupted_build_never_reads_as_a_dataset(written, synthetic_midi, tmp_path):
    slow = link_folder(tmp_path / "slow", sorted(synthetic_midi.glob("*.mid"))[:4])
    for i in range(4):  # about a second each: the build still runs when the first frames appear
        synthetic.write_long_file(slow / f"long_{i}.mid")
    proc = subprocess.Popen(
        [sys.executable, str(PREPARE), "--midi_dir", str(slow), "--data_dir", str(tmp_path), "--dataset", "cut"]
        + ["--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".cut.incomplete-*/frames/*.npz")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list(tmp_path.glob(".cut.incomplete-*")), "the build ended before it could be interrupted"
    with pytest.raises(records.DatasetNotFoundError, match=r"cut: no dataset here; run: python data/prepare.py"):
        records.load_info(str(tmp_path), "cut")
    with pytest.raises(records.DatasetNotFoundError):
        records.load_split(str(tmp_path), "cut", "train")

    copy = tmp_path / "written"
    shutil.copytree(written[1] / "written", copy)
    (copy / records.CARD_FILE).unlink()  # shards without their card: a half-copied dataset
    with pytest.raises(records.DatasetNotFoundError):
        records.load_info(str(tmp_path), "written")

    small = link_folder(tmp_path / "small", [synthetic_midi / "chorale_00.mid"])
    records.build_midi_dataset(small, tmp_path, "cut", workers=1, progress=False)
    assert sum(records.load_info(str(tmp_path), "cut").split_sizes.values()) == 1
    assert not list(tmp_path.glob(".cut.*"))  # the killed build's scratch folder is cleaned up


def test_a_split_is_a_grain_source_in_a_fixed_order(written):
    data_dir = written[1]
    train = records.load_split(str(data_dir), "written", "train")
    names = [train[i]["name"] for i in range(len(train))]
    assert names == sorted(names) and train[-1]["name"] == names[-1]
    with pytest.raises(IndexError):
        train[len(train)]
    dataset = grain.MapDataset.source(train).map(lambda item: item["states"].shape[0])
    assert list(dataset[:3]) == [train[i]["states"].shape[0] for i in range(3)]
    with pytest.raises(ValueError, match="split must be one of"):
        records.load_split(str(data_dir), "written", "valid")


# --------------------------------------------------------------------------------------------- ../shared files


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """All of midi/real and midi/edge (linked folders), built once with 2 workers."""
    tmp = tmp_path_factory.mktemp("mixed")
    (tmp / "in").mkdir()
    for sub in ("real", "edge"):
        (tmp / "in" / sub).symlink_to(require_shared(f"midi/{sub}"))
    result = records.build_midi_dataset(tmp / "in", tmp / "out", "mixed", workers=2, max_frames=30_000, progress=False)
    return tmp / "out", result


def test_every_input_is_accounted_for(mixed):
    data_dir, result = mixed
    inputs = [f"{sub}/{p.name}" for sub in ("edge", "real") for p in midi_inputs(MIDI / sub)]
    assert len(inputs) == 139  # 40 edge + 99 real
    manifest = read_manifest(result.path)
    assert [e["path"] for e in manifest] == inputs
    status = {e["path"]: e for e in manifest}
    assert result.card["files"] == {"inputs": 139, "converted": 121, "skipped": 18, "duplicate": 0}
    assert sum(result.card["skipped_by_reason"].values()) == 18

    unreadable = [e for e in manifest if e.get("reason") == "unreadable"]
    for name in (
        "jazzsoft_test-empty-file.mid",
        "jazzsoft_test-not-a-midi-file.mid",
        "nfroidure_MIDIBadTrackLength.mid",
    ):
        assert status[f"edge/{name}"]["reason"] == "unreadable"
    for entry in unreadable:
        assert entry["status"] == "skipped" and entry["path"].startswith("edge/")
        assert entry["detail"].startswith(str(data_dir.parent / "in" / entry["path"]) + ": ")
        assert "\n" not in entry["detail"]
    assert status["edge/jazzsoft_test-empty.mid"]["reason"] == "no notes"
    assert status["edge/jazzsoft_test-all-gm-percussion.mid"]["reason"] == "no notes"  # drums dropped
    assert status["real/miditok_Maestro_6.mid"]["reason"] == "too long"  # 37,473 frames > 30,000
    assert all(status[p]["status"] == "converted" for p in inputs if p.startswith("real/") and "Maestro_6" not in p)

    converted = [e for e in manifest if e["status"] == "converted"]
    info = records.load_info(str(data_dir), "mixed")
    assert (info.num_pitches, info.num_states, info.lowest_pitch, info.steps_per_quarter) == (128, 3, 0, 8)
    for split in records.SPLITS:
        in_split = [e for e in converted if e["split"] == split]
        assert info.split_sizes[split] == len(records.load_split(str(data_dir), "mixed", split)) == len(in_split)
        assert info.split_frames[split] == sum(e["frames"] for e in in_split)
    assert result.card["frames"] == sum(e["frames"] for e in converted)


def test_records_equal_what_the_codec_produces(mixed):
    data_dir, result = mixed
    items = read_split_by_name(data_dir, "mixed")
    converted = [e for e in read_manifest(result.path) if e["status"] == "converted"]
    assert sorted(items) == sorted(e["path"] for e in converted)
    sample = [e for e in converted if e["path"].startswith("edge/")] + converted[::6]  # decoding all takes 20 s
    for entry in sample:
        frames = midi_to_frames(MIDI / entry["path"])
        item = items[entry["path"]]
        assert item["states"].dtype == item["velocities"].dtype == np.uint8
        np.testing.assert_array_equal(item["states"], frames.states, err_msg=entry["path"])
        np.testing.assert_array_equal(item["velocities"], frames.velocities, err_msg=entry["path"])
        assert entry["frames"] == frames.num_frames


def test_benchmark_records_equal_the_mat_file(tmp_path):
    require_shared("polyphonic/JSB_Chorales.mat")
    result = records.build_benchmark_dataset(JSB, tmp_path)
    assert result.path.name == "jsb_chorales"
    info = records.load_info(str(tmp_path), "jsb_chorales")
    assert (info.num_pitches, info.num_states, info.lowest_pitch, info.steps_per_quarter) == (88, 2, 21, 1)
    assert info.split_sizes == {"train": 229, "validation": 76, "test": 77}
    assert info.split_frames == {"train": 13807, "validation": 4602, "test": 4725}
    imported = corpus.load_benchmark(JSB)
    for split, sequences in imported.items():
        source = records.load_split(str(tmp_path), "jsb_chorales", split)
        assert len(source) == len(sequences)
        for i, expected in enumerate(sequences):
            item = source[i]
            assert item["name"] == f"{split}/{i:04d}"
            np.testing.assert_array_equal(item["states"], expected)
    assert not records.build_benchmark_dataset(JSB, tmp_path).rebuilt


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_bad_inputs_give_one_line_and_nonzero_exit(synthetic_midi, tmp_path):
    (tmp_path / "empty").mkdir()
    midi = link_folder(tmp_path / "midi", [synthetic_midi / "chorale_00.mid"])
    (tmp_path / "README.md").write_text("# The polyphonic benchmark\n")
    (tmp_path / "empty" / "notes.txt").write_text("no midi here")
    (tmp_path / "a_file").write_text("")
    records_dir = ["--data_dir", str(tmp_path / "records")]
    cases = {
        "missing": (["--midi_dir", str(tmp_path / "missing"), *records_dir], str(tmp_path / "missing")),
        "empty": (["--midi_dir", str(tmp_path / "empty"), *records_dir], str(tmp_path / "empty")),
        "unwritable": (
            ["--midi_dir", str(midi), "--data_dir", str(tmp_path / "a_file" / "records")],
            str(tmp_path / "a_file" / "records"),
        ),
        "benchmark format": (
            ["--benchmark", str(tmp_path / "README.md"), *records_dir],
            "README.md",
        ),
        "bad name": (["--midi_dir", str(midi), "--dataset", "Bad-Name", *records_dir], "--dataset 'Bad-Name'"),
        "bad name, old flag": (["--midi_dir", str(midi), "--name", "Bad-Name", *records_dir], "--dataset 'Bad-Name'"),
    }
    for case, (args, named) in cases.items():
        done = run_prepare(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1 and named in lines[0], (case, done.stderr)
    assert not (tmp_path / "records").exists()


def test_cli_benchmark_then_up_to_date(synthetic_midi, tmp_path):
    source = synthetic.write_benchmark_json(sorted(synthetic_midi.glob("*.mid"))[:12], tmp_path / "twelve.json")
    first = run_prepare("--benchmark", str(source), "--data_dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "twelve: 12 inputs -> 12 converted" in first.stdout
    assert records.load_info(str(tmp_path), "twelve").split_sizes == {"train": 8, "validation": 2, "test": 2}
    second = run_prepare("--benchmark", str(source), "--data_dir", str(tmp_path))
    assert second.returncode == 0 and "up to date" in second.stdout
    assert run_prepare("--help").returncode == 0
