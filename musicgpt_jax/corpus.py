"""Where the music comes from when the user brings none: music21's Bach chorales, and the benchmark.

The default corpus is every score in music21's bundled `bach` directory (about 410 chorale harmonisations,
some of them with orchestral parts; the three Humdrum `.krn` files that repeat an `.mxl` score are left out),
exported to MIDI once under `data/default_corpus/` and reused. music21 takes a few tenths of a second per
score, so the export runs in a process pool. music21's parse cache is bypassed (`forceSource`, no
`storePickle`): it is a pickle cache, and this project never loads pickles.

The benchmark import reads the Boulanger-Lewandowski (2012) sets exactly as published: 88 sustain-only
columns, column j = MIDI pitch j + 21, the published train/validation/test splits, in their published order.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from tqdm import tqdm

from musicgpt_jax.deadline_pool import run_with_deadline

DEFAULT_CORPUS_DIR = "data/default_corpus"
EXPORT_TIMEOUT_S = 600.0

BENCHMARK_PITCHES = 88
BENCHMARK_LOWEST_PITCH = 21
# Dataset name -> (file in ../shared/data/polyphonic, steps per quarter note of its frames).
BENCHMARKS: dict[str, tuple[str, int]] = {
    "jsb_chorales": ("JSB_Chorales.mat", 1),
    "nottingham": ("Nottingham.mat", 2),
    "musedata": ("MuseData.mat", 2),
    "piano_midi": ("Piano_midi.mat", 2),
    "jsb_chorales_quarter": ("jsb-chorales-quarter.json", 1),
    "jsb_chorales_8th": ("jsb-chorales-8th.json", 2),
    "jsb_chorales_16th": ("jsb-chorales-16th.json", 4),
}
_MAT_KEYS = {"train": "traindata", "validation": "validdata", "test": "testdata"}
_JSON_KEYS = {"train": "train", "validation": "valid", "test": "test"}


class BenchmarkFormatError(ValueError):
    """The file is not one of the benchmark's formats; the message is one line naming the file."""


# ------------------------------------------------------------------------------------------------------------
# The default corpus


def default_corpus_scores() -> list[Path]:
    """The music21 corpus files of the default corpus, sorted by file name."""
    from music21 import corpus

    scores = [p for p in corpus.getComposer("bach") if p.parent.name == "bach"]
    notated = {p.stem for p in scores if p.suffix in (".mxl", ".xml")}
    kept = [p for p in scores if p.suffix in (".mxl", ".xml") or p.stem not in notated]
    return sorted(kept, key=lambda p: p.name)


def _export_score(task: tuple[str, str]) -> str:
    """Worker: parse one score and write it as MIDI, atomically (a temp file in the folder, then rename)."""
    from music21 import converter, midi

    source, target = task
    score = converter.parseFile(source, forceSource=True, storePickle=False)
    data = midi.translate.streamToMidiFile(score).writestr()
    temp = f"{target}.tmp-{os.getpid()}"
    with open(temp, "wb") as f:
        f.write(data)
    os.replace(temp, target)
    return target


def export_default_corpus(
    out_dir: str | os.PathLike = DEFAULT_CORPUS_DIR,
    *,
    scores: Sequence[Path] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Export the default corpus (or `scores`) to `out_dir/<score>.mid`; return the MIDI paths, sorted.

    Idempotent: a score whose MIDI file exists is not exported again, and as each file is written whole under
    a temporary name and then renamed, an existing file is always complete. The bytes depend only on the score
    and the music21 version. A score music21 fails on is reported on stderr and left out (the next call
    retries it).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = default_corpus_scores() if scores is None else list(scores)
    targets = [out / f"{Path(s).stem}.mid" for s in scores]
    todo = [(str(s), str(t)) for s, t in zip(scores, targets, strict=True) if not t.exists()]
    if todo:
        bar = tqdm(total=len(todo), desc=f"exporting chorales to {out}", unit="score", disable=not progress)
        with bar:
            results = run_with_deadline(
                _export_score, todo, workers=workers or os.cpu_count() or 1, timeout_s=EXPORT_TIMEOUT_S
            )
            for index, result in results:
                if not isinstance(result, str):
                    print(f"{todo[index][0]}: not exported ({result})", file=sys.stderr)
                bar.update()
    return sorted(t for t in targets if t.exists())


# ------------------------------------------------------------------------------------------------------------
# The polyphonic benchmark


def benchmark_name(path: str | os.PathLike) -> str:
    """The dataset name of a benchmark file: `JSB_Chorales.mat` -> `jsb_chorales`."""
    stem = Path(path).stem
    known = {file: name for name, (file, _) in BENCHMARKS.items()}
    return known.get(Path(path).name, stem.lower().replace("-", "_"))


def benchmark_steps_per_quarter(name: str) -> int:
    """Frames per quarter note: quarters for JSB, eighths for the others (the published convention)."""
    return BENCHMARKS.get(name, ("", 2))[1]


def _check_rolls(path: Path, splits: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    for split, sequences in splits.items():
        for i, seq in enumerate(sequences):
            if seq.ndim != 2 or seq.shape[1] != BENCHMARK_PITCHES or seq.size and seq.max() > 1:
                raise BenchmarkFormatError(
                    f"{path}: {split} sequence {i} is not a (T, 88) 0/1 piano roll (shape {seq.shape})"
                )
    return splits


def _load_mat(path: Path) -> dict[str, list[np.ndarray]]:
    try:
        mat = scipy.io.loadmat(path)
    except Exception as error:  # noqa: BLE001 - scipy raises many types for a bad file
        raise BenchmarkFormatError(f"{path}: not a readable MATLAB file ({type(error).__name__})") from None
    missing = [key for key in _MAT_KEYS.values() if key not in mat]
    if missing:
        raise BenchmarkFormatError(f"{path}: not a benchmark .mat file (no {', '.join(missing)})")
    return {
        split: [np.ascontiguousarray(seq, dtype=np.uint8) for seq in np.ravel(mat[key])]
        for split, key in _MAT_KEYS.items()
    }


def _frames_to_roll(frames: list[list[int]]) -> np.ndarray:
    roll = np.zeros((len(frames), BENCHMARK_PITCHES), np.uint8)
    for t, pitches in enumerate(frames):
        columns = np.asarray(pitches, dtype=np.int64) - BENCHMARK_LOWEST_PITCH
        if columns.size and (columns.min() < 0 or columns.max() >= BENCHMARK_PITCHES):
            raise ValueError(f"pitch out of range in frame {t}")
        roll[t, columns] = 1
    return roll


def _load_json(path: Path) -> dict[str, list[np.ndarray]]:
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BenchmarkFormatError(f"{path}: not valid JSON ({type(error).__name__})") from None
    if not isinstance(data, dict) or not all(key in data for key in _JSON_KEYS.values()):
        raise BenchmarkFormatError(f"{path}: not a benchmark .json file (needs keys train, valid, test)")
    try:
        return {split: [_frames_to_roll(seq) for seq in data[key]] for split, key in _JSON_KEYS.items()}
    except (TypeError, ValueError, IndexError):
        raise BenchmarkFormatError(
            f"{path}: frames must be lists of MIDI pitches {BENCHMARK_LOWEST_PITCH}-"
            f"{BENCHMARK_LOWEST_PITCH + BENCHMARK_PITCHES - 1}"
        ) from None


def load_benchmark(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Read a benchmark file into {"train"|"validation"|"test": [(T, 88) uint8 0/1 arrays]}, in order.

    `.mat` files hold `traindata`/`validdata`/`testdata`; `.json` files hold `train`/`valid`/`test`, each
    frame a list of MIDI pitches (column = pitch - 21). Anything else raises BenchmarkFormatError.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: no such file")
    loaders = {".mat": _load_mat, ".json": _load_json}
    loader = loaders.get(path.suffix.lower())
    if loader is None:
        raise BenchmarkFormatError(
            f"{path}: unknown benchmark format {path.suffix or '(no suffix)'!r}; expected .mat or .json"
        )
    return _check_rolls(path, loader(path))
