"""Digests of what the code does, to show a refactoring changed nothing: run before and after, compare the lines.

    python benchmarks/behaviour_digest.py [--workdir /tmp/digest]   # one "name sha256" line per behaviour

1. codec: every MIDI file of ../shared/data/midi/{real,edge} read to frames and written back to MIDI bytes
   (the error's type and message, path removed, for a file that is refused);
2. train: a 60-step tiny run on JSB Chorales (../shared/data/polyphonic; else the synthetic corpus of the tests):
   its final checkpoint's arrays and metrics.jsonl without the timings;
3. sample: sample.py's MIDI bytes from that run for a fixed seed, without and with a primer;
4. decode: `decode.generate` at a fixed seed on random parameters, with and without dynamics (velocity bins).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

TIMING = ("seconds", "per_s", "mfu", "time", "elapsed")  # metrics keys that differ from run to run
TINY = [
    "model.num_layers=2",
    "model.d_model=32",
    "model.num_heads=4",
    "model.mlp_dim=64",
    "model.max_len=32",
    "train.batch_size=8",
    "train.log_every=10",
    "train.eval_every=30",
    "train.sample_every=0",
    "train.warmup_steps=2",
    "train.schedule_steps=50",
    "train.checkpoint_every=30",
]


def sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:16]


def codec_digest() -> str:
    from musicgpt_jax.midi_io import frames_to_midi, midi_to_frames

    h = hashlib.sha256()
    for folder in ("real", "edge"):
        for path in sorted((SHARED / "midi" / folder).iterdir()):
            if path.suffix.lower() not in (".mid", ".midi", ".kar"):
                continue
            try:
                frames = midi_to_frames(str(path))
                buffer = io.BytesIO()
                frames_to_midi(frames).write(buffer)
                h.update(path.name.encode() + frames.states.tobytes() + frames.velocities.tobytes())
                h.update(repr((frames.tempos, frames.time_signatures)).encode() + buffer.getvalue())
            except Exception as error:  # noqa: BLE001 - a refused file's verdict is part of the behaviour
                h.update(f"{path.name} {type(error).__name__} {str(error).replace(str(path), '')}".encode())
    return h.hexdigest()[:16]


def run(command: list[str]) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def train_digests(workdir: Path) -> dict[str, str]:
    import numpy as np
    import orbax.checkpoint as ocp

    from musicgpt_jax import records

    data_dir, jsb = workdir / "records", SHARED / "polyphonic" / "JSB_Chorales.mat"
    if jsb.is_file():
        source, name = jsb, "jsb_chorales"
    else:
        import synthetic

        (workdir / "midi").mkdir(parents=True, exist_ok=True)
        synthetic.write_corpus(workdir / "midi")
        source, name = workdir / "synthetic_chorales.json", "synthetic_chorales"
        synthetic.write_benchmark_json(sorted((workdir / "midi").glob("*.mid")), source)
    if not (data_dir / name).exists():
        records.build_benchmark_dataset(source, data_dir)
    run_dir = workdir / "run"
    flags = [f"--config.{o}" for o in TINY]
    common = ["--data_dir", str(data_dir), "--dataset", name, "--no_progress", "--steps", "60"]
    run([sys.executable, "train.py", "--config", "jsb", "--workdir", str(run_dir), *common, *flags])
    with ocp.StandardCheckpointer() as reader:
        state = reader.restore(run_dir / "checkpoints" / "60" / "state")
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    arrays = sha(*(jax.tree_util.keystr(p).encode() + np.asarray(x).tobytes() for p, x in leaves))
    metrics = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        metrics.append({k: v for k, v in record.items() if not any(t in k for t in TIMING)})
    digests = {"train.checkpoint_arrays": arrays, "train.metrics": sha(json.dumps(metrics, sort_keys=True).encode())}
    for label, extra in {"plain": [], "primer": ["--prime", str(_primer()), "--include_prime"]}.items():
        out = workdir / f"samples_{label}"
        run([sys.executable, "sample.py", "--workdir", str(run_dir), "--out", str(out), "--seed", "3", *extra])
        digests[f"sample.{label}"] = sha(*(p.read_bytes() for p in sorted(out.glob("*.mid"))))
    return digests


def _primer() -> Path:
    real = sorted((SHARED / "midi" / "real").glob("*.mid"))
    return real[0] if real else REPO / "tests" / "data" / "missing.mid"


def decode_digests() -> dict[str, str]:
    import jax
    import numpy as np
    from flax import linen as nn

    from musicgpt_jax import decode
    from musicgpt_jax.configs import ModelConfig
    from musicgpt_jax.frame_choice import Strategy
    from musicgpt_jax.model import MusicTransformer

    digests = {}
    for bins in (0, 8):
        cfg = ModelConfig(
            num_layers=2, d_model=32, num_heads=4, mlp_dim=64, max_len=16, num_pitches=24, velocity_bins=bins
        )
        model = MusicTransformer(cfg)
        dummy = np.zeros((1, 4, cfg.num_pitches), np.int32)
        params = nn.meta.unbox(model.init(jax.random.key(0), dummy)["params"])
        primer = np.asarray(jax.random.randint(jax.random.key(1), (2, 5, 24), 0, 3), np.int32)
        strategy = Strategy("temperature", 0.9, 0.95)
        out = decode.generate(params, cfg, primer, 40, jax.random.key(2), strategy=strategy)
        digests[f"decode.bins{bins}"] = sha(np.asarray(out).tobytes())
        if bins:
            states, velocities = decode.generate_with_velocities(
                params, cfg, primer, np.full_like(primer, 3), 40, jax.random.key(2), strategy=strategy
            )
            digests["decode.with_velocities"] = sha(np.asarray(states).tobytes(), np.asarray(velocities).tobytes())
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/behaviour_digest", help="scratch folder (emptied first)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    subprocess.run(["rm", "-rf", str(workdir / "run"), *map(str, workdir.glob("samples_*"))], check=True)
    digests = {"codec": codec_digest(), **decode_digests(), **train_digests(workdir)}
    for name, digest in digests.items():
        print(f"{name} {digest}")


if __name__ == "__main__":
    main()
