"""Musical statistics of a set of MIDI files, and how far one set is from a reference set.

Why: a model writing 32nd-note frames can learn to write long silences (it predicts "all off" frame after
frame, since so many frames look like that). These numbers show that, and other drifts, at a glance:

    python -m musicgpt_jax.stats SAMPLES_DIR [--reference MIDI_DIR] [--json FILE.json] [--png FILE.png]
                                 [--steps_per_quarter 8]

MIDI files (``midi_io.MIDI_SUFFIXES``: ``.mid``/``.midi``/``.kar``, any case, found recursively) are read
through the project's codec (``midi_io.midi_to_frames``), so the statistics see what the model is trained on
(pedal applied, drums dropped, instruments merged). Unreadable files are skipped with one line on stderr and
listed under ``skipped``.

Definitions (per piece, then pooled over the set unless said otherwise):

- **Extent** of a piece: steps ``[0, E)``, ``E`` the offset of its last note (last sounding step + 1).
  Leading silence counts (a model that starts late is writing silence); trailing silence does not, since a
  MIDI file cannot show it (it ends at its last event). A piece with no notes has ``E = num_frames``: it is
  all silence. ``silence_summary`` also gives the trailing part of in-memory frames
  (``trailing_silence_bars``).
- A frame is **silent** when no pitch sounds (is not OFF). ``silent_fraction`` = silent frames / extent
  frames, each summed over the set (pooled: long pieces weigh more).
- **Bars** follow the piece's time-signature map (``frames.Meter``: a bar of ``num/den`` is ``num * 4 / den``
  quarters, 4/4 before the first time signature). A run
  of silent frames is measured from its first silent step to the next sounding step.
  ``longest_silence_bars`` is the maximum over pieces (each piece's own value is in ``pieces``);
  ``pieces_with_long_silence_fraction`` is the fraction of pieces whose longest silence is ``>= 2`` bars.
- ``notes_per_bar``: onsets in the set / bars of extent in the set.
- **Polyphony** of a frame: its number of sounding pitches (not OFF). ``polyphony_mean_sounding``
  averages over non-silent frames (how thick the texture is when something plays);
  ``polyphony_mean_all`` over all extent frames (silences pull it down); ``polyphony_max`` is the maximum;
  ``polyphony_histogram`` is the fraction of extent frames with 0, 1, ..., 9 and ``>= 10`` sounding pitches.
- **Pitch**: ``pitch_min``/``pitch_max`` over note onsets (MIDI numbers). ``pitch_class_histogram``:
  onsets per pitch class C, C#, ..., B, normalised to sum 1 (each onset counts once, whatever its length).
- **Notes** are read as ``frames.notes_of`` reads them (``frames.note_starts``): a note starts at an ONSET (or
  at a HOLD after silence, which only a sampler writes) and runs while the next frames are HOLD; in sustain-only frames
  (``num_states == 2``, the benchmark sets) each run of sounding frames is one note. "Onset" below means a
  note start. **Note length** in steps: ``note_length_histogram`` is normalised over the log2 bins
  ``1, 2-3, 4-7, 8-15, 16-31, 32-63, >=64`` steps (``note_length_bins``).
- **Velocity** (loudness) of each note start with a known velocity (MIDI 1-127; 0 means unknown and is left
  out): ``velocity_histogram`` over the bins ``1-16, 17-32, ..., 113-127`` (``velocity_bins``),
  ``velocity_mean`` and ``velocity_std`` (the spread: how much the dynamics vary), pooled over the set.
- ``repeated_note_fraction``: the onset times of a piece are the steps where at least one note starts. An
  onset of pitch p at onset time t_k is *repeated* when pitch p also has an onset at the previous onset time
  t_{k-1} of the piece (the same chord struck twice in a row is all repeated; a note struck again after a
  rest counts too). Fraction = repeated onsets / all onsets, pooled.

Comparison (``compare``): one distance per statistic, 0 when equal:

- histograms (pitch class, note length, polyphony): ``1 - overlap area`` = ``1 - sum(min(p, q))``, in
  [0, 1]; unlike KL it needs no smoothing, and it reads as "the fraction of the mass that must move".
- scalars: ``|a - b|`` in the statistic's own unit (fraction, bars, notes per bar, notes, MIDI pitch).

The yardstick is the reference against itself: its readable files, sorted by path, are split into even and
odd positions, and the same distances are computed between the halves (``split_half``). A distance well
above the split-half one is a real difference, not the spread of the music; ``ratio`` = distance /
split_half (None when the split-half distance is 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from etils import epath

from musicgpt_jax import cli, cloud
from musicgpt_jax.frames import OFF, Frames, Meter, note_lengths, note_starts
from musicgpt_jax.midi_io import MIDI_SUFFIXES, find_midi_files, midi_to_frames

LONG_SILENCE_BARS = 2.0
MAX_POLYPHONY_BIN = 10  # the last polyphony bin holds ">= 10"
NOTE_LENGTH_BINS = ("1", "2-3", "4-7", "8-15", "16-31", "32-63", ">=64")
PITCH_CLASS_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

VELOCITY_BINS = ("1-16", "17-32", "33-48", "49-64", "65-80", "81-96", "97-112", "113-127")

HISTOGRAMS = ("pitch_class_histogram", "note_length_histogram", "polyphony_histogram", "velocity_histogram")
SCALARS = (
    "silent_fraction",
    "longest_silence_bars",
    "pieces_with_long_silence_fraction",
    "notes_per_bar",
    "polyphony_mean_sounding",
    "polyphony_mean_all",
    "polyphony_max",
    "pitch_min",
    "pitch_max",
    "repeated_note_fraction",
    "velocity_mean",
    "velocity_std",
)


class NoMidiFilesError(ValueError):
    """A samples or reference directory that is missing, or holds no readable MIDI file. One line."""


# ----------------------------------------------------------------------------------------------------
# One piece: additive counts, so a set (or half a set) is the sum of its pieces.


def _extent(polyphony: np.ndarray) -> int:
    sounding = np.flatnonzero(polyphony)
    return int(sounding[-1]) + 1 if sounding.size else int(polyphony.shape[0])


def _silent_runs_bars(meter: Meter, polyphony: np.ndarray, extent: int) -> np.ndarray:
    silent = np.concatenate([[False], polyphony[:extent] == 0, [False]])
    edges = np.diff(silent.astype(np.int8))
    return meter.bars_between(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))


def _piece_counts(frames: Frames) -> dict:
    sounding = np.asarray(frames.states) != OFF
    polyphony = np.count_nonzero(sounding, axis=1)
    extent = _extent(polyphony)
    meter = frames.meter
    runs = _silent_runs_bars(meter, polyphony, extent)
    starts = note_starts(frames.states, frames.num_states)
    onsets_per_column = np.count_nonzero(starts, axis=0)
    columns = np.flatnonzero(onsets_per_column)
    pitches = columns + frames.lowest_pitch
    onset_rows = starts[np.flatnonzero(starts.any(axis=1))]
    lengths = note_lengths(frames)
    _, exponent = np.frexp(lengths.astype(np.float64))  # length = m * 2**e with m in [0.5, 1)
    in_extent = polyphony[:extent]
    velocities = np.asarray(frames.velocities)[starts].astype(np.float64)
    velocities = velocities[velocities > 0]
    return {
        "frames": extent,
        "bars": float(meter.bars_between([0], [extent])[0]),
        "silent_frames": int(np.count_nonzero(in_extent == 0)),
        "longest_silence_bars": float(runs.max()) if runs.size else 0.0,
        "trailing_silence_bars": float(meter.bars_between([extent], [frames.num_frames])[0]),
        "onsets": int(onsets_per_column.sum()),
        "sounding_frames": int(np.count_nonzero(in_extent)),
        "polyphony_sum": int(in_extent.sum()),
        "polyphony_max": int(polyphony.max(initial=0)),
        "polyphony_counts": np.bincount(np.minimum(in_extent, MAX_POLYPHONY_BIN), minlength=MAX_POLYPHONY_BIN + 1),
        "pitch_min": int(pitches.min()) if pitches.size else None,
        "pitch_max": int(pitches.max()) if pitches.size else None,
        "pitch_class_counts": np.bincount(pitches % 12, weights=onsets_per_column[columns], minlength=12),
        "note_length_counts": np.bincount(
            np.minimum(exponent - 1, len(NOTE_LENGTH_BINS) - 1), minlength=len(NOTE_LENGTH_BINS)
        ),
        "repeated_onsets": int(np.count_nonzero(onset_rows[1:] & onset_rows[:-1])),
        "velocity_counts": np.bincount(
            np.minimum((velocities.astype(np.int64) - 1) // 16, len(VELOCITY_BINS) - 1), minlength=len(VELOCITY_BINS)
        ),
        "velocity_sum": float(velocities.sum()),
        "velocity_square_sum": float(np.square(velocities).sum()),
    }


def silence_summary(frames: Frames) -> dict:
    """Silence of one piece, for printing beside each sample (definitions in the module docstring).

    ``silent_fraction`` and ``longest_silence_bars`` are measured over the extent (step 0 to the last note's
    offset); ``trailing_silence_bars`` is what follows up to ``num_frames`` (a written MIDI file loses it).
    """
    counts = _piece_counts(frames)
    return {
        "silent_fraction": _ratio(counts["silent_frames"], counts["frames"]),
        "longest_silence_bars": counts["longest_silence_bars"],
        "trailing_silence_bars": counts["trailing_silence_bars"],
    }


# ----------------------------------------------------------------------------------------------------
# A set: pooled over its pieces.


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _velocity_moments(count: int, total: float, square_total: float) -> dict:
    """Mean and standard deviation of the known velocities from their count, sum and sum of squares."""
    if not count:
        return {"velocity_mean": None, "velocity_std": None}
    mean = total / count
    return {"velocity_mean": mean, "velocity_std": float(np.sqrt(max(square_total / count - mean * mean, 0.0)))}


def _normalised(counts: np.ndarray) -> list[float] | None:
    total = counts.sum()
    return [float(c) for c in counts / total] if total else None


def _aggregate(names: Sequence[str], pieces: Sequence[dict]) -> dict:
    def total(key):
        return sum((p[key] for p in pieces), start=0)

    def extreme(key, pick):
        values = [p[key] for p in pieces if p[key] is not None]
        return pick(values) if values else None

    longest = [p["longest_silence_bars"] for p in pieces]
    return {
        "num_pieces": len(pieces),
        "num_frames": int(total("frames")),
        "num_notes": int(total("onsets")),
        "pieces_without_notes": sum(1 for p in pieces if p["onsets"] == 0),
        "silent_fraction": _ratio(total("silent_frames"), total("frames")),
        "longest_silence_bars": max(longest) if longest else None,
        "pieces_with_long_silence_fraction": _ratio(sum(b >= LONG_SILENCE_BARS for b in longest), len(pieces)),
        "notes_per_bar": _ratio(total("onsets"), total("bars")),
        "polyphony_mean_sounding": _ratio(total("polyphony_sum"), total("sounding_frames")),
        "polyphony_mean_all": _ratio(total("polyphony_sum"), total("frames")),
        "polyphony_max": extreme("polyphony_max", max),
        "polyphony_histogram": _normalised(total("polyphony_counts")) if pieces else None,
        "pitch_min": extreme("pitch_min", min),
        "pitch_max": extreme("pitch_max", max),
        "pitch_class_histogram": _normalised(total("pitch_class_counts")) if pieces else None,
        "note_length_bins": list(NOTE_LENGTH_BINS),
        "note_length_histogram": _normalised(total("note_length_counts")) if pieces else None,
        "repeated_note_fraction": _ratio(total("repeated_onsets"), total("onsets")),
        "velocity_bins": list(VELOCITY_BINS),
        "velocity_histogram": _normalised(total("velocity_counts")) if pieces else None,
        **_velocity_moments(
            total("velocity_counts").sum() if pieces else 0, total("velocity_sum"), total("velocity_square_sum")
        ),
        "pieces": [
            {
                "name": name,
                "frames": int(p["frames"]),
                "notes": int(p["onsets"]),
                "silent_fraction": _ratio(p["silent_frames"], p["frames"]),
                "longest_silence_bars": p["longest_silence_bars"],
            }
            for name, p in zip(names, pieces, strict=True)
        ],
    }


def compute_stats(frames_list: Sequence[Frames], names: Sequence[str] | None = None) -> dict:
    """Statistics of a set of pieces (JSON-ready; a statistic with nothing to average over is None)."""
    if names is None:
        names = [getattr(f, "name", None) or str(i) for i, f in enumerate(frames_list)]
    return _aggregate(list(names), [_piece_counts(f) for f in frames_list])


def _folder(path: str | os.PathLike) -> Path:
    """A local folder as a Path; a gs:// one as an `epath.Path` (the same methods, read through gcsfs)."""
    return epath.Path(path) if cloud.is_remote(path) else Path(path)


def midi_files(path: str | os.PathLike) -> list[Path]:
    """MIDI files under ``path``, as `midi_io.find_midi_files` finds them (or, in a gs:// folder, every object with
    a MIDI suffix); NoMidiFilesError when there are none."""
    root = _folder(path)
    if not root.is_dir():
        raise NoMidiFilesError(f"{root}: no such directory")
    if cloud.is_remote(path):
        files = sorted(root / f for f in cloud.list_files(path) if Path(f).suffix.lower() in MIDI_SUFFIXES)
    else:
        files = find_midi_files(root)
    if not files:
        raise NoMidiFilesError(f"{root}: no .mid, .midi or .kar files")
    return files


def _read_dir(path: str | os.PathLike, steps_per_quarter: int) -> tuple[list[str], list[dict], list[dict]]:
    """Per-piece counts of every readable file (one at a time: a long piece's frames are dropped at once)."""
    root = _folder(path)
    names, pieces, skipped = [], [], []
    for file in midi_files(root):
        name = file.relative_to(root).as_posix()
        try:
            with warnings.catch_warnings():  # pretty_midi's warnings about odd files are not skips
                warnings.simplefilter("ignore")
                frames = midi_to_frames(file.read_bytes(), steps_per_quarter=steps_per_quarter, name=str(file))
        except Exception as error:  # any failure to read one file is a skip, never a crash of the whole set
            # MidiDecodeError carries its reason alone; anything else is named by its type
            reason = getattr(error, "reason", None) or " ".join(f"{type(error).__name__}: {error}".split())
            print(f"warning: skipped {file}: {reason}", file=sys.stderr)
            skipped.append({"file": name, "reason": reason})
            continue
        names.append(name)
        pieces.append(_piece_counts(frames))
    if not pieces:
        raise NoMidiFilesError(f"{root}: none of its {len(skipped)} MIDI files could be read")
    return names, pieces, skipped


def stats_of_dir(path: str | os.PathLike, *, steps_per_quarter: int = 8) -> dict:
    """``compute_stats`` of every MIDI file under ``path``, plus ``dir`` and ``skipped`` [{file, reason}]."""
    names, pieces, skipped = _read_dir(path, steps_per_quarter)
    return {"dir": str(path), **_aggregate(names, pieces), "skipped": skipped}


# ----------------------------------------------------------------------------------------------------
# Distances.


def compare(stats_a: dict, stats_b: dict) -> dict:
    """One distance per statistic (0 = equal; None when either side lacks it). See the module docstring."""
    distances = {}
    for key in HISTOGRAMS:
        a, b = stats_a.get(key), stats_b.get(key)
        # 1 - sum(min(p, q)) is half the L1 distance for normalised p, q; this form gives exactly 0 when equal
        value = None if a is None or b is None else 0.5 * float(np.abs(np.subtract(a, b)).sum())
        distances[key] = {"distance": value, "method": "1 - overlap area"}
    for key in SCALARS:
        a, b = stats_a.get(key), stats_b.get(key)
        value = None if a is None or b is None else abs(float(a) - float(b))
        distances[key] = {"distance": value, "method": "|a - b|"}
    return distances


def split_half(names: Sequence[str], pieces: Sequence[dict]) -> tuple[dict, dict] | None:
    """Statistics of the even- and odd-position pieces in path order; None under two pieces."""
    if len(pieces) < 2:
        return None
    order = sorted(range(len(names)), key=lambda i: names[i])
    halves = order[0::2], order[1::2]
    return tuple(_aggregate([names[i] for i in h], [pieces[i] for i in h]) for h in halves)


def measure(
    samples_dir: str | os.PathLike,
    reference_dir: str | os.PathLike | None = None,
    *,
    steps_per_quarter: int = 8,
) -> dict:
    """The whole report: ``samples`` stats, and with a reference ``reference`` stats and ``distances``."""
    samples = stats_of_dir(samples_dir, steps_per_quarter=steps_per_quarter)
    report = {"steps_per_quarter": steps_per_quarter, "samples": samples}
    if reference_dir is None:
        return report
    names, pieces, skipped = _read_dir(reference_dir, steps_per_quarter)
    report["reference"] = {"dir": str(reference_dir), **_aggregate(names, pieces), "skipped": skipped}
    distances = compare(report["samples"], report["reference"])
    halves = split_half(names, pieces)
    yardstick = compare(*halves) if halves else {}
    for key, entry in distances.items():
        split = yardstick.get(key, {}).get("distance")
        entry["split_half"] = split
        entry["ratio"] = entry["distance"] / split if entry["distance"] is not None and split else None
    report["distances"] = distances
    report["split_half_pieces"] = [halves[0]["num_pieces"], halves[1]["num_pieces"]] if halves else None
    return report


# ----------------------------------------------------------------------------------------------------
# Picture.


def plot_report(report: dict, path: str | os.PathLike) -> None:
    """Side-by-side histograms (samples vs reference) in one PNG. No pyplot: no global backend to set."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = [("samples", report["samples"])]
    if "reference" in report:
        sets.append(("reference", report["reference"]))
    longest = max(max((p["longest_silence_bars"] for p in s["pieces"]), default=0.0) for _, s in sets)
    silence_edges = np.arange(0, int(np.ceil(longest)) + 2)
    panels = [
        ("pitch class (onsets)", "pitch_class_histogram", list(PITCH_CLASS_NAMES)),
        ("note length (steps)", "note_length_histogram", list(NOTE_LENGTH_BINS)),
        (
            "polyphony (frames)",
            "polyphony_histogram",
            [str(i) for i in range(MAX_POLYPHONY_BIN)] + [f">={MAX_POLYPHONY_BIN}"],
        ),
        ("longest silence per piece (bars)", None, [f"{e}-{e + 1}" for e in silence_edges[:-1]]),
        ("velocity (note starts)", "velocity_histogram", list(VELOCITY_BINS)),
    ]
    figure = Figure(figsize=(18, 8), layout="constrained")
    FigureCanvasAgg(figure)
    width = 0.8 / len(sets)
    grid = figure.subplots(2, 3).ravel()
    grid[-1].set_axis_off()
    for axes, (title, key, labels) in zip(grid[: len(panels)], panels, strict=True):
        x = np.arange(len(labels))
        for i, (label, stats) in enumerate(sets):
            if key is None:
                longest_per_piece = [p["longest_silence_bars"] for p in stats["pieces"]]
                counts, _ = np.histogram(longest_per_piece, bins=silence_edges)
                values = counts / max(counts.sum(), 1)
            else:
                values = stats[key] if stats[key] is not None else np.zeros(len(labels))
            axes.bar(x + (i - (len(sets) - 1) / 2) * width, values, width=width, label=label)
        axes.set_xticks(x, labels, fontsize=8)
        axes.set_title(title)
        axes.set_ylabel("fraction of pieces" if key is None else "fraction")
        axes.legend()
    silent = [f"{label} {s['silent_fraction']:.3f}" for label, s in sets if s["silent_fraction"] is not None]
    figure.suptitle("silent fraction: " + ", ".join(silent))
    figure.savefig(path, dpi=100)


# ----------------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.Parser(
        tool="stats",
        prog="python -m musicgpt_jax.stats",
        description="Musical statistics of a directory of MIDI files, optionally against a reference.",
        epilog="examples:\n  python -m musicgpt_jax.stats samples --reference data/default_corpus"
        "   # JSON on stdout, samples/stats.{json,png}\n"
        "  python -m musicgpt_jax.stats samples --json /tmp/stats.json --png /tmp/stats.png\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("samples_dir", help="directory of MIDI files (searched recursively; may be gs://)")
    parser.add_argument("--reference", help="directory of reference MIDI files to compare against")
    parser.add_argument(
        "--json", metavar="PATH", help="JSON report (default SAMPLES_DIR/stats.json; ./stats.json for a gs:// one)"
    )
    parser.add_argument("--out", dest="old_out", metavar="PATH", help=argparse.SUPPRESS)  # the old --json
    parser.add_argument("--png", metavar="PATH", help="histogram picture (default beside the JSON's default)")
    parser.add_argument("--steps_per_quarter", type=int, default=8, help="grid (default 8: 32nd notes)")
    args = parser.parse_args(argv)
    if args.old_out:
        cli.deprecated("stats", "--out PATH", "--json PATH")
        args.json = args.json or args.old_out
    if args.steps_per_quarter < 1:
        parser.error("--steps_per_quarter: must be at least 1")
    try:
        cloud.require_access(args.samples_dir, args.reference)
        report = measure(args.samples_dir, args.reference, steps_per_quarter=args.steps_per_quarter)
    except (NoMidiFilesError, cloud.CloudError) as error:
        return cli.fail("stats", str(error))
    text = json.dumps(report, indent=2, allow_nan=False)
    print(text)
    beside = Path(".") if cloud.is_remote(args.samples_dir) else Path(args.samples_dir)  # outputs stay local
    out = Path(args.json or beside / "stats.json")
    png = Path(args.png or beside / "stats.png")
    try:
        out.write_text(text + "\n")
        plot_report(report, png)
    except OSError as error:
        print(f"stats: {error.filename or out}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
