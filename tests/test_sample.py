"""sample.py end to end on small checkpoints: determinism, the MIDI round trip, primers, the benchmark grid,
the no-argument default, and bad input (one line on stderr, nothing half-written)."""

from __future__ import annotations

import html
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, bad_workdirs, run_all
from flax import linen as nn

from musicgpt_jax import compose, configs, generation
from musicgpt_jax.checkpoint import Checkpointer
from musicgpt_jax.frames import DEFAULT_VELOCITY, HOLD, OFF, ONSET, Frames
from musicgpt_jax.midi_io import midi_to_frames, write_midi
from musicgpt_jax.model import MusicTransformer
from musicgpt_jax.train_state import TrainState, make_optimizer

_spec = importlib.util.spec_from_file_location("sample_cli", REPO / "sample.py")
sample_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample_cli)

SUMMARY = re.compile(
    r"^sample_\d\d: \d+ notes, [\d.]+ s, ([\d.]+%|n/a) silent frames, "
    r"longest silence [\d.]+ bars, audio by the (FluidSynth|built-in synth)$"
)
LISTEN = re.compile(
    r"^listen: .*index\.html \(sampling [\d.]+ s; audio [\d.]+ s, by the (FluidSynth|built-in synth)\)$"
)


def save_checkpoints(workdir: Path, model: configs.ModelConfig, dataset: str, steps=(1, 2)) -> None:
    """Checkpoints of random parameters (drawn in numpy: compiling `init` takes seconds on CPU)."""
    cfg = configs.Config(model=model)
    cfg.data.data_dir, cfg.data.dataset = str(workdir / "no-records"), dataset
    tx = make_optimizer(cfg.train)
    boxed = jax.eval_shape(
        MusicTransformer(model).init, jax.random.key(0), jnp.zeros((1, 4, model.num_pitches), jnp.int32)
    )["params"]
    checkpointer = Checkpointer(workdir, async_save=False)
    for step in steps:
        rng = np.random.default_rng(step)
        params = jax.tree.map(
            lambda s, rng=rng: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype), nn.meta.unbox(boxed)
        )
        state = TrainState(
            step=jnp.asarray(step, jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.PRNGKey(0)),
        )
        checkpointer.save(step, state, data_state={}, config=cfg.to_dict())
    checkpointer.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 128-pitch onset/hold model with a 32-frame (one 4/4 bar) context; checkpoints at steps 1 and 2."""
    workdir = tmp_path_factory.mktemp("run")
    model = configs.ModelConfig(num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_len=32, dropout=0.0)
    save_checkpoints(workdir, model, "bach_chorales")
    return workdir


def primer_file(path: Path, num_frames: int) -> Path:
    """An arpeggio of 8-step notes over a bass note held throughout, 100 bpm, 4/4, `num_frames` steps long."""
    states = np.zeros((num_frames, 128), np.uint8)
    velocities = np.zeros_like(states)
    states[:, 48], states[0, 48], velocities[0, 48] = HOLD, ONSET, 40
    for k, onset in enumerate(range(0, num_frames, 8)):
        pitch = (60, 64, 67, 72)[k % 4]
        states[onset : onset + 8, pitch] = HOLD
        states[onset, pitch] = ONSET
        velocities[onset, pitch] = 50 + k
    write_midi(Frames(states, velocities, tempos=((0, 100.0),)), path)
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = sample_cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def on_grid(path: Path, grid: generation.Grid) -> tuple[np.ndarray, np.ndarray]:
    return generation.to_grid(midi_to_frames(path, steps_per_quarter=grid.steps_per_quarter), grid)


def as_written(states: np.ndarray) -> np.ndarray:
    """A cut primer as the output holds it: a note sounding at the cut starts there."""
    states = states.copy()
    states[0][states[0] == HOLD] = ONSET
    return states


def assert_decodes_back(path: Path, frames: Frames) -> None:
    """The MIDI file read by the codec gives exactly `frames` (the file ends at the last note's offset)."""
    grid = generation.Grid(frames.steps_per_quarter, frames.lowest_pitch, frames.num_pitches, frames.num_states)
    decoded = midi_to_frames(path, steps_per_quarter=grid.steps_per_quarter)
    states, velocities = generation.to_grid(decoded, grid)
    length = len(states)
    np.testing.assert_array_equal(states, frames.states[:length])
    np.testing.assert_array_equal(velocities, frames.velocities[:length])
    assert not frames.states[length:].any()
    assert decoded.tempos == frames.tempos and decoded.time_signatures == frames.time_signatures


def test_same_seed_same_midi_other_seed_or_step_other_music(run_dir, tmp_path, capsys):
    def midi_bytes(name: str, *flags: str) -> list[bytes]:
        out = tmp_path / name
        code, stdout, _ = run_cli(
            ["--workdir", str(run_dir), "--out", str(out), "--num_samples", "2", "--bars", "1", *flags], capsys
        )
        assert code == 0
        *lines, listen = stdout.strip().splitlines()
        assert len(lines) == 2 and all(SUMMARY.match(line) for line in lines) and LISTEN.match(listen), stdout
        assert sorted(p.name for p in out.iterdir()) == [
            "index.html",
            "sample_00.mid",
            "sample_00.png",
            "sample_00.wav",
            "sample_01.mid",
            "sample_01.png",
            "sample_01.wav",
        ]
        return [(out / f"sample_0{i}.mid").read_bytes() for i in range(2)]

    first = midi_bytes("a", "--seed", "0")
    assert first == midi_bytes("b", "--seed", "0")
    assert first[0] != first[1]  # the batch's samples differ
    other_seed = midi_bytes("c", "--seed", "1")
    assert all(x != y for x, y in zip(first, other_seed, strict=True))
    assert midi_bytes("d", "--seed", "0", "--step", "1") != first  # --step 1 restores other parameters
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_midi_decodes_back_to_the_sampled_frames(run_dir, tmp_path):
    options = compose.SampleOptions(workdir=str(run_dir), out=str(tmp_path), num_samples=2, bars=1, seed=3)
    samples = compose.sample_run(options, log=lambda _: None)
    for sample in samples:
        assert sample.frames.num_frames == 32 == len(sample.generated)
        assert sample.frames.tempos == ((0, 120.0),) and sample.frames.time_signatures == ((0, 4, 4),)
        assert_decodes_back(tmp_path / f"{sample.name}.mid", sample.frames)
        # The file holds what was sampled (no primer: the empty start frame precedes it, so no HOLD starts it).
        np.testing.assert_array_equal(sample.frames.states, sample.generated)
        previous = np.concatenate([np.zeros_like(sample.generated[:1]), sample.generated[:-1]])
        assert not np.any((sample.generated == HOLD) & (previous == OFF))


def test_primer_notes_only_with_include_prime(run_dir, tmp_path):
    primer = primer_file(tmp_path / "primer.mid", 60)  # 2 bars less 4 steps: the last bar is 28 steps
    grid = generation.Grid(8, 0, 128, 3)
    primer_states, primer_velocities = on_grid(primer, grid)

    def run(include: bool) -> list[compose.Sample]:
        options = compose.SampleOptions(
            workdir=str(run_dir),
            out=str(tmp_path / f"out{include}"),
            num_samples=2,
            bars=1,
            prime=str(primer),
            prime_bars=1,
            include_prime=include,
        )
        return compose.sample_run(options, log=lambda _: None)

    without, with_prime = run(False), run(True)
    for plain, primed in zip(without, with_prime, strict=True):
        np.testing.assert_array_equal(plain.generated, primed.generated)  # the same music follows the primer
        assert plain.frames.num_frames == 32 and plain.prime_frames == 0
        # the output starts right after the primer's last frame, with the primer only when asked for
        assert primed.prime_frames == 28 and primed.frames.num_frames == 28 + 32
        np.testing.assert_array_equal(primed.frames.states[:28], as_written(primer_states[-28:]))
        held = primer_velocities[-28:].copy()
        held[0, 48] = DEFAULT_VELOCITY  # the bass note cut at the bar line has no velocity of its own
        np.testing.assert_array_equal(primed.frames.velocities[:28], held)
        np.testing.assert_array_equal(primed.frames.states[28:], primed.generated)
        assert plain.frames.tempos == primed.frames.tempos == ((0, 100.0),)  # the primer's tempo
        assert_decodes_back(tmp_path / f"out{False}" / f"{plain.name}.mid", plain.frames)
        assert_decodes_back(tmp_path / f"out{True}" / f"{primed.name}.mid", primed.frames)
    # A HOLD right after the primer continues one of its sounding notes; without the primer it is written
    # as a note that starts the sample.
    first = np.stack([s.generated[0] for s in without])
    assert not np.any((first == HOLD) & (primer_states[-1] == OFF))
    for plain in without:
        np.testing.assert_array_equal(plain.frames.states, as_written(plain.generated))


def test_primer_longer_than_the_context_is_cut_to_its_last_window(run_dir, tmp_path, capsys):
    primer = primer_file(tmp_path / "long.mid", 124)  # 4 bars less 4 steps, the context is 32 frames
    samples = compose.sample_run(
        compose.SampleOptions(
            workdir=str(run_dir),
            out=str(tmp_path / "out"),
            num_samples=2,
            bars=1,
            prime=str(primer),
            prime_bars=4,
            include_prime=True,
            bpm=90,
        ),
        log=lambda _: None,
    )
    states, _ = on_grid(primer, generation.Grid(8, 0, 128, 3))
    assert "context" in capsys.readouterr().err
    for sample in samples:
        # its last 32 frames, from the first bar line in them: 28 frames
        assert sample.prime_frames == 28
        np.testing.assert_array_equal(sample.frames.states[:28], as_written(states[-28:]))
        assert sample.frames.tempos == ((0, 90.0),)  # --bpm wins over the primer's


def test_benchmark_model_uses_its_own_grid(tmp_path):
    workdir = tmp_path / "jsb"
    save_checkpoints(
        workdir,
        configs.ModelConfig(
            num_pitches=88, num_states=2, num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_len=16, dropout=0.0
        ),
        "jsb_chorales",
        steps=(5,),
    )
    [sample] = compose.sample_run(
        compose.SampleOptions(workdir=str(workdir), out=str(tmp_path / "out"), num_samples=1, bars=2),
        log=lambda _: None,
    )
    frames = sample.frames
    assert (frames.steps_per_quarter, frames.lowest_pitch, frames.num_states) == (1, 21, 2)  # quarter notes
    assert frames.num_frames == 8 and frames.num_pitches == 88
    np.testing.assert_array_equal(frames.states, sample.generated)
    assert_decodes_back(tmp_path / "out" / "sample_00.mid", frames)


def test_no_arguments_sample_runs_default_into_samples(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "default").symlink_to(run_dir)
    code, stdout, stderr = run_cli([], capsys)
    assert code == 0 and len(stdout.strip().splitlines()) == 5, stderr
    written = sorted(p.name for p in (tmp_path / "samples").glob("*.mid"))
    assert written == [f"sample_0{i}.mid" for i in range(4)]
    frames = midi_to_frames(tmp_path / "samples" / "sample_00.mid")
    assert frames.num_frames <= 8 * 32  # 8 bars of 4/4 at 8 steps per quarter


@pytest.mark.parametrize(
    "case",
    [
        "no_checkpoints",
        "missing_step",
        "zero_bars",
        "not_a_number",
        "unreadable_primer",
        "note_free_primer",
        "missing_primer",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(case, run_dir, tmp_path, capsys):
    empty_midi = tmp_path / "empty.mid"
    write_midi(Frames(np.zeros((0, 128)), np.zeros((0, 128))), empty_midi)
    (tmp_path / "notes.mid").write_text("these are not notes")
    (tmp_path / "empty_run").mkdir()
    flags, expected = {
        "no_checkpoints": (["--workdir", str(tmp_path / "empty_run")], "no checkpoints"),
        "missing_step": (["--step", "99"], "no checkpoint at step 99"),
        "zero_bars": (["--bars", "0"], "--bars 0"),
        "not_a_number": (["--bars", "eight"], "--bars"),
        "unreadable_primer": (["--prime", str(tmp_path / "notes.mid")], "notes.mid: not a MIDI file"),
        "note_free_primer": (["--prime", str(empty_midi)], "empty.mid: no notes"),
        "missing_primer": (["--prime", str(tmp_path / "gone.mid")], "gone.mid: no such file"),
    }[case]
    out = tmp_path / "out"
    argv = ["--workdir", str(run_dir), "--out", str(out), "--num_samples", "2", "--bars", "1", *flags]
    code, stdout, stderr = run_cli(argv, capsys)
    assert code != 0 and stdout == ""
    assert stderr.count("\n") == 1 and expected in stderr, stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_refuses_bad_workdirs_primers_and_flags_in_one_line(run_dir, tmp_path, capsys):
    """One line on stderr naming the workdir, file or flag and the reason, a non-zero exit, nothing written, and
    the refused workdirs left as they were. Workdirs go through the real `python sample.py` (where Orbax could add
    lines of its own); the primer and flag cases, which restore the good run, run its `main` in this process."""
    workdirs = bad_workdirs(run_dir, tmp_path / "workdirs")
    (tmp_path / "notes.mid").write_text("these are not notes")
    good = ["--workdir", str(run_dir)]
    cases = {
        "empty": (["--workdir", str(workdirs["empty"])], f"{workdirs['empty']}: no checkpoints"),
        "not_a_run": (["--workdir", str(workdirs["not_a_run"])], "checkpoints/7: not a checkpoint of this project"),
        "other_shape": (
            ["--workdir", str(workdirs["other_shape"])],
            "checkpoints/2: parameter embed/table has shape (128, 3, 32) in the checkpoint but (128, 3, 64)",
        ),
        "other_version": (["--workdir", str(workdirs["other_version"])], "a config this version cannot read"),
    }
    in_process = {
        "primer_not_midi": ([*good, "--prime", str(tmp_path / "notes.mid")], "notes.mid: not a MIDI file"),
        "zero_bars": ([*good, "--bars", "0"], "--bars 0: must be positive"),
        "negative_temperature": ([*good, "--temperature", "-0.5"], "--temperature -0.5: must be >= 0"),
    }
    done = run_all(
        {
            case: [sys.executable, str(REPO / "sample.py"), *args, "--out", str(tmp_path / case), "--num_samples", "1"]
            for case, (args, _) in cases.items()
        }
    )
    for case, (args, _) in in_process.items():
        code, out, err = run_cli([*args, "--out", str(tmp_path / case), "--num_samples", "1"], capsys)
        done[case] = subprocess.CompletedProcess(args, code, out, err)
    for case, (_, expected) in {**cases, **in_process}.items():
        result = done[case]
        lines = result.stderr.splitlines()
        assert result.returncode != 0 and result.stdout == "", (case, result.stderr[-3000:])
        assert len(lines) == 1 and lines[0].startswith("sample.py: ") and expected in lines[0], (case, result.stderr)
        assert not (tmp_path / case).exists(), case
    assert sorted(p.name for p in (workdirs["other_shape"] / "checkpoints").iterdir()) == ["1", "2"]  # none moved
    assert not (workdirs["other_shape"] / "corrupt_checkpoints").exists()


def test_a_failure_while_writing_leaves_out_untouched(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    calls = []

    def draw_then_fail(frames, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        Path(path).write_bytes(b"png")

    monkeypatch.setattr(compose.pianoroll, "draw_piano_roll", draw_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        compose.sample_run(
            compose.SampleOptions(workdir=str(run_dir), out=str(out), num_samples=2, bars=1), log=lambda _: None
        )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_every_sample_has_a_wav_and_the_page_lists_them_with_the_primer_and_command(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-fluidsynth"))
    out = tmp_path / "out"
    options = compose.SampleOptions(
        workdir=str(run_dir),
        out=str(out),
        num_samples=2,
        bars=1,
        prime=str(primer_file(tmp_path / "theme <1>.mid", 16)),
        include_prime=True,
        seed=3,
    )
    samples = compose.sample_run(options, log=lambda _: None)
    assert [s.renderer for s in samples] == ["built-in synth"] * 2
    assert all((out / f"{s.name}.wav").stat().st_size > 44 for s in samples)
    page = (out / "index.html").read_text()
    assert page.count("<audio controls") == 2 and 'src="sample_01.wav"' in page and 'src="sample_01.png"' in page
    assert "theme &lt;1&gt;.mid" in page and "theme <1>" not in page  # escaped
    assert "its first 16 frames" in page and "begins at 1.2 s, in bar 1" in page  # 16 steps at 100 bpm
    assert html.escape(f"--seed 3 --prime '{tmp_path}/theme <1>.mid' --include_prime") in page
    assert "notes per bar" in page and "step 2 of" in page


def test_primer_bars_follow_a_time_signature_change(tmp_path):
    """The last bars of a primer are its real bars (frames.Meter): here a 4/4 bar, then two of 3/4."""
    states = np.zeros((80, 128), np.uint8)
    states[::8, 60], states[1::8, 60] = ONSET, HOLD
    states[73:, 60] = HOLD  # the last note lasts to the end
    path = tmp_path / "meter.mid"
    write_midi(Frames(states, states * 40, time_signatures=((0, 4, 4), (32, 3, 4))), path)
    grid = generation.Grid(8, 0, 128, 3)
    starts = {bars: 80 - len(generation.read_primer(str(path), grid, bars, 1024).states) for bars in (1, 2, 3, 4)}
    assert starts == {1: 56, 2: 32, 3: 0, 4: 0}
    primer = generation.read_primer(str(path), grid, 2, 1024)
    assert primer.time_signatures == ((0, 3, 4),) and primer.steps_per_bar == 24 and not primer.cut_to_context
    whole = generation.read_primer(str(path), grid, 3, 1024)
    assert whole.time_signatures == ((0, 4, 4), (32, 3, 4))
    np.testing.assert_array_equal(whole.states, states)
    # a primer longer than the context starts at the first bar line inside its last window
    cut = generation.read_primer(str(path), grid, 3, 30)
    assert cut.cut_to_context and len(cut.states) == 24
