"""A sample as sound: every MIDI file gets a WAV beside it.

FluidSynth renders it when it and a piano (General MIDI) soundfont are installed (`apt-get install fluidsynth
fluid-soundfont-gm`; on macOS `brew install fluid-synth` and a .sf2 in Homebrew's share/soundfonts; or
`SOUNDFONT=/path/to/font.sf2`); otherwise a small piano-like synthesiser in numpy does:
each note a few slightly stretched harmonics under a struck, decaying envelope, loudness from its velocity, a short
release after its note-off, the piece normalised to one peak and written as 16-bit mono PCM. `render_wav` returns
which of the two made the file (`FLUIDSYNTH` or `BUILT_IN`), for the sample's log line and listening page.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pretty_midi

FLUIDSYNTH = "FluidSynth"
BUILT_IN = "built-in synth"
# Debian/Ubuntu and Fedora/Arch packages, then Homebrew's prefixes (Apple silicon, Intel), where fluid-synth's
# own default is share/soundfonts/default.sf2.
SOUNDFONTS = tuple(
    f"{prefix}/{name}"
    for prefix in ("/usr/share", "/opt/homebrew/share", "/usr/local/share")
    for name in (
        "sounds/sf2/FluidR3_GM.sf2",
        "soundfonts/FluidR3_GM.sf2",
        "soundfonts/default.sf2",
        "sounds/sf2/default-GM.sf2",
    )
)
FLUIDSYNTH_RATE = 44100
SAMPLE_RATE = 22050  # the built-in synth's: its highest partials stay below 11 kHz
RELEASE_SECONDS = 0.25  # how long a note rings on after its note-off (and the piece after its last note)
HARMONICS = (1.0, 0.45, 0.25, 0.12, 0.07, 0.04)  # amplitude of partial k+1, at velocity 127
INHARMONICITY = 2e-4  # a piano string's stretched partials: f_k = k f sqrt(1 + B k^2)
ATTACK_SECONDS = 0.004
PEAK = 0.89  # the loudest sample of a piece after normalising (about -1 dBFS)


def soundfont() -> str | None:
    """The `SOUNDFONT` variable's file if it exists, else the first installed of `SOUNDFONTS`; None if none."""
    candidates = [os.environ.get("SOUNDFONT", ""), *SOUNDFONTS]
    return next((c for c in candidates if c and os.path.isfile(c)), None)


_told_no_soundfont = False


def no_soundfont_line() -> str:
    """The one line shown when fluidsynth is installed but no soundfont is found."""
    return (
        "audio: fluidsynth is installed but no soundfont was found (set SOUNDFONT=/path/to/piano.sf2, or install "
        "one at /usr/share/sounds/sf2/FluidR3_GM.sf2 or Homebrew's share/soundfonts/default.sf2); "
        "the built-in synth writes the WAVs"
    )


def render_with_fluidsynth(midi_path: Path, wav_path: Path) -> bool:
    """Render with fluidsynth when it and a soundfont are installed; False if not or if it fails.

    Without fluidsynth this is silent (the sample's line names the renderer); with fluidsynth but no soundfont it
    says so once per process, on stderr, since the user evidently wanted FluidSynth.
    """
    global _told_no_soundfont
    fluidsynth, font = shutil.which("fluidsynth"), soundfont()
    if fluidsynth is not None and font is None and not _told_no_soundfont:
        print(no_soundfont_line(), file=sys.stderr)
        _told_no_soundfont = True
    if fluidsynth is None or font is None:
        return False
    command = [fluidsynth, "-ni", "-F", str(wav_path), "-r", str(FLUIDSYNTH_RATE), font, str(midi_path)]
    result = subprocess.run(command, capture_output=True, timeout=600, check=False)
    return result.returncode == 0 and wav_path.is_file() and wav_path.stat().st_size > 0


def _decay_seconds(pitch: int) -> float:
    """Seconds for the fundamental to fall to 1/e: long in the bass, short in the treble, as a piano's strings."""
    frequency = 440.0 * 2.0 ** ((pitch - 69) / 12)
    return float(np.clip(2.5 * (261.6 / frequency) ** 0.6, 0.25, 8.0))


def _partials(pitch: int, length: int, sample_rate: int) -> np.ndarray:
    """(len(HARMONICS), length) float32: each partial of `pitch` struck at full strength, decaying on its own."""
    frequency = 440.0 * 2.0 ** ((pitch - 69) / 12)
    t = np.arange(length) / sample_rate
    rows = np.zeros((len(HARMONICS), length), np.float32)
    for k, amplitude in enumerate(HARMONICS, start=1):
        partial = k * frequency * np.sqrt(1.0 + INHARMONICITY * k * k)
        if partial >= sample_rate / 2:
            break
        rows[k - 1] = amplitude * np.exp(-t * k**0.7 / _decay_seconds(pitch)) * np.sin(2 * np.pi * partial * t)
    return rows


def synthesize(midi: pretty_midi.PrettyMIDI, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) float32 in [-1, 1]: the piece to its last note-off plus the release; normalised unless silent.

    A note is its pitch's partials (computed once per pitch), weighted by how hard it was struck (louder and
    brighter with velocity), under a 4 ms attack, cut off 6 time constants after its strike or faded out over
    RELEASE_SECONDS after its note-off, whichever comes first.
    """
    notes = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes if n.end > n.start]
    end = max((n.end for n in notes), default=0.0)
    audio = np.zeros(round((end + RELEASE_SECONDS) * sample_rate) + 1, np.float32)
    attack = np.minimum(1.0, np.arange(1, round(ATTACK_SECONDS * sample_rate) + 1) / (ATTACK_SECONDS * sample_rate))
    release = np.exp(-np.arange(round(RELEASE_SECONDS * sample_rate)) * (5.0 / (RELEASE_SECONDS * sample_rate)))
    by_pitch: dict[int, list[pretty_midi.Note]] = {}
    for note in notes:
        by_pitch.setdefault(note.pitch, []).append(note)
    for pitch, group in by_pitch.items():
        limit = round(6.0 * _decay_seconds(pitch) * sample_rate)
        spans = [(round(n.start * sample_rate), round((n.end - n.start) * sample_rate)) for n in group]
        lengths = [min(held + len(release), limit, len(audio) - start) for start, held in spans]
        partials = _partials(pitch, max(lengths), sample_rate)
        for note, (start, held), length in zip(group, spans, lengths, strict=True):
            strength = note.velocity / 127.0
            weights = (strength**1.6) * (0.5 + 0.5 * strength) ** np.arange(len(HARMONICS), dtype=np.float32)
            sound = weights @ partials[:, :length]
            sound[: len(attack)] *= attack[:length]
            if held < length:
                sound[held:] *= release[: length - held]
            audio[start : start + length] += sound
    peak = float(np.abs(audio).max(initial=0.0))
    if peak > 0:
        audio *= PEAK / peak
    return audio


def write_wav(path: Path | BinaryIO, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit mono PCM, to a path or an open binary file."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(path if hasattr(path, "write") else str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(pcm.tobytes())


def render_wav(midi_path: Path, wav_path: Path) -> str:
    """Write `wav_path` from `midi_path`; returns the renderer used: FLUIDSYNTH, else BUILT_IN."""
    if render_with_fluidsynth(Path(midi_path), Path(wav_path)):
        return FLUIDSYNTH
    write_wav(Path(wav_path), synthesize(pretty_midi.PrettyMIDI(str(midi_path))), SAMPLE_RATE)
    return BUILT_IN
