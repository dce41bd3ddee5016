"""The generic loop's invariances and the experiment helpers, in process."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alignjax import experiment_lib
from alignjax import metrics as metrics_lib
from alignjax import sharding
from alignjax.losses import sft as sft_losses
from alignjax.trainers import common
from alignjax.trainers import loop
from alignjax.trainers import sft

import experiment_runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(**overrides):
    c = experiment_lib.load_config(os.path.join(ROOT, 'experiments', 'sft.py') + ':tiny,steps=3')
    c.log_every = 1
    c.ckpt_every = 100
    c.eval.num_prompts = 4
    c.eval.max_new_tokens = 4
    c.mesh.shape = (1, 1, 1)  # the loop's arithmetic is tested here; sharding in test_sharding
    return experiment_runs.override(c, **overrides)


def build_without_eval(config, mesh):
    algo = sft.build(config, mesh)
    algo.evaluators = []
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
    _, sched = common.make_optimizer(c.optim, 100)
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
    assert common.model_config_from(c.model).num_layers == 3


def test_non_finite_step_stops_before_its_checkpoint(tmp_path):
    from alignjax import checkpoint as ckpt_lib

    def poisoned(config, mesh):
        algo = build_without_eval(config, mesh)
        batches, loss_fn = algo.batches, algo.loss_fn

        def with_poison(step, model, algo_state):
            batch, host_metrics = batches(step, model, algo_state)
            batch = dict(batch)  # the stream's own dict stays as it was
            rows = len(batch['prompt'])
            batch['poison'] = np.full(rows, np.nan if step == 3 else 0.0, np.float32)
            return batch, host_metrics

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


class _Linear(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.array([0.5, -0.3, 0.2]))


def _linear_loss(model, frozen, batch, rng):
    del frozen, rng
    err = batch['x'] @ model.w[...] - batch['y']
    return 0.5 * jnp.sum(err**2), jnp.float32(
        err.shape[0]), {'sq': (jnp.sum(err**2), jnp.float32(err.size))}


@pytest.mark.parametrize('microbatches', [1, 2])
def test_epochs_of_minibatches_equal_sequential_sgd(microbatches):
    """PPO-style reuse of one batch: each epoch permutes the rows with the step's key and takes one
    optimizer step per minibatch; checked against plain NumPy SGD over the same permutations."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = rng.normal(size=(12,)).astype(np.float32)
    mesh = sharding.make_mesh((1, 1, 1))
    epochs, minibatches, lr = 2, 3, 0.1
    with jax.set_mesh(mesh):
        graphdef, params = nnx.split(_Linear())
        params = nnx.to_pure_dict(params)
        tx = optax.sgd(lr)
        shardings = loop.state_shardings(params, tx, {}, mesh)
        state = {
            'params': params, 'opt_state': tx.init(params), 'step': jnp.int32(0),
            'rng': jax.random.key_data(jax.random.key(0)), 'algo': {}
        }
        update = loop.make_update(graphdef, {}, _linear_loss, tx, lambda s: lr, microbatches,
                                  shardings, mesh, epochs=epochs, minibatches=minibatches)
        state, metrics, finite = update(jax.device_put(state, shardings), {},
                                        {'x': jnp.asarray(x), 'y': jnp.asarray(y)})
    w = np.array([0.5, -0.3, 0.2], np.float64)
    losses = []
    step_key = jax.random.fold_in(jax.random.key(0), 0)
    for e in range(epochs):
        perm_key, _ = jax.random.split(jax.random.fold_in(step_key, e))
        perm = np.asarray(jax.random.permutation(perm_key, 12))
        for i in range(minibatches):
            rows = perm[i * 4:(i + 1) * 4]
            err = x[rows] @ w - y[rows]
            losses.append(0.5 * np.mean(err**2))
            w = w - lr * (x[rows].T @ err) / len(rows)
    np.testing.assert_allclose(np.asarray(state['params']['w']), w, rtol=1e-5)
    np.testing.assert_allclose(float(metrics['loss']), np.mean(losses), rtol=1e-5)
    assert bool(finite) and int(state['step']) == 1
