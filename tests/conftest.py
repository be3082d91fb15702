"""Test-wide setup: 8 fake CPU devices (before JAX is imported), ../shared/data, and a small real dataset."""

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# Many tests compile the same tiny programs (in-process and in train.py subprocesses): share the compiled code.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / "musicgpt-jax-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
JSB = SHARED / "polyphonic" / "JSB_Chorales.mat"

# A model small enough to compile and train in seconds, on the real JSB Chorales records.
TINY_OVERRIDES = [
    "model.num_layers=2",
    "model.d_model=32",
    "model.num_heads=4",
    "model.mlp_dim=64",
    "model.max_len=32",
    "train.batch_size=8",
    "train.log_every=1",
    "train.eval_every=1000",
    "train.warmup_steps=2",
    "train.schedule_steps=50",
]


@pytest.fixture(scope="session")
def jsb_data(tmp_path_factory) -> str:
    """JSB Chorales imported from ../shared into a session-wide records directory."""
    from musicgpt_jax import records

    data_dir = tmp_path_factory.mktemp("jsb_records")
    records.build_benchmark_dataset(JSB, data_dir)
    return str(data_dir)
