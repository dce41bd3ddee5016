"""Reward models trained with preference strength (Secrets of RLHF II) and injected label noise.

The data option (`config.data.flip_fraction`), the trainer's reading of the strength columns
(its loss against a NumPy reference on a stand-in model's rewards), its whole-dataset figures
(closed forms on a hand table), its refusals, and one small run end to end (slow).
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import experiment_lib
from alignjax.data import inputs
from alignjax.data import pipeline
from alignjax.data import synthetic
from alignjax.data.tokenizer import ByteTokenizer
from alignjax.trainers import reward_model

from experiment_runs import ROOT, config_of, run

EXPERIMENT = os.path.join(ROOT, 'experiments', 'reward_model.py')


def reward_section(arg):
    return experiment_lib.load_config(f'{EXPERIMENT}:{arg}').reward


# --- injected label noise -------------------------------------------------------------------------


def test_flip_labels_swaps_a_seeded_fraction_and_marks_it():
    records = synthetic.get_task('transitive').preference_records(2000, seed=0)
    before = [dict(r) for r in records]
    out = synthetic.flip_labels(records, 0.3, seed=0)
    assert records == before  # the input is left as it was
    flipped = np.array([r['label_flipped'] for r in out])
    # Bernoulli(0.3) over 2000 records: within 4 standard deviations (0.0410).
    assert abs(flipped.mean() - 0.3) < 0.041, flipped.mean()
    for r, o in zip(records, out):
        pair = (o['rejected'], o['chosen']) if o['label_flipped'] else (o['chosen'], o['rejected'])
        assert pair == (r['chosen'], r['rejected']) and o['prompt'] == r['prompt']
    # Each record's draw is its own: a prefix of the records flips the same way.
    head = synthetic.flip_labels(records[:100], 0.3, seed=0)
    assert [r['label_flipped'] for r in head] == list(flipped[:100])
    other = np.array([r['label_flipped'] for r in synthetic.flip_labels(records, 0.3, seed=1)])
    assert (other != flipped).any()
    assert not any(r['label_flipped'] for r in synthetic.flip_labels(records, 0.0, seed=0))
    with pytest.raises(ValueError, match='fraction'):
        synthetic.flip_labels(records, 1.0, seed=0)


def test_flip_fraction_noises_the_training_pairs_only():
    clean = config_of('reward_model.py:tiny', **{'data.num_examples': 512})
    noisy = config_of('reward_model.py:tiny,label_noise=0.4', **{'data.num_examples': 512})
    assert noisy.data.flip_fraction == 0.4
    train, held_out = inputs.train_eval_records(clean, 'preference')
    noisy_train, noisy_held_out = inputs.train_eval_records(noisy, 'preference')
    assert noisy_held_out == held_out
    flipped = [r['label_flipped'] for r in noisy_train]
    assert 0.3 < np.mean(flipped) < 0.5
    for r, n in zip(train, noisy_train):
        pair = (n['rejected'], n['chosen']) if n['label_flipped'] else (n['chosen'], n['rejected'])
        assert pair == (r['chosen'], r['rejected'])
    # The gold labels' agreement falls by (1 - 2 f) times its excess over one half.
    task = synthetic.get_task('transitive')
    agree = lambda rs: np.mean(
        [task.gold_preference(r['prompt'], r['chosen'], r['rejected']) > 0.5 for r in rs])
    assert agree(noisy_train) < agree(train) - 0.1


def test_flip_fraction_refuses_other_data():
    c = config_of('sft.py:tiny')
    c.data.flip_fraction = 0.2
    with pytest.raises(ValueError, match='synthetic preference records only'):
        inputs.train_eval_records(c, 'sft')


def test_experiment_arguments():
    c = experiment_lib.load_config(f'{EXPERIMENT}:tiny,label_noise=0.4,secrets,members=3,'
                                   'adaptive_margin=0.5,flip_below=-0.1')
    # The ensemble is trained on the same noisy pairs (same seed, same flips).
    assert c.reward.reward_from == ('experiment:experiments/reward_model.py:tiny,task=transitive,'
                                    'ensemble=3,ensemble_type=models,label_noise=0.4')
    assert (c.reward.flip_negative, c.reward.flip_below, c.reward.adaptive_margin) == \
        (True, -0.1, 0.5)
    assert c.data.flip_fraction == 0.4
    # Without them the config is as before (the cache entries of earlier runs keep their keys).
    plain = experiment_lib.load_config(f'{EXPERIMENT}:tiny')
    assert 'flip_fraction' not in plain.data
    assert not {'reward_from', 'flip_negative', 'adaptive_margin'} & set(plain.reward)
    with pytest.raises(ValueError, match='flip_below'):
        experiment_lib.load_config(f'{EXPERIMENT}:tiny,secrets,flip_below=0.5')


def test_strength_settings_refusals():
    r = reward_section('tiny,secrets')
    r.reward_from = ''
    with pytest.raises(ValueError, match='need config.reward.reward_from'):
        reward_model.strength_settings(r)
    r = reward_section('tiny,secrets,adaptive_margin=0.5')
    r.use_margin = True
    with pytest.raises(ValueError, match='two margins'):
        reward_model.strength_settings(r)
    r = reward_section('tiny,secrets')
    r.flip_below = 0.2
    with pytest.raises(ValueError, match='flip_below'):
        reward_model.strength_settings(r)


# --- the trainer's loss on the strength columns ---------------------------------------------------


class TokenSumRewards:
    """A stand-in reward model: member k scores a row w_k * (sum of its real tokens) / 100 + b_k."""
    def __init__(self, w, b):
        self.w, self.b = jnp.asarray(w), jnp.asarray(b)

    def __call__(self, tokens, mask):
        s = jnp.sum(tokens * mask, axis=1).astype(jnp.float32) / 100.0
        return s[:, None] * self.w + self.b


def np_token_sum_rewards(batch, w, b, response):
    s = (np.sum(batch['prompt'] * batch['prompt_mask'], axis=1)
         + np.sum(batch[response] * batch[f'{response}_mask'], axis=1)) / 100.0
    return s[:, None] * np.asarray(w, np.float64) + np.asarray(b, np.float64)


def strength_batch(n=8):
    records = synthetic.get_task('transitive').preference_records(n, seed=7)
    fn = pipeline.make_tokenize_fn('preference', ByteTokenizer(), max_prompt_len=8,
                                   max_response_len=12)
    rows = [fn(r, i) for i, r in enumerate(records)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    batch[reward_model.STRENGTH] = np.linspace(-1.5, 2.0, n).astype(np.float32)
    batch[reward_model.STRENGTH_STD] = np.linspace(0.1, 0.4, n).astype(np.float32)
    return batch


@pytest.mark.parametrize(
    'arg, gamma, below, flip',
    [
        ('tiny,ensemble=2', 0.0, 0.0, False),
        ('tiny,ensemble=2,secrets,adaptive_margin=0', 0.0, 0.0, True),
        ('tiny,ensemble=2,secrets', 0.5, 0.0, True),  # the experiment's defaults
        ('tiny,ensemble=2,secrets,adaptive_margin=0.6,flip_below=-0.4', 0.6, -0.4, True),
        ('tiny,ensemble=2,secrets,flip_negative=False,adaptive_margin=0.6', 0.6, 0.0, False),
    ])
def test_loss_reads_the_strength_columns(arg, gamma, below, flip):
    r = reward_section(arg)
    w, b = np.array([0.7, -0.2], np.float32), np.array([0.1, 0.3], np.float32)
    batch = strength_batch()
    on_device = {k: jnp.asarray(v) for k, v in batch.items()}
    loss_sum, count, figures = reward_model.make_loss_fn(r)(TokenSumRewards(w, b), {}, on_device,
                                                            None)
    rc = np_token_sum_rewards(batch, w, b, 'chosen')
    rr = np_token_sum_rewards(batch, w, b, 'rejected')
    d = batch[reward_model.STRENGTH].astype(np.float64)
    expected, flipped = 0.0, 0
    for i in range(len(d)):
        c, rj, s = rc[i], rr[i], d[i]
        if flip and s < below:
            c, rj, s, flipped = rj, c, -s, flipped + 1
        expected += np.sum(np.logaddexp(0.0, -(c - rj - gamma * s)))
    np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-6)
    assert float(count) == 2 * len(d)
    ratio = lambda name: float(figures[name][0]) / float(figures[name][1])
    np.testing.assert_allclose(ratio('strength/mean'), d.mean(), rtol=1e-6)
    np.testing.assert_allclose(ratio('strength/std'), batch[reward_model.STRENGTH_STD].mean(),
                               rtol=1e-6)
    assert ratio('strength/negative') == np.mean(d < 0)
    if flip:
        assert ratio('strength/flipped') == flipped / len(d) and flipped > 0
    else:
        assert 'strength/flipped' not in figures


def test_loss_without_strength_columns_is_plain_bradley_terry():
    r = reward_section('tiny')
    w, b = np.array([0.5], np.float32), np.array([0.0], np.float32)
    batch = strength_batch()
    del batch[reward_model.STRENGTH], batch[reward_model.STRENGTH_STD]
    on_device = {k: jnp.asarray(v) for k, v in batch.items()}
    loss_sum, _, figures = reward_model.make_loss_fn(r)(TokenSumRewards(w, b), {}, on_device, None)
    rc = np_token_sum_rewards(batch, w, b, 'chosen')
    gap = rc - np_token_sum_rewards(batch, w, b, 'rejected')
    np.testing.assert_allclose(float(loss_sum), np.sum(np.logaddexp(0.0, -gap)), rtol=1e-6)
    assert not any(k.startswith('strength/') for k in figures)


# --- the whole-dataset figures --------------------------------------------------------------------


def test_strength_figures_closed_forms():
    task = synthetic.get_task('transitive')
    prompt = 'abc:'
    good, bad = 'aaaaaaaa', 'hhhhhhhh'  # gold P(good > bad) is 1 to float precision
    records = [
        {'prompt': prompt, 'chosen': good, 'rejected': bad, 'label_flipped': False},
        {'prompt': prompt, 'chosen': bad, 'rejected': good, 'label_flipped': True},
        {'prompt': prompt, 'chosen': bad, 'rejected': good, 'label_flipped': True},
        {'prompt': prompt, 'chosen': good, 'rejected': bad, 'label_flipped': False},
        {'prompt': prompt, 'chosen': good, 'rejected': bad, 'label_flipped': False},
    ]
    table = np.array([[1.0, 0.1], [-2.0, 0.3], [-0.2, 0.2], [-0.5, 0.1], [0.0, 0.3]], np.float32)
    out = reward_model.strength_figures(table, records, flip=True, below=0.0, task=task)
    np.testing.assert_allclose(out['strength_mean'], -1.7 / 5, rtol=1e-6)
    np.testing.assert_allclose(out['strength_std'], 1.0 / 5, rtol=1e-6)
    assert out['negative_fraction'] == out['flipped_fraction'] == 3 / 5  # 0.0 is not below 0
    assert out['injected_fraction'] == 2 / 5
    assert out['injected_flipped_back'] == 1.0  # records 1 and 2
    assert out['clean_flipped'] == 1 / 3  # record 3 of 0, 3, 4
    assert out['train_label_gold_agreement'] == 3 / 5
    assert out['train_label_gold_agreement_after_flips'] == 4 / 5  # 1, 2 fixed; 3 broken
    strict = reward_model.strength_figures(table, records, flip=True, below=-0.3, task=task)
    assert strict['flipped_fraction'] == 2 / 5 and strict['injected_flipped_back'] == 0.5
    assert strict['clean_flipped'] == 1 / 3
    assert strict['train_label_gold_agreement_after_flips'] == 3 / 5
    off = reward_model.strength_figures(table, records, flip=False, below=0.0)
    assert off['flipped_fraction'] == 0.0 and off['negative_fraction'] == 3 / 5
    assert 'train_label_gold_agreement' not in off


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_strength_from_a_noisy_ensemble_finds_the_injected_flips(tmp_path):
    # A 4-head ensemble trained 300 steps on pairs with 40% of labels flipped, then a reward
    # model trained on the same pairs with the flips and the adaptive margin.
    ensemble = ('experiment:experiments/reward_model.py:tiny,ensemble=4,label_noise=0.4,'
                'steps=300')
    s = run(tmp_path, 'reward_model.py:tiny,label_noise=0.4,secrets,adaptive_margin=0.5',
            total_steps=300, **{'reward.reward_from': ensemble})
    assert 0.35 < s['injected_fraction'] < 0.45, s
    # The estimator undoes injected flips far more often than it flips clean pairs, so the
    # corrected labels agree with the gold preference more often than the given ones.
    assert s['injected_flipped_back'] > s['clean_flipped'] + 0.15, s
    assert s['train_label_gold_agreement_after_flips'] > s['train_label_gold_agreement'] + 0.05, s
    assert s['accuracy'] > 0.6, s
    with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    train = [row for row in rows if 'strength/flipped' in row]
    assert train and all(0.0 < row['strength/flipped'] < 1.0 for row in train), rows[-1]
    assert all('strength/mean' in row and 'strength/std' in row for row in train)
