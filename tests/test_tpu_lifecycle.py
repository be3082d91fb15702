"""The tpu/ scripts' whole lifecycle, run for real on this machine against a `gcloud` stand-in.

tests/tpu_standin/ holds the stand-in: a TPU VM is 2 worker folders (one HOME each) whose commands run as local
processes, with the coordinator on 127.0.0.1; `gcloud storage` and every gs:// path go to the local Cloud Storage
emulator (the `gcs` fixture). create.sh → setup.sh (the local checkout, packed and copied) → train.sh on both
workers → a committed checkpoint in the bucket → a simulated preemption (every worker process killed with SIGKILL,
the VM reported PREEMPTED) → relaunch.sh notices, recreates, sets up and restarts, and train.py resumes from the
checkpoint and finishes → sample.sh copies the samples back → teardown.sh.

Stubbed, because it needs the internet or Google's servers:
- uv: setup.sh downloads it (curl astral.sh | sh); each worker gets a stub `~/.local/bin/uv` whose `uv venv DIR`
  makes DIR/bin/python, a wrapper of this test's Python;
- pip: `.venv/bin/python -m pip ...` records its arguments and installs nothing (jax[tpu] and the project from
  PyPI take minutes); the test asserts that setup.sh asks for the `.[tpu]` extra, which brings the `cloud` one;
- the metadata server: a `curl` on the workers' PATH answers agent-worker-number and nothing else;
- the TPU runtime: each worker is one JAX CPU process; the MUSICGPT_* variables stand for what a TPU pod slice's
  runtime tells jax.distributed.initialize().

Printed with -s (`pytest -q tests/test_tpu_lifecycle.py -s`): the steps redone after the preemption (the last
step logged before it minus the checkpoint step resumed from) and the seconds from starting relaunch.sh to the
first new step logged.
"""

import contextlib
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_OVERRIDES, BenchmarkData
from test_cloud import checkpoint_entries, filesystem
from tpu_standin.standin import vm_processes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="the gcloud stand-in needs Linux's /proc"),
]

STANDIN = REPO / "tests" / "tpu_standin"
NAME = "lifecycle"
STEPS = 80
CHECKPOINT_EVERY = 20
TRAIN_PY_FLAGS = [
    "--steps", str(STEPS), "--no_progress",
    *[f"--config.{o}" for o in [*TINY_OVERRIDES, "train.eval_batches=1", f"train.checkpoint_every={CHECKPOINT_EVERY}"]],
]  # fmt: skip
TIMEOUT_S = 240


class Cloud:
    """The tpu/ scripts, with the stand-in first on PATH and its state in `state`."""

    def __init__(self, state: Path, emulator_env: dict[str, str]):
        self.state = state
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
        self.env.update(emulator_env)
        self.env.update(
            PATH=f"{STANDIN}{os.pathsep}{os.environ['PATH']}",
            MUSICGPT_STANDIN_PYTHON=sys.executable,
            MUSICGPT_STANDIN_STATE=str(state),
            TPU_PROJECT="test-project",
            TPU_ZONE="local-a",
            TPU_NAME=NAME,
        )

    def run(self, script: str, *args: str, cwd: Path = REPO) -> str:
        proc = subprocess.run([str(REPO / "tpu" / script), *args], env=self.env, cwd=cwd, capture_output=True,
                              text=True, timeout=TIMEOUT_S)  # fmt: skip
        assert proc.returncode == 0, f"{script}: {proc.stderr[-3000:]}"
        return proc.stdout

    def start(self, script: str, *args: str, log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            return subprocess.Popen([str(REPO / "tpu" / script), *args], env=self.env, cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def gcloud(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(STANDIN / "gcloud"), *args], env=self.env, capture_output=True, text=True)

    def home(self, worker: int) -> Path:
        return self.state / NAME / f"worker{worker}"

    def train_log(self, worker: int = 0) -> str:
        log = self.home(worker) / "musicgpt" / "logs" / f"train.worker{worker}.log"
        return log.read_text() if log.exists() else ""

    def logged_steps(self) -> list[int]:
        """Steps in worker 0's metrics as train.py writes them (its local staging copy, appended every step)."""
        steps = []
        for path in (self.home(0) / "tmp").glob("musicgpt-logs-*/metrics.jsonl"):
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError, KeyError):  # a line being written
                    steps.append(json.loads(line)["step"])
        return steps

    def processes(self) -> list[int]:
        """Live processes started on the VM's workers."""
        return vm_processes(self.state / NAME)


def wait_until(condition, what: str, timeout: float = TIMEOUT_S, every: float = 0.2, proc=None):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"relaunch.sh exited with status {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:g} s")
        time.sleep(every)
    return value


def test_create_setup_train_preempt_relaunch_resume_sample_teardown(gcs, synthetic_benchmark: BenchmarkData,
                                                                     tmp_path):  # fmt: skip
    data, workdir = f"gs://{gcs.bucket}/lifecycle/data", f"gs://{gcs.bucket}/lifecycle/runs/{NAME}"
    cloud = Cloud(tmp_path / "standin", gcs.env)
    cloud.state.mkdir()
    prepared = subprocess.run(
        [sys.executable, str(REPO / "data" / "prepare.py"), "--benchmark", synthetic_benchmark.source,
         "--data_dir", data],
        env={**cloud.env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    train_flags = ["--config", "jsb", "--data_dir", data, "--workdir", workdir, "--",
                   "--dataset", synthetic_benchmark.dataset, *TRAIN_PY_FLAGS]  # fmt: skip
    fs = filesystem(gcs)
    relaunch = None
    try:
        cloud.run("create.sh", "--accelerator_type", "v4-16")
        assert cloud.run("status.sh") == f"{NAME}: READY\nworker 0: not-set-up\nworker 1: not-set-up\n"
        cloud.run("setup.sh")
        for worker in (0, 1):
            pip = (cloud.home(worker) / "musicgpt" / ".venv" / "pip-calls.log").read_text().splitlines()
            assert pip[-1] == "install --quiet -e .[tpu]"
            assert (cloud.home(worker) / "musicgpt" / "train.py").is_file()  # the checkout, unpacked

        cloud.run("train.sh", *train_flags)
        first = wait_until(lambda: checkpoint_entries(fs, workdir)[0], "committed checkpoint")[0]
        wait_until(lambda: max(cloud.logged_steps(), default=0) > first, "step after the checkpoint")
        assert cloud.gcloud("standin-preempt", NAME).returncode == 0
        assert not cloud.processes()
        last_before = max(cloud.logged_steps())
        resume_from = max(checkpoint_entries(fs, workdir)[0])
        assert last_before < STEPS, "training finished before the preemption: raise STEPS"
        assert cloud.run("status.sh") == f"{NAME}: PREEMPTED\n"

        started, started_at = time.monotonic(), time.time()
        relaunch = cloud.start("relaunch.sh", "--poll_seconds", "1", "--max_restarts", "2", *train_flags,
                               log=tmp_path / "relaunch.log")  # fmt: skip
        wait_until(lambda: "setting up" in (tmp_path / "relaunch.log").read_text(), "setup", proc=relaunch)
        new = wait_until(cloud.logged_steps, "first step after the relaunch", every=0.05, proc=relaunch)
        to_first_step = time.monotonic() - started
        train_started = re.search(r"=== (\S+) train.sh starts train.py", cloud.train_log(0))[1]
        to_train_py = datetime.datetime.fromisoformat(train_started).timestamp() - started_at  # whole seconds
        assert relaunch.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "relaunch.log").read_text()[-3000:]
        relaunched = (tmp_path / "relaunch.log").read_text()
        assert f"{NAME} is PREEMPTED: restart 1 of 2" in relaunched and "restart 2" not in relaunched
        assert "training finished on every worker" in relaunched
        log = cloud.train_log(0)
        assert f"resumed from {workdir}/checkpoints/{resume_from} at step {resume_from}" in log, log[-3000:]
        assert min(new) == resume_from + 1
        metrics = [json.loads(line)["step"] for line in fs.cat_file(f"{workdir}/metrics.jsonl").decode().splitlines()]
        assert max(metrics) == STEPS and set(range(1, STEPS + 1)) <= set(metrics)
        assert max(checkpoint_entries(fs, workdir)[0]) == STEPS
        for worker in (0, 1):
            assert (cloud.home(worker) / "musicgpt" / "logs" / f"train.worker{worker}.exit").read_text() == "0\n"

        cloud.run("sample.sh", "--workdir", workdir, "--out", str(tmp_path / "samples"), "--",
                  "--num_samples", "2", "--bars", "1")  # fmt: skip
        midi = sorted((tmp_path / "samples" / NAME).glob("*.mid"))
        assert len(midi) == 2, sorted((tmp_path / "samples").rglob("*"))

        cloud.run("teardown.sh")
        assert cloud.run("status.sh") == f"{NAME}: MISSING\n"
        assert not (cloud.state / NAME).exists() and not cloud.processes()
    finally:
        if relaunch is not None and relaunch.poll() is None:
            os.killpg(relaunch.pid, 9)
        if (cloud.state / NAME).exists():
            cloud.gcloud("compute", "tpus", "tpu-vm", "delete", NAME, "--quiet")

    redone = last_before - resume_from
    print(f"\nsteps redone after the preemption: {redone} (last logged step {last_before}, resumed from {resume_from},"
          f" checkpoint every {CHECKPOINT_EVERY})")  # fmt: skip
    print(f"seconds from relaunch.sh to the first new step: {to_first_step:.1f} (train.py started after"
          f" {to_train_py:.0f} s: teardown, create, setup)")  # fmt: skip
    assert 0 < redone <= 2 * CHECKPOINT_EVERY


def test_storage_commands_and_setup_data_from_on_the_emulator(gcs, synthetic_benchmark: BenchmarkData, tmp_path):
    """The upload in docs/TPU.md (gcloud storage rsync), then setup.sh --data_from copying it onto every worker."""
    cloud = Cloud(tmp_path / "standin", gcs.env)
    cloud.state.mkdir()
    data, local = f"gs://{gcs.bucket}/storage/data", Path(synthetic_benchmark.data_dir)
    files = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file())
    try:
        assert cloud.gcloud("storage", "rsync", "--recursive", str(local), data).returncode == 0
        listed = cloud.gcloud("storage", "ls", data)
        assert listed.stdout.split() == [f"{data}/{synthetic_benchmark.dataset}/"], listed.stderr
        cloud.run("create.sh")
        cloud.run("setup.sh", "--data_from", data)
        for worker in (0, 1):
            records = cloud.home(worker) / "musicgpt" / "data" / "records"
            assert sorted(p.relative_to(records) for p in records.rglob("*") if p.is_file()) == files
            assert all((records / f).read_bytes() == (local / f).read_bytes() for f in files)
        cloud.run("teardown.sh")
        assert cloud.gcloud("storage", "rm", "--recursive", data).returncode == 0
        assert cloud.gcloud("storage", "ls", data).returncode != 0
    finally:
        if (cloud.state / NAME).exists():
            cloud.gcloud("compute", "tpus", "tpu-vm", "delete", NAME, "--quiet")
