"""Sampling from a trained run: restore, encode the primer, generate, write MIDI, PNG, WAV and the listening page.

`sample_run(options)` is the one entry point; the top-level `sample.py` only parses flags.

What comes from where (config, grid, primer, tempo) and how the files are written: docs/SAMPLING.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from musicgpt_jax import audio, conditioning, listening_page, pianoroll, stats
from musicgpt_jax.checkpoint import CheckpointError
from musicgpt_jax.configs import Config, ModelConfig
from musicgpt_jax.frame_choice import STRATEGIES, Strategy
from musicgpt_jax.frames import Frames, notes_of
from musicgpt_jax.generation import (
    DEFAULT_STRATEGY,
    SampleError,
    generate_pieces,
    grid_of,
    keyboard_of,
    output_frames,
    read_primer,
    steps_per_bar,
)
from musicgpt_jax.midi_io import MidiDecodeError, frames_to_midi
from musicgpt_jax.saved_run import load_config_dict, restore_params

KEYBOARDS = ("corpus", "all")


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    workdir: str = "runs/default"
    step: int | None = None
    out: str = "samples"
    num_samples: int = 4
    bars: int | None = 8
    frames: int | None = None  # overrides `bars`
    strategy: str | None = None  # greedy, temperature or nucleus; None: nucleus when top_p is given, else DEFAULT
    temperature: float | None = None  # None: the run's own (`SamplingConfig`, saved with its config)
    top_p: float | None = None
    keyboard: str = "corpus"  # "corpus": only pitches the training data sounds (`generation.keyboard_of`); "all"
    seed: int = 0
    prime: str | None = None
    prime_bars: int = 4
    include_prime: bool = False
    bpm: float | None = None
    # Kept notes (`musicgpt_jax.harmonise`): a melody to harmonise, notes to keep, or bars "A:B" of --prime to fill.
    melody: str | None = None
    keep: str | None = None
    fill: str | None = None
    # The key ("D minor") and composer to write in, for a model trained with that conditioning; None: unknown.
    key: str | None = None
    composer: str | None = None


class ConditionError(SampleError):
    """A key or composer the model cannot take (unknown to it, or no such conditioning); one line listing those
    it knows. The CLI reports it as bad usage (exit 2)."""


@dataclasses.dataclass
class Sample:
    name: str  # file stem, sample_XX
    frames: Frames  # what sample_XX.mid holds (primer included or not)
    generated: np.ndarray  # (num_frames, P) the sampled states, as the model produced them
    prime_frames: int  # how many leading frames of `frames` are the primer
    renderer: str  # what wrote sample_XX.wav: audio.FLUIDSYNTH or audio.BUILT_IN
    summary: str


# ---------------------------------------------------------------------------------------------------- inputs


def check_options(options: SampleOptions) -> None:
    """Reject bad flag values before anything heavy runs."""
    if options.frames is not None and options.frames < 1:
        raise SampleError(f"--frames {options.frames}: must be at least 1")
    if options.frames is None and not (options.bars is not None and options.bars > 0):
        raise SampleError(f"--bars {options.bars}: must be positive")
    if options.num_samples < 1:
        raise SampleError(f"--num_samples {options.num_samples}: must be at least 1")
    if options.num_samples > 100:
        raise SampleError(f"--num_samples {options.num_samples}: at most 100 (files are numbered XX)")
    try:
        strategy_of(options)
    except ValueError as error:
        raise SampleError(str(error)) from None
    if options.keyboard not in KEYBOARDS:
        raise SampleError(f"--keyboard {options.keyboard}: must be one of {', '.join(KEYBOARDS)}")
    if options.prime_bars < 1:
        raise SampleError(f"--prime_bars {options.prime_bars}: must be at least 1")
    if options.bpm is not None and not 0 < options.bpm <= 1000:
        raise SampleError(f"--bpm {options.bpm}: must be in (0, 1000]")
    if options.prime is not None and not Path(options.prime).is_file():
        raise SampleError(f"--prime {options.prime}: no such file")
    if Path(options.out).exists() and not Path(options.out).is_dir():
        raise SampleError(f"--out {options.out}: exists and is not a folder")


def labels_of(options: SampleOptions, model: ModelConfig) -> dict[str, np.int32]:
    """The key and composer labels `options` ask of `model` (`conditioning.request`); ConditionError otherwise."""
    try:
        return conditioning.request(model, options.key, options.composer)
    except ValueError as error:
        raise ConditionError(str(error)) from None


def strategy_of(options: SampleOptions, cfg: Config | None = None) -> Strategy:
    """The named strategy the flags ask for (see `frame_choice`), at the run `cfg`'s temperature unless told one;
    ValueError, one line, when they disagree."""
    name = options.strategy or ("nucleus" if options.top_p is not None else DEFAULT_STRATEGY.name)
    top_p = options.top_p if options.top_p is not None else DEFAULT_STRATEGY.top_p
    if options.top_p is not None and name != "nucleus":
        raise ValueError(f"--top_p {options.top_p}: only the nucleus strategy has one (--strategy {name})")
    if options.temperature is not None:
        temperature = options.temperature
    else:
        temperature = cfg.sampling.temperature if cfg is not None else DEFAULT_STRATEGY.temperature
    return Strategy(name, temperature, top_p)


def add_strategy_flags(parser: argparse.ArgumentParser) -> None:
    """--strategy, --temperature, --top_p and --keyboard, shared by sample.py and the benchmarks."""
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help=f"how each pitch's state is drawn (default: {DEFAULT_STRATEGY.name}, nucleus when --top_p is given)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        help="of each choice within a frame; 0 = greedy (default: the run's own, saved with its config: "
        f"{DEFAULT_STRATEGY.temperature:g} for the chorale presets, 1 for piano)",
    )
    parser.add_argument("--top_p", type=float, help=f"nucleus mass (default: {DEFAULT_STRATEGY.top_p:g})")
    parser.add_argument(
        "--keyboard",
        choices=KEYBOARDS,
        default=SampleOptions.keyboard,
        help="corpus: only pitches the training data sounds (widened by its transposition for the chorale presets, "
        "not for piano and maestro); all: every pitch",
    )


def strategy_options(args: argparse.Namespace) -> dict:
    """The SampleOptions fields that `add_strategy_flags` set."""
    return {name: getattr(args, name) for name in ("strategy", "temperature", "top_p", "keyboard")}


def load_config(workdir: str, step: int | None = None) -> tuple[Config, int]:
    """The config saved with the workdir's latest checkpoint (or `step`'s), and that step."""
    config_dict, step = load_config_dict(workdir, step)
    return Config.from_dict(config_dict), step


# ---------------------------------------------------------------------------------------------------- outputs


def summary_line(name: str, frames: Frames, seconds: float, renderer: str) -> str:
    silence = stats.silence_summary(frames)
    fraction, longest = silence["silent_fraction"], silence["longest_silence_bars"]
    fraction_text = "n/a" if fraction is None else f"{fraction:.1%}"
    return (
        f"{name}: {len(notes_of(frames))} notes, {seconds:.1f} s, {fraction_text} silent frames, "
        f"longest silence {longest:.2f} bars, audio by the {renderer}"
    )


def _write_sample(frames: Frames, folder: Path, name: str, title: str, prime_frames: int) -> float:
    """sample_XX.mid and .png in `folder`; returns the MIDI's length in seconds."""
    midi = frames_to_midi(frames)
    midi.write(str(folder / f"{name}.mid"))
    pianoroll.draw_piano_roll(frames, folder / f"{name}.png", title=title, prime_frames=prime_frames)
    return float(midi.get_end_time())


def command_line(options: SampleOptions) -> str:
    """The sample.py command that `options` stand for: --workdir and --out, then every flag not at its default."""
    defaults = SampleOptions()
    words = ["python", "sample.py", "--workdir", options.workdir, "--out", options.out]
    for field in dataclasses.fields(SampleOptions):
        value = getattr(options, field.name)
        if field.name in ("workdir", "out") or value == getattr(defaults, field.name):
            continue
        if isinstance(value, bool):
            words += [f"--{field.name}"] if value else []
        elif value is not None:
            words += [f"--{field.name}", str(value)]
    return shlex.join(words)


def _move_into(staging: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for file in sorted(staging.iterdir()):
        os.replace(file, out / file.name)


# ---------------------------------------------------------------------------------------------------- the run


def num_frames_of(options: SampleOptions, steps_per_bar: int) -> int:
    if options.frames is not None:
        return options.frames
    return max(1, round(options.bars * steps_per_bar))


def sample_run(options: SampleOptions, log=print) -> list[Sample]:
    """Restore, sample `num_samples` pieces as one batch, write them into `options.out` (module doc)."""
    from musicgpt_jax import harmonise

    if harmonise.kept_mode(options):  # --melody, --keep, --fill: notes to keep
        if options.key is not None or options.composer is not None:
            raise ConditionError("--key and --composer: not with --melody, --keep or --fill")
        return harmonise.run(options, log)
    check_options(options)
    cfg, step = load_config(options.workdir, options.step)
    labels = labels_of(options, cfg.model)
    grid = grid_of(cfg)
    model: ModelConfig = cfg.model
    primer = None
    if options.prime is not None:
        primer = read_primer(options.prime, grid, options.prime_bars, model.max_len)
        if primer.cut_to_context:
            print(
                f"note: --prime {options.prime}: the last {options.prime_bars} bars exceed the model's "
                f"{model.max_len}-frame context; using its last {len(primer.states)} frames",
                file=sys.stderr,
            )
    num_frames = num_frames_of(options, steps_per_bar(grid, primer))
    params = restore_params(options.workdir, cfg, step)
    strategy = strategy_of(options, cfg)
    allowed = keyboard_of(cfg, grid) if options.keyboard == "corpus" else None
    started = time.perf_counter()
    generated, velocities = generate_pieces(
        params, model, primer, options.num_samples, num_frames, jax.random.key(options.seed), strategy, allowed, labels
    )
    sampling_seconds = time.perf_counter() - started

    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    samples = []
    audio_seconds = 0.0
    try:
        for i, states in enumerate(generated):
            name = f"sample_{i:02d}"
            own = None if velocities is None else velocities[i]
            frames = output_frames(states, grid, primer, options.include_prime, options.bpm, own)
            prime_frames = len(primer.states) if primer is not None and options.include_prime else 0
            title = f"{name} · {options.workdir} step {step} · {strategy.describe()} · seed {options.seed}"
            seconds = _write_sample(frames, staging, name, title, prime_frames)
            started = time.perf_counter()
            renderer = audio.render_wav(staging / f"{name}.mid", staging / f"{name}.wav")
            audio_seconds += time.perf_counter() - started
            summary = summary_line(name, frames, seconds, renderer)
            samples.append(Sample(name, frames, states, prime_frames, renderer, summary))
        provenance = listening_page.Provenance(
            command_line(options), options.workdir, step, cfg.data.dataset, options.prime, options.prime_bars
        )
        listening_page.write_page(staging, samples, provenance)
        _move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for sample in samples:
        log(sample.summary)
    renderers = " and ".join(sorted({sample.renderer for sample in samples}))
    log(
        f"listen: {out / listening_page.PAGE_NAME} (sampling {sampling_seconds:.1f} s; audio {audio_seconds:.1f} s, "
        f"by the {renderers})"
    )
    return samples


INPUT_ERRORS = (SampleError, CheckpointError, MidiDecodeError)  # what the CLI reports as one line
