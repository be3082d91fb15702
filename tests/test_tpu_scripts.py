"""The tpu/*.sh scripts, run against a fake gcloud that records its arguments and plays canned answers.

The fake is the first `gcloud` on PATH. Each call appends its argv to the file `calls`. `describe`
answers the next line of the file `states` (the last line repeats; NOT_FOUND fails the way gcloud does), and
the workers' probe (an ssh whose command asks for "not-set-up") answers the next line of `probes`, where `;`
separates the lines of different workers. Everything else succeeds silently.
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu"
SCRIPTS = ["create.sh", "setup.sh", "train.sh", "sample.sh", "status.sh", "teardown.sh", "relaunch.sh"]
TARGET = ["--project", "my-proj", "--zone", "us-central2-b"]
LOCATION = ["--zone=us-central2-b", "--project=my-proj"]

# In bash, not Python: it runs a few hundred times, and interpreter start-up would dominate the suite.
# Each argument is followed by \x1f (unit separator), each call by \x1e (record separator).
FAKE_GCLOUD = r"""#!/usr/bin/env bash
here=$(dirname "$0")
{ printf '%s\x1f' "$@"; printf '\x1e'; } >> "$here/calls"
next_answer() {  # the first line of file $1 (or $2 if none); the last line stays for later calls
  if [ -s "$here/$1" ]; then
    head -n 1 "$here/$1"
    if [ "$(wc -l < "$here/$1")" -gt 1 ]; then
      tail -n +2 "$here/$1" > "$here/$1.tmp" && mv "$here/$1.tmp" "$here/$1"
    fi
  else
    echo "$2"
  fi
}
case "$*" in
  *" describe "*)
    state=$(next_answer states READY)
    if [ "$state" = NOT_FOUND ]; then
      echo "ERROR: (gcloud.compute.tpus.describe) NOT_FOUND: Resource was not found" >&2
      exit 1
    fi
    echo "$state" ;;
  *" ssh "*not-set-up*) next_answer probes "worker 0: running" | tr ';' '\n' ;;
  *" scp "*) if [ -n "${FAKE_KEEP_SCP:-}" ]; then cp "$5" "$FAKE_KEEP_SCP"; fi ;;
esac
"""


class FakeGcloud:
    def __init__(self, tmp_path: Path):
        self.dir = tmp_path / "gcloud"
        self.dir.mkdir()
        gcloud = self.dir / "gcloud"
        gcloud.write_text(FAKE_GCLOUD)
        gcloud.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
        self.env["PATH"] = f"{self.dir}{os.pathsep}{os.environ['PATH']}"
        self.cwd = tmp_path

    def answer(self, name: str, *lines: str):
        (self.dir / name).write_text("".join(line + "\n" for line in lines))

    def run(self, script: str, *args: str, env: dict | None = None, check: bool = True):
        proc = subprocess.run(
            [str(TPU / script), *args],
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def calls(self) -> list[list[str]]:
        log = self.dir / "calls"
        records = log.read_text().split("\x1e")[:-1] if log.exists() else []
        return [record.split("\x1f")[:-1] for record in records]

    def clear(self):
        (self.dir / "calls").unlink(missing_ok=True)


@pytest.fixture
def gcloud(tmp_path):
    return FakeGcloud(tmp_path)


def option(argv: list[str], name: str) -> str:
    """The value of `--name=value` in argv (each such flag must appear once)."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def kind(argv: list[str]) -> str:
    """A short name for a recorded call: 'tpu-vm create', 'tpu-vm ssh probe', 'queued-resources delete'..."""
    name = " ".join(argv[2:4])
    if argv[3] == "ssh":
        command = option(argv, "--command")
        name += " " + next(
            word
            for word, marker in [("probe", "not-set-up"), ("train", "train.py"), ("setup", "pip install")]
            if marker in command
        )
    return name


def test_scripts_are_executable_and_common_is_not():
    for script in SCRIPTS:
        assert os.access(TPU / script, os.X_OK), script
    assert not os.access(TPU / "common.sh", os.X_OK)


def test_create_setup_train_sample_teardown_commands(gcloud):
    gcloud.run("create.sh", *TARGET, "--accelerator_type", "v4-32", "--name", "run1")
    gcloud.run("setup.sh", *TARGET, "--name", "run1")
    gcloud.run(
        "train.sh",
        *TARGET,
        "--name",
        "run1",
        "--bucket",
        "gs://my-bucket",
        "--config",
        "small",
        "--",
        "--steps",
        "1000",
        "--config.optimizer.lr=3e-4",
    )
    gcloud.run(
        "sample.sh",
        *TARGET,
        "--name",
        "run1",
        "--bucket",
        "my-bucket",
        "--out",
        "got",
        "--",
        "--num_samples",
        "2",
    )
    gcloud.run("teardown.sh", *TARGET, "--name", "run1")
    create, scp, setup, train, sample, fetch, delete = gcloud.calls()

    assert create == [
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "run1",
        *LOCATION,
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
    ]

    assert scp[:5] == ["compute", "tpus", "tpu-vm", "scp", scp[4]]
    assert scp[4].endswith(".tar.gz") and scp[5] == "run1:musicgpt.tar.gz"
    assert scp[6:] == [*LOCATION, "--worker=all", "--quiet"]
    assert setup[:8] == ["compute", "tpus", "tpu-vm", "ssh", "run1", *LOCATION, "--worker=all"]
    command = option(setup, "--command")
    assert "tar -xzf $HOME/musicgpt.tar.gz" in command
    assert '.venv/bin/python -m pip install --quiet -e ".[tpu]"' in command

    assert train[:8] == ["compute", "tpus", "tpu-vm", "ssh", "run1", *LOCATION, "--worker=all"]
    command = option(train, "--command")
    assert (
        "train.py --config small --data_dir gs://my-bucket/data --workdir gs://my-bucket/runs/run1"
        " --steps 1000 --config.optimizer.lr=3e-4"
    ) in command
    assert "setsid nohup" in command and "logs/train.worker$id" in command
    assert "--coordinator" not in command  # jax.distributed.initialize() finds the TPU hosts by itself

    assert sample[:8] == ["compute", "tpus", "tpu-vm", "ssh", "run1", *LOCATION, "--worker=0"]
    assert "sample.py --workdir gs://my-bucket/runs/run1 --out samples/run1 --num_samples 2" in option(
        sample, "--command"
    )
    assert fetch == [
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        "--recurse",
        "run1:musicgpt/samples/run1",
        "got",
        *LOCATION,
        "--worker=0",
        "--quiet",
    ]
    assert (gcloud.cwd / "got").is_dir()

    assert delete == ["compute", "tpus", "tpu-vm", "delete", "run1", *LOCATION, "--quiet"]


def test_setup_packs_the_working_tree(gcloud, tmp_path):
    """The tarball sent to the workers holds this checkout's files, not .venv (caught before deletion)."""
    keep = tmp_path / "kept.tar.gz"
    gcloud.run("setup.sh", *TARGET, env={"FAKE_KEEP_SCP": str(keep)})
    names = subprocess.run(["tar", "-tzf", str(keep)], capture_output=True, text=True, check=True).stdout.split()
    assert "tpu/setup.sh" in names and "pyproject.toml" in names
    assert not any(name.startswith(".venv") for name in names)


def test_setup_from_a_git_repository(gcloud):
    gcloud.run(
        "setup.sh",
        *TARGET,
        "--repo",
        "https://example.com/me/musicgpt-jax.git",
        "--ref",
        "v1.0",
        "--python",
        "3.11",
    )
    (setup,) = gcloud.calls()  # nothing to copy
    command = option(setup, "--command")
    assert "git clone --quiet https://example.com/me/musicgpt-jax.git $HOME/musicgpt" in command
    assert "fetch --quiet origin v1.0" in command and "uv venv --quiet --seed --python 3.11 .venv" in command


def test_queued_spot_create_and_teardown(gcloud):
    gcloud.run(
        "create.sh",
        *TARGET,
        "--accelerator_type",
        "v5litepod-16",
        "--queued",
        "--spot",
        "--",
        "--network=my-net",
    )
    gcloud.run("teardown.sh", *TARGET, "--queued")
    create, delete = gcloud.calls()
    assert create == [
        "compute",
        "tpus",
        "queued-resources",
        "create",
        "musicgpt",
        "--node-id=musicgpt",
        *LOCATION,
        "--accelerator-type=v5litepod-16",
        "--runtime-version=v2-alpha-tpuv5-lite",
        "--spot",
        "--network=my-net",
    ]
    assert delete == [
        "compute",
        "tpus",
        "queued-resources",
        "delete",
        "musicgpt",
        *LOCATION,
        "--force",
        "--quiet",
    ]


@pytest.mark.parametrize(
    "accelerator, version",
    [
        ("v6e-8", "v2-alpha-tpuv6e"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v5litepod-8", "v2-alpha-tpuv5-lite"),
        ("v4-8", "tpu-ubuntu2204-base"),
        ("v3-8", "tpu-ubuntu2204-base"),
    ],
)
def test_runtime_version_follows_the_accelerator(gcloud, accelerator, version):
    out = gcloud.run("create.sh", *TARGET, "--accelerator_type", accelerator, "--dry_run").stdout
    assert f"--version={version}" in shlex.split(out)
    out = gcloud.run(
        "create.sh", *TARGET, "--accelerator_type", accelerator, "--runtime_version=mine", "--dry_run"
    ).stdout
    assert "--version=mine" in shlex.split(out)


def test_environment_stands_in_for_flags(gcloud):
    env = {
        "TPU_PROJECT": "my-proj",
        "TPU_ZONE": "us-central2-b",
        "TPU_ACCELERATOR_TYPE": "v6e-8",
        "TPU_NAME": "envtpu",
    }
    gcloud.run("create.sh", env=env)
    gcloud.run("create.sh", "--name=flagtpu", "--zone", "europe-west4-a", env=env)  # flags beat the environment
    from_env, from_flags = gcloud.calls()
    assert from_env[4] == "envtpu" and option(from_env, "--accelerator-type") == "v6e-8"
    assert from_flags[4] == "flagtpu" and option(from_flags, "--zone") == "europe-west4-a"


@pytest.mark.parametrize(
    "script, args",
    [
        ("create.sh", ["--queued", "--spot"]),
        ("setup.sh", []),
        ("train.sh", ["--bucket", "b", "--", "--note", 'it\'s a "test" $HOME']),
        ("sample.sh", ["--bucket", "b", "--worker", "all"]),
        ("teardown.sh", []),
        ("status.sh", []),
    ],
)
def test_dry_run_prints_the_commands_and_runs_nothing(gcloud, script, args):
    dry = gcloud.run(script, "--dry_run", *TARGET, *args).stdout.splitlines()
    assert gcloud.calls() == []
    assert dry and all(line.startswith("gcloud compute tpus ") for line in dry)
    printed = [shlex.split(line)[1:] for line in dry]
    gcloud.run(script, *TARGET, *args)
    ran = gcloud.calls()
    if script == "setup.sh":  # the tarball's temporary path differs between the two
        for argv in printed + ran:
            argv[4] = "TARBALL" if argv[3] == "scp" else argv[4]
    assert printed == ran


def test_relaunch_dry_run_prints_a_poll_and_a_recovery(gcloud):
    dry = gcloud.run("relaunch.sh", *TARGET, "--bucket", "b", "--dry_run").stdout.splitlines()
    assert gcloud.calls() == []
    assert [kind(shlex.split(line)[1:]) for line in dry] == [
        "tpu-vm describe",
        "tpu-vm ssh probe",
        "tpu-vm delete",
        "tpu-vm create",
        "tpu-vm scp",
        "tpu-vm ssh setup",
        "tpu-vm ssh train",
    ]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("missing", ["project", "zone"])
def test_missing_project_or_zone_is_one_line_and_exit_2(gcloud, script, missing):
    env = {"TPU_PROJECT": "my-proj", "TPU_ZONE": "us-central2-b"}
    del env[f"TPU_{missing.upper()}"]
    proc = gcloud.run(
        script,
        "--bucket=b" if script in ("train.sh", "sample.sh", "relaunch.sh") else "--dry_run",
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and f"--{missing}" in proc.stderr and f"TPU_{missing.upper()}" in proc.stderr
    assert gcloud.calls() == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frobnicate"], "unknown flag --frobnicate"),
        (["--zone"], "--zone needs a value"),
        (["--name", "--zone=z"], "--name needs a value"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(gcloud, args, message):
    proc = gcloud.run("create.sh", "--project", "p", *args, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr


def test_train_needs_a_gcs_workdir(gcloud):
    proc = gcloud.run("train.sh", *TARGET, check=False)
    assert proc.returncode == 2 and "--bucket" in proc.stderr
    proc = gcloud.run("train.sh", *TARGET, "--data_dir", "gs://b/d", "--workdir", "/tmp/run", check=False)
    assert proc.returncode == 2 and "gs://" in proc.stderr
    assert gcloud.calls() == []


def test_help(gcloud):
    for script in SCRIPTS:
        proc = gcloud.run(script, "--help")
        assert proc.stdout.startswith(f"Usage: tpu/{script}"), script
    assert gcloud.calls() == []


def test_status_shows_state_and_workers(gcloud):
    gcloud.answer("states", "READY")
    gcloud.answer("probes", "worker 0: running;    step 100 loss 1.5;worker 1: running")
    out = gcloud.run("status.sh", *TARGET).stdout
    assert out.splitlines()[0] == "musicgpt: READY"
    assert "worker 1: running" in out and "step 100" in out
    assert "tail -n 5 $p.log" in option(gcloud.calls()[-1], "--command")

    gcloud.clear()
    gcloud.answer("states", "PREEMPTED")
    assert gcloud.run("status.sh", *TARGET, "--lines=9").stdout == "musicgpt: PREEMPTED\n"
    assert [kind(c) for c in gcloud.calls()] == ["tpu-vm describe"]  # no ssh to a VM that is down

    gcloud.answer("states", "NOT_FOUND")
    assert gcloud.run("status.sh", *TARGET, "--queued").stdout == "musicgpt: MISSING\n"
    assert option(gcloud.calls()[-1], "--format") == "value(state.state)"


@pytest.mark.parametrize("queued", [False, True])
def test_relaunch_recovers_from_preemption_then_stops(gcloud, queued):
    up, down = ("ACTIVE", "SUSPENDED") if queued else ("READY", "PREEMPTED")
    gcloud.answer("states", up, down, "WAITING_FOR_RESOURCES", up, up, up)
    gcloud.answer(
        "probes",
        "worker 0: running;worker 1: running",
        "worker 0: not-set-up;worker 1: not-set-up",
        "worker 0: running;worker 1: exited 0",
        "worker 0: exited 0;worker 1: exited 0",
    )
    proc = gcloud.run(
        "relaunch.sh",
        *TARGET,
        *(["--queued", "--spot"] if queued else ["--spot"]),
        "--bucket",
        "b",
        "--poll_seconds",
        "0",
        "--",
        "--steps",
        "500",
    )
    vm = "queued-resources" if queued else "tpu-vm"
    assert [kind(c) for c in gcloud.calls()] == [
        f"{vm} describe",
        "tpu-vm ssh probe",  # running
        f"{vm} describe",
        f"{vm} delete",
        f"{vm} create",  # preempted: recreate
        f"{vm} describe",  # still coming up: wait
        f"{vm} describe",
        "tpu-vm ssh probe",
        "tpu-vm scp",
        "tpu-vm ssh setup",
        "tpu-vm ssh train",  # fresh VM
        f"{vm} describe",
        "tpu-vm ssh probe",  # one worker done, one running: wait
        f"{vm} describe",
        "tpu-vm ssh probe",  # all done: stop
    ]
    calls = gcloud.calls()
    assert "--spot" in calls[4]
    assert "--workdir gs://b/runs/musicgpt --steps 500" in option(calls[10], "--command")
    assert "restart 1 of 20" in proc.stdout and "training finished" in proc.stdout


def test_relaunch_creates_a_missing_vm_and_can_tear_down_when_done(gcloud):
    gcloud.answer("states", "NOT_FOUND", "CREATING", "READY", "READY")
    gcloud.answer("probes", "worker 0: not-set-up", "worker 0: exited 0")
    gcloud.run("relaunch.sh", *TARGET, "--bucket", "b", "--poll_seconds=0", "--teardown_when_done")
    assert [kind(c) for c in gcloud.calls()] == [
        "tpu-vm describe",
        "tpu-vm create",
        "tpu-vm describe",
        "tpu-vm describe",
        "tpu-vm ssh probe",
        "tpu-vm scp",
        "tpu-vm ssh setup",
        "tpu-vm ssh train",
        "tpu-vm describe",
        "tpu-vm ssh probe",
        "tpu-vm delete",
    ]


def test_relaunch_restarts_a_crashed_run_until_max_restarts(gcloud):
    gcloud.answer("states", "READY")
    gcloud.answer("probes", "worker 0: exited 1")
    proc = gcloud.run(
        "relaunch.sh", *TARGET, "--bucket", "b", "--poll_seconds", "0", "--max_restarts", "2", check=False
    )
    assert proc.returncode == 1 and "restarts are used up" in proc.stderr
    assert [kind(c) for c in gcloud.calls()].count("tpu-vm ssh train") == 2


def test_relaunch_stops_when_the_vm_is_deleted_under_it(gcloud):
    gcloud.answer("states", "READY", "NOT_FOUND")
    proc = gcloud.run("relaunch.sh", *TARGET, "--bucket", "b", "--poll_seconds", "0", check=False)
    assert proc.returncode == 1 and "no longer exists" in proc.stderr
    assert "tpu-vm create" not in [kind(c) for c in gcloud.calls()]


def test_remote_train_and_probe_commands_work_in_a_shell(gcloud, tmp_path):
    """Runs train.sh's and status.sh's worker commands in a local shell, with a fake train.py."""
    home = tmp_path / "home"
    project = home / "musicgpt"
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / ".setup-done").touch()
    python = project / ".venv" / "bin" / "python"
    # The fake train.py records its arguments, then exits with $FAKE_EXIT after $FAKE_SLEEP seconds.
    python.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$HOME/args"\nsleep "${FAKE_SLEEP:-0}"\nexit "${FAKE_EXIT:-0}"\n'
    )
    python.chmod(0o755)
    curl = gcloud.dir / "curl"  # the metadata server's answer: this is worker 3
    curl.write_text("#!/bin/sh\necho 3\n")
    curl.chmod(0o755)
    tricky = 'it\'s a "test" $HOME `x`'
    gcloud.run("train.sh", *TARGET, "--bucket", "b", "--", "--note", tricky)
    gcloud.run("status.sh", *TARGET, "--lines", "3")
    train_cmd, probe_cmd = option(gcloud.calls()[0], "--command"), option(gcloud.calls()[-1], "--command")

    def remote(command, **env):
        return subprocess.run(
            ["bash", "-c", command],
            env={**gcloud.env, "HOME": str(home), **env},
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout

    def wait_for(path):
        for _ in range(200):
            if path.exists() and path.read_text():
                return
            time.sleep(0.05)
        raise AssertionError(f"{path} never appeared")

    assert remote(probe_cmd).splitlines()[0] == "worker 3: idle"
    assert "worker 3: started" in remote(train_cmd, FAKE_EXIT="7")
    wait_for(project / "logs" / "train.worker3.exit")
    assert (home / "args").read_text().splitlines() == [
        "-u",
        "train.py",
        "--config",
        "maestro",
        "--data_dir",
        "gs://b/data",
        "--workdir",
        "gs://b/runs/musicgpt",
        "--note",
        tricky,
    ]
    assert remote(probe_cmd).splitlines()[0] == "worker 3: exited 7"
    assert "train.sh starts train.py" in remote(probe_cmd)  # the log's tail

    # A second start stops the first (its whole process group) before it begins.
    remote(train_cmd, FAKE_SLEEP="60")
    assert remote(probe_cmd).splitlines()[0] == "worker 3: running"
    # The probe asks "alive?" before it reads the .exit file: read the other way round, a run that ends between
    # the two looks is "idle", and relaunch.sh restarts it. Alive wins over an .exit file, so the order shows.
    (project / "logs" / "train.worker3.exit").write_text("0\n")
    assert remote(probe_cmd).splitlines()[0] == "worker 3: running"
    first = int((project / "logs" / "train.worker3.pid").read_text())
    remote(train_cmd, FAKE_SLEEP="60")
    second = int((project / "logs" / "train.worker3.pid").read_text())
    assert second != first
    alive = subprocess.run(["ps", "-o", "stat=", "--sid", str(first)], capture_output=True, text=True).stdout
    assert all(stat.startswith("Z") for stat in alive.split())  # gone, or zombies nobody reaped yet
    subprocess.run(["kill", "-TERM", "--", f"-{second}"], check=True)


def test_relaunch_rejects_a_bad_step_flag_before_creating_anything(gcloud):
    proc = gcloud.run("relaunch.sh", *TARGET, check=False)  # no bucket: train.sh would fail after create
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--bucket" in proc.stderr
    assert gcloud.calls() == []


def test_shellcheck_is_clean():
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    scripts = sorted(str(p) for p in TPU.glob("*.sh"))
    proc = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
