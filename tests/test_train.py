"""Training on benchmark records (JSB Chorales, or the synthetic corpus without ../shared): sharding equivalence,
exact resume, SIGTERM, corruption, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, TINY_OVERRIDES, BenchmarkData
from jax.sharding import PartitionSpec as P

from musicgpt_jax import configs, pipeline, records, sharding
from musicgpt_jax.checkpoint import Checkpointer
from musicgpt_jax.model import MusicTransformer, frame_nll
from musicgpt_jax.saved_run import restore_params
from musicgpt_jax.train import TrainingError, check_compatible, train_and_evaluate
from musicgpt_jax.train_state import abstract_train_state, create_train_state, evaluation_params, make_optimizer
from musicgpt_jax.train_step import global_batch, make_train_step


def tiny_config(data: BenchmarkData, *overrides: str) -> configs.Config:
    cfg = configs.resolve("jsb", [*TINY_OVERRIDES, *overrides])
    cfg.data.data_dir, cfg.data.dataset = data.data_dir, data.dataset
    return cfg


def restore_state(workdir: Path, cfg: configs.Config, mesh_spec: str = ""):
    mesh = sharding.make_mesh(mesh_spec, jax.devices()[:1] if not mesh_spec else None)
    model, tx = MusicTransformer(cfg.model), make_optimizer(cfg.train)
    _, shardings = create_train_state(model, tx, cfg, mesh)
    state, data_state, step = Checkpointer(workdir, async_save=False).restore(
        abstract_train_state(shardings, model, tx, cfg)
    )
    return state, data_state, step


def assert_trees_equal(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sharded_training_equals_single_device(benchmark_data):
    cfg = tiny_config(benchmark_data, "model.dropout=0.0")
    source = records.load_split(benchmark_data.data_dir, benchmark_data.dataset, "train")
    data = pipeline.train_dataset(source, seq_len=cfg.model.max_len, batch_size=8, seed=0)
    batches = [{k: data[i][k] for k in ("inputs", "targets", "mask")} for i in range(3)]
    results = {}
    for spec, devices in (("", jax.devices()[:1]), ("data=2,fsdp=2,tensor=2", jax.devices())):
        mesh = sharding.make_mesh(spec, devices)
        model, tx = MusicTransformer(cfg.model), make_optimizer(cfg.train)
        state, shardings = create_train_state(model, tx, cfg, mesh)
        step = jax.jit(make_train_step(model, tx, 1), in_shardings=(shardings, None), out_shardings=(shardings, None))

        def loss(params, batch, model=model):
            out = model.apply({"params": params}, batch["inputs"])[0]
            s, n = frame_nll(out, batch["targets"], batch["mask"], model.cfg, params)
            return s / n

        with sharding.activate(mesh):
            losses = []
            for b in batches:
                state, metrics = step(state, global_batch(b, mesh))
                losses.append(float(metrics["loss"]))
            grads = jax.jit(jax.grad(loss))(state.params, global_batch(batches[0], mesh))
        results[spec] = (losses, grads, state)

    (l1, g1, _), (l8, g8, s8) = results[""], results["data=2,fsdp=2,tensor=2"]
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8), strict=True):
        # rtol 1e-5 of each gradient tensor's scale: entries near zero differ by summation order alone.
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    # Every parameter sits where the rule table says, and is really split that way.
    params = s8.params
    expected = {
        ("embed", "table"): P(None, None, "fsdp"),
        ("layer_0", "attention", "query"): P("fsdp", "tensor", None),
        ("layer_0", "attention", "out"): P("tensor", None, "fsdp"),
        ("layer_1", "mlp", "gate", "kernel"): P("fsdp", "tensor"),
        ("layer_1", "mlp", "down", "kernel"): P("tensor", "fsdp"),
        ("head", "direct", "kernel"): P("fsdp", None, None),
        ("head", "context"): P("fsdp", None),
        ("head", "input_weights"): P(None, None, None),
        ("final_norm", "scale"): P(None),
    }
    for path, spec in expected.items():
        leaf = params
        for key in path:
            leaf = leaf[key]
        assert leaf.sharding.spec == spec, path
    gate = params["layer_1"]["mlp"]["gate"]["kernel"]
    assert gate.addressable_shards[0].data.shape == (gate.shape[0] // 2, gate.shape[1] // 2)
    # Optimizer moments follow their parameters.
    mu = s8.opt_state[1][0].mu["layer_1"]["mlp"]["gate"]["kernel"]
    assert mu.sharding.spec == P("fsdp", "tensor")


def test_resume_is_bitwise_exact(benchmark_data, tmp_path):
    straight = tiny_config(benchmark_data, "train.steps=6", "train.checkpoint_every=3")
    train_and_evaluate(straight, str(tmp_path / "straight"), progress=False)
    first = tiny_config(benchmark_data, "train.steps=3", "train.checkpoint_every=3")
    train_and_evaluate(first, str(tmp_path / "split"), progress=False)
    second = tiny_config(benchmark_data, "train.steps=6", "train.checkpoint_every=3")
    train_and_evaluate(second, str(tmp_path / "split"), progress=False)
    a, data_a, step_a = restore_state(tmp_path / "straight", straight)
    b, data_b, step_b = restore_state(tmp_path / "split", second)
    assert step_a == step_b == 6 and data_a == data_b
    assert_trees_equal(a.params, b.params)
    assert_trees_equal(a.opt_state, b.opt_state)


def test_resume_on_another_mesh_matches(benchmark_data, tmp_path):
    base = ["train.checkpoint_every=2", "model.dropout=0.0", "model.num_layers=1"]  # one layer: what moves is the mesh
    straight = tiny_config(benchmark_data, "train.steps=4", *base)
    straight.mesh = "data=2,fsdp=4,tensor=1"
    train_and_evaluate(straight, str(tmp_path / "a"), progress=False)
    first = tiny_config(benchmark_data, "train.steps=2", *base)
    first.mesh = "data=2,fsdp=4,tensor=1"
    train_and_evaluate(first, str(tmp_path / "b"), progress=False)
    second = tiny_config(benchmark_data, "train.steps=4", *base)
    second.mesh = "data=1,fsdp=2,tensor=4"
    train_and_evaluate(second, str(tmp_path / "b"), progress=False)

    def losses(workdir):
        lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in lines if "loss" in r}

    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    # Adam turns float-rounding differences of near-zero gradients into lr-sized steps, so compare the losses.
    np.testing.assert_allclose([b[s] for s in (3, 4)], [a[s] for s in (3, 4)], rtol=1e-5)


def run_train(workdir: Path, data: BenchmarkData, *args: str, **popen) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "--config",
        "jsb",
        "--workdir",
        str(workdir),
        "--data_dir",
        data.data_dir,
        "--dataset",
        data.dataset,
        "--no_progress",
        *[f"--config.{o}" for o in TINY_OVERRIDES],
        *args,
    ]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_checkpoint(workdir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    target = workdir / "checkpoints" / str(step)
    deadline = time.time() + timeout
    while not target.is_dir():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_sigkill_after_save_then_resume_is_exact(benchmark_data, tmp_path):
    common = ("--config.train.checkpoint_every=3", "--config.train.async_checkpoints=false")
    straight = run_train(tmp_path / "straight", benchmark_data, "--steps", "6", *common)
    assert straight.wait(timeout=300) == 0, straight.communicate()[1][-2000:]
    killed = run_train(tmp_path / "killed", benchmark_data, "--steps", "400", *common)
    wait_for_checkpoint(tmp_path / "killed", 3, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = run_train(tmp_path / "killed", benchmark_data, "--steps", "6", *common)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed from" in err
    cfg = tiny_config(benchmark_data, "train.steps=6")
    a, _, _ = restore_state(tmp_path / "straight", cfg)
    b, _, step = restore_state(tmp_path / "killed", cfg)
    assert step == 6
    assert_trees_equal(a.params, b.params)
    assert_trees_equal(a.opt_state, b.opt_state)


def test_sigterm_saves_current_step_and_exits_zero(benchmark_data, tmp_path):
    proc = run_train(tmp_path, benchmark_data, "--steps", "100000", "--config.train.checkpoint_every=5")
    wait_for_checkpoint(tmp_path, 5, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    match = re.search(r"SIGTERM: saved a checkpoint at step (\d+)", err)
    assert match, err[-2000:]
    stopped_at = int(match.group(1))
    assert stopped_at >= 5 and Checkpointer(tmp_path, async_save=False).steps()[-1] == stopped_at
    again = run_train(tmp_path, benchmark_data, "--steps", str(stopped_at + 2))
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    assert f"at step {stopped_at}" in err
    assert Checkpointer(tmp_path, async_save=False).steps()[-1] == stopped_at + 2


def test_corrupted_latest_checkpoint_falls_back(benchmark_data, tmp_path, capsys):
    cfg = tiny_config(benchmark_data, "train.steps=4", "train.checkpoint_every=2", "train.async_checkpoints=false")
    train_and_evaluate(cfg, str(tmp_path), progress=False)
    state_dir = tmp_path / "checkpoints" / "4" / "state"
    # The array data the top-level OCDBT manifest points at.
    victim = max((state_dir / "d").iterdir(), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    state, _, step = restore_state(tmp_path, cfg)
    assert step == 2
    assert "falling back to step 2" in capsys.readouterr().err
    resumed = tiny_config(benchmark_data, "train.steps=5", "train.checkpoint_every=2", "train.async_checkpoints=false")
    metrics = train_and_evaluate(resumed, str(tmp_path), progress=False)
    assert metrics["step"] == 5 and np.isfinite(metrics["loss"])


def test_loss_falls(benchmark_data, tmp_path):
    cfg = tiny_config(benchmark_data, "train.steps=40", "train.learning_rate=3e-3", "train.checkpoint_every=40")
    train_and_evaluate(cfg, str(tmp_path), progress=False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
    assert (tmp_path / "tensorboard").is_dir()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(benchmark_data, tmp_path):
    cfg = tiny_config(benchmark_data, "train.steps=2", "train.checkpoint_every=2", "train.async_checkpoints=false")
    train_and_evaluate(cfg, str(tmp_path), progress=False)
    good, _, _ = restore_state(tmp_path, cfg)
    bad = tiny_config(
        benchmark_data,
        "train.steps=6",
        "train.checkpoint_every=2",
        "train.learning_rate=inf",
        "train.async_checkpoints=false",
    )
    with pytest.raises(TrainingError, match="loss is nan"):
        train_and_evaluate(bad, str(tmp_path), progress=False)
    after, _, step = restore_state(tmp_path, cfg)
    assert step == 2
    assert_trees_equal(good.params, after.params)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "nope"], "unknown preset"),
        (["--config.model.no_such_field=1"], "unknown key"),
        (["--config.train.steps=abc"], "expected int"),
        (["--mesh", "data=3"], "devices"),
        (["--dataset", "missing"], "python data/prepare.py"),
    ],
)
def test_bad_input_is_one_clear_line(benchmark_data, tmp_path, args, message):
    proc = run_train(tmp_path, benchmark_data, "--steps", "1", *args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err[-1000:]


def test_incompatible_workdir_is_refused(benchmark_data, tmp_path):
    cfg = tiny_config(benchmark_data, "train.steps=1", "train.checkpoint_every=1")
    train_and_evaluate(cfg, str(tmp_path), progress=False)
    wider = tiny_config(benchmark_data, "train.steps=2", "model.d_model=64")
    with pytest.raises(TrainingError, match="incompatible"):
        train_and_evaluate(wider, str(tmp_path), progress=False)


def test_incompatible_nade_width_is_named_and_old_checkpoints_still_load():
    nade = configs.resolve("jsb", ["model.head=nade", "model.nade_hidden=32"])
    saved = {"model": dataclasses.asdict(nade.model)}
    with pytest.raises(TrainingError, match=r"nade_hidden=32 \(now 16\)"):
        check_compatible(saved, configs.resolve("jsb", ["model.head=nade", "model.nade_hidden=16"]), "w")
    independent = configs.resolve("jsb", ["model.head=independent"])
    old_keys = {k: v for k, v in dataclasses.asdict(independent.model).items() if k not in ("head", "nade_hidden")}
    saved = {"model": old_keys}
    check_compatible(saved, independent, "w")  # written before the NADE head existed: the independent head
    with pytest.raises(TrainingError, match="head='independent' \\(now 'nade'\\)"):
        check_compatible(saved, nade, "w")


def trees_close(a, b) -> bool:
    return all(np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_grad_accumulation_matches_one_big_batch(benchmark_data):
    cfg = tiny_config(benchmark_data, "model.dropout=0.0")
    source = records.load_split(benchmark_data.data_dir, benchmark_data.dataset, "train")
    batch = {
        k: v
        for k, v in pipeline.train_dataset(source, seq_len=32, batch_size=8, seed=1)[0].items()
        if k in ("inputs", "targets", "mask")
    }
    mesh = sharding.make_mesh("", jax.devices()[:1])
    model, tx = MusicTransformer(cfg.model), make_optimizer(cfg.train)
    outs = []
    for accum in (1, 4):
        state, _ = create_train_state(model, tx, cfg, mesh)
        with sharding.activate(mesh):
            new_state, metrics = jax.jit(make_train_step(model, tx, accum))(state, jax.tree.map(jnp.asarray, batch))
        outs.append((float(metrics["loss"]), new_state.params))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-5)
    for a, b in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1]), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_parameter_average_follows_its_recurrence_and_is_what_evaluation_uses(benchmark_data, tmp_path):
    decay = 0.9
    cfg = tiny_config(
        benchmark_data, f"train.ema_decay={decay}", "train.steps=4", "train.checkpoint_every=4", "model.num_layers=1"
    )
    source = records.load_split(benchmark_data.data_dir, benchmark_data.dataset, "train")
    batches = pipeline.train_dataset(source, seq_len=32, batch_size=8, seed=1)
    mesh = sharding.make_mesh("fsdp=8")  # the average is sharded like the parameters
    model, tx = MusicTransformer(cfg.model), make_optimizer(cfg.train)
    state, shardings = create_train_state(model, tx, cfg, mesh)
    for ema_sharding, param_sharding in zip(
        jax.tree.leaves(shardings.opt_state[-1].ema), jax.tree.leaves(shardings.params), strict=True
    ):
        assert ema_sharding == param_sharding
    expected = jax.tree.map(np.asarray, state.params)
    step = jax.jit(make_train_step(model, tx, 1))
    with sharding.activate(mesh):
        for n in range(4):
            batch = {k: jnp.asarray(v) for k, v in batches[n].items() if k in ("inputs", "targets", "mask")}
            state, _ = step(state, global_batch(batch, mesh))
            rate = min(decay, (1 + n) / (10 + n))
            expected = jax.tree.map(lambda e, p, r=rate: r * e + (1 - r) * np.asarray(p), expected, state.params)
    average = evaluation_params(state)
    for got, want in zip(jax.tree.leaves(average), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    assert not trees_close(average, state.params)
    # A trained workdir hands `evaluate` and `sample.py` the average, not the raw parameters.
    train_and_evaluate(cfg, str(tmp_path), progress=False)
    saved, _, _ = restore_state(tmp_path, cfg)
    assert_trees_equal(restore_params(str(tmp_path), cfg), evaluation_params(saved))
    assert not trees_close(saved.params, evaluation_params(saved))


@pytest.mark.parametrize(
    "option",
    [
        "model.d_model=64",
        "model.num_layers=3",
        "model.mlp_dim=128",
        "model.head=independent",
        "model.nade_hidden=16",
        "model.velocity_bins=8",
        "model.condition_on_transposition=true",
        "model.beat_steps=8",
        "model.scan_layers=true",
    ],
)
def test_resuming_with_a_shape_changing_option_flipped_is_refused_in_one_line(option):
    # the check compares the parameter shapes of the saved config's model and ours: every option that adds or
    # resizes a parameter is named, with no list of names to keep up to date
    base = configs.resolve("jsb", [o for o in TINY_OVERRIDES if o.startswith("model.")])
    flipped = configs.resolve("jsb", [o for o in TINY_OVERRIDES if o.startswith("model.")] + [option])
    key, value = option.removeprefix("model.").split("=")
    for saved, ours in ((base, flipped), (flipped, base)):  # flipped on, and back off
        with pytest.raises(TrainingError) as refused:
            check_compatible(saved.to_dict(), ours, "w")
        message = str(refused.value)
        assert "\n" not in message and message.startswith("w: holds checkpoints of an incompatible model: ")
        assert f"{key}=" in message and message.endswith("; use another --workdir"), message
    dropout = configs.resolve("jsb", [o for o in TINY_OVERRIDES if o.startswith("model.")] + ["model.dropout=0.3"])
    check_compatible(base.to_dict(), dropout, "w")  # no parameter changes: it resumes
