"""The training loop's schedule: `itstime`, and which steps log, evaluate and save, across a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES

from musicgpt_jax import configs
from musicgpt_jax.checkpoint import Checkpointer
from musicgpt_jax.train import itstime, train_and_evaluate


@pytest.mark.parametrize(
    ("every", "total", "due"),
    [
        (3, 10, [3, 6, 9, 10]),
        (5, 10, [5, 10]),
        (1, 4, [1, 2, 3, 4]),
        (20, 7, [7]),
        (0, 5, [5]),  # never periodically, but after the last step
        (-1, 5, [5]),
    ],
)
def test_itstime_every_n_steps_and_after_the_last(every, total, due):
    assert [step for step in range(1, total + 1) if itstime(step, every, total)] == due


def logged(workdir: Path, key: str) -> list[int]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines if key in line]


def test_log_evaluate_and_save_at_their_steps_and_resume_from_the_last(benchmark_data, tmp_path):
    def config(steps: int) -> configs.Config:
        cfg = configs.resolve(
            "jsb",
            [
                *TINY_OVERRIDES,
                f"train.steps={steps}",
                "train.log_every=3",
                "train.eval_every=5",
                "train.eval_batches=1",
                "train.checkpoint_every=4",
                "train.keep_checkpoints=10",
                "train.async_checkpoints=false",
            ],
        )
        cfg.data.data_dir, cfg.data.dataset = benchmark_data.data_dir, benchmark_data.dataset
        return cfg

    out = train_and_evaluate(config(7), str(tmp_path), progress=False)
    assert out["step"] == 7 and "val_nll" in out and "loss" in out
    assert logged(tmp_path, "loss") == [3, 4, 6, 7]  # every 3, at each save, after the last step
    assert logged(tmp_path, "val_nll") == [5, 7]
    checkpointer = Checkpointer(tmp_path, read_only=True, async_save=False)
    assert checkpointer.steps() == [4, 7]
    checkpointer.close()

    out = train_and_evaluate(config(9), str(tmp_path), progress=False)  # resumes at 7
    assert out["step"] == 9
    assert logged(tmp_path, "loss") == [3, 4, 6, 7, 8, 9]
    assert logged(tmp_path, "val_nll") == [5, 7, 9]
