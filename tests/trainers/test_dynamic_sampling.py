"""DAPO's dynamic sampling (`policy_gradient.dynamic_sampling`): groups whose scores are all equal
are replaced by informative groups of the refill rollouts, the batch keeps its size, and the
counts are reported; when the rounds run out the degenerate groups fill what is left."""

import numpy as np

from alignjax import rollout as rollout_lib
from alignjax.trainers import policy_gradient

K, P, R = 2, 3, 4


def batch(scores, tag):
    """A rollout whose rows carry their origin in `response` (tag * 100 + row)."""
    n = len(scores)
    rows = np.arange(n)[:, None]
    return rollout_lib.RolloutBatch(prompt=np.full((n, P), tag), prompt_mask=np.ones(
        (n, P), np.int32), response=np.repeat(tag * 100 + rows, R, axis=1), response_mask=np.ones(
            (n, R), np.int32), prompt_texts=[f'p{tag}.{i // K}' for i in range(n)
                                            ], texts=[f'y{tag}.{i}' for i in range(n)],
                                    records=[{'prompt': f'p{tag}.{i // K}'} for i in range(n)],
                                    sample_logp=np.zeros((n, R)), old_logp=np.zeros(
                                        (n, R)), ref_logp=np.zeros((n, R)),
                                    has_eos=np.ones(n, bool), scores=np.asarray(scores, np.float32),
                                    gold=np.asarray(scores, np.float32))


class FakeRollout:
    def __init__(self, refills):
        self.refills, self.calls = refills, []

    def __call__(self, step, policy, critic=None, *, refill=0):
        self.calls.append((step, refill))
        return self.refills[refill - 1], {}


def origins(b):
    return [int(r) for r in b.response[:, 0]]


def test_degenerate_groups_are_replaced_and_counted():
    first = batch([1, 1, 0, 1, 0, 0, 1, 0], tag=0)  # groups: degenerate, ok, degenerate, ok
    rollout = FakeRollout([batch([1, 1, 0, 1, 1, 1, 1, 0], tag=1)])  # informative: 1 and 3
    out, m = policy_gradient.dynamic_sampling(rollout, 7, None, None, first, k=K, rounds=3)
    assert rollout.calls == [(7, 1)]  # one round was enough
    assert origins(out) == [2, 3, 6, 7, 102, 103, 106, 107]  # whole groups, in order
    assert out.texts == ['y0.2', 'y0.3', 'y0.6', 'y0.7', 'y1.2', 'y1.3', 'y1.6', 'y1.7']
    assert [r['prompt'] for r in out.records][4:] == ['p1.1', 'p1.1', 'p1.3', 'p1.3']
    np.testing.assert_array_equal(out.scores, [0, 1, 1, 0, 0, 1, 1, 0])
    assert out.old_logp.shape == (8, R) and out.gold.shape == (8,)
    assert m == {
        'dynamic_sampling/degenerate_groups': 2.0, 'dynamic_sampling/refilled_groups': 2.0,
        'dynamic_sampling/unfilled_groups': 0.0, 'dynamic_sampling/rounds': 1.0
    }


def test_when_rounds_run_out_the_degenerate_groups_fill_the_rest():
    first = batch([1, 1, 0, 1, 0, 0, 1, 1], tag=0)  # only group 1 informative
    rollout = FakeRollout([batch([0, 0, 0, 0, 0, 0, 1, 0], tag=1), batch([1] * 8, tag=2)])
    out, m = policy_gradient.dynamic_sampling(rollout, 0, None, None, first, k=K, rounds=2)
    assert rollout.calls == [(0, 1), (0, 2)]
    assert origins(out) == [2, 3, 106, 107, 0, 1, 4, 5]
    assert m['dynamic_sampling/refilled_groups'] == 1.0
    assert m['dynamic_sampling/unfilled_groups'] == 2.0
    assert m['dynamic_sampling/rounds'] == 2.0


def test_an_informative_batch_takes_no_extra_rollout():
    first = batch([1, 0] * 4, tag=0)
    rollout = FakeRollout([])
    out, m = policy_gradient.dynamic_sampling(rollout, 0, None, None, first, k=K, rounds=3)
    assert rollout.calls == [] and origins(out) == list(range(8))
    assert m['dynamic_sampling/degenerate_groups'] == 0.0
