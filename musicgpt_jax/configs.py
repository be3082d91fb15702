"""Presets as code, and the `--config.section.field=value` override mechanism.

A `Config` has three sections — `model`, `data`, `train` — plus the mesh spec. Presets are small functions that
return a `Config`; `resolve(name_or_path, overrides)` picks one (or loads a JSON file written by a previous run)
and applies dotted overrides with type checking, so a typo is an error, not a silently ignored flag.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any


class ConfigError(ValueError):
    """A bad preset name, override key or value; the message is one line."""


GIVEN_LOOKAHEAD = 32  # frames of given notes seen ahead by the presets' models: one 4/4 bar on the 32nd-note grid
MAX_TRANSPOSITION = 12  # `model.condition_on_transposition` has a learned vector per shift in [-12, +12] semitones


@dataclasses.dataclass
class ModelConfig:
    num_pitches: int = 128
    num_states: int = 3
    num_layers: int = 4
    d_model: int = 256
    num_heads: int = 4
    mlp_dim: int = 768
    max_len: int = 256  # context window in frames (training crop and decode window)
    dropout: float = 0.1
    # Training only: each (frame, pitch) input is hidden with this probability — its embedding vector is left out
    # of the frame's sum, so the model must infer that note from context. 0 = off.
    input_dropout: float = 0.0
    rope_base: float = 10_000.0
    dtype: str = "float32"  # compute dtype; parameters are always float32
    remat: bool = False
    # What a rematerialised layer keeps for the backward pass, a `jax.checkpoint_policies` name:
    # "nothing_saveable" (recompute the whole layer; least memory) or e.g. "dots_with_no_batch_dims_saveable".
    remat_policy: str = "nothing_saveable"
    scan_layers: bool = False
    # Frame head: "independent" (per pitch, the next state's logits from the hidden state alone) or "nade" (the
    # pitches of the next frame one after another, low to high, each given the hidden state and the states already
    # chosen below it, through a NADE layer of `nade_hidden` units; Boulanger-Lewandowski et al. 2012). Every preset
    # trains "nade" (the better model on all four benchmark sets, docs/RESULTS.md); the field's default stays
    # "independent" so that a checkpoint saved before the field existed loads as the model it is.
    head: str = "independent"
    nade_hidden: int = 32
    # Attention kernel: "auto" (cuDNN's fused flash attention on a GPU in bf16/fp16, "matmul" on CPU, XLA
    # elsewhere), "xla" (jax.nn.dot_product_attention), "cudnn", "matmul" (model.causal_attention_matmul).
    attention: str = "auto"
    # Dynamics (`musicgpt_jax.dynamics`): each onset's MIDI velocity in this many bins, modelled jointly with the
    # notes of its frame and fed back as input. 0 = notes only: corpora without dynamics (the benchmark sets, the
    # Bach chorales) and every checkpoint saved before the field existed.
    velocity_bins: int = 0
    # Tell the model by how many semitones the training pipeline transposed each window (`data.transpose`): a
    # learned vector per shift in [-MAX_TRANSPOSITION, +MAX_TRANSPOSITION], added to every frame. Sampling and
    # evaluation say 0, so the augmentation's shifted registers do not leak into what the model writes
    # ("non-leaking augmentation", Karras et al. 2022). False: the input does not exist (checkpoints before it).
    condition_on_transposition: bool = False
    # Tell the model where each frame falls in the beat: a learned vector per (frame index mod `beat_steps`),
    # counted from the piece's first frame, added to every frame. With the grid's steps per quarter note (8) the
    # model cannot drift off the beat. 0 = off (corpora whose frames are not on a beat grid; checkpoints before it).
    beat_steps: int = 0
    # Given notes (`musicgpt_jax.given`): a second input of notes the model must keep (a melody to harmonise, the
    # bars around a gap), each position seeing those of the frame it predicts and of the `given_lookahead` frames
    # after it. Training draws what is given per window (nothing, the top line, the bass line, bars around a gap).
    # 0 = off: the input does not exist (checkpoints before it).
    given_lookahead: int = 0
    # Key conditioning (`musicgpt_jax.keys`): a learned vector per key (24, and one for "unknown") added to every
    # frame. Training tells the window's key (moved with its transposition), sampling the key asked for (`--key`)
    # or "unknown". False: the input does not exist (checkpoints before it).
    condition_on_key: bool = False
    # Composer conditioning: a learned vector per name in `composers` (and one for "unknown") added to every frame.
    # `condition_on_composer` asks training to take the names from the dataset card when `composers` is empty; the
    # saved config carries them, so sampling knows which `--composer` the model was taught. () = off.
    condition_on_composer: bool = False
    composers: tuple[str, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


# Data defaults, one home: where prepared datasets live, the default corpus's name, and how data/prepare.py builds
# a dataset from MIDI files (records.build_midi_dataset).
DEFAULT_DATA_DIR = "data/records"
DEFAULT_DATASET = "bach_chorales"
DEFAULT_MAX_FRAMES = 100_000  # a longer file is skipped as too long
DEFAULT_TIMEOUT_S = 60.0  # seconds to convert one file
DEFAULT_SPLIT_PERCENT = 5.0  # of the files in validation, and as many in test


@dataclasses.dataclass
class DataConfig:
    data_dir: str = DEFAULT_DATA_DIR
    dataset: str = DEFAULT_DATASET
    transpose: int = 5  # training-time random transposition in [-transpose, +transpose] semitones; 0 = off
    seed: int = 0


@dataclasses.dataclass
class TrainConfig:
    steps: int = 600
    schedule_steps: int = 0  # length of the warmup + cosine schedule; 0 means `steps`. Set it to stop early
    # (e.g. --steps N to look at a run half-way) and continue later on exactly the same learning-rate curve.
    batch_size: int = 16  # global batch, in sequences of model.max_len frames
    grad_accum: int = 1
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    # Exponential moving average of the parameters, kept in the optimizer state; when > 0, validation, `evaluate`
    # and `sample.py` use the average instead of the raw parameters. 0 = off. Its decay ramps up as
    # min(ema_decay, (1 + step) / (10 + step)), so early averages are not dominated by the initialisation.
    ema_decay: float = 0.0
    # Share of input frames replaced by the model's own samples (parallel scheduled sampling;
    # `train_step.with_own_samples`). 0 = plain teacher forcing, every preset's but `piano`: with the NADE head on
    # the chorales it costs likelihood and texture, and long samples stay music without it (docs/RESULTS.md,
    # "Scheduled sampling off").
    scheduled_sampling: float = 0.0
    scheduled_sampling_start: int = 0  # the step it starts from, rising to its rate half-way through the rest
    seed: int = 0
    eval_every: int = 200
    eval_batches: int = 8
    # A short sample to TensorBoard (piano roll, audio, silent share; `training_samples`): -1 with each
    # evaluation, N every N steps, 0 never. One process only; `sample_bars` bars long.
    sample_every: int = -1
    sample_bars: int = 2
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    # Key and composer conditioning: the share of training windows told "unknown" instead (each label apart), so
    # that sampling without a key or a composer works too.
    condition_dropout: float = 0.2
    max_seconds: float = 0.0  # wall-clock budget of train_and_evaluate (set-up included); 0: none. When spent:
    # evaluate, save and stop.


@dataclasses.dataclass
class SamplingConfig:
    """How `sample.py` draws from this run unless its flags say otherwise: chosen per preset on validation, saved
    with the run. Below 1 the temperature makes every rare choice rarer: on the chorales it cleans up stray notes;
    on classical piano it starves the music of note starts and releases (docs/RESULTS.md, "Classical piano")."""

    temperature: float = 0.9
    # `--keyboard corpus` keeps the samples to the pitches the corpus sounds, widened by the training transposition
    # (True) or not (False: music asked for untransposed, as a model told its transposition is, stays on the
    # corpus's own keys; `piano` would otherwise write below the piano's lowest A).
    widen_keyboard: bool = True


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    mesh: str = ""  # e.g. "data=2,fsdp=2,tensor=2"; empty: all devices on fsdp
    preset: str = "tiny"

    def to_dict(self) -> dict[str, Any]:
        """The config as the JSON saved with a checkpoint holds it (tuples as lists), so a saved config reads back
        equal."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        cfg = cls()
        for section in SECTIONS:
            for key, value in d.get(section, {}).items():
                _set(cfg, f"{section}.{key}", value)
        cfg.mesh = d.get("mesh", "")
        cfg.preset = d.get("preset", "custom")
        return cfg


def _preset_model(
    num_layers: int, d_model: int, num_heads: int, mlp_dim: int, max_len: int, accelerator: bool = False
) -> ModelConfig:
    """A preset's model: the NADE head, the transposition input and the given-notes input (`GIVEN_LOOKAHEAD`); for
    accelerators also bfloat16 and rematerialised, scanned layers."""
    speed = {"dtype": "bfloat16", "remat": True, "scan_layers": True} if accelerator else {}
    return ModelConfig(
        num_layers=num_layers,
        d_model=d_model,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        max_len=max_len,
        head="nade",
        condition_on_transposition=True,
        given_lookahead=GIVEN_LOOKAHEAD,
        **speed,
    )


def tiny() -> Config:
    """The CPU demo: under two minutes on 2 cores, loss clearly falling; `--steps 2000` and 5000 write better
    music (docs/RESULTS.md, "Scheduled sampling off")."""
    return Config(
        model=_preset_model(num_layers=3, d_model=128, num_heads=4, mlp_dim=384, max_len=128),
        train=TrainConfig(
            steps=300, batch_size=16, learning_rate=2e-3, warmup_steps=30, eval_every=100, checkpoint_every=100
        ),
        preset="tiny",
    )


def small() -> Config:
    """A workstation / single-GPU model (27.7M parameters)."""
    return Config(
        model=_preset_model(num_layers=8, d_model=512, num_heads=8, mlp_dim=1536, max_len=512),
        train=TrainConfig(
            steps=20_000, batch_size=64, learning_rate=6e-4, warmup_steps=500, eval_every=1000, checkpoint_every=1000
        ),
        preset="small",
    )


def base() -> Config:
    """113.9M parameters: one TPU v4-8 / v5e-8 or one H100."""
    return Config(
        model=_preset_model(num_layers=12, d_model=768, num_heads=12, mlp_dim=3072, max_len=1024, accelerator=True),
        train=TrainConfig(
            steps=100_000, batch_size=128, learning_rate=3e-4, warmup_steps=2000, eval_every=2000, checkpoint_every=2000
        ),
        preset="base",
    )


def large() -> Config:
    """630.2M parameters, for pod slices."""
    return Config(
        model=_preset_model(num_layers=24, d_model=1280, num_heads=20, mlp_dim=5120, max_len=2048, accelerator=True),
        train=TrainConfig(
            steps=200_000, batch_size=256, learning_rate=2e-4, warmup_steps=4000, eval_every=5000, checkpoint_every=2000
        ),
        preset="large",
    )


def _benchmark(dataset: str, steps: int, max_len: int, batch_size: int) -> Config:
    """The recipe for one polyphonic benchmark set: 88 pitches, sustain-only (2 states).

    Every set is transposed to C major / C minor, the test splits too; random transposition by up to ±6
    semitones during training is augmentation only (it stopped JSB overfitting: docs/RESULTS.md).
    """
    return Config(
        model=ModelConfig(
            num_pitches=88,
            num_states=2,
            num_layers=4,
            d_model=192,
            num_heads=4,
            mlp_dim=576,
            max_len=max_len,
            dropout=0.3,
            head="nade",
        ),
        data=DataConfig(dataset=dataset, transpose=6),
        train=TrainConfig(
            steps=steps,
            batch_size=batch_size,
            learning_rate=1e-3,
            warmup_steps=100,
            weight_decay=0.1,
            eval_every=250,
            eval_batches=16,
            checkpoint_every=250,
        ),
        preset=dataset,
    )


def jsb() -> Config:
    """JSB Chorales (quarter-note frames; sequences of 25-160 frames, median 57); how it was chosen: docs/RESULTS.md,
    "How the JSB preset was chosen"."""
    cfg = _benchmark("jsb_chorales", steps=6000, max_len=64, batch_size=32)
    cfg.model.num_layers, cfg.model.d_model, cfg.model.mlp_dim, cfg.model.dropout = 2, 96, 288, 0.5
    cfg.train.learning_rate, cfg.train.warmup_steps = 3e-3, 50
    return cfg


def nottingham() -> Config:
    return _benchmark("nottingham", steps=2000, max_len=256, batch_size=16)


def musedata() -> Config:
    return _benchmark("musedata", steps=4000, max_len=256, batch_size=16)


def piano_midi() -> Config:
    return _benchmark("piano_midi", steps=1600, max_len=256, batch_size=16)


def piano() -> Config:
    """Classical piano (MAESTRO): both hands in an 8-bar window, the NADE head, dynamics (32 velocity bins), the key
    and composer inputs, told its transposition, sampled at temperature 1. Sized for one CPU: its 5,000 steps take
    about 40 minutes on 2 cores, and the texture holds from 10 minutes on (benchmarks/classical_piano.py; docs/
    RESULTS.md, "Classical piano"). On an accelerator use `maestro`. Trains `--dataset maestro` unless told
    otherwise."""
    return Config(
        model=ModelConfig(
            num_layers=4,
            d_model=192,
            num_heads=6,
            mlp_dim=576,
            max_len=256,
            dropout=0.1,
            head="nade",
            velocity_bins=32,
            given_lookahead=GIVEN_LOOKAHEAD,
            condition_on_transposition=True,
            condition_on_key=True,
            condition_on_composer=True,
        ),
        data=DataConfig(dataset="maestro"),
        train=TrainConfig(
            steps=5000,
            batch_size=8,
            learning_rate=1e-3,
            warmup_steps=100,
            eval_every=250,
            checkpoint_every=250,
            # Sampled with the average of the weights: at batch 8 the raw weights of any one step are noisy.
            ema_decay=0.999,
        ),
        # Drawn at temperature 1, the model's own distribution: below 1 the note starts and releases thin out and
        # the samples fall silent; scheduled sampling, once the cure for that, added note starts instead
        # (docs/RESULTS.md, "Classical piano: where the texture swing came from").
        sampling=SamplingConfig(temperature=1.0, widen_keyboard=False),
        preset="piano",
    )


def maestro() -> Config:
    """Classical piano on MAESTRO v3 for one accelerator (one H100, or a TPU v5e-8 slice at 16 sequences a chip):
    `piano`'s dynamics (32 velocity bins), given notes, key and composer inputs and sampling temperature (1), in a
    32-bar window (1024 frames), told its transposition as the chorale presets are, bfloat16 with rematerialised,
    scanned layers, 35.4M parameters (10 layers of width 512). Its memory per v5e chip of a v5e-8 and FLOPs per
    step: docs/PERFORMANCE.md, "The `maestro` preset".

    Sized for the data: MAESTRO v3 is about 200 hours, ~11M frames at 120 bpm (16 frames a second), ~9M in its
    train split. A batch of 128 x 1024 frames (131k) is one pass over those frames every ~70 steps, so 10,000 steps
    see them ~140 times, or ~13 times each of the 11 transpositions (±5 semitones) the pipeline draws from: long
    enough for a 35M-parameter model, short enough that dropout 0.1 and a validation every 500 steps catch
    overfitting before it costs much. Learning rate 5e-4 (between `small`'s 6e-4 and `base`'s 3e-4, as its width
    is), 500 warmup steps (5%), cosine to a tenth. Trains `--dataset maestro` unless told otherwise."""
    return Config(
        model=dataclasses.replace(
            _preset_model(num_layers=10, d_model=512, num_heads=8, mlp_dim=1536, max_len=1024, accelerator=True),
            dropout=0.1,
            velocity_bins=32,
            condition_on_key=True,
            condition_on_composer=True,
        ),
        data=DataConfig(dataset="maestro"),
        train=TrainConfig(
            steps=10_000,
            batch_size=128,
            learning_rate=5e-4,
            warmup_steps=500,
            eval_every=500,
            checkpoint_every=500,
        ),
        sampling=SamplingConfig(
            temperature=1.0, widen_keyboard=False
        ),  # as `piano`'s (docs/RESULTS.md, "Classical piano")
        preset="maestro",
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "tiny": tiny,
    "piano": piano,
    "maestro": maestro,
    "small": small,
    "base": base,
    "large": large,
    "jsb": jsb,
    "nottingham": nottingham,
    "musedata": musedata,
    "piano_midi": piano_midi,
}

# One line per preset, for `train.py --help` (parameters: `count_params` of the initialised model).
SUMMARIES: dict[str, str] = {
    "tiny": "0.77M parameters, a 4-bar window; the CPU demo on the Bach chorales (300 steps)",
    "piano": "2.63M, an 8-bar window, dynamics (32 velocity bins), key and composer inputs; classical piano on a CPU",
    "maestro": "35.4M, a 32-bar window, dynamics; MAESTRO on one H100 or a TPU v5e-8 slice (10,000 steps)",
    "small": "27.7M, a 16-bar window; a workstation or one GPU (20,000 steps)",
    "base": "113.9M, a 32-bar window; one H100 or a TPU v4-8 / v5e-8 slice",
    "large": "630.2M, a 64-bar window; TPU pod slices (v5e:4x4, v6e:2x4, v4:2x2x2, v5p:2x2x1)",
    "jsb": "0.29M; the JSB Chorales benchmark set (quarter-note frames)",
    "nottingham": "2.0M; the Nottingham benchmark set",
    "musedata": "2.0M; the MuseData benchmark set",
    "piano_midi": "2.0M; the Piano-midi.de benchmark set",
}


SECTIONS = ("model", "data", "train", "sampling")


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"--config.{dotted}: unknown key (expected model.X, data.X, train.X or sampling.X)")
    section = getattr(cfg, parts[0])
    fields = {f.name: f for f in dataclasses.fields(section)}
    if parts[1] not in fields:
        raise ConfigError(f"--config.{dotted}: unknown key; {parts[0]} has: {', '.join(sorted(fields))}")
    current = getattr(section, parts[1])
    value = _coerce(dotted, value, type(current))
    if dotted in _CHOICES and value not in _CHOICES[dotted]:
        raise ConfigError(f"--config.{dotted}: {value!r} is not one of {', '.join(_CHOICES[dotted])}")
    setattr(section, parts[1], value)


_CHOICES = {
    "model.attention": ("auto", "xla", "cudnn", "matmul"),
    "model.head": ("independent", "nade"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.remat_policy": (  # names in jax.checkpoint_policies
        "nothing_saveable",
        "dots_saveable",
        "dots_with_no_batch_dims_saveable",
        "everything_saveable",
    ),
}


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is tuple:  # a tuple of names: a JSON list, or comma-separated text on the command line
        names = value.split(",") if isinstance(value, str) else value
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"--config.{key}: expected names, got {value!r}")
        return tuple(n.strip() for n in names if n.strip())
    if not isinstance(value, str):
        if kind is float and isinstance(value, int):
            return float(value)
        if isinstance(value, kind):
            return value
        raise ConfigError(f"--config.{key}: expected {kind.__name__}, got {value!r}")
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ValueError(value)
        return kind(value)
    except ValueError:
        raise ConfigError(f"--config.{key}: expected {kind.__name__}, got {value!r}") from None


def split_overrides(extra_args: Sequence[str]) -> list[str]:
    """`--config.SECTION.FIELD=VALUE` command-line words -> "SECTION.FIELD=VALUE"; anything else is an error."""
    overrides = []
    for item in extra_args:
        if not item.startswith("--config."):
            raise ConfigError(f"unrecognized argument: {item}")
        overrides.append(item[len("--config.") :])
    return overrides


def resolve(name_or_path: str = "tiny", overrides: Sequence[str] = ()) -> Config:
    """A preset name or a JSON config path, then `section.field=value` overrides applied in order."""
    if name_or_path in PRESETS:
        cfg = PRESETS[name_or_path]()
    elif name_or_path.endswith(".json") and os.path.exists(name_or_path):
        with open(name_or_path) as f:
            cfg = Config.from_dict(json.load(f))
    else:
        raise ConfigError(
            f"--config {name_or_path}: unknown preset (known: {', '.join(PRESETS)}) and not an existing .json file"
        )
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Config, overrides: Sequence[str] = ()) -> Config:
    """`cfg` with `section.field=value` overrides applied in order, then checked."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--config.{key}: needs a value (--config.{key}=VALUE)")
        _set(cfg, key, value)
    check(cfg)
    return cfg


def check(cfg: Config) -> None:
    """Refuse settings that are out of range or valid alone but not together (one-line ConfigError)."""
    if cfg.model.given_lookahead < 0:
        raise ConfigError(f"--config.model.given_lookahead={cfg.model.given_lookahead}: must be 0 (off) or frames")
    if cfg.model.beat_steps < 0:
        raise ConfigError(f"--config.model.beat_steps={cfg.model.beat_steps}: must be 0 (off) or a number of frames")
    if not 0 <= cfg.train.condition_dropout <= 1:
        raise ConfigError(f"--config.train.condition_dropout={cfg.train.condition_dropout}: must be in [0, 1]")
    if len(set(cfg.model.composers)) != len(cfg.model.composers):
        raise ConfigError(f"--config.model.composers: a name is listed twice in {', '.join(cfg.model.composers)}")
    if cfg.model.condition_on_transposition and not 0 <= cfg.data.transpose <= MAX_TRANSPOSITION:
        raise ConfigError(
            f"--config.data.transpose={cfg.data.transpose}: model.condition_on_transposition has a vector for "
            f"shifts up to {MAX_TRANSPOSITION} semitones only"
        )
