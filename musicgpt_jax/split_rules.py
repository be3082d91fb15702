"""Which split each input file goes to: by the SHA-256 of its bytes, or by a MAESTRO metadata file.

The hash rule (`split_of`) is the default: a file's split depends only on its bytes, so adding files never moves
one. A folder that holds MAESTRO's own metadata at its top (`maestro-v3.0.0.csv` / `.json`, or an older
version's) is split the way MAESTRO's users know it: every file the metadata lists goes to the split it names
(`midi_filename` is the path relative to that folder). Files it does not list fall back to the hash rule; rows
whose file is not there are reported. A metadata file that cannot be read raises MetadataError naming the file
and the reason: a user who downloaded MAESTRO expects its published split, so a build never quietly swaps it
for another (`prepare.py --hash_split` ignores the metadata on purpose). `read_composers` reads the composers alone
from any CSV with the columns canonical_composer and midi_filename (`prepare.py --metadata`).

Formats read: the CSV (columns canonical_composer, canonical_title, split, year, midi_filename, audio_filename,
duration; split and midi_filename place the files, canonical_composer names each file's composer), v3's
column-oriented JSON ({"split": {"0": "train", ...}, "midi_filename": {"0": "2018/....midi", ...}}) and v1/v2's
list of rows ([{"split": ..., "midi_filename": ...}]).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musicgpt_jax.dataset_card import SPLITS

HASH_RULE = "sha256"  # the manifest's `split_by` for a file split by its hash; "metadata" for one listed
MISSING_LISTED = 20  # missing files named in the card (all are counted)
_METADATA_NAME = re.compile(r"maestro-v(\d+(?:\.\d+)*)\.(csv|json)", re.IGNORECASE)
_COLUMNS = ("split", "midi_filename")
_COMPOSER = "canonical_composer"


class MetadataError(ValueError):
    """A MAESTRO metadata file that cannot be used; the message is one line naming the file and the reason."""


def split_of(sha256: str, val_percent: float, test_percent: float) -> str:
    """The split of a file with this SHA-256 (hex): a point in [0, 100) from the hash, cut into ranges."""
    point = int(sha256[:16], 16) / 2**64 * 100
    return "test" if point < test_percent else "validation" if point < test_percent + val_percent else "train"


@dataclass(frozen=True)
class Metadata:
    """A MAESTRO metadata file read: its name, the SHA-256 of its bytes, split and composer by relative MIDI path."""

    file: str
    sha256: str
    splits: dict[str, str]
    composers: dict[str, str] = dataclasses.field(default_factory=dict)


def find_metadata(midi_dir: Path) -> Path | None:
    """The MAESTRO metadata file at the top of `midi_dir`, or None.

    With several, the newest version wins, and the CSV over the JSON of the same version (they hold the same
    table).
    """
    found = []
    for path in midi_dir.iterdir():
        match = _METADATA_NAME.fullmatch(path.name)
        if match and path.is_file():
            version = tuple(int(part) for part in match.group(1).split("."))
            found.append((version, match.group(2).lower() == "csv", path.name, path))
    return max(found)[-1] if found else None


def _rows_from_json(data: Any) -> list[dict[str, Any]]:
    """The rows of either JSON layout (column-oriented dict, or list of row dicts)."""
    if isinstance(data, dict):
        missing = [c for c in _COLUMNS if not isinstance(data.get(c), dict)]
        if missing:
            raise ValueError(f"no {' or '.join(missing)} column")
        keys = data["midi_filename"].keys()
        if keys != data["split"].keys():
            raise ValueError("the split and midi_filename columns have different rows")
        columns = _COLUMNS + ((_COMPOSER,) if isinstance(data.get(_COMPOSER), dict) else ())
        return [{c: data[c].get(k) for c in columns} for k in keys]
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return data
    raise ValueError("neither a table of columns nor a list of rows")


def read_metadata(path: Path) -> Metadata:
    """Split by MIDI path from a MAESTRO CSV or JSON file; MetadataError (one line) when it cannot be used."""
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(text.splitlines())
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise ValueError(f"no {' or '.join(missing)} column")
            rows: list[dict[str, Any]] = list(reader)
        else:
            rows = _rows_from_json(json.loads(text))
        if not rows:
            raise ValueError("no rows")
        splits: dict[str, str] = {}
        composers: dict[str, str] = {}
        for number, row in enumerate(rows, 1):
            split, name = row.get("split"), row.get("midi_filename")
            if split not in SPLITS:
                raise ValueError(f"row {number}: split {split!r} is not one of {', '.join(SPLITS)}")
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"row {number}: no midi_filename")
            name = name.strip().replace("\\", "/")
            if splits.setdefault(name, split) != split:
                raise ValueError(f"row {number}: {name} is listed in both {splits[name]} and {split}")
            composer = row.get(_COMPOSER)
            if isinstance(composer, str) and composer.strip():
                composers[name] = composer.strip()
    except OSError as error:
        raise MetadataError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (UnicodeDecodeError, csv.Error, ValueError) as error:  # json.JSONDecodeError is a ValueError
        reason = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else str(error).splitlines()[0]
        raise MetadataError(f"{path}: not a usable MAESTRO metadata file ({reason})") from None
    return Metadata(path.name, hashlib.sha256(raw).hexdigest(), splits, composers)


def read_composers(path: Path) -> Metadata:
    """Composer by relative MIDI path from a CSV with the columns canonical_composer and midi_filename (MAESTRO's,
    or one written for another folder; `splits` left empty); MetadataError (one line) when it cannot be used."""
    try:
        raw = path.read_bytes()
        reader = csv.DictReader(raw.decode("utf-8-sig").splitlines())
        missing = [c for c in (_COMPOSER, "midi_filename") if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"no {' or '.join(missing)} column")
        composers = {}
        for number, row in enumerate(reader, 1):
            name, composer = (row.get("midi_filename") or "").strip(), (row.get(_COMPOSER) or "").strip()
            if not name:
                raise ValueError(f"row {number}: no midi_filename")
            if composer:
                composers[name.replace("\\", "/")] = composer
    except OSError as error:
        raise MetadataError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (UnicodeDecodeError, csv.Error, ValueError) as error:
        reason = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else str(error).splitlines()[0]
        raise MetadataError(f"{path}: not a usable composer table ({reason})") from None
    return Metadata(path.name, hashlib.sha256(raw).hexdigest(), {}, composers)


def describe(metadata: Metadata | None, paths: list[str], val_percent: float, test_percent: float) -> dict[str, Any]:
    """The card's `split_rule`: which rule, and with metadata how many inputs it lists, does not, and misses."""
    hashed = {"val_percent": val_percent, "test_percent": test_percent}
    if metadata is None:
        return {"by": HASH_RULE, **hashed}
    inputs = set(paths)
    missing = sorted(name for name in metadata.splits if name not in inputs)
    return {
        "by": "metadata",
        "file": metadata.file,
        "rows": len(metadata.splits),
        "listed_inputs": sum(path in metadata.splits for path in paths),
        "unlisted_inputs": sum(path not in metadata.splits for path in paths),  # split by hash, as `hashed` says
        "unlisted_rule": {"by": HASH_RULE, **hashed},
        "missing": len(missing),
        "missing_files": missing[:MISSING_LISTED],
    }
