#!/usr/bin/env bash
# Deletes the TPU VM (or, with --queued, the queued resource and its node). Data in GCS stays.
set -euo pipefail
USAGE="Usage: tpu/teardown.sh [--project P] [--zone Z] [--name N] [--queued] [--dry_run]

Deletes the TPU VM N (default musicgpt) without asking, or with --queued the queued resource N together with
its node (--force). Checkpoints and logs in gs:// are untouched; files on the workers are lost.

Environment: TPU_PROJECT, TPU_ZONE, TPU_NAME, TPU_QUEUED=1 stand in for the flags.
--dry_run prints the gcloud command instead of running it."
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while [ $# -gt 0 ]; do
  tpu_common_flag "$@" || tpu_die "unknown flag $1 (see --help)"
  shift "$TPU_SHIFT"
done
tpu_require_target

if [ "$TPU_QUEUED" = 1 ]; then
  tpu_gcloud compute tpus queued-resources delete "$TPU_NAME" "${TPU_LOCATION[@]}" --force --quiet
else
  tpu_gcloud compute tpus tpu-vm delete "$TPU_NAME" "${TPU_LOCATION[@]}" --quiet
fi
