"""benchmarks/polyphonic.py: selection of the best validation step and the RESULTS.md table (no training here)."""

from __future__ import annotations

import importlib.util
import json

from conftest import REPO


def load_benchmark_module():
    spec = importlib.util.spec_from_file_location("polyphonic_benchmark", REPO / "benchmarks" / "polyphonic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_best_validation_step(tmp_path):
    bench = load_benchmark_module()
    lines = [
        {"step": 10, "loss": 9.0},
        {"step": 50, "val_nll": 9.1},
        {"step": 100, "val_nll": 8.4},
        {"step": 150, "val_nll": 8.7},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    step, nll, history = bench.best_validation_step(tmp_path)
    assert (step, nll) == (100, 8.4) and len(history) == 3


def test_results_section_is_replaced_in_place(tmp_path, monkeypatch):
    bench = load_benchmark_module()
    monkeypatch.setattr(bench, "RESULTS_JSON", tmp_path / "polyphonic_results.json")
    monkeypatch.setattr(bench, "RESULTS_MD", tmp_path / "RESULTS.md")
    md = "# Results\n\n## Speed\n\nfast\n\n## Polyphonic benchmark\n\nold\n\n## Other\n\nkept\n"
    (tmp_path / "RESULTS.md").write_text(md)
    result = {
        "set": "jsb_chorales",
        "test_nll": 8.123,
        "val_nll": 8.2,
        "command": "python benchmarks/polyphonic.py",
        "budget_s": 600.0,
        "steps_reached": 400,
        "steps_planned": 450,
        "best_step": 350,
        "train_wall_s": 590.0,
        "eval_wall_s": 9.0,
        "machine": "cpu",
    }
    bench.write_results([result])
    text = (tmp_path / "RESULTS.md").read_text()
    assert "old" not in text and "fast" in text and "## Other\n\nkept" in text
    assert text.count("## Polyphonic benchmark") == 1
    assert "**8.12**" in text and "| 7.72 | 2.92 | 7.38 | 7.03 |" in text and "5.19–5.56" in text
    assert "| JSB Chorales | independent | 8.123 |" in text
    assert "NADE head" not in text  # no row for a head that has no results
    # A run with the NADE head gets its own row and entry; the independent head's stays.
    bench.write_results([{**result, "head": "nade", "key": "jsb_chorales/nade", "test_nll": 6.5}])
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| **musicgpt-jax (this repo)** | independent per-pitch | **8.12** |" in text
    assert "| **musicgpt-jax (this repo)** | notes within a frame modelled jointly (NADE head) | **6.50** |" in text
    assert "| JSB Chorales | nade | 6.500 |" in text and "| JSB Chorales | independent | 8.123 |" in text
    assert set(json.loads((tmp_path / "polyphonic_results.json").read_text())) == {"jsb_chorales", "jsb_chorales/nade"}
