"""One flag language across the tools: bad usage is one line `tool: message` and exit 2; old spellings warn;
`train.py --help` lists every preset; `train.py --workdir W` alone resumes W with its saved config."""

from __future__ import annotations

import sys

import pytest
from conftest import TINY_OVERRIDES, run_all
from test_cli_help import script

from musicgpt_jax import configs
from musicgpt_jax.checkpoint import Checkpointer
from musicgpt_jax.saved_run import load_config_dict

TOOLS = {  # how each is run, and the name its errors start with
    "train.py": (["train.py"], "train.py"),
    "sample.py": (["sample.py"], "sample.py"),
    "prepare.py": (["data/prepare.py"], "prepare.py"),
    "evaluate": (["-m", "musicgpt_jax.evaluate"], "python -m musicgpt_jax.evaluate"),
    "stats": (["-m", "musicgpt_jax.stats", "samples"], "stats"),
    "aot": (["-m", "musicgpt_jax.aot"], "aot"),
    "polyphonic.py": (["benchmarks/polyphonic.py"], "polyphonic.py"),
    "classical_piano.py": (["benchmarks/classical_piano.py"], "classical_piano.py"),
    "train_speed.py": (["benchmarks/train_speed.py"], "train_speed.py"),
    "decode_speed.py": (["benchmarks/decode_speed.py"], "decode_speed.py"),
    "long_samples.py": (["benchmarks/long_samples.py"], "long_samples.py"),
    "prepare_speed.py": (["benchmarks/prepare_speed.py"], "prepare_speed.py"),
    "aot_table.py": (["benchmarks/aot_table.py"], "aot_table.py"),
    "faults.py": (["benchmarks/faults.py"], "faults.py"),
}


def test_a_bad_flag_is_one_line_and_exit_2_in_every_tool():
    done = run_all({name: [sys.executable, *argv, "--no_such_flag"] for name, (argv, _) in TOOLS.items()})
    for name, proc in done.items():
        tool = TOOLS[name][1]
        assert proc.returncode == 2, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{tool}: ") and "--no_such_flag" in lines[0], (name, lines)


def test_train_help_lists_every_preset_one_line_each(capsys):
    with pytest.raises(SystemExit):
        script("train.py").parse_args(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for name in configs.PRESETS:
        listed = [line for line in lines if line.split()[:1] == [name] and line.startswith("  ")]
        assert len(listed) == 1 and len(listed[0].split()) > 2, (name, listed)


@pytest.fixture
def four_mat_files(tmp_path):
    bench = script("benchmarks/polyphonic.py")
    for file, *_ in bench.SETS.values():
        (tmp_path / file).write_bytes(b"")
    return bench, tmp_path


def test_benchmark_overrides_in_the_common_syntax_and_the_old_one_warns(four_mat_files, capsys):
    bench, mat_dir = four_mat_files
    args = bench.parse_args(["--mat_dir", str(mat_dir), "--config.model.dropout=0.2"])
    assert args.override == ["model.dropout=0.2"] and not args.write_docs
    assert capsys.readouterr().err == ""
    old = bench.parse_args(["--mat_dir", str(mat_dir), "--override", "model.dropout=0.2"])
    assert old.override == ["model.dropout=0.2"]
    assert capsys.readouterr().err == (
        "polyphonic.py: --override SECTION.FIELD=VALUE is deprecated; use --config.SECTION.FIELD=VALUE\n"
    )


def test_benchmark_without_its_files_says_where_they_are(tmp_path, capsys):
    bench = script("benchmarks/polyphonic.py")
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["--mat_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "JSB_Chorales.mat" in err and "www-etud.iro.umontreal.ca/~boulanni/icml2012" in err


def test_classical_piano_without_its_files_names_maestro(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        script("benchmarks/classical_piano.py").parse_args(["--midi_dir", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "https://magenta.tensorflow.org/datasets/maestro" in err


def test_workdir_alone_resumes_with_the_saved_config_and_dataset(benchmark_data, tmp_path, capsys):
    train = script("train.py")
    workdir = str(tmp_path / "run")
    first = ["--config", "jsb", "--workdir", workdir, "--data_dir", str(benchmark_data.data_dir)]
    first += ["--dataset", benchmark_data.dataset, "--steps", "2", "--no_progress"]
    first += [f"--config.{o}" for o in [*TINY_OVERRIDES, "train.checkpoint_every=2", "train.async_checkpoints=false"]]
    assert train.main(first) == 0
    before, _ = load_config_dict(workdir)
    capsys.readouterr()
    # Alone (but for the new length): the saved preset, model, dataset; an explicit flag still overrides.
    assert train.main(["--workdir", workdir, "--steps", "3", "--no_progress", "--config.train.checkpoint_every=1"]) == 0
    assert f"train.py: resuming {workdir} with the config saved at step 2" in capsys.readouterr().err
    saved, step = load_config_dict(workdir)
    assert step == 3 == Checkpointer(workdir, async_save=False).steps()[-1]
    assert (saved["train"]["steps"], saved["train"]["checkpoint_every"]) == (3, 1)
    assert saved["model"]["d_model"] == 32 and saved["data"]["dataset"] == benchmark_data.dataset
    saved["train"].update(steps=2, checkpoint_every=2)
    assert saved == before  # nothing else changed: not the tiny preset's defaults
