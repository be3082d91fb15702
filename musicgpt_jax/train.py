"""The training loop: set-up, the step, and the periodic actions (log, evaluate, checkpoint, stop).

`train_and_evaluate(cfg, workdir)` is the one entry point; the top-level `train.py` only parses flags. A workdir
that holds checkpoints resumes from the latest one onto whatever mesh is given now; on CPU, N + N steps with a stop
in between give bitwise the same parameters as 2N steps in one go (the dropout key comes from (seed, step), the
data order from the restored grain iterator state).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from musicgpt_jax import conditioning, pipeline, records, sharding
from musicgpt_jax.checkpoint import Checkpointer
from musicgpt_jax.configs import Config, ConfigError, ModelConfig, TrainConfig
from musicgpt_jax.hardware import peak_flops_per_device
from musicgpt_jax.metrics_log import MetricsWriter, log
from musicgpt_jax.model import MusicTransformer, count_params, flops_per_frame
from musicgpt_jax.saved_run import load_config_dict
from musicgpt_jax.train_state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    evaluation_params,
    learning_rate_schedule,
    make_optimizer,
    param_shapes,
)
from musicgpt_jax.train_step import global_batch, jit_train_step, make_eval_step


class TrainingError(RuntimeError):
    """Training cannot go on (bad data, NaN loss, incompatible checkpoint); the message is one line."""


def itstime(step: int, every: int, total: int) -> bool:
    """Whether an action done every `every` steps (never when `every` <= 0) is due after `step`: it is also due
    after the last step, `total` (as big_vision's `itstime`)."""
    return (every > 0 and step % every == 0) or step == total


def apply_dataset_shape(cfg: Config, num_pitches: int, num_states: int) -> None:
    """The model's input/output width follows the dataset's."""
    cfg.model.num_pitches = num_pitches
    cfg.model.num_states = num_states


def check_compatible(saved: dict, cfg: Config, workdir: str) -> None:
    """A workdir's checkpoints must have been written on the same dataset (when they say which: older ones may
    not), by a model with the same parameter shapes (`param_shapes` of the saved config and of ours, so any
    option that adds or resizes a parameter counts); a run that would resume another's is refused in one line."""
    saved_dataset = saved.get("data", {}).get("dataset")
    if saved_dataset is not None and saved_dataset != cfg.data.dataset:
        raise TrainingError(
            f"{workdir}: holds a run trained on dataset {saved_dataset}, not {cfg.data.dataset}; "
            f"use another --workdir (e.g. runs/{cfg.data.dataset}), or --dataset {saved_dataset} to resume it"
        )
    try:
        theirs = Config.from_dict({"model": saved.get("model", {})}).model  # fields added since: their defaults
    except ConfigError as error:
        message = f"{workdir}: its checkpoints' config does not load ({error}); use another --workdir"
        raise TrainingError(message) from None
    ours = param_shapes(cfg.model)
    if param_shapes(theirs) == ours:
        return
    changed = [f.name for f in dataclasses.fields(theirs) if getattr(theirs, f.name) != getattr(cfg.model, f.name)]
    # name the options that change the shapes on their own (others, such as dropout, may differ as well)
    shaping = [k for k in changed if _shapes_or_none(dataclasses.replace(cfg.model, **{k: getattr(theirs, k)})) != ours]
    diffs = [f"{k}={getattr(theirs, k)!r} (now {getattr(cfg.model, k)!r})" for k in shaping or changed]
    raise TrainingError(
        f"{workdir}: holds checkpoints of an incompatible model: {', '.join(diffs)}; use another --workdir"
    )


def _shapes_or_none(model: ModelConfig) -> dict | None:
    """`param_shapes`, or None for a mix of options that makes no model (say num_heads not dividing d_model)."""
    try:
        return param_shapes(model)
    except Exception:  # noqa: BLE001 - any failure to build it: not the model we have
        return None


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


@dataclasses.dataclass
class _Run:
    """Everything the loop needs, built once by `_set_up`."""

    cfg: Config
    mesh: Mesh
    checkpointer: Checkpointer
    state: TrainState
    data_iter: Any  # grain DatasetIterator: next() and get_state()/set_state()
    start_step: int
    val_source: Any
    local_batch: int
    train_step: Callable
    eval_step: Callable
    flops_per_frame: float
    peak_flops: float


def _local_batch_size(cfg: Config, mesh: Mesh) -> int:
    tcfg, dp = cfg.train, sharding.data_parallel_size(mesh)
    if tcfg.batch_size % (dp * tcfg.grad_accum) or tcfg.batch_size % jax.process_count():
        raise TrainingError(
            f"--config.train.batch_size={tcfg.batch_size} must be divisible by data*fsdp={dp} "
            f"times grad_accum={tcfg.grad_accum} and by the {jax.process_count()} processes"
        )
    return tcfg.batch_size // jax.process_count()


def _set_up(cfg: Config, workdir: epath.Path) -> _Run:
    """Dataset shape, mesh, model, optimizer, state (restored when the workdir holds checkpoints), data, steps."""
    info = records.load_info(cfg.data.data_dir, cfg.data.dataset)
    apply_dataset_shape(cfg, info.num_pitches, info.num_states)
    if cfg.model.condition_on_composer and not cfg.model.composers:
        cfg.model = conditioning.with_composers(cfg.model, records.load_card(cfg.data.data_dir, cfg.data.dataset))
        known = ", ".join(cfg.model.composers) or "none: composer conditioning stays off"
        log(f"composers from the dataset card: {known}")
    mesh = sharding.make_mesh(cfg.mesh)
    local_batch = _local_batch_size(cfg, mesh)
    tcfg = cfg.train

    model, tx = MusicTransformer(cfg.model), make_optimizer(tcfg)
    checkpointer = Checkpointer(workdir, keep=tcfg.keep_checkpoints, async_save=tcfg.async_checkpoints)
    resume_step = checkpointer.latest_step()
    if resume_step is not None:
        saved, _ = load_config_dict(workdir)  # the newest readable: a damaged latest one is reported at restore
        check_compatible(saved, cfg, str(workdir))

    state, state_shardings = create_train_state(model, tx, cfg, mesh)
    dataset = pipeline.train_dataset(
        records.load_split(cfg.data.data_dir, cfg.data.dataset, "train"),
        seq_len=cfg.model.max_len,
        batch_size=local_batch,
        seed=cfg.data.seed,
        transpose=cfg.data.transpose,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        velocity_bins=cfg.model.velocity_bins,
        given_lookahead=cfg.model.given_lookahead,
        labels_for=cfg.model,
        condition_dropout=tcfg.condition_dropout,
    )
    data_iter = iter(dataset.to_iter_dataset())
    start_step = 0
    if resume_step is not None:
        state, data_state, start_step = checkpointer.restore(abstract_train_state(state_shardings, model, tx, cfg))
        data_iter.set_state(data_state)
        log(f"resumed from {checkpointer.directory / str(start_step)} at step {start_step}")
    try:
        val_source = records.load_split(cfg.data.data_dir, cfg.data.dataset, "validation")
    except (KeyError, ValueError, FileNotFoundError):
        val_source = []

    num_params = count_params(state.params)
    peak, peak_source = peak_flops_per_device()
    log(
        f"model: {num_params / 1e6:.2f}M parameters; mesh {dict(mesh.shape)}; {jax.device_count()} devices; "
        f"MFU against the {peak_source} ({peak / 1e12:.2f} TFLOP/s per device)"
    )
    return _Run(
        cfg=cfg,
        mesh=mesh,
        checkpointer=checkpointer,
        state=state,
        data_iter=data_iter,
        start_step=start_step,
        val_source=val_source,
        local_batch=local_batch,
        train_step=jit_train_step(model, tx, tcfg.grad_accum, state_shardings, tcfg),
        eval_step=jax.jit(make_eval_step(model)),
        flops_per_frame=flops_per_frame(cfg.model, num_params),
        peak_flops=peak,
    )


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


def _validate(run: _Run, state: TrainState) -> dict[str, float]:
    """Validation NLL of the evaluation parameters: {"val_nll": notes, nats per frame} and, with dynamics,
    {"val_velocity_nll": nats per onset}."""
    batches = pipeline.eval_batches(
        run.val_source,
        seq_len=run.cfg.model.max_len,
        batch_size=run.local_batch,
        max_batches=run.cfg.train.eval_batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        velocity_bins=run.cfg.model.velocity_bins,
        labels_for=run.cfg.model,
    )
    velocity: dict[str, float] = {}
    val_nll, _ = evaluate_split(evaluation_params(state), run.eval_step, batches, run.mesh, velocity)
    return {"val_nll": val_nll, **({"val_velocity_nll": velocity["velocity_nll"]} if velocity else {})}


class _Throughput:
    """Frames trained since the last log, and how long they took."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.frames = time.perf_counter(), 0.0

    def frames_per_s(self) -> float:
        return self.frames / max(time.perf_counter() - self.start, 1e-9)


def _log_metrics(run: _Run, step: int, metrics: dict, meter: _Throughput, writer: MetricsWriter, bar) -> dict:
    """The logged metrics of `step` (written out); a loss that is not finite stops training."""
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        raise TrainingError(
            f"step {step}: loss is {loss}; stopping without saving "
            f"(last good checkpoint: step {run.checkpointer.latest_step()})"
        )
    frames_per_s = meter.frames_per_s()
    mfu = frames_per_s * run.flops_per_frame / (run.peak_flops * jax.device_count())
    logged = {
        "loss": loss,
        "grad_norm": float(metrics["grad_norm"]),
        "frames_per_s": frames_per_s,
        "mfu": mfu,
        "learning_rate": float(learning_rate_schedule(run.cfg.train)(step)),
        **{k: float(metrics[k]) for k in ("notes_nll", "velocity_nll") if k in metrics},  # dynamics: each apart
    }
    writer.write(step, logged)
    if bar is not None:
        bar.set_postfix(loss=f"{loss:.3f}", fps=f"{frames_per_s:,.0f}", mfu=f"{mfu:.1%}")
    meter.reset()
    return logged


def _log_rows(data_log: str, local: dict) -> None:
    """Each row's provenance as SOURCE:WINDOW, one line per local batch (the multi-host tests read it)."""
    rows = zip(local["source_index"], local["window_index"], strict=True)
    with open(data_log, "a") as f:
        f.write(" ".join(f"{int(s)}:{int(w)}" for s, w in rows) + "\n")


def _sample_due(tcfg: TrainConfig, step: int, evaluating: bool) -> bool:
    """Whether to compose a TensorBoard sample now (`train.sample_every`: -1 with each evaluation, 0 never)."""
    if tcfg.sample_every < 0:
        return evaluating
    return tcfg.sample_every > 0 and itstime(step, tcfg.sample_every, tcfg.steps)


def _write_training_sample(run: _Run, state: TrainState, step: int, writer: MetricsWriter) -> None:
    """A short sample of the evaluation parameters to TensorBoard, with its silent share and what it cost."""
    started = time.perf_counter()
    try:
        from musicgpt_jax import training_samples  # the rendering stack, only when samples are due

        sample = training_samples.compose_sample(evaluation_params(state), run.cfg, step)
    except Exception as error:  # noqa: BLE001 - a side view of training must never end it
        log(f"step {step}: no training sample ({type(error).__name__}: {error})")
        return
    seconds = time.perf_counter() - started
    writer.write_sample(step, sample.image, sample.audio, sample.sample_rate)
    figures = {"sample_silent_fraction": sample.silent_fraction, "sample_notes": sample.notes}
    writer.write(step, {**figures, "sample_seconds": seconds})


def _batches(run: _Run, data_log: str | None) -> Iterator[dict]:
    """Global training batches, from this process's rows."""
    while True:
        local = next(run.data_iter)
        if data_log is not None:
            _log_rows(data_log, local)
        yield global_batch({k: v for k, v in local.items() if k not in ("source_index", "window_index")}, run.mesh)


def _loop(
    run: _Run, writer: MetricsWriter, stop: _StopFlag, bar, deadline: float | None, data_log: str | None
) -> tuple[dict[str, float], int]:
    """Train from `run.start_step` to the last step (or a stop); (last logged metrics, step reached)."""
    tcfg, config_dict = run.cfg.train, run.cfg.to_dict()
    state, step, last = run.state, run.start_step, {"loss": float("nan")}
    meter = _Throughput()
    out_of_time = False  # the time budget (train.max_seconds) is spent: evaluate, save and stop
    terminated = False  # SIGTERM (preemption) on any process: save and stop
    batches = _batches(run, data_log)
    while step < tcfg.steps:
        state, metrics = run.train_step(state, next(batches))
        step += 1
        meter.frames += tcfg.batch_size * run.cfg.model.max_len
        # Multi-host: agree on stopping only at log steps, so there is no host sync on every step.
        if jax.process_count() == 1 or itstime(step, tcfg.log_every, tcfg.steps):
            out_of_time, terminated = _agreed_flags(
                deadline is not None and time.monotonic() > deadline, stop.requested
            )
        stopping = out_of_time or terminated
        saving = itstime(step, tcfg.checkpoint_every, tcfg.steps) or stopping
        if itstime(step, tcfg.log_every, tcfg.steps) or saving:
            last = _log_metrics(run, step, metrics, meter, writer, bar)
        if bar is not None:
            bar.update(1)
        evaluating = bool(run.val_source) and (itstime(step, tcfg.eval_every, tcfg.steps) or out_of_time)
        if evaluating:
            validation = _validate(run, state)
            last.update(validation)
            writer.write(step, validation)
            velocity = validation.get("val_velocity_nll")
            velocity_text = f", velocity {velocity:.4f} nats/onset" if velocity is not None else ""
            log(f"step {step}: validation NLL {validation['val_nll']:.4f} nats/frame{velocity_text}")
        if writer.enabled and jax.process_count() == 1 and _sample_due(tcfg, step, evaluating):
            _write_training_sample(run, state, step, writer)
        if saving:
            # Every process has consumed the same number of local batches, so one data state serves them all,
            # and it stays valid when the run resumes with another number of processes.
            run.checkpointer.save(step, state, run.data_iter.get_state(), config_dict)
            writer.sync()  # a remote workdir's logs follow its checkpoints
        if stopping:
            run.checkpointer.wait()
            reason = f"time budget of {tcfg.max_seconds:g} s spent" if out_of_time else "SIGTERM"
            log(f"{reason}: saved a checkpoint at step {step}; exiting")
            break
    return last, step


def train_and_evaluate(
    cfg: Config, workdir: str, *, progress: bool = True, data_log: str | None = None
) -> dict[str, float]:
    """Train `cfg` in `workdir` (resuming from its latest checkpoint), returning the final metrics.

    `data_log`, if given, is a local file each process appends one line per local batch to, with each row's
    provenance as SOURCE:WINDOW (sequence index : flat window index); the multi-host tests use it to prove that
    each process reads a disjoint share.
    """
    # The time budget counts from here: set-up and compilation are part of it.
    deadline = time.monotonic() + cfg.train.max_seconds if cfg.train.max_seconds > 0 else None
    workdir_path = epath.Path(workdir)
    run = _set_up(cfg, workdir_path)
    writer = MetricsWriter(workdir_path, enabled=jax.process_index() == 0)
    stop = _StopFlag()
    stop.install()
    bar = None
    if progress and jax.process_index() == 0:
        bar = tqdm(total=cfg.train.steps, initial=run.start_step, desc="train", dynamic_ncols=True)
    closers = [stop.uninstall, *([bar.close] if bar is not None else []), run.checkpointer.close, writer.close]
    try:
        with sharding.activate(run.mesh):
            last, step = _loop(run, writer, stop, bar, deadline, data_log)
    except BaseException:
        _close_all(closers, quiet=True)  # the error on its way out is the one to report, not a full disk at close
        raise
    _close_all(closers, quiet=False)
    return {**last, "step": step}


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
    gathered = multihost_utils.process_allgather(np.asarray(flags, np.int32))
    return tuple(bool(v) for v in np.max(np.asarray(gathered).reshape(-1, len(flags)), axis=0))
