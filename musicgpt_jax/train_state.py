"""The train state and its optimizer: AdamW with a warmup-cosine schedule, an optional parameter average, and the
state created (or described, for Orbax) already sharded by the rule table."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh

from musicgpt_jax import sharding
from musicgpt_jax.configs import Config, ModelConfig, TrainConfig
from musicgpt_jax.model import SCANNED_LAYERS, MusicTransformer


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so checkpoints hold a plain array


def decays(path: tuple, leaf: Any) -> bool:
    """Whether weight decay applies to a parameter: matrices and higher (kernels, embeddings, the NADE weights),
    never vectors (norm scales, biases), as nanoGPT chooses. The stack axis of scanned layers is not counted, and a
    bias is a vector however it is shaped (the frame head's is (pitch, state): one offset per output)."""
    stacked = bool(path) and getattr(path[0], "key", None) == SCANNED_LAYERS
    is_bias = bool(path) and getattr(path[-1], "key", None) == "bias"
    return jnp.ndim(leaf) - int(stacked) >= 2 and not is_bias


def _decay_mask(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(decays, params)


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    total = cfg.schedule_steps or cfg.steps
    warmup = max(1, min(cfg.warmup_steps, total - 1))
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warmup, max(total, warmup + 1), end_value=cfg.learning_rate * cfg.min_lr_ratio
    )


class ParamsEmaState(NamedTuple):
    count: jax.Array
    ema: Any


def params_ema(decay: float) -> optax.GradientTransformation:
    """Last in a chain: passes the updates through and keeps an exponential moving average of the parameters
    they produce, with the decay ramped up as min(decay, (1 + n) / (10 + n))."""

    def init(params):
        return ParamsEmaState(count=jnp.zeros((), jnp.int32), ema=jax.tree.map(jnp.copy, params))

    def update(updates, state, params):
        new_params = optax.apply_updates(params, updates)
        rate = jnp.minimum(decay, (1.0 + state.count) / (10.0 + state.count))
        ema = jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, state.ema, new_params)
        return updates, ParamsEmaState(count=state.count + 1, ema=ema)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    parts = [
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=_decay_mask),
    ]
    if cfg.ema_decay > 0:
        parts.append(params_ema(cfg.ema_decay))
    return optax.chain(*parts)


def evaluation_params(state: TrainState) -> Any:
    """The parameters to evaluate and sample with: the moving average when the optimizer keeps one."""
    found = [
        x for x in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, ParamsEmaState))
        if isinstance(x, ParamsEmaState)
    ]  # fmt: skip
    return found[0].ema if found else state.params


def _dummy_inputs(cfg: Config) -> jax.Array:
    """A short input batch: enough for `model.init` to trace every parameter's shape."""
    return jnp.zeros((1, min(8, cfg.model.max_len), cfg.model.num_pitches), jnp.int32)


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{"layer_0/attention/query/kernel": shape, ...}: every parameter of the model ``cfg`` describes, traced
    (nothing allocated). Two configs whose checkpoints are interchangeable have equal shapes here."""
    dummy = jnp.zeros((1, min(8, cfg.max_len), cfg.num_pitches), jnp.int32)
    init = lambda rng: nn.meta.unbox(MusicTransformer(cfg).init(rng, dummy)["params"])
    leaves = jax.tree_util.tree_flatten_with_path(jax.eval_shape(init, jax.random.key(0)))[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def train_state_shardings(
    model: MusicTransformer, tx: optax.GradientTransformation, cfg: Config, mesh: Mesh
) -> TrainState:
    """The NamedSharding of every TrainState leaf, from the rule table; traces shapes, allocates nothing."""
    dummy = _dummy_inputs(cfg)
    abstract_boxed = jax.eval_shape(lambda rng: model.init(rng, dummy)["params"], jax.random.PRNGKey(cfg.train.seed))
    param_specs = nn.get_partition_spec(abstract_boxed)
    param_shardings = sharding.tree_shardings(mesh, param_specs)
    abstract_params = nn.meta.unbox(abstract_boxed)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, param_shardings, transform_non_params=lambda _: sharding.replicated(mesh)
    )
    return TrainState(
        step=sharding.replicated(mesh), params=param_shardings, opt_state=opt_shardings, rng=sharding.replicated(mesh)
    )


def create_train_state(
    model: MusicTransformer, tx: optax.GradientTransformation, cfg: Config, mesh: Mesh
) -> tuple[TrainState, Any]:
    """(state, state shardings), with every parameter and optimizer leaf created already sharded."""
    dummy = _dummy_inputs(cfg)
    state_shardings = train_state_shardings(model, tx, cfg, mesh)

    def init_state(seed_key):
        params = nn.meta.unbox(model.init(seed_key, dummy)["params"])
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), 1)),
        )

    # No rule context here: out_shardings place the parameters (and DenseGeneral's init reshapes would trip it).
    state = jax.jit(init_state, out_shardings=state_shardings)(jax.random.PRNGKey(cfg.train.seed))
    return state, state_shardings


def abstract_train_state(
    state_shardings: Any, model: MusicTransformer, tx: optax.GradientTransformation, cfg: Config
) -> Any:
    """ShapeDtypeStructs with shardings: the restore target for Orbax."""
    dummy = _dummy_inputs(cfg)

    def init_state(rng):
        params = nn.meta.unbox(model.init(rng, dummy)["params"])
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=jax.random.key_data(rng)
        )

    shapes = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_shardings)
