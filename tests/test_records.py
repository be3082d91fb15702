"""Records: real and broken MIDI files in, shards + manifest + card out, and back through the reader."""

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
from conftest import REPO, SHARED

from musicgpt_jax import corpus, records
from musicgpt_jax.frames import midi_to_frames

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


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """All of midi/real and midi/edge (linked folders), built once with 2 workers."""
    tmp = tmp_path_factory.mktemp("mixed")
    (tmp / "in").mkdir()
    for sub in ("real", "edge"):
        (tmp / "in" / sub).symlink_to(MIDI / sub)
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


def test_a_split_is_a_grain_source_in_a_fixed_order(mixed):
    data_dir, _ = mixed
    train = records.load_split(str(data_dir), "mixed", "train")
    names = [train[i]["name"] for i in range(len(train))]
    assert names == sorted(names) and train[-1]["name"] == names[-1]
    with pytest.raises(IndexError):
        train[len(train)]
    dataset = grain.MapDataset.source(train).map(lambda item: item["states"].shape[0])
    assert list(dataset[:3]) == [train[i]["states"].shape[0] for i in range(3)]
    with pytest.raises(ValueError, match="split must be one of"):
        records.load_split(str(data_dir), "mixed", "valid")


def test_same_inputs_give_identical_shards_and_adding_files_moves_none(tmp_path):
    edge = link_folder(tmp_path / "edge", midi_inputs(MIDI / "edge"))
    one = records.build_midi_dataset(edge, tmp_path / "one", "edge", workers=2, progress=False)
    two = records.build_midi_dataset(edge, tmp_path / "two", "edge", workers=1, progress=False)
    files = sorted(p.relative_to(one.path) for p in one.path.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two.path) for p in two.path.rglob("*") if p.is_file())
    assert any("array_record" in str(f) for f in files)
    for f in files:
        if f.name != records.CARD_FILE:  # the card names its source folder
            assert (one.path / f).read_bytes() == (two.path / f).read_bytes(), f

    extra = midi_inputs(MIDI / "real")[::10] + [MIDI / "edge" / "music21_test10.mid"]
    grown = link_folder(tmp_path / "grown", midi_inputs(MIDI / "edge") + extra[:-1])
    (grown / "zz_copy_of_test10.mid").write_bytes(extra[-1].read_bytes())
    three = records.build_midi_dataset(grown, tmp_path / "three", "edge", workers=2, progress=False)
    before = {e["path"]: e.get("split") for e in read_manifest(one.path)}
    after = {e["path"]: e for e in read_manifest(three.path)}
    assert all(after[path].get("split") == split for path, split in before.items())
    assert len(after) == len(before) + len(extra)
    assert after["zz_copy_of_test10.mid"]["status"] == "duplicate"
    assert after["zz_copy_of_test10.mid"]["duplicate_of"] == "music21_test10.mid"
    assert "zz_copy_of_test10.mid" not in read_split_by_name(tmp_path / "three", "edge")
    assert records.split_of("0" * 64, 5, 5) == "test" and records.split_of("f" * 64, 5, 5) == "train"


def test_a_file_past_its_time_limit_is_skipped_and_the_run_goes_on(tmp_path):
    folder = link_folder(tmp_path / "in", [MIDI / "real/miditok_Maestro_6.mid", MIDI / "real/nott_ashover1.mid"])
    result = records.build_midi_dataset(folder, tmp_path / "out", "t", workers=1, timeout_s=0.2, progress=False)
    status = {e["path"]: e for e in read_manifest(result.path)}
    assert status["miditok_Maestro_6.mid"]["reason"] == "timed out"  # takes about 0.6 s
    assert status["nott_ashover1.mid"]["status"] == "converted"


def test_benchmark_records_equal_the_mat_file(tmp_path):
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


def test_gs_data_dir_goes_through_epath():
    """A gs:// data dir reaches the storage layer intact (pathlib would turn it into "gs:/bucket/...")."""
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed: this would reach the network")
    except ImportError:
        pass
    with pytest.raises(records.DatasetNotFoundError, match=r"^gs://bucket/data/jsb_chorales: cannot read it"):
        records.load_info("gs://bucket/data", "jsb_chorales")
    with pytest.raises(records.DatasetNotFoundError, match=r"^gs://bucket/data/jsb_chorales: "):
        records.load_split("gs://bucket/data", "jsb_chorales", "train")


def test_an_interrupted_build_never_reads_as_a_dataset(mixed, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            str(PREPARE),
            "--midi_dir",
            str(MIDI / "real"),
            "--data_dir",
            str(tmp_path),
            "--name",
            "cut",
            "--workers",
            "1",
        ],
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

    copy = tmp_path / "mixed"
    shutil.copytree(mixed[1].path, copy)
    (copy / records.CARD_FILE).unlink()  # shards without their card: a half-copied dataset
    with pytest.raises(records.DatasetNotFoundError):
        records.load_info(str(tmp_path), "mixed")

    small = link_folder(tmp_path / "small", [MIDI / "real/nott_ashover1.mid"])
    records.build_midi_dataset(small, tmp_path, "cut", workers=1, progress=False)
    assert records.load_info(str(tmp_path), "cut").split_sizes["train"] == 1
    assert not list(tmp_path.glob(".cut.*"))  # the killed build's scratch folder is cleaned up


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PREPARE), *args], capture_output=True, text=True, timeout=120)


def test_cli_bad_inputs_give_one_line_and_nonzero_exit(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no midi here")
    (tmp_path / "a_file").write_text("")
    records_dir = ["--data_dir", str(tmp_path / "records")]
    cases = {
        "missing": (["--midi_dir", str(tmp_path / "missing"), *records_dir], str(tmp_path / "missing")),
        "empty": (["--midi_dir", str(tmp_path / "empty"), *records_dir], str(tmp_path / "empty")),
        "unwritable": (
            ["--midi_dir", str(MIDI / "edge"), "--data_dir", str(tmp_path / "a_file" / "records")],
            str(tmp_path / "a_file" / "records"),
        ),
        "benchmark format": (
            ["--benchmark", str(SHARED / "polyphonic" / "README.md"), *records_dir],
            "README.md",
        ),
        "bad name": (["--midi_dir", str(MIDI / "edge"), "--name", "Bad-Name", *records_dir], "--name"),
    }
    for case, (args, named) in cases.items():
        done = run_prepare(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1 and named in lines[0], (case, done.stderr)
    assert not (tmp_path / "records").exists()


def test_cli_benchmark_then_up_to_date(tmp_path):
    first = run_prepare("--benchmark", str(JSB), "--data_dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "jsb_chorales: 382 inputs -> 382 converted" in first.stdout
    second = run_prepare("--benchmark", str(JSB), "--data_dir", str(tmp_path))
    assert second.returncode == 0 and "up to date" in second.stdout
    assert run_prepare("--help").returncode == 0
