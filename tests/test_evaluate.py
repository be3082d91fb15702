"""The evaluator: hand-computed NLL on a toy model, sliding windows, the CLI on a tiny trained run, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import bad_workdirs, run_all
from flax import linen as nn

from musicgpt_jax import configs, evaluate, pipeline, records
from musicgpt_jax.configs import ModelConfig
from musicgpt_jax.model import MusicTransformer, frame_log_likelihood
from musicgpt_jax.train import train_and_evaluate

# A one-layer model on `benchmark_data`, trained for a few steps by the tests that need a run.
ONE_LAYER_RUN = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64", "model.max_len=32"]
TINY_MODEL = ModelConfig(
    num_pitches=88, num_states=2, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_len=32, dropout=0.0
)


@pytest.fixture(scope="module")
def test_sequences(benchmark_data) -> list[np.ndarray]:
    """The test split of `benchmark_data` (JSB Chorales, or the synthetic corpus), in its published order."""
    source = records.load_split(benchmark_data.data_dir, benchmark_data.dataset, "test")
    return [np.asarray(source[i]["states"]) for i in range(len(source))]


def init_params(cfg: ModelConfig, seed: int = 0):
    model = MusicTransformer(cfg)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, cfg.num_pitches), jnp.int32))["params"]
    return nn.meta.unbox(params)


def test_plan_scores_every_frame_once():
    for length in (1, 5, 31, 32, 33, 48, 49, 100, 161):
        for window, stride in ((32, 16), (32, 1), (32, 32), (32, 7)):
            scored = []
            for _, start, first, end in pipeline.plan_windows([length], window, stride):
                assert 0 <= first < end <= window
                scored += [start + j + 1 for j in range(first, end)]
                assert first == 0 or first + 1 >= window - stride + 1  # context of later windows
            assert sorted(scored) == list(range(1, length + 1)), (length, window, stride)


def test_hand_computed_nll_with_a_constant_head(test_sequences):
    """Head kernel 0, bias = chosen logits: each pitch's distribution is known whatever the input."""
    rng = np.random.default_rng(0)
    bias = rng.normal(0.0, 2.0, (88, 2)).astype(np.float32)
    params = init_params(TINY_MODEL)
    params["head"]["kernel"] = jnp.zeros_like(params["head"]["kernel"])
    params["head"]["bias"] = jnp.asarray(bias)
    # Short ones, and ones longer than max_len=32 (up to 160 frames: several sliding windows).
    chosen = [test_sequences[i] for i in range(len(test_sequences)) if i < 3 or test_sequences[i].shape[0] > 128]
    assert any(s.shape[0] > 4 * TINY_MODEL.max_len for s in chosen)

    log_p = bias.astype(np.float64) - np.log(np.exp(bias.astype(np.float64)).sum(axis=1, keepdims=True))
    expected_sum = sum(-log_p[np.arange(88), s.astype(np.int64)].sum() for s in chosen)
    frames = sum(s.shape[0] for s in chosen)

    for batch_size in (1, 4):
        result = evaluate.evaluate_nll(params, TINY_MODEL, chosen, batch_size=batch_size)
        assert result["frames"] == frames and result["sequences"] == len(chosen)
        assert result["windows"] > len(chosen)  # the sliding window was used
        np.testing.assert_allclose(result["nll_sum"], expected_sum, rtol=1e-5)
        np.testing.assert_allclose(result["nats_per_frame"], expected_sum / frames, rtol=1e-5)


def reference_nll(params, cfg: ModelConfig, states: np.ndarray, context_start) -> float:
    """Frame by frame: target t (1-based) from inputs [context_start(t), t) of the start-frame-prepended sequence."""
    model = MusicTransformer(cfg)
    padded = np.concatenate([np.zeros((1, cfg.num_pitches), np.int32), states.astype(np.int32)])
    total = 0.0
    for t in range(1, states.shape[0] + 1):
        inputs = padded[context_start(t) : t][None]
        logits, _ = model.apply({"params": params}, jnp.asarray(inputs))
        total -= float(frame_log_likelihood(logits[:, -1:], jnp.asarray(padded[t][None, None]))[0, 0])
    return total


def test_sliding_window_equals_full_context_when_it_fits(test_sequences):
    cfg = ModelConfig(**{**TINY_MODEL.__dict__, "max_len": 200})
    params = init_params(cfg, seed=1)
    seqs = [test_sequences[0], test_sequences[1], max(test_sequences, key=len)]
    result = evaluate.evaluate_nll(params, cfg, seqs, batch_size=2)
    model = MusicTransformer(cfg)
    full = 0.0
    for s in seqs:  # one causal pass over the whole sequence
        padded = np.concatenate([np.zeros((1, 88), np.int32), s.astype(np.int32)])[None]
        logits, _ = model.apply({"params": params}, jnp.asarray(padded[:, :-1]))
        full -= float(frame_log_likelihood(logits, jnp.asarray(padded[:, 1:])).sum())
    np.testing.assert_allclose(result["nll_sum"], full, rtol=1e-5)


@pytest.mark.parametrize("stride", [None, 1, 5])
def test_sliding_window_context_of_each_frame(test_sequences, stride):
    """Each frame past the window sees exactly the left context the module doc promises."""
    cfg = ModelConfig(**{**TINY_MODEL.__dict__, "max_len": 16})
    params = init_params(cfg, seed=2)
    seq = test_sequences[0][:45]
    window, s = cfg.max_len, stride or cfg.max_len // 2

    def context_start(t: int) -> int:  # input start of the window that scores target t
        return 0 if t <= window else -(-(t - window) // s) * s

    expected = reference_nll(params, cfg, seq, context_start)
    result = evaluate.evaluate_nll(params, cfg, [seq], batch_size=3, stride=stride)
    np.testing.assert_allclose(result["nll_sum"], expected, rtol=1e-5)


def test_bad_sequences():
    with pytest.raises(evaluate.EvaluationError, match="shape"):
        evaluate.evaluate_nll(None, TINY_MODEL, [np.zeros((5, 12), np.uint8)])
    with pytest.raises(evaluate.EvaluationError, match="states"):
        evaluate.evaluate_nll(None, TINY_MODEL, [np.full((5, 88), 2, np.uint8)])
    with pytest.raises(evaluate.EvaluationError, match="no sequences"):
        evaluate.evaluate_nll(None, TINY_MODEL, [])
    with pytest.raises(evaluate.EvaluationError, match="stride"):
        evaluate.evaluate_nll(None, TINY_MODEL, [np.zeros((5, 88), np.uint8)], stride=33)


@pytest.fixture(scope="module")
def tiny_run(benchmark_data, tmp_path_factory) -> str:
    workdir = tmp_path_factory.mktemp("run")
    cfg = configs.resolve(
        "jsb",
        [
            *ONE_LAYER_RUN,
            "train.steps=2",
            "train.batch_size=8",
            "train.warmup_steps=1",
            "train.eval_every=1000",
            "train.async_checkpoints=false",
        ],
    )
    cfg.data.data_dir, cfg.data.dataset = benchmark_data.data_dir, benchmark_data.dataset
    train_and_evaluate(cfg, str(workdir), progress=False)
    return str(workdir)


def evaluate_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m musicgpt_jax.evaluate ARGS`, as a user runs it."""
    return run_all({"cli": [sys.executable, "-m", "musicgpt_jax.evaluate", *args]})["cli"]


def test_cli_prints_json(tiny_run, benchmark_data):
    out = evaluate_cli("--workdir", tiny_run, "--batch_size", "8")  # validation unless --split test asks
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    info = records.load_info(benchmark_data.data_dir, benchmark_data.dataset)
    assert result["frames"] == info.split_frames["validation"]
    assert result["sequences"] == info.split_sizes["validation"]
    assert result["step"] == 2 and result["dataset"] == benchmark_data.dataset and result["split"] == "validation"
    assert 0 < result["nats_per_frame"] < 88 * math.log(2) * 2


def test_cli_matches_the_library(tiny_run, benchmark_data):
    out = evaluate_cli("--workdir", tiny_run, "--split", "validation", "--batch_size", "5")
    assert out.returncode == 0, out.stderr
    result = evaluate.evaluate_run(tiny_run, split="validation", batch_size=5)
    info = records.load_info(benchmark_data.data_dir, benchmark_data.dataset)
    assert result["frames"] == info.split_frames["validation"] and result["sequences"] == info.split_sizes["validation"]
    assert json.loads(out.stdout) == json.loads(json.dumps(result))


def test_cli_bad_input(tiny_run, benchmark_data):
    """The real CLI on bad flags and a workdir without checkpoints: one line on stderr, exit status 2."""
    cases = {
        "split": (["--split", "dev"], "--split 'dev': unknown split"),
        "dataset": (["--dataset", "nope"], "nope: no dataset here"),
        "step": (["--step", "7"], "no checkpoint at step 7"),
    }
    commands = {
        case: [sys.executable, "-m", "musicgpt_jax.evaluate", "--workdir", tiny_run, "--data_dir",
               benchmark_data.data_dir, *args]
        for case, (args, _) in cases.items()
    }  # fmt: skip
    done = run_all(commands)
    for case, (_, needle) in cases.items():
        result = done[case]
        assert result.returncode == 2 and result.stdout == "", (case, result.stderr[-3000:])
        assert needle in result.stderr and result.stderr.count("\n") == 1, (case, result.stderr)


def test_cli_workdir_without_checkpoints(tmp_path):
    out = evaluate_cli("--workdir", str(tmp_path))
    assert out.returncode == 2 and "no checkpoints" in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_cli_refuses_bad_workdirs_and_flags_in_one_line(tiny_run, tmp_path):
    """The real `python -m musicgpt_jax.evaluate`: one line on stderr naming the workdir or flag and the reason,
    exit status 2, nothing on stdout."""
    workdirs = bad_workdirs(Path(tiny_run), tmp_path)
    cases = {
        "empty": (["--workdir", str(workdirs["empty"])], f"{workdirs['empty']}: no checkpoints"),
        "not_a_run": (["--workdir", str(workdirs["not_a_run"])], "checkpoints/7: not a checkpoint of this project"),
        "other_shape": (
            ["--workdir", str(workdirs["other_shape"])],
            "checkpoints/2: parameter embed/table has shape (88, 2, 32) in the checkpoint but (88, 2, 64)",
        ),
        "other_version": (["--workdir", str(workdirs["other_version"])], "a config this version cannot read"),
        "zero_batch": (["--workdir", tiny_run, "--batch_size", "0"], "--batch_size: 0: must be at least 1"),
    }
    done = run_all({case: [sys.executable, "-m", "musicgpt_jax.evaluate", *args] for case, (args, _) in cases.items()})
    for case, (_, expected) in cases.items():
        result = done[case]
        lines = result.stderr.splitlines()
        assert result.returncode == 2 and result.stdout == "", (case, result.stderr[-3000:])
        assert len(lines) == 1 and expected in lines[0], (case, result.stderr)


def test_train_time_budget(benchmark_data, tmp_path):
    """train.max_seconds: the loop evaluates, saves and stops once the budget is spent."""
    cfg = configs.resolve(
        "jsb",
        [
            *ONE_LAYER_RUN,
            "train.steps=50",
            "train.batch_size=8",
            "train.eval_every=1000",
            "train.eval_batches=1",
            "train.max_seconds=0.001",
        ],
    )
    cfg.data.data_dir, cfg.data.dataset = benchmark_data.data_dir, benchmark_data.dataset
    out = train_and_evaluate(cfg, str(tmp_path), progress=False)
    assert out["step"] == 1 and "val_nll" in out
    assert evaluate.evaluate_run(str(tmp_path), split="validation")["step"] == 1
