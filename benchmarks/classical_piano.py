"""Classical piano, end to end: does a CPU-trained model write piano music that neither falls silent nor collapses?

    python benchmarks/classical_piano.py [--midi_dir ../shared/data/midi/real] [--work /tmp/classical_piano]
        [--config piano] [--steps 1000] [--max_seconds 1800] [--num_samples 8] [--bars 64] [--json PATH]
        [--config.SECTION.FIELD=VALUE ...]

Without ../shared/data/midi/real, give `--midi_dir` a folder of classical piano MIDI: MAESTRO's
(https://magenta.tensorflow.org/datasets/maestro; `curl -O https://storage.googleapis.com/magentadata/datasets/
maestro/v3.0.0/maestro-v3.0.0-midi.zip && unzip -q maestro-v3.0.0-midi.zip`, then --midi_dir maestro-v3.0.0), whose
every file is piano.

Takes the 25 classical piano files of the shared MIDI set (the ten MAESTRO performances, the piano-midi.de and
MuseScore piano pieces; not the two orchestral files), prepares them with 20% held out for test and 10% for
validation (by hash), trains `--config` for at most `--steps` steps and `--max_seconds` seconds, samples
`--num_samples` pieces of `--bars` bars, and prints a markdown table against the held-out test files
(`musicgpt_jax.stats`, each distance beside the held-out files' own split-half distance): for the whole samples
and for their first and last 16 bars (does the music hold once the window slides?), the validation NLL of the
notes (nats per frame) and of the velocities (nats per onset), and the share of repeated bars.
"""

from __future__ import annotations

import argparse
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
from musicgpt_jax.midi_io import midi_to_frames, write_midi  # noqa: E402

PIANO_PREFIXES = ("miditok_Maestro_", "miditok_63", "tonejs_")
ORCHESTRAL = ("tonejs_concerto_for_orchestra_1.mid", "tonejs_symphony_7_2.mid")
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


def edge_bars(folder: Path, out: Path, which: str) -> Path:
    """The first or last EDGE_BARS bars of every sample in `folder`, as MIDI files in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob("*.mid")):
        frames = midi_to_frames(path)
        lines = frames.meter.bar_lines(frames.num_frames)
        if len(lines) <= EDGE_BARS:
            part = frames
        elif which == "first":
            part = frames.cut(0, lines[EDGE_BARS])
        else:
            part = frames.cut(lines[-EDGE_BARS - 1], lines[-1])
        write_midi(part, out / path.name)
    return out


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


def table(reports: dict[str, dict], repeated: dict[str, float], nll: dict, budget: dict) -> str:
    """The markdown table of the three reports (whole samples, first and last 16 bars) against the held-out."""
    held = reports["all"]["reference"]
    names = list(reports)
    lines = [
        "| " + " | ".join(["figure", *(f"samples: {n}" for n in names), "held-out", "goal"]) + " |",
        "|" + "---|" * (len(names) + 3),
    ]

    def row(label: str, values: list[str], reference: str, goal: str) -> None:
        lines.append("| " + " | ".join([label, *values, reference, goal]) + " |")

    longest = [max(p["longest_silence_bars"] for p in r["samples"]["pieces"]) for r in reports.values()]
    row("longest silence (bars)", [f"{v:.2f}" for v in longest], f"{held['longest_silence_bars']:.2f}", "< 2")
    silent = [r["samples"]["silent_fraction"] for r in reports.values()]
    reference_silent = held["silent_fraction"]
    row(
        "silent share (× held-out's)",
        [f"{s:.1%} ({s / reference_silent:.2f}×)" for s in silent],
        f"{reference_silent:.1%}",
        "0.5–1.5×",
    )
    for key in TEXTURE:
        row(
            f"{key.replace('_', ' ')}: distance / split-half",
            [ratio_text(r["distances"][key]) for r in reports.values()],
            f"split-half {reports['all']['distances'][key]['split_half']:.3f}",
            f"≤ {RATIO_GOAL:g}×",
        )
    row(
        "notes per bar",
        [f"{r['samples']['notes_per_bar']:.1f}" for r in reports.values()],
        f"{held['notes_per_bar']:.1f}",
        "",
    )
    row(
        "velocity mean ± spread",
        [f"{r['samples']['velocity_mean']:.0f} ± {r['samples']['velocity_std']:.0f}" for r in reports.values()],
        f"{held['velocity_mean']:.0f} ± {held['velocity_std']:.0f}",
        "spread like the data's",
    )
    row("repeated bars (exact)", [f"{repeated[n]:.1%}" for n in names], f"{repeated['held-out']:.1%}", "no loop")
    notes = f"{nll['nats_per_frame']:.3f} nats/frame"
    velocity = nll.get("velocity_nats_per_onset")
    lines.append("")
    lines.append(
        f"Validation NLL: notes {notes}"
        + (f", velocity {velocity:.3f} nats/onset" if velocity is not None else "")
        + f"; {budget['steps']} steps in {budget['train_seconds']:.0f} s of training"
        f" (budget {budget['max_seconds']:g} s); {held['num_pieces']} held-out test files."
    )
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
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--max_seconds", type=float, default=1800.0, help="training budget in seconds")
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--bars", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    parser.add_argument("--keep_data", action="store_true", help="reuse the data prepared in --work (train anew)")
    args, overrides = cli.parse_with_overrides(parser, sys.argv[1:] if argv is None else argv)
    args.overrides = overrides
    if args.midi_dir is None:
        parser.error(f"no --midi_dir given and no {SHARED.relative_to(REPO.parent)} here: {WHERE}")
    if not Path(args.midi_dir).is_dir():
        parser.error(f"--midi_dir {args.midi_dir}: no such folder; {WHERE}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    midi, data, run_dir, samples = work / "midi", work / "records", work / "run", work / "samples"
    for stale in [run_dir, samples, work / "first", work / "last", work / "held_out"] if args.keep_data else [work]:
        shutil.rmtree(stale, ignore_errors=True)
    python = sys.executable
    if not (data / DATASET / "card.json").exists():
        midi.mkdir(parents=True, exist_ok=True)
        for path in classical_piano_files(Path(args.midi_dir)):
            (midi / path.name).symlink_to(path.resolve())
        run(
            [python, "data/prepare.py", "--midi_dir", str(midi), "--dataset", DATASET, "--data_dir", str(data),
             "--val_percent", "10", "--test_percent", "20"],
            work / "prepare.log",
        )  # fmt: skip
    train_seconds = run(
        [python, "train.py", "--config", args.config, "--dataset", DATASET, "--data_dir", str(data),
         "--workdir", str(run_dir), "--steps", str(args.steps), f"--config.train.max_seconds={args.max_seconds}",
         "--no_progress", *[f"--config.{override}" for override in args.overrides]],
        work / "train.log",
    )  # fmt: skip
    steps = max(int(json.loads(line)["step"]) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    run(
        [python, "sample.py", "--workdir", str(run_dir), "--num_samples", str(args.num_samples), "--bars",
         str(args.bars), "--seed", str(args.seed), "--out", str(samples)],
        work / "sample.log",
    )  # fmt: skip
    evaluation = work / "validation.json"
    evaluation.unlink(missing_ok=True)
    command = [python, "-m", "musicgpt_jax.evaluate", "--workdir", str(run_dir), "--split", "validation"]
    run(command, work / "evaluate.log", stdout=evaluation)
    nll = json.loads(evaluation.read_text())

    held_out = work / "held_out"
    held_out.mkdir(exist_ok=True)
    for i, path in enumerate(records.split_files(data, DATASET, "test")):
        (held_out / f"{i:03d}_{path.name}").symlink_to(path.resolve())
    folders = {
        "all": samples,
        f"first {EDGE_BARS} bars": edge_bars(samples, work / "first", "first"),
        f"last {EDGE_BARS} bars": edge_bars(samples, work / "last", "last"),
    }
    reports = {name: stats.measure(folder, held_out) for name, folder in folders.items()}
    repeated = {name: repeated_bar_share(folder) for name, folder in folders.items()}
    repeated["held-out"] = repeated_bar_share(held_out)
    budget = {"steps": steps, "train_seconds": train_seconds, "max_seconds": args.max_seconds}
    print(table(reports, repeated, nll, budget))
    if args.json:
        figures = {"reports": reports, "repeated_bars": repeated, "validation": nll, "budget": budget}
        Path(args.json).write_text(json.dumps(figures, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
