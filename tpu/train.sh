#!/usr/bin/env bash
# Starts train.py on every worker of the TPU VM, in the background, logging to a file per worker.
# The remote command is mostly single-quoted on purpose: the worker's shell expands it, not this one.
# shellcheck disable=SC2016
set -euo pipefail
USAGE="Usage: tpu/train.sh [--project P] [--zone Z] [--name N] [--bucket B] [--config PRESET] [--data_dir DIR]
                     [--workdir gs://...] [--dry_run] [-- TRAIN_PY_FLAGS...]

On every worker of TPU VM N, in ~/musicgpt, starts in the background (setsid nohup):
  .venv/bin/python -u train.py --config PRESET --data_dir DIR --workdir WORKDIR TRAIN_PY_FLAGS...
PRESET defaults to maestro, DIR (the prepared records) to gs://B/data, WORKDIR to gs://B/runs/N. The workdir
must be in GCS: the workers' disks vanish with a preempted VM, and all hosts must see the same checkpoints.
train.py resumes from WORKDIR/checkpoints by itself, so running this again continues the run. On TPU VMs
every host finds the others by itself (jax.distributed.initialize() needs no flags).

Each worker writes ~/musicgpt/logs/train.worker\$ID.log (appended), .pid (the process group) and, when
train.py ends, .exit (its exit status). A training process already running there is stopped first (SIGTERM
to its group, which checkpoints; SIGKILL after 120 s).

Environment: TPU_PROJECT, TPU_ZONE, TPU_NAME, TPU_BUCKET stand in for the flags.
--dry_run prints the gcloud command instead of running it."
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bucket=${TPU_BUCKET:-}
config=maestro
data_dir=""
workdir=""
train_flags=()
while [ $# -gt 0 ]; do
  TPU_SHIFT=1
  case $1 in
    --bucket | --bucket=*) tpu_take_value "$@" && bucket=$REPLY ;;
    --config | --config=*) tpu_take_value "$@" && config=$REPLY ;;
    --data_dir | --data_dir=*) tpu_take_value "$@" && data_dir=$REPLY ;;
    --workdir | --workdir=*) tpu_take_value "$@" && workdir=$REPLY ;;
    --)
      shift
      train_flags=("$@")
      break
      ;;
    *) tpu_common_flag "$@" || tpu_die "unknown flag $1 (see --help)" ;;
  esac
  shift "$TPU_SHIFT"
done
tpu_require_target
bucket=${bucket#gs://}
bucket=${bucket%/}
if [ -z "$workdir" ] || [ -z "$data_dir" ]; then
  [ -n "$bucket" ] || tpu_die "no bucket: pass --bucket or set TPU_BUCKET (or both --data_dir and --workdir)"
fi
data_dir=${data_dir:-gs://$bucket/data}
workdir=${workdir:-gs://$bucket/runs/$TPU_NAME}
case $workdir in
  gs://?*) ;;
  *) tpu_die "--workdir $workdir is not a gs:// path (worker disks vanish with a preempted VM)" ;;
esac

train=$(tpu_quote_words .venv/bin/python -u train.py --config "$config" --data_dir "$data_dir" \
  --workdir "$workdir" ${train_flags[@]+"${train_flags[@]}"})
# The wrapper records train.py's exit status in the file named by its $1. setsid makes it lead its own
# session and process group, whose id goes to the .pid file, so that stopping the group reaches train.py.
wrapper="$train; echo \$? > \"\$1\""

remote="cd $TPU_REMOTE_DIR && mkdir -p logs && $TPU_REMOTE_WORKER_ID && $TPU_REMOTE_ALIVE"
remote+=' && p=logs/train.worker$id && old=$(cat $p.pid 2>/dev/null || true)'
remote+=' && if [ -n "$old" ] && alive "$old"; then kill -TERM -- "-$old";'
remote+=' for _ in $(seq 120); do alive "$old" || break; sleep 1; done;'
remote+=' kill -KILL -- "-$old" 2>/dev/null || true; fi'
remote+=' && rm -f $p.exit && echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) train.sh starts train.py" >> $p.log'
remote+=" && { setsid nohup bash -c $(tpu_quote "$wrapper") wrapper \$p.exit >> \$p.log 2>&1 < /dev/null &"
remote+=' echo $! > $p.pid; } && echo "worker $id: started, log in '"$TPU_REMOTE_DIR"'/$p.log"'
tpu_ssh all "$remote"
