"""Polyphonic music benchmark (Boulanger-Lewandowski et al. 2012): test NLL in nats per frame, beside published numbers.

    python benchmarks/polyphonic.py [--mat_dir FOLDER] [--sets jsb_chorales nottingham piano_midi musedata]
                                    [--budget_s S] [--config.model.dropout=0.2 ...] [--no_test] [--write_docs]

The four .mat files (JSB_Chorales.mat, Nottingham.mat, Piano_midi.mat, MuseData.mat) are the ones published with
Boulanger-Lewandowski et al. 2012, "Modeling Temporal Dependencies in High-Dimensional Sequences", on
http://www-etud.iro.umontreal.ca/~boulanni/icml2012; put them in one folder and pass it as `--mat_dir`
(default: ../shared/data/polyphonic when that folder exists).

For each set: import the .mat file (`records.build_benchmark_dataset`, skipped when up to date), train its preset
(configs.py: jsb, nottingham, piano_midi, musedata) from scratch in `runs/benchmark/SET` (deleted first) within a
wall-clock budget (`train.max_seconds`: 20 min for JSB, 60 min for the others, on a 2-core CPU; set-up,
compilation and the in-loop validation count), evaluating the WHOLE validation split and saving a checkpoint
every `eval_every` steps (and when the budget stops the run). The checkpoint with the lowest validation NLL is
selected and its validation NLL re-measured with the evaluator (`musicgpt_jax.evaluate`: whole sequences,
sliding window); the test split is evaluated once, on that checkpoint only. Results go to
`docs/polyphonic_results.json` (one entry per set, the latest run) and the "Polyphonic benchmark" section of
`docs/RESULTS.md` is rewritten from it, only when asked (`--write_docs`); `--json PATH` writes the results to a file.

Tuning uses `--no_test` (validation only; the test split is not touched).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared" / "data" / "polyphonic"
PROG = "polyphonic.py"
WHERE = (
    "the four .mat files (JSB_Chorales.mat, Nottingham.mat, Piano_midi.mat, MuseData.mat) are published with "
    "Boulanger-Lewandowski et al. 2012 at http://www-etud.iro.umontreal.ca/~boulanni/icml2012: download them into "
    "a folder and pass --mat_dir FOLDER"
)
RESULTS_JSON = REPO / "docs" / "polyphonic_results.json"
RESULTS_MD = REPO / "docs" / "RESULTS.md"
SECTION = "## Polyphonic benchmark"

# set: (file, preset, budget in seconds, column title)
SETS: dict[str, tuple[str, str, float, str]] = {
    "jsb_chorales": ("JSB_Chorales.mat", "jsb", 1200.0, "JSB Chorales"),
    "nottingham": ("Nottingham.mat", "nottingham", 3600.0, "Nottingham"),
    "piano_midi": ("Piano_midi.mat", "piano_midi", 3600.0, "Piano-midi.de"),
    "musedata": ("MuseData.mat", "musedata", 3600.0, "MuseData"),
}
ORDER = ("jsb_chorales", "nottingham", "piano_midi", "musedata")
# Published test NLL (nats per frame), in ORDER; None: not reported.
PUBLISHED: list[tuple[str, str, tuple[str | None, ...]]] = [
    ("independent per-pitch outputs", "TCN (Bai et al. 2018)", ("8.10", "3.07", None, None)),
    ("independent per-pitch outputs", "LSTM (Bai et al. 2018)", ("8.45", "3.29", None, None)),
    ("independent per-pitch outputs", "RRU (Ozolins et al.)", ("7.72", "2.92", "7.38", "7.03")),
    (
        "notes within a frame modelled jointly",
        "RNN-NADE (Boulanger-Lewandowski et al. 2012)",
        ("5.19–5.56", "2.31", "7.05", "5.60"),
    ),
    ("notes within a frame modelled jointly", "DMM-Aug-NADE (Krishnan et al. 2017)", ("5.12", "2.31", "7.05", "6.05")),
]
# The goal: below the best published number and below our own earlier NADE runs (5.18, 2.24, 6.23, 6.35).
TARGETS = {"jsb_chorales": 5.12, "nottingham": 2.24, "piano_midi": 6.23, "musedata": 5.60}


def best_validation_step(workdir: Path) -> tuple[int, float, list[tuple[int, float]]]:
    """(step, in-loop validation NLL) of the best evaluation in the run's metrics.jsonl, and all of them."""
    history = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val_nll" in record:
            history.append((int(record["step"]), float(record["val_nll"])))
    if not history:
        raise RuntimeError(f"{workdir}: no validation NLL was logged")
    step, nll = min(history, key=lambda x: (x[1], x[0]))
    return step, nll, history


def run_set(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from musicgpt_jax import configs, evaluate, records
    from musicgpt_jax.train import train_and_evaluate

    file, preset, default_budget, _ = SETS[name]
    budget = args.budget_s if args.budget_s is not None else default_budget
    records.build_benchmark_dataset(Path(args.mat_dir) / file, Path(args.data_dir).resolve())
    cfg = configs.resolve(preset, args.override)
    cfg.data.data_dir = str(Path(args.data_dir).resolve())
    cfg.train.max_seconds = budget
    cfg.train.checkpoint_every = cfg.train.eval_every  # every evaluated step can be selected
    cfg.train.keep_checkpoints = 10_000
    cfg.train.eval_batches = 1_000_000  # the whole validation split
    head = cfg.model.head
    key = result_key(name, head)
    workdir = Path(args.workdir_root).resolve() / key.replace("/", "_")
    if workdir.exists():
        shutil.rmtree(workdir)
    print(
        f"{name}: training preset {preset} for at most {cfg.train.steps} steps / {budget:g} s in {workdir}",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    final = train_and_evaluate(cfg, str(workdir), progress=False)
    train_s = time.perf_counter() - start
    step, loop_val, history = best_validation_step(workdir)
    start = time.perf_counter()
    val = evaluate.evaluate_run(str(workdir), step, split="validation", batch_size=args.batch_size)
    result: dict[str, Any] = {
        "set": name,
        "head": head,
        "key": key,
        "preset": preset,
        "overrides": list(args.override),
        "budget_s": budget,
        "steps_planned": cfg.train.steps,
        "steps_reached": int(final["step"]),
        "train_wall_s": round(train_s, 1),
        "best_step": step,
        "val_nll_in_loop": loop_val,
        "val_history": history,
        "val_nll": val["nats_per_frame"],
        "max_len": cfg.model.max_len,
        "stride": val["stride"],
        "command": command_line(name, args),
    }
    if not args.no_test:
        test = evaluate.evaluate_run(str(workdir), step, split="test", batch_size=args.batch_size)
        result.update(test_nll=test["nats_per_frame"], test_frames=test["frames"], test_sequences=test["sequences"])
    result["eval_wall_s"] = round(time.perf_counter() - start, 1)
    return result


HEADS = {"independent": "independent per-pitch", "nade": "notes within a frame modelled jointly (NADE head)"}


def result_key(name: str, head: str) -> str:
    """Results of the independent head are keyed by set name (their key from before the NADE head existed); other
    heads by "set/head"."""
    return name if head == "independent" else f"{name}/{head}"


def command_line(name: str, args: argparse.Namespace) -> str:
    parts = ["python benchmarks/polyphonic.py", "--sets", name]
    if args.budget_s is not None:
        parts += ["--budget_s", f"{args.budget_s:g}"]
    parts += [f"--config.{override}" for override in args.override]
    return " ".join(parts)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def render_section(results: dict[str, dict[str, Any]]) -> str:
    titles = [SETS[s][3] for s in ORDER]
    lines = [
        SECTION,
        "",
        "Test negative log-likelihood in **nats per frame** (Σ over the 88 pitches of a frame, pooled over every "
        "test frame: Σ NLL / Σ frames; lower is better). Ours: `python -m musicgpt_jax.evaluate` on the "
        "checkpoint with the best validation NLL; whole sequences, each first frame scored given the empty "
        "start frame, sequences longer than the context window through a sliding window (stride max_len/2). "
        "The test split is evaluated once per reported number. Two frame heads share the same Transformer: "
        "`independent` (`--config.model.head=independent`: each pitch's state predicted on its own, like TCN, "
        "LSTM and RRU below) and `nade` (the presets' default; rows run before it was the default say "
        "`--config.model.head=nade`: the pitches of a frame predicted one after another, like RNN-NADE).",
        "",
        "| model | output | " + " | ".join(titles) + " |",
        "|---|---|" + "---|" * len(titles),
    ]
    for head, output in HEADS.items():
        ours = [results.get(result_key(s, head), {}).get("test_nll") for s in ORDER]
        if head != "independent" and all(x is None for x in ours):
            continue
        lines.append(
            f"| **musicgpt-jax (this repo)** | {output} | "
            + " | ".join(f"**{_fmt(x)}**" if x is not None else "not run" for x in ours)
            + " |"
        )
    for kind, model, numbers in PUBLISHED:
        lines.append(f"| {model} | {kind} | " + " | ".join(n or "–" for n in numbers) + " |")
    lines += [
        "",
        "Goal: below every published number and below our earlier runs: "
        + ", ".join(f"{SETS[s][3]} < {TARGETS[s]}" for s in ORDER)
        + ".",
        "",
        "How each of our numbers was made (one CPU run each; budget = wall-clock limit of training, "
        "set-up, compilation and in-loop validation included; the run stops, evaluates and saves when it is "
        "spent):",
        "",
        "| set | head | test NLL | validation NLL | command | budget | steps reached / planned | best step | "
        "train wall | eval wall | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, head in ((s, h) for h in HEADS for s in ORDER):
        r = results.get(result_key(s, head))
        if r is None or "test_nll" not in r:
            continue
        lines.append(
            f"| {SETS[s][3]} | {head} | {r['test_nll']:.3f} | {r['val_nll']:.3f} | `{r['command']}` | "
            f"{r['budget_s']:g} s | {r['steps_reached']} / {r['steps_planned']} | {r['best_step']} | "
            f"{r['train_wall_s']:.0f} s | {r['eval_wall_s']:.0f} s | {r.get('machine', '?')} |"
        )
    return "\n".join(lines) + "\n"


def write_results(new: list[dict[str, Any]]) -> None:
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    for r in new:
        results[r.get("key", r["set"])] = r
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    section = render_section(results)
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Results\n\n"
    if SECTION in text:
        head, _, rest = text.partition(SECTION)
        following = rest.find("\n## ")
        tail = rest[following + 1 :] if following >= 0 else ""
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS_MD.write_text(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from musicgpt_jax import cli

    parser = cli.Parser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="Any --config.SECTION.FIELD=VALUE overrides each set's preset, e.g. --config.model.head=independent.",
    )
    parser.add_argument(
        "--mat_dir",
        default=str(SHARED) if SHARED.is_dir() else None,
        help="folder of the four .mat files (default: ../shared/data/polyphonic when it exists)",
    )
    parser.add_argument("--sets", nargs="+", default=list(ORDER), choices=ORDER, help="default: all four")
    parser.add_argument(
        "--budget_s", type=float, help="training wall-clock budget per set (default: 1200 for JSB, 3600 for the others)"
    )
    parser.add_argument("--override", nargs="*", default=[], help=argparse.SUPPRESS)  # old: --config.X=V
    parser.add_argument("--data_dir", default="data/records", help="records directory (default: %(default)s)")
    parser.add_argument("--workdir_root", default="runs/benchmark", help="runs go in ROOT/SET (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=16, help="evaluation batch (windows)")
    parser.add_argument("--no_test", action="store_true", help="validation only (for tuning); implies --no_write")
    parser.add_argument(
        "--write_docs", action="store_true", help="rewrite docs/polyphonic_results.json and RESULTS.md's table"
    )
    parser.add_argument("--no_write", action="store_true", help=argparse.SUPPRESS)  # old: docs are written on request
    parser.add_argument("--json", metavar="PATH", help="write each set's result to PATH (JSON lines)")
    args, overrides = cli.parse_with_overrides(parser, sys.argv[1:] if argv is None else argv)
    if args.override:
        cli.deprecated(PROG, "--override SECTION.FIELD=VALUE", "--config.SECTION.FIELD=VALUE")
    if args.no_write:
        cli.deprecated(PROG, "--no_write", "nothing: docs are rewritten only with --write_docs")
    args.override = [*args.override, *overrides]
    if args.mat_dir is None:
        parser.error(f"no --mat_dir given and no {SHARED.relative_to(REPO.parent)} here: {WHERE}")
    missing = [SETS[name][0] for name in args.sets if not (Path(args.mat_dir) / SETS[name][0]).is_file()]
    if missing:
        parser.error(f"--mat_dir {args.mat_dir}: no {', '.join(missing)}; {WHERE}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from musicgpt_jax.configs import ConfigError

    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores (shared)"
    for name in args.sets:
        try:
            result = run_set(name, args)
        except ConfigError as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            return 2
        result["machine"] = machine
        line = json.dumps({k: v for k, v in result.items() if k != "val_history"})
        print(line, flush=True)
        if args.json:
            with open(args.json, "a") as out:
                out.write(line + "\n")
        if args.write_docs and not args.no_test:
            write_results([result])  # after each set: a later set's failure loses nothing
    return 0


if __name__ == "__main__":
    from musicgpt_jax import host_memory

    host_memory.reexec_with_malloc_tuning()
    sys.exit(main())
