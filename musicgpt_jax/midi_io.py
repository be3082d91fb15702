"""MIDI ⇄ frames: reading MIDI files into ``frames.Frames`` and writing them back (pretty_midi).

The grid comes from MIDI *ticks*, not seconds: step = round(tick * steps_per_quarter / resolution), halves
rounding up, so a tempo change does not bend it. The tempo map and the time signatures are kept in steps, and
``frames_to_midi`` writes them back. Reading gives 128 pitches and 3 states (``frames`` says what they mean): a
note shorter than a step still gets its ONSET frame, and an ONSET cell holds the loudest velocity of its notes.

Reading merges all non-drum instruments into one roll and by default applies the sustain pedal (CC64 >= 64 is
down) per pretty_midi instrument (program, channel, track): a note released under the pedal sounds on until
the pedal lifts or its pitch is struck again. On the ten MAESTRO performances in the shared test set this
turns 21% silent frames into 8%. Reading is canonical, so frames → MIDI → frames gives the same frames; tempos
are kept as whole microseconds per quarter note, as MIDI stores them, so they survive that trip exactly.

A file that cannot be read raises ``MidiDecodeError`` (a ``ValueError``) whose message is one line,
"<path>: <reason>". A file without notes is not an error: its frames have ``T = 0``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pretty_midi

from musicgpt_jax.frames import (
    DEFAULT_TEMPO,
    DEFAULT_TIME_SIGNATURE,
    DEFAULT_VELOCITY,
    HOLD,
    OFF,
    ONSET,
    Frames,
    note_arrays,
)

NUM_PITCHES = 128
MAX_STEPS = 1_000_000  # 35 hours of 32nd notes at 120 bpm; a longer grid means a corrupt file, not music
SUSTAIN_CC = 64
MIDI_SUFFIXES = (".mid", ".midi", ".kar")  # what a folder of MIDI files is searched for, in any case


class MidiDecodeError(ValueError):
    """A MIDI file that cannot be read; ``str(e)`` is one line: "<path>: <reason>"."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, " ".join(str(reason).split())
        super().__init__(f"{path}: {self.reason}")


# ---------------------------------------------------------------------------------------------------- reading


def midi_to_frames(
    source: str | os.PathLike | bytes | pretty_midi.PrettyMIDI,
    *,
    steps_per_quarter: int = 8,
    sustain_pedal: bool = True,
    include_drums: bool = False,
    name: str | None = None,
) -> Frames:
    """Reads a MIDI file (path, bytes or parsed ``PrettyMIDI``) into 128-pitch onset/hold frames.

    ``name`` labels the source in error messages (default: the path, "<bytes>" or "<PrettyMIDI>").
    """
    if steps_per_quarter < 1:
        raise ValueError(f"steps_per_quarter must be at least 1, not {steps_per_quarter}")
    pm, label = _load(source, name)
    res, spq = pm.resolution, steps_per_quarter
    segments = _tempo_segments(pm._tick_scales)  # pretty_midi keeps its tick-level tempo map only here
    to_step = lambda ticks: (2 * np.asarray(ticks, np.int64) * spq + res) // (2 * res)  # round half up

    instruments = [i for i in pm.instruments if (include_drums or not i.is_drum) and i.notes]
    notes = [_note_ticks(i, segments) for i in instruments]
    if sustain_pedal and notes:
        last_tick = max((int(ends.max()) for _, ends, _, _ in notes if len(ends)), default=0)
        notes = [
            (starts, _apply_pedal(starts, ends, pitches, _pedal_events(i, segments), last_tick), pitches, vel)
            for i, (starts, ends, pitches, vel) in zip(instruments, notes, strict=True)
        ]
    if notes:
        starts, ends, pitches, vels = (np.concatenate(parts) for parts in zip(*notes, strict=True))
    else:
        starts = ends = pitches = vels = np.zeros(0, np.int64)
    onsets = to_step(starts)
    offsets = np.maximum(to_step(ends), onsets + 1)  # a note shorter than a step keeps its onset frame

    num_frames = int(offsets.max()) if len(offsets) else 0
    if num_frames > MAX_STEPS:
        raise MidiDecodeError(label, f"too long: {num_frames} steps (limit {MAX_STEPS})")
    states, velocities = _paint(onsets, offsets, pitches, vels, num_frames)

    tempo_ticks = np.array([tick for tick, _ in pm._tick_scales], np.int64)
    microseconds = np.rint(segments[2] * res * 1e6).astype(np.int64)  # per quarter note, as MIDI stores it
    tempos = [(s, 6e7 / us) for s, us in _changes(to_step(tempo_ticks), microseconds[:, None])]
    signatures = pm.time_signature_changes
    sig_ticks = _seconds_to_ticks(np.array([ts.time for ts in signatures]), segments)
    sig_values = np.array([(ts.numerator, ts.denominator) for ts in signatures], np.int64).reshape(-1, 2)
    time_signatures = _changes(to_step(sig_ticks), sig_values)
    if not time_signatures or time_signatures[0][0] > 0:
        time_signatures.insert(0, (0, *DEFAULT_TIME_SIGNATURE))  # MIDI's default, which a writer would add anyway
    return Frames(
        states,
        velocities,
        steps_per_quarter=spq,
        tempos=tuple(tempos),
        time_signatures=tuple(time_signatures),
    )


def read_midi(source: str | os.PathLike | bytes, name: str | None = None) -> pretty_midi.PrettyMIDI:
    """A MIDI file parsed by pretty_midi, with ``midi_to_frames``'s checks (``MidiDecodeError`` when unreadable)."""
    return _load(source, name)[0]


def _load(source: str | os.PathLike | bytes | pretty_midi.PrettyMIDI, name: str | None):
    """Parses ``source``; every failure becomes a ``MidiDecodeError``."""
    if isinstance(source, pretty_midi.PrettyMIDI):
        label = name or "<PrettyMIDI>"
        pm = source
    else:
        is_bytes = isinstance(source, bytes | bytearray | memoryview)
        label = name or ("<bytes>" if is_bytes else os.fspath(source))
        try:
            data = bytes(source) if is_bytes else Path(source).read_bytes()
        except OSError as e:
            raise MidiDecodeError(label, f"cannot read file ({e.strerror or e})") from e
        _check_header(data, label)
        try:
            with warnings.catch_warnings():
                # e.g. "Tempo ... on non-zero tracks": such tempos are lost, but the grid is in ticks anyway.
                warnings.simplefilter("ignore")
                pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
        except Exception as e:  # mido and pretty_midi raise OSError, EOFError, ValueError, KeyError, ...
            message = str(e).strip() or "unexpected end of data (truncated file or wrong chunk length)"
            raise MidiDecodeError(label, f"unreadable MIDI: {type(e).__name__}: {message}") from e
    if not pm.resolution > 0:
        raise MidiDecodeError(label, f"bad resolution: {pm.resolution} ticks per quarter note")
    return pm, label


def _check_header(data: bytes, label: str) -> None:
    """Rejects what mido would misread rather than refuse: no header, SMPTE or zero time division."""
    if not data:
        raise MidiDecodeError(label, "empty file (0 bytes)")
    if not data.startswith(b"MThd"):
        raise MidiDecodeError(label, "not a MIDI file (MThd not found)")
    if len(data) < 14:
        raise MidiDecodeError(label, f"truncated header ({len(data)} bytes)")
    division = int.from_bytes(data[12:14], "big")
    if division & 0x8000:
        raise MidiDecodeError(label, f"SMPTE time division (0x{division:04x}) is not supported")
    if division == 0:
        raise MidiDecodeError(label, "bad resolution: 0 ticks per quarter note")


def _tempo_segments(tick_scales: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start tick, start second, seconds per tick) of each constant-tempo segment."""
    ticks = np.array([tick for tick, _ in tick_scales], np.int64)
    scales = np.array([scale for _, scale in tick_scales], np.float64)
    seconds = np.concatenate([[0.0], np.cumsum(np.diff(ticks) * scales[:-1])])
    return ticks, seconds, scales


def _seconds_to_ticks(seconds: np.ndarray, segments: tuple[np.ndarray, ...]) -> np.ndarray:
    """Vectorised ``PrettyMIDI.time_to_tick``: exact for times that came from ticks."""
    ticks, starts, scales = segments
    k = np.maximum(np.searchsorted(starts, seconds, side="right") - 1, 0)
    return np.maximum(np.rint(ticks[k] + (seconds - starts[k]) / scales[k]), 0).astype(np.int64)


def _ticks_to_seconds(ticks: np.ndarray, segments: tuple[np.ndarray, ...]) -> np.ndarray:
    starts, seconds, scales = segments
    k = np.maximum(np.searchsorted(starts, ticks, side="right") - 1, 0)
    return seconds[k] + (ticks - starts[k]) * scales[k]


def _note_ticks(instrument: pretty_midi.Instrument, segments) -> tuple[np.ndarray, ...]:
    """(start ticks, end ticks, pitches, velocities) of an instrument's notes in 0..127."""
    notes = [n for n in instrument.notes if 0 <= n.pitch < NUM_PITCHES]
    times = np.array([(n.start, n.end) for n in notes], np.float64).reshape(-1, 2)
    starts, ends = _seconds_to_ticks(times[:, 0], segments), _seconds_to_ticks(times[:, 1], segments)
    pitches = np.array([n.pitch for n in notes], np.int64)
    velocities = np.clip([n.velocity for n in notes], 0, 127).astype(np.int64)
    return starts, np.maximum(ends, starts), pitches, velocities


def _pedal_events(instrument: pretty_midi.Instrument, segments) -> tuple[np.ndarray, np.ndarray]:
    """(ticks, pedal down after the event) of the instrument's CC64 events, in time order."""
    events = [(c.time, c.value >= 64) for c in instrument.control_changes if c.number == SUSTAIN_CC]
    times = np.array([t for t, _ in events], np.float64)
    down = np.array([d for _, d in events], bool)
    order = np.argsort(times, kind="stable")
    return _seconds_to_ticks(times[order], segments), down[order]


def _apply_pedal(
    starts: np.ndarray,
    ends: np.ndarray,
    pitches: np.ndarray,
    pedal: tuple[np.ndarray, np.ndarray],
    last_tick: int,
) -> np.ndarray:
    """End ticks with the pedal applied: a note released while the pedal is down sounds until it lifts
    (or ``last_tick`` if it never does), or until its pitch is struck again, whichever comes first."""
    pedal_ticks, down = pedal
    if not down.any():
        return ends
    k = np.searchsorted(pedal_ticks, ends, side="right") - 1  # the last pedal event at or before the release
    held = (k >= 0) & down[np.maximum(k, 0)]
    never = np.iinfo(np.int64).max
    lifts = np.append(pedal_ticks[~down], never)
    lift = lifts[np.searchsorted(lifts, ends, side="right")]
    lift[lift == never] = last_tick
    # The next onset of the same pitch strictly after this note's onset, found in one sorted array of keys.
    keys = pitches * (1 << 40) + starts
    ordered = np.sort(keys)
    i = np.searchsorted(ordered, keys, side="right")
    following = ordered[np.minimum(i, len(ordered) - 1)]
    same_pitch = (i < len(ordered)) & (following >> 40 == pitches)
    restrike = np.where(same_pitch, following & ((1 << 40) - 1), never)
    return np.where(held, np.maximum(ends, np.minimum(lift, restrike)), ends)


def _paint(
    onsets: np.ndarray, offsets: np.ndarray, pitches: np.ndarray, velocities: np.ndarray, num_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (T, 128) states and velocities of notes [onset, offset) in steps. Overlapping notes of one pitch
    become one sounding run, split at every onset."""
    # Pitch-major rows of T + 1 cells: +1 at a note's first HOLD, -1 after its last. Each row sums to zero,
    # so one flat cumsum (much faster than a 2-D one) counts the notes holding each cell.
    width = num_frames + 1
    edges = np.zeros(NUM_PITCHES * width, np.int32)
    np.add.at(edges, pitches * width + onsets + 1, 1)
    np.add.at(edges, pitches * width + offsets, -1)
    held = np.cumsum(edges, dtype=np.int32).reshape(NUM_PITCHES, width)[:, :num_frames] > 0
    states = np.ascontiguousarray(np.where(held.T, HOLD, OFF).astype(np.uint8))
    states[onsets, pitches] = ONSET
    vels = np.zeros((num_frames, NUM_PITCHES), np.uint8)
    np.maximum.at(vels, (onsets, pitches), velocities.astype(np.uint8))
    return states, vels


def _changes(steps: np.ndarray, values: np.ndarray) -> list[tuple]:
    """(step, *value) metadata changes: the last of several on one step wins; repeated values are dropped."""
    kept: list[tuple] = []
    for step, value in zip(steps.tolist(), values.tolist(), strict=True):
        if kept and kept[-1][0] == step:
            kept.pop()
        if not kept or list(kept[-1][1:]) != value:
            kept.append((step, *value))
    return kept


# ---------------------------------------------------------------------------------------------------- writing


def frames_to_midi(
    frames: Frames, *, program: int = 0, default_velocity: int = DEFAULT_VELOCITY
) -> pretty_midi.PrettyMIDI:
    """One piano (``program``) playing the notes of ``frames``, with its tempo map and time signatures.

    Resolution: 480 ticks per quarter when ``steps_per_quarter`` divides it (else the nearest multiple), so
    every step is a whole number of ticks. Notes without a velocity get ``default_velocity``.
    """
    spq = frames.steps_per_quarter
    resolution = spq * max(1, round(480 / spq))
    ticks_per_step = resolution // spq
    pitches, onsets, offsets, velocities = note_arrays(frames)
    if len(pitches) and (pitches.min() < 0 or pitches.max() >= NUM_PITCHES):
        raise ValueError(f"pitches {pitches.min()}..{pitches.max()} are outside MIDI's 0..127")
    velocities = np.where(velocities > 0, velocities, default_velocity).clip(1, 127)

    pm = pretty_midi.PrettyMIDI(resolution=resolution)
    # pretty_midi has no public way to set a tempo map; its writer truncates 6e7 / bpm to whole microseconds,
    # so a quarter of a microsecond is added to make it write exactly the tempo that was read.
    tempos = list(frames.tempos)
    if not tempos or tempos[0][0] > 0:
        tempos.insert(0, (0, DEFAULT_TEMPO))  # MIDI's default before the first tempo event
    steps = [step for step, _ in tempos]
    microseconds = [round(6e7 / qpm) for _, qpm in tempos]
    pm._tick_scales = [
        (step * ticks_per_step, (us + 0.25) * 1e-6 / resolution) for step, us in zip(steps, microseconds, strict=True)
    ]
    sig_steps = [step for step, _, _ in frames.time_signatures]
    last_step = max([int(offsets.max()) if len(offsets) else 0, *steps, *sig_steps])
    pm._update_tick_to_time(last_step * ticks_per_step + 1)
    segments = _tempo_segments(pm._tick_scales)
    seconds = lambda steps: _ticks_to_seconds(np.asarray(steps, np.int64) * ticks_per_step, segments)

    piano = pretty_midi.Instrument(program=program)
    columns = (pitches.tolist(), velocities.tolist(), seconds(onsets).tolist(), seconds(offsets).tolist())
    piano.notes = [pretty_midi.Note(velocity=v, pitch=p, start=s, end=e) for p, v, s, e in zip(*columns, strict=True)]
    pm.instruments.append(piano)
    pm.time_signature_changes = [
        pretty_midi.TimeSignature(n, d, t)
        for (_, n, d), t in zip(frames.time_signatures, seconds(sig_steps).tolist(), strict=True)
    ]
    return pm


def write_midi(frames: Frames, path: str | os.PathLike, **kw) -> None:
    """Writes ``frames_to_midi(frames, **kw)`` to ``path``."""
    frames_to_midi(frames, **kw).write(os.fspath(path))


def find_midi_files(midi_dir: Path) -> list[Path]:
    """Every .mid/.midi/.kar file (any case) under `midi_dir`, sorted by relative path.

    Linked folders are followed (each real folder visited once, so a link cycle cannot loop).
    """
    found, seen = [], set()
    for folder, subfolders, files in os.walk(midi_dir, followlinks=True):
        if os.path.realpath(folder) in seen:
            subfolders.clear()
            continue
        seen.add(os.path.realpath(folder))
        found += [Path(folder) / f for f in files if Path(f).suffix.lower() in MIDI_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(midi_dir).as_posix())
