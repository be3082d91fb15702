#!/usr/bin/env bash
# Shows the state of the TPU VM and, when it is up, what each worker is doing and the end of its log.
set -euo pipefail
USAGE="Usage: tpu/status.sh [--project P] [--zone Z] [--name N] [--queued] [--lines K] [--dry_run]

Prints 'N: STATE' (the TPU VM's state, or with --queued the queued resource's), then, if it is READY/ACTIVE,
for each worker a line 'worker ID: not-set-up | running | exited STATUS | idle' and the last K lines
(default 5) of its training log. 'exited 0' on every worker means training finished.

Environment: TPU_PROJECT, TPU_ZONE, TPU_NAME, TPU_QUEUED=1 stand in for the flags.
--dry_run prints the gcloud commands instead of running them."
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

lines=5
while [ $# -gt 0 ]; do
  TPU_SHIFT=1
  case $1 in
    --lines | --lines=*) tpu_take_value "$@" && lines=$REPLY ;;
    *) tpu_common_flag "$@" || tpu_die "unknown flag $1 (see --help)" ;;
  esac
  shift "$TPU_SHIFT"
done
tpu_require_target
[[ $lines =~ ^[0-9]+$ ]] || tpu_die "--lines must be a number, not $lines"

state=$(tpu_describe_state) || tpu_fail "could not read the state of $TPU_NAME (gcloud's message above)"
if [ "$TPU_DRY_RUN" = 1 ]; then
  printf '%s\n' "$state"
  state=READY
else
  echo "$TPU_NAME: $state"
fi
case $state in
  READY | ACTIVE)
    # Each worker prints its block in one write, so that blocks of different workers do not interleave.
    block="\$($TPU_REMOTE_PROBE; tail -n $lines \$p.log 2>/dev/null | sed 's/^/    /')"
    tpu_ssh all "block=$block; printf '%s\\n' \"\$block\""
    ;;
esac
