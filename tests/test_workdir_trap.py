"""The workdir trap: a run started in a workdir trained on another dataset is refused in one line naming both
datasets and the workdir, instead of resuming (and stopping at) the other run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, TINY_OVERRIDES

from musicgpt_jax import configs, records
from musicgpt_jax.train import TrainingError, check_compatible, train_and_evaluate


def test_a_run_on_another_dataset_in_the_same_workdir_is_refused_in_one_line(benchmark_data, tmp_path):
    cfg = configs.resolve("jsb", [*TINY_OVERRIDES, "train.steps=1", "train.checkpoint_every=1"])
    cfg.data.data_dir, cfg.data.dataset = benchmark_data.data_dir, benchmark_data.dataset
    workdir = tmp_path / "run"
    train_and_evaluate(cfg, str(workdir), progress=False)
    other_dir = tmp_path / "records"
    records.build_benchmark_dataset(REPO / benchmark_data.source, other_dir, name="other_chorales")

    command = [sys.executable, str(REPO / "train.py"), "--config", "jsb", "--workdir", str(workdir)]
    command += ["--data_dir", str(other_dir), "--dataset", "other_chorales", "--no_progress"]
    command += [f"--config.{o}" for o in TINY_OVERRIDES] + ["--steps", "2"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0] == (
        f"train.py: {workdir}: holds a run trained on dataset {benchmark_data.dataset}, not other_chorales; "
        f"use another --workdir (e.g. runs/other_chorales), or --dataset {benchmark_data.dataset} to resume it"
    )
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]  # untouched


def test_checkpoints_that_do_not_name_their_dataset_still_resume():
    cfg = configs.resolve("jsb")
    check_compatible({"model": cfg.to_dict()["model"]}, cfg, "w")  # written before the dataset was compared
    check_compatible(cfg.to_dict(), cfg, "w")
    with pytest.raises(TrainingError, match="dataset jsb_chorales, not mine"):
        cfg_mine = configs.resolve("jsb", ["data.dataset=mine"])
        check_compatible(cfg.to_dict(), cfg_mine, "w")
