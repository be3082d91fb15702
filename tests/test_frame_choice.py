"""The named sampling strategies, the corpus keyboard and the model's own samples mixed into training inputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from musicgpt_jax import configs, sharding
from musicgpt_jax.configs import ModelConfig, TrainConfig
from musicgpt_jax.frame_choice import Strategy, choose, sample_frame
from musicgpt_jax.model import MusicTransformer
from musicgpt_jax.train_state import create_train_state, make_optimizer
from musicgpt_jax.train_step import make_train_step, restart_held_notes, scheduled_sampling_rate, with_own_samples

LOGITS = jnp.log(jnp.asarray([0.6, 0.3, 0.1]))


def draws(strategy: Strategy, n: int = 20_000) -> np.ndarray:
    keys = jax.random.split(jax.random.key(0), n)
    picked = jax.vmap(lambda key: choose(LOGITS, key, strategy.arrays()))(keys)
    return np.bincount(np.asarray(picked), minlength=3) / n


def test_temperature_one_draws_the_distribution_and_greedy_its_mode():
    np.testing.assert_allclose(draws(Strategy("temperature", 1.0)), [0.6, 0.3, 0.1], atol=0.015)
    np.testing.assert_array_equal(draws(Strategy("greedy", 1.0), 50), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(draws(Strategy("temperature", 0.0), 50), [1.0, 0.0, 0.0])


def test_temperature_sharpens_and_flattens():
    cold, hot = draws(Strategy("temperature", 0.5)), draws(Strategy("temperature", 2.0))
    expected_cold = np.array([0.6, 0.3, 0.1]) ** 2 / np.sum(np.array([0.6, 0.3, 0.1]) ** 2)
    np.testing.assert_allclose(cold, expected_cold, atol=0.015)
    assert hot[2] > 0.15 and hot[0] < 0.5


@pytest.mark.parametrize(("top_p", "expected"), [(0.5, [1.0, 0, 0]), (0.85, [2 / 3, 1 / 3, 0]), (1.0, [0.6, 0.3, 0.1])])
def test_nucleus_keeps_the_smallest_set_that_reaches_top_p(top_p, expected):
    np.testing.assert_allclose(draws(Strategy("nucleus", 1.0, top_p)), expected, atol=0.015)


def test_top_p_only_acts_in_the_nucleus_strategy():
    np.testing.assert_allclose(draws(Strategy("temperature", 1.0, 0.5)), [0.6, 0.3, 0.1], atol=0.015)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"name": "beam"}, "--strategy beam"), ({"temperature": -1.0}, "--temperature -1"), ({"top_p": 0.0}, "--top_p")],
)
def test_bad_strategy_values_are_one_line_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle) as error:
        Strategy(**kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("head", ["independent", "nade"])
def test_pitches_off_the_keyboard_never_sound(head):
    cfg = ModelConfig(num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_len=8, num_pitches=12, head=head)
    params = nn.meta.unbox(MusicTransformer(cfg).init(jax.random.key(0), jnp.zeros((1, 2, 12), jnp.int32))["params"])
    out, _ = MusicTransformer(cfg).apply({"params": params}, jnp.zeros((64, 1, 12), jnp.int32))
    allowed = jnp.arange(12) >= 6
    hot = Strategy("temperature", 5.0).arrays()  # flat: every state of every pitch is drawn somewhere
    previous = jnp.zeros((64, 12), jnp.int32)
    frames = np.asarray(sample_frame(out[:, 0], jax.random.key(1), hot, previous, 3, cfg, params, allowed))
    assert frames[:, :6].max() == 0
    assert (frames[:, 6:] == 1).mean() > 0.2  # the allowed pitches still start notes


def test_own_samples_replace_the_chosen_share_of_frames_and_keep_holds_consistent():
    cfg = ModelConfig(num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_len=16, num_pitches=10)
    model = MusicTransformer(cfg)
    inputs = jax.random.randint(jax.random.key(2), (8, 16, 10), 0, 2)  # off and onset only: every hold is drawn
    params = nn.meta.unbox(model.init(jax.random.key(0), inputs)["params"])
    np.testing.assert_array_equal(with_own_samples(model, params, inputs, jax.random.key(3), 0.0), inputs)
    mixed = np.asarray(with_own_samples(model, params, inputs, jax.random.key(3), 0.5))
    np.testing.assert_array_equal(mixed[:, 0], inputs[:, 0])  # the first frame is always the data's
    replaced = (mixed[:, 1:] != np.asarray(inputs[:, 1:])).any(axis=-1)
    assert 0.3 < replaced.mean() < 0.7
    holds = mixed[:, 1:] == 2
    assert not (holds & (np.asarray(inputs[:, :-1]) == 0)).any()  # a drawn hold only continues a sounding note
    again = np.asarray(with_own_samples(model, params, inputs, jax.random.key(3), 0.5))
    np.testing.assert_array_equal(mixed, again)


def test_scheduled_sampling_rises_to_its_rate_half_way_through_the_rest_of_the_schedule():
    cfg = TrainConfig(steps=1000, scheduled_sampling=0.4)
    rates = [float(scheduled_sampling_rate(cfg, jnp.asarray(step))) for step in (0, 250, 500, 999)]
    np.testing.assert_allclose(rates, [0.0, 0.2, 0.4, 0.4], rtol=1e-6)
    late = TrainConfig(steps=1000, scheduled_sampling=0.4, scheduled_sampling_start=200)
    rates = [float(scheduled_sampling_rate(late, jnp.asarray(step))) for step in (0, 200, 400, 600, 999)]
    np.testing.assert_allclose(rates, [0.0, 0.0, 0.2, 0.4, 0.4], rtol=1e-6)
    assert float(scheduled_sampling_rate(TrainConfig(steps=1000), jnp.asarray(999))) == 0.0


def test_before_scheduled_sampling_starts_a_step_is_bitwise_a_plain_step():
    cfg = configs.resolve("tiny", ["model.num_layers=1", "model.d_model=32", "model.mlp_dim=64", "model.max_len=16"])
    cfg.model.num_pitches = 12
    model, tx = MusicTransformer(cfg.model), make_optimizer(cfg.train)
    rng = np.random.default_rng(0)
    piece = rng.integers(0, 2, (4, 17, 12))  # off or onset; then a note goes on (HOLD) half the time
    for t in range(1, 17):
        piece[:, t] = np.where((piece[:, t - 1] > 0) & (rng.random((4, 12)) < 0.5), 2, piece[:, t])
    batch = {"inputs": jnp.asarray(piece[:, :-1]), "targets": jnp.asarray(piece[:, 1:]), "mask": jnp.ones((4, 16))}
    state, _ = create_train_state(model, tx, cfg, sharding.make_mesh("", devices=jax.devices()[:1]))
    # One step first: the learning rate follows the optimizer's own count, which starts the warm-up at 0.
    state = jax.jit(make_train_step(model, tx, 1))(state, batch)[0].replace(step=jnp.asarray(40))

    def step(train_cfg=None):
        return jax.jit(make_train_step(model, tx, 1, train_cfg))(state, batch)[0].params

    plain = step()
    waiting = step(dataclasses.replace(cfg.train, scheduled_sampling=0.5, scheduled_sampling_start=50))
    jax.tree.map(np.testing.assert_array_equal, plain, waiting)
    mixed = step(dataclasses.replace(cfg.train, scheduled_sampling=0.5, scheduled_sampling_start=0, steps=60))
    assert not np.array_equal(mixed["embed"]["table"], plain["embed"]["table"])
    assert not np.array_equal(plain["embed"]["table"], state.params["embed"]["table"])


def test_a_hold_after_a_dropped_note_is_learned_as_a_restart():
    inputs = jnp.asarray([[[1, 2, 0, 0], [0, 2, 1, 0]]])  # the second input frame dropped pitch 0
    targets = jnp.asarray([[[2, 2, 2, 0], [2, 0, 2, 2]]])
    fixed = np.asarray(restart_held_notes(inputs, targets, 3))
    np.testing.assert_array_equal(fixed, [[[2, 2, 1, 0], [1, 0, 2, 1]]])
    np.testing.assert_array_equal(restart_held_notes(inputs % 2, targets % 2, 2), targets % 2)  # on/off: as is
