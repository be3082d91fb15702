"""Which presets fit which Cloud TPU slices: AOT-compile each train step and print a Markdown table.

    python benchmarks/aot_table.py [--presets tiny,small,maestro,base,large]
        [--topologies v5e:1x1,v5e:2x2,...] [--cache runs/aot_table.jsonl] [--timeout SECONDS]

Every cell is one `python -m musicgpt_jax.aot` run for one preset on one topology (the preset's own
batch, all chips on fsdp): memory per chip, ✓ if it fits the chip's HBM. The last column is the smallest
slice that fits, found by walking each generation's ladder of slices upwards. Compiles run on this host's CPU
and take seconds (tiny) to minutes (base, large); `--timeout` bounds each, and `--cache` keeps every report
so an interrupted run resumes where it stopped. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only: never probe for a local TPU

from musicgpt_jax import aot, cli  # noqa: E402

TOPOLOGIES = ("v5e:1x1", "v5e:2x2", "v5e:2x4", "v4:2x2x1", "v5p:2x2x1", "v6e:2x2")
# Slices each generation is sold in, smallest first (one JAX device per chip).
LADDERS = {
    "v5e": ("v5e:1x1", "v5e:2x2", "v5e:2x4", "v5e:4x4", "v5e:4x8", "v5e:8x8", "v5e:8x16", "v5e:16x16"),
    "v6e": ("v6e:1x1", "v6e:2x2", "v6e:2x4", "v6e:4x4", "v6e:4x8", "v6e:8x8", "v6e:8x16", "v6e:16x16"),
    "v4": ("v4:2x2x1", "v4:2x2x2", "v4:2x2x4", "v4:2x4x4", "v4:4x4x4", "v4:4x4x8"),
    "v5p": ("v5p:2x2x1", "v5p:2x2x2", "v5p:2x2x4", "v5p:2x4x4", "v5p:4x4x4", "v5p:4x4x8"),
}


class Results:
    """Reports by (preset, topology), each from its own `python -m musicgpt_jax.aot --json` run.

    A report is the AOT JSON, or {"error": line} when the slice cannot take the preset (the batch does not
    split over its chips), or {"timeout": seconds} (not kept in the cache, so a longer rerun tries again).
    """

    def __init__(self, cache: str | None, timeout: float | None):
        self.path = Path(cache) if cache else None
        self.timeout = timeout
        self.reports: dict[tuple[str, str], dict] = {}
        if self.path and self.path.exists():
            for line in self.path.read_text().splitlines():
                row = json.loads(line)
                self.reports[(row["preset"], row["topology"])] = row["report"]

    def get(self, preset: str, topology: str) -> dict:
        key = (preset, topology)
        if key not in self.reports:
            start = time.perf_counter()
            command = [
                sys.executable,
                "-m",
                "musicgpt_jax.aot",
                "--config",
                preset,
                "--topology",
                topology,
                "--json",
                "-",
            ]
            try:
                proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                report = {"timeout": self.timeout}
                note = f"{preset} on {topology}: no answer in {self.timeout:.0f} s"
            else:
                if proc.returncode not in (0, 1):
                    report = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
                    note = f"{preset} on {topology}: {report['error']}"
                else:
                    report = json.loads(proc.stdout)
                    note = aot.AOTReport(**report).verdict()
            print(f"  {note} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
            self.reports[key] = report
            if self.path and "timeout" not in report:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as f:
                    f.write(json.dumps({"preset": preset, "topology": topology, "report": report}) + "\n")
        return self.reports[key]


def smallest_fit(results: Results, preset: str, generation: str) -> str | None:
    """The first slice of the generation's ladder that fits (memory per chip falls as chips grow)."""
    for topology in LADDERS[generation]:
        report = results.get(preset, topology)
        if report.get("fits"):
            return topology
        if "timeout" in report:
            return f"? (no answer from {topology} in {report['timeout']:.0f} s)"
    return None


def cell(report: dict) -> str:
    if "error" in report:
        return "—"
    if "timeout" in report:
        return f"? (> {report['timeout']:.0f} s)"
    gib = report["total_bytes"] / aot.GIB
    return f"{'✓' if report['fits'] else '✗'} {gib:.2f}" + ("" if report["compiled"] else "+")


def h100_minutes(flops_per_step: float) -> float:
    """An estimate from FLOPs, not a measurement: 1,000 steps on one H100 at `aot.DEFAULT_UTILIZATION` of its peak."""
    return aot.seconds_per_1000_steps(flops_per_step, 1, aot.H100_PEAK_BF16_FLOPS, aot.DEFAULT_UTILIZATION) / 60


def table(results: Results, presets: list[str], topologies: list[str]) -> str:
    hbm = {t: aot.HBM_BYTES[aot.generation(t)] // aot.GIB for t in topologies}
    header = (
        ["preset", "params", "batch × frames", "FLOPs/step", "H100 min per 1,000 steps (est.)"]
        + [f"{t} ({hbm[t]} GiB)" for t in topologies]
        + ["smallest slice that fits"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for preset in presets:
        reports = {t: results.get(preset, t) for t in topologies}
        any_report = next(r for r in reports.values() if "num_params" in r)
        generations = sorted({aot.generation(t) for t in topologies}, key=list(LADDERS).index)
        smallest = [smallest_fit(results, preset, g) for g in generations]
        fits = ", ".join(s for s in smallest if s) or "none tried"
        lines.append(
            "| "
            + " | ".join(
                [
                    preset,
                    f"{any_report['num_params'] / 1e6:.1f}M",
                    f"{any_report['batch_size']} × {any_report['seq_len']}",
                    f"{any_report['flops_per_step']:.2e}",
                    f"{h100_minutes(any_report['flops_per_step']):.1f}",
                ]
                + [cell(reports[t]) for t in topologies]
                + [fits]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(prog="aot_table.py", description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small,maestro,base,large")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    parser.add_argument("--cache", help="JSON-lines file of reports, read and extended")
    parser.add_argument("--timeout", type=float, help="seconds one compile may take (default: no limit)")
    args = parser.parse_args(argv)
    presets, topologies = args.presets.split(","), args.topologies.split(",")
    results = Results(args.cache, args.timeout)
    start = time.perf_counter()
    print(table(results, presets, topologies))
    print(
        "\nGiB per chip (arguments + outputs - donated + temporaries + code); ✓ fits the chip's HBM, "
        "✗ does not; +: XLA:TPU refused to compile, total from its message; —: the batch does not split "
        "over the chips; ?: no answer within --timeout. "
        f"FLOPs per step: XLA's HLO cost analysis of the whole step (remat recompute and own samples included). "
        f"H100: an estimate from those FLOPs at {aot.DEFAULT_UTILIZATION:.0%} of "
        f"{aot.H100_PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16, not a compile for it. "
        f"Smallest slice: per generation ({', '.join(LADDERS)}), with the preset's own batch, all chips on "
        "fsdp."
    )
    print(f"{len(results.reports)} reports, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
