"""Harmonise a melody, fill a gap, keep any notes: what sample.py's --melody, --keep and --fill do.

- `--melody FILE` (or `--keep FILE`): every note of FILE is kept, pitch, onset, length and velocity, and the model
  writes the rest, for FILE's length or `--bars`, in FILE's tempo and meter; `--keep FILE --prime P` keeps FILE's
  notes after P's last `--prime_bars` bars.
- `--prime FILE --fill A:B`: everything outside bars A..B (1-based, inclusive) of FILE is kept; the model rewrites
  bars A..B after the bars before them, seeing the bars after them through its `given` input.

`run(options)` reads the files into a `Request` (the primer, the kept cells and how many frames after the written
ones are only seen), samples with `keep.generate_kept` and writes MIDI, piano roll (kept notes in orange), audio
and the listening page as `compose` does for a plain run.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from musicgpt_jax import audio, compose, dynamics, generation, keep, listening_page, pianoroll
from musicgpt_jax.compose import SampleOptions
from musicgpt_jax.configs import ModelConfig
from musicgpt_jax.frames import DEFAULT_VELOCITY, OFF, Frames, frames_before, note_starts, restart_held
from musicgpt_jax.generation import Grid, SampleError
from musicgpt_jax.midi_io import frames_to_midi, midi_to_frames
from musicgpt_jax.saved_run import restore_params

MAX_CONTEXTS = 16  # a kept piece may be at most this many context windows long (sampling time grows with it)


@dataclasses.dataclass(frozen=True)
class Request:
    """What to write: after `primer` (Tp, P), the frames `kept_states` (T, P) describes, kept where `kept_mask`;
    the last `after` of them are only seen (a gap's right side). Velocities are MIDI velocities at onsets."""

    primer: np.ndarray
    primer_velocities: np.ndarray
    kept_states: np.ndarray
    kept_mask: np.ndarray
    kept_velocities: np.ndarray
    after: int
    tempos: tuple[tuple[int, float], ...]
    time_signatures: tuple[tuple[int, int, int], ...]
    description: str

    @property
    def num_frames(self) -> int:
        """How many frames the model writes."""
        return self.kept_states.shape[0] - self.after


def kept_mode(options: SampleOptions) -> bool:
    """Whether `options` ask for kept notes (this module) rather than a plain continuation."""
    return bool(options.melody or options.keep or options.fill)


def check_flags(options: SampleOptions) -> None:
    """One-line SampleError for flags that do not go together or name no file."""
    given = [flag for flag in ("melody", "keep", "fill") if getattr(options, flag)]
    if len(given) > 1:
        raise SampleError(f"--{given[0]} and --{given[1]}: give one of --melody, --keep, --fill")
    if options.fill and not options.prime:
        raise SampleError(f"--fill {options.fill}: needs --prime FILE, the piece whose bars it rewrites")
    if options.melody and options.prime:
        raise SampleError("--melody and --prime: a melody is harmonised from its start (use --keep with --prime)")
    for flag in ("melody", "keep"):
        path = getattr(options, flag)
        if path is not None and not Path(path).is_file():
            raise SampleError(f"--{flag} {path}: no such file")
    if options.frames is not None and options.frames < 1:
        raise SampleError(f"--frames {options.frames}: must be at least 1")
    if options.bars is not None and options.bars < 1:
        raise SampleError(f"--bars {options.bars}: must be positive")


def parse_gap(text: str) -> tuple[int, int]:
    """ "A:B" -> (A, B), bars counted from 1, A <= B."""
    first, sep, last = text.partition(":")
    try:
        a, b = int(first), int(last)
    except ValueError:
        a = b = 0
    if not sep or a < 1 or b < a:
        raise SampleError(f"--fill {text}: expected A:B, bars counted from 1 with A <= B (e.g. 5:6)")
    return a, b


def read_piece(path: str, flag: str, grid: Grid) -> Frames:
    """A MIDI file as codec frames, refusing one with no notes, or with notes off the model's keyboard."""
    frames = midi_to_frames(path, steps_per_quarter=grid.steps_per_quarter)
    sounding = np.flatnonzero((frames.states != OFF).any(axis=0))
    if not sounding.size:
        raise SampleError(f"--{flag} {path}: no notes")
    highest = grid.lowest_pitch + grid.num_pitches - 1
    if sounding[0] < grid.lowest_pitch or sounding[-1] > highest:
        raise SampleError(
            f"--{flag} {path}: notes from MIDI {sounding[0]} to {sounding[-1]}, outside the model's "
            f"MIDI {grid.lowest_pitch}..{highest}"
        )
    return frames


def _length_check(flag: str, path: str, frames: int, model: ModelConfig) -> None:
    limit = MAX_CONTEXTS * model.max_len
    if frames > limit:
        raise SampleError(
            f"--{flag} {path}: {frames} frames, longer than the {limit} ({MAX_CONTEXTS} contexts of "
            f"{model.max_len} frames) this model writes in one run"
        )


def _resized(array: np.ndarray, length: int) -> np.ndarray:
    """`array` cut or padded with zeros (OFF, not kept) to `length` frames."""
    out = np.zeros((length, *array.shape[1:]), array.dtype)
    out[: min(length, len(array))] = array[:length]
    return out


def keep_request(options: SampleOptions, grid: Grid, model: ModelConfig) -> Request:
    """--melody FILE / --keep FILE [--prime P]: FILE's notes kept, the rest written."""
    flag = "melody" if options.melody else "keep"
    path = options.melody or options.keep
    frames = read_piece(path, flag, grid)
    states, velocities = generation.to_grid(frames, grid)
    primer = None
    if options.prime:
        primer = generation.read_primer(options.prime, grid, options.prime_bars, model.max_len)
    meter = frames.meter
    if options.frames is not None:
        length = options.frames
    elif options.bars is not None:
        length = options.bars * meter.steps_per_bar(0)
    else:
        length = len(states)
    _length_check(flag, path, length, model)
    states, velocities = _resized(states, length), _resized(velocities, length)
    empty = np.zeros((0, grid.num_pitches), np.int32)
    return Request(
        primer=empty if primer is None else primer.states,
        primer_velocities=empty if primer is None else primer.velocities.astype(np.int32),
        kept_states=states,
        kept_mask=states != OFF,
        kept_velocities=velocities.astype(np.int32),
        after=0,
        tempos=frames.tempos if primer is None else primer.tempos,
        time_signatures=frames.time_signatures if primer is None else primer.time_signatures,
        description=f"The notes of {path} are kept as given (orange in the piano roll); the model wrote the rest.",
    )


def fill_request(options: SampleOptions, grid: Grid, model: ModelConfig) -> Request:
    """--prime FILE --fill A:B: every cell of FILE outside bars A..B kept, bars A..B written."""
    first, last = parse_gap(options.fill)
    frames = read_piece(options.prime, "prime", grid)
    _length_check("prime", options.prime, frames.num_frames, model)
    lines = frames.meter.bar_lines(frames.num_frames)
    if lines[-1] < frames.num_frames:
        lines.append(frames.num_frames)
    bars = len(lines) - 1
    if last > bars:
        raise SampleError(f"--fill {options.fill}: outside the piece, {options.prime} has {bars} bars")
    begin, end = lines[first - 1], lines[last]
    states, velocities = generation.to_grid(frames, grid)
    mask = np.ones(states.shape, bool)
    mask[begin:end] = False
    return Request(
        primer=states[:begin],
        primer_velocities=velocities[:begin].astype(np.int32),
        kept_states=states[begin:],
        kept_mask=mask[begin:],
        kept_velocities=velocities[begin:].astype(np.int32),
        after=states.shape[0] - end,
        tempos=frames.tempos,
        time_signatures=frames.time_signatures,
        description=(
            f"Bars {first}-{last} of {options.prime} are the model's (blue in the piano roll); every other note "
            "is kept as given (orange)."
        ),
    )


def request_of(options: SampleOptions, grid: Grid, model: ModelConfig) -> Request:
    return fill_request(options, grid, model) if options.fill else keep_request(options, grid, model)


def piece_of(request: Request, written: np.ndarray, written_velocities: np.ndarray | None, grid: Grid) -> Frames:
    """The whole piece: primer, the written frames (their kept cells as given), the frames after them."""
    kept = keep.kept_grid(request.kept_states, request.kept_mask, len(request.primer) > 0)
    states = np.concatenate([request.primer, written, kept[request.num_frames :]]).astype(np.int32)
    if grid.num_states == 3:
        states = restart_held(states, frames_before(states))
    own = np.zeros(written.shape, np.int32) if written_velocities is None else written_velocities
    middle = np.where(request.kept_mask[: request.num_frames], request.kept_velocities[: request.num_frames], own)
    velocities = np.concatenate([request.primer_velocities, middle, request.kept_velocities[request.num_frames :]])
    velocities = np.where(velocities > 0, velocities, DEFAULT_VELOCITY)
    velocities = np.where(note_starts(states, grid.num_states), velocities, 0)
    return Frames(
        states,
        velocities,
        steps_per_quarter=grid.steps_per_quarter,
        lowest_pitch=grid.lowest_pitch,
        num_states=grid.num_states,
        tempos=request.tempos,
        time_signatures=request.time_signatures,
    )


def kept_cells(request: Request) -> np.ndarray:
    """(piece frames, P) bool: the cells of the piece that were given (the primer's included)."""
    return np.concatenate([np.ones(request.primer.shape, bool), request.kept_mask])


def sample_kept(params, cfg, request: Request, options: SampleOptions, allowed) -> tuple[np.ndarray, np.ndarray | None]:
    """`num_samples` written parts (B, frames, P) and, with dynamics, their MIDI velocities."""
    model = cfg.model
    batch = options.num_samples

    def rows(array: np.ndarray) -> np.ndarray:
        return np.broadcast_to(array, (batch, *array.shape))

    extra = {}
    if model.velocity_bins:
        extra["primer_velocities"] = rows(keep.velocity_bins_of(request.primer, request.primer_velocities, model))
        kept_bins = keep.velocity_bins_of(request.kept_states, request.kept_velocities, model)
        extra["kept_velocities"] = rows(kept_bins)
    states, bins = keep.generate_kept(
        params,
        model,
        rows(request.primer),
        rows(request.kept_states),
        rows(request.kept_mask),
        jax.random.key(options.seed),
        compose.strategy_of(options, cfg),
        allowed,
        after=request.after,
        **extra,
    )
    velocities = None if bins is None else dynamics.bin_to_velocity(bins, model.velocity_bins)
    return states, velocities


def run(options: SampleOptions, log=print) -> list[compose.Sample]:
    """Sample with kept notes and write the files (module doc)."""
    check_flags(options)
    compose.check_options(dataclasses.replace(options, bars=options.bars or 1))  # the flags plain sampling has too
    cfg, step = compose.load_config(options.workdir, options.step)
    grid = generation.grid_of(cfg)
    request = request_of(options, grid, cfg.model)
    if request.num_frames < 1:
        raise SampleError(f"--fill {options.fill}: nothing to write")
    if not cfg.model.given_lookahead:
        print(
            f"note: {options.workdir} was trained without given notes (model.given_lookahead=0): the kept notes are "
            "clamped, but the model does not see those ahead of the frame it writes"
        )
    params = restore_params(options.workdir, cfg, step)
    allowed = generation.keyboard_of(cfg, grid) if options.keyboard == "corpus" else None
    started = time.perf_counter()
    written, velocities = sample_kept(params, cfg, request, options, allowed)
    sampling_seconds = time.perf_counter() - started
    samples = _write_all(options, request, written, velocities, grid, cfg, step)
    for sample in samples:
        log(sample.summary)
    out = Path(options.out)
    log(f"listen: {out / listening_page.PAGE_NAME} (sampling {sampling_seconds:.1f} s)")
    return samples


def _write_all(options, request, written, velocities, grid, cfg, step) -> list[compose.Sample]:
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    strategy = compose.strategy_of(options, cfg)
    samples = []
    try:
        for i, states in enumerate(written):
            name = f"sample_{i:02d}"
            frames = piece_of(request, states, None if velocities is None else velocities[i], grid)
            midi = frames_to_midi(frames)
            midi.write(str(staging / f"{name}.mid"))
            title = f"{name} · {options.workdir} step {step} · {strategy.describe()} · seed {options.seed}"
            pianoroll.draw_piano_roll(frames, staging / f"{name}.png", title=title, kept=kept_cells(request))
            renderer = audio.render_wav(staging / f"{name}.mid", staging / f"{name}.wav")
            summary = compose.summary_line(name, frames, float(midi.get_end_time()), renderer)
            samples.append(compose.Sample(name, frames, states, 0, renderer, summary))
        provenance = listening_page.Provenance(
            compose.command_line(options), options.workdir, step, cfg.data.dataset, kept=request.description
        )
        listening_page.write_page(staging, samples, provenance)
        compose._move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return samples
