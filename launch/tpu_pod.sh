#!/usr/bin/env bash
# Runs one alignjax experiment on a Cloud TPU VM pod slice: every worker runs the same
# `python3 -m alignjax.main ... --distributed`, and jax.distributed.initialize() finds the others.
#
#   launch/tpu_pod.sh [OPTIONS] [-- MAIN_ARGS...]
#   launch/tpu_pod.sh --dry_run                      # print every command for the defaults
#   launch/tpu_pod.sh --name=dpo --accelerator_type=v5litepod-16 -- \
#       --config=experiments/dpo.py:model=small --workdir=/mnt/alignjax/dpo_small
#
# Steps: (1) create the TPU VM unless one of that name exists (reuse); (2) pack this checkout
# (working tree, without .git), copy it to every worker, install it with jax[tpu], and mount the
# GCS bucket with gcsfuse at /mnt/alignjax on every worker; (3) run the experiment on all workers
# (--worker=all); (4) tear down: delete (default), stop, or keep the VM. The teardown runs even if
# the experiment fails, and the script exits with the experiment's status.
#
# The workdir must be one directory that every worker sees (orbax writes one checkpoint from all
# processes; process 0 writes metrics.jsonl and summary.json): put it under /mnt/alignjax, the
# mounted bucket (which must exist). Starting points trained on demand (`experiment:` specs) are
# cached there too (ALIGNJAX_CACHE=/mnt/alignjax/cache). Re-running the same command resumes.
#
# Options (default):
#   --name=NAME                TPU VM name (alignjax)
#   --zone=ZONE                (us-central2-b)
#   --project=PROJECT          (gcloud's configured project)
#   --accelerator_type=TYPE    (v4-32: 4 workers of 4 chips)
#   --version=IMAGE            TPU VM software version (tpu-ubuntu2204-base)
#   --spot                     create a Spot VM (preemptible; the run resumes when re-run)
#   --bucket=BUCKET            GCS bucket mounted at /mnt/alignjax (alignjax-runs)
#   --code_dir=DIR             where the code goes on each worker, relative to home (alignjax)
#   --teardown=delete|stop|keep  after the run (delete)
#   --dry_run                  print every command; run nothing
# MAIN_ARGS default: --config=experiments/sft.py:model=small --workdir=/mnt/alignjax/NAME/sft_small
set -euo pipefail

name=alignjax
zone=us-central2-b
project=''
accelerator_type=v4-32
version='tpu-ubuntu2204-base'
spot=0
bucket=alignjax-runs
code_dir=alignjax
teardown=delete
dry_run=0
main_args=()

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator_type=*) accelerator_type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --spot) spot=1 ;;
    --bucket=*) bucket="${1#*=}" ;;
    --code_dir=*) code_dir="${1#*=}" ;;
    --teardown=*) teardown="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    --) shift; main_args=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

case "$teardown" in
  delete|stop|keep) ;;
  *) echo "tpu_pod.sh: --teardown must be delete, stop or keep, got '$teardown'" >&2; exit 2 ;;
esac
if [[ ${#main_args[@]} -eq 0 ]]; then
  main_args=(--config=experiments/sft.py:model=small "--workdir=/mnt/alignjax/${name}/sft_small")
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tarball="/tmp/alignjax-${name}.tar.gz"
where=(--zone="$zone")
if [[ -n "$project" ]]; then
  where+=(--project="$project")
fi
tpu=(gcloud compute tpus tpu-vm)

# Prints a command, shell-quoted, then runs it (unless --dry_run).
run() {
  local quoted
  printf -v quoted '%q ' "$@"
  echo "+ ${quoted% }"
  if [[ $dry_run -eq 0 ]]; then
    "$@"
  fi
}

# 1. Create or reuse.
echo "# 1. create the TPU VM unless it exists"
echo "+ ${tpu[*]} describe $name ${where[*]}  (exists? then reuse it)"
if [[ $dry_run -eq 1 ]] || ! "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator_type"
          --version="$version")
  if [[ $spot -eq 1 ]]; then
    create+=(--spot)
  fi
  run "${create[@]}"
else
  echo "# $name exists: reusing it"
fi

# 2. Code and storage on every worker.
echo "# 2. copy and install the code, mount gs://$bucket at /mnt/alignjax, on every worker"
run tar -czf "$tarball" --exclude=.git --exclude='*.pyc' --exclude=__pycache__ -C "$repo" .
run "${tpu[@]}" scp "$tarball" "$name:alignjax.tar.gz" --worker=all "${where[@]}"
# shellcheck disable=SC2016  # $(...) and $USER expand on the workers, not here.
mount_bucket='if ! command -v gcsfuse >/dev/null; then
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
sudo mkdir -p /mnt/alignjax && sudo chown "$USER" /mnt/alignjax
mountpoint -q /mnt/alignjax || gcsfuse --implicit-dirs '"$bucket"' /mnt/alignjax'
install="set -e
rm -rf ~/$code_dir && mkdir -p ~/$code_dir && tar -xzf ~/alignjax.tar.gz -C ~/$code_dir
python3 -m pip install -q -U 'jax[tpu]' -e ~/$code_dir
$mount_bucket"
run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command="$install"

# 3. The same command on every worker.
echo "# 3. run on all workers"
printf -v quoted_args '%q ' "${main_args[@]}"
experiment="cd ~/$code_dir && ALIGNJAX_CACHE=/mnt/alignjax/cache python3 -m alignjax.main --distributed ${quoted_args% }"
status=0
run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command="$experiment" || status=$?

# 4. Teardown, whatever the run's outcome.
echo "# 4. teardown ($teardown)"
case "$teardown" in
  delete) run "${tpu[@]}" delete "$name" "${where[@]}" --quiet ;;
  stop) run "${tpu[@]}" stop "$name" "${where[@]}" ;;
  keep) echo "# keeping $name; delete it with: ${tpu[*]} delete $name ${where[*]} --quiet" ;;
esac
exit "$status"
