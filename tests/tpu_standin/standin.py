"""A `gcloud` stand-in that runs what tpu/*.sh send: a TPU VM of 2 workers as local folders, storage on the emulator.

`tests/tpu_standin/gcloud` (bash) execs this module with $MUSICGPT_STANDIN_PYTHON. State lives under
$MUSICGPT_STANDIN_STATE/NAME: vm.json (state, accelerator type, coordinator port) and one HOME per worker
(worker0/, worker1/). What it does, per command:

- `compute tpus tpu-vm create NAME`: state READY, empty worker homes, a free coordinator port, and per worker a
  stub `~/.local/bin/uv` (setup.sh would download uv from the internet): `uv venv DIR` makes DIR/bin/python, a
  wrapper of $MUSICGPT_STANDIN_PYTHON whose `-m pip ...` only records its arguments in DIR/pip-calls.log.
- `describe NAME --format=value(state)`: the state; NOT_FOUND (on stderr, exit 1) like gcloud when absent.
- `scp SRC NAME:DEST --worker=all|N` and `scp --recurse NAME:SRC DEST --worker=N`: copies into / out of homes.
- `ssh NAME --worker=all|N --command=CMD`: `bash -c CMD` per worker (side by side), with HOME and cwd the worker's
  home, TMPDIR inside it, the emulator's variables, MUSICGPT_COORDINATOR_ADDRESS=127.0.0.1:PORT,
  MUSICGPT_NUM_PROCESSES=2, MUSICGPT_PROCESS_ID=N, JAX_PLATFORMS=cpu, one XLA CPU device, and a PATH whose `curl`
  answers only the metadata server's agent-worker-number (nothing else is reachable) and whose `gcloud` is this one.
- `delete NAME`: SIGKILL to every process the VM's workers started (found by the MUSICGPT_STANDIN_VM variable they
  all inherit), then the folder goes.
- `storage cp|rsync|ls|rm`: on the Cloud Storage emulator ($STORAGE_EMULATOR_HOST), through gcsfs.
- `standin-preempt NAME` (tests only): what a Spot preemption does: every worker process killed, state PREEMPTED.

Queued resources are not modelled: relaunch.sh works on plain TPU VMs without them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

NUM_WORKERS = 2
MARKER = "MUSICGPT_STANDIN_VM"
PASSED_ON = (  # variables a worker's shell gets from the caller: the emulator's, and JAX's compilation cache
    "STORAGE_EMULATOR_HOST",
    "CLOUD_STORAGE_EMULATOR_ENDPOINT",
    "TENSORSTORE_GCS_HTTP_URL",
    "GOOGLE_AUTH_TOKEN_FOR_TESTING",
    "GOOGLE_CLOUD_PROJECT",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
    "MUSICGPT_STANDIN_PYTHON",
    "MUSICGPT_STANDIN_STATE",
    "LANG",
)

CURL = """#!/usr/bin/env bash
# The metadata server's agent-worker-number, and nothing else: no network from a stand-in worker.
for arg in "$@"; do
  case $arg in */agent-worker-number) echo "$MUSICGPT_STANDIN_WORKER"; exit 0 ;; esac
done
echo "curl (TPU stand-in): no network here: $*" >&2
exit 7
"""

UV = """#!/usr/bin/env bash
# uv stub: `uv venv [flags] DIR` makes DIR/bin/python, a wrapper of the test's Python; calls are recorded.
echo "$*" >> "$HOME/.local/uv-calls.log"
[ "$1" = venv ] || { echo "uv (TPU stand-in): only 'uv venv' is stubbed" >&2; exit 2; }
for dir; do :; done
mkdir -p "$dir/bin"
cat > "$dir/bin/python" <<'EOF'
#!/usr/bin/env bash
# -m pip is recorded, not run (installing jax[tpu] from PyPI takes minutes); the rest runs the test's Python.
if [ "$1" = -m ] && [ "$2" = pip ]; then
  shift 2
  echo "$*" >> "$(dirname "$0")/../pip-calls.log"
  exit 0
fi
exec "$MUSICGPT_STANDIN_PYTHON" "$@"
EOF
chmod +x "$dir/bin/python"
"""


def fail(message: str, code: int = 1) -> None:
    print(f"ERROR: (gcloud stand-in) {message}", file=sys.stderr)
    sys.exit(code)


def state_root() -> Path:
    root = os.environ.get("MUSICGPT_STANDIN_STATE")
    if not root:
        fail("MUSICGPT_STANDIN_STATE is not set", 2)
    return Path(root)


def vm_dir(name: str) -> Path:
    return state_root() / name


def load_vm(name: str, command: str) -> dict:
    path = vm_dir(name) / "vm.json"
    if not path.is_file():
        fail(f"(gcloud.compute.tpus.tpu-vm.{command}) NOT_FOUND: Resource 'nodes/{name}' was not found")
    return json.loads(path.read_text())


def save_vm(name: str, vm: dict) -> None:
    (vm_dir(name) / "vm.json").write_text(json.dumps(vm))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flags(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """(positional words, {--flag: value}); a flag without `=value` maps to ''."""
    words, named = [], {}
    for arg in args:
        if arg.startswith("--"):
            key, _, value = arg.partition("=")
            named[key] = value
        else:
            words.append(arg)
    return words, named


def homes(name: str, worker: str) -> list[tuple[int, Path]]:
    ids = range(NUM_WORKERS) if worker == "all" else [int(worker)]
    return [(i, vm_dir(name) / f"worker{i}") for i in ids]


def write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def create(name: str, named: dict[str, str]) -> None:
    if (vm_dir(name) / "vm.json").exists():
        fail(f"(gcloud.compute.tpus.tpu-vm.create) ALREADY_EXISTS: 'nodes/{name}' already exists")
    accelerator = named.get("--accelerator-type") or named.get("--accelerator_type") or ""
    for i in range(NUM_WORKERS):
        home = vm_dir(name) / f"worker{i}"
        (home / "tmp").mkdir(parents=True)
        write_executable(home / ".local" / "bin" / "uv", UV)
    write_executable(vm_dir(name) / "bin" / "curl", CURL)
    os.symlink(Path(__file__).with_name("gcloud"), vm_dir(name) / "bin" / "gcloud")
    vm = {"state": "READY", "acceleratorType": accelerator, "port": free_port(), "created": time.time()}
    save_vm(name, vm)


def describe(name: str, named: dict[str, str]) -> None:
    vm = load_vm(name, "describe")
    field = named.get("--format", "value(state)").removeprefix("value(").removesuffix(")")
    print(vm.get(field, ""))


def worker_env(name: str, vm: dict, worker: int, home: Path) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSED_ON if k in os.environ}
    return {
        **env,
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "USER": os.environ.get("USER", "tpu"),
        "PATH": f"{vm_dir(name) / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        MARKER: str(vm_dir(name)),
        "MUSICGPT_STANDIN_WORKER": str(worker),
        "MUSICGPT_COORDINATOR_ADDRESS": f"127.0.0.1:{vm['port']}",
        "MUSICGPT_NUM_PROCESSES": str(NUM_WORKERS),
        "MUSICGPT_PROCESS_ID": str(worker),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }


def ssh(name: str, named: dict[str, str]) -> None:
    vm = load_vm(name, "ssh")
    if vm["state"] != "READY":
        fail(f"(gcloud.compute.tpus.tpu-vm.ssh) {name} is {vm['state']}, not READY")
    command = named["--command"]

    def run(worker: int, home: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", command], cwd=home, env=worker_env(name, vm, worker, home),
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )  # fmt: skip

    workers = homes(name, named.get("--worker", "0"))
    with ThreadPoolExecutor(len(workers)) as pool:
        done = list(pool.map(lambda w: run(*w), workers))
    for (worker, _), proc in zip(workers, done, strict=True):
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            print(f"worker {worker}: the command exited with status {proc.returncode}", file=sys.stderr)
    sys.exit(max(proc.returncode for proc in done))


def copy(src: Path, dest: Path, recurse: bool) -> None:
    if dest.is_dir():
        dest = dest / src.name
    if src.is_dir():
        if not recurse:
            fail(f"(gcloud.compute.tpus.tpu-vm.scp) {src} is a folder: pass --recurse")
        shutil.copytree(src, dest, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dest)


def scp(words: list[str], named: dict[str, str]) -> None:
    src, dest = words
    recurse = "--recurse" in named
    if ":" in dest:
        name, _, path = dest.partition(":")
        load_vm(name, "scp")
        for _, home in homes(name, named.get("--worker", "0")):
            copy(Path(src), home / path, recurse)
    else:
        name, _, path = src.partition(":")
        load_vm(name, "scp")
        worker = named.get("--worker", "0")
        if worker == "all":
            fail("(gcloud.compute.tpus.tpu-vm.scp) copying from --worker=all is ambiguous")
        copy(homes(name, worker)[0][1] / path, Path(dest), recurse)


def vm_processes(folder: Path) -> list[int]:
    """Ids of the live processes started by the workers of the VM in `folder` (all carry MARKER=folder)."""
    needle = f"{MARKER}={folder}".encode() + b"\0"
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):  # gone, or not ours
            if needle in (entry / "environ").read_bytes() + b"\0":
                found.append(int(entry.name))
    return found


def kill_workers(name: str) -> None:
    """SIGKILL to every worker process, until none is left (a dying parent may have forked)."""
    for _ in range(50):
        pids = vm_processes(vm_dir(name))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    fail(f"processes of {name} survive SIGKILL: {vm_processes(vm_dir(name))}")


def delete(name: str) -> None:
    load_vm(name, "delete")
    kill_workers(name)
    shutil.rmtree(vm_dir(name))
    print(f"Deleted tpu [{name}].", file=sys.stderr)


def preempt(name: str) -> None:
    vm = load_vm(name, "preempt")
    kill_workers(name)
    save_vm(name, {**vm, "state": "PREEMPTED"})


def filesystem():
    import gcsfs

    endpoint = os.environ.get("STORAGE_EMULATOR_HOST")
    if not endpoint:
        fail("(gcloud.storage) STORAGE_EMULATOR_HOST is not set: the stand-in only talks to the emulator")
    return gcsfs.GCSFileSystem(token="anon", endpoint_url=endpoint, skip_instance_cache=True)


def storage(verb: str, words: list[str], named: dict[str, str]) -> None:
    try:
        transfer(filesystem(), verb, words, named)
    except FileNotFoundError as error:
        fail(f"(gcloud.storage.{verb}) One or more URLs matched no objects: {error}")


def transfer(fs, verb: str, words: list[str], named: dict[str, str]) -> None:
    recursive = "--recursive" in named or "-r" in words
    words = [w for w in words if w != "-r"]
    if verb == "ls":
        for path in sorted(fs.ls(words[0].removeprefix("gs://"), detail=False)):
            print(f"gs://{path}" + ("/" if fs.isdir(path) else ""))
    elif verb == "rm":
        fs.rm(words[0].removeprefix("gs://"), recursive=recursive)
    elif verb in ("cp", "rsync"):
        src, dest = words
        if src.startswith("gs://") and not dest.startswith("gs://"):
            fs.get(src.removeprefix("gs://").rstrip("/") + ("/" if recursive else ""), dest, recursive=recursive)
        elif dest.startswith("gs://") and not src.startswith("gs://"):
            fs.put(src.rstrip("/") + ("/" if recursive else ""), dest.removeprefix("gs://"), recursive=recursive)
        else:
            fail(f"(gcloud.storage.{verb}) the stand-in copies between gs:// and local paths only")
    else:
        fail(f"(gcloud.storage) the stand-in has no `storage {verb}`", 2)


def main(argv: list[str]) -> None:
    words, named = flags(argv)
    if words[:1] == ["standin-preempt"]:
        return preempt(words[1])
    if words[:1] == ["storage"]:
        return storage(words[1], words[2:], named)
    if words[:3] != ["compute", "tpus", "tpu-vm"] or len(words) < 5:
        fail(f"the stand-in does not model `gcloud {' '.join(argv)}`", 2)
    verb, rest = words[3], words[4:]
    if verb == "create":
        create(rest[0], named)
    elif verb == "describe":
        describe(rest[0], named)
    elif verb == "ssh":
        ssh(rest[0], named)
    elif verb == "scp":
        scp(rest, named)
    elif verb == "delete":
        delete(rest[0])
    else:
        fail(f"the stand-in has no `tpu-vm {verb}`", 2)


if __name__ == "__main__":
    main(sys.argv[1:])
