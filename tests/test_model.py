"""Model options that change how the step is computed, not what: remat policies and the attention kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import JSB
from flax import linen as nn

from musicgpt_jax import configs, corpus
from musicgpt_jax.model import MusicTransformer, attention_implementation, frame_nll


@pytest.fixture(scope="module")
def chorale_batch() -> np.ndarray:
    """Two real 33-frame crops of JSB Chorales training pieces (88 pitches, on/off)."""
    pieces = corpus.load_benchmark(JSB)["train"]
    return np.stack([pieces[0][:33], pieces[1][:33]]).astype(np.int32)


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
    cfg = configs.resolve("base")  # bfloat16, head_dim 64: cuDNN-eligible
    assert attention_implementation(cfg.model) == ("cudnn" if jax.default_backend() == "gpu" else "xla")
    assert attention_implementation(configs.resolve("tiny").model) == "xla"  # float32 is never sent to cuDNN
    assert attention_implementation(configs.resolve("base", ["model.attention=xla"]).model) == "xla"
    assert attention_implementation(configs.resolve("tiny", ["model.attention=cudnn"]).model) == "cudnn"


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
