"""glibc malloc tuning for XLA:CPU (`musicgpt_jax.host_memory`): the re-exec, and the page faults it saves."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from musicgpt_jax import host_memory

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc tunables are Linux + glibc only"
)

PROBE = f"""
import json, os, sys
sys.path.insert(0, {str(REPO)!r})
from musicgpt_jax import host_memory
host_memory.reexec_with_malloc_tuning()
print(json.dumps({{"pid": os.getpid(), "argv": sys.argv, "utf8_mode": sys.flags.utf8_mode,
                  "tunables": os.environ.get("GLIBC_TUNABLES"), "platforms": os.environ.get("JAX_PLATFORMS")}}))
"""


def clean_env(**changes: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.DISABLE_VARIABLE)}
    env["JAX_PLATFORMS"] = "cpu"
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


def run_probe(tmp_path, env: dict, *args: str) -> tuple[dict, int]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    proc = subprocess.Popen(
        [sys.executable, "-X", "utf8", str(script), *args], env=env, stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return json.loads(out), proc.pid


def test_reexec_keeps_the_process_its_arguments_and_interpreter_flags(tmp_path):
    out, pid = run_probe(tmp_path, clean_env(), "two words", "--flag=1")
    assert out["tunables"] == host_memory.MALLOC_TUNABLES
    assert out["pid"] == pid  # replaced in place: signals sent to the started process still reach it
    assert out["argv"][1:] == ["two words", "--flag=1"]
    assert out["utf8_mode"] == 1


def test_reexec_tells_jax_to_use_the_cpu(tmp_path):
    if host_memory.accelerator_device_files():
        pytest.skip("this machine has an accelerator")
    out, _ = run_probe(tmp_path, clean_env(JAX_PLATFORMS=None))
    assert out["tunables"] == host_memory.MALLOC_TUNABLES
    assert out["platforms"] == "cpu"  # no probe for a TPU through libtpu, and none of its error lines


@pytest.mark.parametrize(
    "changes",
    [{"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, {host_memory.DISABLE_VARIABLE: "0"}, {"JAX_PLATFORMS": "cuda"}],
    ids=["user-tunables-kept", "disabled", "accelerator"],
)
def test_no_reexec_where_not_wanted(tmp_path, changes):
    out, _ = run_probe(tmp_path, clean_env(**changes))
    assert out["tunables"] == changes.get("GLIBC_TUNABLES")


def train_speed_tiny(env: dict) -> dict:
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "train_speed.py"),
        "--presets",
        "tiny",
        "--steps",
        "3",
        "--json",
        "-",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tuning_keeps_the_train_steps_scratch_memory_mapped():
    """Without it XLA:CPU's 150 MB scratch block is unmapped after every step of tiny and faulted in again."""
    untuned = train_speed_tiny(clean_env(**{host_memory.DISABLE_VARIABLE: "0"}))
    tuned = train_speed_tiny(clean_env())
    assert tuned["malloc_tuned"] and not untuned["malloc_tuned"]
    assert untuned["temp_gib"] > 0.1
    assert untuned["page_faults_per_step"] > 10_000
    # 0 here. Without transparent huge pages up to a few thousand remain (thread stacks, heap growth).
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    huge_pages = thp.exists() and "[never]" not in thp.read_text()
    assert tuned["page_faults_per_step"] < untuned["page_faults_per_step"] / (20 if huge_pages else 2)
    assert tuned["loss"] == pytest.approx(untuned["loss"], rel=1e-5)  # the same computation
