"""A local Cloud Storage emulator (gcp-storage-emulator, from the test extra) for the gs:// tests.

`StorageEmulator(folder).start()` serves the JSON API on a free port of 127.0.0.1 with one bucket, keeping objects
in `folder`, so stopping and starting it again (a bucket that goes away and comes back) loses nothing. The bucket
is the emulator's default one: TensorStore cannot read objects back from a bucket made by its create call. `env`
holds the variables that point every client at it: gcsfs and google-cloud-storage (STORAGE_EMULATOR_HOST), TensorStore
under Orbax (TENSORSTORE_GCS_HTTP_URL, GOOGLE_AUTH_TOKEN_FOR_TESTING) and array_record's C++ reader
(CLOUD_STORAGE_EMULATOR_ENDPOINT); GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false spares gcsfs a gRPC probe that waits
60 s per bucket on an emulator.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class EmulatorError(RuntimeError):
    """The emulator did not start; the message is one line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StorageEmulator:
    """One gcp-storage-emulator process, restartable on the same port and folder."""

    def __init__(self, folder: Path, bucket: str = "musicgpt-test"):
        self.folder, self.bucket = folder, bucket
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GOOGLE_CLOUD_PROJECT": "test",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def start(self, timeout_s: float = 30.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder.parent / f"{self.folder.name}.log").open("ab")
        server = Path(__file__).with_name("gcs_emulator_server.py")
        command = [sys.executable, str(server), "-d", str(self.folder), "start"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "-q", "--default-bucket", self.bucket]
        self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmulatorError(f"gcp-storage-emulator exited with status {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b?project=test", timeout=2).read()
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise EmulatorError(f"gcp-storage-emulator did not answer on {self.url} within {timeout_s:g} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
