"""The evaluator seam: evaluators declared in config, each at its own period, run by the loop."""

import os

import ml_collections
import pytest

from alignjax import evaluators
from alignjax import experiment_lib
from alignjax import metrics as metrics_lib
from alignjax.trainers import loop
from alignjax.trainers import sft

import experiment_runs


def config(entries=(), eval_every=0):
    c = ml_collections.ConfigDict(
        {'algo': 'sft', 'eval_every': eval_every, 'eval': {'evaluators': tuple(entries)}})
    return c


def test_parse_periods():
    assert evaluators.parse('gold', 7) == ('gold', 7)
    assert evaluators.parse('gold:3', 7) == ('gold', 3)
    assert evaluators.parse('gold:0', 7) == ('gold', 0)
    with pytest.raises(ValueError, match=r"config.eval.evaluators: 'gold:x'"):
        evaluators.parse('gold:x', 7)


def test_select_defaults_order_periods_and_laziness():
    built = []
    available = {
        'a': lambda: built.append('a') or (lambda m, s: {'a': s}),
        'b': lambda: built.append('b') or (lambda m, s: {'b': s})
    }
    evs = evaluators.select(config(eval_every=5), available)  # none named: all of them
    assert [(e.name, e.every) for e in evs] == [('a', 5), ('b', 5)] and built == ['a', 'b']
    built.clear()
    evs = evaluators.select(config(('b:2',)), available)  # only the named one is built
    assert [(e.name, e.every) for e in evs] == [('b', 2)] and built == ['b']
    evs = evaluators.select(config(('b:2', 'a'), eval_every=5), available)
    assert [(e.name, e.every) for e in evs] == [('b', 2), ('a', 5)]
    # Due at their own periods, never at the last step (the summary covers it), merged in order.
    assert evaluators.figures_due(evs, None, 2, 10) == {'b': 2}
    assert evaluators.figures_due(evs, None, 10, 10) == {}
    assert evaluators.figures_due(evs, None, 5, 10) == {'a': 5}
    assert evaluators.summary(evs, None, 10) == {'b': 10, 'a': 10}


def test_unknown_evaluator_is_one_line_naming_the_key():
    with pytest.raises(
            ValueError, match=r"config.eval.evaluators: 'gld' is not an evaluator of "
            r"sft; known here: \['gold'\]"):
        evaluators.select(config(('gld',)), {'gold': lambda: None})


def test_loop_runs_each_evaluator_at_its_period(tmp_path):
    """SFT's gold evaluator every 2 steps of 5, then its final figures in summary.json."""
    c = experiment_lib.load_config(
        os.path.join(experiment_runs.ROOT, 'experiments', 'sft.py') + ':tiny,steps=5')
    c = experiment_runs.override(
        c, **{
            'log_every': 1, 'ckpt_every': 100, 'eval.num_prompts': 4, 'eval.max_new_tokens': 4,
            'mesh.shape': (1, 1, 1), 'eval.evaluators': ('gold:2',)
        })
    summary = loop.train(c, str(tmp_path), sft.build)
    rows = metrics_lib.read_metrics(str(tmp_path))
    evals = [r['step'] for r in rows if 'eval/gold_reward' in r]
    assert evals == [2, 4], rows
    assert {'gold_reward', 'gold_reward_ref', 'gold_win_rate'} <= set(summary)
    # The final figures are the evaluator's own (against the start), not a step's eval row.
    assert 'eval/gold_reward' not in summary
