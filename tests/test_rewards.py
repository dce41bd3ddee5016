"""Reward functions by import path (`alignjax.rewards`): parsing, scoring in a worker pool, and a
function that raises, hangs, returns NaN or the wrong count stopping the run in one line that names
it and the record (or scoring the configured penalty)."""

import os

import numpy as np
import pytest

from alignjax import experiment_lib, rewards, validation
from alignjax.rollout import Responses
from alignjax.trainers import loop, policy_gradient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def responses(prompts, texts, answers=None):
    n = len(prompts)
    records = [{'prompt': p, **({'answer': a} if answers else {})}
               for p, a in zip(prompts, answers or [None] * n)]
    z = np.zeros((n, 1), np.int32)
    return Responses(prompt=z, prompt_mask=z, response=z, response_mask=z, prompt_texts=prompts,
                     texts=texts, records=records)


def test_parse_terms_and_refusals():
    t = rewards.parse('gold + 0.5*fn:a.b:c+reward_model')
    assert [(x.weight, x.kind, x.path) for x in t] == [(1.0, 'gold', ''), (0.5, 'fn', 'a.b:c'),
                                                       (1.0, 'reward_model', '')]
    for bad, says in (('gold+fn:a.b', "'fn:a.b'"), ('x*gold', "weight 'x'"), ('gold+gold', 'once'),
                      ('rm', "'rm'")):
        with pytest.raises(validation.ValidationError, match=says):
            rewards.parse(bad)
    with pytest.raises(validation.ValidationError, match="no 'nope'"):
        rewards.FunctionScorer('reward_fixtures:nope')
    with pytest.raises(validation.ValidationError, match='cannot import'):
        rewards.FunctionScorer('no_such_module_here:f')
    with pytest.raises(validation.ValidationError, match='is a int, not a function'):
        rewards.FunctionScorer('reward_fixtures:NOT_A_FUNCTION')


def test_scores_in_the_pool_with_the_records_fields():
    s = rewards.FunctionScorer('reward_fixtures:answer_match', workers=2)
    try:
        r = responses(['a', 'b', 'c', 'd', 'e'], ['1', '2', 'x', '4', '5'],
                      ['1', '2', '3', '4', '0'])
        np.testing.assert_array_equal(s(r), [1, 1, 0, 1, 0])
        assert s.metrics() == {'reward/errors': 0.0}
    finally:
        s.close()
    total = rewards.SumScorer([(1.0, rewards.FunctionScorer('reward_fixtures:length')),
                               (0.5, rewards.FunctionScorer('reward_fixtures:answer_match'))])
    try:
        np.testing.assert_allclose(total(responses(['p', 'q'], ['1', 'xyz'], ['1', '2'])),
                                   [1.5, 3.0])
        assert total.metrics() == {
            'reward/fn:reward_fixtures:length': 2.0, 'reward/fn:reward_fixtures:answer_match': 0.5,
            'reward/errors': 0.0
        }
    finally:
        total.close()


@pytest.mark.parametrize('fn,says', [
    ('raises_on_b', r"fn:reward_fixtures:raises_on_b KeyError: 'no rule for bee' on record 1 of "
     r"the batch \(prompt 'bee'\)"),
    ('nan_on_b', r"fn:reward_fixtures:nan_on_b returned nan on record 1 of the batch \(prompt "
     r"'bee'\)"),
    ('too_few', r'fn:reward_fixtures:too_few returned 1 values for 3 responses on records 0-2'),
    ('sleeps', r'fn:reward_fixtures:sleeps did not return within 1 s \(config.reward.timeout_s\) '
     r"on records 0-2 of the batch \(first prompt 'ant'\)"),
])
def test_a_failing_function_stops_in_one_line_naming_it_and_the_record(fn, says):
    s = rewards.FunctionScorer(f'reward_fixtures:{fn}', timeout_s=1)
    try:
        with pytest.raises(rewards.RewardFunctionError, match=says) as e:
            s(responses(['ant', 'bee', 'cat'], ['x', 'y', 'z']))
        assert '\n' not in str(e.value)
    finally:
        s.close()


def test_penalty_mode_scores_the_failing_records_and_counts_them():
    s = rewards.FunctionScorer('reward_fixtures:raises_on_b', on_error='penalty',
                               error_penalty=-2.0)
    try:
        np.testing.assert_array_equal(s(responses(['ant', 'bee', 'cat'], ['x'] * 3)), [1, -2, 1])
        assert s.metrics() == {'reward/errors': 1.0}
        # a hang: the call's records all take the penalty, and the next batch gets a fresh pool
        s.path, s.timeout_s = 'reward_fixtures:sleeps', 1.0
        np.testing.assert_array_equal(s(responses(['ant', 'bee'], ['x'] * 2)), [-2, -2])
        s.path = 'reward_fixtures:length'
        np.testing.assert_array_equal(s(responses(['ant'], ['xyz'])), [3])
        assert s.metrics() == {'reward/errors': 2.0}
    finally:
        s.close()


def test_a_nan_reward_mid_run_stops_it_and_keeps_the_workdir(tmp_path):
    c = experiment_lib.load_config(os.path.join(ROOT, 'experiments', 'grpo.py') + ':steps=6')
    c.init_from, c.reward.source = '', 'fn:reward_fixtures:nan_from_third_call'
    c.ckpt_every, c.log_every, c.data.batch_size, c.eval_every = 1, 1, 8, 0
    workdir = str(tmp_path / 'run')
    with pytest.raises(
            validation.ValidationError,
            match=r'^reward function fn:reward_fixtures:nan_from_third_call returned '
            r'nan on record 0 of the batch'):
        loop.train(c, workdir, policy_gradient.build)
    with open(os.path.join(workdir, 'error.log')) as f:
        assert 'returned nan' in f.read()
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
    assert steps and steps[-1] == 2  # the two good steps' checkpoints stay


def test_make_scorer_sums_the_gold_reward_and_a_function():
    from alignjax.data import tasks
    from alignjax.trainers import scorers
    c = experiment_lib.load_config(os.path.join(ROOT, 'experiments', 'grpo.py') + ':tiny')
    c.reward.source = 'gold+0.5*fn:reward_fixtures:length'
    task = tasks.get_task('transitive')
    scorer, reward_model = scorers.make_scorer(c, None, task)
    try:
        r = responses(['abc:', 'bdg:'], ['aab', 'xyzxyzxyz'])
        gold = task.gold_rewards(r.prompt_texts, r.texts)
        np.testing.assert_allclose(scorer(r), gold + 0.5 * np.array([3.0, 9.0]), rtol=1e-6)
        assert reward_model is None and scorers.proxy_scorer(scorer) is None
        assert set(scorer.metrics()) == {
            'reward/gold', 'reward/fn:reward_fixtures:length', 'reward/errors'
        }
    finally:
        scorer.close()
    c.reward.source = 'gold'  # a lone gold or reward-model term is scored as before, unwrapped
    assert type(scorers.make_scorer(c, None, task)[0]).__name__ == 'GoldScorer'
