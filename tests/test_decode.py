"""KV-cache decoding: equivalence with full forward passes (also after the window slides), sampling rules,
determinism, no recompilation, the sharded cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from musicgpt_jax import configs, decode, sharding
from musicgpt_jax.frame_choice import sample_frame
from musicgpt_jax.model import CACHE_LOGICAL_AXES, MusicTransformer

CFG = configs.ModelConfig(
    num_pitches=12, num_states=3, num_layers=2, d_model=32, num_heads=2, mlp_dim=64, max_len=8, dropout=0.0
)


def init_params(cfg: configs.ModelConfig, seed: int = 0, scale: float = 0.3):
    """Random parameters of the model's shapes, drawn in numpy (compiling `init` costs seconds on CPU).

    Weights well above the init scale make the logits differ clearly between contexts."""
    shapes = jax.eval_shape(
        MusicTransformer(cfg).init, jax.random.key(0), jnp.zeros((1, 4, cfg.num_pitches), jnp.int32)
    )["params"]
    rng = np.random.default_rng(seed)
    draw = lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), s.dtype)
    return jax.tree.map(draw, nn.meta.unbox(shapes))


@pytest.fixture(scope="module")
def params():
    return init_params(CFG)


def random_frames(shape, num_states=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_states, shape).astype(np.int32)


def reference_logits(params, cfg, frames: np.ndarray, prefill_len: int) -> np.ndarray:
    """Logits of every frame from plain forward passes over the window each decode step saw (no cache)."""
    starts = window_starts(frames.shape[1], prefill_len, cfg.max_len)
    out = np.zeros(frames.shape + (cfg.num_states,), np.float32)
    forward = jax.jit(lambda x, steps: MusicTransformer(cfg).apply({"params": params}, x, steps=steps)[0])
    padded = np.pad(frames, ((0, 0), (0, cfg.max_len), (0, 0)))  # one window shape, one compile
    for start in np.unique(starts):
        # Causal: the logits at t over frames[start:start+max_len] are those of frames[start:t+1].
        indices = np.broadcast_to(np.arange(start, start + cfg.max_len), frames.shape[:1] + (cfg.max_len,))
        logits = np.asarray(forward(jnp.asarray(padded[:, start : start + cfg.max_len]), jnp.asarray(indices)))
        steps = np.flatnonzero(starts == start)
        out[:, steps] = logits[:, steps - start]
    return out


@pytest.mark.parametrize(
    "scan_layers, num_frames, beat_steps", [(False, 30, 0), (True, 30, 0), (False, 6, 0), (False, 30, 3)]
)
def test_decode_matches_full_forward_also_after_slides(scan_layers, num_frames, beat_steps):
    # beat_steps 3: each slide moves the window by 4 frames, so a cache that lost count of the frames' places in
    # the beat would give other logits.
    cfg = configs.ModelConfig(**{**CFG.__dict__, "scan_layers": scan_layers, "beat_steps": beat_steps})
    params = init_params(cfg)
    frames = random_frames((2, num_frames, cfg.num_pitches))
    prefill_len = 3
    starts = window_starts(num_frames, prefill_len, cfg.max_len)
    if num_frames > cfg.max_len:
        assert starts.max() > cfg.max_len  # the window slid several times
    else:
        assert not starts.any()  # a short sequence: a cache of its length, no slide
    got = np.asarray(decode.decode_logits(params, cfg, frames, prefill_len))
    np.testing.assert_allclose(got, reference_logits(params, cfg, frames, prefill_len), atol=1e-5, rtol=0)


def test_window_starts_follow_the_slide_rule():
    # max_len 8: frames 0..7 fill the cache; frame 8 slides to keep frames 4..7 and is written at position 4.
    np.testing.assert_array_equal(window_starts(14, 2, 8), [0] * 8 + [4] * 4 + [8] * 2)


@pytest.mark.parametrize("primer_len", [5, 20])
def test_generation_continues_right_after_the_primer(params, primer_len):
    primer = random_frames((2, primer_len, CFG.num_pitches), seed=1)
    rng = jax.random.key(7)
    out = np.asarray(decode.generate(params, CFG, primer, 20, rng, temperature=1.0))
    assert out.shape == (2, 20, CFG.num_pitches) and out.dtype == np.int32
    context = np.asarray(decode.context_of(jnp.asarray(primer), CFG.max_len))
    if primer_len + 1 > CFG.max_len:  # a primer longer than the context: its last window, no start frame
        np.testing.assert_array_equal(context, primer[:, -CFG.max_len :])
    else:
        np.testing.assert_array_equal(context[:, 1:], primer)
        assert not context[:, 0].any()
    logits, _ = MusicTransformer(CFG).apply({"params": params}, jnp.asarray(context))
    first = sample_frame(logits[:, -1], jax.random.fold_in(rng, 0), 1.0, jnp.asarray(primer[:, -1]), 3)
    np.testing.assert_array_equal(out[:, 0], np.asarray(first))
    # States stay consistent: a HOLD only continues a note sounding in the frame before.
    previous = np.concatenate([primer[:, -1:], out[:, :-1]], axis=1)
    assert not np.any((out == 2) & (previous == 0))
    assert out.min() >= 0 and out.max() < CFG.num_states


@pytest.mark.parametrize("primer_len", [5, 20])
def test_a_beat_model_knows_where_the_primer_leaves_off(primer_len):
    cfg = configs.ModelConfig(**{**CFG.__dict__, "beat_steps": 3})
    params = init_params(cfg)
    primer = random_frames((2, primer_len, cfg.num_pitches), seed=1)
    rng = jax.random.key(7)
    out = np.asarray(decode.generate(params, cfg, primer, 4, rng, temperature=1.0))
    context = np.asarray(decode.context_of(jnp.asarray(primer), cfg.max_len))
    first_index = primer_len + 1 - context.shape[1]  # the sequence index of the context's first frame
    steps = np.broadcast_to(np.arange(first_index, primer_len + 1), context.shape[:2])
    logits, _ = MusicTransformer(cfg).apply({"params": params}, jnp.asarray(context), steps=jnp.asarray(steps))
    first = sample_frame(logits[:, -1], jax.random.fold_in(rng, 0), 1.0, jnp.asarray(primer[:, -1]), 3)
    np.testing.assert_array_equal(out[:, 0], np.asarray(first))
    wrong, _ = MusicTransformer(cfg).apply({"params": params}, jnp.asarray(context), steps=jnp.asarray(steps) + 1)
    assert not np.allclose(np.asarray(wrong[:, -1]), np.asarray(logits[:, -1]), atol=1e-4)  # the place matters


def test_generation_is_deterministic_and_compiles_once(params):
    primer = random_frames((2, 5, CFG.num_pitches), seed=2)
    a = np.asarray(decode.generate(params, CFG, primer, 20, jax.random.key(1)))
    traces = dict(decode.TRACE_COUNTS)
    b = np.asarray(decode.generate(params, CFG, primer, 20, jax.random.key(1)))
    c = np.asarray(decode.generate(params, CFG, primer + 0, 20, jax.random.key(2), temperature=0.7))
    greedy = [np.asarray(decode.generate(params, CFG, primer, 20, jax.random.key(k), temperature=0.0)) for k in (3, 4)]
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)
    np.testing.assert_array_equal(*greedy)  # temperature 0 is argmax: the key does not matter
    assert dict(decode.TRACE_COUNTS) == traces  # new key, temperature and primer content: no new trace


def test_sharded_cache_gives_the_same_logits_and_music(params):
    # Same shapes as the tests above, so the unsharded side is compiled once per session.
    mesh = sharding.make_mesh("data=1,fsdp=2,tensor=2", jax.devices()[:4])
    boxed = jax.eval_shape(MusicTransformer(CFG).init, jax.random.key(0), jnp.zeros((1, 4, 12), jnp.int32))
    shardings = sharding.tree_shardings(mesh, nn.get_partition_spec(boxed["params"]))
    sharded_params = jax.device_put(params, shardings)  # as the rule table places them
    assert tuple(sharded_params["layer_0"]["attention"]["query"].sharding.spec) == ("fsdp", "tensor", None)
    frames = random_frames((2, 30, CFG.num_pitches), seed=3)
    plain = np.asarray(decode.decode_logits(params, CFG, frames, 3))
    sharded = decode.decode_logits(sharded_params, CFG, frames, 3, mesh=mesh)
    np.testing.assert_allclose(np.asarray(sharded), plain, atol=1e-5, rtol=0)

    with sharding.activate(mesh):
        prefill = jax.jit(lambda p, x: decode.prefill(p, CFG, x, mesh))
        _, state = prefill(sharded_params, jnp.asarray(frames[:, :3]))
    cache_sharding = sharding.logical_sharding(mesh, CACHE_LOGICAL_AXES)
    assert state.cache["k"].sharding.is_equivalent_to(cache_sharding, 5)
    cache_k = state.cache["k"]  # (layers, batch 2, length, heads 2, head_dim): batch and heads are split
    assert cache_k.sharding.shard_shape(cache_k.shape) == (2, 1, CFG.max_len, 1, CFG.head_dim)
    primer = frames[:, :5]
    np.testing.assert_array_equal(
        np.asarray(decode.generate(sharded_params, CFG, primer, 20, jax.random.key(5), mesh=mesh)),
        np.asarray(decode.generate(params, CFG, primer, 20, jax.random.key(5))),
    )


def test_bad_arguments_are_refused(params):
    with pytest.raises(ValueError, match="num_frames"):
        decode.generate(params, CFG, random_frames((1, 2, CFG.num_pitches)), 0, jax.random.key(0))
    with pytest.raises(ValueError, match="expected"):
        decode.generate(params, CFG, random_frames((1, 2, 5)), 4, jax.random.key(0))
    with pytest.raises(ValueError, match="divisible"):
        decode.generate(
            params,
            CFG,
            random_frames((3, 2, CFG.num_pitches)),
            4,
            jax.random.key(0),
            mesh=sharding.make_mesh("data=2,fsdp=2,tensor=2"),
        )


def window_starts(num_frames: int, prefill_len: int, max_len: int) -> np.ndarray:
    """For each frame t of a teacher-forced sequence, the first frame of the window its logits saw.

    Mirrors the slide rule, so a test can recompute every decode step with one plain forward pass.
    """
    half = max_len // 2
    starts = np.zeros(num_frames, np.int64)
    start, index = 0, prefill_len
    for t in range(prefill_len, num_frames):
        if index >= max_len:
            start, index = t - half, half
        starts[t] = start
        index += 1
    return starts
