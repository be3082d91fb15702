"""Training metrics: metrics.jsonl and TensorBoard event files in the workdir, and one-line progress messages.

A local workdir is written in place. In an object store (gs://), where nothing can be appended to, both are
written to a local staging folder and `sync()` appends what each staged file gained since the last sync to the
object of the same name (`cloud.append_bytes`): the cost of logging grows with the run, not with its square.
The trainer syncs after each checkpoint, and the writer itself at most every `SYNC_SECONDS`; a crash loses at most
the lines since then, which a resumed run writes again (it redoes the steps after its checkpoint).
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from etils import epath

from musicgpt_jax import cloud

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SYNC_SECONDS = 60.0


def log(message: str) -> None:
    """One line on stderr, from process 0 only."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def _tensorboard_writer(logdir: Path) -> Any:
    """A tensorboardX SummaryWriter writing event files into local folder `logdir`."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(logdir))


class _RemoteMirror:
    """Appends what the files of a local staging folder gained since the last sync to the same paths under a remote
    folder. A failed sync keeps the bytes staged for the next one and says so once."""

    def __init__(self, staging: Path, remote: epath.Path):
        self.staging, self.remote = staging, remote
        self._sent: dict[str, int] = {}  # bytes of each staged file already appended remotely
        self._warned = False

    def sync(self) -> bool:
        """Append what is new; whether everything staged is now remote."""
        for path in sorted(p for p in self.staging.rglob("*") if p.is_file()):
            relative = path.relative_to(self.staging).as_posix()
            sent = self._sent.get(relative, 0)
            with path.open("rb") as f:
                f.seek(sent)
                data = f.read()
            if not data:
                continue
            try:
                cloud.append_bytes(self.remote / relative, data)
            except Exception as error:  # noqa: BLE001 - logs must never end a run; the bytes stay staged
                if not self._warned:
                    log(f"{self.remote / relative}: could not write the training logs ({error}); retrying later")
                    self._warned = True
                return False
            self._sent[relative] = sent + len(data)
            self._warned = False
        return True


class MetricsWriter:
    """metrics.jsonl and TensorBoard event files in the workdir; a no-op on processes other than 0."""

    def __init__(self, workdir: epath.Path, enabled: bool):
        self.enabled = enabled
        self._tb = None
        self._mirror: _RemoteMirror | None = None
        self._staging: Path | None = None
        self._last_sync = time.monotonic()
        if not enabled:
            return
        if cloud.is_remote(workdir):
            self._staging = Path(tempfile.mkdtemp(prefix="musicgpt-logs-"))
            self._mirror = _RemoteMirror(self._staging, workdir)
            local = self._staging
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            local = Path(workdir)
        self._jsonl = local / METRICS_FILE
        self._tb = _tensorboard_writer(local / TENSORBOARD_DIR)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with self._jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), step)
        if self._mirror is not None and time.monotonic() - self._last_sync > SYNC_SECONDS:
            self.sync()

    def write_sample(self, step: int, image: np.ndarray, sound: np.ndarray, sample_rate: int) -> None:
        """A sample's piano roll (H, W, 3) and audio (N,) in [-1, 1] to TensorBoard (its figures go by `write`)."""
        if self._tb is None:
            return
        from tensorboardX.proto import summary_pb2  # present whenever a TensorBoard writer is

        from musicgpt_jax import audio  # here: the training loop loads the rendering stack only when a sample is due

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

    def sync(self) -> None:
        """Remote workdirs: append what was logged since the last sync (a no-op for local ones)."""
        if self._mirror is None:
            return
        if self._tb is not None:
            self._tb.flush()
        self._mirror.sync()
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mirror is not None:
            if self._mirror.sync():
                shutil.rmtree(self._staging, ignore_errors=True)
            else:
                log(f"the training logs not yet in {self._mirror.remote} are kept in {self._staging}")
