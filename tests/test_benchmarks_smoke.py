"""Smoke runs of the benchmarks at the smallest settings: they run and print their JSON line."""

import importlib.util
import json
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'benchmarks')


def _load(name):
    spec = importlib.util.spec_from_file_location(f'_bench_{name}',
                                                  os.path.join(BENCHMARKS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_remax_vs_ppo_smoke(capsys):
    bench = _load('remax_vs_ppo')
    result = bench.main(['--model=tiny', '--batch=8', '--new_tokens=4', '--warmup=1', '--iters=1'])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(result))
    remax, ppo = result['remax'], result['ppo']
    # The critic is the policy's backbone (tied embeddings included) plus a value head.
    assert ppo['state']['params'] == pytest.approx(2 * remax['state']['params'], rel=1e-3)
    assert result['ratios']['state_bytes'] == pytest.approx(2.0, rel=1e-3)
    assert remax['updates_per_iteration'] == 1 and ppo['updates_per_iteration'] == 4
    for r in (remax, ppo):
        assert r['state']['opt_state'] >= 2 * r['state']['params']  # AdamW: mu and nu
        assert r['update_memory']['argument'] >= r['state']['params'] + r['state']['opt_state']
        assert r['time']['iteration_median_s'] > 0


def test_sample_workload_smoke(capsys):
    bench = _load('sample')
    result = bench.main([
        '--size=tiny', '--batches', '2', '--prompt_len=8', '--new_tokens=4', '--calls=1',
        '--repeats=1', '--peers=', '--limit_size=128', '--limit_mib=8'
    ])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(result))
    assert result['params'] == 231744  # the tiny workload: 232k parameters
    row = result['batch_2']
    assert row['tokens_per_s'] == pytest.approx(2 * 4 / (row['ms_per_call'] / 1e3), rel=1e-2)
    assert 0 < row['fraction_of_bandwidth'] and 0 < row['fraction_of_matmul_peak']


def test_dpo_workload_smoke(capsys):
    bench = _load('dpo')
    result = bench.main([
        '--size=tiny', '--pairs=8', '--prompt_len=8', '--response_len=4', '--steps=1',
        '--repeats=1', '--peers=', '--limit_size=128', '--limit_mib=8'
    ])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(result))
    pre = result['variants']['dpo_precomputed']
    for r in (result, pre):
        assert r['ms_per_step'] > 0 and r['model_flops_per_step'] > 0
        # The shared prompt pass executes fewer FLOPs than the plain forward model count.
        assert 0 < r['executed_flops_per_step'] < r['model_flops_per_step']
    # The reference's forward pass is part of the reference-every-step variant only.
    assert result['model_flops_per_step'] > pre['model_flops_per_step']


def test_monitors_cost_smoke(capsys):
    bench = _load('monitors')
    result = bench.main(['--model=tiny', '--batch=8', '--new_tokens=4', '--warmup=1', '--iters=1'])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])['top_k'] == 4
    for arm in ('plain', 'monitored'):
        assert result[arm]['iteration_median_s'] > 0
    assert set(result['ratios']) == {'rollout_median_s', 'update_median_s', 'iteration_median_s'}
