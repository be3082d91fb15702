"""Multi-host training: two processes on one machine (gloo collectives over 127.0.0.1), then a resume in one.

Two processes × 2 fake CPU devices train 4 steps and save into one workdir; one process × 4 devices resumes to
step 8. The resumed losses must equal those of one uninterrupted single-process run, and the rows each process
read (train.py's hidden --data_log) must be disjoint halves of the same global batches. Bad multi-host flags and
an unreachable coordinator must fail fast with one line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY_OVERRIDES, BenchmarkData

TINY = [*TINY_OVERRIDES, "model.dropout=0.0", "train.eval_batches=1"]
TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(devices: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """train.py in a fresh process with `devices` fake CPU devices."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def train_args(workdir: Path, data: BenchmarkData, steps: int, data_log: Path) -> list[str]:
    return [
        "--config",
        "jsb",
        "--workdir",
        str(workdir),
        "--data_dir",
        data.data_dir,
        "--dataset",
        data.dataset,
        "--steps",
        str(steps),
        "--no_progress",
        "--data_log",
        str(data_log),
        *[f"--config.{o}" for o in TINY],
    ]


def finish(proc: subprocess.Popen) -> str:
    """Wait for `proc`, assert it succeeded, return its stderr."""
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"train.py ran past {TIMEOUT_S} s: {err[-2000:]}")
    assert proc.returncode == 0, err[-2000:]
    return err


def losses(workdir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def batches(log: Path) -> list[list[str]]:
    """One list of SOURCE:WINDOW row ids per local batch."""
    return [line.split() for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_then_one_resumes_like_an_uninterrupted_run(benchmark_data, tmp_path):
    port = free_port()
    shared, straight = tmp_path / "two_then_one", tmp_path / "straight"
    workers = [
        launch(
            2,
            *train_args(shared, benchmark_data, 4, tmp_path / "two.log"),
            "--coordinator_address",
            f"127.0.0.1:{port}",
            "--num_processes",
            "2",
            "--process_id",
            str(i),
        )
        for i in range(2)
    ]
    reference = launch(4, *train_args(straight, benchmark_data, 8, tmp_path / "one.log"))
    errors = [finish(p) for p in workers]
    finish(reference)
    assert "stopped at step 4" in errors[0] and "stopped at step" not in errors[1]  # only process 0 reports
    assert (shared / "checkpoints" / "4").is_dir()

    err = finish(launch(4, *train_args(shared, benchmark_data, 8, tmp_path / "resumed.log")))
    assert "resumed from" in err and "at step 4" in err

    a, b = losses(straight), losses(shared)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    np.testing.assert_allclose([b[s] for s in range(1, 9)], [a[s] for s in range(1, 9)], rtol=1e-5)

    # Each process read its own half of every global batch: process 0 rows 0-3, process 1 rows 4-7.
    p0, p1 = batches(tmp_path / "two.log.process_0"), batches(tmp_path / "two.log.process_1")
    single = batches(tmp_path / "one.log.process_0")
    assert len(p0) == len(p1) == 4 and len(single) == 8
    assert all(len(rows) == 4 for rows in p0 + p1)
    assert [r0 + r1 for r0, r1 in zip(p0, p1, strict=True)] == single[:4]
    rows0, rows1 = {r for rows in p0 for r in rows}, {r for rows in p1 for r in rows}
    assert not rows0 & rows1
    assert rows0 | rows1 == {r for rows in single[:4] for r in rows}
    # The data order continues across the change of process count.
    assert batches(tmp_path / "resumed.log.process_0") == single[4:]


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--num_processes", "2"], {}, "multi-host needs all of --coordinator_address"),
        (
            ["--coordinator_address", "127.0.0.1:{port}", "--num_processes", "2", "--process_id", "3"],
            {},
            "--process_id 3 is not in [0, --num_processes 2)",
        ),
        (
            ["--coordinator_address", "127.0.0.1:{port}", "--num_processes", "2", "--process_id", "1"],
            {"MUSICGPT_INIT_TIMEOUT": "5"},
            "could not reach the coordinator at 127.0.0.1:",
        ),
        (  # process 0 serves the coordinator, but process 1 never comes
            ["--coordinator_address", "127.0.0.1:{port}", "--num_processes", "2", "--process_id", "0"],
            {"MUSICGPT_INIT_TIMEOUT": "5"},
            "train.py: not all 2 processes joined the coordinator at 127.0.0.1:",
        ),
    ],
    ids=["missing_coordinator", "process_id_out_of_range", "unreachable_coordinator", "peer_never_joins"],
)
def test_bad_multihost_settings_fail_fast_with_one_line(tmp_path, args, env, message):
    port = free_port()  # nothing listens on it
    start = time.monotonic()
    proc = launch(
        2,
        "--workdir",
        str(tmp_path),
        "--data_dir",
        str(tmp_path),
        "--steps",
        "1",
        "--no_progress",
        *[a.format(port=port) for a in args],
        env=env,
    )
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("train.py hung on bad multi-host settings")
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert time.monotonic() - start < 60
