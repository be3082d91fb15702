"""Decoder-only Transformer over piano-roll frames (Flax Linen), with an explicit key-value cache.

A frame is a vector of per-pitch states (off/onset/hold, or off/on for the benchmark data). The input embedding
is the sum of one learned vector per (pitch, state) — a dense layer on the one-hot frame. The backbone is
pre-norm: RMSNorm, causal multi-head attention through `jax.nn.dot_product_attention` with rotary positions,
and a gated (SwiGLU) MLP. The frame head gives, per pitch, the logits of the next frame's state.

The head is kept behind its output and `frame_log_likelihood` (and `frame_choice.sample_frame`, which draws a
frame from that output), so a head that models the notes of a frame jointly (NADE-style, `NadeHead`) replaces
it without touching the backbone, the decode cache or the evaluator.

With `velocity_bins` > 0 the model also models each onset's velocity (`musicgpt_jax.dynamics`): the previous
frames' velocities are part of the input, and the velocity head's part follows the notes head's in the output.

Every parameter carries logical axis names; `sharding.LOGICAL_AXIS_RULES` maps them to the mesh.
The cache is a dict {"k", "v"} of arrays (layers, batch, length, heads, head_dim); `cache_index` is where the
new keys are written. No I/O in this module.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from musicgpt_jax import dynamics
from musicgpt_jax import given as given_notes
from musicgpt_jax.configs import MAX_TRANSPOSITION, ModelConfig
from musicgpt_jax.keys import NUM_KEYS

Cache = dict[str, jax.Array]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(cfg: ModelConfig) -> Any:
    return _DTYPES[cfg.dtype]


def _init(stddev: float, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


SCANNED_LAYERS = "layers"  # the parameter subtree of the scanned layers (scan_layers): a leading layer axis


class RMSNorm(nn.Module):
    dtype: Any = jnp.float32
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],), jnp.float32
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale).astype(self.dtype)


def token_matmul(x: jax.Array, kernel: jax.Array, contract: int = 1) -> jax.Array:
    """Contract the last `contract` axes of x (..., *in) with the first of kernel (*in, *out): (..., *out).

    Done as one 2-D matmul over the flattened tokens. The result equals the einsum, but the backward pass's
    weight gradient then contracts one axis instead of (batch, length): on XLA:CPU that avoids slow transposing
    fusions (a gated MLP's forward + backward runs 1.8x faster), and on GPU/TPU the reshapes are free.
    """
    lead, inner, out = x.shape[: x.ndim - contract], kernel.shape[:contract], kernel.shape[contract:]
    size_in = math.prod(inner)
    y = x.reshape(-1, size_in) @ kernel.reshape(size_in, -1)
    return y.reshape(*lead, *out)


def apply_rotary(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding on (batch, length, heads, head_dim) with integer positions (batch, length)."""
    half = x.shape[-1] // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * freqs  # (B, T, half)
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attention_implementation(cfg: ModelConfig) -> str:
    """The kernel for training-time (cache-free) attention: "cudnn" (fused flash attention), "xla"
    (`jax.nn.dot_product_attention`'s XLA path) or "matmul" (`causal_attention_matmul`)."""
    if cfg.attention not in ("auto", "xla", "cudnn", "matmul"):
        raise ValueError(f"model.attention={cfg.attention!r}: expected auto, xla, cudnn or matmul")
    if cfg.attention != "auto":
        return cfg.attention
    backend = jax.default_backend()
    fused_ok = cfg.dtype in ("bfloat16", "float16") and cfg.head_dim % 8 == 0 and cfg.head_dim <= 128
    if backend == "gpu" and fused_ok:
        return "cudnn"
    return "matmul" if backend == "cpu" else "xla"


def causal_attention_matmul(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal softmax attention on (batch, length, heads, head_dim), heads moved ahead of length first.

    The same function as `jax.nn.dot_product_attention(..., is_causal=True)`; on XLA:CPU its forward and
    backward run about 1.5x faster, because the score matmuls see contiguous (length, head_dim) blocks.
    Scores and softmax are float32.
    """
    qt, kt, vt = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    scores = jnp.matmul(qt, kt.swapaxes(-1, -2), preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    length = q.shape[1]
    causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
    weights = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1).astype(v.dtype)
    return jnp.matmul(weights, vt).transpose(0, 2, 1, 3)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, layer_cache: Cache | None, cache_index):
        cfg, dtype = self.cfg, compute_dtype(self.cfg)
        qkv_shape = (cfg.num_heads, cfg.head_dim)

        def proj(name):
            kernel = self.param(
                name, _init(0.02, ("embed", "heads", "head_dim")), (cfg.d_model,) + qkv_shape, jnp.float32
            )
            return token_matmul(x, kernel.astype(dtype))

        q, k, v = proj("query"), proj("key"), proj("value")
        q = apply_rotary(q, positions, cfg.rope_base)
        k = apply_rotary(k, positions, cfg.rope_base)
        q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "head_dim"))

        new_cache = None
        if layer_cache is None:
            kernel = attention_implementation(cfg)
            if kernel == "matmul":
                out = causal_attention_matmul(q, k, v)
            else:
                out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=kernel)
        else:
            k_all = jax.lax.dynamic_update_slice(
                layer_cache["k"], k.astype(layer_cache["k"].dtype), (0, cache_index, 0, 0)
            )
            v_all = jax.lax.dynamic_update_slice(
                layer_cache["v"], v.astype(layer_cache["v"].dtype), (0, cache_index, 0, 0)
            )
            new_cache = {"k": k_all, "v": v_all}
            query_pos = cache_index + jnp.arange(x.shape[1])
            mask = jnp.arange(k_all.shape[1])[None, :] <= query_pos[:, None]  # (T, S), causal over the cache
            out = jax.nn.dot_product_attention(q, k_all.astype(dtype), v_all.astype(dtype), mask=mask[None, None])
        out_kernel = self.param(
            "out",
            _init(0.02 / (2 * cfg.num_layers) ** 0.5, ("heads", "head_dim", "embed")),
            qkv_shape + (cfg.d_model,),
            jnp.float32,
        )
        return token_matmul(out.astype(dtype), out_kernel.astype(dtype), contract=2), new_cache


class GatedMLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg, dtype = self.cfg, compute_dtype(self.cfg)

        def dense(inputs, features, names, std, name):  # nn.Dense on the flattened tokens (see token_matmul)
            layer = nn.Dense(features, use_bias=False, dtype=dtype, name=name, kernel_init=_init(std, names))
            return layer(inputs.reshape(-1, inputs.shape[-1])).reshape(*inputs.shape[:-1], features)

        gate = dense(x, cfg.mlp_dim, ("embed", "mlp"), 0.02, "gate")
        up = dense(x, cfg.mlp_dim, ("embed", "mlp"), 0.02, "up")
        h = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        return dense(h, cfg.d_model, ("mlp", "embed"), 0.02 / (2 * cfg.num_layers) ** 0.5, "down")


class Block(nn.Module):
    """One pre-norm Transformer layer. Signature fits `nn.scan`: (carry, scanned cache, broadcast args)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, layer_cache, positions, cache_index, deterministic: bool):
        cfg, dtype = self.cfg, compute_dtype(self.cfg)
        h, new_cache = Attention(cfg, name="attention")(
            RMSNorm(dtype, name="attention_norm")(x), positions, layer_cache, cache_index
        )
        x = x + nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        h = GatedMLP(cfg, name="mlp")(RMSNorm(dtype, name="mlp_norm")(x))
        x = x + nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        return x, new_cache


class FrameEmbed(nn.Module):
    """Sum of one learned vector per (pitch, state): a dense layer on the one-hot frame."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, states: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        table = self.param(
            "table",
            _init(0.02, ("pitch", "state", "embed")),
            (cfg.num_pitches, cfg.num_states, cfg.d_model),
            jnp.float32,
        )
        one_hot = jax.nn.one_hot(states, cfg.num_states, dtype=compute_dtype(cfg))
        if cfg.input_dropout > 0 and not deterministic:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - cfg.input_dropout, states.shape)
            one_hot = one_hot * keep[..., None].astype(one_hot.dtype)
        return token_matmul(one_hot, table.astype(compute_dtype(cfg)), contract=2)


class FrameHead(nn.Module):
    """Independent per-pitch outputs: logits (batch, length, pitches, states), float32."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        cfg = self.cfg
        shape = (cfg.num_pitches, cfg.num_states)
        kernel = self.param("kernel", _init(0.02, ("embed", "pitch", "state")), (cfg.d_model,) + shape, jnp.float32)
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("pitch", "state")), shape, jnp.float32
        )
        logits = token_matmul(h, kernel.astype(compute_dtype(self.cfg)))
        return logits.astype(jnp.float32) + bias


class NadeHead(nn.Module):
    """Notes of the next frame modelled jointly. Output (B, T, P·S + H): the independent head's logits (flattened)
    and the NADE layer's per-frame input ("context", H = nade_hidden units).

    Pitch p's logits are the independent head's plus tanh(context + Σ_{q<p} W[q, state_q]) through p's own output
    weights, so the probability of a frame is a product of conditionals, low pitch to high (`nade_logits`,
    `frame_choice.nade_sample`). The direct term lets the head learn as fast as the independent one at the start;
    the NADE term adds what the notes below say. The NADE weights are plain parameters under "head"; the functions below
    read them from the parameter tree.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        cfg, hidden = self.cfg, self.cfg.nade_hidden
        shape = (cfg.num_pitches, cfg.num_states)
        self.param("input_weights", _init(0.02, ("pitch", "state", "nade")), shape + (hidden,), jnp.float32)
        self.param(
            "output_weights",
            _init(0.02, ("pitch", "nade", "state")),
            (cfg.num_pitches, hidden, cfg.num_states),
            jnp.float32,
        )
        kernel = self.param("context", _init(0.02, ("embed", "nade")), (cfg.d_model, hidden), jnp.float32)
        bias = self.param(
            "context_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("nade",)), (hidden,), jnp.float32
        )
        context = token_matmul(h, kernel.astype(compute_dtype(cfg))).astype(jnp.float32) + bias
        direct = FrameHead(cfg, name="direct")(h)
        return jnp.concatenate([direct.reshape(*direct.shape[:-2], -1), context], axis=-1)


def split_nade_output(head: dict, out: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(direct logits (..., P, S), context (..., H)) from a NadeHead output."""
    num_pitches, num_states, _ = head["input_weights"].shape
    flat = num_pitches * num_states
    return out[..., :flat].reshape(*out.shape[:-1], num_pitches, num_states), out[..., flat:]


NADE_BLOCK = 16  # pitches per block in `sum_below`


def sum_below(weights: jax.Array, targets: jax.Array) -> jax.Array:
    """Σ_{q<p} weights[q, targets_q] for every pitch p: (..., P) states -> (..., P, H).

    The pitches are cut into blocks of NADE_BLOCK (the top one padded with pitches that are never below a real
    one). Within a block: the one-hot states times the block's weights masked to q < p, one small matmul; across
    blocks: a running total of each block's sum. That is 2·P·S·b·H FLOPs per frame instead of the 2·P·S·P·H of one
    masked matmul over all the pitches, and plain 2-D matmuls, which XLA runs fastest on CPU (benchmarks/
    train_speed.py)."""
    num_pitches, num_states, hidden = weights.shape
    b = NADE_BLOCK
    blocks = -(-num_pitches // b)
    padded = blocks * b
    weights = jnp.pad(weights, ((0, padded - num_pitches), (0, 0), (0, 0)))
    one_hot = jax.nn.one_hot(targets, num_states, dtype=weights.dtype).reshape(-1, num_pitches * num_states)
    one_hot = jnp.pad(one_hot, ((0, 0), (0, (padded - num_pitches) * num_states)))
    below_p = jnp.arange(b)[:, None] < jnp.arange(b)[None, :]  # [q, p] within a block
    parts, running = [], None
    for k in range(blocks):
        block = weights[k * b : (k + 1) * b]  # (b, S, H)
        states = one_hot[:, k * b * num_states : (k + 1) * b * num_states]  # (N, b·S)
        masked = (block[:, :, None, :] * below_p[:, None, :, None]).reshape(b * num_states, b * hidden)
        within = (states @ masked).reshape(-1, b, hidden)
        parts.append(within if running is None else within + running[:, None, :])
        total = states @ block.reshape(b * num_states, hidden)
        running = total if running is None else running + total
    return jnp.concatenate(parts, axis=1)[:, :num_pitches].reshape(*targets.shape, hidden)


def nade_logits(head: dict, out: jax.Array, targets: jax.Array) -> jax.Array:
    """Teacher-forced NADE: logits (..., P, S) of each pitch's state given the head's output `out` (..., P·S + H)
    and the target states of the pitches below it."""
    direct, context = split_nade_output(head, out)
    hidden = jnp.tanh(context[..., None, :] + sum_below(head["input_weights"], targets))
    return direct + jnp.einsum("...ph,phs->...ps", hidden, head["output_weights"])


class TranspositionEmbed(nn.Module):
    """One learned vector per training-time transposition (B,) in [-MAX_TRANSPOSITION, +MAX_TRANSPOSITION], as
    (B, 1, D) to add to every frame; None means 0 (no shift: sampling and evaluation)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, transposition: jax.Array | None, batch: int) -> jax.Array:
        table = self.param(
            "table", _init(0.02, (None, "embed")), (2 * MAX_TRANSPOSITION + 1, self.cfg.d_model), jnp.float32
        )
        shift = jnp.zeros((batch,), jnp.int32) if transposition is None else jnp.asarray(transposition, jnp.int32)
        return table[jnp.clip(shift, -MAX_TRANSPOSITION, MAX_TRANSPOSITION) + MAX_TRANSPOSITION][:, None, :]


class LabelEmbed(nn.Module):
    """One learned vector per label of a piece (its key, its composer), the last row for "unknown": `labels` (B,)
    as (B, 1, D) to add to every frame; None means "unknown" (sampling without a request)."""

    cfg: ModelConfig
    num_labels: int  # rows, "unknown" included

    @nn.compact
    def __call__(self, labels: jax.Array | None, batch: int) -> jax.Array:
        table = self.param("table", _init(0.02, (None, "embed")), (self.num_labels, self.cfg.d_model), jnp.float32)
        unknown = self.num_labels - 1
        index = jnp.full((batch,), unknown, jnp.int32) if labels is None else jnp.asarray(labels, jnp.int32)
        return table[jnp.clip(index, 0, unknown)][:, None, :]


class BeatEmbed(nn.Module):
    """One learned vector per position in the beat: `steps` (B, T), each input frame's index in its sequence (the
    start frame is 0, so it predicts the piece's first frame), taken mod `beat_steps`, as (B, T, D)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, steps: jax.Array) -> jax.Array:
        table = self.param("table", _init(0.02, (None, "embed")), (self.cfg.beat_steps, self.cfg.d_model), jnp.float32)
        return table[jnp.mod(jnp.asarray(steps, jnp.int32), self.cfg.beat_steps)]


class MusicTransformer(nn.Module):
    """states (B, T, P) int -> the frame head's output for the next frame, and the updated cache when one is given.

    The head's output is the logits (B, T, P, S) for the independent head and (B, T, P·S + H) for the NADE head
    (`NadeHead`); `frame_log_likelihood` and `frame_choice.sample_frame` turn either into probabilities and
    frames. With `velocity_bins` > 0, `velocities` (B, T, P) are the input frames' velocity bins
    (`dynamics.NO_VELOCITY` off the onsets; None: no velocity input) and the output is flat per frame, the
    velocity head's part last (`dynamics.with_velocity_part`). With `condition_on_transposition`, `transposition`
    (B,) is each sequence's training-time shift in semitones (None: 0, the untransposed data, as when sampling);
    a model without that input ignores it. With `beat_steps`, `steps` (B, T) are the input frames' indices in
    their sequences, start frame 0 (None: `positions`, a window that begins with the start frame). With
    `given_lookahead` = L, `given` (B, T + L, P) are the codes of the notes to keep in frames 1 .. T+L after the
    input's first (`musicgpt_jax.given`; None: nothing given). With `condition_on_key` / `composers`, `key` and
    `composer` (B,) are each sequence's labels (`musicgpt_jax.conditioning`; None: unknown)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        states: jax.Array,
        positions: jax.Array | None = None,
        *,
        velocities: jax.Array | None = None,
        transposition: jax.Array | None = None,
        steps: jax.Array | None = None,
        given: jax.Array | None = None,
        key: jax.Array | None = None,
        composer: jax.Array | None = None,
        deterministic: bool = True,
        cache: Cache | None = None,
        cache_index: jax.Array | int = 0,
    ):
        cfg = self.cfg
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(states.shape[1]), states.shape[:2])
        x = FrameEmbed(cfg, name="embed")(states, deterministic)
        if cfg.velocity_bins:
            x = x + dynamics.VelocityEmbed(cfg, name="velocity_embed")(states, velocities).astype(x.dtype)
        if cfg.condition_on_transposition:
            x = x + TranspositionEmbed(cfg, name="transposition_embed")(transposition, states.shape[0]).astype(x.dtype)
        if cfg.condition_on_key:
            x = x + LabelEmbed(cfg, NUM_KEYS + 1, name="key_embed")(key, states.shape[0]).astype(x.dtype)
        if cfg.composers:
            embed = LabelEmbed(cfg, len(cfg.composers) + 1, name="composer_embed")
            x = x + embed(composer, states.shape[0]).astype(x.dtype)
        if cfg.beat_steps:
            x = x + BeatEmbed(cfg, name="beat_embed")(positions if steps is None else steps).astype(x.dtype)
        if cfg.given_lookahead:  # notes to keep, `given_lookahead` frames ahead (`given`; None: nothing given)
            embed = given_notes.GivenEmbed(cfg, name="given_embed")
            x = x + embed(given, states.shape[0], states.shape[1]).astype(x.dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        block = Block
        if cfg.remat:
            policy = getattr(jax.checkpoint_policies, cfg.remat_policy, None)
            if policy is None:
                raise ValueError(f"model.remat_policy={cfg.remat_policy!r}: not a jax.checkpoint_policies name")
            block = nn.remat(block, static_argnums=(5,), prevent_cse=not cfg.scan_layers, policy=policy)
        if cfg.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, new_cache = stack(cfg, name=SCANNED_LAYERS)(x, cache, positions, cache_index, deterministic)
        else:
            per_layer = []
            for i in range(cfg.num_layers):
                layer_cache = None if cache is None else {"k": cache["k"][i], "v": cache["v"][i]}
                x, c = block(cfg, name=f"layer_{i}")(x, layer_cache, positions, cache_index, deterministic)
                per_layer.append(c)
            new_cache = (
                None
                if cache is None
                else {"k": jnp.stack([c["k"] for c in per_layer]), "v": jnp.stack([c["v"] for c in per_layer])}
            )
        x = RMSNorm(compute_dtype(cfg), name="final_norm")(x)
        head = NadeHead if cfg.head == "nade" else FrameHead
        out = head(cfg, name="head")(x)
        if cfg.velocity_bins:
            out = dynamics.with_velocity_part(out, dynamics.VelocityHead(cfg, name="velocity_head")(x), cfg)
        return out, new_cache


def init_cache(cfg: ModelConfig, batch: int, length: int | None = None, dtype: Any = None) -> Cache:
    """An empty cache for `length` positions (default: the context window)."""
    shape = (cfg.num_layers, batch, length or cfg.max_len, cfg.num_heads, cfg.head_dim)
    dtype = dtype or compute_dtype(cfg)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


CACHE_LOGICAL_AXES = ("cache_layers", "cache_batch", "cache_length", "cache_heads", "cache_head_dim")


def nade_parameters(cfg: ModelConfig | None, params: Any) -> dict | None:
    """The NADE head's parameters when `cfg` has that head, else None."""
    if cfg is None or cfg.head != "nade":
        return None
    if params is None:
        raise ValueError("the NADE head needs the model parameters")
    return params["head"]


def frame_log_likelihood(
    out: jax.Array, targets: jax.Array, cfg: ModelConfig | None = None, params: Any = None, cells: Any = None
) -> jax.Array:
    """log p(frame) per (batch, time), from the head's output `out` and the target frames (B, T, P).

    Independent head: the sum over pitches of each pitch's log-probability. NADE head (`cfg.head == "nade"`, needs
    the model `params`): the sum over pitches of log p(state_p | context, states below p) — still log p(frame).
    `cells` (B, T, P) weighs each pitch's term (given notes: 0 on the cells the model was told).
    """
    out = dynamics.notes_output(out, cfg)
    head = nade_parameters(cfg, params)
    logits = out if head is None else nade_logits(head, out, targets)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked.sum(axis=-1) if cells is None else (picked * cells).sum(axis=-1)


def frame_nll(
    out: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    cfg: ModelConfig | None = None,
    params: Any = None,
    cells: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """(sum of NLL over the masked frames, number of frames): nats per frame is their ratio."""
    nll = -frame_log_likelihood(out, targets, cfg, params, cells)
    mask = mask.astype(jnp.float32)
    return (nll * mask).sum(), mask.sum()


def loss_sums(
    out: jax.Array, batch: dict, targets: jax.Array, cfg: ModelConfig, params: Any
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss as a sum over the batch, and its parts: (notes NLL + velocity NLL, {"frames",
    "notes_nll" and, with dynamics, "velocity_nll", "onsets"}). `targets` are the target states (those of `batch`,
    or made consistent with the model's own samples); velocities are scored at their onsets only."""
    cells = given_notes.free_cells(batch["given"], targets.shape[1]) if "given" in batch else None  # not copied
    notes, frames = frame_nll(out, targets, batch["mask"], cfg, params, cells)
    if not cfg.velocity_bins:
        return notes, {"frames": frames, "notes_nll": notes}
    velocity, onsets = dynamics.velocity_nll(out, targets, batch["target_velocities"], batch["mask"], cfg, params)
    return notes + velocity, {"frames": frames, "notes_nll": notes, "velocity_nll": velocity, "onsets": onsets}


def model_inputs(batch: dict) -> dict[str, jax.Array]:
    """The keyword inputs of `MusicTransformer` besides the states that a batch carries (the input velocities, the
    training-time transposition)."""
    inputs = {"velocities": batch["input_velocities"]} if "input_velocities" in batch else {}
    if "transposition" in batch:
        inputs["transposition"] = batch["transposition"]
    if "steps" in batch:
        inputs["steps"] = batch["steps"]
    for name in ("given", "key", "composer"):
        if name in batch:
            inputs[name] = batch[name]
    return inputs


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def flops_per_frame(cfg: ModelConfig, num_params: int, context: int | None = None) -> float:
    """Training FLOPs per frame (forward + backward): 6·N + 12·L·d·T, nanoGPT's estimate, plus for the NADE head
    the one-hot frame times the masked input weights in `sum_below` (per block of b pitches, 2·bS·bH for the
    pitches below within the block and 2·bS·H for the block's total, forward, and as much for the weight gradient;
    the frame is data, so there is no input gradient)."""
    context = context or cfg.max_len
    nade = 0.0
    if cfg.head == "nade":
        b, blocks = NADE_BLOCK, -(-cfg.num_pitches // NADE_BLOCK)
        nade = 4.0 * blocks * (b * cfg.num_states) * (b * cfg.nade_hidden + cfg.nade_hidden)
    return 6.0 * num_params + 12.0 * cfg.num_layers * cfg.d_model * context + nade
