"""Grain input pipeline: seeded shuffle, random crops, transposition, batching, a disjoint share per process.

Every sequence gets the start frame prepended (`frames.with_start_frame`: the start-of-piece context the first
real frame is predicted from); a training example is a window of `seq_len + 1` frames of that, split into inputs
(frames 0..T-1) and targets (frames 1..T). Long pieces yield proportionally more windows per epoch than short
ones, and a window's start is drawn so that a piece's first and last frames are targets as often as its middle
ones (`window_start`), so every frame has about the same chance of being seen. Pieces shorter than a window are
zero-padded with `mask` = 0 on the padding.

The pipeline is a `grain.MapDataset`, so its iterator state is just the next index: it is saved with each
checkpoint and restoring it resumes the exact data order.

With `velocity_bins` > 0 (a model with dynamics) an example also holds `input_velocities` and `target_velocities`:
the records' velocities cropped and transposed as the states are, then binned at the onsets
(`dynamics.onset_velocity_bins`; `dynamics.NO_VELOCITY` elsewhere).

For a model told the key or the composer (`conditioning`), an example also holds `key` and `composer`: the piece's
key moved by the window's transposition, and its composer, each "unknown" with probability `condition_dropout`
in training; evaluation windows hold the true labels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grain
import numpy as np

from musicgpt_jax import conditioning, dynamics, given
from musicgpt_jax.configs import ModelConfig
from musicgpt_jax.frames import with_start_frame

Example = dict[str, np.ndarray]


def _padded_window(frames: np.ndarray, start: int, seq_len: int) -> np.ndarray:
    window = frames[start : start + seq_len + 1]
    padded = np.zeros((seq_len + 1, frames.shape[1]), np.int32)
    padded[: window.shape[0]] = window
    return padded


def window_start(rng: np.random.Generator, length: int, seq_len: int) -> int:
    """Where a training window of `seq_len + 1` frames starts in a sequence of `length` frames (start frame included).

    Drawn uniformly from every start that would make some frame a target, [1 - seq_len, length - 2], then clipped to
    the windows that fit, [0, max(0, length - seq_len - 1)]: every frame is a target in at least `seq_len` of the
    `length + seq_len - 2` equally likely draws, the first frames as well. Starts uniform over the windows that fit
    would make the frame after the start frame a target once in `length - seq_len` windows, and a sampler, which
    always begins from the start frame, would open pieces the model has hardly seen begin.
    """
    drawn = int(rng.integers(1 - seq_len, max(2 - seq_len, length - 1)))
    return min(max(drawn, 0), max(0, length - seq_len - 1))


def window_example(states: np.ndarray, start: int, seq_len: int, velocities: np.ndarray | None = None) -> Example:
    """Window [start, start + seq_len + 1) of `states` (start frame already prepended), padded and masked; with
    `velocities` (start frame prepended too) also their raw windows, to be binned by `bin_velocities`."""
    valid = min(seq_len + 1, states.shape[0] - start) - 1
    padded = _padded_window(states, start, seq_len)
    mask = np.zeros((seq_len,), np.float32)
    mask[:valid] = 1.0
    steps = np.arange(start, start + seq_len, dtype=np.int32)  # each input's index: where it is in the beat
    example = {"inputs": padded[:-1], "targets": padded[1:], "mask": mask, "steps": steps}
    if velocities is not None:
        raw = _padded_window(velocities, start, seq_len)
        example["input_velocities"], example["target_velocities"] = raw[:-1], raw[1:]
    return example


def bin_velocities(example: Example, num_bins: int) -> Example:
    """The raw velocity windows of `example` replaced by their bins at the onsets of the states beside them."""
    for states, velocities in (("inputs", "input_velocities"), ("targets", "target_velocities")):
        example[velocities] = dynamics.onset_velocity_bins(example[states], example[velocities], num_bins)
    return example


def _velocities_of(item: dict, velocity_bins: int) -> np.ndarray | None:
    return with_start_frame(np.asarray(item["velocities"])) if velocity_bins else None


def transpose_states(states: np.ndarray, semitones: int) -> np.ndarray:
    """Shift every pitch by `semitones`; notes pushed past either end of the keyboard are dropped."""
    if semitones == 0:
        return states
    out = np.zeros_like(states)
    if semitones > 0:
        out[:, semitones:] = states[:, :-semitones]
    else:
        out[:, :semitones] = states[:, -semitones:]
    return out


class _WindowIndex:
    """Maps a flat window number to (sequence, window slot): piece i owns ceil(len_i / seq_len) slots."""

    def __init__(self, lengths: Sequence[int], seq_len: int):
        self.windows = np.maximum(1, -(-np.asarray(lengths, np.int64) // seq_len))
        self.ends = np.cumsum(self.windows)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def sequence_of(self, flat: int) -> int:
        return int(np.searchsorted(self.ends, flat, side="right"))


def sequence_lengths(source: Sequence[dict]) -> list[int]:
    return [int(source[i]["states"].shape[0]) for i in range(len(source))]


def train_dataset(
    source: Sequence[dict],
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    transpose: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    lengths: Sequence[int] | None = None,
    velocity_bins: int = 0,
    given_lookahead: int = 0,
    labels_for: ModelConfig | None = None,
    condition_dropout: float = 0.0,
) -> grain.MapDataset:
    """An endless, shuffled MapDataset of this process's batches of `batch_size` windows (the local batch).
    With `given_lookahead` > 0 each window also holds `given`, the codes of the notes it is told to keep, for a
    task drawn per window (`given.draw_given`). With `labels_for`, a model config that takes a key or a composer,
    each window also holds their labels (module doc).

    Each batch also carries `source_index` (which sequence each row came from) and `window_index` (the flat
    window number, unique within an epoch), for provenance checks.
    """
    lengths = sequence_lengths(source) if lengths is None else lengths
    index = _WindowIndex(lengths, seq_len)
    if len(index) == 0:
        raise ValueError("the training split is empty")

    def make_window(flat: int, rng: np.random.Generator) -> Example:
        seq = index.sequence_of(flat)
        item = source[seq]
        states = with_start_frame(np.asarray(item["states"]))
        start = window_start(rng, states.shape[0], seq_len)
        example = window_example(states, start, seq_len, _velocities_of(item, velocity_bins))
        shift = int(rng.integers(-transpose, transpose + 1)) if transpose else 0
        example["transposition"] = np.int32(shift)  # for a model that conditions on it
        if given_lookahead:
            example["given"] = given.draw_given(states, start, seq_len, given_lookahead, rng)
        if shift:
            for key in ("inputs", "targets", "input_velocities", "target_velocities", "given"):
                if key in example:
                    example[key] = transpose_states(example[key], shift)
        if velocity_bins:
            bin_velocities(example, velocity_bins)
        if labels_for is not None and conditioning.conditioned(labels_for):  # drawn last: other draws stay as they were
            found = conditioning.item_labels(labels_for, item, shift)
            conditioning.drop_labels(labels_for, found, rng, condition_dropout)
            example.update(found)
        example["source_index"] = np.int64(seq)
        example["window_index"] = np.int64(flat)
        return example

    ds = grain.MapDataset.range(len(index)).seed(seed).shuffle().repeat(None).random_map(make_window)
    return _ProcessRows(ds, batch_size, process_index, process_count).batch(batch_size, drop_remainder=True)


class _ProcessRows(grain.MapDataset):
    """This process's rows of each global batch: the global batch is the same for any number of processes.

    Local element i is global element (i // local) * global + process_index * local + i % local, so process p
    reads (and decodes) only rows [p * local, (p + 1) * local) of every global batch.
    """

    def __init__(self, parent: grain.MapDataset, local_batch: int, process_index: int, process_count: int):
        super().__init__(parent)
        self._local, self._process, self._count = local_batch, process_index, process_count

    def __len__(self) -> int:
        return len(self._parent) // self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, self._local)
        return self._parent[batch * self._local * self._count + self._process * self._local + row]


def plan_windows(lengths: Sequence[int], window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(sequence, input start, first scored position, end of valid positions) for every window.

    With the start frame prepended, a sequence of T frames has inputs 0..T-1 predicting targets 1..T. A window
    starting at input `a` holds inputs a..a+window-1; position j predicts frame a+j+1. Positions
    [first, end) are scored. The union over a sequence's windows is every target exactly once.

    What the two scorers differ in, stated here once: the training loop's validation (`eval_examples`) plans
    with `stride = window`, so a window's first frames see little context, and scores the first
    `train.eval_batches` batches; `evaluate` plans with `stride = window // 2` over the whole split, so every
    scored frame sees at least half a window. Both score a frame's NLL the same way (`model.frame_log_likelihood`).
    """
    if not 1 <= stride <= window:
        raise ValueError(f"stride {stride}: must be in [1, window={window}]")
    plan = []
    for seq, length in enumerate(lengths):
        plan.append((seq, 0, 0, min(window, length)))
        start = 0
        while start + window < length:  # targets start+window+1 .. length are still unscored
            start += stride
            plan.append((seq, start, window - stride, min(window, length - start)))
    return plan


def eval_examples(
    source: Sequence[dict], *, seq_len: int, velocity_bins: int = 0, labels_for: ModelConfig | None = None
) -> list[Example]:
    """Consecutive, non-overlapping windows covering every frame of every sequence exactly once (`plan_windows`
    with stride = window); with `labels_for`, each with its piece's true key and composer labels."""
    examples = []
    for i in range(len(source)):
        item = source[i]
        states = with_start_frame(np.asarray(item["states"]))
        velocities = _velocities_of(item, velocity_bins)
        found = conditioning.item_labels(labels_for, item) if labels_for is not None else {}
        for _, start, _, end in plan_windows([states.shape[0] - 1], seq_len, seq_len):
            if end > 0:  # an empty sequence has nothing to score
                example = window_example(states, start, seq_len, velocities)
                example.update(found)
                examples.append(bin_velocities(example, velocity_bins) if velocity_bins else example)
    return examples


def eval_batches(
    source: Sequence[dict],
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    velocity_bins: int = 0,
    labels_for: ModelConfig | None = None,
) -> Iterator[Example]:
    """Fixed evaluation batches (local share of each global batch), padded with fully masked rows."""
    examples = eval_examples(source, seq_len=seq_len, velocity_bins=velocity_bins, labels_for=labels_for)
    global_batch = batch_size * process_count
    num_batches = -(-len(examples) // global_batch)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    for b in range(num_batches):
        rows = examples[b * global_batch : (b + 1) * global_batch]
        if len(rows) < global_batch:
            empty = {k: np.zeros_like(v) for k, v in rows[0].items()}
            rows = rows + [empty] * (global_batch - len(rows))
        local = rows[process_index * batch_size : (process_index + 1) * batch_size]
        yield {k: np.stack([r[k] for r in local]) for k in rows[0]}
