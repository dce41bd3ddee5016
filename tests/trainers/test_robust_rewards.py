"""Constrained RLHF's Lagrange multipliers are checkpointed controllers: a run SIGKILLed after a
checkpoint and rerun moves them exactly as the uninterrupted run does (bitwise), by the dual
ascent of `losses/robust.lagrange_update`, and its monitors replay across the resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from alignjax import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
# The gold reward of a random policy (about -1) above -1.5: the multiplier grows every step.
FLAGS = [
    f'--config={ROOT}/experiments/remax.py:steps=10', '--config.init_from=',
    '--config.data.batch_size=8', '--config.log_every=1', '--config.ckpt_every=2',
    '--config.keep_ckpts=10', '--config.eval.num_prompts=8',
    '--config.reward.constraints=gold<-1.5', '--config.reward.dual_lr=0.5',
    '--config.monitors.thresholds=lagrange/gold>0.4'
]


def command(workdir):
    return [sys.executable, '-m', 'alignjax.main', f'--workdir={workdir}', *FLAGS]


def test_lagrange_multipliers_survive_a_sigkill(tmp_path):
    full = subprocess.run(command(tmp_path / 'full'), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen(command(tmp_path / 'killed'), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker, deadline = tmp_path / 'killed' / 'checkpoints' / '4', time.time() + 300
    while not marker.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
    again = subprocess.run(command(tmp_path / 'killed'), cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = (metrics_lib.read_metrics(str(tmp_path / d)) for d in ('full', 'killed'))
    lam = [r['lagrange/gold'] for r in a]
    assert lam == [r['lagrange/gold'] for r in b]  # bitwise equal floats
    assert lam[0] == 0 and all(np.diff(lam) > 0), lam  # it moved, from 0, every step
    gold = np.array([r['reward/gold'] for r in a])
    np.testing.assert_allclose(np.diff(lam), 0.5 * (gold[:-1] + 1.5), rtol=1e-5)
    fired = [
        json.load(open(tmp_path / d / 'summary.json'))['monitors_fired'] for d in ('full', 'killed')
    ]
    assert fired[0] == fired[1] and fired[0]['lagrange/gold'] > 1  # replayed, not fired twice


def test_log_sigmoid_scorer_transforms_each_member_against_its_reference_quantile():
    """Against the transform computed here from the members' rewards and the cached per-prompt
    quantiles; the cache holds one entry a prompt, and the spread reported is the policy's."""
    import jax
    from alignjax import evaluation, rollout, runs
    from alignjax.repro import common
    from alignjax.trainers import common as trainer_common
    from alignjax.trainers import policy_gradient, scorers
    c = common.config_of('remax.py:tiny,reward=rm,ensemble=4', {'reward.transform': 'log_sigmoid'})
    runs.train_starting_points(c, mesh_shape=(1, 1, 1))
    mesh = trainer_common.make_mesh(c)
    with jax.set_mesh(mesh):
        tok, task, _, _, policy, reference = policy_gradient.online_setup(c, mesh)
        scorer, _ = scorers.make_scorer(c, mesh, task, reference=reference, tok=tok)
        prompts = task.prompts(5, seed=0, split='train')
        s = evaluation.sample(policy, prompts, tok, max_prompt_len=8, max_new_tokens=12,
                              temperature=1.0, key=jax.random.key(0))
        r = rollout.Responses(prompt=s['prompt'], prompt_mask=s['prompt_mask'],
                              response=s['tokens'], response_mask=s['mask'], prompt_texts=prompts,
                              texts=s['texts'])
        out = scorer(r)
        spread = scorer.metrics()['reward/ensemble_std']
        members = scorer.rm.members(r)
    assert len(scorer.cache) == len(set(prompts))
    ref = np.stack([scorer.cache[p] for p in prompts])
    np.testing.assert_allclose(out, np.sum(-np.logaddexp(0.0, -(members - ref)), axis=1), rtol=1e-5,
                               atol=1e-5)
    assert spread == np.mean(members.std(axis=1))
    assert ref.shape == members.shape == (5, 4)
