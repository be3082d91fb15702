"""Every command-line tool's --help ends with examples, one of them the tool itself."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

from musicgpt_jax import configs, evaluate, stats


def script(path: str):
    spec = importlib.util.spec_from_file_location(f"cli_{path.replace('/', '_')[:-3]}", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, parse, command",
    [
        ("train.py", lambda argv: script("train.py").parse_args(argv), "python train.py"),
        ("sample.py", lambda argv: script("sample.py").parse_args(argv), "python sample.py"),
        ("data/prepare.py", lambda argv: script("data/prepare.py").parse_args(argv), "python data/prepare.py"),
        ("evaluate", evaluate.parse_args, "python -m musicgpt_jax.evaluate"),
        ("stats", stats.main, "python -m musicgpt_jax.stats"),
    ],
)
def test_help_ends_with_an_example(name, parse, command, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out.rstrip()
    example = text[text.rindex("\nexample") + 1 :].splitlines()
    assert example[0] in ("example:", "examples:"), text[-500:]
    assert len(example) > 1 and all(line.startswith("  python ") for line in example[1:]), example
    assert any(line.startswith(f"  {command} ") for line in example[1:]), example


def test_old_flag_names_still_work():
    """One name per meaning across the tools (--dataset, --workdir, --out = a folder); the old names stay aliases."""
    prepare = script("data/prepare.py")
    assert prepare.parse_args(["--dataset", "my_piano"]).dataset == "my_piano"
    assert prepare.parse_args(["--name", "my_piano"]).dataset == "my_piano"  # before --dataset
    assert evaluate.parse_args([]).workdir == "runs/default"  # as train.py and sample.py; it was required
    # stats: --json PATH (was --out, which elsewhere is sample.py's output folder): tests/test_stats.py runs both.


def test_sample_flags_default_to_the_sample_options_own():
    from musicgpt_jax import compose

    assert compose.SampleOptions(**vars(script("sample.py").parse_args([]))) == compose.SampleOptions()


def test_train_help_lists_every_preset_with_its_summary(capsys):
    with pytest.raises(SystemExit):
        script("train.py").parse_args(["--help"])
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    for name in configs.PRESETS:
        assert name in listed and configs.SUMMARIES[name] in listed[name], name
    assert "a 32-bar window, dynamics" in listed["maestro"]
