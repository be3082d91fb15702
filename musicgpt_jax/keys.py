"""Musical keys: the 24 names, parsing a user's spelling, a piece's key from MIDI or from its notes, transposing.

A key is an index 0..23, as pretty_midi's `KeySignature.key_number` counts them: 0..11 the major keys on tonic
C..B, 12..23 the minor keys on tonic C..B. `UNKNOWN` (24) stands for "not known" (no notes, or records written
before keys were stored). A piece's key is its MIDI file's first key signature (the notes choosing between the
major key and its relative minor) when it has one, else the key whose Krumhansl-Kessler profile best matches its
duration-weighted pitch classes (`estimate_key`); pretty_midi reads key signatures but estimates none, and
music21's estimator wants a score, not frames.
"""

from __future__ import annotations

import re

import numpy as np
import pretty_midi

from musicgpt_jax.frames import OFF

NUM_KEYS = 24
UNKNOWN = NUM_KEYS  # the index of "key not known"
_MAJOR_TONICS = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
KEY_NAMES = tuple(f"{t} major" for t in _MAJOR_TONICS) + tuple(f"{t} minor" for t in _MINOR_TONICS)
_LETTERS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_ACCIDENTALS = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1}
_SPELLING = re.compile(r"\s*([a-g])\s*(#|♯|b|♭)?\s+(major|minor|maj|min)\s*", re.IGNORECASE)

# Krumhansl & Kessler (1982), "Tracing the dynamic changes in perceived tonal organization in a spatial
# representation of musical keys", Psychological Review 89(4): probe-tone ratings of the 12 pitch classes from
# the tonic up, in a major and in a minor context.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def key_name(key: int) -> str:
    """ "D minor" for 14; "unknown" for `UNKNOWN`."""
    return "unknown" if key == UNKNOWN else KEY_NAMES[key]


def parse_key(text: str) -> int:
    """A key index from a spelling such as "D minor", "d minor", "F# major", "Bb minor" or "Eb maj"; ValueError,
    one line naming the value and the form expected, for anything else."""
    match = _SPELLING.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a key; write a tonic A-G with an optional # or b, then major or minor "
            f"(e.g. 'D minor', 'F# major', 'Bb minor')"
        )
    letter, accidental, mode = match.groups()
    tonic = (_LETTERS[letter.lower()] + _ACCIDENTALS[accidental or ""]) % 12
    return tonic + (12 if mode.lower().startswith("min") else 0)


def transpose_key(key: int, semitones: int) -> int:
    """The key `semitones` up (down when negative), same mode; `UNKNOWN` stays unknown."""
    if key == UNKNOWN:
        return UNKNOWN
    return (key // 12) * 12 + (key % 12 + semitones) % 12


def pitch_class_weights(states: np.ndarray, lowest_pitch: int = 0) -> np.ndarray:
    """(12,) frames sounding per pitch class (C first) of a (T, P) window whose column 0 is MIDI `lowest_pitch`:
    each note weighs by its duration."""
    per_pitch = np.count_nonzero(np.asarray(states) != OFF, axis=0)
    pitch_classes = (lowest_pitch + np.arange(per_pitch.shape[0])) % 12
    return np.bincount(pitch_classes, weights=per_pitch, minlength=12)


def _correlations(states: np.ndarray, lowest_pitch: int) -> np.ndarray | None:
    """(24,) Pearson correlation of each key's Krumhansl-Kessler profile (rotated to its tonic) with the window's
    duration-weighted pitch classes; None when nothing sounds or every class weighs the same."""
    weights = pitch_class_weights(states, lowest_pitch)
    if not weights.any() or np.all(weights == weights[0]):
        return None
    profiles = np.stack(
        [np.roll(MAJOR_PROFILE, tonic) for tonic in range(12)] + [np.roll(MINOR_PROFILE, tonic) for tonic in range(12)]
    )
    centred = profiles - profiles.mean(axis=1, keepdims=True)
    observed = weights - weights.mean()
    return centred @ observed / (np.linalg.norm(centred, axis=1) * np.linalg.norm(observed))


def estimate_key(states: np.ndarray, lowest_pitch: int = 0) -> int:
    """The key of a (T, P) frame window by Krumhansl-Kessler key finding (Krumhansl & Kessler 1982, as Krumhansl's
    1990 algorithm uses it): the key whose profile has the highest correlation with the window's
    duration-weighted pitch classes. `UNKNOWN` when nothing sounds or every class weighs the same."""
    correlation = _correlations(states, lowest_pitch)
    return UNKNOWN if correlation is None else int(np.argmax(correlation))


def relative_keys(key: int) -> tuple[int, int]:
    """(major, minor): the two keys that share `key`'s signature, e.g. (Eb major, C minor) for either."""
    major = key % 12 if key < 12 else (key % 12 + 3) % 12
    return major, 12 + (major + 9) % 12


def key_of_midi(pm: pretty_midi.PrettyMIDI, states: np.ndarray, lowest_pitch: int = 0) -> int:
    """A piece's key. With a MIDI key signature, the first one fixes the accidentals and the notes choose the mode:
    of the major key and its relative minor, the one whose profile fits the notes better (files often write a
    minor piece's signature as its relative major, e.g. Bach's C minor fugue BWV 847 as Eb major). Without one,
    `estimate_key` of its frames."""
    signatures = sorted(pm.key_signature_changes, key=lambda k: k.time)
    correlation = _correlations(states, lowest_pitch)
    if signatures and 0 <= signatures[0].key_number < NUM_KEYS:
        major, minor = relative_keys(int(signatures[0].key_number))
        if correlation is None:
            return int(signatures[0].key_number)
        return major if correlation[major] >= correlation[minor] else minor
    return UNKNOWN if correlation is None else int(np.argmax(correlation))
