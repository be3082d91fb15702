#!/usr/bin/env bash
# The GPU-only checks in one short run: the card, a bf16 train step and MFU of the `base` preset, decode speed.
# Usage (on a machine with an NVIDIA GPU and jax[cuda], flax, optax, orbax installed):
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.log
# Needs none of pretty_midi / tensorflow-datasets / grain: the model and step code do not import them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
# bf16 train step of `base` at its own batch (128 x 1024 frames): FLOP rate vs the card's bf16 peak (goal >= 50%).
"$PY" benchmarks/train_speed.py --presets base --batch_size 0 --dtype bfloat16 --steps 10
"$PY" benchmarks/decode_speed.py
