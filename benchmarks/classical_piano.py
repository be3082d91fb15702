"""Classical piano, end to end: does a CPU-trained model write piano music with the texture of piano music, and
does it keep that texture as training goes on?

    python benchmarks/classical_piano.py [--midi_dir ../shared/data/midi/real] [--work /tmp/classical_piano]
        [--config piano] [--minutes 10,20,40] [--steps N] [--num_samples 8] [--bars 64] [--roll PNG]
        [--json PATH] [--config.SECTION.FIELD=VALUE ...]

Without ../shared/data/midi/real, give `--midi_dir` a folder of classical piano MIDI: MAESTRO's
(https://magenta.tensorflow.org/datasets/maestro; `curl -O https://storage.googleapis.com/magentadata/datasets/
maestro/v3.0.0/maestro-v3.0.0-midi.zip && unzip -q maestro-v3.0.0-midi.zip`, then --midi_dir maestro-v3.0.0), whose
every file is piano.

Takes the 25 classical piano files of the shared MIDI set (the ten MAESTRO performances, the piano-midi.de and
MuseScore piano pieces; not the two orchestral files), prepares them with 20% held out for test and 10% for
validation (by hash), and trains `--config` once for the largest of `--minutes`, in segments: the run stops when
the first budget is spent (`train.max_seconds`, set-up included), is measured, and resumes exactly (the same
bits as one uninterrupted run) until the next. The learning-rate schedule follows `--steps` (default: the
preset's), not the budget, so each segment's end is the model a run of that many minutes gives. At each budget it
samples `--num_samples` pieces of `--bars` bars (`sample.py`'s defaults) and prints one column of figures against
the held-out test files (`musicgpt_jax.stats`): notes per bar, notes sounding at once, silent share, pitch range,
repeated notes and velocity spread, each beside its goal, and each texture distance beside the held-out files'
own split-half distance; the validation NLL of the notes and velocities, and the steps reached.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from musicgpt_jax import records, stats  # noqa: E402
from musicgpt_jax.frames import Frames  # noqa: E402
from musicgpt_jax.midi_io import midi_to_frames  # noqa: E402

PIANO_PREFIXES = ("miditok_Maestro_", "miditok_63", "tonejs_")
ORCHESTRAL = ("tonejs_concerto_for_orchestra_1.mid", "tonejs_symphony_7_2.mid")
# Composers of the shared set's files, from the shared folder's README (the MAESTRO files there do not name theirs):
# given to prepare.py as MAESTRO-style metadata so the model can be asked for a composer.
COMPOSERS = (
    ("tonejs_bach_", "Johann Sebastian Bach"),
    ("tonejs_childrens_corner_", "Claude Debussy"),
    ("tonejs_claire_de_lune", "Claude Debussy"),
    ("tonejs_menuet", "Claude Debussy"),
    ("tonejs_passepied", "Claude Debussy"),
    ("tonejs_prelude", "Claude Debussy"),
    ("tonejs_TheEntertainer", "Scott Joplin"),
    ("tonejs_tchaikovsky_seasons", "Pyotr Ilyich Tchaikovsky"),
)
DATASET = "classical_piano"
PROG = "classical_piano.py"
SHARED = REPO.parent / "shared" / "data" / "midi" / "real"
WHERE = (
    "MAESTRO's MIDI is at https://magenta.tensorflow.org/datasets/maestro: curl -O "
    "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip, unzip it and pass "
    "--midi_dir maestro-v3.0.0"
)
EDGE_BARS = 16
RATIO_GOAL = 2.0  # each texture distance within 2x the held-out split-half distance
FACTOR_GOALS = (  # each figure of the samples within this factor of the held-out files'
    ("notes_per_bar", 1.5),
    ("polyphony_mean_sounding", 1.5),
    ("silent_fraction", 1.5),
    ("repeated_note_fraction", 2.0),
    ("velocity_std", 1.5),
)
FIGURE_LABELS = {
    "notes_per_bar": ("notes per bar", "{:.1f}"),
    "polyphony_mean_sounding": ("notes sounding at once (mean while sounding)", "{:.2f}"),
    "silent_fraction": ("silent share", "{:.1%}"),
    "repeated_note_fraction": ("repeated notes", "{:.1%}"),
    "velocity_std": ("velocity spread (std)", "{:.1f}"),
}
TEXTURE = (
    "notes_per_bar",
    "polyphony_histogram",
    "pitch_class_histogram",
    "note_length_histogram",
    "velocity_histogram",
)


def classical_piano_files(midi_dir: Path) -> list[Path]:
    """The shared set's 25 classical piano files; in any other folder (MAESTRO's, say) every MIDI file in it."""
    files = sorted(p for p in midi_dir.iterdir() if p.name.startswith(PIANO_PREFIXES) and p.name not in ORCHESTRAL)
    files = files or sorted(p for p in midi_dir.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        raise SystemExit(f"{PROG}: {midi_dir}: no MIDI files there; {WHERE}")
    return files


def run(command: list[str], log: Path, stdout: Path | None = None) -> float:
    """Run one of the project's commands, its output into `log` (stdout into `stdout` when given); seconds it
    took. Exit on failure, naming it."""
    started = time.perf_counter()
    with log.open("w") as out, (stdout or log).open("a") as standard:
        proc = subprocess.run(command, cwd=REPO, stdout=standard if stdout else out, stderr=out)
    if proc.returncode != 0:
        raise SystemExit(f"classical_piano: {' '.join(command[1:3])} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - started


def repeated_bar_share(folder: Path) -> float:
    """Share of the samples' bars (with notes) that repeat an earlier bar of the same piece exactly: a loop."""
    repeated = total = 0
    for path in sorted(folder.glob("*.mid")):
        frames: Frames = midi_to_frames(path)
        lines = frames.meter.bar_lines(frames.num_frames)
        seen: set[bytes] = set()
        for start, end in zip(lines[:-1], lines[1:], strict=True):
            bar = np.ascontiguousarray(frames.states[start:end])
            if not bar.any():
                continue
            total += 1
            key = bar.tobytes()
            repeated += key in seen
            seen.add(key)
    return repeated / total if total else 0.0


def ratio_text(entry: dict) -> str:
    if entry["distance"] is None:
        return "n/a"
    if entry["ratio"] is None:
        return f"{entry['distance']:.3f}"
    mark = "" if entry["ratio"] <= RATIO_GOAL else " ✗"
    return f"{entry['ratio']:.1f}x{mark}"


def within(value: float, reference: float, factor: float) -> bool:
    """`value` within `factor` times `reference`, either way."""
    return reference > 0 and reference / factor <= value <= reference * factor


def goal_checks(report: dict, corpus_range: tuple[int, int]) -> dict[str, bool]:
    """Each texture goal of one budget's samples against the held-out files: True where met."""
    ours, held = report["samples"], report["reference"]
    checks = {f"{key} within {factor:g}x": within(ours[key], held[key], factor) for key, factor in FACTOR_GOALS}
    low, high = corpus_range
    checks["pitches inside the corpus's range"] = ours["pitch_min"] >= low and ours["pitch_max"] <= high
    for key in TEXTURE:
        ratio = report["distances"][key]["ratio"]
        checks[f"{key} distance within {RATIO_GOAL:g}x split-half"] = ratio is not None and ratio <= RATIO_GOAL
    return checks


def table(measured: list[dict], corpus_range: tuple[int, int]) -> str:
    """The markdown table: one column per training budget, the held-out files and the goal."""
    held = measured[0]["report"]["reference"]
    lines = [
        "| " + " | ".join(["figure", *(f"{m['minutes']:g} min" for m in measured), "held-out", "goal"]) + " |",
        "|" + "---|" * (len(measured) + 3),
    ]

    def row(label: str, values: list[str], reference: str, goal: str) -> None:
        lines.append("| " + " | ".join([label, *values, reference, goal]) + " |")

    def mark(ok: bool) -> str:
        return "" if ok else " ✗"

    samples = [m["report"]["samples"] for m in measured]
    row("training steps", [str(m["steps"]) for m in measured], "", "")
    row(
        "validation NLL: notes (nats/frame)",
        [f"{m['nll']['nats_per_frame']:.3f}" for m in measured],
        "",
        "",
    )
    if measured[0]["nll"].get("velocity_nats_per_onset") is not None:
        row(
            "validation NLL: velocity (nats/onset)",
            [f"{m['nll']['velocity_nats_per_onset']:.3f}" for m in measured],
            "",
            "",
        )
    for key, factor in FACTOR_GOALS:
        label, fmt = FIGURE_LABELS[key]
        row(
            label,
            [fmt.format(s[key]) + mark(within(s[key], held[key], factor)) for s in samples],
            fmt.format(held[key]),
            f"within {factor:g}×",
        )
    low, high = corpus_range
    row(
        "pitch range",
        [
            f"{s['pitch_min']}–{s['pitch_max']}" + mark(s["pitch_min"] >= low and s["pitch_max"] <= high)
            for s in samples
        ],
        f"{held['pitch_min']}–{held['pitch_max']}",
        f"inside the corpus's {low}–{high}",
    )
    row(
        "velocity mean ± spread",
        [f"{s['velocity_mean']:.0f} ± {s['velocity_std']:.0f}" for s in samples],
        f"{held['velocity_mean']:.0f} ± {held['velocity_std']:.0f}",
        "spread above",
    )
    row(
        "longest silence (bars)",
        [f"{max(p['longest_silence_bars'] for p in s['pieces']):.2f}" for s in samples],
        f"{held['longest_silence_bars']:.2f}",
        "",
    )
    for key in TEXTURE:
        row(
            f"{key.replace('_', ' ')}: distance / split-half",
            [ratio_text(m["report"]["distances"][key]) for m in measured],
            f"split-half {measured[0]['report']['distances'][key]['split_half']:.3f}",
            f"≤ {RATIO_GOAL:g}×",
        )
    row(
        "repeated bars (exact)",
        [f"{m['repeated_bars']:.1%}" for m in measured],
        f"{measured[0]['held_repeated_bars']:.1%}",
        "no loop",
    )
    met = [sum(m["checks"].values()) for m in measured]
    row("goals met", [f"{n} of {len(m['checks'])}" for n, m in zip(met, measured, strict=True)], "", "all")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from musicgpt_jax import cli

    parser = cli.Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--midi_dir",
        default=str(SHARED) if SHARED.is_dir() else None,
        help="classical piano MIDI files (default: ../shared/data/midi/real when it exists)",
    )
    parser.add_argument("--work", default="/tmp/classical_piano", help="scratch folder (replaced)")
    parser.add_argument("--config", default="piano")
    parser.add_argument("--minutes", default="20", help="comma-separated training budgets, measured in one run")
    parser.add_argument("--steps", type=int, help="length of the learning-rate schedule (default: the preset's)")
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--bars", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--roll", metavar="PNG", help="draw the first 16 bars of the last budget's first sample")
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    parser.add_argument("--keep_data", action="store_true", help="reuse the data prepared in --work (train anew)")
    args, overrides = cli.parse_with_overrides(parser, sys.argv[1:] if argv is None else argv)
    args.overrides = overrides
    try:
        args.minutes = sorted(float(m) for m in args.minutes.split(","))
    except ValueError:
        parser.error(f"--minutes {args.minutes}: give comma-separated numbers of minutes, e.g. 10,20,40")
    if not args.minutes or args.minutes[0] <= 0:
        parser.error(f"--minutes {args.minutes}: each budget must be above 0")
    if args.midi_dir is None:
        parser.error(f"no --midi_dir given and no {SHARED.relative_to(REPO.parent)} here: {WHERE}")
    if not Path(args.midi_dir).is_dir():
        parser.error(f"--midi_dir {args.midi_dir}: no such folder; {WHERE}")
    return args


def prepare(args: argparse.Namespace, midi: Path, data: Path, work: Path) -> None:
    """Link the classical piano files into `midi` and build the records in `data` (once)."""
    if (data / DATASET / "card.json").exists():
        return
    midi.mkdir(parents=True, exist_ok=True)
    files = classical_piano_files(Path(args.midi_dir))
    for path in files:
        (midi / path.name).symlink_to(path.resolve())
    command = [sys.executable, "data/prepare.py", "--midi_dir", str(midi), "--dataset", DATASET, "--data_dir",
               str(data), "--val_percent", "10", "--test_percent", "20"]  # fmt: skip
    known = composer_rows(files)
    if known:
        metadata = work / "composers.csv"
        with metadata.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["canonical_composer", "midi_filename"])
            writer.writerows(known)
        command += ["--metadata", str(metadata)]
    run(command, work / "prepare.log")


def composer_rows(files: list[Path]) -> list[tuple[str, str]]:
    """(composer, file name) for the shared files whose composer is known (`COMPOSERS`)."""
    rows = []
    for path in files:
        composer = next((name for prefix, name in COMPOSERS if path.name.startswith(prefix)), None)
        if composer is not None:
            rows.append((composer, path.name))
    return rows


def last_step(run_dir: Path) -> int:
    return max(int(json.loads(line)["step"]) for line in (run_dir / "metrics.jsonl").read_text().splitlines())


def measure_budget(args: argparse.Namespace, work: Path, run_dir: Path, held_out: Path, minutes: float) -> dict:
    """Sample and score the run as it stands after `minutes` of training."""
    python, tag = sys.executable, f"{minutes:g}min"
    samples = work / f"samples_{tag}"
    shutil.rmtree(samples, ignore_errors=True)
    run(
        [python, "sample.py", "--workdir", str(run_dir), "--num_samples", str(args.num_samples), "--bars",
         str(args.bars), "--seed", str(args.seed), "--out", str(samples)],
        work / f"sample_{tag}.log",
    )  # fmt: skip
    evaluation = work / f"validation_{tag}.json"
    evaluation.unlink(missing_ok=True)
    command = [python, "-m", "musicgpt_jax.evaluate", "--workdir", str(run_dir), "--split", "validation"]
    run(command, work / f"evaluate_{tag}.log", stdout=evaluation)
    report = stats.measure(samples, held_out)
    return {
        "minutes": minutes,
        "steps": last_step(run_dir),
        "nll": json.loads(evaluation.read_text()),
        "report": report,
        "repeated_bars": repeated_bar_share(samples),
        "samples": str(samples),
    }


def draw_roll(samples: Path, path: str) -> None:
    """The first EDGE_BARS bars of the first sample, as a piano roll PNG."""
    from musicgpt_jax.pianoroll import draw_piano_roll

    first = sorted(samples.glob("*.mid"))[0]
    frames = midi_to_frames(first)
    lines = frames.meter.bar_lines(frames.num_frames)
    part = frames.cut(0, lines[EDGE_BARS]) if len(lines) > EDGE_BARS else frames
    draw_piano_roll(part, path, title=f"{first.name}: the first {EDGE_BARS} bars")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    midi, data, run_dir = work / "midi", work / "records", work / "run"
    for stale in [run_dir, work / "held_out", *work.glob("samples_*")] if args.keep_data else [work]:
        shutil.rmtree(stale, ignore_errors=True)
    prepare(args, midi, data, work)
    held_out = work / "held_out"
    held_out.mkdir(exist_ok=True)
    for i, path in enumerate(records.split_files(data, DATASET, "test")):
        (held_out / f"{i:03d}_{path.name}").symlink_to(path.resolve())
    held_repeated = repeated_bar_share(held_out)
    card = json.loads((data / DATASET / "card.json").read_text())
    corpus_range = corpus_pitch_range(card)

    train = [sys.executable, "train.py", "--config", args.config, "--dataset", DATASET, "--data_dir", str(data),
             "--workdir", str(run_dir), "--no_progress", *[f"--config.{o}" for o in args.overrides]]  # fmt: skip
    if args.steps:
        train += ["--steps", str(args.steps)]
    measured, spent, before = [], 0.0, 0.0
    for minutes in args.minutes:
        log = work / f"train_{minutes:g}min.log"  # each segment's budget includes its own set-up, as a run's does
        spent += run([*train, f"--config.train.max_seconds={(minutes - before) * 60:g}"], log)
        before = minutes
        result = measure_budget(args, work, run_dir, held_out, minutes)
        result["train_seconds"] = spent
        result["held_repeated_bars"] = held_repeated
        result["checks"] = goal_checks(result["report"], corpus_range)
        measured.append(result)
        print(f"{minutes:g} min: {result['steps']} steps, {sum(result['checks'].values())} of "
              f"{len(result['checks'])} goals met", flush=True)  # fmt: skip
    print(table(measured, corpus_range))
    print(
        f"\n{measured[0]['report']['reference']['num_pieces']} held-out test files; corpus pitch range from the card."
    )
    if args.roll:
        draw_roll(Path(measured[-1]["samples"]), args.roll)
    if args.json:
        Path(args.json).write_text(json.dumps({"budgets": measured, "corpus_range": corpus_range}, indent=1))
    return 0 if all(all(m["checks"].values()) for m in measured) else 1


def corpus_pitch_range(card: dict) -> tuple[int, int]:
    """The lowest and highest pitch the prepared corpus sounds (its dataset card's pitch histogram)."""
    sounding = np.flatnonzero(np.asarray(card["pitch_histogram"]["counts"]))
    return int(sounding[0]) + card["lowest_pitch"], int(sounding[-1]) + card["lowest_pitch"]


if __name__ == "__main__":
    sys.exit(main())
