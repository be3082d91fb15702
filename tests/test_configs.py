"""The presets and the `--config.SECTION.FIELD=VALUE` overrides."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musicgpt_jax import configs
from musicgpt_jax.configs import PRESETS, Config, ConfigError


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_resolves_to_a_consistent_config(name):
    cfg = configs.resolve(name)
    assert isinstance(cfg, Config) and cfg.preset in (name, cfg.data.dataset)
    assert cfg.model.d_model % cfg.model.num_heads == 0
    assert cfg.train.steps > 0 and cfg.train.batch_size > 0 and cfg.model.max_len > 0
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg  # what a checkpoint saves reads back the same


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_trains_the_nade_head(name):
    assert configs.resolve(name).model.head == "nade"


def test_overrides_parse_to_the_fields_types_in_order():
    cfg = configs.resolve(
        "tiny",
        [
            "train.learning_rate=3e-4",
            "model.num_layers=6",
            "train.async_checkpoints=no",
            "model.head=independent",
            "train.steps=10",
            "train.steps=20",
        ],
    )
    assert cfg.train.learning_rate == 3e-4 and cfg.model.num_layers == 6
    assert cfg.train.async_checkpoints is False and cfg.model.head == "independent"
    assert cfg.train.steps == 20  # the last one wins
    assert configs.split_overrides(["--config.train.steps=5", "--config.data.seed=1"]) == [
        "train.steps=5",
        "data.seed=1",
    ]


def test_a_config_file_resolves_like_its_preset(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(configs.resolve("jsb").to_json())
    assert configs.resolve(str(path), ["train.steps=7"]).train.steps == 7


@pytest.mark.parametrize(
    ("name", "overrides", "needle"),
    [
        ("nope", [], "unknown preset"),
        ("tiny", ["train.nope=1"], "unknown key; train has:"),
        ("tiny", ["optim.lr=1"], "unknown key (expected model.X"),
        ("tiny", ["train.steps=ten"], "expected int, got 'ten'"),
        ("tiny", ["train.steps"], "needs a value"),
        ("tiny", ["model.head=lstm"], "is not one of independent, nade"),
        ("tiny", ["train.async_checkpoints=maybe"], "expected bool"),
        ("tiny", ["model.condition_on_transposition=true", "data.transpose=13"], "up to 12 semitones only"),
        ("tiny", ["model.beat_steps=-1"], "must be 0 (off) or a number of frames"),
    ],
)
def test_bad_names_and_overrides_are_one_line_errors(name, overrides, needle):
    with pytest.raises(ConfigError) as error:
        configs.resolve(name, overrides)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_a_stray_command_line_word_is_refused():
    with pytest.raises(ConfigError, match="unrecognized argument: --steps"):
        configs.split_overrides(["--steps"])


def test_each_run_carries_its_sampling_temperature():
    from musicgpt_jax import compose

    piano, tiny = PRESETS["piano"](), PRESETS["tiny"]()
    assert compose.strategy_of(compose.SampleOptions(), piano).temperature == 1.0
    assert compose.strategy_of(compose.SampleOptions(), tiny).temperature == 0.9
    assert compose.strategy_of(compose.SampleOptions(temperature=0.5), piano).temperature == 0.5
    saved = piano.to_dict()
    assert configs.Config.from_dict(json.loads(json.dumps(saved))).sampling.temperature == 1.0
    del saved["sampling"]  # a run saved before runs carried one samples as every run did then
    assert configs.Config.from_dict(saved).sampling.temperature == 0.9
    configs._set(tiny, "sampling.temperature", "0.8")
    assert tiny.sampling.temperature == 0.8


def test_maestro_is_the_one_accelerator_piano_preset():
    """`maestro`: MAESTRO in a window of at least 16 bars, bf16 with remat and scanned layers, notes by the NADE
    head, loudness in 32 velocity bins, the given-notes input, on a batch every chip of a v5e-8 takes a share of."""
    cfg = configs.resolve("maestro")
    model = cfg.model
    assert "maestro" in PRESETS and "maestro" in configs.SUMMARIES and cfg.preset == "maestro"
    assert model.max_len >= 16 * 32  # 16 bars of 32 frames
    assert (model.dtype, model.remat, model.scan_layers) == ("bfloat16", True, True)
    assert (model.head, model.velocity_bins, model.given_lookahead) == ("nade", 32, configs.GIVEN_LOOKAHEAD)
    assert model.dropout > 0 and cfg.data.dataset == "maestro"
    assert cfg.train.batch_size % 8 == 0 and cfg.train.warmup_steps < cfg.train.steps


def test_piano_samples_on_the_corpus_own_keys(monkeypatch):
    """A run told its transposition and asked for untransposed music keeps to the corpus's own range (`piano`);
    the chorale presets' keyboard is widened by the training transposition."""
    from musicgpt_jax import generation, records

    counts = [0] * 128
    counts[30], counts[90] = 5, 7  # the corpus sounds 30..90
    monkeypatch.setattr(records, "load_card", lambda data_dir, name: {"pitch_histogram": {"counts": counts}})
    grid = generation.Grid(8, 0, 128, 3)
    for preset, (low, high) in (("piano", (30, 90)), ("maestro", (30, 90)), ("tiny", (25, 95))):
        cfg = PRESETS[preset]()
        cfg.data.transpose = 5
        allowed = np.flatnonzero(generation.keyboard_of(cfg, grid))
        assert (allowed[0], allowed[-1]) == (low, high), preset
