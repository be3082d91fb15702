"""Which presets fit which Cloud TPU slices: AOT-compile each train step and print a Markdown table.

    python benchmarks/aot_table.py [--presets tiny,small,base,large]
        [--topologies v5e:1x1,v5e:2x2,...] [--cache runs/aot_table.jsonl]

Every cell is `musicgpt_jax.aot.compile_train_step` for one preset on one topology (the preset's own
batch, all chips on fsdp): memory per chip, ✓ if it fits the chip's HBM. The last column is the smallest
slice that fits, found by walking each generation's ladder of slices upwards. Compiles run on this host's CPU
and take seconds (tiny) to minutes (base, large); `--cache` keeps every report so an interrupted run resumes
where it stopped. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only: never probe for a local TPU

from musicgpt_jax import aot, configs  # noqa: E402

TOPOLOGIES = ("v5e:1x1", "v5e:2x2", "v5e:2x4", "v4:2x2x1", "v5p:2x2x1", "v6e:2x2")
# Slices each generation is sold in, smallest first (one JAX device per chip).
LADDERS = {
    "v5e": ("v5e:1x1", "v5e:2x2", "v5e:2x4", "v5e:4x4", "v5e:4x8", "v5e:8x8", "v5e:8x16", "v5e:16x16"),
    "v6e": ("v6e:1x1", "v6e:2x2", "v6e:2x4", "v6e:4x4", "v6e:4x8", "v6e:8x8", "v6e:8x16", "v6e:16x16"),
    "v4": ("v4:2x2x1", "v4:2x2x2", "v4:2x2x4", "v4:2x4x4", "v4:4x4x4", "v4:4x4x8"),
    "v5p": ("v5p:2x2x1", "v5p:2x2x2", "v5p:2x2x4", "v5p:2x4x4", "v5p:4x4x4", "v5p:4x4x8"),
}


class Results:
    """Reports by (preset, topology), computed once and optionally kept in a JSON-lines file."""

    def __init__(self, cache: str | None):
        self.path = Path(cache) if cache else None
        self.reports: dict[tuple[str, str], dict | None] = {}
        if self.path and self.path.exists():
            for line in self.path.read_text().splitlines():
                row = json.loads(line)
                self.reports[(row["preset"], row["topology"])] = row["report"]

    def get(self, preset: str, topology: str) -> dict | None:
        """The report as a dict, or None when the slice cannot run the preset at all (batch vs chips)."""
        key = (preset, topology)
        if key not in self.reports:
            start = time.perf_counter()
            try:
                report = dataclasses.asdict(aot.compile_train_step(configs.resolve(preset), topology))
            except aot.AOTError as error:
                print(f"  {preset} on {topology}: {error}", file=sys.stderr, flush=True)
                report = None
            else:
                print(f"  {aot.AOTReport(**report).verdict()} ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr, flush=True)
            self.reports[key] = report
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as f:
                    f.write(json.dumps({"preset": preset, "topology": topology, "report": report}) + "\n")
        return self.reports[key]


def smallest_fit(results: Results, preset: str, generation: str) -> str | None:
    """The first slice of the generation's ladder that fits (memory per chip falls as chips grow)."""
    for topology in LADDERS[generation]:
        report = results.get(preset, topology)
        if report is not None and report["fits"]:
            return topology
    return None


def cell(report: dict | None) -> str:
    if report is None:
        return "—"
    gib = report["total_bytes"] / aot.GIB
    return f"{'✓' if report['fits'] else '✗'} {gib:.2f}" + ("" if report["compiled"] else "+")


def table(results: Results, presets: list[str], topologies: list[str]) -> str:
    hbm = {t: aot.HBM_BYTES[aot.generation(t)] // aot.GIB for t in topologies}
    header = (["preset", "params", "batch × frames", "FLOPs/step"]
              + [f"{t} ({hbm[t]} GiB)" for t in topologies] + ["smallest slice that fits"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for preset in presets:
        reports = {t: results.get(preset, t) for t in topologies}
        any_report = next(r for r in reports.values() if r is not None)
        generations = sorted({aot.generation(t) for t in topologies}, key=list(LADDERS).index)
        smallest = [smallest_fit(results, preset, g) for g in generations]
        fits = ", ".join(s for s in smallest if s) or "none tried"
        lines.append("| " + " | ".join(
            [preset, f"{any_report['num_params'] / 1e6:.1f}M",
             f"{any_report['batch_size']} × {any_report['seq_len']}", f"{any_report['flops_per_step']:.2e}"]
            + [cell(reports[t]) for t in topologies] + [fits]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small,base,large")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    parser.add_argument("--cache", help="JSON-lines file of reports, read and extended")
    args = parser.parse_args(argv)
    presets, topologies = args.presets.split(","), args.topologies.split(",")
    results = Results(args.cache)
    start = time.perf_counter()
    print(table(results, presets, topologies))
    print("\nGiB per chip (arguments + outputs - donated + temporaries + code); ✓ fits the chip's HBM, "
          "✗ does not; +: XLA:TPU refused to compile, total from its message; —: the batch does not split "
          "over the chips. "
          f"FLOPs per step: XLA's HLO cost analysis of the whole step (remat recompute included). "
          f"Smallest slice: per generation ({', '.join(LADDERS)}), with the preset's own batch, all chips on "
          "fsdp.")
    print(f"{len(results.reports)} reports, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
