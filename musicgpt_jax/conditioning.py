"""What a model may be told about a piece besides its notes: its key and its composer, as embedding rows.

A model with `condition_on_key` has a row per key (`keys.NUM_KEYS`) and one for "unknown" (`keys.UNKNOWN`); a
model with `composers` has a row per name and one for "unknown" (index `len(composers)`). The batch keys are
"key" and "composer", (B,) int32 each, present only for a model that has the input. Here: the labels of a
training window (its key moved by its transposition, each label dropped to "unknown" with the configured
probability), of an evaluation window (the true ones, or none), and of a sampling request (checked against what
the model knows, one-line ValueError otherwise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from musicgpt_jax import keys
from musicgpt_jax.configs import ModelConfig

UNKNOWN_COMPOSER = ""  # how records store "composer not known"


def conditioned(cfg: ModelConfig) -> bool:
    """Whether the model takes a key or a composer at all."""
    return cfg.condition_on_key or bool(cfg.composers)


def composer_index(cfg: ModelConfig, name: str | None) -> int:
    """The embedding row of a composer name: its place in `cfg.composers`, or the "unknown" row."""
    try:
        return cfg.composers.index(name) if name else len(cfg.composers)
    except ValueError:
        return len(cfg.composers)


def labels(cfg: ModelConfig, key: int | None, composer: str | None) -> dict[str, np.int32]:
    """The batch labels of one window whose piece is in `key` (None: unknown) by `composer` (None: unknown), for
    the inputs `cfg` has."""
    out = {}
    if cfg.condition_on_key:
        out["key"] = np.int32(keys.UNKNOWN if key is None else key)
    if cfg.composers:
        out["composer"] = np.int32(composer_index(cfg, composer))
    return out


def item_labels(cfg: ModelConfig, item: Mapping[str, Any], shift: int = 0) -> dict[str, np.int32]:
    """`labels` of a record (`records.FrameSequences` item; old records hold neither field) transposed by `shift`
    semitones."""
    key = int(item.get("key", keys.UNKNOWN))
    return labels(cfg, keys.transpose_key(key, shift), item.get("composer") or None)


def drop_labels(cfg: ModelConfig, found: dict[str, np.int32], rng: np.random.Generator, rate: float) -> None:
    """Each label set to "unknown" with probability `rate`, in place (training: so that "unknown" is learnt)."""
    unknown = {"key": keys.UNKNOWN, "composer": len(cfg.composers)}
    for name in sorted(found):
        if rng.random() < rate:
            found[name] = np.int32(unknown[name])


def request(cfg: ModelConfig, key: str | None, composer: str | None) -> dict[str, np.int32]:
    """The labels for sampling with `key` and `composer` (None: unknown); ValueError, one line listing what the
    model knows, for a key or composer it cannot take."""
    if key is not None and not cfg.condition_on_key:
        raise ValueError(f"--key {key}: this model was trained without key conditioning (model.condition_on_key)")
    if composer is not None and not cfg.composers:
        raise ValueError(f"--composer {composer}: this model was trained without composer conditioning")
    index = None
    if key is not None:
        try:
            index = keys.parse_key(key)
        except ValueError as error:
            raise ValueError(f"--key {error}; known: {', '.join(keys.KEY_NAMES)}") from None
    if composer is not None and composer not in cfg.composers:
        raise ValueError(f"--composer {composer!r}: not one the model knows ({', '.join(cfg.composers)})")
    return labels(cfg, index, composer)


def batch_labels(found: dict[str, np.int32], batch: int) -> dict[str, np.ndarray]:
    """One window's labels repeated for a batch of `batch`: (B,) int32 each."""
    return {name: np.full((batch,), value, np.int32) for name, value in found.items()}


def composers_of_card(card: Mapping[str, Any]) -> tuple[str, ...]:
    """The composer names a dataset card counts, sorted (none for a card written before composers were kept)."""
    return tuple(sorted(card.get("composers", {}).get("counts", {})))


def with_composers(cfg: ModelConfig, card: Mapping[str, Any]) -> ModelConfig:
    """`cfg` with its composer vocabulary taken from the dataset card when `condition_on_composer` asks for one and
    none is set; unchanged otherwise."""
    if not cfg.condition_on_composer or cfg.composers:
        return cfg
    return dataclasses.replace(cfg, composers=composers_of_card(card))
