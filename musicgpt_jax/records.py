"""Frames → TFDS ArrayRecord datasets, and the reader the trainer uses. No TensorFlow anywhere.

Layout of a dataset (the TFDS layout, so `tfds.data_source(name, data_dir=...)` opens it too):

    DATA_DIR/NAME/1.0.0/{dataset_info.json, features.json, NAME-{train,validation,test}.array_record-*}
    DATA_DIR/NAME/manifest.jsonl   one line per input: converted (frames, notes, seconds, split) or why not
    DATA_DIR/NAME/card.json        dataset card: counts, hours, polyphony, pitch histogram, build fingerprint

Writing goes through a `tfds.core.GeneratorBasedBuilder` made per dataset (features: `states`/`velocities` as
zlib-encoded uint8 tensors of shape (T, P), `name`, `sha256`, the piece's `key` (`keys`, UNKNOWN when not
known) and `composer` ("" when not known); records written before those two read as unknown); TFDS needs
TensorFlow only for `tf.data`, which is never asked for, and reading uses `as_data_source()` (ArrayRecord random
access). Shuffling is off, so
records sit in a fixed order (sorted by name) and the same inputs give byte-identical shards; grain shuffles
at training time.

Guarantees:
- A MIDI file's split depends only on the SHA-256 of its bytes, so adding files never moves one; in a folder
  holding MAESTRO's metadata file, the files it lists go to its split instead (split_rules.py; the manifest's
  `split_by` and the card's `split_rule` say which rule placed what). Identical files are kept once: the first
  by path, the others are "duplicate of" it in the manifest (same bytes, same split, so the music never changes
  split either). Manifest counts always add up to the inputs.
- Conversion runs in a process pool, one file per task, each with a time limit; a bad file never ends the run.
- A build happens in a hidden scratch folder in DATA_DIR and is renamed into place when complete; the card is
  written last, and readers require it, so an interrupted build never reads as a dataset.

Reading goes through `etils.epath`, so DATA_DIR may also be a gs:// bucket path (with gcsfs installed); writing
is to local folders only (the build stages and renames folders).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tqdm import tqdm

from musicgpt_jax import corpus, keys
from musicgpt_jax.configs import (
    DEFAULT_DATA_DIR,
    DEFAULT_DATASET,
    DEFAULT_MAX_FRAMES,
    DEFAULT_SPLIT_PERCENT,
    DEFAULT_TIMEOUT_S,
)
from musicgpt_jax.dataset_card import SPLITS, format_card, make_card, sequence_stats
from musicgpt_jax.deadline_pool import Failed, TimedOut, run_with_deadline
from musicgpt_jax.file_conversion import ConversionOptions, convert_file
from musicgpt_jax.midi_io import find_midi_files
from musicgpt_jax.split_rules import (
    HASH_RULE,
    Metadata,
    MetadataError,
    describe,
    find_metadata,
    read_composers,
    read_metadata,
)
from musicgpt_jax.split_rules import split_of as split_of

VERSION = "1.0.0"
CARD_FILE = "card.json"
MANIFEST_FILE = "manifest.jsonl"
_FORMAT = 2  # bump when the record layout changes, so fingerprints (and "up to date") change with it


class DatasetNotFoundError(FileNotFoundError):
    """No complete dataset at the path; the message names it and the command that prepares it."""


class InputError(ValueError):
    """A bad input to a build (directory, name, option); the message is one line naming it and the reason."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_pitches: int
    num_states: int
    lowest_pitch: int
    steps_per_quarter: int
    split_sizes: dict[str, int]  # sequences per split
    split_frames: dict[str, int]


@dataclass(frozen=True)
class BuildResult:
    path: Path  # DATA_DIR/NAME
    card: dict[str, Any]
    rebuilt: bool  # False when a complete dataset with the same fingerprint was already there

    def summary(self) -> str:
        return format_card(self.card)


# ---------------------------------------------------------------------------------------------------- reading


def prepare_command(data_dir: str | os.PathLike, name: str) -> str:
    """The command line that builds dataset `name` into `data_dir`."""
    command = "python data/prepare.py"
    if name in corpus.BENCHMARKS:
        command += f" --benchmark ../shared/data/polyphonic/{corpus.BENCHMARKS[name][0]}"
    elif name != DEFAULT_DATASET:
        command += f" --midi_dir DIR --dataset {name}"
    if os.path.normpath(data_dir) != os.path.normpath(DEFAULT_DATA_DIR):
        command += f" --data_dir {data_dir}"
    return command


def _complete_card(root: epath.PathLike) -> dict[str, Any] | None:
    """The card of the complete dataset at `root`, or None when there is none (or only part of one)."""
    root = epath.Path(root)
    if not (root / VERSION / "dataset_info.json").is_file():
        return None
    try:
        return json.loads((root / CARD_FILE).read_text())
    except (OSError, ValueError):
        return None


def _require_card(data_dir: epath.PathLike, name: str) -> dict[str, Any]:
    root = epath.Path(data_dir) / name
    try:
        card = _complete_card(root)
    except ImportError as error:  # a gs:// path without gcsfs installed
        raise DatasetNotFoundError(f"{root}: cannot read it ({error})") from None
    if card is None:
        raise DatasetNotFoundError(f"{root}: no dataset here; run: {prepare_command(data_dir, name)}")
    return card


def load_card(data_dir: epath.PathLike, name: str) -> dict[str, Any]:
    """The dataset card (card.json) of a complete dataset; DatasetNotFoundError when there is none."""
    return _require_card(data_dir, name)


def split_files(data_dir: epath.PathLike, name: str, split: str) -> list[Path]:
    """The source MIDI files of one split of a dataset made from a MIDI folder (from its manifest), sorted; empty
    for a dataset made otherwise (the benchmark sets) or whose source folder is gone."""
    card = _require_card(data_dir, name)
    manifest = epath.Path(data_dir) / name / MANIFEST_FILE
    source = Path(card.get("source", ""))
    if not manifest.exists() or not source.is_dir():
        return []
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return sorted(source / e["path"] for e in entries if e.get("split") == split and e.get("status") == "converted")


def load_info(data_dir: epath.PathLike, name: str) -> DatasetInfo:
    """Shape and size of dataset `name` in `data_dir`; DatasetNotFoundError unless it is completely there."""
    card = _require_card(data_dir, name)
    return DatasetInfo(
        name=card["name"],
        num_pitches=card["num_pitches"],
        num_states=card["num_states"],
        lowest_pitch=card["lowest_pitch"],
        steps_per_quarter=card["steps_per_quarter"],
        split_sizes={s: v["sequences"] for s, v in card["splits"].items()},
        split_frames={s: v["frames"] for s, v in card["splits"].items()},
    )


class FrameSequences(Sequence[dict]):
    """Random access to one split: item i = {"states": (T, P) uint8, "velocities": (T, P) uint8, "name": str,
    "key": int (`keys.UNKNOWN` for records written before keys were kept), "composer": str ("" when unknown)}.

    Works as a grain data source. The ArrayRecord reader is opened on first use and not pickled, so copies
    sent to grain worker processes open their own.
    """

    def __init__(self, version_dir: epath.Path, split: str, size: int):
        self._version_dir, self._split, self._size = version_dir, split, size
        self._source: Any = None

    def __len__(self) -> int:
        return self._size

    def _open(self) -> Any:
        if self._source is None:
            builder = tfds.builder_from_directory(str(self._version_dir))
            self._source = builder.as_data_source(split=self._split)
        return self._source

    @staticmethod
    def _item(record: Mapping[str, Any]) -> dict:
        return {
            "states": record["states"],
            "velocities": record["velocities"],
            "name": record["name"].decode(),
            "key": int(record["key"]) if "key" in record else keys.UNKNOWN,
            "composer": record["composer"].decode() if "composer" in record else "",
        }

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        index = index.__index__()
        if not -self._size <= index < self._size:
            raise IndexError(f"index {index} out of range for split {self._split!r} of {self._size}")
        return self._item(self._open()[index % self._size])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        return [self._item(r) for r in self._open().__getitems__(list(indices))] if indices else []

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None}

    def __repr__(self) -> str:
        return f"FrameSequences({self._version_dir}, split={self._split!r}, size={self._size})"


def load_split(data_dir: epath.PathLike, name: str, split: str) -> Sequence[dict]:
    """The sequences of one split ("train", "validation" or "test"), in a fixed order, with random access."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    card = _require_card(data_dir, name)
    return FrameSequences(epath.Path(data_dir) / name / VERSION, split, card["splits"][split]["sequences"])


# ---------------------------------------------------------------------------------------------------- writing


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise InputError(f"--dataset {name!r}: use lowercase letters, digits and underscores, starting with a letter")


def dataset_name_for(directory: str | os.PathLike) -> str:
    """A dataset name from a folder name: `My MIDI-files` -> `my_midi_files`."""
    name = re.sub(r"[^a-z0-9]+", "_", Path(directory).resolve().name.lower()).strip("_")
    return name if re.match(r"[a-z]", name) else f"midi_{name}".rstrip("_")


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    def initialize_from_bucket(self) -> None:
        """Nothing to fetch for a local dataset (and TFDS's version leaves an empty temp folder behind)."""


def _builder(
    root: Path,
    name: str,
    num_pitches: int,
    description: str,
    splits: Mapping[str, Callable[[], Iterable[dict]]],
) -> tfds.core.GeneratorBasedBuilder:
    """A TFDS builder for one dataset; `splits` maps each non-empty split to a function yielding examples."""
    frame_tensor = lambda: tfds.features.Tensor(
        shape=(None, num_pitches), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
    )
    features = tfds.features.FeaturesDict(
        {
            "states": frame_tensor(),
            "velocities": frame_tensor(),
            "name": tfds.features.Text(),
            "sha256": tfds.features.Text(),
            "key": tfds.features.Scalar(dtype=np.int64),
            "composer": tfds.features.Text(),
        }
    )

    with tfds.core.registered.skip_registration():  # one class per build; keep TFDS's global registry clean

        class FramesBuilder(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version(VERSION)

            def _info(self) -> tfds.core.DatasetInfo:
                return _LocalDatasetInfo(
                    builder=self, description=description, features=features, disable_shuffling=True
                )

            def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
                return {split: self._generate_examples(make) for split, make in splits.items()}

            def _generate_examples(self, make: Callable[[], Iterable[dict]]) -> Iterator[tuple[str, dict]]:
                for example in make():
                    yield example["name"], example

    FramesBuilder.name = name
    return FramesBuilder(data_dir=str(root), file_format="array_record")


def _write_records(
    stage: Path,
    name: str,
    num_pitches: int,
    description: str,
    splits: Mapping[str, Callable[[], Iterable[dict]]],
) -> None:
    """Write the shards of each non-empty split under `stage/name/VERSION` (TFDS cannot write empty ones)."""
    builder = _builder(stage, name, num_pitches, description, splits)
    tfds.display_progress_bar(False)
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints "Downloading and preparing dataset ..."
        builder.download_and_prepare(download_dir=str(stage / "downloads"))


def _fingerprint(options: Mapping[str, Any], inputs: Iterable[tuple[str, str | None]]) -> str:
    blob = json.dumps({"format": _FORMAT, "options": options, "inputs": list(inputs)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_stages(data_dir: Path, name: str) -> None:
    """Delete scratch folders that builds of `name` killed mid-way left behind (their process is gone)."""
    for leftover in data_dir.glob(f".{name}.*-*"):
        match = re.fullmatch(rf"\.{re.escape(name)}\.(?:incomplete|old)-(\d+)-.*", leftover.name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _staging(data_dir: Path, name: str) -> Iterator[Path]:
    """A scratch folder in `data_dir`; on success its `name` folder replaces `data_dir/name` by renames."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_stages(data_dir, name)
        stage = Path(tempfile.mkdtemp(prefix=f".{name}.incomplete-{os.getpid()}-", dir=data_dir))
    except OSError as error:
        raise InputError(f"{data_dir}: cannot write a dataset here ({error.strerror or error})") from None
    try:
        yield stage
        final = data_dir / name
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=data_dir)) / name
            final.rename(old)
        (stage / name).rename(final)
        if old is not None:
            shutil.rmtree(old.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_json(path: Path, entries: Iterable[Mapping[str, Any]] | Mapping[str, Any], lines: bool = False) -> None:
    if lines:
        path.write_text("".join(json.dumps(entry, sort_keys=True) + "\n" for entry in entries))
    else:
        path.write_text(json.dumps(entries, indent=1) + "\n")


def _hash_inputs(midi_dir: Path, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Manifest stubs: relative path and SHA-256 of each file (or why it could not be read)."""
    entries = []
    for path in paths:
        entry: dict[str, Any] = {"path": path.relative_to(midi_dir).as_posix()}
        try:
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as error:
            entry.update(sha256=None, status="skipped", reason="unreadable", detail=f"{path}: {error.strerror}")
        entries.append(entry)
    return entries


def _convert_all(
    tasks: Sequence[tuple[str, str, ConversionOptions]],
    workers: int,
    timeout_s: float,
    desc: str,
    progress: bool,
) -> list[Any]:
    """Run `convert_file` on every task in the pool, behind a progress bar; results in task order."""
    results: list[Any] = [None] * len(tasks)
    with tqdm(total=len(tasks), desc=desc, unit="file", disable=not progress) as bar:
        for index, result in run_with_deadline(convert_file, tasks, workers=workers, timeout_s=timeout_s):
            results[index] = result
            bar.update()
    return results


def _record_results(
    todo: list[dict[str, Any]],
    results: list[Any],
    split_for: Callable[[dict[str, Any]], tuple[str, str]],
    composers: Mapping[str, str],
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Fill in each manifest entry from its result; return the kept files' stats and entries per split.

    `split_for(entry)` gives a converted file's split and the rule that chose it (`split_by`); `composers` a
    converted file's composer by its path ("" when it names none).
    """
    stats: list[dict[str, Any]] = []
    kept: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for entry, result in zip(todo, results, strict=True):
        if isinstance(result, TimedOut):
            entry.update(status="skipped", reason="timed out", detail=f"over {result.seconds:g} s")
        elif isinstance(result, Failed):
            entry.update(status="skipped", reason="failed", detail=result.reason)
        elif result["status"] == "skipped":
            entry.update(result)
        else:
            split, rule = split_for(entry)
            entry.update(
                status="converted",
                split=split,
                split_by=rule,
                frames=result["frames"],
                notes=result["notes"],
                seconds=round(result["seconds"], 3),
                key=keys.key_name(result["key"]),
                composer=composers.get(entry["path"], ""),
            )
            stats.append({**result, "split": split, "composer": entry["composer"]})
            kept[split].append(entry)
    return stats, kept


def _split_metadata(midi_dir: Path) -> Metadata | None:
    """MAESTRO's metadata at the top of `midi_dir`, read; None when there is none; InputError when unusable."""
    found = find_metadata(midi_dir)
    try:
        return read_metadata(found) if found else None
    except MetadataError as error:
        raise InputError(f"{error}; fix or remove it, or pass --hash_split to split by hash instead") from None


def _composer_table(midi_dir: Path, metadata: Metadata | None, path: str | os.PathLike | None) -> Metadata | None:
    """Where composers come from: the `--metadata` CSV when given, else the MAESTRO metadata in `midi_dir`."""
    if path is None:
        return metadata if metadata is not None and metadata.composers else None
    try:
        return read_composers(Path(path))
    except MetadataError as error:
        raise InputError(f"--metadata {error}") from None


def build_midi_dataset(
    midi_dir: str | os.PathLike,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    name: str = DEFAULT_DATASET,
    *,
    steps_per_quarter: int = 8,
    sustain_pedal: bool = True,
    include_drums: bool = False,
    val_percent: float = DEFAULT_SPLIT_PERCENT,
    test_percent: float = DEFAULT_SPLIT_PERCENT,
    max_frames: int = DEFAULT_MAX_FRAMES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    use_metadata: bool = True,
    composer_metadata: str | os.PathLike | None = None,
) -> BuildResult:
    """Convert every MIDI file under `midi_dir` and write dataset `name` into `data_dir`.

    Splits follow MAESTRO's metadata file when one lies at the top of `midi_dir` (unless not `use_metadata`),
    else the SHA-256 of each file; InputError when that metadata file cannot be used. Each piece's composer comes
    from `composer_metadata` (a CSV with canonical_composer and midi_filename) when given, else from that MAESTRO
    file; its key from the MIDI file (`keys.key_of_midi`).

    Skips the work (`rebuilt=False`) when a complete dataset built from the same files with the same options
    is already there, unless `force`. Raises InputError for a bad directory, name or option, or when no file
    at all could be converted.
    """
    _check_name(name)
    if not (val_percent >= 0 and test_percent >= 0 and val_percent + test_percent < 100):
        raise InputError(f"--val_percent {val_percent}, --test_percent {test_percent}: need 0 <= each, sum < 100")
    if steps_per_quarter < 1 or max_frames < 1 or timeout_s <= 0 or (workers is not None and workers < 1):
        raise InputError("--steps_per_quarter, --max_frames, --timeout and --workers must be positive")
    midi_dir, data_dir = Path(midi_dir), Path(data_dir)
    if not midi_dir.is_dir():
        raise InputError(f"{midi_dir}: {'not a directory' if midi_dir.exists() else 'no such directory'}")
    paths = find_midi_files(midi_dir)
    if not paths:
        raise InputError(f"{midi_dir}: no MIDI files (.mid, .midi, .kar) in it or below")

    metadata = _split_metadata(midi_dir) if use_metadata else None
    composer_table = _composer_table(midi_dir, metadata, composer_metadata)

    conversion = ConversionOptions(steps_per_quarter, sustain_pedal, include_drums, max_frames)
    options = {
        **asdict(conversion),
        "val_percent": val_percent,
        "test_percent": test_percent,
        "timeout_s": timeout_s,
        **({"split_by": metadata.file} if metadata else {}),  # absent: the hash rule (older fingerprints hold)
        **({"composers_from": composer_table.file} if composer_table else {}),
    }
    manifest = _hash_inputs(midi_dir, paths)
    tables = {t.file: t.sha256 for t in (metadata, composer_table) if t is not None}
    inputs = [(e["path"], e["sha256"]) for e in manifest] + sorted(tables.items())
    fingerprint = _fingerprint(options, inputs)
    existing = _complete_card(data_dir / name)
    if existing is not None and existing.get("fingerprint") == fingerprint and not force:
        return BuildResult(data_dir / name, existing, rebuilt=False)

    first_of: dict[str, str] = {}
    todo: list[dict[str, Any]] = []
    for entry in manifest:
        if entry["sha256"] is None:
            continue
        if entry["sha256"] in first_of:
            entry.update(status="duplicate", duplicate_of=first_of[entry["sha256"]])
            continue
        first_of[entry["sha256"]] = entry["path"]
        todo.append(entry)

    with _staging(data_dir, name) as stage:
        scratch = stage / "frames"
        scratch.mkdir()
        tasks = [(str(midi_dir / e["path"]), str(scratch / f"{e['sha256']}.npz"), conversion) for e in todo]
        results = _convert_all(tasks, workers or os.cpu_count() or 1, timeout_s, f"{name}: converting", progress)

        def split_for(entry: dict[str, Any]) -> tuple[str, str]:
            if metadata is not None and entry["path"] in metadata.splits:
                return metadata.splits[entry["path"]], "metadata"
            return split_of(entry["sha256"], val_percent, test_percent), HASH_RULE

        composers = composer_table.composers if composer_table else {}
        stats, kept = _record_results(todo, results, split_for, composers)
        if not stats:
            reasons = sorted({e.get("reason", "duplicate") for e in manifest})
            raise InputError(f"{midi_dir}: none of the {len(manifest)} files could be converted ({', '.join(reasons)})")
        shape = {k: stats[0][k] for k in ("num_pitches", "num_states", "lowest_pitch")}

        def examples(entries: list[dict[str, Any]]) -> Iterator[dict]:
            for entry in entries:
                with np.load(scratch / f"{entry['sha256']}.npz", allow_pickle=False) as frames:
                    yield {
                        "states": frames["states"],
                        "velocities": frames["velocities"],
                        "name": entry["path"],
                        "sha256": entry["sha256"],
                        "key": keys.parse_key(entry["key"]) if entry["key"] != "unknown" else keys.UNKNOWN,
                        "composer": entry["composer"],
                    }

        description = f"MIDI files as frames, {steps_per_quarter} steps per quarter note; see card.json."
        splits = {s: (lambda e=entries: examples(e)) for s, entries in kept.items() if entries}
        _write_records(stage, name, shape["num_pitches"], description, splits)
        header = {
            "name": name,
            "source": str(midi_dir),
            "options": options,
            "fingerprint": fingerprint,
            **shape,
            "steps_per_quarter": steps_per_quarter,
            "split_rule": describe(metadata, [e["path"] for e in manifest], val_percent, test_percent),
        }
        card = make_card(header, manifest, stats, shape["num_pitches"])
        _write_json(stage / name / MANIFEST_FILE, manifest, lines=True)
        _write_json(stage / name / CARD_FILE, card)  # last: its presence marks the dataset complete
    return BuildResult(data_dir / name, card, rebuilt=True)


def build_benchmark_dataset(
    path: str | os.PathLike,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    name: str | None = None,
    *,
    force: bool = False,
) -> BuildResult:
    """Import a polyphonic-benchmark file (see `corpus.load_benchmark`) with its own splits and order.

    Sequences are named "<split>/<index>" (index in the published order, 4 digits); `velocities` are zeros
    (the benchmark has none); hours assume 120 quarter notes per minute. The manifest has one line per
    sequence.
    """
    path, data_dir = Path(path), Path(data_dir)
    name = name or corpus.benchmark_name(path)
    _check_name(name)
    splits = corpus.load_benchmark(path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    steps_per_quarter = corpus.benchmark_steps_per_quarter(name)
    options = {"steps_per_quarter": steps_per_quarter}
    fingerprint = _fingerprint(options, [(path.name, sha256)])
    existing = _complete_card(data_dir / name)
    if existing is not None and existing.get("fingerprint") == fingerprint and not force:
        return BuildResult(data_dir / name, existing, rebuilt=False)

    manifest, stats = [], []
    for split, sequences in splits.items():
        for i, states in enumerate(sequences):
            seconds = states.shape[0] * 60.0 / (120.0 * steps_per_quarter)
            seq_stats = sequence_stats(states, num_states=2)
            key = keys.estimate_key(states, corpus.BENCHMARK_LOWEST_PITCH)
            manifest.append(
                {
                    "path": f"{split}/{i:04d}",
                    "status": "converted",
                    "split": split,
                    "frames": seq_stats["frames"],
                    "notes": seq_stats["notes"],
                    "seconds": seconds,
                    "key": keys.key_name(key),
                }
            )
            stats.append({**seq_stats, "split": split, "seconds": seconds, "key": key})

    def examples(split: str) -> Iterator[dict]:
        for i, states in enumerate(splits[split]):
            yield {
                "states": states,
                "velocities": np.zeros_like(states),
                "name": f"{split}/{i:04d}",
                "sha256": sha256,
                "key": keys.estimate_key(states, corpus.BENCHMARK_LOWEST_PITCH),
                "composer": "",
            }

    with _staging(data_dir, name) as stage:
        description = f"Polyphonic benchmark {path.name} (Boulanger-Lewandowski et al. 2012), sustain-only."
        generators = {s: (lambda s=s: examples(s)) for s in SPLITS if splits[s]}
        _write_records(stage, name, corpus.BENCHMARK_PITCHES, description, generators)
        header = {
            "name": name,
            "source": str(path),
            "options": options,
            "fingerprint": fingerprint,
            "num_pitches": corpus.BENCHMARK_PITCHES,
            "num_states": 2,
            "lowest_pitch": corpus.BENCHMARK_LOWEST_PITCH,
            "steps_per_quarter": steps_per_quarter,
            "split_rule": {"by": "benchmark", "file": path.name},
        }
        card = make_card(header, manifest, stats, corpus.BENCHMARK_PITCHES)
        _write_json(stage / name / MANIFEST_FILE, manifest, lines=True)
        _write_json(stage / name / CARD_FILE, card)
    return BuildResult(data_dir / name, card, rebuilt=True)
