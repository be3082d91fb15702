"""Do long samples stay music? Notes per bar, pitch range and the model's own likelihood, bar by bar.

    python benchmarks/long_samples.py --workdir runs/default [--bars 64] [--num_samples 8] [--seed 1]
        [--temperature 1.0] [--top_p P] [--strategy S] [--no_keyboard_mask] [--recompute]

Samples `--num_samples` pieces of `--bars` bars as `sample.py` does (same decode loop, same defaults) and prints,
per sample, its notes per bar (as `musicgpt_jax.stats` counts them), its busiest bar, the mean of its last 16 bars
and its lowest and highest pitch; then the held-out split's own figures and the texture distances against it
(`stats.measure`, each beside the held-out data's split-half distance).

With `--recompute` it also scores every sample twice under the model itself: through the cached decode path
(exactly what `generate` saw, window slides included) and by a full forward pass over the last `max_len` frames
before every frame (no cache, no slide). Their agreement bar by bar tells a decode bug (the two differ) from the
model's own drift (they agree, and the log-likelihood falls as the piece goes on). Exit status 1 when a sample
goes over `--max_notes_per_bar` or outside the held-out range widened by the run's transposition.

It also counts the bars that sound a pitch only the training transposition reaches (outside the untransposed
corpus's range), where a drifting sample used to pile up. With `--voices` it tells where the samples' voice
count goes wrong: the share of sounding frames with 1, 2, ... 6+ notes in the held-out split, in the model's
one-step-ahead draws given the held-out music as context (teacher forced, first bar skipped), and in the free
samples bar range by bar range. Near-equal first two and a different third mean exposure bias: the model is
calibrated on true contexts and drifts on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from musicgpt_jax import cli, compose, decode, frame_choice, generation, host_memory, pipeline, records, stats  # noqa: E402
from musicgpt_jax.frames import OFF, Meter, note_starts, with_start_frame  # noqa: E402
from musicgpt_jax.midi_io import midi_to_frames  # noqa: E402
from musicgpt_jax.model import MusicTransformer, frame_log_likelihood, model_inputs  # noqa: E402
from musicgpt_jax.orbax_logs import quiet_orbax  # noqa: E402
from musicgpt_jax.saved_run import restore_params  # noqa: E402


def bar_figures(states: np.ndarray, num_states: int, steps_per_bar: int) -> dict:
    """Note starts in each bar, the busiest bar and the sounding pitch range of one piece (T, P)."""
    starts = note_starts(states, num_states).sum(axis=1)
    bars = len(states) // steps_per_bar
    per_bar = starts[: bars * steps_per_bar].reshape(bars, steps_per_bar).sum(axis=1) if bars else starts[:0]
    sounding = np.flatnonzero((states != OFF).any(axis=0))
    return {
        "per_bar": per_bar.tolist(),
        "max": int(per_bar.max()) if bars else 0,
        "low": int(sounding.min()) if sounding.size else None,
        "high": int(sounding.max()) if sounding.size else None,
    }


def edge_bars(states: np.ndarray, steps_per_bar: int, low: int, high: int) -> int:
    """How many bars of one piece (T, P) sound a pitch below `low` or above `high`."""
    bars = len(states) // steps_per_bar
    sounding = (states[: bars * steps_per_bar] != OFF).reshape(bars, steps_per_bar, -1).any(axis=1)
    return int((sounding[:, :low].any(axis=1) | sounding[:, high + 1 :].any(axis=1)).sum())


def on_grid_share(states: np.ndarray, num_states: int, grid_steps: int) -> float:
    """The share of one piece's (T, P) onset frames that fall on its `grid_steps` grid (step mod grid_steps = 0):
    with 8 steps per quarter and a grid of 4, the eighth notes. A piece that lost the beat sits off it."""
    onset_steps = np.flatnonzero(note_starts(states, num_states).any(axis=1))
    return float(np.mean(onset_steps % grid_steps == 0)) if onset_steps.size else 1.0


ON_GRID = 0.9  # a piece with fewer of its onsets on the eighth-note grid has lost the beat


MAX_VOICES = 6  # voice-count shares are of 1 .. MAX_VOICES - 1 notes, the last bin MAX_VOICES or more


def voice_shares(states: np.ndarray) -> np.ndarray:
    """(MAX_VOICES,) share of the sounding frames of (..., P) `states` with 1, 2, ... MAX_VOICES+ notes sounding."""
    voices = (np.asarray(states) != OFF).sum(axis=-1).ravel()
    voices = np.minimum(voices[voices > 0], MAX_VOICES)
    return np.bincount(voices, minlength=MAX_VOICES + 1)[1:] / max(len(voices), 1)


def one_step_draws(params, cfg, choice, allowed, sequences, seed: int, skip: int) -> tuple[np.ndarray, np.ndarray]:
    """Each held-out frame after the first `skip`, and the model's draw of it given the true frames before it (up
    to `max_len`), with the sampling strategy `choice`: two (N, P) arrays."""
    model, window, bins = MusicTransformer(cfg), cfg.max_len, cfg.velocity_bins

    @jax.jit
    def draw(batch, rng):
        out, _ = model.apply({"params": params}, batch["inputs"], **model_inputs(batch))
        flat = out.reshape(-1, *out.shape[2:])  # every position is one draw
        inputs = batch["inputs"].reshape(-1, batch["inputs"].shape[-1])
        return frame_choice.sample_frame(flat, rng, choice, inputs, cfg.num_states, cfg, params, allowed)

    rng, truths, draws = jax.random.PRNGKey(seed), [], []
    for item in sequences:
        states = with_start_frame(np.asarray(item["states"], np.int32))
        velocities = with_start_frame(np.asarray(item["velocities"])) if bins else None
        for start in range(0, len(states) - 1, window):
            example = pipeline.window_example(states, start, window, velocities)
            if bins:
                example = pipeline.bin_velocities(example, bins)
            batch = {k: jnp.asarray(v[None]) for k, v in example.items()}
            batch["transposition"] = jnp.zeros((1,), jnp.int32)
            rng, key = jax.random.split(rng)
            drawn = np.asarray(draw(batch, key))
            keep = example["mask"] > 0
            keep[: max(0, skip - start)] = False
            truths.append(example["targets"][keep])
            draws.append(drawn[keep])
    if not truths:
        empty = np.zeros((0, cfg.num_pitches), np.int32)
        return empty, empty
    return np.concatenate(truths), np.concatenate(draws)


def print_voices(args, cfg, step, options, pieces: np.ndarray, steps_per_bar: int, allowed) -> dict:
    """The `--voices` figures: held-out, one step ahead, free-running by bar range."""
    params = restore_params(args.workdir, cfg, step)
    sequences = records.load_split(cfg.data.data_dir, cfg.data.dataset, args.split)
    choice = compose.strategy_of(options, cfg).arrays()
    truth, drawn = one_step_draws(params, cfg.model, choice, jnp.asarray(allowed), sequences, args.seed, steps_per_bar)
    strikes = note_starts(truth, cfg.model.num_states).any(axis=1)  # frames where the held-out music strikes
    rows = {
        f"held-out {args.split} frames": voice_shares(truth),
        "one step ahead, true context": voice_shares(drawn),
        f"held-out {args.split} frames that strike a note": voice_shares(truth[strikes]),
        "one step ahead on those frames": voice_shares(drawn[strikes]),
    }
    bounds = [b for b in (0, 4, 8, 16, 32, 64, 128, 256) if b < args.bars] + [args.bars]
    for a, b in zip(bounds, bounds[1:], strict=False):
        rows[f"free-running, bars {a + 1}-{b}"] = voice_shares(pieces[:, a * steps_per_bar : b * steps_per_bar])
    header = " ".join(f"{n:>5d}" for n in range(1, MAX_VOICES)) + f" {MAX_VOICES:>4d}+"
    print(f"share of sounding frames by notes sounding ({len(truth)} held-out frames): {header}")
    for name, shares in rows.items():
        print(f"  {name:50s}" + " ".join(f"{v:5.3f}" for v in shares))
    return {name: shares.tolist() for name, shares in rows.items()}


def log_likelihood_cached(params, cfg, pieces: np.ndarray) -> np.ndarray:
    """log p(frame t | what `generate` fed before it) for every generated frame (B, T), through the cache."""
    with_start = np.concatenate([np.zeros_like(pieces[:, :1]), pieces], axis=1)
    out = decode.decode_logits(params, cfg, with_start[:, :-1], prefill_len=1)
    return np.asarray(frame_log_likelihood(out, jnp.asarray(with_start[:, 1:]), cfg, params))


def log_likelihood_recomputed(params, cfg, pieces: np.ndarray, chunk: int = 32) -> np.ndarray:
    """log p(frame t | up to `max_len` frames before it), from cache-free forward passes (B, T): no slide."""
    model = MusicTransformer(cfg)
    window, (batch, length, pitches) = cfg.max_len, pieces.shape
    sequence = np.concatenate([np.zeros_like(pieces[:, :1]), pieces], axis=1)  # the start frame, then the piece

    @jax.jit
    def last_position(contexts, steps, targets):  # (N, window, P) -> log p(targets (N, P) | contexts)
        out, _ = model.apply({"params": params}, contexts, steps=steps)
        return frame_log_likelihood(out[:, -1], targets, cfg, params)

    head = sequence[:, : min(window, length) + 1]  # frames 0..window-1 are predicted inside one causal pass
    out, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(head[:, :-1]))
    result = np.zeros((batch, length))
    result[:, : head.shape[1] - 1] = np.asarray(frame_log_likelihood(out, jnp.asarray(head[:, 1:]), cfg, params))
    for begin in range(window, length, chunk):
        ts = np.arange(begin, min(begin + chunk, length))
        contexts = np.stack([sequence[:, t + 1 - window : t + 1] for t in ts], axis=1).reshape(-1, window, pitches)
        targets = pieces[:, ts].reshape(-1, pitches)
        steps = np.tile(np.stack([np.arange(t + 1 - window, t + 1) for t in ts]), (batch, 1))  # rows as contexts'
        scores = last_position(jnp.asarray(contexts), jnp.asarray(steps), jnp.asarray(targets))
        result[:, ts] = np.asarray(scores).reshape(batch, len(ts))
    return result


def held_out_midi(cfg, folder: Path, split: str) -> Path | None:
    """The MIDI files of one held-out split of the run's dataset, linked into `folder`; None for a dataset that
    was not made from MIDI files (the benchmark sets)."""
    files = records.split_files(cfg.data.data_dir, cfg.data.dataset, split)
    if not files:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        (folder / f"{i:03d}_{path.name}").symlink_to(path.resolve())
    return folder


TEXTURE = ("notes_per_bar", "repeated_note_fraction", "polyphony_histogram", "note_length_histogram")


def per_bar_means(values: np.ndarray, steps_per_bar: int) -> np.ndarray:
    """(B, T) -> the mean over samples and frames of each bar (bars,)."""
    bars = values.shape[1] // steps_per_bar
    return values[:, : bars * steps_per_bar].reshape(values.shape[0], bars, steps_per_bar).mean(axis=(0, 2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.Parser(
        prog="long_samples.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="runs/default")
    parser.add_argument("--bars", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="keep the samples (MIDI, PNG) in this folder")
    parser.add_argument("--recompute", action="store_true", help="score the samples cached and recomputed")
    parser.add_argument("--max_notes_per_bar", type=int, default=30)
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--voices", action="store_true", help="voice counts: held-out, one step ahead, free-running")
    parser.add_argument(
        "--split",
        choices=("validation", "test"),
        default="validation",
        help="the held-out files to compare with: choose settings on validation, report test once",
    )
    compose.add_strategy_flags(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_orbax()
    cfg, step = compose.load_config(args.workdir)
    grid = generation.grid_of(cfg)
    steps_per_bar = Meter((), grid.steps_per_quarter).steps_per_bar()  # generated pieces are 4/4
    out = Path(args.out or tempfile.mkdtemp(prefix="long_samples-"))
    options = compose.SampleOptions(
        workdir=args.workdir,
        out=str(out),
        num_samples=args.num_samples,
        bars=args.bars,
        seed=args.seed,
        **compose.strategy_options(args),
    )
    samples = compose.sample_run(options, log=lambda line: None)
    pieces = np.stack([s.generated for s in samples])
    allowed_mask = generation.keyboard_of(cfg, grid)
    allowed = np.flatnonzero(allowed_mask)
    low, high = int(allowed[0]), int(allowed[-1])
    eighth = max(1, grid.steps_per_quarter // 2)
    # the keyboard came from the card, widened by the transposition
    widened = cfg.data.transpose if len(allowed) < grid.num_pitches and cfg.sampling.widen_keyboard else 0
    strategy = compose.strategy_of(options, cfg).describe()
    print(
        f"{args.workdir} step {step}, head {cfg.model.head}; {strategy}, keyboard {args.keyboard}; "
        f"{args.num_samples} x {args.bars} bars, seed {args.seed}; corpus keyboard with transposition: {low}..{high}"
    )
    rows = []
    for sample, piece in zip(samples, pieces, strict=True):
        row = bar_figures(piece, grid.num_states, steps_per_bar)
        row["notes_per_bar"] = stats.compute_stats([sample.frames])["notes_per_bar"] or 0.0
        row["last_16_bars"] = float(np.mean(row["per_bar"][-16:])) if row["per_bar"] else 0.0
        row["edge_bars"] = edge_bars(piece, steps_per_bar, low + widened, high - widened)
        row["on_grid"] = on_grid_share(piece, grid.num_states, eighth)
        rows.append(row)
    print("sample     notes/bar  worst bar  last 16 bars  on the 8th grid  pitches")
    for sample, row in zip(samples, rows, strict=True):
        print(
            f"{sample.name} {row['notes_per_bar']:12.1f} {row['max']:10d} {row['last_16_bars']:13.1f} "
            f"{row['on_grid']:15.0%}  {row['low']}-{row['high']}"
        )
    over = sum(r["notes_per_bar"] > args.max_notes_per_bar for r in rows)
    outside = sum(r["low"] is not None and (r["low"] < low or r["high"] > high) for r in rows)
    per_sample = [r["notes_per_bar"] for r in rows]
    summary = {
        "workdir": args.workdir,
        "step": step,
        "head": cfg.model.head,
        "strategy": strategy,
        "keyboard": args.keyboard,
        "bars": args.bars,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "notes_per_bar_median": float(np.median(per_sample)),
        "notes_per_bar_max": float(np.max(per_sample)),
        "worst_bar": int(max(r["max"] for r in rows)),
        "samples_over": int(over),
        "samples_outside_keyboard": int(outside),
        "pitches": [
            min((r["low"] for r in rows if r["low"] is not None), default=None),
            max((r["high"] for r in rows if r["high"] is not None), default=None),
        ],
    }
    summary["edge_bars"] = int(sum(r["edge_bars"] for r in rows))
    summary["off_the_beat"] = int(sum(r["on_grid"] < ON_GRID for r in rows))
    print(
        f"samples that lost the beat (under {ON_GRID:.0%} of their onsets on the eighth-note grid): "
        f"{summary['off_the_beat']} of {len(rows)}"
    )
    print(
        f"bars sounding a pitch only the transposition reaches (outside {low + widened}..{high - widened}): "
        f"{summary['edge_bars']} of {sum(len(r['per_bar']) for r in rows)}, in "
        f"{sum(r['edge_bars'] > 0 for r in rows)} of {len(rows)} samples"
    )
    print(
        f"all: notes per bar median {summary['notes_per_bar_median']:.1f}, max {summary['notes_per_bar_max']:.1f} "
        f"(worst single bar {summary['worst_bar']}); {over} of {len(rows)} samples over {args.max_notes_per_bar} "
        f"notes per bar; {outside} outside {low}..{high}; pitches {summary['pitches'][0]}-{summary['pitches'][1]}"
    )
    reference = held_out_midi(cfg, Path(tempfile.mkdtemp(prefix="held_out-")), args.split)
    if reference is not None:
        report = stats.measure(out, reference, steps_per_quarter=grid.steps_per_quarter)
        held = report["reference"]
        held_frames = [midi_to_frames(f, steps_per_quarter=grid.steps_per_quarter) for f in sorted(reference.iterdir())]
        per_piece = [stats.compute_stats([f])["notes_per_bar"] or 0.0 for f in held_frames]
        summary["held_out_notes_per_bar"] = [float(np.median(per_piece)), float(np.max(per_piece))]
        held_grid = [on_grid_share(f.states, f.num_states, eighth) for f in held_frames]
        summary["held_out_off_the_beat"] = int(sum(g < ON_GRID for g in held_grid))
        summary["texture"] = {k: report["distances"][k] for k in TEXTURE}
        scalars = ("notes_per_bar", "repeated_note_fraction", "polyphony_mean_sounding")
        summary["texture_values"] = {k: (report["samples"][k], held[k]) for k in scalars}
        print(
            f"held-out {args.split} split ({held['num_pieces']} pieces): "
            f"notes per bar median {np.median(per_piece):.1f}, max {np.max(per_piece):.1f}; "
            f"pitches {held['pitch_min']}-{held['pitch_max']}; {summary['held_out_off_the_beat']} off the beat"
        )
        print("texture against the held-out split: distance / its split-half distance = ratio")
        for key in TEXTURE:
            d = report["distances"][key]
            ratio = "n/a" if d["ratio"] is None else f"{d['ratio']:.1f}x"
            half = "n/a (one held-out piece)" if d["split_half"] is None else f"{d['split_half']:.3f}"
            print(f"  {key:24s} {d['distance']:.3f} / {half} = {ratio}")
        for key, (ours, theirs) in summary["texture_values"].items():
            print(f"  {key:24s} samples {ours:.3f}, held-out {theirs:.3f}")
    if args.recompute:
        params = restore_params(args.workdir, cfg, step)
        cached = log_likelihood_cached(params, cfg.model, pieces)
        full = log_likelihood_recomputed(params, cfg.model, pieces)
        bars_cached, bars_full = per_bar_means(cached, steps_per_bar), per_bar_means(full, steps_per_bar)
        window_bars = cfg.model.max_len // steps_per_bar
        print(f"log-likelihood per frame under the model (window {window_bars} bars): bar, cached, recomputed")
        for bar in sorted({0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, len(bars_cached) - 1}):
            if bar < len(bars_cached):
                print(f"  {bar + 1:3d}  {bars_cached[bar]:8.3f}  {bars_full[bar]:8.3f}")
        gap = np.abs(cached - full)
        inside, after = gap[:, : cfg.model.max_len].max(), gap[:, cfg.model.max_len :].max(initial=0.0)
        print(f"largest |cached - recomputed| per frame: first window {inside:.2e}, after it {after:.3f}")
        summary["log_likelihood_per_bar"] = {"cached": bars_cached.tolist(), "recomputed": bars_full.tolist()}
    if args.voices:
        summary["voices"] = print_voices(args, cfg, step, options, pieces, steps_per_bar, allowed_mask)
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "samples": rows}, indent=1))
    return 1 if over or outside else 0


if __name__ == "__main__":
    host_memory.reexec_with_malloc_tuning()
    sys.exit(main())
