#!/usr/bin/env bash
# Puts the project on every worker of the TPU VM and installs it with JAX for TPU, in a virtual environment.
set -euo pipefail
USAGE="Usage: tpu/setup.sh [--project P] [--zone Z] [--name N] [--repo URL [--ref REF]] [--python VERSION]
                     [--data_from gs://...] [--dry_run]

On every worker of TPU VM N: copies this working tree (tracked files and untracked ones that git does not
ignore, packed here and sent with gcloud scp) or, with --repo, clones URL and checks out REF (default: the
remote's default branch) into ~/musicgpt; creates ~/musicgpt/.venv with Python VERSION (default 3.12; the
TPU images ship 3.10, so uv fetches it) and runs pip install -e \".[tpu]\" there (JAX for TPU and the
cloud extra: gcsfs and google-cloud-storage, so that gs:// records, checkpoints and logs work). Safe to run again:
the code is refreshed, the environment reused. --data_from copies prepared records (what data/prepare.py
writes to data/records) from GCS to ~/musicgpt/data/records on every worker (gcloud storage rsync), for
tpu/train.sh --data_dir data/records: the way to go if the data loader cannot read gs:// directly.

Environment: TPU_PROJECT, TPU_ZONE, TPU_NAME stand in for the flags.
--dry_run prints the gcloud commands instead of running them."
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

repo=""
ref=HEAD
python_version=3.12
data_from=""
while [ $# -gt 0 ]; do
  TPU_SHIFT=1
  case $1 in
    --repo | --repo=*) tpu_take_value "$@" && repo=$REPLY ;;
    --ref | --ref=*) tpu_take_value "$@" && ref=$REPLY ;;
    --python | --python=*) tpu_take_value "$@" && python_version=$REPLY ;;
    --data_from | --data_from=*) tpu_take_value "$@" && data_from=$REPLY ;;
    *) tpu_common_flag "$@" || tpu_die "unknown flag $1 (see --help)" ;;
  esac
  shift "$TPU_SHIFT"
done
tpu_require_target

dir=$TPU_REMOTE_DIR
if [ -n "$repo" ]; then
  fetch="{ [ -d $dir/.git ] || git clone --quiet $(tpu_quote "$repo") $dir; }"
  fetch+=" && git -C $dir fetch --quiet origin $(tpu_quote "$ref")"
  fetch+=" && git -C $dir checkout --quiet --force FETCH_HEAD"
else
  # The working tree as it is (uncommitted edits included), without .venv, runs/ and other ignored files.
  root=$(git -C "$TPU_DIR/.." rev-parse --show-toplevel 2>/dev/null) ||
    tpu_fail "$TPU_DIR/.. is not a git checkout; pass --repo URL to clone instead"
  if [ "$TPU_DRY_RUN" = 1 ]; then
    tarball=${TMPDIR:-/tmp}/musicgpt.XXXXXX/musicgpt.tar.gz # made only when it runs
  else
    tarball=$(mktemp -d)/musicgpt.tar.gz
    trap 'rm -rf "$(dirname "$tarball")"' EXIT
    (
      cd "$root"
      # Files deleted but not yet committed are still listed by git; tar must not look for them.
      git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
        COPYFILE_DISABLE=1 tar -czf "$tarball" --null -T -
    )
  fi
  tpu_gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:musicgpt.tar.gz" "${TPU_LOCATION[@]}" \
    --worker=all --quiet
  fetch="mkdir -p $dir && tar -xzf \$HOME/musicgpt.tar.gz -C $dir && rm -f \$HOME/musicgpt.tar.gz"
fi

# uv brings its own Python builds, so the version does not depend on the TPU image's Ubuntu. The marker
# file .venv/.setup-done tells train.sh, status.sh and relaunch.sh that this worker is ready.
uv="\$HOME/.local/bin/uv"
install="{ [ -x $uv ] || curl -LsSf https://astral.sh/uv/install.sh"
install+=" | env UV_UNMANAGED_INSTALL=\$HOME/.local/bin sh; }"
install+=" && cd $dir && rm -f .venv/.setup-done"
install+=" && { [ -x .venv/bin/python ]"
install+=" || $uv venv --quiet --seed --python $(tpu_quote "$python_version") .venv; }"
install+=" && .venv/bin/python -m pip install --quiet --upgrade pip"
install+=" && .venv/bin/python -m pip install --quiet -e \".[tpu]\""
if [ -n "$data_from" ]; then
  install+=" && mkdir -p data/records"
  install+=" && gcloud storage rsync --recursive $(tpu_quote "$data_from") data/records"
fi
install+=" && touch .venv/.setup-done"
install+=" && echo \"\$(hostname): set up, \$(.venv/bin/python --version)\""
tpu_ssh all "$fetch && $install"
