"""The Nash-learning trainers: every method runs end to end, pairs are labelled right, and Nash
mirror prox checkpoints only where its anchor is the current policy."""

import numpy as np
import pytest

from alignjax import metrics as metrics_lib
from alignjax import rollout as rollout_lib
from alignjax import runs
from alignjax.checkpoint import Checkpointer
from alignjax.trainers import nash

from experiment_runs import config_of, run


@pytest.fixture(scope='module', autouse=True)
def starting_point():
    runs.starting_point('experiment:experiments/sft.py:tiny,task=intransitive',
                        mesh_shape=(1, 1, 1))


@pytest.mark.parametrize('method', nash.METHODS)
def test_every_method_runs_and_reports_nash_figures(tmp_path, method):
    s = run(
        tmp_path, f'{method}.py:tiny,preference=gold', total_steps=3, log_every=1,
        **{'eval.num_prompts': 16, 'data.batch_size': 8 if method in ('nash_md', 'nash_mp') else 2})
    assert s['step'] == 3
    for key in ('exploitability', 'worst_case_win_rate', 'exploitability_ref', 'gold_reward',
                'kl_to_ref', 'class0_fraction'):
        assert np.isfinite(s[key]), (key, s)
    assert s['worst_case_win_rate'] == pytest.approx(0.5 - s['exploitability'])
    rows = metrics_lib.read_metrics(str(tmp_path))
    assert all(np.isfinite(r['loss']) and r['grad_norm'] > 0 for r in rows), rows


def test_group_preferences_are_antisymmetric_and_in_row_order():
    k = 3
    texts = ['a', 'bb', 'ccc', 'dddd', 'eeeee', 'ffffff']  # two prompts, three samples each

    def oracle(a, b):  # longer wins, by a known margin
        return np.array([0.5 + 0.05 * (len(x) - len(y)) for x, y in zip(a.texts, b.texts)],
                        np.float32)

    zeros = np.zeros((6, 2), np.int32)
    raw = rollout_lib.Responses(prompt=zeros, prompt_mask=zeros, response=zeros,
                                response_mask=zeros, prompt_texts=['p'] * 6, texts=texts)
    m = nash.group_preferences(oracle, raw, k)
    assert m.shape == (2, 3, 3)
    np.testing.assert_allclose(m + m.transpose(0, 2, 1), 1.0, atol=1e-6)
    for g in range(2):
        for i in range(k):
            for j in range(k):
                if i != j:
                    a, b = texts[g * k + i], texts[g * k + j]
                    assert m[g, i, j] == pytest.approx(0.5 + 0.05 * (len(a) - len(b)), abs=1e-6)


def test_nash_mp_saves_only_at_outer_step_boundaries(tmp_path):
    over = {
        'total_steps': 8, 'nash.phase_steps': 2, 'ckpt_every': 4, 'keep_ckpts': 5,
        'data.batch_size': 8, 'eval.num_prompts': 8
    }
    run(tmp_path / 'ok', 'nash_mp.py:tiny,preference=gold', **over)
    ckpt = Checkpointer(str(tmp_path / 'ok' / 'checkpoints'), save_every=4, keep=5)
    assert ckpt.all_steps() == [4, 8]
    ckpt.close()
    with pytest.raises(ValueError, match='ckpt_every=3 must be a multiple of 4'):
        run(tmp_path / 'bad', 'nash_mp.py:tiny,preference=gold', **dict(over, ckpt_every=3))


@pytest.mark.parametrize('override,match', [
    ({'rl.samples_per_prompt': 1}, 'samples_per_prompt must be >= 2'),
    ({'nash.preference': 'oracle'}, 'config.nash.preference'),
    ({'nash.tau': 0.0}, 'config.nash.tau'),
])
def test_bad_nash_config_names_the_key(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        run(tmp_path, 'inpo.py:tiny,preference=gold', **{'eval.num_prompts': 16}, **override)


def test_methods_without_a_kl_term_accept_tau_zero():
    for method in ('dno', 'sppo'):  # neither objective has the KL to the reference
        nash.check_nash_config(config_of(f'{method}.py:tiny', **{'nash.tau': 0.0}))
    with pytest.raises(ValueError, match='config.nash.tau'):
        nash.check_nash_config(config_of('spo.py:tiny', **{'nash.tau': 0.0}))
