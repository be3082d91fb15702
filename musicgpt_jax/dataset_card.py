"""The dataset card: what a prepared dataset holds, in numbers, as `card.json` and as a printed summary.

Per-sequence statistics are computed where the frames are (in the conversion workers) and summed here, so the
card never needs the frames again. Polyphony counts sounding pitches (any state but off) per frame, silent
frames included; the pitch histogram counts, per pitch, the frames in which it sounds. The card also counts the
sequences per key (`keys`) and per composer, each with those whose key or composer is not known.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from musicgpt_jax.frames import OFF, note_starts
from musicgpt_jax.keys import UNKNOWN, key_name

SPLITS = ("train", "validation", "test")
SHOWN_LABELS = 8  # keys and composers named in the printed summary (all are in card.json)
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def sequence_stats(states: np.ndarray, num_states: int) -> dict[str, Any]:
    """Frames, notes, sounding cells, silent frames and per-pitch sounding frames of one (T, P) sequence.

    Notes are counted where they start (``frames.note_starts``): with 2 states (sustain-only, the benchmark) a
    note is a run of sounding frames, so a repeated note there counts once.
    """
    sounding = states != OFF
    return {
        "frames": int(states.shape[0]),
        "notes": int(np.count_nonzero(note_starts(states, num_states))),
        "sounding": int(np.count_nonzero(sounding)),
        "silent_frames": int(np.count_nonzero(~sounding.any(axis=1))),
        "pitch_frames": np.count_nonzero(sounding, axis=0).tolist(),
    }


def make_card(
    header: Mapping[str, Any],
    manifest: Iterable[Mapping[str, Any]],
    stats: Iterable[Mapping[str, Any]],
    num_pitches: int,
) -> dict[str, Any]:
    """Sum up the manifest (one entry per input) and the stats of the kept sequences (with split, seconds)."""
    manifest = list(manifest)
    statuses = Counter(entry["status"] for entry in manifest)
    reasons = Counter(entry["reason"] for entry in manifest if entry["status"] == "skipped")
    splits = {s: {"sequences": 0, "frames": 0, "hours": 0.0} for s in SPLITS}
    totals = Counter()
    key_counts, composer_counts = Counter(), Counter()
    pitch_frames = np.zeros(num_pitches, np.int64)
    for seq in stats:
        split = splits[seq["split"]]
        split["sequences"] += 1
        split["frames"] += seq["frames"]
        split["hours"] += seq["seconds"] / 3600
        totals.update({k: seq[k] for k in ("frames", "notes", "sounding", "silent_frames", "seconds")})
        pitch_frames += np.asarray(seq["pitch_frames"], np.int64)
        key_counts[key_name(seq.get("key", UNKNOWN))] += 1
        composer_counts[seq.get("composer") or "unknown"] += 1
    for split in splits.values():
        split["hours"] = round(split["hours"], 4)
    frames = totals["frames"]
    return {
        **header,
        "files": {"inputs": len(manifest), **{k: statuses[k] for k in ("converted", "skipped", "duplicate")}},
        "skipped_by_reason": dict(sorted(reasons.items())),
        "splits": splits,
        "sequences": sum(s["sequences"] for s in splits.values()),
        "frames": frames,
        "notes": totals["notes"],
        "hours": round(totals["seconds"] / 3600, 4),
        "mean_polyphony": round(totals["sounding"] / frames, 4) if frames else 0.0,
        "silent_frame_fraction": round(totals["silent_frames"] / frames, 6) if frames else 0.0,
        "pitch_histogram": {"unit": "frames sounding", "counts": pitch_frames.tolist()},
        "keys": _label_counts(key_counts),
        "composers": _label_counts(composer_counts),
    }


def _label_counts(counts: Counter) -> dict[str, Any]:
    """{"counts": {label: sequences}, most first, then by name; "unknown": sequences without the label}."""
    unknown = counts.pop("unknown", 0)
    return {"counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))), "unknown": unknown}


def format_labels(what: str, labels: Mapping[str, Any]) -> str:
    """One line of the summary: the commonest labels with their sequence counts, how many more, how many unknown."""
    counts = list(labels["counts"].items())
    shown = ", ".join(f"{name} {n}" for name, n in counts[:SHOWN_LABELS])
    more = f", {len(counts) - SHOWN_LABELS} more" if len(counts) > SHOWN_LABELS else ""
    unknown = f"{'; ' if counts else ''}unknown {labels['unknown']}" if labels["unknown"] else ""
    return f"  {what} ({len(counts)}): {shown}{more}{unknown}"


def _pitch_name(pitch: int) -> str:
    return f"{_NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def format_split_rule(rule: Mapping[str, Any]) -> str:
    """One line on how files were split (the card's `split_rule`, see split_rules.describe)."""
    if rule["by"] == "benchmark":
        return f"  split: the benchmark's own, from {rule['file']}"
    hashed = rule["unlisted_rule"] if rule["by"] == "metadata" else rule
    hashed = f"{hashed['val_percent']:g}% validation, {hashed['test_percent']:g}% test"
    if rule["by"] != "metadata":
        return f"  split: by the SHA-256 of each file ({hashed})"
    files = lambda n: f"{n} file{'' if n == 1 else 's'}"
    line = f"  split: from {rule['file']} (MAESTRO's own) for the {files(rule['listed_inputs'])} it lists"
    if rule["unlisted_inputs"]:
        line += f"; {files(rule['unlisted_inputs'])} it does not list split by SHA-256 ({hashed})"
    if rule["missing"]:
        shown = ", ".join(rule["missing_files"][:3]) + (", ..." if rule["missing"] > 3 else "")
        line += f"; {files(rule['missing'])} it lists missing ({shown})"
    return line


def format_card(card: Mapping[str, Any]) -> str:
    """A few lines for a person: files (and why skipped), splits and the rule, hours, frames, polyphony, pitches."""
    files = card["files"]
    skipped = ", ".join(f"{n} {reason}" for reason, n in card["skipped_by_reason"].items())
    lines = [
        f"{card['name']}: {files['inputs']} inputs -> {files['converted']} converted, "
        f"{files['skipped']} skipped{f' ({skipped})' if skipped else ''}, {files['duplicate']} duplicates",
        "  splits: "
        + ", ".join(
            f"{name} {s['sequences']} sequences / {s['frames']:,} frames" for name, s in card["splits"].items()
        ),
        *([format_split_rule(card["split_rule"])] if "split_rule" in card else []),
        f"  {card['hours']:.2f} hours, {card['frames']:,} frames, {card['notes']:,} notes; "
        f"mean polyphony {card['mean_polyphony']:.2f}; "
        f"silent frames {100 * card['silent_frame_fraction']:.1f}%",
    ]
    counts = np.asarray(card["pitch_histogram"]["counts"])
    if counts.any():
        lowest = card["lowest_pitch"]
        used = np.flatnonzero(counts)
        pitch = lambda column: _pitch_name(lowest + int(column))
        octaves = np.bincount((lowest + np.arange(counts.size)) // 12, weights=counts)
        share = ", ".join(f"{_pitch_name(12 * o)} {100 * w / counts.sum():.0f}%" for o, w in enumerate(octaves) if w)
        lines.append(
            f"  pitches {pitch(used[0])} to {pitch(used[-1])}, most sounding {pitch(counts.argmax())}; "
            f"by octave: {share}"
        )
    lines += [format_labels(name, card[name]) for name in ("keys", "composers") if name in card]
    return "\n".join(lines)
