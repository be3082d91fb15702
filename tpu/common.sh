# shellcheck shell=bash
# Sourced by every tpu/*.sh script: the flags they share, the gcloud wrapper (with --dry_run), shell quoting,
# and the small shell programs that run on the TPU workers.
#
# Written for bash 3.2 too (macOS's /bin/bash): no associative arrays, and empty arrays are expanded as
# ${a[@]+"${a[@]}"} because `set -u` calls "${a[@]}" of an empty array unbound before bash 4.4.
#
# The remote snippets below are single-quoted on purpose: they are expanded by the worker's shell, not here
# (SC2016); the variables set here are read by the scripts that source this file (SC2034).
# shellcheck disable=SC2016,SC2034

TPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TPU_SCRIPT=$(basename "$0")

TPU_PROJECT=${TPU_PROJECT:-}
TPU_ZONE=${TPU_ZONE:-}
TPU_ACCELERATOR_TYPE=${TPU_ACCELERATOR_TYPE:-v4-8}
TPU_NAME=${TPU_NAME:-musicgpt}
TPU_QUEUED=${TPU_QUEUED:-0}
TPU_DRY_RUN=0
TPU_SHIFT=1

# Where the project lives on each worker, as the worker's shell spells it. Fixed, so that every script (and a
# person with ssh) finds it.
TPU_REMOTE_DIR='$HOME/musicgpt'

# A usage error: one line on stderr, exit 2.
tpu_die() {
  echo "$TPU_SCRIPT: $*" >&2
  exit 2
}

# A failure at run time: one line on stderr, exit 1.
tpu_fail() {
  echo "$TPU_SCRIPT: $*" >&2
  exit 1
}

# tpu_take_value "$@": the value of the flag in $1, given as `--flag=value` or `--flag value`, into REPLY;
# the number of words used into TPU_SHIFT.
tpu_take_value() {
  case $1 in
    *=*)
      REPLY=${1#*=}
      TPU_SHIFT=1
      ;;
    *)
      if [ $# -lt 2 ] || [ "${2#--}" != "$2" ]; then
        tpu_die "$1 needs a value"
      fi
      REPLY=$2
      TPU_SHIFT=2
      ;;
  esac
}

# tpu_common_flag "$@": takes one of the flags that every script accepts; returns 1 if $1 is not one.
tpu_common_flag() {
  TPU_SHIFT=1
  case $1 in
    --project | --project=*) tpu_take_value "$@" && TPU_PROJECT=$REPLY ;;
    --zone | --zone=*) tpu_take_value "$@" && TPU_ZONE=$REPLY ;;
    --accelerator_type | --accelerator_type=*) tpu_take_value "$@" && TPU_ACCELERATOR_TYPE=$REPLY ;;
    --name | --name=*) tpu_take_value "$@" && TPU_NAME=$REPLY ;;
    --queued) TPU_QUEUED=1 ;;
    --dry_run) TPU_DRY_RUN=1 ;;
    -h | --help)
      printf '%s\n' "$USAGE"
      exit 0
      ;;
    *) return 1 ;;
  esac
}

# Call after parsing: project and zone are required, the rest has defaults.
tpu_require_target() {
  [ -n "$TPU_PROJECT" ] || tpu_die "no project: pass --project or set TPU_PROJECT"
  [ -n "$TPU_ZONE" ] || tpu_die "no zone: pass --zone or set TPU_ZONE"
  [ -n "$TPU_NAME" ] || tpu_die "empty name: pass --name or set TPU_NAME"
  TPU_LOCATION=("--zone=$TPU_ZONE" "--project=$TPU_PROJECT")
}

# The flags that hand the same target to another tpu/*.sh script.
tpu_target_flags() {
  TPU_TARGET_FLAGS=(--project "$TPU_PROJECT" --zone "$TPU_ZONE" --accelerator_type "$TPU_ACCELERATOR_TYPE"
    --name "$TPU_NAME")
  if [ "$TPU_QUEUED" = 1 ]; then TPU_TARGET_FLAGS+=(--queued); fi
  if [ "$TPU_DRY_RUN" = 1 ]; then TPU_TARGET_FLAGS+=(--dry_run); fi
}

# One word, quoted for a POSIX shell only when it needs to be (the same rule as Python's shlex.quote): in
# single quotes, each ' written as '\''. A loop, not ${1//...}: how that treats quotes in the replacement
# differs between bash versions.
tpu_quote() {
  if [[ -n $1 && $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
    return
  fi
  local rest=$1 quoted="" q="'"
  while [[ $rest == *"$q"* ]]; do
    quoted=$quoted${rest%%"$q"*}$q\\$q$q
    rest=${rest#*"$q"}
  done
  printf "'%s'" "$quoted$rest"
}

# Words, each quoted, joined by spaces, on one line.
tpu_quote_words() {
  local line="" word
  for word in "$@"; do
    line="$line${line:+ }$(tpu_quote "$word")"
  done
  printf '%s\n' "$line"
}

# Runs gcloud (the first on PATH) with these arguments; under --dry_run prints the command instead, one
# line, shell-quoted. Otherwise the command is echoed to stderr first, so logs show what ran.
tpu_gcloud() {
  if [ "$TPU_DRY_RUN" = 1 ]; then
    tpu_quote_words gcloud "$@"
    return 0
  fi
  echo "+ $(tpu_quote_words gcloud "$@")" >&2
  gcloud "$@"
}

# tpu_ssh WORKER COMMAND: runs COMMAND with the worker's login shell, on one worker (0, 1, ...) or all.
# --quiet: no prompts (e.g. for an ssh key's passphrase), so that the relaunch loop never waits on a person.
tpu_ssh() {
  tpu_gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${TPU_LOCATION[@]}" "--worker=$1" --quiet "--command=$2"
}

# tpu_describe_state: prints the state of the TPU VM (READY, PREEMPTED, ...) or, with --queued, of the queued
# resource (ACTIVE, SUSPENDED, ...); MISSING when there is none. Returns 1 (gcloud's message on stderr) if
# gcloud fails for another reason.
tpu_describe_state() {
  local kind=tpu-vm field='value(state)' out rc=0 err
  if [ "$TPU_QUEUED" = 1 ]; then
    kind=queued-resources
    field='value(state.state)'
  fi
  if [ "$TPU_DRY_RUN" = 1 ]; then
    tpu_gcloud compute tpus "$kind" describe "$TPU_NAME" "${TPU_LOCATION[@]}" "--format=$field"
    return 0
  fi
  err=$(mktemp)
  out=$(gcloud compute tpus "$kind" describe "$TPU_NAME" "${TPU_LOCATION[@]}" "--format=$field" 2>"$err") ||
    rc=$?
  if [ "$rc" = 0 ]; then
    rm -f "$err"
    printf '%s\n' "${out:-UNKNOWN}"
  elif grep -q 'NOT_FOUND' "$err"; then
    rm -f "$err"
    echo MISSING
  else
    cat "$err" >&2
    rm -f "$err"
    return 1
  fi
}

# On a worker: its number (0, 1, ...) in $id, from the metadata server as JAX itself reads it.
TPU_REMOTE_WORKER_ID='id=$(curl -sf -H Metadata-Flavor:Google '\
'http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'

# On a worker: `alive SID` succeeds while a process of session SID (train.sh starts each run in its own) is
# alive, zombies aside: kill -0 would count a finished process that nobody has reaped yet.
TPU_REMOTE_ALIVE='alive() { ps -o stat= --sid "$1" 2>/dev/null | grep -qv "^Z"; }'

# On a worker: one line `worker ID: STATE` where STATE is
#   not-set-up  setup.sh has not finished there,
#   running     train.sh's process is alive,
#   exited N    train.py ended with exit status N (0: training finished),
#   idle        set up, but no training started (or it was killed without a trace).
# Per worker, train.sh keeps logs/train.worker$id.{log,pid,exit} in the project directory. Alive is asked before
# the .exit file is read: the other order says idle for a run that ends between the two looks (the wrapper writes
# .exit before it ends, so once nothing is alive, the file is there if train.py ended).
TPU_REMOTE_PROBE="cd $TPU_REMOTE_DIR 2>/dev/null; $TPU_REMOTE_WORKER_ID; $TPU_REMOTE_ALIVE"
TPU_REMOTE_PROBE+='; p=logs/train.worker$id; if [ ! -f .venv/.setup-done ]; then s=not-set-up;'
TPU_REMOTE_PROBE+=' elif alive "$(cat $p.pid 2>/dev/null)"; then s=running;'
TPU_REMOTE_PROBE+=' elif [ -f $p.exit ]; then s="exited $(cat $p.exit)"; else s=idle; fi;'
TPU_REMOTE_PROBE+=' echo "worker $id: $s"'
