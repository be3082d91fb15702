#!/usr/bin/env bash
# Runs sample.py on worker 0 of the TPU VM and copies the samples back here.
set -euo pipefail
USAGE="Usage: tpu/sample.sh [--project P] [--zone Z] [--name N] [--bucket B] [--workdir gs://...] [--out DIR]
                      [--worker 0|all] [--dry_run] [-- SAMPLE_PY_FLAGS...]

On worker 0 of TPU VM N, in ~/musicgpt, runs
  .venv/bin/python sample.py --workdir WORKDIR --out samples/N SAMPLE_PY_FLAGS...
(WORKDIR defaults to gs://B/runs/N, the run tpu/train.sh writes), then copies samples/N from the worker into
DIR (default samples), so the files land in DIR/N. On a slice with more than one host (v4-16, v5litepod-16,
... and up) JAX needs every host in the program: pass --worker all (samples are still fetched from worker 0).

Environment: TPU_PROJECT, TPU_ZONE, TPU_NAME, TPU_BUCKET stand in for the flags.
--dry_run prints the gcloud commands instead of running them."
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bucket=${TPU_BUCKET:-}
workdir=""
out=samples
worker=0
sample_flags=()
while [ $# -gt 0 ]; do
  TPU_SHIFT=1
  case $1 in
    --bucket | --bucket=*) tpu_take_value "$@" && bucket=$REPLY ;;
    --workdir | --workdir=*) tpu_take_value "$@" && workdir=$REPLY ;;
    --out | --out=*) tpu_take_value "$@" && out=$REPLY ;;
    --worker | --worker=*) tpu_take_value "$@" && worker=$REPLY ;;
    --)
      shift
      sample_flags=("$@")
      break
      ;;
    *) tpu_common_flag "$@" || tpu_die "unknown flag $1 (see --help)" ;;
  esac
  shift "$TPU_SHIFT"
done
tpu_require_target
case $worker in
  0 | all) ;;
  *) tpu_die "--worker must be 0 or all, not $worker" ;;
esac
bucket=${bucket#gs://}
bucket=${bucket%/}
if [ -z "$workdir" ]; then
  [ -n "$bucket" ] || tpu_die "no bucket: pass --bucket or set TPU_BUCKET (or --workdir)"
  workdir=gs://$bucket/runs/$TPU_NAME
fi

remote_out=samples/$TPU_NAME
sample=$(tpu_quote_words .venv/bin/python sample.py --workdir "$workdir" --out "$remote_out" \
  ${sample_flags[@]+"${sample_flags[@]}"})
tpu_ssh "$worker" "cd $TPU_REMOTE_DIR && rm -rf $(tpu_quote "$remote_out") && $sample"
if [ "$TPU_DRY_RUN" = 0 ]; then mkdir -p "$out"; fi
tpu_gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:musicgpt/$remote_out" "$out" "${TPU_LOCATION[@]}" \
  --worker=0 --quiet
if [ "$TPU_DRY_RUN" = 0 ]; then echo "samples in $out/$TPU_NAME"; fi
