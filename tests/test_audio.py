"""Every sample gets a WAV: FluidSynth when it and a soundfont are installed, else the built-in synth, whose output
has the piece's length and rate, follows velocity and is silent where no note sounds."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from musicgpt_jax import audio

RATE = audio.SAMPLE_RATE


def midi_file(path: Path, notes: list[tuple[int, int, float, float]]) -> Path:
    """A one-piano MIDI file of (pitch, velocity, start, end) notes, times in seconds."""
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(velocity=v, pitch=p, start=s, end=e) for p, v, s, e in notes]
    midi.instruments.append(piano)
    midi.write(str(path))
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as file:
        assert (file.getnchannels(), file.getsampwidth()) == (1, 2)
        return np.frombuffer(file.readframes(file.getnframes()), "<i2").astype(np.float64) / 32767, file.getframerate()


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples**2)))


@pytest.fixture
def no_fluidsynth(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


def test_built_in_synth_has_the_pieces_length_and_rate_and_follows_velocity(tmp_path, no_fluidsynth):
    # a soft C4, a second of silence, the same note loud; the piece ends at 3.0 s
    midi = midi_file(tmp_path / "x.mid", [(60, 30, 0.0, 1.0), (60, 110, 2.0, 3.0)])
    assert audio.render_wav(midi, tmp_path / "x.wav") == audio.BUILT_IN
    samples, rate = read_wav(tmp_path / "x.wav")
    assert rate == RATE
    assert len(samples) / RATE == pytest.approx(3.0 + audio.RELEASE_SECONDS, abs=2 / RATE)
    assert np.abs(samples).max() == pytest.approx(audio.PEAK, abs=1e-3)  # normalised

    def window(begin: float, end: float) -> np.ndarray:
        return samples[round(begin * RATE) : round(end * RATE)]

    soft, loud = rms(window(0.05, 0.5)), rms(window(2.05, 2.5))
    assert loud > 5 * soft > 0
    assert np.abs(window(1.0 + audio.RELEASE_SECONDS + 0.01, 2.0)).max() < 1e-4  # nothing sounds: silence
    # the note rings at its pitch: the spectrum's peak is C4's fundamental (261.6 Hz)
    spectrum = np.abs(np.fft.rfft(window(2.0, 3.0)))
    assert np.fft.rfftfreq(RATE, 1 / RATE)[spectrum.argmax()] == pytest.approx(261.6, abs=2)


def test_soundfonts_are_searched_at_linux_and_homebrew_paths():
    assert "/usr/share/sounds/sf2/FluidR3_GM.sf2" in audio.SOUNDFONTS
    assert {"/opt/homebrew/share/soundfonts/default.sf2", "/usr/local/share/soundfonts/default.sf2"} <= set(
        audio.SOUNDFONTS
    )


def test_an_empty_piece_is_a_short_silent_wav(tmp_path, no_fluidsynth):
    midi = midi_file(tmp_path / "empty.mid", [])
    assert audio.render_wav(midi, tmp_path / "empty.wav") == audio.BUILT_IN
    samples, _ = read_wav(tmp_path / "empty.wav")
    assert len(samples) > 0 and not samples.any()


def test_fluidsynth_only_when_it_and_a_soundfont_exist_else_the_built_in_synth(tmp_path, monkeypatch, capsys):
    midi = midi_file(tmp_path / "x.mid", [(60, 80, 0.0, 0.5)])
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert audio.render_wav(midi, tmp_path / "a.wav") == audio.BUILT_IN  # no fluidsynth
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "fluidsynth"  # writes the file named after -F, as fluidsynth does
    fake.write_text('#!/bin/sh\nwhile [ "$1" != "-F" ]; do shift; done\necho RIFF > "$2"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(audio, "SOUNDFONTS", ())
    monkeypatch.delenv("SOUNDFONT", raising=False)
    monkeypatch.setattr(audio, "_told_no_soundfont", False)
    assert audio.render_wav(midi, tmp_path / "b.wav") == audio.BUILT_IN  # no soundfont: said once, in one line
    assert audio.render_wav(midi, tmp_path / "b2.wav") == audio.BUILT_IN
    assert capsys.readouterr().err == audio.no_soundfont_line() + "\n"
    assert read_wav(tmp_path / "b.wav")[1] == RATE
    soundfont = tmp_path / "gm.sf2"
    soundfont.write_bytes(b"sf2")
    monkeypatch.setenv("SOUNDFONT", str(soundfont))
    assert audio.render_wav(midi, tmp_path / "c.wav") == audio.FLUIDSYNTH
    assert (tmp_path / "c.wav").read_bytes() == b"RIFF\n"
    fake.write_text("#!/bin/sh\nexit 1\n")  # fluidsynth fails: the built-in synth still writes one
    assert audio.render_wav(midi, tmp_path / "d.wav") == audio.BUILT_IN
