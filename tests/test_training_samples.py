"""Samples while training: TensorBoard gets a piano roll, audio and the silent share at each evaluation."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import TINY_OVERRIDES
from tensorboardX.proto import event_pb2

from musicgpt_jax import configs
from musicgpt_jax.train import train_and_evaluate


def tensorboard_events(folder) -> list:
    """Every event of the TFRecord event files in `folder` (length, crc, data, crc per record)."""
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[offset + 12 : offset + 12 + length])
            events.append(event)
            offset += 12 + length + 4
    return events


def run_with_samples(benchmark_data, workdir, *overrides):
    cfg = configs.resolve("jsb", [*TINY_OVERRIDES, "train.steps=4", "train.eval_every=2", *overrides])
    cfg.data.data_dir, cfg.data.dataset = benchmark_data.data_dir, benchmark_data.dataset
    train_and_evaluate(cfg, str(workdir), progress=False)
    return tensorboard_events(workdir / "tensorboard")


def test_each_evaluation_writes_a_piano_roll_audio_and_silent_share(benchmark_data, tmp_path):
    events = run_with_samples(benchmark_data, tmp_path / "run", "train.sample_every=-1", "train.sample_bars=2")
    values = [(e.step, v) for e in events for v in e.summary.value]
    images = [(step, v.image) for step, v in values if v.tag == "sample/piano_roll"]
    sounds = [(step, v.audio) for step, v in values if v.tag == "sample/audio"]
    silent = [step for step, v in values if v.tag == "sample_silent_fraction"]
    assert [s for s, _ in images] == [s for s, _ in sounds] == silent == [2, 4]  # with each evaluation
    for _, image in images:
        assert image.width > 200 and image.height > 100 and image.encoded_image_string[:4] == b"\x89PNG"
    for _, audio in sounds:
        # 2 bars of the benchmark grid at 120 bpm plus the release, as a WAV
        assert audio.sample_rate == 22050 and audio.encoded_audio_string[:4] == b"RIFF"
        assert audio.length_frames > 22050
    seconds = [v.simple_value for _, v in values if v.tag == "sample_seconds"]
    assert len(seconds) == 2 and all(s > 0 for s in seconds)


def test_sample_every_zero_writes_none(benchmark_data, tmp_path):
    events = run_with_samples(benchmark_data, tmp_path / "run", "train.sample_every=0")
    tags = {v.tag for e in events for v in e.summary.value}
    assert "val_nll" in tags and not any(t.startswith("sample") for t in tags)
    assert np.isfinite([v.simple_value for e in events for v in e.summary.value if v.tag == "val_nll"]).all()


def test_the_training_loop_does_not_import_the_rendering_stack():
    # the samples are rendered only when they are due: importing the loop loads no sampler command, piano roll,
    # audio, statistics or listening page
    code = "import sys, musicgpt_jax.train; print(*sorted(m for m in sys.modules if m.startswith('musicgpt_jax.')))"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo, env=env)
    loaded = set(result.stdout.split())
    assert "musicgpt_jax.train" in loaded
    rendering = {"compose", "generation", "training_samples", "pianoroll", "audio", "stats", "listening_page"}
    assert not loaded & {f"musicgpt_jax.{name}" for name in rendering}, loaded
