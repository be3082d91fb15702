"""Harmonising and filling, measured on the held-out chorales: likelihoods, and texture against Bach's own.

    python benchmarks/harmonise.py --workdir runs/given --plain runs/plain [--split test] [--json FILE]

`--workdir` is a run with given notes (`model.given_lookahead` > 0), `--plain` the same preset without them.
On the split's pieces (read from their MIDI files, as `sample.py --melody/--fill` reads a file):

1. NLL of every cell but the top line's, nats per frame (the sum over the other pitches of a frame, pooled over
   the split's frames; non-overlapping windows of the context, the top line of the window and of the lookahead
   after it given): the run given the top line; the same run given nothing; the plain run (clamping alone: it
   reads the top line of past frames only).
2. Harmonising each piece's top line (the highest sounding note of each frame, kept): the share of top-line cells
   kept; the voice-count distribution (`stats`' polyphony histogram, 1 - overlap against Bach's); consonance with
   the top line on the beats and parallel fifths / octaves per 100 voice-pair motions (`voice_leading`); each
   beside Bach's own and the split-half distance of Bach's pieces (even / odd pieces).
3. Filling bars 5-6 (pieces whose bar 5 starts a full context in): NLL of the gap given both sides and given the
   past only (nats per frame); the written gap's silent share and voice counts, and the joins (the beat before
   and after each end of the gap), against Bach's bars.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from pathlib import Path

import jax
import numpy as np
from absl import logging

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from musicgpt_jax import compose, decode, generation, given, keep, records, stats, voice_leading  # noqa: E402
from musicgpt_jax.configs import ModelConfig  # noqa: E402
from musicgpt_jax.frame_choice import Strategy  # noqa: E402
from musicgpt_jax.frames import OFF, Frames, with_start_frame  # noqa: E402
from musicgpt_jax.midi_io import frames_to_midi, midi_to_frames  # noqa: E402
from musicgpt_jax.model import MusicTransformer  # noqa: E402
from musicgpt_jax.saved_run import restore_params  # noqa: E402

GAP_BARS = (5, 6)


def load(workdir: str):
    cfg, step = compose.load_config(workdir)
    return cfg, restore_params(workdir, cfg, step), step


def split_pieces(cfg, split: str) -> tuple[list[str], list[Frames], list[np.ndarray]]:
    """(names, codec frames, states on the model's grid) of the split's MIDI files."""
    grid = generation.grid_of(cfg)
    paths = records.split_files(cfg.data.data_dir, cfg.data.dataset, split)
    frames = [midi_to_frames(str(p), steps_per_quarter=grid.steps_per_quarter) for p in paths]
    return [p.name for p in paths], frames, [generation.to_grid(f, grid)[0] for f in frames]


@functools.lru_cache(maxsize=4)
def _log_likelihood_fn(cfg_key: tuple):
    cfg = ModelConfig(**dict(cfg_key))

    def log_likelihood(params, inputs, targets, extra):
        out, _ = MusicTransformer(cfg).apply({"params": params}, inputs, **extra)
        return given.cell_log_likelihood(out, targets, cfg, params)

    return jax.jit(log_likelihood)


def _cell_nll(cfg, params, inputs, targets, codes, cells) -> float:
    """Σ -log p over `cells` (B, T, P), teacher forced."""
    extra = {"given": np.asarray(codes, np.int32)} if codes is not None else {}
    fn = _log_likelihood_fn(decode._config_key(cfg))
    log_p = fn(params, np.asarray(inputs, np.int32), np.asarray(targets, np.int32), extra)
    return float(-(np.asarray(log_p) * cells).sum())


def top_line_nll(cfg, params, pieces: list[np.ndarray], use_given: bool) -> float:
    """Nats per frame over every cell but the top line's (module doc, 1)."""
    size, ahead = cfg.max_len, cfg.given_lookahead
    total = frames = 0.0
    for states in pieces:
        seq = with_start_frame(states)
        for start in range(0, len(seq) - 1, size):
            window = np.zeros((size + 1, seq.shape[1]), np.int32)
            part = seq[start : start + size + 1]
            window[: len(part)] = part
            valid = np.zeros((size, 1), np.float32)
            valid[: len(part) - 1] = 1.0
            top = given.line_mask(window[1:], highest=True)
            codes = None
            if ahead:
                codes = given.window_codes(seq, start, size, ahead, "top" if use_given else "none")[None]
            cells = ((~top) * valid)[None]
            total += _cell_nll(cfg, params, window[None, :-1], window[None, 1:], codes, cells)
            frames += valid.sum()
    return float(total / frames)


def harmonise(cfg, params, pieces: list[np.ndarray], seed: int) -> tuple[list[np.ndarray], float]:
    """Each piece's top line kept, the rest written in one batch: (pieces, share of top-line cells kept)."""
    length = max(len(p) for p in pieces)
    states = np.zeros((len(pieces), length, pieces[0].shape[1]), np.int32)
    mask = np.zeros(states.shape, bool)
    for i, piece in enumerate(pieces):
        states[i, : len(piece)] = piece
        mask[i, : len(piece)] = given.line_mask(piece, highest=True)
    out, _ = keep.generate_kept(
        params, cfg, states[:, :0], states, mask, jax.random.key(seed), Strategy("temperature", 0.9)
    )
    expected = np.stack([keep.kept_grid(s, m, False) for s, m in zip(states, mask, strict=True)])
    kept = float(np.mean(out[mask] == expected[mask]))
    return [out[i, : len(p)] for i, p in enumerate(pieces)], kept


def _as_frames(states: np.ndarray) -> Frames:
    return Frames(states, np.where(states != OFF, 80, 0))


def texture(pieces: list[np.ndarray], steps_per_beat: int) -> dict:
    """Voice counts (stats) and voice leading of a set of pieces on the grid."""
    s = stats.compute_stats([_as_frames(p) for p in pieces])
    return {
        "polyphony_histogram": s["polyphony_histogram"],
        "polyphony_mean_sounding": s["polyphony_mean_sounding"],
        "silent_fraction": s["silent_fraction"],
        **voice_leading.figures(pieces, steps_per_beat),
    }


FIGURES = ("consonance_with_top", "parallel_fifths_per_100", "parallel_octaves_per_100", "polyphony_mean_sounding")


def distances(a: dict, b: dict) -> dict:
    overlap = 0.5 * float(np.abs(np.subtract(a["polyphony_histogram"], b["polyphony_histogram"])).sum())
    out = {"voice_counts_1_minus_overlap": overlap}
    for key in FIGURES:
        out[key] = None if a[key] is None or b[key] is None else abs(a[key] - b[key])
    return out


def gap_window(cfg, frames: Frames, states: np.ndarray):
    """(begin, end) of bars 5-6 in frames, or None when bar 5 starts less than a context in."""
    lines = frames.meter.bar_lines(frames.num_frames)
    if len(lines) <= GAP_BARS[1] or lines[GAP_BARS[0] - 1] < cfg.max_len:
        return None
    return lines[GAP_BARS[0] - 1], min(lines[GAP_BARS[1]], len(states))


def gap_nll(cfg, params, states: np.ndarray, begin: int, end: int, both_sides: bool) -> tuple[float, int]:
    """(Σ NLL of the gap's frames, frames): one window ending at the gap's end."""
    size, ahead = cfg.max_len, cfg.given_lookahead
    seq = with_start_frame(states)
    start = end + 1 - size
    window = seq[start : start + size + 1]
    first = size - (end - begin)
    codes = None
    if ahead:
        codes = given.window_codes(seq, start, size, ahead, "gap", (first, size if both_sides else size + ahead))[None]
    cells = np.zeros((1, size, seq.shape[1]), np.float32)
    cells[0, first:] = 1.0
    return _cell_nll(cfg, params, window[None, :-1], window[None, 1:], codes, cells), end - begin


def fill(cfg, params, items, seed: int) -> list[np.ndarray]:
    """Bars 5-6 of each piece written, the context before and the lookahead after kept: the written gaps."""
    size, ahead = cfg.max_len, cfg.given_lookahead
    gap = max(end - begin for _, begin, end in items)
    primer = np.stack([s[begin - size : begin] for s, begin, _ in items])
    kept = np.zeros((len(items), gap + ahead, primer.shape[2]), np.int32)
    mask = np.zeros(kept.shape, bool)
    for i, (s, begin, end) in enumerate(items):
        after = s[end : end + ahead]  # right after this piece's own gap (a 3/4 gap is shorter)
        kept[i, end - begin : end - begin + len(after)] = after
        mask[i, end - begin : end - begin + len(after)] = True
    out, _ = keep.generate_kept(
        params, cfg, primer, kept, mask, jax.random.key(seed), Strategy("temperature", 0.9), after=ahead
    )
    return [out[i, : end - begin] for i, (_, begin, end) in enumerate(items)]


def joins(items, written: list[np.ndarray], beat: int) -> dict:
    """Silent share and mean voices in the beat either side of each end of the gap."""
    frames = []
    for (s, begin, end), gap in zip(items, written, strict=True):
        piece = np.concatenate([s[:begin], gap, s[end:]])
        frames.append(piece[begin - beat : begin + beat])
        frames.append(piece[end - beat : end + beat])
    voices = np.concatenate([np.count_nonzero(f != OFF, axis=1) for f in frames])
    return {"silent_fraction": float(np.mean(voices == 0)), "mean_voices": float(voices.mean()),
            "four_voice_share": float(np.mean(voices == 4))}  # fmt: skip


def write_top_lines(workdir: str, split: str, folder: Path) -> int:
    """Each piece's top line (`given.line_mask`) as DIR/NAME.mid, velocities and meter kept: melodies to harmonise."""
    cfg, _ = compose.load_config(workdir)
    paths = records.split_files(cfg.data.data_dir, cfg.data.dataset, split)
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        frames = midi_to_frames(str(path))
        line = given.line_mask(frames.states, highest=True)
        top = dataclasses.replace(
            frames, states=np.where(line, frames.states, OFF), velocities=np.where(line, frames.velocities, 0)
        )
        frames_to_midi(top).write(str(folder / path.name))
    print(f"wrote {len(paths)} top lines to {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a run with given notes")
    parser.add_argument("--plain", help="the same preset trained without them")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--max_pieces", type=int, help="the split's first N pieces only (a quick look)")
    parser.add_argument("--write_top_lines", metavar="DIR", help="only write each piece's top line as MIDI to DIR")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.ERROR)
    if args.write_top_lines:
        return write_top_lines(args.workdir, args.split, Path(args.write_top_lines))
    if not args.plain:
        parser.error("--plain is required")
    cfg, params, step = load(args.workdir)
    plain_cfg, plain_params, plain_step = load(args.plain)
    names, frames, pieces = split_pieces(cfg, args.split)
    names, frames, pieces = names[: args.max_pieces], frames[: args.max_pieces], pieces[: args.max_pieces]
    beat = generation.grid_of(cfg).steps_per_quarter
    report = {"workdir": args.workdir, "step": step, "plain": args.plain, "plain_step": plain_step,
              "split": args.split, "pieces": len(pieces)}  # fmt: skip

    report["top_line_nll"] = {
        "given_top_line": top_line_nll(cfg.model, params, pieces, True),
        "same_run_given_nothing": top_line_nll(cfg.model, params, pieces, False),
        "plain_run_clamped": top_line_nll(plain_cfg.model, plain_params, pieces, False),
    }
    print(json.dumps(report["top_line_nll"]), flush=True)

    bach = texture(pieces, beat)
    halves = texture(pieces[0::2], beat), texture(pieces[1::2], beat)
    report["bach"], report["split_half"] = bach, distances(*halves)
    harmonised, kept = harmonise(cfg.model, params, pieces, args.seed)
    plain_harmonised, plain_kept = harmonise(plain_cfg.model, plain_params, pieces, args.seed)
    report["harmonised"] = {"top_line_kept": kept, **texture(harmonised, beat)}
    report["harmonised"]["distance"] = distances(report["harmonised"], bach)
    report["plain_clamped"] = {"top_line_kept": plain_kept, **texture(plain_harmonised, beat)}
    report["plain_clamped"]["distance"] = distances(report["plain_clamped"], bach)
    print(json.dumps({k: report[k] for k in ("harmonised", "plain_clamped", "split_half")}), flush=True)

    items = [(s, *w) for f, s in zip(frames, pieces, strict=True) if (w := gap_window(cfg.model, f, s))]
    both = [gap_nll(cfg.model, params, s, b, e, True) for s, b, e in items]
    past = [gap_nll(cfg.model, params, s, b, e, False) for s, b, e in items]
    plain = [gap_nll(plain_cfg.model, plain_params, s, b, e, False) for s, b, e in items]
    per_frame = lambda pairs: sum(n for n, _ in pairs) / sum(f for _, f in pairs)
    report["fill"] = {"pieces": len(items), "nll_both_sides": per_frame(both), "nll_past_only": per_frame(past),
                      "nll_plain_run": per_frame(plain)}  # fmt: skip
    written = fill(cfg.model, params, items, args.seed)
    plain_written = fill(plain_cfg.model, plain_params, items, args.seed)
    bach_gaps = [s[b:e] for s, b, e in items]
    for name, gaps in (("bach", bach_gaps), ("written", written), ("plain_written", plain_written)):
        figures = texture(gaps, beat)
        report["fill"][name] = {
            "silent_fraction": figures["silent_fraction"],
            "polyphony_mean_sounding": figures["polyphony_mean_sounding"],
            "polyphony_histogram": figures["polyphony_histogram"],
            "joins": joins(items, gaps, beat),
        }
    gap_halves = texture(bach_gaps[0::2], beat), texture(bach_gaps[1::2], beat)
    report["fill"]["split_half_voice_counts"] = distances(*gap_halves)["voice_counts_1_minus_overlap"]
    report["fill"]["written_voice_counts"] = distances(texture(written, beat), texture(bach_gaps, beat))[
        "voice_counts_1_minus_overlap"
    ]
    print(json.dumps(report["fill"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
