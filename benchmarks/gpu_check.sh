#!/usr/bin/env bash
# The GPU-only checks in one short run (about 5 minutes on an H200 before the maestro check; at most 16 by the limits):
#   1. the card and the JAX version;
#   2. the bf16 train step computes the float32 step's function, with XLA and with cuDNN flash attention;
#   3. MFU of the `base` preset in bf16 at its own batch (128 x 1024 frames): as the preset is (full remat, layer
#      scan, cuDNN attention); the fastest variant measured on 2026-11-30 (47.4% on an H200: remat keeping the
#      projections' outputs, no dropout, unrolled layers); and two candidates not measured yet (keeping every dot's
#      output; no remat at all, unrolled). docs/PERFORMANCE.md has the earlier variants (XLA attention: 18%);
#      each variant is its own train_speed.py run (--config.SECTION.FIELD=VALUE overrides apply to the whole run);
#   4. the `maestro` preset as it is (bf16, 128 x 1024 frames, dynamics), its scheduled sampling on from the first
#      step, so that the timed steps draw the model's own samples as every step after step 1,000 does;
#   5. decode speed of a base-sized model (12 layers, d_model 768, 1024-frame window).
# Usage (on a machine with an NVIDIA GPU and jax[cuda], flax, optax installed):
#   bash benchmarks/gpu_check.sh            # log also written to $OUT/gpu_check.log when OUT is set
# Needs none of pretty_midi / tensorflow-datasets / grain: the model and step code do not import them.
# Each check runs under its own time limit; one failing check does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG=${OUT:-/tmp}/gpu_check.log
: >"$LOG"

check() {  # check SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  echo "=== $what" | tee -a "$LOG"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v -e '^W0000' -e '^I0000' | tee -a "$LOG"
  echo "=== $what: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s" | tee -a "$LOG"
}

speed() {  # speed SECONDS PRESET [--config.SECTION.FIELD=VALUE...]: one train_speed.py run, the preset's own batch
  local limit=$1 preset=$2
  shift 2
  check "$limit" "$preset, bf16, its own batch${*:+: $*}" "$PY" benchmarks/train_speed.py \
    --batch_size 0 --dtype bfloat16 --steps 6 --presets "$preset" "$@"
}

check 20 "card" nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
check 60 "jax" "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())"
check 150 "bf16 step vs float32" "$PY" benchmarks/gpu_consistency.py --steps 20
speed 120 base
speed 120 base --config.model.remat_policy=dots_with_no_batch_dims_saveable --config.model.dropout=0 \
  --config.model.scan_layers=false
speed 120 base --config.model.remat_policy=dots_saveable --config.model.dropout=0 --config.model.scan_layers=false
speed 120 base --config.model.remat=false --config.model.dropout=0 --config.model.scan_layers=false
speed 120 maestro --config.train.scheduled_sampling_start=0  # the step after its start: own samples drawn
check 110 "decode, base-sized model" "$PY" benchmarks/decode_speed.py --d_model 768 --num_layers 12 --num_heads 12 \
  --max_len 1024 --frames 1024
echo "=== summary" | tee -a "$LOG"
grep -E '^(device|variant|base|maestro|bf16|bfloat16|float32|consistency|per-frame|1024 frames|generate|===.*exit)' "$LOG"
