"""Fault handling that benchmarks/faults.py measures (docs/RELIABILITY.md), as fast regression tests.

Damaged checkpoints (flipped bytes that still decode, truncated files, a missing item) are skipped for the newest
good one in one line and kept on disk; a disk without room fails a save in one line and leaves the last good
checkpoint restorable; clean-up errors never hide the error on its way out; mutated MIDI files never stop a build.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pretty_midi
import pytest
from conftest import REPO
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from musicgpt_jax import configs, orbax_logs
from musicgpt_jax.checkpoint import Checkpointer, CheckpointError
from musicgpt_jax.saved_run import load_config_dict
from musicgpt_jax.state_digest import state_digest
from musicgpt_jax.train import _close_all

# Reading a damaged checkpoint leaves Orbax coroutines that fail when collected: expected here, not a test failure.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def make_state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(32,)), jnp.bfloat16),
        "step": jnp.asarray(seed, jnp.int32),
        "key": jnp.asarray([seed, 7], jnp.uint32),
    }


def save_steps(workdir: Path, *steps: int, config: dict | None = None) -> None:
    ckpt = Checkpointer(workdir, async_save=False)
    for step in steps:
        ckpt.save(step, make_state(step), {"position": step}, config or {})
    ckpt.close()


def restore(workdir: Path, read_only: bool = False) -> tuple[dict, dict, int, list[str]]:
    """(state, data state, step, fallback messages) of the newest checkpoint that restores."""
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), make_state(0))
    messages: list[str] = []
    ckpt = Checkpointer(workdir, async_save=False, read_only=read_only)
    try:
        state, data, step = ckpt.restore(target, on_fallback=messages.append)
    finally:
        ckpt.close()
    return state, data, step, messages


def truncate(workdir: Path, step: int) -> None:
    """Cut the largest array file of a checkpoint in half."""
    files = [p for p in (workdir / "checkpoints" / str(step) / "state").rglob("*") if p.parent.name == "d"]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


def test_digest_is_the_same_on_any_mesh_and_changes_with_any_one_element():
    x = jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32) / 7
    mesh = jax.make_mesh((4, 2), ("a", "b"))
    assert state_digest({"x": x}) == state_digest({"x": jax.device_put(x, NamedSharding(mesh, P("a", "b")))})
    one_bit = x.at[5, 3].set(jnp.nextafter(x[5, 3], jnp.inf))
    swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
    digests = {str(state_digest({"x": y})) for y in (x, one_bit, swapped, x.astype(jnp.bfloat16))}
    assert len(digests) == 4


def test_arrays_that_do_not_match_their_digest_fall_back_in_one_line_and_are_kept(tmp_path):
    save_steps(tmp_path, 1, 2)
    folder = tmp_path / "checkpoints"
    # Step 2's arrays now disagree with their digest, as after flipped bytes that still decode.
    shutil.rmtree(folder / "2" / "digest")
    shutil.copytree(folder / "1" / "digest", folder / "2" / "digest")
    state, data, step, messages = restore(tmp_path)
    assert step == 1 and data == {"position": 1}
    np.testing.assert_array_equal(state["w"], make_state(1)["w"])
    assert len(messages) == 1 and "does not match the digest" in messages[0] and "falling back to step 1" in messages[0]
    assert "\n" not in messages[0]
    assert (tmp_path / "corrupt_checkpoints" / "2" / "state").is_dir()


def test_a_second_damaged_copy_of_a_step_is_kept_beside_the_first(tmp_path):
    save_steps(tmp_path, 1, 2)
    truncate(tmp_path, 2)
    assert restore(tmp_path)[2] == 1
    save_steps(tmp_path, 2)
    truncate(tmp_path, 2)
    assert restore(tmp_path)[2] == 1
    assert sorted(p.name for p in (tmp_path / "corrupt_checkpoints").iterdir()) == ["2", "2.1"]


def test_when_no_checkpoint_restores_nothing_is_moved(tmp_path):
    save_steps(tmp_path, 1, 2)
    truncate(tmp_path, 1)
    truncate(tmp_path, 2)
    with pytest.raises(CheckpointError, match=r"checkpoints/2: checkpoint unreadable .*older ones do not restore"):
        restore(tmp_path)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    assert not (tmp_path / "corrupt_checkpoints").exists()


def test_a_read_only_reader_falls_back_and_leaves_the_damaged_checkpoint_in_place(tmp_path):
    save_steps(tmp_path, 1, 2)
    truncate(tmp_path, 2)
    _, _, step, messages = restore(tmp_path, read_only=True)
    assert step == 1 and len(messages) == 1 and "moved" not in messages[0]
    assert (tmp_path / "checkpoints" / "2").is_dir() and not (tmp_path / "corrupt_checkpoints").exists()


def test_a_checkpoint_without_its_config_is_skipped(tmp_path):
    config = configs.resolve("tiny").to_dict()
    save_steps(tmp_path, 1, 2, config=config)
    shutil.rmtree(tmp_path / "checkpoints" / "2" / "config")
    assert load_config_dict(tmp_path) == (config, 1)
    _, _, step, messages = restore(tmp_path)
    assert step == 1 and len(messages) == 1 and '"config" was not found' in messages[0]


def test_a_disk_without_room_refuses_the_save_in_one_line(tmp_path, monkeypatch):
    save_steps(tmp_path, 1)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1000))
    ckpt = Checkpointer(tmp_path, async_save=True)
    with pytest.raises(CheckpointError) as error:
        ckpt.save(2, make_state(2), {}, {})
    ckpt.close()
    message = str(error.value)
    assert "\n" not in message and "no space left on device" in message and "last good checkpoint is step 1" in message
    assert os.listdir(tmp_path / "checkpoints") == ["1"]  # nothing was started


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs permission to mount; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_disk_that_fills_during_a_save_fails_in_one_line_and_the_last_good_checkpoint_restores(
    small_disk, monkeypatch, capfd
):
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # quiet_orbax_errors replaces it
    save_steps(small_disk, 1)
    stat = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 4096))
    monkeypatch.setattr(Checkpointer, "_check_room", lambda self, step, state: None)  # fill it during the write
    orbax_logs.quiet_orbax_errors()
    try:
        ckpt = Checkpointer(small_disk, async_save=True)
        with pytest.raises(CheckpointError) as error:
            ckpt.save(2, make_state(2), {}, {})
            ckpt.wait()
        ckpt.close()  # the failure is not raised a second time
        gc.collect()
    finally:
        for name in ("absl", "asyncio"):
            logger = logging.getLogger(name)
            for f in [f for f in logger.filters if isinstance(f, orbax_logs._QuietOrbaxErrors)]:
                logger.removeFilter(f)
    message = str(error.value)
    assert "\n" not in message and "could not save the checkpoint of step 2 (no space left on device)" in message
    assert "the last good checkpoint is step 1" in message
    assert "Traceback" not in capfd.readouterr().err
    (small_disk / "filler").unlink()
    _, data, step, messages = restore(small_disk)
    assert step == 1 and data == {"position": 1} and not messages


def test_clean_up_errors_never_hide_the_error_on_its_way_out():
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise OSError(28, "No space left on device")

    _close_all([broken, lambda: calls.append("next")], quiet=True)
    assert calls == ["broken", "next"]
    with pytest.raises(OSError):
        _close_all([broken, lambda: calls.append("last")], quiet=False)
    assert calls[-1] == "last"


def write_midi(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    midi = pretty_midi.PrettyMIDI(initial_tempo=100 + 10 * seed)
    piano = pretty_midi.Instrument(program=0)
    for i in range(40):
        pitch = int(rng.integers(40, 90))
        piano.notes.append(pretty_midi.Note(velocity=80, pitch=pitch, start=i * 0.25, end=i * 0.25 + 0.5))
    midi.instruments.append(piano)
    midi.write(str(path))


def test_fault_script_mutants_section_accounts_for_every_file(tmp_path):
    midi = tmp_path / "midi"
    midi.mkdir()
    for seed in range(4):
        write_midi(midi / f"piece_{seed}.mid", seed)
    out = tmp_path / "report.md"
    cmd = [sys.executable, "benchmarks/faults.py", "--only", "mutants", "--mutants", "24"]
    done = subprocess.run(
        [*cmd, "--midi_dir", str(midi), "--file_timeout", "10", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    row = next(line for line in out.read_text().splitlines() if line.startswith("| Mutated MIDI"))
    assert "| 24 | 24/24 |" in row and "manifest lines 24/24" in row
