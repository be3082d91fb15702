"""The MIDI ⇄ frames codec (midi_io): on the shared real and broken MIDI files (../shared; skipped without it),
on pieces and broken files written here (tests/synthetic.py), and on random note sets."""

import functools
import io
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest
import synthetic
from conftest import require_shared, shared_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicgpt_jax.frames import HOLD, OFF, ONSET, Frames, notes_of
from musicgpt_jax.midi_io import MidiDecodeError, frames_to_midi, midi_to_frames, write_midi

SPQ = 8


@functools.cache
def parsed(path: Path) -> pretty_midi.PrettyMIDI:
    """Each shared file is parsed once per session (midi_to_frames does not modify what it is given)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pretty_midi.PrettyMIDI(str(path))


def grid_notes(pm: pretty_midi.PrettyMIDI, spq: int = SPQ) -> list[tuple[int, int, int, int]] | None:
    """The non-drum notes as (pitch, onset step, offset step, velocity) if every start and end tick lies on
    the grid, else None."""
    notes = []
    for instrument in pm.instruments:
        for note in [] if instrument.is_drum else instrument.notes:
            start, end = pm.time_to_tick(note.start), pm.time_to_tick(note.end)
            if (start * spq) % pm.resolution or (end * spq) % pm.resolution:
                return None
            on, off = start * spq // pm.resolution, end * spq // pm.resolution
            notes.append((note.pitch, on, off, note.velocity))
    return sorted(notes)


def written_notes(pm: pretty_midi.PrettyMIDI, spq: int = SPQ) -> list[tuple[int, int, int, int]]:
    """The notes of a MIDI written by frames_to_midi, read back in steps through its own ticks."""
    step = pm.resolution // spq
    out = [
        (n.pitch, pm.time_to_tick(n.start) / step, pm.time_to_tick(n.end) / step, n.velocity)
        for i in pm.instruments
        for n in i.notes
    ]
    assert all(on.is_integer() and off.is_integer() for _, on, off, _ in out), "notes written off the grid"
    return sorted((p, int(on), int(off), v) for p, on, off, v in out)


def assert_notes_kept(source: list[tuple[int, int, int, int]], kept: list[tuple[int, int, int, int]]) -> None:
    """Every onset survives with the loudest velocity struck there, and every note that overlaps no other
    note of its pitch survives exactly (overlapping ones are split at each onset, by design)."""
    loudest: dict[tuple[int, int], int] = defaultdict(int)
    for pitch, on, _, velocity in source:
        loudest[pitch, on] = max(loudest[pitch, on], velocity)
    assert {(p, on): v for p, on, _, v in kept} == loudest
    by_pitch = defaultdict(list)
    for note in source:
        by_pitch[note[0]].append(note)
    overlaps = lambda n: sum(m[1] < n[2] and n[1] < m[2] for m in by_pitch[n[0]])  # counts n itself
    alone = [n for n in source if overlaps(n) == 1]
    assert not Counter(alone) - Counter(kept)


def round_trip(frames: Frames, tmp_path: Path) -> tuple[Frames, Frames]:
    """frames → MIDI → frames, through the PrettyMIDI object and through a written file."""
    write_midi(frames, tmp_path / "x.mid")
    return midi_to_frames(frames_to_midi(frames)), midi_to_frames(tmp_path / "x.mid")


# ------------------------------------------------------------------------------------------------ real data


def real_files() -> list[Path]:
    """The shared real-music files; skips the calling test without ../shared."""
    return sorted(require_shared("midi/real").glob("*.mid"))


def edge_file(name: str) -> Path:
    return require_shared(f"midi/edge/{name}")


@functools.cache
def on_grid_files() -> list[Path]:
    return [p for p in real_files() if grid_notes(parsed(p)) is not None]


def test_round_trip_identical_on_grid_real_files(tmp_path):
    assert on_grid_files(), "expected some quantized files (Nottingham) in the real set"
    for path in on_grid_files():
        frames = midi_to_frames(parsed(path))
        assert frames.num_frames > 0
        for again in round_trip(frames, tmp_path):
            assert again == frames, path.name


def test_midi_frames_midi_keeps_on_grid_notes():
    for path in on_grid_files():
        pm = parsed(path)
        frames = midi_to_frames(pm, sustain_pedal=False)
        out = frames_to_midi(frames)
        assert len(out.instruments) == 1 and out.instruments[0].program == 0
        assert written_notes(out) == notes_of(frames), path.name
        assert_notes_kept(grid_notes(pm), notes_of(frames))


def test_tempo_maps_written_back_exactly(tmp_path):
    """Files with hundreds of tempo changes: the grid ignores them and the tempo events come back verbatim."""
    heavy = [p for p in real_files() if len(parsed(p).get_tempo_changes()[0]) >= 250]
    assert len(heavy) >= 5
    for path in heavy:
        frames = midi_to_frames(parsed(path))
        assert len(frames.tempos) >= 200
        write_midi(frames, tmp_path / "x.mid")
        assert midi_to_frames(tmp_path / "x.mid") == frames, path.name
        midi = mido.MidiFile(tmp_path / "x.mid")
        ticks_per_step = midi.ticks_per_beat // SPQ
        tick, written = 0, []
        for msg in midi.tracks[0]:
            tick += msg.time
            if msg.type == "set_tempo":
                written.append((tick // ticks_per_step, msg.tempo))
        assert written == [(step, round(6e7 / qpm)) for step, qpm in frames.tempos], path.name


def silent_fraction(frames: list[Frames]) -> float:
    """Frames with no pitch sounding, from each piece's first to last sounding step, pooled over pieces."""
    silent = total = 0
    for f in frames:
        sounding = (f.states != OFF).any(axis=1)
        steps = np.flatnonzero(sounding)
        span = sounding[steps[0] : steps[-1] + 1]
        silent, total = silent + np.count_nonzero(~span), total + len(span)
    return silent / total


def test_sustain_pedal_fills_maestro_silences():
    maestro = [p for p in real_files() if p.name.startswith("miditok_Maestro_")]
    assert len(maestro) == 10
    as_written = silent_fraction([midi_to_frames(parsed(p), sustain_pedal=False) for p in maestro])
    pedalled = silent_fraction([midi_to_frames(parsed(p)) for p in maestro])
    print(f"MAESTRO silent 32nd frames: {as_written:.1%} as written, {pedalled:.1%} with the pedal")
    assert as_written == pytest.approx(0.210, abs=0.01)
    assert pedalled == pytest.approx(0.083, abs=0.01)


def test_damper_file_sounds_longer_with_pedal():
    pm = parsed(edge_file("jazzsoft_test-control-40-damper.mid"))
    dry, wet = notes_of(midi_to_frames(pm, sustain_pedal=False)), notes_of(midi_to_frames(pm))
    assert [(p, on, v) for p, on, _, v in dry] == [(p, on, v) for p, on, _, v in wet]
    assert all(w[2] >= d[2] for d, w in zip(dry, wet, strict=True))
    assert sum(w[2] - w[1] for w in wet) > sum(d[2] - d[1] for d in dry)


# ----------------------------------------------------------------------------------------------- edge files


@pytest.mark.parametrize("path", shared_files("midi/edge"))
def test_edge_file_converts_or_raises_decode_error(path):
    try:
        frames = midi_to_frames(path)
    except MidiDecodeError as error:
        message = str(error)
        assert path.name in message and "\n" not in message and len(message) < 300, message
        with pytest.raises(Exception), warnings.catch_warnings():  # noqa: B017 - only what pretty_midi refuses
            warnings.simplefilter("ignore")
            pretty_midi.PrettyMIDI(str(path))
        return
    assert frames.states.shape == (frames.num_frames, 128)
    assert midi_to_frames(frames_to_midi(frames)) == frames


def test_files_without_notes_give_empty_frames():
    for name in ["jazzsoft_test-empty.mid", "jazzsoft_test-silence-end-of-track.mid", "miditok_empty.mid"]:
        frames = midi_to_frames(edge_file(name))
        assert frames.states.shape == (0, 128) and notes_of(frames) == []
        assert midi_to_frames(frames_to_midi(frames)) == frames


def test_drums_dropped_unless_asked_for():
    path = edge_file("jazzsoft_test-all-gm-percussion.mid")
    assert midi_to_frames(path).num_frames == 0
    assert len(notes_of(midi_to_frames(path, include_drums=True))) > 0


def test_decode_errors_are_one_line_and_name_the_source(tmp_path):
    header = lambda division: b"MThd" + bytes([0, 0, 0, 6, 0, 0, 0, 1]) + division.to_bytes(2, "big")
    track = b"MTrk" + (4).to_bytes(4, "big") + bytes([0, 0xFF, 0x2F, 0])
    cases = {
        b"": "empty",
        b"RIFF....": "MThd not found",
        header(0xE250) + track: "SMPTE",
        header(0) + track: "0 ticks",
        header(96) + b"MTrk" + (1 << 24).to_bytes(4, "big"): "unreadable",
    }
    for data, reason in cases.items():
        with pytest.raises(MidiDecodeError, match=reason) as error:
            midi_to_frames(data, name="song.mid")
        assert str(error.value).startswith("song.mid: ") and "\n" not in str(error.value)
    with pytest.raises(MidiDecodeError, match="missing.mid: cannot read"):
        midi_to_frames(tmp_path / "missing.mid")
    assert str(midi_to_frames(header(96) + track).states.shape) == "(0, 128)"


# -------------------------------------------------------------------------------------------- written files


@pytest.fixture(scope="module")
def written_pieces(tmp_path_factory) -> list[Path]:
    return synthetic.write_corpus(tmp_path_factory.mktemp("pieces"), num_pieces=12)


def test_written_pieces_round_trip_and_keep_their_notes(written_pieces, tmp_path):
    """The codec on whole pieces written with pretty_midi (chords, arpeggios under the pedal, melodies; 4/4, 3/4
    and a change between them): exact round trips, every note kept."""
    for path in written_pieces:
        pm = parsed(path)
        source = grid_notes(pm)
        assert source is not None, f"{path.name}: written off the grid"
        frames = midi_to_frames(pm)
        assert frames.num_frames > 0
        for again in round_trip(frames, tmp_path):
            assert again == frames, path.name
        dry = midi_to_frames(pm, sustain_pedal=False)
        assert written_notes(frames_to_midi(dry)) == notes_of(dry), path.name
        assert_notes_kept(source, notes_of(dry))
        if pm.instruments[0].control_changes:  # the pedal lengthens notes, never moves or drops an onset
            wet = notes_of(frames)
            assert [(p, on, v) for p, on, _, v in notes_of(dry)] == [(p, on, v) for p, on, _, v in wet]
            assert sum(off - on for _, on, off, _ in wet) > sum(off - on for _, on, off, _ in notes_of(dry))


def test_written_piece_metadata(written_pieces):
    changing = [p for p in written_pieces if len(parsed(p).time_signature_changes) > 1]
    assert changing, "expected a piece that changes from 4/4 to 3/4"
    for path in changing:
        pm = parsed(path)
        frames = midi_to_frames(pm)
        change = round(pm.time_to_tick(pm.time_signature_changes[1].time) * SPQ / pm.resolution)
        assert frames.time_signatures == ((0, 4, 4), (change, 3, 4)), path.name
        assert change % (4 * SPQ) == 0  # the change falls on a bar line of the 4/4 part
        assert frames.meter.steps_per_bar() == 4 * SPQ  # of the first time signature
        assert len(frames.tempos) == 1 and frames.tempos[0][0] == 0
        assert frames.tempos[0][1] == pytest.approx(pm.get_tempo_changes()[1][0], rel=1e-6)


def test_written_files_without_notes_and_broken_files(written_pieces, tmp_path):
    reasons = synthetic.write_broken_files(tmp_path, written_pieces[0])
    for name, reason in reasons.items():
        if reason == "no notes":
            frames = midi_to_frames(tmp_path / name)
            assert frames.states.shape == (0, 128) and notes_of(frames) == [], name
            assert midi_to_frames(frames_to_midi(frames)) == frames
        else:
            with pytest.raises(MidiDecodeError) as error:
                midi_to_frames(tmp_path / name)
            message = str(error.value)
            assert message.startswith(f"{tmp_path / name}: ") and "\n" not in message, message
    drums = midi_to_frames(tmp_path / "drums_only.mid", include_drums=True)
    assert len(notes_of(drums)) == 16


# ---------------------------------------------------------------------------------------- representation


def piano(notes: list[tuple[int, int, int, int]], resolution: int = 480) -> pretty_midi.PrettyMIDI:
    """A PrettyMIDI at 120 bpm with (pitch, start tick, end tick, velocity) notes."""
    pm = pretty_midi.PrettyMIDI(resolution=resolution)
    seconds = 60 / (120 * resolution)
    instrument = pretty_midi.Instrument(0)
    instrument.notes = [pretty_midi.Note(v, p, s * seconds, e * seconds) for p, s, e, v in notes]
    pm.instruments.append(instrument)
    return pm


def test_short_notes_keep_their_onset_and_a_shared_cell_the_loudest_velocity():
    step = 480 // SPQ
    frames = midi_to_frames(piano([(62, 5, 10, 40), (60, 0, 2 * step, 50), (60, 0, step // 3, 90)]))
    assert frames.states[:, 62].tolist() == [ONSET, OFF] and frames.velocities[0, 62] == 40
    assert frames.states[:, 60].tolist() == [ONSET, HOLD] and frames.velocities[:, 60].tolist() == [90, 0]


def test_overlapping_notes_of_one_pitch_stay_separate():
    step = 480 // SPQ
    frames = midi_to_frames(piano([(60, 0, 10 * step, 50), (60, 4 * step, 8 * step, 70)]))
    assert notes_of(frames) == [(60, 0, 4, 50), (60, 4, 10, 70)]


def test_pedal_holds_until_lift_or_restrike():
    step = 480 // SPQ
    written = [(60, 0, 2, 50), (64, 0, 2, 50), (64, 5, 6, 60), (67, 9, 10, 70)]
    pm = piano([(p, on * step, off * step, v) for p, on, off, v in written])
    seconds_per_step = step * 60 / (120 * 480)
    pm.instruments[0].control_changes = [  # down from step 1 to step 8
        pretty_midi.ControlChange(64, 127, 1 * seconds_per_step),
        pretty_midi.ControlChange(64, 0, 8 * seconds_per_step),
    ]
    assert notes_of(midi_to_frames(pm)) == [(60, 0, 8, 50), (64, 0, 5, 50), (64, 5, 8, 60), (67, 9, 10, 70)]
    assert notes_of(midi_to_frames(pm, sustain_pedal=False)) == written


def test_frames_to_midi_reads_a_hold_after_silence_as_an_onset():
    states = np.zeros((6, 128), np.uint8)
    states[:, 60] = [HOLD, HOLD, OFF, HOLD, ONSET, HOLD]
    velocities = np.zeros_like(states)
    velocities[4, 60] = 99
    frames = Frames(states, velocities)
    assert notes_of(frames) == [(60, 0, 2, 0), (60, 3, 4, 0), (60, 4, 6, 99)]
    out = frames_to_midi(frames, default_velocity=33)
    assert written_notes(out) == [(60, 0, 2, 33), (60, 3, 4, 33), (60, 4, 6, 99)]


def test_sustain_only_benchmark_frames():
    states = np.zeros((5, 88), np.uint8)
    states[:, 39] = [1, 1, 0, 1, 1]  # middle C
    states[1:3, 0] = 1
    frames = Frames(states, np.zeros_like(states), steps_per_quarter=1, lowest_pitch=21, num_states=2)
    assert notes_of(frames) == [(21, 1, 3, 0), (60, 0, 2, 0), (60, 3, 5, 0)]
    out = frames_to_midi(frames)
    assert written_notes(out, spq=1) == [(21, 1, 3, 80), (60, 0, 2, 80), (60, 3, 5, 80)]


def test_frames_metadata():
    frames = midi_to_frames(parsed(require_shared("midi/real/nott_jigs1.mid")))
    assert frames.time_signatures[0][1:] == (6, 8) and frames.meter.steps_per_bar() == SPQ * 3
    assert frames.num_pitches == 128 and frames.states.dtype == frames.velocities.dtype == np.uint8
    coarse = midi_to_frames(parsed(require_shared("midi/real/nott_jigs1.mid")), steps_per_quarter=2)
    assert coarse.steps_per_quarter == 2 and coarse.meter.steps_per_bar() == 6
    assert Frames(frames.states.astype(np.int64), frames.velocities.tolist(), tempos=[[0, 120]]) == Frames(
        frames.states, frames.velocities
    )


# ------------------------------------------------------------------------------------------ property test


@st.composite
def pieces(draw):
    """(steps per quarter, resolution, notes, tempos, time signature) of a random on-grid piece. Notes of one
    pitch never overlap but often follow each other back to back (repeated notes)."""
    spq = draw(st.sampled_from([2, 4, 8]))
    resolution = spq * draw(st.sampled_from([12, 15, 48, 60, 120]))
    notes = []
    for pitch in draw(st.sets(st.integers(0, 127), min_size=1, max_size=5)):
        step = draw(st.integers(0, 16))
        for _ in range(draw(st.integers(1, 4))):
            length, velocity = draw(st.integers(1, 10)), draw(st.integers(1, 127))
            notes.append((pitch, step, step + length, velocity))
            step += length + draw(st.sampled_from([0, 0, 1, 5]))
    tempo_steps = draw(st.lists(st.integers(0, 60), max_size=4, unique=True).map(sorted))
    tempos = [(s, draw(st.integers(200_000, 1_500_000))) for s in tempo_steps]
    signature = draw(st.sampled_from([(4, 4), (3, 4), (6, 8), (5, 16)]))
    return spq, resolution, sorted(notes), tempos, signature


def smf(resolution: int, ticks_per_step: int, notes, tempos, signature) -> bytes:
    """A type-1 standard MIDI file written with mido, from steps."""
    meta = [(s * ticks_per_step, 1, mido.MetaMessage("set_tempo", tempo=us)) for s, us in tempos]
    meta.append((0, 0, mido.MetaMessage("time_signature", numerator=signature[0], denominator=signature[1])))
    events = [(on * ticks_per_step, 1, mido.Message("note_on", note=p, velocity=v)) for p, on, _, v in notes]
    events += [(off * ticks_per_step, 0, mido.Message("note_off", note=p)) for p, _, off, _ in notes]
    midi = mido.MidiFile(type=1, ticks_per_beat=resolution)
    for timed in (meta, events):
        track, now = mido.MidiTrack(), 0
        for tick, _, message in sorted(timed, key=lambda e: e[:2]):  # note-offs before note-ons on one tick
            track.append(message.copy(time=tick - now))
            now = tick
        midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces())
def test_random_on_grid_pieces_round_trip_exactly(piece):
    spq, resolution, notes, tempos, signature = piece
    data = smf(resolution, resolution // spq, notes, tempos, signature)
    frames = midi_to_frames(data, steps_per_quarter=spq)

    assert notes_of(frames) == notes  # repeated notes stay separate notes
    expected = np.zeros((max(off for _, _, off, _ in notes), 128), np.uint8)
    for pitch, on, off, _ in notes:
        expected[on, pitch], expected[on + 1 : off, pitch] = ONSET, HOLD
    assert np.array_equal(frames.states, expected)
    tempo_map = [(0, 500_000)] if not tempos or tempos[0][0] > 0 else []
    for step, us in tempos:
        if tempo_map[-1:] != [] and tempo_map[-1][1] == us:
            continue
        tempo_map.append((step, us))
    assert frames.tempos == tuple((s, 6e7 / us) for s, us in tempo_map)
    assert frames.time_signatures == ((0, *signature),)

    buffer = io.BytesIO()
    frames_to_midi(frames).write(buffer)
    assert midi_to_frames(buffer.getvalue(), steps_per_quarter=spq) == frames
    assert written_notes(frames_to_midi(frames), spq) == notes


# ----------------------------------------------------------------------------------------------- chorales


@pytest.mark.slow
def test_default_corpus_chorales_round_trip():
    """Every chorale of the default corpus. The export is cached where the project keeps it (a first run
    exports about 400 scores with music21, which takes minutes; later runs reuse the files)."""
    pytest.importorskip("music21")
    corpus = pytest.importorskip("musicgpt_jax.corpus", reason="musicgpt_jax/corpus.py is not written yet")
    if not hasattr(corpus, "export_default_corpus"):
        pytest.skip("musicgpt_jax.corpus has no export_default_corpus yet")
    out_dir = Path(__file__).parents[1] / getattr(corpus, "DEFAULT_CORPUS_DIR", "data/default_corpus")
    paths = corpus.export_default_corpus(out_dir, progress=False)
    assert len(paths) > 300
    for path in paths:
        pm = pretty_midi.PrettyMIDI(str(path))
        frames = midi_to_frames(pm)
        assert midi_to_frames(frames_to_midi(frames)) == frames, path.name
        source = grid_notes(pm)
        if source is not None and not any(c.number == 64 for i in pm.instruments for c in i.control_changes):
            assert_notes_kept(source, notes_of(frames))


def test_find_midi_files_follows_links_once_and_stats_finds_the_same(tmp_path):
    from musicgpt_jax import stats
    from musicgpt_jax.midi_io import find_midi_files

    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/one.mid", "a/deep/two.MIDI", "a/three.kar", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"MThd")
    (tmp_path / "linked").symlink_to(tmp_path / "a" / "deep")  # a linked folder: followed
    (tmp_path / "a" / "deep" / "cycle").symlink_to(tmp_path / "a")  # a link cycle: each real folder once
    found = find_midi_files(tmp_path)
    real = sorted(p.resolve().relative_to(tmp_path.resolve()).as_posix() for p in found)
    assert real == ["a/deep/two.MIDI", "a/one.mid", "a/three.kar"]  # every file once, whichever way walked to
    assert found == sorted(found, key=lambda p: p.relative_to(tmp_path).as_posix())
    assert stats.midi_files(tmp_path) == find_midi_files(tmp_path)
