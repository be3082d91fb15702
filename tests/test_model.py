"""Model options that change how the step is computed, not what: remat policies and the attention kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from musicgpt_jax import configs, records
from musicgpt_jax.frame_choice import sample_frame
from musicgpt_jax.model import (
    MusicTransformer,
    attention_implementation,
    frame_log_likelihood,
    frame_nll,
    nade_logits,
    sum_below,
)


@pytest.fixture(scope="module")
def chorale_batch(benchmark_data) -> np.ndarray:
    """Two 33-frame crops of training pieces of `benchmark_data` (JSB Chorales, or the synthetic corpus; 88
    pitches, on/off)."""
    pieces = records.load_split(benchmark_data.data_dir, benchmark_data.dataset, "train")
    return np.stack([pieces[0]["states"][:33], pieces[1]["states"][:33]]).astype(np.int32)


def loss_and_grads(model_cfg: configs.ModelConfig, params, frames: np.ndarray):
    model = MusicTransformer(model_cfg)

    def loss(p):
        logits, _ = model.apply({"params": p}, frames[:, :-1])
        total, count = frame_nll(logits, frames[:, 1:], jnp.ones(frames.shape[:1] + (frames.shape[1] - 1,)))
        return total / count

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_policies_give_the_same_loss_and_gradients(chorale_batch, scan_layers):
    base = configs.ModelConfig(
        num_pitches=88, num_states=2, num_layers=2, d_model=32, num_heads=4, mlp_dim=64, max_len=32, dropout=0.0,
        scan_layers=scan_layers,
    )  # fmt: skip
    params = nn.meta.unbox(MusicTransformer(base).init(jax.random.key(0), chorale_batch[:, :-1])["params"])
    ref_loss, ref_grads = loss_and_grads(base, params, chorale_batch)
    assert 0 < float(ref_loss) < 200
    for policy in ("nothing_saveable", "dots_with_no_batch_dims_saveable"):
        cfg = configs.ModelConfig(**{**base.__dict__, "remat": True, "remat_policy": policy})
        loss, grads = loss_and_grads(cfg, params, chorale_batch)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        for g, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6 * float(jnp.abs(ref).max()))


def test_attention_kernel_follows_the_platform_and_dtype():
    backend = jax.default_backend()
    cfg = configs.resolve("base")  # bfloat16, head_dim 64: cuDNN-eligible
    assert attention_implementation(cfg.model) == {"gpu": "cudnn", "cpu": "matmul"}.get(backend, "xla")
    tiny = configs.resolve("tiny").model  # float32 is never sent to cuDNN
    assert attention_implementation(tiny) == ("matmul" if backend == "cpu" else "xla")
    assert attention_implementation(configs.resolve("base", ["model.attention=xla"]).model) == "xla"
    assert attention_implementation(configs.resolve("tiny", ["model.attention=cudnn"]).model) == "cudnn"


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_matmul_attention_equals_jax_attention(chorale_batch, dtype, tolerance):
    cfg = configs.ModelConfig(
        num_pitches=88, num_states=2, num_layers=2, d_model=32, num_heads=4, mlp_dim=64, max_len=32, dropout=0.0,
        dtype=dtype, attention="xla",
    )  # fmt: skip
    params = nn.meta.unbox(MusicTransformer(cfg).init(jax.random.key(0), chorale_batch[:, :-1])["params"])
    ref_loss, ref_grads = loss_and_grads(cfg, params, chorale_batch)
    loss, grads = loss_and_grads(configs.ModelConfig(**{**cfg.__dict__, "attention": "matmul"}), params, chorale_batch)
    np.testing.assert_allclose(loss, ref_loss, rtol=tolerance)
    for g, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, ref, rtol=tolerance, atol=tolerance * float(jnp.abs(ref).max()))


@pytest.mark.parametrize("key", ["attention", "remat_policy", "dtype"])
def test_unknown_choices_are_refused_with_the_options(key):
    with pytest.raises(configs.ConfigError, match=f"model.{key}: 'nope' is not one of") as info:
        configs.resolve("tiny", [f"model.{key}=nope"])
    assert "\n" not in str(info.value)


def test_every_offered_remat_policy_exists_in_jax():
    for name in configs._CHOICES["model.remat_policy"]:
        assert callable(getattr(jax.checkpoint_policies, name))


def test_input_dropout_hides_notes_in_training_only(chorale_batch):
    cfg = configs.ModelConfig(
        num_pitches=88, num_states=2, num_layers=1, d_model=32, num_heads=4, mlp_dim=64, max_len=32, dropout=0.0,
        input_dropout=1.0,
    )  # fmt: skip
    model = MusicTransformer(cfg)
    frames = chorale_batch[:, :-1]
    params = model.init(jax.random.key(0), frames)["params"]
    plain = MusicTransformer(configs.ModelConfig(**{**cfg.__dict__, "input_dropout": 0.0}))
    evaluated, _ = model.apply({"params": params}, frames)
    np.testing.assert_array_equal(evaluated, plain.apply({"params": params}, frames)[0])  # evaluation: no effect
    rngs = {"dropout": jax.random.key(1)}
    hidden_a, _ = model.apply({"params": params}, frames, deterministic=False, rngs=rngs)
    hidden_b, _ = model.apply({"params": params}, 1 - frames, deterministic=False, rngs=rngs)
    np.testing.assert_allclose(hidden_a, hidden_b, atol=1e-6)  # every note hidden: the input no longer matters
    assert not np.allclose(evaluated, hidden_a, atol=1e-3)


def test_the_transposition_input_shifts_the_model_and_none_means_untransposed(chorale_batch):
    cfg = configs.ModelConfig(
        num_pitches=88, num_states=2, num_layers=1, d_model=32, num_heads=4, mlp_dim=64, max_len=32, dropout=0.0,
        condition_on_transposition=True,
    )  # fmt: skip
    model, frames = MusicTransformer(cfg), chorale_batch[:, :-1]
    params = nn.meta.unbox(model.init(jax.random.key(0), frames)["params"])
    assert params["transposition_embed"]["table"].shape == (25, 32)

    def run(shift):
        transposition = None if shift is None else jnp.full((frames.shape[0],), shift, jnp.int32)
        return np.asarray(model.apply({"params": params}, frames, transposition=transposition)[0])

    np.testing.assert_array_equal(run(None), run(0))  # sampling and evaluation: the untransposed data
    assert not np.allclose(run(0), run(3), atol=1e-4)
    assert not np.allclose(run(3), run(-3), atol=1e-4)
    plain = MusicTransformer(configs.ModelConfig(**{**cfg.__dict__, "condition_on_transposition": False}))
    plain_params = plain.init(jax.random.key(0), frames)["params"]
    assert "transposition_embed" not in plain_params  # and an older checkpoint's tree is unchanged
    shifted = plain.apply({"params": plain_params}, frames, transposition=jnp.full((2,), 3, jnp.int32))[0]
    np.testing.assert_array_equal(shifted, plain.apply({"params": plain_params}, frames)[0])


def test_the_beat_input_gives_each_place_in_the_beat_its_own_vector(chorale_batch):
    cfg = configs.ModelConfig(
        num_pitches=88, num_states=2, num_layers=1, d_model=32, num_heads=4, mlp_dim=64, max_len=32, dropout=0.0,
        beat_steps=4,
    )  # fmt: skip
    model, frames = MusicTransformer(cfg), chorale_batch[:, :-1]
    params = nn.meta.unbox(model.init(jax.random.key(0), frames)["params"])
    assert params["beat_embed"]["table"].shape == (4, 32)
    length = frames.shape[1]

    def run(first):
        steps = jnp.broadcast_to(jnp.arange(first, first + length), frames.shape[:2])
        return np.asarray(model.apply({"params": params}, frames, steps=steps)[0])

    np.testing.assert_array_equal(run(0), np.asarray(model.apply({"params": params}, frames)[0]))  # None: 0, 1, ...
    np.testing.assert_allclose(run(0), run(8), atol=1e-6)  # two beats later: the same places in the beat
    assert not np.allclose(run(0), run(1), atol=1e-4)
    plain = MusicTransformer(configs.ModelConfig(**{**cfg.__dict__, "beat_steps": 0}))
    assert "beat_embed" not in plain.init(jax.random.key(0), frames)["params"]  # older checkpoints load as they are


def nade_model(num_pitches: int, num_states: int) -> tuple[configs.ModelConfig, dict]:
    cfg = configs.ModelConfig(
        num_pitches=num_pitches, num_states=num_states, num_layers=1, d_model=16, num_heads=2, mlp_dim=32,
        max_len=8, dropout=0.0, head="nade", nade_hidden=8,
    )  # fmt: skip
    params = MusicTransformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4, num_pitches), jnp.int32))["params"]
    # Larger output weights than the initialisation's, so that the conditionals differ visibly between frames.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 60 if "weights" in jax.tree_util.keystr(path) else x, nn.meta.unbox(params)
    )
    return cfg, params


@pytest.mark.parametrize("num_states", [2, 3])
def test_nade_head_probabilities_of_all_frames_sum_to_one(num_states):
    cfg, params = nade_model(num_pitches=4, num_states=num_states)
    history = jnp.asarray([[[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0]]])[..., : cfg.num_pitches] % num_states
    out, _ = MusicTransformer(cfg).apply({"params": params}, history)
    frames = np.array(np.meshgrid(*[range(num_states)] * cfg.num_pitches, indexing="ij")).reshape(cfg.num_pitches, -1).T
    for t in range(history.shape[1]):  # every position's distribution over the next frame is normalised
        context = jnp.broadcast_to(out[:, t : t + 1], (1, len(frames), out.shape[-1]))
        log_p = frame_log_likelihood(context, jnp.asarray(frames)[None], cfg, params)
        assert float(jax.nn.logsumexp(log_p)) == pytest.approx(0.0, abs=1e-5)
        assert float(jnp.exp(log_p).max()) < 0.9  # not a degenerate distribution


def test_nade_sampler_draws_from_the_distribution_the_likelihood_scores():
    cfg, params = nade_model(num_pitches=3, num_states=2)
    out, _ = MusicTransformer(cfg).apply({"params": params}, jnp.asarray([[[1, 0, 1]]]))
    context = out[:, -1]  # the head output for the last position: (1, P·S + H)
    draws = 20_000
    sample = jax.jit(
        jax.vmap(lambda key: sample_frame(context, key, 1.0, jnp.zeros((1, 3), jnp.int32), 2, cfg, params)[0])
    )
    frames = np.asarray(sample(jax.random.split(jax.random.key(7), draws)))
    codes = frames @ np.array([4, 2, 1])
    observed = np.bincount(codes, minlength=8) / draws
    every = np.array([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
    expected = np.exp(
        frame_log_likelihood(jnp.broadcast_to(context, (8, context.shape[-1])), jnp.asarray(every), cfg, params)
    )
    np.testing.assert_allclose(observed, expected, atol=4 * np.sqrt(0.25 / draws))
    greedy = sample_frame(context, jax.random.key(0), 0.0, jnp.zeros((1, 3), jnp.int32), 2, cfg, params)
    conditionals = nade_logits(params["head"], context, greedy)  # each pitch given the greedy choices below it
    np.testing.assert_array_equal(np.argmax(conditionals, axis=-1), greedy)


def test_nade_head_generates_through_the_decode_cache():
    from musicgpt_jax import decode

    cfg, params = nade_model(num_pitches=6, num_states=3)
    primer = np.array([[[1, 0, 0, 1, 0, 0], [2, 0, 1, 2, 0, 0]]] * 2, np.int32)
    frames = np.asarray(decode.generate(params, cfg, primer, 20, jax.random.key(3)))
    assert frames.shape == (2, 20, 6) and set(np.unique(frames)) <= {0, 1, 2}
    previous = np.concatenate([primer[:, -1:], frames[:, :-1]], axis=1)
    assert not np.any((frames == 2) & (previous == 0))  # a HOLD only continues a sounding note
    assert len(np.unique(frames.reshape(-1, 6), axis=0)) > 3  # not one frame repeated
    np.testing.assert_array_equal(frames, decode.generate(params, cfg, primer, 20, jax.random.key(3)))
    # Teacher forcing through the decode path scores the same as the full forward pass (the head sees the same
    # context either way).
    sequence = jnp.asarray(np.concatenate([primer[:1], frames[:1, :6]], axis=1))  # one window: 8 frames
    full, _ = MusicTransformer(cfg).apply({"params": params}, sequence)
    cached = decode.decode_logits(params, cfg, sequence, prefill_len=3)
    np.testing.assert_allclose(cached, full, atol=1e-5)


@pytest.mark.parametrize("num_pitches", [5, 16, 88, 130])
def test_sum_below_adds_the_weights_of_the_states_below_each_pitch(num_pitches):
    """The blocked sum equals its definition, Σ_{q<p} W[q, state_q], across block edges and a padded top block."""
    weights = np.asarray(jax.random.normal(jax.random.key(0), (num_pitches, 3, 4)))
    states = np.asarray(jax.random.randint(jax.random.key(1), (2, 3, num_pitches), 0, 3))
    picked = weights[np.arange(num_pitches), states]  # (2, 3, P, H): W[q, state_q]
    expected = np.cumsum(picked, axis=-2) - picked
    np.testing.assert_allclose(sum_below(jnp.asarray(weights), jnp.asarray(states)), expected, atol=1e-5)
