"""The generic loop's invariances and the experiment helpers, in process."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import experiment_lib
from alignjax import metrics as metrics_lib
from alignjax.losses import sft as sft_losses
from alignjax.trainers import loop
from alignjax.trainers import sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    c = experiment_lib.load_config(os.path.join(ROOT, 'experiments', 'sft.py') + ':tiny,steps=3')
    c.log_every = 1
    c.ckpt_every = 100
    c.eval.num_prompts = 4
    c.eval.max_new_tokens = 4
    c.mesh.shape = (1, 1, 1)  # the loop's arithmetic is tested here; sharding in test_sharding
    for key, value in overrides.items():
        node = c
        *path, last = key.split('.')
        for p in path:
            node = node[p]
        node[last] = value
    return c


def build_without_eval(config, mesh):
    algo = sft.build(config, mesh)
    algo.evaluate = algo.summarize = None
    return algo


def run(tmp_path, name, evaluate=False, **overrides):
    workdir = str(tmp_path / name)
    summary = loop.train(tiny_config(**overrides), workdir,
                         sft.build if evaluate else build_without_eval)
    return summary, metrics_lib.read_metrics(workdir)


def test_sft_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logp = -rng.random((3, 5)).astype(np.float32)
    mask = (rng.random((3, 5)) > 0.3).astype(np.int32)
    nll, count = sft_losses.sft_loss(jnp.asarray(logp), jnp.asarray(mask))
    expected = -sum(logp[b, t] for b in range(3) for t in range(5) if mask[b, t])
    np.testing.assert_allclose(float(nll), expected, rtol=1e-6)
    assert float(count) == mask.sum()


def test_microbatching_equals_full_batch(tmp_path):
    _, full = run(tmp_path, 'full')
    _, micro = run(tmp_path, 'micro', **{'optim.microbatches': 4})
    assert len(full) == 3
    for a, b in zip(full, micro, strict=True):
        for key in ('loss', 'grad_norm', 'param_norm'):
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, err_msg=key)


def test_microbatches_must_divide_the_batch(tmp_path):
    with pytest.raises(ValueError, match='microbatches=5'):
        run(tmp_path, 'bad', **{'optim.microbatches': 5})


def test_summary_and_config_written(tmp_path):
    summary, rows = run(tmp_path, 'w', evaluate=True)
    assert [r['step'] for r in rows] == [1, 2, 3]
    assert {'gold_reward', 'gold_reward_ref', 'gold_win_rate'} <= set(summary)
    written = json.load(open(tmp_path / 'w' / 'summary.json'))
    assert written['step'] == 3
    assert json.load(open(tmp_path / 'w' / 'config.json'))['optim']['lr'] == 3e-3


def test_parse_arg_types_and_unknown_keys():
    a = experiment_lib.parse_arg('tiny,model=small,beta=0.5,steps=7', tiny=False, model='tiny',
                                 beta=0.1, steps=0)
    assert a.tiny is True and a.model == 'small' and a.beta == 0.5 and a.steps == 7
    with pytest.raises(ValueError, match="'betaa'"):
        experiment_lib.parse_arg('betaa=1', beta=0.1)
    with pytest.raises(ValueError, match="'steps' expects int"):
        experiment_lib.parse_arg('steps=x', steps=0)


def test_check_config_args_names_the_key():
    sft_path = os.path.join(ROOT, 'experiments', 'sft.py')
    experiment_lib.check_config_args([f'--config={sft_path}:tiny', '--config.optim.lr=0.1'])
    with pytest.raises(ValueError, match="'optim.lrr'.*'optim.lr'"):
        experiment_lib.check_config_args([f'--config={sft_path}:tiny', '--config.optim.lrr=1'])


@pytest.mark.parametrize('schedule', ['cosine', 'linear', 'constant'])
def test_schedule_warms_up_then_decays(schedule):
    c = tiny_config(**{'optim.schedule': schedule, 'optim.warmup_steps': 10})
    _, sched = experiment_lib.make_optimizer(c.optim, 100)
    lr = np.array([float(sched(s)) for s in range(101)])  # reaches its end at step 100
    assert lr[0] == 0.0 and abs(lr[10] - c.optim.lr) < 1e-9
    assert np.all(np.diff(lr[:11]) > 0)
    if schedule == 'constant':
        np.testing.assert_allclose(lr[10:], c.optim.lr)
    else:
        assert np.all(np.diff(lr[10:]) <= 1e-12)
        np.testing.assert_allclose(lr[-1], c.optim.lr * c.optim.end_lr_factor, rtol=0.05)


def test_model_config_overrides_flow_into_the_model():
    c = tiny_config(**{'model.num_layers': 3})
    assert experiment_lib.model_config_from(c.model).num_layers == 3


def test_non_finite_step_stops_before_its_checkpoint(tmp_path):
    from alignjax import checkpoint as ckpt_lib

    def poisoned(config, mesh):
        algo = build_without_eval(config, mesh)
        batches, loss_fn = algo.batches, algo.loss_fn

        def with_poison(step, model, algo_state):
            batch = dict(batches(step, model, algo_state))
            rows = len(batch['prompt'])
            batch['poison'] = np.full(rows, np.nan if step == 3 else 0.0, np.float32)
            return batch

        def loss_with_poison(model, frozen, batch, rng):
            loss_sum, count, metrics = loss_fn(model, frozen, batch, rng)
            return loss_sum + jnp.sum(batch['poison']), count, metrics

        algo.batches, algo.loss_fn = with_poison, loss_with_poison
        return algo

    # Step index 3 ends at step 4, a checkpoint step: it must not be written.
    config = tiny_config(total_steps=6, ckpt_every=2, log_every=5)  # no log check at step 4
    with pytest.raises(FloatingPointError, match='Non-finite values at step 3'):
        loop.train(config, str(tmp_path), poisoned)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / 'checkpoints'), save_every=1, keep=10)
    assert ckpt.latest_step() == 2
    params = ckpt.restore_params(2)
    ckpt.close()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
