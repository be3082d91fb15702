#!/usr/bin/env bash
# Creates the TPU VM (or, with --queued, a queued resource that becomes one when capacity is free).
set -euo pipefail
USAGE="Usage: tpu/create.sh [--project P] [--zone Z] [--accelerator_type T] [--name N] [--queued] [--spot]
                      [--runtime_version V] [--dry_run] [-- EXTRA_GCLOUD_FLAGS...]

Creates a Cloud TPU VM named N (default musicgpt) of type T (default v4-8) in zone Z of project P, or with
--queued a queued resource N whose node is also called N. --spot asks for a Spot VM (cheap, can be preempted:
see tpu/relaunch.sh). The runtime version defaults to the one Google recommends for JAX on that TPU
generation: v2-alpha-tpuv6e (v6e), v2-alpha-tpuv5 (v5p), v2-alpha-tpuv5-lite (v5e), tpu-ubuntu2204-base
(v4 and older). Words after -- go to gcloud as they are (e.g. -- --network=N --reserved).

Environment: TPU_PROJECT, TPU_ZONE, TPU_ACCELERATOR_TYPE, TPU_NAME, TPU_QUEUED=1 stand in for the flags.
--dry_run prints the gcloud command instead of running it."
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# The TPU software version Google documents for JAX on each generation (cloud.google.com/tpu/docs/runtimes).
default_runtime_version() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

spot=0
runtime_version=""
extra=()
while [ $# -gt 0 ]; do
  TPU_SHIFT=1
  case $1 in
    --spot) spot=1 ;;
    --runtime_version | --runtime_version=*) tpu_take_value "$@" && runtime_version=$REPLY ;;
    --)
      shift
      extra=("$@")
      break
      ;;
    *) tpu_common_flag "$@" || tpu_die "unknown flag $1 (see --help)" ;;
  esac
  shift "$TPU_SHIFT"
done
tpu_require_target
runtime_version=${runtime_version:-$(default_runtime_version "$TPU_ACCELERATOR_TYPE")}

if [ "$TPU_QUEUED" = 1 ]; then
  args=(compute tpus queued-resources create "$TPU_NAME" "--node-id=$TPU_NAME" "${TPU_LOCATION[@]}"
    "--accelerator-type=$TPU_ACCELERATOR_TYPE" "--runtime-version=$runtime_version")
else
  args=(compute tpus tpu-vm create "$TPU_NAME" "${TPU_LOCATION[@]}"
    "--accelerator-type=$TPU_ACCELERATOR_TYPE" "--version=$runtime_version")
fi
if [ "$spot" = 1 ]; then args+=(--spot); fi
tpu_gcloud "${args[@]}" ${extra[@]+"${extra[@]}"}
