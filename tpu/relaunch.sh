#!/usr/bin/env bash
# Keeps a training run alive on a preemptible TPU: creates the VM if needed, recreates it after preemption,
# sets it up and (re)starts train.sh, until training finishes or the restarts run out.
set -euo pipefail
USAGE="Usage: tpu/relaunch.sh [--project P] [--zone Z] [--accelerator_type T] [--name N] [--queued] [--spot]
                        [--runtime_version V] [--repo URL] [--ref REF] [--python VERSION]
                        [--data_from gs://...]
                        [--bucket B] [--config PRESET] [--data_dir DIR] [--workdir gs://...]
                        [--max_restarts K] [--poll_seconds S] [--teardown_when_done] [--dry_run]
                        [-- TRAIN_PY_FLAGS...]

Every S seconds (default 60) reads the state of TPU VM N (with --queued, of queued resource N) and acts:
  does not exist (first look only)      create.sh, then as below
  PREEMPTED, TERMINATED (VM),
  FAILED, SUSPENDED (queued resource)   teardown.sh, create.sh (counts as a restart)
  READY, ACTIVE                         asks every worker (see status.sh):
      a worker not set up                 setup.sh, then train.sh
      a worker exited non-zero, or idle   train.sh again (counts as a restart)
      otherwise some still running        nothing
      every worker exited 0               training finished: stop (exit 0; --teardown_when_done deletes N)
  anything else (CREATING, WAITING_FOR_RESOURCES, PROVISIONING, ...)   waits
train.py resumes from the last checkpoint in the workdir by itself, so a restart loses at most the steps
after that checkpoint. Stops with exit 1 after more than K restarts (default 20), when N disappears while
watched (someone ran teardown.sh), or after 10 failed polls in a row. The flags of create.sh, setup.sh
and train.sh, and words after --, are handed to them. --dry_run prints the commands of one poll and of a
recovery, and stops.

Environment: TPU_PROJECT, TPU_ZONE, TPU_ACCELERATOR_TYPE, TPU_NAME, TPU_QUEUED=1, TPU_BUCKET stand in for
the flags. Run it where it can outlive your terminal, e.g. nohup tpu/relaunch.sh ... > relaunch.log 2>&1 &"
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

create_flags=()
setup_flags=()
train_flags=()
train_py_flags=()
max_restarts=20
poll_seconds=60
teardown_when_done=0
while [ $# -gt 0 ]; do
  TPU_SHIFT=1
  case $1 in
    --spot) create_flags+=(--spot) ;;
    --runtime_version | --runtime_version=*)
      tpu_take_value "$@" && create_flags+=(--runtime_version "$REPLY")
      ;;
    --repo | --repo=* | --ref | --ref=* | --python | --python=* | --data_from | --data_from=*)
      tpu_take_value "$@" && setup_flags+=("${1%%=*}" "$REPLY")
      ;;
    --bucket | --bucket=* | --config | --config=* | --data_dir | --data_dir=* | --workdir | --workdir=*)
      tpu_take_value "$@" && train_flags+=("${1%%=*}" "$REPLY")
      ;;
    --max_restarts | --max_restarts=*) tpu_take_value "$@" && max_restarts=$REPLY ;;
    --poll_seconds | --poll_seconds=*) tpu_take_value "$@" && poll_seconds=$REPLY ;;
    --teardown_when_done) teardown_when_done=1 ;;
    --)
      shift
      train_py_flags=(-- "$@")
      break
      ;;
    *) tpu_common_flag "$@" || tpu_die "unknown flag $1 (see --help)" ;;
  esac
  shift "$TPU_SHIFT"
done
tpu_require_target
[[ $max_restarts =~ ^[0-9]+$ ]] || tpu_die "--max_restarts must be a number, not $max_restarts"
[[ $poll_seconds =~ ^[0-9]+$ ]] || tpu_die "--poll_seconds must be a number, not $poll_seconds"
tpu_target_flags

say() { echo "[$(date -u +%Y-%m-%dT%H:%M:%SZ)] relaunch: $*"; }

# run_step SCRIPT FLAGS...: runs a sibling script on the same target. The functions below add the flags
# given to them (e.g. --dry_run) before the step's own, and train's `-- TRAIN_PY_FLAGS` last.
run_step() {
  local script=$1
  shift
  "$TPU_DIR/$script" "${TPU_TARGET_FLAGS[@]}" "$@"
}
create() { run_step create.sh "$@" ${create_flags[@]+"${create_flags[@]}"}; }
setup() { run_step setup.sh "$@" ${setup_flags[@]+"${setup_flags[@]}"}; }
train() {
  run_step train.sh "$@" ${train_flags[@]+"${train_flags[@]}"} ${train_py_flags[@]+"${train_py_flags[@]}"}
}
teardown() { run_step teardown.sh; }

# What the workers' probe lines add up to: not-set-up, relaunch, running or finished (see USAGE).
summarize_probe() {
  local lines
  lines=$(printf '%s\n' "$1" | grep -E '^worker [^:]+: ' || true)
  if [ -z "$lines" ]; then
    echo unknown
  elif printf '%s\n' "$lines" | grep -q ': not-set-up$'; then
    echo not-set-up
  elif printf '%s\n' "$lines" | grep -Eq ': (idle|exited [^0].*|exited 0.+)$'; then
    echo relaunch
  elif printf '%s\n' "$lines" | grep -q ': running$'; then
    echo running
  else
    echo finished
  fi
}

if [ "$TPU_DRY_RUN" = 1 ]; then
  tpu_describe_state
  tpu_ssh all "$TPU_REMOTE_PROBE"
  teardown && create && setup && train
  exit 0
fi

# Flags the steps would reject later (no bucket, say) are rejected now, before anything is created.
create --dry_run >/dev/null || exit 2
setup --dry_run >/dev/null || exit 2
train --dry_run >/dev/null || exit 2

restarts=0
errors=0
polls=0
error() {
  errors=$((errors + 1))
  say "$* (failure $errors in a row)"
  if [ "$errors" -ge 10 ]; then
    tpu_fail "10 failures in a row, giving up; $TPU_NAME is left as it is"
  fi
}
restart() {
  restarts=$((restarts + 1))
  if [ "$restarts" -gt "$max_restarts" ]; then
    tpu_fail "$1, but the $max_restarts restarts are used up; giving up (tpu/teardown.sh deletes $TPU_NAME)"
  fi
  say "$1: restart $restarts of $max_restarts"
}

while :; do
  polls=$((polls + 1))
  if [ "$polls" -gt 1 ]; then sleep "$poll_seconds"; fi
  if ! state=$(tpu_describe_state); then
    error "could not read the state of $TPU_NAME"
    continue
  fi
  case $state in
    MISSING)
      if [ "$polls" -gt 1 ]; then
        tpu_fail "$TPU_NAME no longer exists (deleted by someone else?); stopping"
      fi
      say "$TPU_NAME does not exist: creating it"
      create || error "create.sh failed"
      ;;
    PREEMPTED | TERMINATED | FAILED | SUSPENDED)
      restart "$TPU_NAME is $state"
      if teardown && create; then errors=0; else error "recreating $TPU_NAME failed"; fi
      ;;
    READY | ACTIVE)
      if ! probe=$(tpu_ssh all "$TPU_REMOTE_PROBE"); then
        error "could not reach the workers of $TPU_NAME"
        continue
      fi
      summary=$(summarize_probe "$probe")
      case $summary in
        not-set-up)
          say "setting up $TPU_NAME and starting training"
          if setup && train; then errors=0; else error "setup.sh or train.sh failed"; fi
          ;;
        relaunch)
          restart "training is not running on every worker ($(printf '%s' "$probe" | tr '\n' ' '))"
          if train; then errors=0; else error "train.sh failed"; fi
          ;;
        running) errors=0 ;;
        finished)
          say "training finished on every worker of $TPU_NAME"
          if [ "$teardown_when_done" = 1 ]; then
            teardown || tpu_fail "teardown.sh failed; delete $TPU_NAME by hand"
          fi
          exit 0
          ;;
        *) error "the workers of $TPU_NAME answered nothing readable" ;;
      esac
      ;;
    *) say "$TPU_NAME is $state: waiting" ;;
  esac
done
