"""The README's viewer command, `tensorboard --logdir W/tensorboard`, shows a training run's curves.

TensorBoard comes with the `viewer` extra (part of the test extra); without it the test skips, naming the extra.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import TINY_OVERRIDES

from musicgpt_jax import configs
from musicgpt_jax.train import train_and_evaluate


def test_tensorboard_serves_the_training_curves(benchmark_data, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed: pip install -e '.[viewer]'")
    cfg = configs.resolve("jsb", [*TINY_OVERRIDES, "train.steps=2", "train.eval_every=2", "train.sample_every=0"])
    cfg.data.data_dir, cfg.data.dataset = benchmark_data.data_dir, benchmark_data.dataset
    train_and_evaluate(cfg, str(tmp_path), progress=False)
    # `tensorboard` is the console script of tensorboard.main; the module form needs no PATH.
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "tensorboard"), "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, url = time.monotonic() + 120, None
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            assert line or server.poll() is None, "tensorboard exited before serving"
            match = re.search(r"(http://[^ /]+:\d+)/", line)
            url = match.group(1) if match else None
        assert url, "tensorboard did not say where it serves"
        deadline, tags = time.monotonic() + 60, {}
        while not tags.get(".", {}) and time.monotonic() < deadline:  # it loads the event files in the background
            with urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=10) as response:
                tags = json.loads(response.read())
            time.sleep(0.5)
        assert {"loss", "val_nll"} <= set(tags.get(".", {})), tags
    finally:
        server.terminate()
        server.wait(timeout=30)
