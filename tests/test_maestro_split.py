"""MAESTRO's own split: a folder holding maestro-v*.csv/.json is split as that file says, through data/prepare.py
as a user runs it. On pieces written here (tests/synthetic.py), and on the ten MAESTRO performances of
../shared/data/midi/real laid out as MAESTRO lays them out, with metadata the tests write."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED, absent

from musicgpt_jax import records, split_rules

REAL = SHARED / "midi" / "real"
PREPARE = REPO / "data" / "prepare.py"
COLUMNS = ("canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename", "duration")
MISSING_ROW = "2019/MIDI-Unprocessed_not_downloaded.midi"


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PREPARE), *args], capture_output=True, text=True, timeout=300)


def maestro_layout(folder: Path, sources: list[Path], splits: list[str]) -> dict[str, str]:
    """Copy `sources` into `folder` as MAESTRO names them (YEAR/NAME.midi); {relative path: split} of each."""
    listed = {}
    for i, (source, split) in enumerate(zip(sources, splits, strict=True)):
        relative = f"{2017 + i % 2}/MIDI-Unprocessed_{i:02d}_R1_{source.stem}.midi"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / relative)
        listed[relative] = split
    return listed


def rows(listed: dict[str, str]) -> list[dict]:
    """Metadata rows as MAESTRO's has them, for `listed` and for one file that is not in the folder."""
    table = {**listed, MISSING_ROW: "train"}
    return [
        {
            "canonical_composer": "Frédéric Chopin",  # MAESTRO's CSV is UTF-8 with accents
            "canonical_title": f"Piece {i}",
            "split": split,
            "year": int(name[:4]),
            "midi_filename": name,
            "audio_filename": name.replace(".midi", ".wav"),
            "duration": 123.4,
        }
        for i, (name, split) in enumerate(table.items())
    ]


def write_csv(path: Path, table: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    return path


def write_json(path: Path, table: list[dict], layout: str = "columns") -> Path:
    """v3's column-oriented JSON ({"split": {"0": ...}, ...}) or v1/v2's list of rows."""
    data = {c: {str(i): row[c] for i, row in enumerate(table)} for c in COLUMNS} if layout == "columns" else table
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def prepare(folder: Path, out: Path, *extra: str) -> tuple[str, dict[str, dict], dict]:
    """Run data/prepare.py on `folder`; (stdout, manifest by path, card)."""
    done = run_prepare(
        "--midi_dir", str(folder), "--data_dir", str(out), "--dataset", "maestro", "--workers", "2", *extra
    )
    assert done.returncode == 0, done.stderr
    root = out / "maestro"
    manifest = {e["path"]: e for e in map(json.loads, (root / records.MANIFEST_FILE).read_text().splitlines())}
    return done.stdout, manifest, json.loads((root / records.CARD_FILE).read_text())


def assert_split_as_listed(manifest: dict[str, dict], listed: dict[str, str], unlisted: list[str]) -> None:
    """Every listed file in the split the metadata names; every unlisted one in its hash split."""
    assert set(manifest) == set(listed) | set(unlisted)
    for path, split in listed.items():
        assert (manifest[path]["status"], manifest[path]["split"], manifest[path]["split_by"]) == (
            "converted",
            split,
            "metadata",
        ), path
    for path in unlisted:
        entry = manifest[path]
        assert entry["split_by"] == "sha256" and entry["split"] == split_rules.split_of(entry["sha256"], 5, 5)


def add_unlisted(folder: Path, source: Path) -> str:
    """A file the metadata does not list (e.g. one the user added)."""
    (folder / "extra").mkdir()
    shutil.copyfile(source, folder / "extra" / "my_own.mid")
    return "extra/my_own.mid"


# ------------------------------------------------------------------------------------------ files written here


@pytest.fixture(scope="module")
def pieces(synthetic_midi) -> list[Path]:
    return sorted(synthetic_midi.glob("*.mid"))[:7]


def test_csv_split_with_a_missing_row_and_an_unlisted_file(pieces, tmp_path):
    folder = tmp_path / "maestro-v3.0.0"
    listed = maestro_layout(folder, pieces[:6], ["train", "train", "validation", "validation", "test", "test"])
    unlisted = add_unlisted(folder, pieces[6])
    write_csv(folder / "maestro-v3.0.0.csv", rows(listed))
    stdout, manifest, card = prepare(folder, tmp_path / "out")

    assert_split_as_listed(manifest, listed, [unlisted])
    rule = card["split_rule"]
    assert rule["by"] == "metadata" and rule["file"] == "maestro-v3.0.0.csv"
    assert (rule["listed_inputs"], rule["unlisted_inputs"], rule["missing"]) == (6, 1, 1)
    assert rule["missing_files"] == [MISSING_ROW] and card["options"]["split_by"] == "maestro-v3.0.0.csv"
    assert "split: from maestro-v3.0.0.csv (MAESTRO's own) for the 6 files it lists" in stdout
    assert "1 file it does not list split by SHA-256" in stdout and f"1 file it lists missing ({MISSING_ROW})" in stdout

    again = run_prepare("--midi_dir", str(folder), "--data_dir", str(tmp_path / "out"), "--dataset", "maestro")
    assert "up to date" in again.stdout
    write_csv(folder / "maestro-v3.0.0.csv", rows({**listed, next(iter(listed)): "test"}))  # metadata edited
    _, manifest, _ = prepare(folder, tmp_path / "out")
    assert manifest[next(iter(listed))]["split"] == "test"


@pytest.mark.parametrize("layout", ["columns", "rows"])
def test_json_split_both_layouts(pieces, tmp_path, layout):
    folder = tmp_path / "maestro-v2.0.0"
    listed = maestro_layout(folder, pieces[:3], ["train", "validation", "test"])
    write_json(folder / "maestro-v2.0.0.json", rows(listed), layout)
    stdout, manifest, card = prepare(folder, tmp_path / "out")
    assert_split_as_listed(manifest, listed, [])
    assert card["split_rule"]["file"] == "maestro-v2.0.0.json" and "split: from maestro-v2.0.0.json" in stdout


def test_other_folders_keep_the_hash_split_and_say_so(pieces, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for piece in pieces[:3]:
        shutil.copyfile(piece, folder / piece.name)
    stdout, manifest, card = prepare(folder, tmp_path / "out")
    assert card["split_rule"] == {"by": "sha256", "val_percent": 5.0, "test_percent": 5.0}
    assert all(e["split_by"] == "sha256" for e in manifest.values()) and "split_by" not in card["options"]
    assert "split: by the SHA-256 of each file (5% validation, 5% test)" in stdout


def test_a_malformed_metadata_file_stops_with_one_line_and_hash_split_overrides(pieces, tmp_path):
    folder = tmp_path / "maestro-v3.0.0"
    listed = maestro_layout(folder, pieces[:2], ["train", "test"])
    metadata = folder / "maestro-v3.0.0.csv"
    metadata.write_text("canonical_composer,split,midi_filename\nBach,dev,2017/x.midi\n")
    done = run_prepare("--midi_dir", str(folder), "--data_dir", str(tmp_path / "out"), "--dataset", "maestro")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert str(metadata) in lines[0] and "row 1: split 'dev'" in lines[0] and "--hash_split" in lines[0]
    assert not (tmp_path / "out" / "maestro").exists()

    stdout, manifest, card = prepare(folder, tmp_path / "out", "--hash_split")
    assert card["split_rule"]["by"] == "sha256" and set(manifest) == set(listed)
    assert "split: by the SHA-256" in stdout


def test_metadata_reasons_and_which_file_is_used(tmp_path):
    cases = {
        "a.csv": ("split,year\ntrain,2018\n", "no midi_filename column"),
        "b.csv": ("split,midi_filename\n", "no rows"),
        "c.json": ("{not json", "Expecting property name"),
        "d.json": ('{"split": {"0": "train"}}', "no midi_filename column"),
        "e.json": ('"a string"', "neither a table of columns nor a list of rows"),
        "f.csv": (
            "split,midi_filename\ntrain,2018/a.midi\ntest,2018/a.midi\n",
            "row 2: 2018/a.midi is listed in both train and test",
        ),
        "g.csv": (b"split,midi_filename\ntrain,2018/\xff.midi\n", "not UTF-8 text"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(split_rules.MetadataError, match=reason) as error:
            split_rules.read_metadata(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)

    folder = tmp_path / "maestro"
    folder.mkdir()
    assert split_rules.find_metadata(folder) is None
    for name in ("maestro-v2.0.0.csv", "maestro-v3.0.0.json", "maestro-v3.0.0.csv", "maestro-v10.0.0.txt"):
        (folder / name).write_text("")
    assert split_rules.find_metadata(folder).name == "maestro-v3.0.0.csv"  # newest version, CSV over JSON


# --------------------------------------------------------------------------------------------- ../shared files


@pytest.fixture(scope="module")
def maestro_files() -> list[Path]:
    files = [REAL / f"miditok_Maestro_{i}.mid" for i in range(1, 11)]
    if not all(f.is_file() for f in files):
        pytest.skip(absent("midi/real/miditok_Maestro_{1..10}.mid"))
    return files


def test_ten_maestro_performances_split_as_the_csv_says(maestro_files, pieces, tmp_path):
    folder = tmp_path / "maestro-v3.0.0"
    splits = ["train"] * 6 + ["validation"] * 2 + ["test"] * 2
    listed = maestro_layout(folder, maestro_files, splits)
    unlisted = add_unlisted(folder, pieces[0])
    write_csv(folder / "maestro-v3.0.0.csv", rows(listed))
    (folder / "LICENSE").write_text("CC BY-NC-SA 4.0\n")  # as the download has; not MIDI, not metadata
    stdout, manifest, card = prepare(folder, tmp_path / "out")

    assert_split_as_listed(manifest, listed, [unlisted])
    sizes = records.load_info(str(tmp_path / "out"), "maestro").split_sizes
    extra = manifest[unlisted]["split"]
    assert sizes == {s: splits.count(s) + (s == extra) for s in records.SPLITS}
    assert "split: from maestro-v3.0.0.csv (MAESTRO's own) for the 10 files it lists" in stdout
    assert f"1 file it lists missing ({MISSING_ROW})" in stdout and card["split_rule"]["missing"] == 1


def test_four_maestro_performances_split_as_the_json_says(maestro_files, tmp_path):
    folder = tmp_path / "maestro-v3.0.0"
    listed = maestro_layout(folder, maestro_files[:4], ["train", "train", "validation", "test"])
    write_json(folder / "maestro-v3.0.0.json", rows(listed))
    stdout, manifest, card = prepare(folder, tmp_path / "out")
    assert_split_as_listed(manifest, listed, [])
    assert "split: from maestro-v3.0.0.json (MAESTRO's own) for the 4 files it lists" in stdout
    assert card["split_rule"]["unlisted_inputs"] == 0
