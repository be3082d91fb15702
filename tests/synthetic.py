"""Music the tests write themselves with pretty_midi, so that a clone without ../shared tests everything but the
shared data itself: a small corpus of short tonal pieces, broken files for `prepare`, and the corpus imported in
the polyphonic benchmark's format.

The pieces are simple but musical, so a model has something to learn: a chord progression in a random major or
minor key, played as four-part chorale chords, as broken chords over a pedalled bass, or under a scale-wise melody;
4/4 or 3/4, a few with a change of time signature, one tempo each. Everything is drawn from a seed: the same seed
writes the same bytes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pretty_midi

from musicgpt_jax.frames import OFF
from musicgpt_jax.midi_io import midi_to_frames

KINDS = ("chorale", "arpeggio", "melody")
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
# Chord roots as scale degrees (0 = tonic), one chord per bar; every progression ends on the dominant or tonic.
PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (5, 3, 0, 4), (0, 1, 4, 0), (0, 4, 5, 3))
RESOLUTION = 480
BENCHMARK_SPQ = 2  # frames per quarter note of the benchmark-format import (eighth notes, as Nottingham's)


def _pitch(tonic: int, scale: tuple[int, ...], degree: int) -> int:
    """MIDI pitch of a scale degree (any integer: 7 is the tonic an octave up) above `tonic`."""
    octave, step = divmod(degree, 7)
    return tonic + 12 * octave + scale[step]


def _bars(num_bars: int, change_at: int | None, rng: np.random.Generator) -> list[tuple[float, int]]:
    """(start in quarter notes, beats of a quarter) of each bar; 4/4, or 3/4 from bar `change_at` on."""
    three = change_at is None and rng.random() < 0.3  # some pieces are in 3/4 throughout
    bars, start = [], 0.0
    for bar in range(num_bars):
        beats = 3 if three or (change_at is not None and bar >= change_at) else 4
        bars.append((start, beats))
        start += beats
    return bars


def write_piece(path: Path, seed: int, kind: str, num_bars: int, change_at: int | None = None) -> Path:
    """One piece of `kind` (see KINDS) with `num_bars` bars, written to `path` as a type-1 MIDI file."""
    rng = np.random.default_rng(seed)
    scale = MAJOR if rng.random() < 0.6 else MINOR
    tonic = 48 + int(rng.integers(0, 12))  # C3..B3
    bpm = float(rng.choice([72, 84, 96, 108, 120, 132]))
    seconds = 60.0 / bpm  # per quarter note
    loudness = int(rng.integers(60, 96))
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    bars = _bars(num_bars, change_at, rng)

    midi = pretty_midi.PrettyMIDI(resolution=RESOLUTION, initial_tempo=bpm)
    midi.time_signature_changes.append(pretty_midi.TimeSignature(bars[0][1], 4, 0.0))
    for (start, beats), (_, previous) in zip(bars[1:], bars[:-1], strict=True):
        if beats != previous:
            midi.time_signature_changes.append(pretty_midi.TimeSignature(beats, 4, start * seconds))
    piano = pretty_midi.Instrument(program=0, name=kind)

    def note(pitch: int, start: float, length: float, accent: int = 0) -> None:
        velocity = int(np.clip(loudness + accent + rng.integers(-8, 9), 20, 127))
        piano.notes.append(pretty_midi.Note(velocity, pitch, start * seconds, (start + length) * seconds))

    melody = 7 + int(rng.integers(0, 5))  # scale degree of the melody, an octave above the chords
    for bar, (start, beats) in enumerate(bars):
        root = progression[bar % len(progression)] if bar < len(bars) - 1 else 0  # end on the tonic
        triad = [root, root + 2, root + 4]
        bass = _pitch(tonic - 12, scale, root)
        if kind == "chorale":  # four parts, a chord on every beat, the soprano moving by step within the chord
            for beat in range(beats):
                soprano = _pitch(tonic, scale, 7 + triad[(beat + bar) % 3])
                for pitch in (bass, _pitch(tonic, scale, triad[1]), _pitch(tonic, scale, triad[2]), soprano):
                    note(pitch, start + beat, 1.0, accent=8 if beat == 0 else 0)
        elif kind == "arpeggio":  # bass held through the bar, the chord broken in eighths, pedal down per bar
            note(bass, start, beats, accent=10)
            pattern = [triad[0], triad[1], triad[2], triad[1] + 7 if beats == 4 else triad[0] + 7]
            for eighth in range(2 * beats):
                note(_pitch(tonic, scale, pattern[eighth % len(pattern)]), start + eighth / 2, 0.5)
            piano.control_changes.append(pretty_midi.ControlChange(64, 127, (start + 0.05) * seconds))
            piano.control_changes.append(pretty_midi.ControlChange(64, 0, (start + beats - 0.05) * seconds))
        else:  # a melody walking the scale in eighths and quarters over a held chord
            for pitch in (bass, _pitch(tonic, scale, triad[0]), _pitch(tonic, scale, triad[2])):
                note(pitch, start, beats)
            position = 0.0
            while position < beats:
                length = min(float(rng.choice([0.5, 0.5, 1.0])), beats - position)
                melody = int(np.clip(melody + rng.choice([-2, -1, -1, 1, 1, 2]), 5, 14))
                note(_pitch(tonic, scale, melody), start + position, length, accent=5)
                position += length
    midi.instruments.append(piano)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.write(str(path))
    return path


def write_corpus(folder: Path, num_pieces: int = 36, seed: int = 0) -> list[Path]:
    """`num_pieces` pieces named `{kind}_{i:02d}.mid`: 8 to 24 bars, every fifth with a change to 3/4."""
    paths = []
    for i in range(num_pieces):
        kind = KINDS[i % len(KINDS)]
        num_bars = 8 + (7 * i) % 17
        change_at = num_bars // 2 if i % 5 == 4 else None
        paths.append(write_piece(folder / f"{kind}_{i:02d}.mid", seed * 1000 + i, kind, num_bars, change_at))
    return paths


def _bytes_of(midi: pretty_midi.PrettyMIDI) -> bytes:
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()


def write_broken_files(folder: Path, valid: Path) -> dict[str, str]:
    """Files `prepare` must skip, each with the reason its manifest gives: {file name: reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    data = valid.read_bytes()
    (folder / "truncated.mid").write_bytes(data[: len(data) // 2])
    (folder / "bad_header.mid").write_bytes(b"MThd" + bytes([0, 0, 0, 6, 0, 7, 0xFF, 0xFF]) + b"garbage" * 4)
    (folder / "not_midi.mid").write_text("These are not the notes you are looking for.\n")
    (folder / "empty.midi").write_bytes(b"")
    silent = pretty_midi.PrettyMIDI(resolution=RESOLUTION)
    silent.instruments.append(pretty_midi.Instrument(program=0))
    (folder / "no_notes.mid").write_bytes(_bytes_of(silent))
    drums = pretty_midi.PrettyMIDI(resolution=RESOLUTION)
    kit = pretty_midi.Instrument(program=0, is_drum=True)
    kit.notes = [pretty_midi.Note(100, 36 + (i % 3) * 2, i * 0.25, i * 0.25 + 0.1) for i in range(16)]
    drums.instruments.append(kit)
    (folder / "drums_only.mid").write_bytes(_bytes_of(drums))  # drums are dropped by default: no notes left
    return {
        "truncated.mid": "unreadable",
        "bad_header.mid": "unreadable",
        "not_midi.mid": "unreadable",
        "empty.midi": "unreadable",
        "no_notes.mid": "no notes",
        "drums_only.mid": "no notes",
    }


def benchmark_roll(path: Path) -> np.ndarray:
    """A MIDI file as the benchmark holds music: (T, 88) 0/1 at BENCHMARK_SPQ frames per quarter, column j =
    MIDI pitch j + 21, sustain only (the codec's onset and hold are both 1)."""
    frames = midi_to_frames(path, steps_per_quarter=BENCHMARK_SPQ)
    return (frames.states[:, 21:109] != OFF).astype(np.uint8)


def write_benchmark_json(paths: list[Path], target: Path) -> Path:
    """The pieces in the benchmark's .json format ({"train", "valid", "test"}: pieces of frames of MIDI
    pitches): every sixth piece in valid, the one after it in test, the rest in train, in the given order."""
    splits: dict[str, list] = {"train": [], "valid": [], "test": []}
    for i, path in enumerate(paths):
        roll = benchmark_roll(path)
        frames = [[int(p) + 21 for p in np.flatnonzero(frame)] for frame in roll]
        splits["valid" if i % 6 == 4 else "test" if i % 6 == 5 else "train"].append(frames)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(splits))
    return target


def write_long_file(path: Path, num_chords: int = 12_000) -> Path:
    """A long type-0 file written byte by byte (fast to write, slow to convert): a C major arpeggiated chord
    every sixteenth note, `num_chords` of them."""
    events = bytearray()
    for i in range(num_chords):
        pitches = [_pitch(48 + 7 * (i % 3), MAJOR, d) for d in (0, 2, 4)]
        for pitch in pitches:
            events += bytes([0, 0x90, pitch, 64 + i % 32])  # delta 0, note on
        for j, pitch in enumerate(pitches):
            events += bytes([120 if j == 0 else 0, 0x80, pitch, 0])  # a sixteenth (120 ticks) later, note off
    events += bytes([0, 0xFF, 0x2F, 0])  # end of track
    header = b"MThd" + bytes([0, 0, 0, 6, 0, 0, 0, 1]) + RESOLUTION.to_bytes(2, "big")  # type 0, 1 track
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + b"MTrk" + len(events).to_bytes(4, "big") + bytes(events))
    return path
