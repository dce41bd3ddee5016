"""launch/sweep.py: the sweep's runs (flag product or get_hyper), their commands, and the table."""

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from alignjax import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location('sweep', os.path.join(ROOT, 'launch', 'sweep.py'))
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def test_product_of_flags_last_varies_fastest():
    runs = sweep.sweep_product(['config.loss.beta=0.05,0.1', 'optim.lr=1e-4,3e-4'])
    assert runs == [{'loss.beta': 0.05, 'optim.lr': 1e-4}, {'loss.beta': 0.05, 'optim.lr': 3e-4},
                    {'loss.beta': 0.1, 'optim.lr': 1e-4}, {'loss.beta': 0.1, 'optim.lr': 3e-4}]
    assert sweep.sweep_product(['config.loss.types=ipo',
                                'config.x=true,3']) == [{'loss.types': 'ipo', 'x': True},
                                                        {'loss.types': 'ipo', 'x': 3}]
    with pytest.raises(ValueError, match='config.KEY=V1,V2'):
        sweep.sweep_product(['config.loss.beta'])


def test_get_hyper_and_run_names(tmp_path):
    path = tmp_path / 'exp.py'
    path.write_text('def get_hyper(arg):\n'
                    '    lrs = (1e-3, 3e-3) if arg == "tiny" else (1e-4,)\n'
                    '    return [{"config.optim.lr": lr, "total_steps": 7} for lr in lrs]\n')
    runs = sweep.hyper_of(f'{path}:tiny')
    assert runs == [{'optim.lr': 1e-3, 'total_steps': 7}, {'optim.lr': 3e-3, 'total_steps': 7}]
    names = [sweep.run_name(i, r) for i, r in enumerate(runs)]
    assert names == ['000-lr=0.001,total_steps=7', '001-lr=0.003,total_steps=7']
    assert sweep.run_name(2, {'mesh.shape': (1, -1, 1)}) == '002-shape=1+-1+1'
    assert sweep.main_args('e.py:tiny', '/w/0', {'mesh.shape': (1, -1, 1)}, ['--x']) == [
        '--config=e.py:tiny', '--workdir=/w/0', '--config.mesh.shape=(1,-1,1)', '--x'
    ]


def test_dry_run_prints_every_command_and_rejects_unknown_keys(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = [
        '--config=experiments/dpo.py:tiny', '--workdir=/tmp/never', '--sweep',
        'config.loss.beta=0.05,0.1'
    ]
    assert sweep.main(args + ['--dry_run']) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all('-m alignjax.main' in line for line in out)
    assert '--workdir=/tmp/never/001-beta=0.1 --config.loss.beta=0.1' in out[1]
    assert sweep.main(args + ['--launcher=tpu_pod', '--', '--config.total_steps=9']) == 0
    pod = capsys.readouterr().out.splitlines()
    assert pod[0].startswith('launch/tpu_pod.sh ') and pod[0].endswith('--config.total_steps=9')
    with pytest.raises(SystemExit, match="did you mean 'loss.beta'"):
        sweep.main(args[:-1] + ['config.loss.betta=0.1', '--dry_run'])
    # get_hyper() of the experiment file, when no --sweep is given: the DPO loss ablation.
    assert sweep.main(['--config=experiments/dpo.py:tiny', '--workdir=/tmp/never',
                       '--dry_run']) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 9 and "--config.loss.types=('\"'\"'ipo'\"'\"',)" in out[3]


def test_sweep_runs_each_run_in_its_workdir_and_tabulates(tmp_path):
    cmd = [
        sys.executable, 'launch/sweep.py', '--config=experiments/sft.py:tiny,steps=2',
        f'--workdir={tmp_path}', '--sweep', 'config.optim.lr=1e-3,3e-3', '--parallel=2', '--',
        '--config.eval.num_prompts=4', '--config.log_every=1', '--config.mesh.shape=(1,1,1)',
        '--config.model.num_layers=1'
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = ['000-lr=0.001', '001-lr=0.003']
    summaries = []
    for name in names:
        with open(tmp_path / name / 'summary.json') as f:
            summaries.append(json.load(f))
        with open(tmp_path / name / 'config.json') as f:
            assert json.load(f)['optim']['lr'] == float(name.split('=')[1])
    assert summaries[0]['step'] == summaries[1]['step'] == 2
    # Different runs: the second update (the first at a non-zero warm-up rate) differs.
    norms = [metrics_lib.read_metrics(str(tmp_path / name))[-1]['param_norm'] for name in names]
    assert norms[0] != norms[1]
    with open(tmp_path / 'sweep.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['run'] for r in rows] == names
    for row, s in zip(rows, summaries):
        assert row['status'] == 'done'
        assert float(row['gold_reward']) == pytest.approx(s['gold_reward'])
    table = (tmp_path / 'sweep.md').read_text()
    assert table in done.stdout and table.count('\n') == 4
    assert table.splitlines()[0].startswith('| run | optim.lr | status | ')
    # Re-running skips finished runs and rebuilds the same table.
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count('finished earlier; skipped') == 2
    assert (tmp_path / 'sweep.md').read_text() == table
