"""benchmarks/classical_piano.py's goals: each figure within its factor of the held-out files', the pitches inside
the corpus's range, each distance within twice the split-half distance; and the composers it gives prepare."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import classical_piano  # noqa: E402


def report(**samples) -> dict:
    held = {"notes_per_bar": 18.0, "polyphony_mean_sounding": 4.0, "silent_fraction": 0.09,
            "repeated_note_fraction": 0.07, "velocity_std": 19.0, "pitch_min": 25, "pitch_max": 105}  # fmt: skip
    ours = {**held, **samples}
    distances = {key: {"distance": 0.1, "split_half": 0.1, "ratio": 1.0} for key in classical_piano.TEXTURE}
    return {"samples": ours, "reference": held, "distances": distances}


def test_a_figure_within_its_factor_either_way_meets_its_goal():
    assert all(classical_piano.goal_checks(report(), (21, 108)).values())
    checks = classical_piano.goal_checks(report(notes_per_bar=27.5, silent_fraction=0.05), (21, 108))
    assert not checks["notes_per_bar within 1.5x"] and not checks["silent_fraction within 1.5x"]
    assert checks["polyphony_mean_sounding within 1.5x"]
    assert classical_piano.within(12.0, 18.0, 1.5) and not classical_piano.within(11.9, 18.0, 1.5)


def test_pitches_outside_the_corpus_range_miss_their_goal():
    checks = classical_piano.goal_checks(report(pitch_min=16), (21, 105))
    assert not checks["pitches inside the corpus's range"]


def test_the_shared_files_composers_come_from_their_names():
    files = [Path("tonejs_bach_846.mid"), Path("tonejs_claire_de_lune.mid"), Path("miditok_Maestro_1.mid")]
    assert classical_piano.composer_rows(files) == [
        ("Johann Sebastian Bach", "tonejs_bach_846.mid"),
        ("Claude Debussy", "tonejs_claire_de_lune.mid"),
    ]
