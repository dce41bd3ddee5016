"""Tests for the synthetic tasks: gold closed forms, cycles, determinism."""

import itertools
import math

import numpy as np
import pytest

from alignjax.data import records
from alignjax.data import synthetic

TRANS = synthetic.get_task('transitive')
INTRANS = synthetic.get_task('intransitive')
ODD_RESPONSES = [
    '', 'a', 'aaaaaaaa', 'hhhh', '!!', 'éé', 'abcabcabcabc', 'g', 'zz z', 'cc', 'eef', 'ba'
]


def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


@pytest.mark.parametrize(
    'prompt, response, expected',
    [
        ('abc:', 'aaaaaaaa', 1.0),
        ('abc:', 'hhhh', -4 * 0.5 / 8),
        ('abc:', 'abcabcabca', (10 - 1.5 * 2) / 8),  # 10 hits, 2 over 8
        ('abc:', '', 0.0),
        ('abc:', 'ab!d', (2 - 0.5 * 2) / 8),  # any non-hit is a miss
        ('bdg:', 'gggghhhhhhhh', (4 - 0.5 * 8 - 1.5 * 4) / 8),
        ('bdg:', 'bdg', 3 / 8),
    ])
def test_transitive_reward_closed_forms(prompt, response, expected):
    assert TRANS.gold_reward(prompt, response) == pytest.approx(expected, abs=1e-12)
    assert INTRANS.gold_reward(prompt, response) == pytest.approx(expected, abs=1e-12)


def test_reference_mean_gold_reward():
    # Transitive: P(hit) = 0.5 + 0.5 * 3/8; E[len] = 5.5, so the mean reward is
    # 5.5 * (0.6875 - 0.5 * 0.3125) / 8 = 0.365234375 for every prompt.
    recs = TRANS.sft_records(20000, seed=0)
    mean = np.mean(TRANS.gold_rewards([r['prompt'] for r in recs], [r['response'] for r in recs]))
    assert 0.355 < mean < 0.375, mean
    # Intransitive: the first character is a hit with probability ~3/8 (its
    # letter comes from the class, not the prompt): (0.0625 + 4.5 * 0.53125) / 8
    # = 0.3066 averaged over all prompts; measured on the train prompts.
    recs = INTRANS.sft_records(20000, seed=0)
    mean = np.mean(INTRANS.gold_rewards([r['prompt'] for r in recs], [r['response'] for r in recs]))
    assert 0.295 < mean < 0.318, mean


def test_reference_responses_shape():
    rng = np.random.default_rng(0)
    for task in (TRANS, INTRANS):
        ys = [task.reference_response('bdg:', rng) for _ in range(2000)]
        assert {len(y) for y in ys} == set(range(3, 9))
        assert set(''.join(ys)) <= set(synthetic.ALPHABET)
    classes = np.bincount([synthetic.response_class(y) for y in ys], minlength=4)
    np.testing.assert_allclose(classes / len(ys), [0.6, 0.3, 0.1, 0.0], atol=0.04)


def test_transitive_preference_is_bradley_terry():
    for y, yp in itertools.product(ODD_RESPONSES, repeat=2):
        r, rp = TRANS.gold_reward('abc:', y), TRANS.gold_reward('abc:', yp)
        p = TRANS.gold_preference('abc:', y, yp)
        assert p == pytest.approx(_sigmoid((r - rp) / 0.1), abs=1e-12)
        assert p + TRANS.gold_preference('abc:', yp, y) == 1.0


def test_response_class():
    cls = INTRANS.response_class
    assert [cls(y) for y in ['a', 'bz', 'c', 'dd', 'e', 'f!', 'g', 'h', '', '!a', 'A']] == \
        [0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 3]


def test_intransitive_preference_formula_and_complement():
    for y, yp in itertools.product(ODD_RESPONSES, repeat=2):
        p = INTRANS.gold_preference('ace:', y, yp)
        c, cp = synthetic.response_class(y), synthetic.response_class(yp)
        q = INTRANS.gold_reward('ace:', y) - INTRANS.gold_reward('ace:', yp)
        z = 3.0 * INTRANS.class_logits[c, cp] + q / 0.25
        assert p == pytest.approx(_sigmoid(z), abs=1e-12)
        assert p + INTRANS.gold_preference('ace:', yp, y) == 1.0  # exactly


def test_class_matrix_is_a_cycle():
    c, p = INTRANS.class_logits, INTRANS.class_matrix
    np.testing.assert_array_equal(c, -c.T)
    np.testing.assert_allclose(p + p.T, 1.0, atol=1e-15)
    np.testing.assert_allclose(np.diag(p), 0.5)
    s3 = _sigmoid(3.0)
    assert p[0, 1] == p[1, 2] == p[2, 0] == pytest.approx(s3)
    assert p[1, 0] == p[2, 1] == p[0, 2] == pytest.approx(1 - s3)
    assert np.all(p[:3, 3] > 0.9)  # Every valid class beats the invalid one.


def test_no_reward_explains_the_preferences():
    # Three responses with the same quality (3 hits each) form a strict cycle,
    # so no r can satisfy r(y0) > r(y1) > r(y2) > r(y0).
    y0, y1, y2 = 'aaa', 'ccc', 'eee'
    cycle = [INTRANS.gold_preference('ace:', a, b) for a, b in [(y0, y1), (y1, y2), (y2, y0)]]
    assert all(p > 0.9 for p in cycle)
    # The cycle survives averaging over sampled reference responses: class win
    # rates W[a, b] = mean P(y_a > y_b) are cyclic, for every eval prompt.
    rng = np.random.default_rng(1)
    for prompt in synthetic.EVAL_PROMPTS[:4]:
        by_class = {k: [] for k in range(3)}
        while min(len(v) for v in by_class.values()) < 30:
            y = INTRANS.reference_response(prompt, rng)
            by_class[synthetic.response_class(y)].append(y)
        win = lambda a, b: np.mean([
            INTRANS.gold_preference(prompt, ya, yb)
            for ya in by_class[a][:30]
            for yb in by_class[b][:30]
        ])
        assert win(0, 1) > 0.7 and win(1, 2) > 0.7 and win(2, 0) > 0.7


def test_gold_win_rate():
    prompts = TRANS.prompts(300, seed=3)
    ref = TRANS.reference_responses(prompts, seed=4)
    assert TRANS.gold_win_rate(prompts, ref, ref) == 0.5
    best = [synthetic.prompt_letters(p)[0] * 8 for p in prompts]
    assert TRANS.gold_win_rate(prompts, best, ref) > 0.95
    # Intransitive: class 2 beats the reference, which is mostly class 0.
    ref = INTRANS.reference_responses(prompts, seed=4)
    class2 = ['e' + y[1:] for y in ref]
    assert INTRANS.gold_win_rate(prompts, class2, ref) > 0.6
    invalid = ['g' + y[1:] for y in ref]
    assert INTRANS.gold_win_rate(prompts, invalid, ref) < 0.1


def test_preference_labels_follow_the_gold_preference():
    recs = TRANS.preference_records(4000, seed=0)
    pairs = [(TRANS.gold_reward(r['prompt'],
                                r['chosen']), TRANS.gold_reward(r['prompt'], r['rejected']))
             for r in recs]
    pairs = [(a, b) for a, b in pairs if a != b]
    agree = np.mean([a > b for a, b in pairs])
    expected = np.mean([_sigmoid(abs(a - b) / 0.1) for a, b in pairs])
    assert abs(agree - expected) < 0.03, (agree, expected)
    recs = INTRANS.preference_records(4000, seed=0)
    probs = [INTRANS.gold_preference(r['prompt'], r['chosen'], r['rejected']) for r in recs]
    # E[P(chosen > rejected)] = E[p^2 + (1-p)^2] over pairs, compared by sampling.
    expected = np.mean([max(p, 1 - p)**2 + min(p, 1 - p)**2 for p in probs])
    assert np.mean(probs) == pytest.approx(expected, abs=0.03)


@pytest.mark.parametrize('task', [TRANS, INTRANS], ids=lambda t: t.name)
def test_records_validate_and_are_deterministic(task):
    for kind, make in [('sft', task.sft_records), ('preference', task.preference_records),
                       ('prompt', task.prompt_records)]:
        recs = make(200, seed=5)
        assert len(recs) == 200
        assert [records.validate_record(r, kind, 'synthetic') for r in recs] == recs
        assert make(200, seed=5) == recs
        assert make(200, seed=6) != recs
        assert make(50, seed=5) == recs[:50]  # prefix-stable in n
    assert all(r['margin'] == 0.0 for r in task.preference_records(20, seed=0))


@pytest.mark.parametrize('task', [TRANS, INTRANS], ids=lambda t: t.name)
def test_train_and_eval_prompts_are_disjoint(task):
    assert len(synthetic.ALL_PROMPTS) == 56
    for seed in (0, 1):
        train = task.prompts(2000, seed=seed, split='train')
        evals = task.prompts(100, seed=seed, split='eval')
        assert set(train).isdisjoint(evals)
        assert set(train) | set(evals) == set(synthetic.ALL_PROMPTS)
        assert task.prompts(100, seed=seed, split='eval') == evals  # fixed set
        assert task.prompts(30, seed=seed, split='eval') == evals[:30]
        assert set(evals[:14]) == set(synthetic.EVAL_PROMPTS)  # each once first
    for p in train[:20]:
        letters = p[:-1]
        assert p[-1] == ':' and len(set(letters)) == 3 and ''.join(sorted(letters)) == letters
    with pytest.raises(ValueError, match='split'):
        task.prompts(3, seed=0, split='test')
