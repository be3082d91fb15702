"""The training loop: sharded state creation, the jitted train/eval steps, logging, checkpoints and resume.

`train_and_evaluate(cfg, workdir)` is the one entry point; the top-level `train.py` only parses flags.
State is created already sharded (`jax.eval_shape` -> logical specs -> rule table -> `jit(out_shardings=...)`),
batches are global arrays assembled from each process's local rows, and a workdir that holds checkpoints resumes
from the latest one onto whatever mesh is given now. On CPU, N + N steps with a stop in between give bitwise the
same parameters as 2N steps in one go: the dropout key is derived from (seed, step) and the data order from the
restored grain iterator state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import linen as nn
from jax.sharding import Mesh

from musicgpt_jax import sharding
from musicgpt_jax.configs import Config, TrainConfig
from musicgpt_jax.frame_choice import sample_frame
from musicgpt_jax.model import (
    HOLD_STATE,
    OFF_STATE,
    ONSET_STATE,
    MusicTransformer,
    count_params,
    flops_per_frame,
    loss_sums,
    model_inputs,
)


class TrainingError(RuntimeError):
    """Training cannot go on (bad data, NaN loss, incompatible checkpoint); the message is one line."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so checkpoints hold a plain array


def _decay_mask(params: Any) -> Any:
    """Weight decay on matmul kernels only: not on norms, biases or the frame embedding."""

    def decays(path, _leaf) -> bool:
        return getattr(path[-1], "key", "") not in ("scale", "bias", "table")

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


def train_state_shardings(
    model: MusicTransformer, tx: optax.GradientTransformation, cfg: Config, mesh: Mesh
) -> TrainState:
    """The NamedSharding of every TrainState leaf, from the rule table; traces shapes, allocates nothing."""
    dummy = jnp.zeros((1, min(8, cfg.model.max_len), cfg.model.num_pitches), jnp.int32)
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
    mcfg = cfg.model
    dummy = jnp.zeros((1, min(8, mcfg.max_len), mcfg.num_pitches), jnp.int32)
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
    dummy = jnp.zeros((1, min(8, cfg.model.max_len), cfg.model.num_pitches), jnp.int32)

    def init_state(rng):
        params = nn.meta.unbox(model.init(rng, dummy)["params"])
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=jax.random.key_data(rng)
        )

    shapes = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_shardings)


def restore_params(workdir: str, cfg: Config, step: int | None = None) -> Any:
    """The parameters of a checkpoint (the latest, or `step`) on one device — their moving average when training
    kept one (`train.ema_decay`); the rest of the optimizer state is dropped."""
    from musicgpt_jax.checkpoint import Checkpointer

    mesh = sharding.make_mesh("", devices=jax.devices()[:1])
    model, tx = MusicTransformer(cfg.model), make_optimizer(cfg.train)
    target = abstract_train_state(train_state_shardings(model, tx, cfg, mesh), model, tx, cfg)
    checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
    try:
        state, _, _ = checkpointer.restore(target, step)
    finally:
        checkpointer.close()
    return evaluation_params(state)


def with_own_samples(
    model: MusicTransformer, params: Any, inputs: jax.Array, rng: jax.Array, rate: float | jax.Array, **velocities
):
    """`inputs` (B, T, P) with each frame after the first replaced, with probability `rate`, by a frame the model
    samples (temperature 1) from the true frames before it: parallel scheduled sampling (Duckworth et al. 2019).
    With dynamics the input velocities stay the true ones (`velocities`): only the notes are the model's.

    Trained on such inputs against the true targets, the model learns to lead its own stray notes back to the
    music instead of continuing them (docs/RESULTS.md, "Long samples").
    """
    sample_rng, mix_rng = jax.random.split(rng)
    params = jax.lax.stop_gradient(params)
    out, _ = model.apply({"params": params}, inputs, deterministic=True, **velocities)
    batch, length, pitches = inputs.shape
    flat_out = out[:, :-1].reshape(batch * (length - 1), *out.shape[2:])
    previous = inputs[:, :-1].reshape(-1, pitches)
    sampled = sample_frame(flat_out, sample_rng, 1.0, previous, model.cfg.num_states, model.cfg, params)
    sampled = jax.lax.stop_gradient(sampled.reshape(batch, length - 1, pitches)).astype(inputs.dtype)
    replace = jax.random.bernoulli(mix_rng, rate, (batch, length - 1, 1))
    return inputs.at[:, 1:].set(jnp.where(replace, sampled, inputs[:, 1:]))


def restart_held_notes(inputs: jax.Array, targets: jax.Array, num_states: int) -> jax.Array:
    """Targets (B, T, P) made consistent with inputs that may hold the model's samples: a HOLD of a pitch that
    the frame before it has off is an ONSET, as `sample_frame` and the MIDI writer read it. Without this the model
    learns HOLD after OFF, which sampling turns into OFF: voices it dropped would never come back."""
    if num_states != 3:
        return targets
    return jnp.where((targets == HOLD_STATE) & (inputs == OFF_STATE), ONSET_STATE, targets)


def scheduled_sampling_rate(cfg: TrainConfig, step: jax.Array) -> jax.Array:
    """The share of input frames that are the model's own samples at `step`: 0 until
    `cfg.scheduled_sampling_start` (an untrained model's samples are noise), then rising linearly to
    `cfg.scheduled_sampling` half-way through the rest of the schedule."""
    start = cfg.scheduled_sampling_start
    ramp = max(1, ((cfg.schedule_steps or cfg.steps) - start) // 2)
    return cfg.scheduled_sampling * jnp.clip((step.astype(jnp.float32) - start) / ramp, 0.0, 1.0)


def make_train_step(
    model: MusicTransformer, tx: optax.GradientTransformation, grad_accum: int, tcfg: TrainConfig | None = None
) -> Callable:
    """train_step(state, batch) -> (state, metrics); `batch` leaves are (global_batch, ...). With
    `tcfg.scheduled_sampling` > 0 a share of the input frames is the model's own samples (`with_own_samples`)."""
    own_samples = tcfg is not None and tcfg.scheduled_sampling > 0

    def batch_loss(params, micro, rng, step):
        inputs, targets, extra = micro["inputs"], micro["targets"], model_inputs(micro)
        if own_samples:
            own_rng, rate = jax.random.fold_in(rng, 1), scheduled_sampling_rate(tcfg, step)  # dropout keeps `rng`
            inputs = jax.lax.cond(  # before the start, no extra forward pass
                rate > 0, lambda x: with_own_samples(model, params, x, own_rng, rate, **extra), lambda x: x, inputs
            )
            targets = restart_held_notes(inputs, targets, model.cfg.num_states)
        out, _ = model.apply({"params": params}, inputs, deterministic=False, rngs={"dropout": rng}, **extra)
        return loss_sums(out, micro, targets, model.cfg, params)

    grad_fn = jax.value_and_grad(batch_loss, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if grad_accum == 1:
            (nll_sum, sums), grads = grad_fn(state.params, batch, rng, state.step)
        else:
            micro_batches = jax.tree.map(
                lambda x: x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:]), batch
            )

            def accumulate(carry, xs):
                micro, i = xs
                (nll, n), g = grad_fn(state.params, micro, jax.random.fold_in(rng, i), state.step)
                return jax.tree.map(jnp.add, carry, (nll, n, g)), None

            keys = ("frames", "notes_nll") + (("velocity_nll", "onsets") if model.cfg.velocity_bins else ())
            zeros = (jnp.zeros(()), dict.fromkeys(keys, jnp.zeros(())), jax.tree.map(jnp.zeros_like, state.params))
            (nll_sum, sums, grads), _ = jax.lax.scan(accumulate, zeros, (micro_batches, jnp.arange(grad_accum)))
        frames = jnp.maximum(sums["frames"], 1.0)
        grads = jax.tree.map(lambda g: g / frames, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": nll_sum / frames, "grad_norm": optax.global_norm(grads), "frames": frames}
        if "onsets" in sums:  # dynamics: the loss is notes + velocities; each apart, velocities per onset
            metrics["notes_nll"] = sums["notes_nll"] / frames
            metrics["velocity_nll"] = sums["velocity_nll"] / jnp.maximum(sums["onsets"], 1.0)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def jit_train_step(
    model: MusicTransformer,
    tx: optax.GradientTransformation,
    grad_accum: int,
    state_shardings: Any,
    tcfg: TrainConfig | None = None,
) -> Callable:
    """The train step as training runs it: state sharded by the rule table (in and out) and donated.
    Trace and call it inside `sharding.activate(mesh)`."""
    return jax.jit(
        make_train_step(model, tx, grad_accum, tcfg),
        in_shardings=(state_shardings, None),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


def make_eval_step(model: MusicTransformer) -> Callable:
    def eval_step(params, batch) -> dict:
        out, _ = model.apply({"params": params}, batch["inputs"], deterministic=True, **model_inputs(batch))
        _, sums = loss_sums(out, batch, batch["targets"], model.cfg, params)
        return {"nll_sum": sums.pop("notes_nll"), **sums}

    return eval_step


def global_batch(local: dict, mesh: Mesh) -> dict:
    """Each process's rows -> one global jax.Array per key, batch axis split over ("data", "fsdp")."""
    return {
        k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, v.ndim), v) for k, v in local.items()
    }


def apply_dataset_shape(cfg: Config, num_pitches: int, num_states: int) -> None:
    """The model's input/output width follows the dataset's."""
    cfg.model.num_pitches = num_pitches
    cfg.model.num_states = num_states


def check_compatible(saved: dict, cfg: Config, workdir: str) -> None:
    """A workdir's checkpoints must have been written by the same model shape."""
    saved_model = saved.get("model", {})
    ours = dataclasses.asdict(cfg.model)
    shape_keys = (
        "num_pitches", "num_states", "num_layers", "d_model", "num_heads", "mlp_dim", "scan_layers", "head",
        "velocity_bins",
    )  # fmt: skip
    if ours["head"] == "nade":
        shape_keys += ("nade_hidden",)
    defaults = dataclasses.asdict(type(cfg.model)())  # keys added since the checkpoint was written
    saved_shape = {k: saved_model.get(k, defaults[k]) for k in shape_keys}
    diffs = [f"{k}={saved_shape[k]!r} (now {ours[k]!r})" for k in shape_keys if saved_shape[k] != ours[k]]
    if diffs:
        raise TrainingError(
            f"{workdir}: holds checkpoints of an incompatible model: {', '.join(diffs)}; use another --workdir"
        )


class _StopFlag:
    """Set by SIGTERM (preemption): the loop saves at the current step and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def is_local(path: str | epath.Path) -> bool:
    """False for object-store URIs (gs://, s3://, ...), which cannot be appended to."""
    return "://" not in str(path)


def _tensorboard_writer(logdir: epath.Path) -> Any:
    """A tensorboardX SummaryWriter, or None when tensorboardX cannot write there.

    tensorboardX writes gs:// only with google-cloud-storage installed (and s3:// only with boto3); other remote
    workdirs get metrics.jsonl alone.
    """
    try:
        from tensorboardX import SummaryWriter

        if not is_local(logdir):
            if not str(logdir).startswith("gs://"):
                raise ImportError("tensorboardX: only local and gs:// logdirs are supported here")
            from google.cloud import storage  # noqa: F401 - what tensorboardX needs for gs://
    except ImportError as error:
        if not is_local(logdir):
            _log(f"no TensorBoard logs in {logdir} ({error})")
        return None
    return SummaryWriter(str(logdir))


class MetricsWriter:
    """metrics.jsonl and TensorBoard event files in the workdir; a no-op on processes other than 0.

    metrics.jsonl is appended to locally; in an object store (gs://), where files cannot be appended to, the
    whole file (existing lines included) is rewritten at each write.
    """

    def __init__(self, workdir: epath.Path, enabled: bool):
        self.enabled = enabled
        self._tb = None
        self._lines: list[str] | None = None  # the whole file, for object stores
        if enabled:
            workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = workdir / "metrics.jsonl"
            if not is_local(workdir):
                self._lines = self._jsonl.read_text().splitlines(keepends=True) if self._jsonl.exists() else []
            self._tb = _tensorboard_writer(workdir / "tensorboard")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        line = json.dumps(record) + "\n"
        if self._lines is None:
            with self._jsonl.open("a") as f:
                f.write(line)
        else:
            self._lines.append(line)
            self._jsonl.write_text("".join(self._lines))
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def evaluate_split(
    params: Any, eval_step: Callable, batches, mesh: Mesh, velocity: dict | None = None
) -> tuple[float, float]:
    """(nats per frame of the notes, frames) over fixed evaluation batches; with dynamics, `velocity` (when given)
    receives {"velocity_nll": nats per onset, "onsets"}."""
    total, frames, velocity_total, onsets = 0.0, 0.0, 0.0, 0.0
    for local in batches:
        out = eval_step(params, global_batch(local, mesh))
        total += float(out["nll_sum"])
        frames += float(out["frames"])
        velocity_total += float(out.get("velocity_nll", 0.0))
        onsets += float(out.get("onsets", 0.0))
    if velocity is not None and onsets:
        velocity.update(velocity_nll=velocity_total / onsets, onsets=onsets)
    return (total / frames if frames else float("nan")), frames


def train_and_evaluate(
    cfg: Config, workdir: str, *, progress: bool = True, data_log: str | None = None
) -> dict[str, float]:
    """Train `cfg` in `workdir` (resuming from its latest checkpoint), returning the final metrics.

    `data_log`, if given, is a local file each process appends one line per local batch to, with each row's
    provenance as SOURCE:WINDOW (sequence index : flat window index); the multi-host tests use it to prove that
    each process reads a disjoint share.
    """
    from musicgpt_jax import pipeline, records
    from musicgpt_jax.checkpoint import Checkpointer

    # The time budget counts from here: set-up and compilation are part of it.
    deadline = time.monotonic() + cfg.train.max_seconds if cfg.train.max_seconds > 0 else None
    workdir_path = epath.Path(workdir)
    info = records.load_info(cfg.data.data_dir, cfg.data.dataset)
    apply_dataset_shape(cfg, info.num_pitches, info.num_states)

    mesh = sharding.make_mesh(cfg.mesh)
    dp = sharding.data_parallel_size(mesh)
    tcfg = cfg.train
    if tcfg.batch_size % (dp * tcfg.grad_accum) or tcfg.batch_size % jax.process_count():
        raise TrainingError(
            f"--config.train.batch_size={tcfg.batch_size} must be divisible by data*fsdp={dp} "
            f"times grad_accum={tcfg.grad_accum} and by the {jax.process_count()} processes"
        )
    local_batch = tcfg.batch_size // jax.process_count()

    model = MusicTransformer(cfg.model)
    tx = make_optimizer(tcfg)
    checkpointer = Checkpointer(workdir_path, keep=tcfg.keep_checkpoints, async_save=tcfg.async_checkpoints)
    resume_step = checkpointer.latest_step()
    if resume_step is not None:
        from musicgpt_jax.checkpoint import load_config_dict

        saved, _ = load_config_dict(workdir_path)  # the newest readable: a damaged latest one is reported at restore
        check_compatible(saved, cfg, workdir)

    state, state_shardings = create_train_state(model, tx, cfg, mesh)
    train_source = records.load_split(cfg.data.data_dir, cfg.data.dataset, "train")
    dataset = pipeline.train_dataset(
        train_source,
        seq_len=cfg.model.max_len,
        batch_size=local_batch,
        seed=cfg.data.seed,
        transpose=cfg.data.transpose,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        velocity_bins=cfg.model.velocity_bins,
    )
    data_iter = iter(dataset.to_iter_dataset())
    start_step = 0
    if resume_step is not None:
        target = abstract_train_state(state_shardings, model, tx, cfg)
        state, data_state, start_step = checkpointer.restore(target)
        data_iter.set_state(data_state)
        _log(f"resumed from {checkpointer.directory / str(start_step)} at step {start_step}")

    try:
        val_source = records.load_split(cfg.data.data_dir, cfg.data.dataset, "validation")
    except (KeyError, ValueError, FileNotFoundError):
        val_source = []

    train_step = jit_train_step(model, tx, tcfg.grad_accum, state_shardings, tcfg)
    eval_step = jax.jit(make_eval_step(model))
    num_params = count_params(state.params)
    flops_frame = flops_per_frame(cfg.model, num_params)
    from musicgpt_jax.hardware import peak_flops_per_device

    peak, peak_source = peak_flops_per_device()
    _log(
        f"model: {num_params / 1e6:.2f}M parameters; mesh {dict(mesh.shape)}; {jax.device_count()} devices; "
        f"MFU against the {peak_source} ({peak / 1e12:.2f} TFLOP/s per device)"
    )

    writer = MetricsWriter(workdir_path, enabled=jax.process_index() == 0)
    stop = _StopFlag()
    stop.install()
    config_dict = cfg.to_dict()

    def data_state() -> dict:
        # Every process has consumed the same number of local batches, so one state serves them all,
        # and it stays valid when the run resumes with another number of processes.
        return data_iter.get_state()

    def save(step: int) -> None:
        checkpointer.save(step, state, data_state(), config_dict)

    bar = None
    if progress and jax.process_index() == 0:
        from tqdm import tqdm

        bar = tqdm(total=tcfg.steps, initial=start_step, desc="train", dynamic_ncols=True)
    last = {"loss": float("nan")}
    step = start_step
    window_start, window_frames = time.perf_counter(), 0.0
    out_of_time = False  # the time budget (train.max_seconds) is spent: evaluate, save and stop
    terminated = False  # SIGTERM (preemption) on any process: save and stop
    closers = [stop.uninstall, *([bar.close] if bar is not None else []), checkpointer.close, writer.close]
    try:
        with sharding.activate(mesh):
            while step < tcfg.steps:
                local = next(data_iter)
                if data_log is not None:
                    with open(data_log, "a") as f:
                        f.write(
                            " ".join(
                                f"{int(s)}:{int(w)}"
                                for s, w in zip(local["source_index"], local["window_index"], strict=True)
                            )
                            + "\n"
                        )
                batch = global_batch(
                    {k: v for k, v in local.items() if k not in ("source_index", "window_index")}, mesh
                )
                state, metrics = train_step(state, batch)
                step += 1
                window_frames += tcfg.batch_size * cfg.model.max_len
                # Multi-host: agree on stopping only at log steps, so there is no host sync on every step.
                if jax.process_count() == 1 or step % tcfg.log_every == 0 or step == tcfg.steps:
                    out_of_time, terminated = _agreed_flags(
                        deadline is not None and time.monotonic() > deadline, stop.requested
                    )
                stopping = out_of_time or terminated
                saving = step % tcfg.checkpoint_every == 0 or step == tcfg.steps or stopping
                if step % tcfg.log_every == 0 or step == tcfg.steps or saving:
                    loss = float(metrics["loss"])
                    if not math.isfinite(loss):
                        raise TrainingError(
                            f"step {step}: loss is {loss}; stopping without saving "
                            f"(last good checkpoint: step {checkpointer.latest_step()})"
                        )
                    elapsed = time.perf_counter() - window_start
                    frames_per_s = window_frames / max(elapsed, 1e-9)
                    mfu = frames_per_s * flops_frame / (peak * jax.device_count())
                    last = {
                        "loss": loss,
                        "grad_norm": float(metrics["grad_norm"]),
                        "frames_per_s": frames_per_s,
                        "mfu": mfu,
                        "learning_rate": float(learning_rate_schedule(tcfg)(step)),
                        **{k: float(metrics[k]) for k in ("notes_nll", "velocity_nll") if k in metrics},
                    }
                    writer.write(step, last)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}", fps=f"{frames_per_s:,.0f}", mfu=f"{mfu:.1%}")
                    window_start, window_frames = time.perf_counter(), 0.0
                if bar is not None:
                    bar.update(1)
                if val_source and (step % tcfg.eval_every == 0 or step == tcfg.steps or out_of_time):
                    val_velocity: dict[str, float] = {}
                    val_nll, _ = evaluate_split(
                        evaluation_params(state),
                        eval_step,
                        pipeline.eval_batches(
                            val_source,
                            seq_len=cfg.model.max_len,
                            batch_size=local_batch,
                            max_batches=tcfg.eval_batches,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(),
                            velocity_bins=cfg.model.velocity_bins,
                        ),
                        mesh,
                        val_velocity,
                    )
                    last["val_nll"] = val_nll
                    written = {"val_nll": val_nll}
                    if "velocity_nll" in val_velocity:
                        written["val_velocity_nll"] = last["val_velocity_nll"] = val_velocity["velocity_nll"]
                    writer.write(step, written)
                    velocity_text = (
                        f", velocity {written['val_velocity_nll']:.4f} nats/onset" if len(written) > 1 else ""
                    )
                    _log(f"step {step}: validation NLL {val_nll:.4f} nats/frame{velocity_text}")
                if saving:
                    save(step)
                if stopping:
                    checkpointer.wait()
                    reason = f"time budget of {tcfg.max_seconds:g} s spent" if out_of_time else "SIGTERM"
                    _log(f"{reason}: saved a checkpoint at step {step}; exiting")
                    break
    except BaseException:
        _close_all(closers, quiet=True)  # the error on its way out is the one to report, not a full disk at close
        raise
    _close_all(closers, quiet=False)
    last["step"] = step
    return last


def _close_all(closers: list[Callable[[], None]], quiet: bool) -> None:
    """Call every closer; then raise the first error one raised, unless `quiet`."""
    first: Exception | None = None
    for close in closers:
        try:
            close()
        except Exception as error:  # noqa: BLE001 - the others must still run
            first = first or error
    if first is not None and not quiet:
        raise first


def _agreed_flags(*flags: bool) -> tuple[bool, ...]:
    """Each flag is True when it is set on any process, so that all processes stop at the same step."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(flags, np.int32))
    return tuple(bool(v) for v in np.max(np.asarray(gathered).reshape(-1, len(flags)), axis=0))
