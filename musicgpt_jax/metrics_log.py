"""Training metrics: metrics.jsonl and TensorBoard event files in the workdir, and one-line progress messages."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import jax
import numpy as np
from etils import epath

from musicgpt_jax import audio


def log(message: str) -> None:
    """One line on stderr, from process 0 only."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def is_local(path: str | epath.Path) -> bool:
    """False for object-store URIs (gs://, s3://, ...), which cannot be appended to."""
    return "://" not in str(path)


def _tensorboard_writer(logdir: epath.Path) -> Any:
    """A tensorboardX SummaryWriter, or None when tensorboardX cannot write there.

    tensorboardX writes gs:// only with google-cloud-storage installed (and s3:// only with boto3); other remote
    workdirs get metrics.jsonl alone.
    """
    try:  # optional dependencies, probed where they are needed
        from tensorboardX import SummaryWriter

        if not is_local(logdir):
            if not str(logdir).startswith("gs://"):
                raise ImportError("tensorboardX: only local and gs:// logdirs are supported here")
            from google.cloud import storage  # noqa: F401 - what tensorboardX needs for gs://
    except ImportError as error:
        if not is_local(logdir):
            log(f"no TensorBoard logs in {logdir} ({error})")
        return None
    return SummaryWriter(str(logdir))


class MetricsWriter:
    """metrics.jsonl and TensorBoard event files in the workdir; a no-op on processes other than 0.

    metrics.jsonl is appended to locally; in an object store (gs://), where files cannot be appended to, the
    whole file (existing lines included) is rewritten at each write.
    """

    def __init__(self, workdir: epath.Path, enabled: bool):
        self.enabled = enabled
        self._tb = None
        self._lines: list[str] | None = None  # the whole file, for object stores
        if enabled:
            workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = workdir / "metrics.jsonl"
            if not is_local(workdir):
                self._lines = self._jsonl.read_text().splitlines(keepends=True) if self._jsonl.exists() else []
            self._tb = _tensorboard_writer(workdir / "tensorboard")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        line = json.dumps(record) + "\n"
        if self._lines is None:
            with self._jsonl.open("a") as f:
                f.write(line)
        else:
            self._lines.append(line)
            self._jsonl.write_text("".join(self._lines))
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), step)

    def write_sample(self, step: int, image: np.ndarray, sound: np.ndarray, sample_rate: int) -> None:
        """A sample's piano roll (H, W, 3) and audio (N,) in [-1, 1] to TensorBoard (its figures go by `write`)."""
        if self._tb is None:
            return
        from tensorboardX.proto import summary_pb2  # present whenever a TensorBoard writer is

        self._tb.add_image("sample/piano_roll", image, step, dataformats="HWC")
        # The audio summary built here, as a WAV: tensorboardX's add_audio would need the soundfile package.
        wav = io.BytesIO()
        audio.write_wav(wav, sound, sample_rate)
        clip = summary_pb2.Summary.Audio(
            sample_rate=sample_rate,
            num_channels=1,
            length_frames=len(sound),
            encoded_audio_string=wav.getvalue(),
            content_type="audio/wav",
        )
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="sample/audio", audio=clip)])
        self._tb._get_file_writer().add_summary(summary, step)  # what add_audio itself calls

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
