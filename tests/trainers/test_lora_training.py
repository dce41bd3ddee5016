"""Training adapters through the loop: the base stays bitwise, the checkpoint holds the adapters
only, resume is bitwise, and adapters are refused on another base."""

import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from alignjax import checkpoint as ckpt_lib
from alignjax import metrics as metrics_lib
from alignjax import pretrained
from alignjax import runs
from alignjax import sharding
from alignjax import validation
from alignjax.models import lora
from alignjax.trainers import common
from alignjax.trainers import dpo
from alignjax.trainers import loop

import experiment_runs

SPEC = 'dpo.py:tiny,lora=4'
SHORT = {
    'init_from': '', 'total_steps': 4, 'ckpt_every': 2, 'log_every': 1,
    'eval.evaluators': ('heldout_preference',), 'eval_every': 0, 'optim.lr': 1e-2
}


def test_update_moves_only_the_adapters():
    config = experiment_runs.config_of(SPEC, **SHORT)
    mesh = common.make_mesh(config)
    with jax.set_mesh(mesh):
        algo = dpo.build(config, mesh)
        run = loop.setup(config, algo, mesh)
        trained = jax.tree.map(lambda x: type(x).__name__, nnx.state(algo.model, lora.TRAINABLE),
                               is_leaf=lambda x: isinstance(x, nnx.Variable))
        assert set(jax.tree.leaves(trained)) == {'LoRAParam'}
        # The reference is the policy with its adapters off: its arrays are the base's own.
        assert 'reference' in algo.frozen and not lora.has_adapters(algo.frozen['reference'])
        # ... handed to the update once, as the base (a view of it), not as a second model.
        assert set(run.frozen_states) == {loop.BASE}
        base_before = jax.tree.map(np.array, run.frozen_states[loop.BASE])
        state = run.state
        for step in range(3):
            host, _ = algo.batches(step, run.model(state['params']), {})
            state, metrics, _ = run.update(state, run.frozen_states,
                                           sharding.shard_batch(host, mesh))
        model = run.model(state['params'])
    assert set(state['params']) == {'layers'}  # the optimizer sees the adapters only
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, base_before, after)
    b = nnx.to_pure_dict(nnx.state(model, lora.LoRAParam))['layers']['attn']['q_lora']['b']
    assert np.abs(np.asarray(b)).max() > 0  # the adapters did move
    assert np.isfinite(float(metrics['loss']))


def _three_updates(**overrides):
    """The adapters after three updates from the same start, each update's loss, and the
    trained policy's logits on a fixed batch, computed twice."""
    config = experiment_runs.config_of(SPEC, **SHORT, **overrides)
    mesh = common.make_mesh(config)
    with jax.set_mesh(mesh):
        algo = dpo.build(config, mesh)
        run = loop.setup(config, algo, mesh)
        state, losses = run.state, []
        for step in range(3):
            host, _ = algo.batches(step, run.model(state['params']), {})
            state, metrics, _ = run.update(state, run.frozen_states,
                                           sharding.shard_batch(host, mesh))
            losses.append(float(metrics['loss']))
        model = run.model(state['params'])
        assert not jax.tree.leaves(nnx.state(model, lora.DropoutKey))
        tokens = np.random.RandomState(0).randint(1, 200, (2, 12))
        scores = [np.asarray(model(tokens)) for _ in range(2)]
        return jax.tree.map(np.array, state['params']), losses, scores


def test_adapter_dropout_acts_in_the_update_only_and_is_seeded():
    plain, plain_losses, plain_scores = _three_updates()
    dropped, losses, scores = _three_updates(**{'lora.dropout': 0.5})
    again, again_losses, _ = _three_updates(**{'lora.dropout': 0.5})
    # B = 0 at the start: the masked adapters still add nothing to the first loss ...
    assert losses[0] == plain_losses[0]
    # ... but their gradients see the masked inputs, so the adapters move differently.
    diff = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), plain, dropped)
    assert max(jax.tree.leaves(diff)) > 1e-4
    # Outside the update (the model a run evaluates and samples with) nothing is dropped.
    np.testing.assert_array_equal(*scores)
    np.testing.assert_array_equal(*plain_scores)
    # The masks come from the run's seed and step: the same run twice is bitwise the same.
    jax.tree.map(np.testing.assert_array_equal, dropped, again)
    assert losses == again_losses


def test_checkpoint_holds_the_adapters_and_resume_is_bitwise(tmp_path):
    short = {**SHORT, 'lora.dropout': 0.1}  # the dropout masks are redrawn exactly on resume
    straight = tmp_path / 'straight'
    experiment_runs.run(straight, SPEC, **short)
    ckpt = ckpt_lib.Checkpointer(str(straight / 'checkpoints'), save_every=1, keep=10)
    saved = ckpt.restore_params(4)
    ckpt.close()
    names = {
        '/'.join(str(getattr(k, 'key', k))
                 for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(saved)[0]
    }
    assert names and all('_lora/' in n for n in names), sorted(names)[:4]
    # Lose the last checkpoint: the re-run resumes at step 2 and must redo steps 3-4 exactly.
    resumed = tmp_path / 'resumed'
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / 'checkpoints' / '4')
    os.remove(resumed / 'summary.json')
    experiment_runs.run(resumed, SPEC, **short)
    timed = lambda k: k in metrics_lib.TIMING_KEYS or k.endswith(('_per_s', 'seconds'))
    rows = lambda d: [{k: v
                       for k, v in r.items()
                       if not timed(k)}
                      for r in metrics_lib.read_metrics(str(d))]
    assert rows(resumed) == rows(straight)


def test_adapters_on_another_base_are_refused(tmp_path):
    sft = tmp_path / 'sft'
    experiment_runs.run(sft, 'sft.py:tiny', total_steps=2, ckpt_every=2, **{'eval.evaluators': ()})
    work = tmp_path / 'dpo'
    over = dict(SHORT, init_from=str(sft), total_steps=4)
    experiment_runs.run(work, SPEC, **over)
    os.remove(work / 'summary.json')
    shutil.rmtree(work / 'checkpoints' / '4')
    # The same path now holds another base (another seed's SFT run).
    other = tmp_path / 'other'
    experiment_runs.run(other, 'sft.py:tiny', total_steps=2, ckpt_every=2, seed=1,
                        **{'eval.evaluators': ()})
    shutil.rmtree(sft)
    shutil.move(other, sft)
    with pytest.raises(validation.ValidationError, match='trained on another base'):
        runs.train(experiment_runs.config_of(SPEC, **over), str(work))


def test_an_adapted_run_as_a_starting_point_is_its_merged_model(tmp_path):
    """init_module of a LoRA run's workdir: its own start with its adapters folded in, into a
    plain model and into an adapted one (whose own adapters stay at B = 0)."""
    sft = tmp_path / 'sft'
    experiment_runs.run(sft, 'sft.py:tiny', total_steps=2, ckpt_every=2, **{'eval.evaluators': ()})
    work = tmp_path / 'dpo'
    config = experiment_runs.config_of(SPEC, **dict(SHORT, init_from=str(sft)))
    runs.train(config, str(work))
    mesh = common.make_mesh(config)
    tokens = np.random.RandomState(0).randint(1, 200, (2, 7))
    with jax.set_mesh(mesh):
        # The run's model unmerged: its start, and its adapters from the checkpoint.
        trained = common.build_policy(config, mesh)
        pretrained.init_module(trained, str(sft))
        ckpt = ckpt_lib.Checkpointer(str(work / 'checkpoints'), save_every=1, keep=10)
        adapters = ckpt.restore_params(4)
        ckpt.close()
        state = nnx.state(trained, lora.LoRAParam)
        nnx.replace_by_pure_dict(state, adapters)
        nnx.update(trained, state)
        expected = np.asarray(trained(tokens))
        plain = common.build_policy(experiment_runs.config_of(SPEC, **{'lora.rank': 0}), mesh)
        pretrained.init_module(plain, str(work))
        adapted = common.build_policy(config, mesh)
        pretrained.init_module(adapted, str(work))
        np.testing.assert_allclose(np.asarray(plain(tokens)), expected, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(adapted(tokens)), expected, atol=1e-5, rtol=1e-5)
        b = nnx.to_pure_dict(nnx.state(adapted, lora.LoRAParam))['layers']['mlp']['up_lora']['b']
        assert not np.asarray(b).any()
    with pytest.raises(ValueError, match='from-scratch base'):
        scratch = tmp_path / 'scratch'
        experiment_runs.run(scratch, SPEC, **SHORT)
        with jax.set_mesh(mesh):
            pretrained.init_module(common.build_policy(config, mesh), str(scratch))
