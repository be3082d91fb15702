"""Ahead-of-time compilation for a TPU topology on this CPU host: libtpu describes the chips."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from musicgpt_jax import aot, configs, sharding, train_state
from musicgpt_jax.model import MusicTransformer

REPO = Path(__file__).resolve().parents[1]

# One layer 8192 wide with a 65536-wide MLP: ~1.9G parameters, 4 x 7 GiB of state and gradients on one chip.
OVERSIZED = [
    "--config.model.num_layers=1",
    "--config.model.d_model=8192",
    "--config.model.mlp_dim=65536",
    "--config.model.num_heads=8",
]


def test_abstract_state_matches_the_state_training_creates():
    """What AOT compiles against is what `create_train_state` materialises: shapes, dtypes and shardings."""
    cfg = configs.resolve("tiny", ["model.num_layers=1"])
    mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
    model, tx = MusicTransformer(cfg.model), train_state.make_optimizer(cfg.train)
    state, state_shardings = train_state.create_train_state(model, tx, cfg, mesh)
    derived = train_state.train_state_shardings(model, tx, cfg, mesh)
    assert jax.tree.leaves(derived) == jax.tree.leaves(state_shardings)
    abstract = train_state.abstract_train_state(state_shardings, model, tx, cfg)
    for real, spec in zip(jax.tree.leaves(state), jax.tree.leaves(abstract), strict=True):
        assert (real.shape, real.dtype, real.sharding) == (spec.shape, spec.dtype, spec.sharding)


def test_tiny_compiles_for_v5e_2x2_and_fits():
    report = aot.compile_train_step(configs.resolve("tiny"), "v5e:2x2")
    assert report.compiled and report.fits
    assert (report.chips, report.device_kind) == (4, "TPU v5 lite")
    assert report.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
    assert report.argument_bytes > 0 and report.temp_bytes > 0 and report.code_bytes > 0
    assert 0 < report.total_bytes < report.hbm_bytes == 16 * aot.GIB
    assert report.alias_bytes > 0  # the donated train state is updated in place
    assert report.flops_per_step == pytest.approx(4 * report.flops_per_chip)
    # tiny has no layer scan and no remat: XLA's count is nanoGPT's 6N + 12LdT per frame plus the NADE head's
    # one-hot matmul (`model.flops_per_frame`), give or take.
    assert report.flops_per_step == pytest.approx(report.model_flops_per_step, rel=0.1)
    assert report.tpu_program_flops_per_chip > 0
    assert "tiny on v5e:2x2: needs 0.0" in report.verdict() and report.verdict().endswith("— fits")


def test_maestro_reduced_compiles_with_dynamics_and_estimates_its_time():
    """The `maestro` preset's step (bf16, remat, scanned layers, velocity head, scheduled sampling, given notes),
    narrowed so the compile takes seconds (the full preset's figures: docs/PERFORMANCE.md)."""
    narrow = ["model.num_layers=2", "model.d_model=128", "model.num_heads=2", "model.mlp_dim=384"]
    cfg = configs.resolve("maestro", [*narrow, "model.max_len=512", "train.batch_size=8"])
    report = aot.compile_train_step(cfg, "v5e:2x2", utilization=0.5)
    assert report.compiled and report.fits and report.preset == "maestro" and report.seq_len == 512
    assert report.flops_per_step > report.model_flops_per_step  # the remat recompute and the model's own samples
    assert report.estimated_seconds_per_1000_steps == pytest.approx(1000 * report.flops_per_step / (4 * 197e12 * 0.5))
    assert report.h100_estimated_seconds_per_1000_steps == pytest.approx(1000 * report.flops_per_step / 989e12 / 0.5)
    text = aot.format_report(report)
    assert "min per 1,000 steps on v5e:2x2 at 50% of 4 x 197 TFLOP/s bf16; one H100" in text


def test_own_samples_forward_pass_is_counted():
    """Scheduled sampling's forward pass sits in a lax.cond, which XLA's count leaves out; `step_flops` adds it: a
    forward pass is about a third of a train step without remat (2N of 6N FLOPs a frame)."""
    small = ["model.num_layers=2", "model.max_len=64", "train.batch_size=4"]
    with_own = aot.step_flops(configs.resolve("tiny", [*small, "train.scheduled_sampling=0.5"]))
    without = aot.step_flops(configs.resolve("tiny", small))
    assert 1.25 * without < with_own < 2 * without


def test_scanned_layers_are_counted_once_per_layer():
    """XLA counts a loop body once; `step_flops` unrolls, so the count grows with the number of layers."""

    def flops(layers: int) -> float:  # the independent head, so that the layers dominate the count
        overrides = [f"model.num_layers={layers}", "model.scan_layers=true", "model.head=independent"]
        return aot.step_flops(configs.resolve("tiny", overrides))

    one, two, three = flops(1), flops(2), flops(3)
    assert three - two == pytest.approx(two - one, rel=0.01) and two - one > 0.3 * one


def test_oversized_config_does_not_fit_one_line_nonzero_exit():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "musicgpt_jax.aot", "--config", "tiny", "--topology", "v5e:1x1", "--json", "-"]
    proc = subprocess.run(command + OVERSIZED, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aot: tiny on v5e:1x1: needs ") and lines[0].endswith(
        "GiB per chip, the chip has 16 GiB — does not fit"
    )
    report = json.loads(proc.stdout)
    assert not report["fits"] and report["total_bytes"] > 16 * aot.GIB and report["num_params"] > 1e9


@pytest.mark.parametrize(
    "args, message",
    [
        (["--topology", "v9x:2x2"], "--topology v9x:2x2: expected GENERATION:SHAPE"),
        (["--topology", "v5e"], "--topology v5e: expected GENERATION:SHAPE"),
        (["--topology", "v5e:3x3"], "--topology v5e:3x3: INVALID_ARGUMENT"),
        (["--config", "huge"], "--config huge: unknown preset"),
        (["--config.model.widht=3"], "--config.model.widht: unknown key"),
        (["--topology", "v5e:2x2", "--mesh", "data=3,fsdp=-1"], "--mesh data=3,fsdp=-1: 3 does not divide"),
        (["--topology", "v5e:2x2", "--batch_size", "6"], "--batch_size 6 must be divisible by data*fsdp=4"),
        (["--topology", "v5e:2x2", "--utilization", "0"], "--utilization 0.0: must be in (0, 1]"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, message, capsys):
    assert aot.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"aot: {message}"), err


def test_without_libtpu_one_line_names_the_extra():
    """libtpu comes with the `aot` extra, not the runtime: without it the tool says which extra to install."""
    code = (
        "import sys; sys.modules['libtpu'] = None; from musicgpt_jax import aot; "
        "sys.exit(aot.main(['--topology', 'v5e:2x2']))"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "aot: libtpu is not installed: pip install -e '.[aot]' (the `aot` extra) to compile for a TPU topology"
    )
