"""Corpus: the default corpus export and the polyphonic-benchmark import, on the real files (../shared) and on a
file written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
from conftest import SHARED, require_shared

from musicgpt_jax import corpus
from musicgpt_jax.midi_io import midi_to_frames

POLY = SHARED / "polyphonic"
SPLITS = ("train", "validation", "test")


def test_jsb_mat_is_imported_exactly():
    require_shared("polyphonic/JSB_Chorales.mat")
    imported = corpus.load_benchmark(POLY / "JSB_Chorales.mat")
    mat = scipy.io.loadmat(POLY / "JSB_Chorales.mat")
    assert list(imported) == list(SPLITS)
    for split, key in zip(SPLITS, ("traindata", "validdata", "testdata"), strict=True):
        expected = mat[key][0]
        assert len(imported[split]) == len(expected)
        for got, want in zip(imported[split], expected, strict=True):
            assert got.dtype == np.uint8 and got.shape == want.shape and got.shape[1] == 88
            np.testing.assert_array_equal(got, want)
    assert [len(imported[s]) for s in SPLITS] == [229, 76, 77]


def test_jsb_json_equals_the_mat_file_sequence_by_sequence():
    require_shared("polyphonic/jsb-chorales-quarter.json")
    from_json = corpus.load_benchmark(POLY / "jsb-chorales-quarter.json")
    from_mat = corpus.load_benchmark(POLY / "JSB_Chorales.mat")
    raw = json.loads((POLY / "jsb-chorales-quarter.json").read_text())
    for split in SPLITS:
        assert len(from_json[split]) == len(from_mat[split])
        for a, b in zip(from_json[split], from_mat[split], strict=True):
            np.testing.assert_array_equal(a, b)
    first = raw["train"][0][0]  # a frame is a list of MIDI pitches; column = pitch - 21
    assert sorted(np.flatnonzero(from_json["train"][0][0]) + 21) == sorted(first)


@pytest.mark.parametrize(
    "file, sequences, frames",
    [
        ("Nottingham.mat", (694, 173, 170), (176561, 45513, 44463)),
        ("Piano_midi.mat", (87, 12, 25), (75911, 8540, 19036)),
        ("MuseData.mat", (524, 135, 124), (245202, 82755, 64339)),
    ],
)
def test_other_sets_have_their_published_sizes(file, sequences, frames):
    imported = corpus.load_benchmark(require_shared(f"polyphonic/{file}"))
    assert tuple(len(imported[s]) for s in SPLITS) == sequences
    assert tuple(sum(len(x) for x in imported[s]) for s in SPLITS) == frames
    assert all(x.dtype == np.uint8 and x.shape[1] == 88 and x.max() <= 1 for s in SPLITS for x in imported[s])


def test_benchmark_names_and_resolutions():
    assert [corpus.benchmark_name(POLY / f) for f in ("JSB_Chorales.mat", "Piano_midi.mat", "MuseData.mat")] == [
        "jsb_chorales",
        "piano_midi",
        "musedata",
    ]
    assert corpus.benchmark_steps_per_quarter("jsb_chorales") == 1
    assert corpus.benchmark_steps_per_quarter("nottingham") == 2
    assert corpus.benchmark_steps_per_quarter(corpus.benchmark_name(POLY / "jsb-chorales-16th.json")) == 4


def test_unknown_formats_are_refused_in_one_line(tmp_path):
    scipy.io.savemat(tmp_path / "other.mat", {"x": np.zeros((2, 2))})
    (tmp_path / "other.json").write_text(json.dumps({"train": [[[60]]]}))
    (tmp_path / "low.json").write_text(json.dumps({"train": [[[20]]], "valid": [], "test": []}))
    (tmp_path / "broken.mat").write_bytes(b"not a mat file")
    (tmp_path / "README.md").write_text("# The polyphonic benchmark\n")
    cases = [
        tmp_path / "README.md",
        tmp_path / "other.mat",
        tmp_path / "other.json",
        tmp_path / "low.json",
        tmp_path / "broken.mat",
        tmp_path / "missing.mat",
    ]
    for path in cases:
        with pytest.raises(corpus.BenchmarkFormatError) as error:
            corpus.load_benchmark(path)
        assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_default_corpus_lists_the_bach_scores():
    scores = corpus.default_corpus_scores()
    assert 400 <= len(scores) <= 420
    assert len({s.stem for s in scores}) == len(scores)
    assert {s.suffix for s in scores} <= {".mxl", ".xml", ".krn"}


def test_export_is_deterministic_idempotent_and_readable(tmp_path):
    scores = [s for s in corpus.default_corpus_scores() if s.stem in ("bwv1.6", "bwv10.7", "bwv67.4")]
    assert len(scores) == 3
    first = corpus.export_default_corpus(tmp_path / "a", scores=scores, workers=2, progress=False)
    second = corpus.export_default_corpus(tmp_path / "b", scores=scores, workers=1, progress=False)
    assert [p.name for p in first] == ["bwv1.6.mid", "bwv10.7.mid", "bwv67.4.mid"]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]

    stamps = [p.stat().st_mtime_ns for p in first]
    again = corpus.export_default_corpus(tmp_path / "a", scores=scores, workers=2, progress=False)
    assert again == first and [p.stat().st_mtime_ns for p in again] == stamps
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [p.name for p in first]  # no temp files left
    for path in first:
        frames = midi_to_frames(path)
        assert frames.num_frames > 0 and (frames.states == 1).sum() > 50
