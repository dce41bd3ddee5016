"""The group rows of the online family (online_dpo, raft, p3o, copg) and DAPO's dynamic
sampling run through the generic loop: two iterations from a random policy with several epochs
of minibatches over [G, k] groups, finite, with their metrics."""

import math
import os

import pytest

from alignjax import experiment_lib
from alignjax import metrics as metrics_lib
from alignjax.trainers import loop, policy_gradient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = {
    'online_dpo': ('online_dpo.py:steps=2', ('rewards/margin', 'pairs_kept')),
    'raft': ('raft.py:steps=2', ('winner_return',)),
    'p3o': ('p3o.py:steps=2', ('clip_fraction', 'ratio')),
    'copg': ('copg.py:steps=2', ('copg_residual',)),
    'dapo': ('grpo.py:steps=2,task=addition,dapo', ('dynamic_sampling/rounds',)),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_group_algorithms_run_through_the_loop(tmp_path, name):
    spec, keys = CASES[name]
    c = experiment_lib.load_config(os.path.join(ROOT, 'experiments', spec))
    c.init_from, c.data.batch_size, c.log_every, c.eval_every = '', 8, 1, 0
    c.eval.num_prompts, c.ckpt_every = 8, 2
    loop.train(c, str(tmp_path), policy_gradient.build)
    rows = metrics_lib.read_metrics(str(tmp_path))
    assert [r['step'] for r in rows] == [1, 2]
    for key in (*keys, 'loss', 'entropy', 'rollout/gold_reward'):
        assert key in rows[-1] and math.isfinite(rows[-1][key]), (key, rows[-1])
    if name == 'dapo':  # a random policy never adds right: every group is degenerate
        assert rows[-1]['dynamic_sampling/rounds'] == 3
        assert rows[-1]['dynamic_sampling/unfilled_groups'] == 8
