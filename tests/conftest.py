"""Test-wide setup: 8 fake CPU devices (before JAX is imported), ../shared/data when it is there, and datasets.

A clone without ../shared beside it (a user's `git clone`) runs every test but those about the shared files
themselves: they skip, naming the folder (`require_shared`, `shared_files`). The other tests use data they write
themselves (tests/synthetic.py): `benchmark_data` is JSB Chorales from ../shared when present, else a synthetic
corpus imported the same way.
"""

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
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

# A model small enough to compile and train in seconds, on `benchmark_data`.
TINY_OVERRIDES = [
    "model.num_layers=2",
    "model.d_model=32",
    "model.num_heads=4",
    "model.mlp_dim=64",
    "model.max_len=32",
    "train.batch_size=8",
    "train.log_every=1",
    "train.eval_every=1000",
    "train.sample_every=0",  # TensorBoard samples: their own test (test_training_samples.py)
    "train.warmup_steps=2",
    "train.schedule_steps=50",
]


def absent(subpath: str) -> str:
    """The one-line skip reason of a test that needs SHARED/subpath."""
    return f"../shared/data/{subpath} not found (a clone without ../shared)"


def require_shared(subpath: str) -> Path:
    """SHARED/subpath, or skip the calling test (or module, at import) when it is not there."""
    path = SHARED / subpath
    if not path.exists():
        pytest.skip(absent(subpath), allow_module_level=True)
    return path


def shared_files(subpath: str, suffixes: tuple[str, ...] = (".mid", ".midi")) -> list:
    """pytest.params of the files in SHARED/subpath with these suffixes (ids: file names), for parametrize; one
    skipped param when the folder is not there, so collection never fails."""
    folder = SHARED / subpath
    if not folder.is_dir():
        return [pytest.param(None, id="absent", marks=pytest.mark.skip(reason=absent(subpath)))]
    return [pytest.param(p, id=p.name) for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes]


@dataclass(frozen=True)
class BenchmarkData:
    """A benchmark-format dataset (88 pitches, sustain only, its own splits) in records form."""

    data_dir: str
    dataset: str
    source: str  # what it was imported from


@pytest.fixture(scope="session")
def synthetic_midi(tmp_path_factory) -> Path:
    """A folder of 36 short tonal pieces written with pretty_midi (tests/synthetic.py)."""
    import synthetic

    folder = tmp_path_factory.mktemp("synthetic_midi")
    synthetic.write_corpus(folder)
    return folder


@pytest.fixture(scope="session")
def synthetic_benchmark(synthetic_midi, tmp_path_factory) -> BenchmarkData:
    """The synthetic corpus in the benchmark's .json format, imported by the project's own benchmark import."""
    import synthetic

    from musicgpt_jax import records

    source = tmp_path_factory.mktemp("synthetic_json") / "synthetic_chorales.json"
    synthetic.write_benchmark_json(sorted(synthetic_midi.glob("*.mid")), source)
    data_dir = tmp_path_factory.mktemp("synthetic_records")
    result = records.build_benchmark_dataset(source, data_dir)
    return BenchmarkData(str(data_dir), result.path.name, str(source))


@pytest.fixture(scope="session")
def benchmark_data(request, tmp_path_factory) -> BenchmarkData:
    """JSB Chorales from ../shared when it is there, else the synthetic corpus: for tests of training, sampling
    and evaluation, which hold on any benchmark-format data."""
    if not JSB.is_file():
        return request.getfixturevalue("synthetic_benchmark")
    from musicgpt_jax import records

    data_dir = tmp_path_factory.mktemp("jsb_records")
    records.build_benchmark_dataset(JSB, data_dir)
    return BenchmarkData(str(data_dir), "jsb_chorales", "../shared/data/polyphonic/JSB_Chorales.mat")


def bad_workdirs(run: Path, root: Path) -> dict[str, Path]:
    """Workdirs that `sample.py` and `evaluate` must refuse in one line, made in `root` from a good `run`:
    empty; not_a_run (a checkpoints/ folder another program wrote); other_shape (a run whose config describes
    another model shape than its arrays); other_version (a config with a key this version does not know)."""
    empty, not_a_run = root / "empty", root / "not_a_run" / "checkpoints" / "7"
    empty.mkdir(parents=True)
    not_a_run.mkdir(parents=True)
    (not_a_run / "weights.txt").write_text("not an Orbax checkpoint\n")

    def edited(name: str, edit) -> Path:
        copy = root / name
        shutil.copytree(run, copy)
        for config in copy.glob("checkpoints/*/config/metadata"):
            config.write_text(json.dumps(edit(json.loads(config.read_text()))))
        return copy

    other_shape = edited("other_shape", lambda c: {**c, "model": {**c["model"], "d_model": 2 * c["model"]["d_model"]}})
    other_version = edited("other_version", lambda c: {**c, "model": {**c["model"], "vocab_size": 512}})
    return {
        "empty": empty,
        "not_a_run": root / "not_a_run",
        "other_shape": other_shape,
        "other_version": other_version,
    }


def run_all(commands: dict[str, list[str]], timeout: float = 300) -> dict[str, subprocess.CompletedProcess]:
    """Run command lines side by side (CLIs that spend seconds importing JAX) and wait for all of them."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = {
        name: subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, command in commands.items()
    }
    done = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n(killed after {timeout} s)"
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A local Cloud Storage emulator for the whole session (tests/gcs_emulator.py), its variables set in this
    process and inherited by the tools the tests start; skipped, in one line, where it cannot run."""
    import importlib.util

    from gcs_emulator import EmulatorError, StorageEmulator

    for module in ("gcp_storage_emulator", "gcsfs"):  # found, not imported: gcsfs reads its settings at import
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (the test extra installs it: pip install -e '.[test]')")
    emulator = StorageEmulator(tmp_path_factory.mktemp("gcs") / "objects")
    try:
        emulator.start()
    except EmulatorError as error:
        pytest.skip(f"no Cloud Storage emulator: {error}")
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    yield emulator
    emulator.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
