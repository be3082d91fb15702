"""gs:// end to end, on a local Cloud Storage emulator (the `gcs` fixture): the tools without the cloud extra,
prepare writing to a bucket, training killed mid-run and mid-save then resumed, two processes into one bucket
workdir, sampling and evaluating from it, a damaged checkpoint, and a bucket that goes away mid-run.

Every training run here is compared with a local uninterrupted run of the same config: the final parameters,
optimizer state, step and data-iterator state must be bitwise equal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY_OVERRIDES, BenchmarkData
from gcs_emulator import StorageEmulator, free_port

from musicgpt_jax import cloud, configs
from musicgpt_jax.saved_run import load_config_dict, restore_state

pytestmark = pytest.mark.slow

STEPS = 24
TINY = [
    *TINY_OVERRIDES,
    "model.dropout=0.0",
    "train.eval_batches=1",
    "train.checkpoint_every=4",
    "train.async_checkpoints=true",
]
TIMEOUT_S = 300


def tool_env(gcs: StorageEmulator, devices: int = 1) -> dict[str, str]:
    return {
        **os.environ,
        **gcs.env,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }


def run(args: list[str], env: dict[str, str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def train_args(workdir: str, data_dir: str, dataset: str, steps: int = STEPS) -> list[str]:
    args = [str(REPO / "train.py"), "--config", "jsb", "--workdir", workdir, "--data_dir", data_dir]
    return [*args, "--dataset", dataset, "--steps", str(steps), "--no_progress", *[f"--config.{o}" for o in TINY]]


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A tool in its own process group, so that SIGKILL reaches all of it."""
    return subprocess.Popen(
        [sys.executable, *args], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def filesystem(emulator: StorageEmulator):
    """A gcsfs client of `emulator` (its own instance: gcsfs caches clients, and tests use two emulators)."""
    import gcsfs

    return gcsfs.GCSFileSystem(token="anon", endpoint_url=emulator.url, skip_instance_cache=True)


def checkpoint_entries(fs, workdir: str) -> tuple[list[int], list[str]]:
    """(committed steps, names of step folders not committed yet) under WORKDIR/checkpoints."""
    fs.invalidate_cache()
    root = workdir.removeprefix("gs://") + "/checkpoints"
    try:
        names = [Path(p).name for p in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return [], []
    committed, pending = [], []
    for name in names:
        step = name.split(".")[0]
        if step.isdigit() and fs.exists(f"{root}/{name}/commit_success.txt") and name == step:
            committed.append(int(step))
        else:
            pending.append(name)
    return sorted(committed), pending


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"train.py ended before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            kill9(proc)
            pytest.fail(f"no {what} within {timeout:g} s")
        time.sleep(0.05)


def final_state(workdir: str | Path) -> tuple:
    cfg = configs.Config.from_dict(load_config_dict(workdir)[0])
    return restore_state(workdir, cfg)


def assert_same_final_state(a: str | Path, b: str | Path, bitwise: bool = True) -> None:
    """Both workdirs end at STEPS with the same data-iterator state and train state: bitwise, or (runs whose
    gradients were summed across processes in another order) to float32 rounding."""
    import jax

    (state_a, data_a, step_a), (state_b, data_b, step_b) = final_state(a), final_state(b)
    assert step_a == step_b == STEPS and data_a == data_b
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        if bitwise:
            assert x.tobytes() == y.tobytes()
        else:
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def stderr_lines(text: str) -> list[str]:
    """What a tool said, without TensorStore's note that it uses the emulator's test token."""
    return [line for line in text.splitlines() if line.strip() and "GOOGLE_AUTH_TOKEN_FOR_TESTING" not in line]


@pytest.fixture(scope="module")
def gs_data(gcs, synthetic_benchmark: BenchmarkData) -> str:
    """The synthetic benchmark, prepared straight into the bucket by data/prepare.py."""
    data_dir = f"gs://{gcs.bucket}/data"
    done = run([str(REPO / "data" / "prepare.py"), "--benchmark", synthetic_benchmark.source, "--data_dir", data_dir],
               tool_env(gcs))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {data_dir}/{synthetic_benchmark.dataset}" in done.stdout
    again = run([str(REPO / "data" / "prepare.py"), "--benchmark", synthetic_benchmark.source, "--data_dir", data_dir],
                tool_env(gcs))  # fmt: skip
    assert "up to date" in again.stdout
    return data_dir


@pytest.fixture(scope="module")
def local_run(gcs, synthetic_benchmark: BenchmarkData, tmp_path_factory) -> Path:
    """The reference: the same training, local data and workdir, never interrupted."""
    workdir = tmp_path_factory.mktemp("local_run")
    done = run(train_args(str(workdir), synthetic_benchmark.data_dir, synthetic_benchmark.dataset), tool_env(gcs))
    assert done.returncode == 0, done.stderr[-2000:]
    return workdir


@pytest.fixture(scope="module")
def gs_run(gcs, gs_data: str, synthetic_benchmark: BenchmarkData) -> str:
    """A bucket workdir trained to STEPS by three lives: SIGKILL after its first checkpoint, SIGKILL while an
    asynchronous save is being written, then a run to the end."""
    workdir, fs, env = f"gs://{gcs.bucket}/runs/killed", filesystem(gcs), tool_env(gcs)
    args = train_args(workdir, gs_data, synthetic_benchmark.dataset)

    first = start(args, env)
    wait_for(lambda: checkpoint_entries(fs, workdir)[0], first, "first checkpoint")
    kill9(first)

    second = start(args, env)
    before = checkpoint_entries(fs, workdir)[0][-1]

    def saving() -> bool:
        committed, pending = checkpoint_entries(fs, workdir)
        return bool(pending) and (not committed or committed[-1] >= before)

    wait_for(saving, second, "save in flight")
    kill9(second)
    assert checkpoint_entries(fs, workdir)[1], "the kill came after the save had finished"

    last = run(args, env)
    assert last.returncode == 0, last.stderr[-2000:]
    assert f"resumed from {workdir}/checkpoints/" in last.stderr
    return workdir


def test_a_gs_path_without_the_cloud_extra_is_one_line_in_every_tool(tmp_path):
    no_gcsfs = tmp_path / "site"
    (no_gcsfs / "gcsfs").mkdir(parents=True)
    (no_gcsfs / "gcsfs" / "__init__.py").write_text("raise ImportError(\"No module named 'gcsfs'\")\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{no_gcsfs}{os.pathsep}{REPO}"}
    tools = {
        "prepare": [str(REPO / "data" / "prepare.py"), "--data_dir", "gs://b/data"],
        "train": [str(REPO / "train.py"), "--workdir", "gs://b/run", "--data_dir", "gs://b/data"],
        "sample": [str(REPO / "sample.py"), "--workdir", "gs://b/run", "--out", str(tmp_path / "out")],
        "evaluate": ["-m", "musicgpt_jax.evaluate", "--workdir", "gs://b/run"],
        "stats": ["-m", "musicgpt_jax.stats", "gs://b/samples"],
    }
    for tool, args in tools.items():
        done = run(args, env, timeout=120)
        lines = stderr_lines(done.stderr)
        assert done.returncode == 2, (tool, done.stderr[-1000:])
        assert len(lines) == 1 and "gs://b/" in lines[0] and 'pip install "musicgpt-jax[cloud]"' in lines[0], (
            tool,
            lines,
        )


def test_append_and_move_on_the_object_store(gcs):
    from etils import epath

    root = epath.Path(f"gs://{gcs.bucket}/unit")
    for chunk in (b"one\n", b"two\n", b"", b"three\n"):
        cloud.append_bytes(root / "log.txt", chunk)
    assert (root / "log.txt").read_bytes() == b"one\ntwo\nthree\n"
    (root / "folder" / "a").mkdir(parents=True, exist_ok=True)
    (root / "folder" / "a" / "x.bin").write_bytes(bytes(range(256)))
    (root / "folder" / "y.txt").write_text("y")
    cloud.move(root / "folder", root / "moved")
    assert cloud.list_files(root / "moved") == ["a/x.bin", "y.txt"]
    assert (root / "moved" / "a" / "x.bin").read_bytes() == bytes(range(256))
    assert cloud.list_files(root) == ["log.txt", "moved/a/x.bin", "moved/y.txt"]  # no temporary objects left


def test_killed_mid_run_and_mid_save_in_gs_then_resumed_equals_a_local_uninterrupted_run(gs_run, local_run, gcs):
    assert_same_final_state(gs_run, local_run)
    assert checkpoint_entries(filesystem(gcs), gs_run) == ([STEPS - 8, STEPS - 4, STEPS], [])  # keep-3, no leftovers
    steps = [json.loads(line)["step"] for line in (Path(local_run) / "metrics.jsonl").read_text().splitlines()]
    from etils import epath

    remote = [json.loads(line) for line in (epath.Path(gs_run) / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in remote if "loss" in r} == {s for s in steps}  # every step logged (some twice)
    assert any(p.name.startswith("events.out.tfevents") for p in (epath.Path(gs_run) / "tensorboard").iterdir())


def test_sample_and_evaluate_read_a_gs_workdir_like_its_local_copy(gs_run, gcs, tmp_path, synthetic_benchmark):
    copy = tmp_path / "copy"
    filesystem(gcs).get(gs_run.removeprefix("gs://") + "/", str(copy), recursive=True)
    env = tool_env(gcs)
    outputs = {}
    for name, workdir in (("gs", gs_run), ("local", str(copy))):
        out = tmp_path / f"samples_{name}"
        done = run([str(REPO / "sample.py"), "--workdir", workdir, "--out", str(out), "--num_samples", "1",
                    "--bars", "2", "--seed", "3"], env)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        evaluated = run(["-m", "musicgpt_jax.evaluate", "--workdir", workdir, "--data_dir",
                         synthetic_benchmark.data_dir, "--dataset", synthetic_benchmark.dataset], env)  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
        scores = {k: v for k, v in json.loads(evaluated.stdout).items() if k != "workdir"}
        outputs[name] = ((out / "sample_00.mid").read_bytes(), scores)
    assert outputs["gs"] == outputs["local"]


def test_a_damaged_latest_checkpoint_in_gs_falls_back_in_one_line_and_is_kept(
    gs_run, local_run, gcs, synthetic_benchmark
):
    fs, env = filesystem(gcs), tool_env(gcs)
    workdir = f"gs://{gcs.bucket}/runs/damaged"
    fs.copy(gs_run.removeprefix("gs://") + "/", workdir.removeprefix("gs://"), recursive=True)
    fs.invalidate_cache()
    state = f"{workdir.removeprefix('gs://')}/checkpoints/{STEPS}/state"
    sizes = fs.find(state, detail=True)
    largest = max(sizes, key=lambda name: sizes[name]["size"])
    data = bytearray(fs.cat_file(largest))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(largest, bytes(data))

    done = run(train_args(workdir, f"gs://{gcs.bucket}/data", synthetic_benchmark.dataset), env)
    assert done.returncode == 0, done.stderr[-2000:]
    notes = [line for line in stderr_lines(done.stderr) if "checkpoint unreadable" in line]
    quarantined = f"{workdir}/corrupt_checkpoints/{STEPS}"
    assert len(notes) == 1 and f"moved to {quarantined}" in notes[0] and f"falling back to step {STEPS - 4}" in notes[0]
    fs.invalidate_cache()
    kept = largest.replace(f"checkpoints/{STEPS}/", f"corrupt_checkpoints/{STEPS}/")
    assert fs.cat_file(kept) == bytes(data)  # nothing the user may want is lost
    assert_same_final_state(workdir, local_run)  # retrained from the step before to the same end


def test_two_processes_train_into_one_gs_workdir_then_one_resumes(gcs, gs_data, local_run, synthetic_benchmark):
    workdir, port = f"gs://{gcs.bucket}/runs/two_hosts", free_port()
    args = train_args(workdir, gs_data, synthetic_benchmark.dataset, steps=8)
    workers = [
        start(
            [*args, "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)],
            tool_env(gcs, devices=1),
        )  # fmt: skip
        for i in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=TIMEOUT_S)
        assert worker.returncode == 0, err[-2000:]
    resumed = run(train_args(workdir, gs_data, synthetic_benchmark.dataset), tool_env(gcs))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {workdir}/checkpoints/8 at step 8" in resumed.stderr
    assert_same_final_state(workdir, local_run, bitwise=False)


def test_a_bucket_that_goes_away_mid_run_names_the_last_good_checkpoint_and_nothing_is_lost(
    gcs, tmp_path, synthetic_benchmark, local_run
):
    emulator = StorageEmulator(tmp_path / "objects", bucket="outage-test")
    emulator.start()
    try:
        env, fs = tool_env(emulator), filesystem(emulator)
        workdir = f"gs://{emulator.bucket}/run"  # the data stays local: this is about the checkpoints' bucket
        proc = start(train_args(workdir, synthetic_benchmark.data_dir, synthetic_benchmark.dataset), env)
        wait_for(lambda: checkpoint_entries(fs, workdir)[0], proc, "first checkpoint")
        os.killpg(proc.pid, signal.SIGSTOP)  # held still while the bucket goes away, so it is mid-run
        emulator.stop()
        os.killpg(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=TIMEOUT_S)
        lines = stderr_lines(err)
        assert proc.returncode == 1, err[-2000:]
        assert "could not save the checkpoint of step" in lines[-1] and "the last good checkpoint is step" in lines[-1]
        last_good = int(lines[-1].rsplit("step ", 1)[1])
        assert not [line for line in lines if line.startswith("Traceback")], err[-2000:]

        emulator.start()
        assert checkpoint_entries(fs, workdir)[0][-1] == last_good
        done = run(train_args(workdir, synthetic_benchmark.data_dir, synthetic_benchmark.dataset), env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"resumed from {workdir}/checkpoints/{last_good} at step {last_good}" in done.stderr
        fs.get(workdir.removeprefix("gs://") + "/", str(tmp_path / "copy"), recursive=True)
        assert_same_final_state(tmp_path / "copy", local_run)
    finally:
        emulator.stop()
