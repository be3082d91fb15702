"""Test-wide setup: 8 fake CPU devices (before JAX is imported) and the path of ../shared/data."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
