"""The optimizer's weight-decay choice: by rank, as nanoGPT chooses it, on the parameters the model has."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import linen as nn

from musicgpt_jax import configs
from musicgpt_jax.model import MusicTransformer
from musicgpt_jax.train_state import _decay_mask, make_optimizer

# The tiny preset (NADE head, told each window's transposition, given notes) with two layers: every parameter that
# is not a vector decays.
DECAYED = {
    "embed/table",
    "transposition_embed/table",
    "given_embed/table",
    "given_embed/lookahead",
    "head/context",
    "head/direct/kernel",
    "head/input_weights",
    "head/output_weights",
    *(f"LAYER/attention/{name}" for name in ("key", "query", "value", "out")),
    *(f"LAYER/mlp/{name}/kernel" for name in ("down", "gate", "up")),
}
NOT_DECAYED = {
    "final_norm/scale",
    "head/context_bias",
    "head/direct/bias",
    "LAYER/attention_norm/scale",
    "LAYER/mlp_norm/scale",
}


def abstract_params(*overrides: str):
    cfg = configs.resolve("tiny", ["model.num_layers=2", *overrides]).model
    inputs = jnp.zeros((1, 8, cfg.num_pitches), jnp.int32)
    boxed = jax.eval_shape(lambda rng: MusicTransformer(cfg).init(rng, inputs)["params"], jax.random.PRNGKey(0))
    return nn.meta.unbox(boxed)


def decay_by_name(params) -> dict[str, bool]:
    return {
        "/".join(k.key for k in path): bool(decays)
        for path, decays in jax.tree_util.tree_leaves_with_path(_decay_mask(params))
    }


@pytest.mark.parametrize(("scan", "layers"), [(False, ["layer_0", "layer_1"]), (True, ["layers"])])
def test_matrices_decay_and_vectors_do_not_with_or_without_the_layer_stack(scan, layers):
    params = abstract_params(f"model.scan_layers={scan}")
    assert configs.resolve("tiny").model.head == "nade"

    def named(names: set[str]) -> set[str]:
        return {n.replace("LAYER", layer) for n in names for layer in layers}

    assert decay_by_name(params) == {**dict.fromkeys(named(DECAYED), True), **dict.fromkeys(named(NOT_DECAYED), False)}
    if scan:  # a stacked vector has rank 2, a stacked matrix rank 3: the stack axis is not counted
        assert params["layers"]["mlp_norm"]["scale"].ndim == 2


def test_weight_decay_leaves_vectors_alone_in_a_real_update():
    params = {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,)), "layers": {"scale": jnp.ones((2, 4))}}
    cfg = configs.resolve("tiny", ["train.weight_decay=0.5", "train.warmup_steps=1", "train.steps=10"]).train
    tx = make_optimizer(cfg)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    state = tx.init(params)
    for _ in range(2):  # step 0 has learning rate 0
        updates, state = tx.update(zero_grads, state, params)
    assert float(jnp.abs(updates["kernel"]).max()) > 0  # decayed towards zero
    assert float(jnp.abs(updates["bias"]).max()) == 0 and float(jnp.abs(updates["layers"]["scale"]).max()) == 0
    assert optax.tree_utils.tree_l2_norm(updates) > 0
