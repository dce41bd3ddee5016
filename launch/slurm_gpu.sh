#!/usr/bin/env bash
# Runs one alignjax experiment on a Slurm GPU cluster: one task per node, each task a JAX process
# that sees all of its node's GPUs; jax.distributed.initialize() reads Slurm's environment
# (SLURM_JOB_NODELIST, SLURM_NTASKS, SLURM_PROCID), so every task runs the same command.
#
#   launch/slurm_gpu.sh [OPTIONS] [-- MAIN_ARGS...]
#   launch/slurm_gpu.sh --dry_run                    # print the batch script and sbatch command
#   launch/slurm_gpu.sh --nodes=4 --partition=h100 -- \
#       --config=experiments/grpo.py:model=small --workdir=/shared/runs/grpo_small
#
# It writes the batch script to LOG_DIR/JOB_NAME.sbatch and submits it with sbatch. The job cds
# into this checkout (which must be on a filesystem every node mounts, like the workdir: orbax
# writes one checkpoint from all processes), runs SETUP (activate an environment), and starts
# `srun python -m alignjax.main --distributed MAIN_ARGS`. Re-submitting resumes from the workdir.
#
# Options (default):
#   --nodes=N              (2)
#   --gpus_per_node=G      (8)
#   --cpus_per_task=C      (32)
#   --time=HH:MM:SS        (24:00:00)
#   --partition=P          (the cluster's default)
#   --account=A            (the user's default)
#   --job_name=NAME        (alignjax)
#   --log_dir=DIR          batch script and job logs (CHECKOUT/runs/slurm)
#   --setup=COMMAND        run before the experiment on every node (none; e.g. 'source .venv/bin/activate')
#   --dry_run              print the batch script and the sbatch command; submit nothing
# MAIN_ARGS default: --config=experiments/sft.py:model=small --workdir=CHECKOUT/runs/JOB_NAME/sft_small
set -euo pipefail

nodes=2
gpus_per_node=8
cpus_per_task=32
time_limit='24:00:00'
partition=''
account=''
job_name=alignjax
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log_dir="$repo/runs/slurm"
setup=''
dry_run=0
main_args=()

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --gpus_per_node=*) gpus_per_node="${1#*=}" ;;
    --cpus_per_task=*) cpus_per_task="${1#*=}" ;;
    --time=*) time_limit="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --account=*) account="${1#*=}" ;;
    --job_name=*) job_name="${1#*=}" ;;
    --log_dir=*) log_dir="${1#*=}" ;;
    --setup=*) setup="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    --) shift; main_args=("$@"); break ;;
    *) echo "slurm_gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

for number in "$nodes" "$gpus_per_node" "$cpus_per_task"; do
  if ! [[ "$number" =~ ^[1-9][0-9]*$ ]]; then
    echo "slurm_gpu.sh: --nodes, --gpus_per_node and --cpus_per_task take positive integers" >&2
    exit 2
  fi
done
if [[ ${#main_args[@]} -eq 0 ]]; then
  main_args=(--config=experiments/sft.py:model=small "--workdir=$repo/runs/$job_name/sft_small")
fi

printf -v quoted_args '%q ' "${main_args[@]}"
printf -v quoted_repo '%q' "$repo"
script="$log_dir/$job_name.sbatch"
{
  echo '#!/usr/bin/env bash'
  echo "#SBATCH --job-name=$job_name"
  echo "#SBATCH --nodes=$nodes"
  echo '#SBATCH --ntasks-per-node=1'
  echo "#SBATCH --gpus-per-node=$gpus_per_node"
  echo "#SBATCH --cpus-per-task=$cpus_per_task"
  echo "#SBATCH --time=$time_limit"
  echo "#SBATCH --output=$log_dir/%x-%j.out"
  if [[ -n "$partition" ]]; then echo "#SBATCH --partition=$partition"; fi
  if [[ -n "$account" ]]; then echo "#SBATCH --account=$account"; fi
  echo 'set -euo pipefail'
  echo "cd $quoted_repo"
  if [[ -n "$setup" ]]; then echo "$setup"; fi
  echo "export ALIGNJAX_CACHE=$quoted_repo/runs/cache  # starting points, shared by every node"
  echo "srun --kill-on-bad-exit=1 python -m alignjax.main --distributed ${quoted_args% }"
} > /tmp/alignjax-sbatch.$$
trap 'rm -f /tmp/alignjax-sbatch.$$' EXIT

if [[ $dry_run -eq 1 ]]; then
  echo "# batch script ($script):"
  cat /tmp/alignjax-sbatch.$$
  echo "+ mkdir -p $log_dir"
  echo "+ sbatch $script"
  exit 0
fi
mkdir -p "$log_dir"
cp /tmp/alignjax-sbatch.$$ "$script"
echo "+ sbatch $script"
sbatch "$script"
