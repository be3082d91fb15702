"""Dynamics (`model.velocity_bins`): bins, the velocity loss, a tiny model that learns a loudness rule from MIDI
files the test writes and writes it into sampled MIDI, primers that keep their velocities, and models without
dynamics (old checkpoints included) that train and sample exactly as before."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pretty_midi
import pytest
from flax import linen as nn

from musicgpt_jax import compose, configs, decode, dynamics, generation, pipeline, records
from musicgpt_jax.checkpoint import Checkpointer
from musicgpt_jax.frame_choice import sample_frame, sample_velocities
from musicgpt_jax.frames import DEFAULT_VELOCITY, HOLD, OFF, ONSET, Frames
from musicgpt_jax.midi_io import write_midi
from musicgpt_jax.model import MusicTransformer, frame_nll
from musicgpt_jax.saved_run import restore_params
from musicgpt_jax.train import TrainingError, check_compatible, train_and_evaluate
from musicgpt_jax.train_state import TrainState, make_optimizer
from musicgpt_jax.train_step import make_train_step

BINS = 32
SPLIT_PITCH = 60  # the rule the corpus follows: loud from middle C up, soft below
LOUD, SOFT = (96, 111), (32, 47)  # four bins each


def small_model(**overrides) -> configs.ModelConfig:
    fields = dict(num_pitches=16, num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_len=8, dropout=0.0)
    return configs.ModelConfig(**{**fields, **overrides})


def init_params(cfg: configs.ModelConfig, seed: int = 0):
    dummy = jnp.zeros((1, 4, cfg.num_pitches), jnp.int32)
    return nn.meta.unbox(MusicTransformer(cfg).init(jax.random.key(seed), dummy)["params"])


def random_frames(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    states = rng.integers(0, 3, shape).astype(np.int32)
    velocities = np.where(states == ONSET, rng.integers(0, BINS, shape), dynamics.NO_VELOCITY).astype(np.int32)
    return states, velocities


# ---------------------------------------------------------------------------------------------------- bins, loss


def test_bins_round_trip_and_cover_every_velocity():
    velocities = np.arange(1, 128)
    bins = dynamics.velocity_to_bin(velocities, BINS)
    assert bins.min() == 0 and bins.max() == BINS - 1 and np.all(np.diff(bins) >= 0)
    assert set(bins.tolist()) == set(range(BINS))
    assert np.bincount(bins).max() == 4  # Performance RNN's bins of 4 velocities
    centres = dynamics.bin_to_velocity(np.arange(BINS), BINS)
    np.testing.assert_array_equal(dynamics.velocity_to_bin(centres, BINS), np.arange(BINS))
    assert centres.min() >= 1 and centres.max() <= 127
    # every velocity is written back within its bin's width
    assert np.abs(dynamics.bin_to_velocity(bins, BINS).astype(int) - velocities).max() <= 2
    assert dynamics.velocity_to_bin(0, BINS) == dynamics.NO_VELOCITY
    assert dynamics.bin_to_velocity(dynamics.NO_VELOCITY, BINS) == 0
    states = np.array([[ONSET, HOLD, OFF, ONSET]])
    np.testing.assert_array_equal(
        dynamics.onset_velocity_bins(states, np.array([[127, 90, 90, 0]]), BINS), [[31, -1, -1, -1]]
    )


@pytest.mark.parametrize("head", ["independent", "nade"])
def test_velocity_loss_counts_only_target_onsets_and_depends_on_the_chord(head):
    cfg = small_model(velocity_bins=BINS, head=head)
    params = init_params(cfg)
    params["velocity_head"]["state_weights"] = params["velocity_head"]["state_weights"] * 50  # a chord that matters
    rng = np.random.default_rng(0)
    inputs, input_velocities = random_frames(rng, (2, 8, cfg.num_pitches))
    targets, target_velocities = random_frames(rng, (2, 8, cfg.num_pitches))
    mask = np.ones((2, 8), np.float32)
    mask[1, 5:] = 0
    out, _ = MusicTransformer(cfg).apply({"params": params}, inputs, velocities=input_velocities)

    def loss(velocities, states=targets):
        return dynamics.velocity_nll(out, states, velocities, mask, cfg, params)

    total, onsets = loss(target_velocities)
    assert onsets == np.sum((targets == ONSET) & (mask[..., None] > 0))
    assert 0.8 * math.log(BINS) < total / onsets < 1.2 * math.log(BINS)  # an untrained head: about uniform
    off_onsets = np.where(targets == ONSET, target_velocities, rng.integers(0, BINS, targets.shape))
    assert loss(off_onsets)[0] == total  # velocities anywhere but at the onsets count for nothing
    masked_out = target_velocities.copy()
    masked_out[1, 5:] = np.where(targets[1, 5:] == ONSET, (masked_out[1, 5:] + 7) % BINS, -1)
    assert loss(masked_out)[0] == total  # nor onsets of masked frames
    b, t, p = map(int, np.argwhere((targets == ONSET) & (mask[..., None] > 0))[0])
    changed = target_velocities.copy()
    changed[b, t, p] = (changed[b, t, p] + 16) % BINS
    assert loss(changed)[0] != total
    unknown = target_velocities.copy()
    unknown[b, t, p] = dynamics.NO_VELOCITY  # velocity 0 in the data (or a restarted note): not scored
    assert loss(unknown)[1] == onsets - 1

    # the logits of one pitch's velocity follow the states of the others (the chord), and the previous frames'
    # velocities (the input)
    logits = dynamics.velocity_logits(out, jnp.asarray(targets), cfg, params)
    other = targets.copy()
    other[b, t, (p + 1) % cfg.num_pitches] = (other[b, t, (p + 1) % cfg.num_pitches] + 1) % 3
    assert not np.allclose(logits[b, t, p], dynamics.velocity_logits(out, jnp.asarray(other), cfg, params)[b, t, p])
    louder, _ = MusicTransformer(cfg).apply(
        {"params": params}, inputs, velocities=np.where(inputs == ONSET, BINS - 1, -1)
    )
    assert not np.allclose(out, louder)
    # the notes' likelihood is the notes head's alone: velocities change nothing in it
    notes, frames = frame_nll(out, jnp.asarray(targets), mask, cfg, params)
    assert frames == mask.sum() and np.isfinite(notes)


# ---------------------------------------------------------------------------------------------------- no dynamics


def old_train_step(model, tx):
    """The train step as it was before dynamics (grad_accum 1, no scheduled sampling): the reference."""

    def loss_sums(params, micro, rng):
        out, _ = model.apply({"params": params}, micro["inputs"], deterministic=False, rngs={"dropout": rng})
        return frame_nll(out, micro["targets"], micro["mask"], model.cfg, params)

    grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

    def train_step(state, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (nll_sum, frames), grads = grad_fn(state.params, batch, rng)
        frames = jnp.maximum(frames, 1.0)
        grads = jax.tree.map(lambda g: g / frames, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": nll_sum / frames, "grad_norm": optax.global_norm(grads), "frames": frames}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


@pytest.mark.parametrize("head", ["independent", "nade"])
def test_without_dynamics_training_is_bitwise_the_old_path(head):
    cfg = configs.Config(model=small_model(head=head, dropout=0.1))
    assert cfg.model.velocity_bins == 0
    model, tx = MusicTransformer(cfg.model), make_optimizer(cfg.train)
    params = init_params(cfg.model)
    assert not any("velocity" in key for key in params)
    rng = np.random.default_rng(1)
    source = [{"states": random_frames(rng, (20, 16))[0], "velocities": np.zeros((20, 16), np.uint8)}]
    data = pipeline.train_dataset(source, seq_len=8, batch_size=4, seed=0, transpose=2)
    batches = [{k: jnp.asarray(data[i][k]) for k in data[i] if "index" not in k} for i in range(3)]
    # No velocity keys without dynamics.
    assert set(batches[0]) == {"inputs", "targets", "mask", "transposition", "steps"}
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(jax.random.key(3)))
    new, old = jax.jit(make_train_step(model, tx, 1)), jax.jit(old_train_step(model, tx))
    a = b = state
    for batch in batches:
        a, metrics_a = new(a, batch)
        b, metrics_b = old(b, batch)
        assert metrics_a["loss"] == metrics_b["loss"] and set(metrics_a) == set(metrics_b)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_config_saved_before_the_field_loads_and_samples_as_before(tmp_path):
    model = configs.ModelConfig(num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_len=32, dropout=0.0)
    saved = configs.Config(model=model).to_dict()
    saved["data"]["data_dir"] = str(tmp_path / "no-records")
    del saved["model"]["velocity_bins"]  # as every checkpoint written before dynamics
    cfg = configs.Config.from_dict(saved)
    assert cfg.model.velocity_bins == 0
    check_compatible(saved, cfg, "old")
    with pytest.raises(TrainingError, match="velocity_bins=0 \\(now 32\\)"):
        check_compatible(
            saved, configs.Config.from_dict({**saved, "model": {**saved["model"], "velocity_bins": 32}}), "x"
        )

    params = jax.tree.map(lambda p: p + 0.3 * jnp.sign(p), init_params(model))  # sharper than at init
    tx = make_optimizer(cfg.train)
    state = TrainState(jnp.asarray(1), params, tx.init(params), jax.random.key_data(jax.random.PRNGKey(0)))
    checkpointer = Checkpointer(tmp_path / "run", async_save=False)
    checkpointer.save(1, state, data_state={}, config=saved)
    checkpointer.close()
    samples = compose.sample_run(
        compose.SampleOptions(workdir=str(tmp_path / "run"), out=str(tmp_path / "out"), num_samples=2, frames=24),
        log=lambda _: None,
    )
    expected = decode.generate(
        params, model, np.zeros((2, 0, 128), np.int32), 24, jax.random.key(0), strategy=generation.DEFAULT_STRATEGY
    )
    for sample, states in zip(samples, np.asarray(expected), strict=True):
        np.testing.assert_array_equal(sample.generated, states)  # the same music as the notes-only path draws
        onsets = sample.frames.velocities > 0
        assert onsets.any() and np.all(sample.frames.velocities[onsets] == DEFAULT_VELOCITY)


# ---------------------------------------------------------------------------------------------------- learning


def write_loudness_corpus(folder: Path, pieces: int = 20) -> Path:
    """Pieces of random chords and lines on MIDI 48..71, loud (LOUD) from SPLIT_PITCH up, soft (SOFT) below."""
    folder.mkdir(parents=True, exist_ok=True)
    for piece in range(pieces):
        rng = np.random.default_rng(piece)
        midi = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120.0)
        piano = pretty_midi.Instrument(program=0)
        time = 0.0
        for _ in range(32):  # 32 eighth-note events
            for pitch in rng.choice(np.arange(48, 72), size=int(rng.integers(1, 4)), replace=False):
                low, high = LOUD if pitch >= SPLIT_PITCH else SOFT
                velocity = int(rng.integers(low, high + 1))
                piano.notes.append(pretty_midi.Note(velocity, int(pitch), time, time + 0.25))
            time += 0.25
        midi.instruments.append(piano)
        midi.write(str(folder / f"piece_{piece:02d}.mid"))
    return folder


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny model with dynamics trained 80 steps on the loudness corpus (no transposition: the rule is by pitch)."""
    root = tmp_path_factory.mktemp("dynamics")
    midi = write_loudness_corpus(root / "midi")
    records.build_midi_dataset(midi, root / "records", "loud", workers=1, progress=False, val_percent=20)
    cfg = configs.resolve(
        "tiny",
        [
            "model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64", "model.max_len=32",
            "model.dropout=0.0", "model.velocity_bins=32", "train.batch_size=8", "train.steps=80",
            "train.warmup_steps=10", "train.learning_rate=0.005", "train.log_every=1", "train.eval_every=40",
            "train.checkpoint_every=80", "train.async_checkpoints=false", "data.transpose=0",
        ],
    )  # fmt: skip
    cfg.data.data_dir, cfg.data.dataset = str(root / "records"), "loud"
    last = train_and_evaluate(cfg, str(root / "run"), progress=False)
    return root, last


def test_a_tiny_model_learns_the_loudness_rule_and_writes_it_to_midi(trained_run):
    root, last = trained_run
    lines = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    train_velocity = [line["velocity_nll"] for line in lines if "velocity_nll" in line]
    val_velocity = [line["val_velocity_nll"] for line in lines if "val_velocity_nll" in line]
    assert train_velocity[0] > 0.8 * math.log(BINS)
    # the rule leaves 4 equally likely bins (log 4 = 1.39 nats); knowing nothing costs log 32 = 3.47
    assert last["val_velocity_nll"] < 0.6 * math.log(BINS), val_velocity
    assert train_velocity[-1] < 0.6 * math.log(BINS), train_velocity
    assert math.isfinite(last["val_nll"]) and all(("notes_nll" in line) == ("loss" in line) for line in lines)
    from musicgpt_jax import evaluate

    result = evaluate.evaluate_run(str(root / "run"), split="validation")  # sliding windows: close, not equal
    assert result["onsets"] > 100 and result["velocity_nats_per_onset"] < 0.6 * math.log(BINS), result
    assert result["nats_per_frame"] == pytest.approx(last["val_nll"], rel=0.2)

    samples = compose.sample_run(
        compose.SampleOptions(workdir=str(root / "run"), out=str(root / "samples"), num_samples=4, bars=4, seed=1),
        log=lambda _: None,
    )
    loud, soft = [], []
    for sample in samples:
        written = pretty_midi.PrettyMIDI(str(root / "samples" / f"{sample.name}.mid"))
        for note in written.instruments[0].notes:
            (loud if note.pitch >= SPLIT_PITCH else soft).append(note.velocity)
    loud, soft = np.asarray(loud), np.asarray(soft)
    assert len(loud) > 10 and len(soft) > 10
    assert len(set(loud.tolist()) | set(soft.tolist())) > 4  # velocities vary
    assert np.mean((loud >= LOUD[0] - 8) & (loud <= LOUD[1] + 8)) > 0.8, loud
    assert np.mean((soft >= SOFT[0] - 8) & (soft <= SOFT[1] + 8)) > 0.8, soft


def primer_file(path: Path) -> Path:
    """A bar of eighth-note chords whose velocities rise from 20 to 76 (a crescendo)."""
    states = np.zeros((32, 128), np.uint8)
    velocities = np.zeros_like(states)
    for k, onset in enumerate(range(0, 32, 4)):
        for pitch in (55, 64):
            states[onset : onset + 4, pitch] = HOLD
            states[onset, pitch] = ONSET
            velocities[onset, pitch] = 20 + 8 * k
    write_midi(Frames(states, velocities, tempos=((0, 120.0),)), path)
    return path


def test_a_primer_keeps_its_velocities_and_the_model_hears_them(trained_run, tmp_path):
    root, _ = trained_run
    primer = primer_file(tmp_path / "primer.mid")
    samples = compose.sample_run(
        compose.SampleOptions(
            workdir=str(root / "run"), out=str(tmp_path / "out"), num_samples=2, bars=1, prime=str(primer),
            prime_bars=1, include_prime=True,
        ),
        log=lambda _: None,
    )  # fmt: skip
    for sample in samples:
        head = sample.frames.velocities[: sample.prime_frames]
        np.testing.assert_array_equal(head[:, 64][::4], 20 + 8 * np.arange(8))
        np.testing.assert_array_equal(head[:, 55][::4], 20 + 8 * np.arange(8))
        assert np.count_nonzero(head) == 16

    # the primer's velocities are the model's context: other velocities, another output (same states)
    cfg, _ = compose.load_config(str(root / "run"))
    params = restore_params(str(root / "run"), cfg)
    grid = generation.grid_of(cfg)
    read = generation.read_primer(str(primer), grid, 1, cfg.model.max_len)
    bins = dynamics.onset_velocity_bins(read.states, read.velocities, BINS)
    context = decode.context_of(jnp.asarray(read.states[None]), cfg.model.max_len)
    outputs = [
        decode.prefill(params, cfg.model, context, velocities=decode.context_of(jnp.asarray(v[None]), 32, -1))[0]
        for v in (bins, np.where(bins >= 0, BINS - 1, -1))
    ]
    # (exactly unequal: this corpus's velocities follow the pitch alone, so the trained model barely listens)
    assert not np.array_equal(outputs[0][:, -1], outputs[1][:, -1])
    # and the decode loop feeds them: its first draw (states, then their velocities) is the one from that output
    key = jax.random.key(0)
    states, velocities = decode.generate_with_velocities(params, cfg.model, read.states[None], bins[None], 1, key)
    first_key, previous = jax.random.fold_in(key, 0), jnp.asarray(read.states[None, -1])
    expected = sample_frame(outputs[0][:, -1], first_key, 1.0, previous, 3, cfg.model, params)
    np.testing.assert_array_equal(np.asarray(states[:, 0]), np.asarray(expected))
    expected_bins = sample_velocities(
        outputs[0][:, -1], expected, jax.random.fold_in(first_key, 1), 1.0, cfg.model, params
    )
    np.testing.assert_array_equal(np.asarray(velocities[:, 0]), np.asarray(expected_bins))
    assert np.all((np.asarray(velocities) >= 0) == (np.asarray(states) == ONSET))


def test_dynamics_train_step_accumulates_and_takes_own_samples():
    """Gradient accumulation sums the velocity terms as one big batch does; scheduled sampling runs with the
    teacher-forced velocities beside the model's own notes."""
    cfg = configs.Config(model=small_model(velocity_bins=BINS, head="nade"))
    model, tx = MusicTransformer(cfg.model), make_optimizer(cfg.train)
    params = init_params(cfg.model)
    rng = np.random.default_rng(2)
    source = [
        {"states": states.astype(np.uint8), "velocities": rng.integers(1, 128, (40, 16)).astype(np.uint8)}
        for states in (random_frames(rng, (40, 16))[0] for _ in range(3))
    ]
    data = pipeline.train_dataset(source, seq_len=8, batch_size=4, seed=0, transpose=2, velocity_bins=BINS)
    batch = {k: jnp.asarray(v) for k, v in data[0].items() if "index" not in k}
    assert set(batch) == {
        "inputs",
        "targets",
        "mask",
        "transposition",
        "steps",
        "input_velocities",
        "target_velocities",
    }
    onsets = np.asarray(batch["inputs"]) == ONSET
    assert np.all((np.asarray(batch["input_velocities"]) >= 0) == onsets)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(jax.random.key(3)))
    one, metrics_one = jax.jit(make_train_step(model, tx, 1))(state, batch)
    two, metrics_two = jax.jit(make_train_step(model, tx, 2))(state, batch)
    for key in ("loss", "notes_nll", "velocity_nll"):
        np.testing.assert_allclose(metrics_one[key], metrics_two[key], rtol=1e-5)
    np.testing.assert_allclose(metrics_one["loss"] - metrics_one["notes_nll"], metrics_one["velocity_nll"] * np.sum(
        (np.asarray(batch["targets"]) == ONSET) & (np.asarray(batch["target_velocities"]) >= 0)
    ) / metrics_one["frames"], rtol=1e-5)  # fmt: skip
    for x, y in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    own = configs.TrainConfig(scheduled_sampling=0.5, steps=10)
    _, metrics = jax.jit(make_train_step(model, tx, 1, own))(state, batch)
    assert np.isfinite(metrics["velocity_nll"]) and metrics["velocity_nll"] > 0
