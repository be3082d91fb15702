"""A short sample of the model as it trains, for TensorBoard: its piano roll, its audio and its silent share.

`train.py` composes one every `train.sample_every` steps (by default with each evaluation) from the parameters
it evaluates, generated as `sample.py` generates (`generation`), and `metrics_log.MetricsWriter` puts it
beside the loss curves.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image

from musicgpt_jax import audio, generation, pianoroll, stats
from musicgpt_jax.configs import Config
from musicgpt_jax.frames import notes_of
from musicgpt_jax.midi_io import frames_to_midi


@dataclasses.dataclass(frozen=True)
class TrainingSample:
    image: np.ndarray  # (H, W, 3) uint8: the piano roll
    audio: np.ndarray  # (N,) float32 in [-1, 1]
    sample_rate: int
    silent_fraction: float
    notes: int


def compose_sample(params: Any, cfg: Config, step: int) -> TrainingSample:
    """`cfg.train.sample_bars` bars from an empty start, generated as `sample.py` generates them (seed: the step)."""
    grid = generation.grid_of(cfg)
    num_frames = max(1, cfg.train.sample_bars * generation.steps_per_bar(grid, None))
    allowed = generation.keyboard_of(cfg, grid)
    generated, velocities = generation.generate_pieces(
        jax.device_get(params),
        cfg.model,
        None,
        1,
        num_frames,
        jax.random.key(step),
        generation.run_strategy(cfg),
        allowed,
    )
    own = None if velocities is None else velocities[0]
    frames = generation.output_frames(generated[0], grid, None, False, None, own)
    with tempfile.TemporaryDirectory() as folder:
        picture = Path(folder) / "piano_roll.png"
        pianoroll.draw_piano_roll(frames, picture, title=f"step {step}")
        image = np.asarray(Image.open(picture).convert("RGB"))
    silence = stats.silence_summary(frames)
    return TrainingSample(
        image=image,
        audio=audio.synthesize(frames_to_midi(frames)).astype(np.float32),
        sample_rate=audio.SAMPLE_RATE,
        silent_fraction=float(silence["silent_fraction"] or 0.0),
        notes=len(notes_of(frames)),
    )
