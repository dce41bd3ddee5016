"""The verifiable addition task (`data.arithmetic`): its format, answers, noisy teacher, held-out
split, pass@k figures and reward functions, against independent arithmetic."""

import numpy as np
import pytest

from alignjax.data import arithmetic, pipeline, tasks


def little_endian(n, width):
    return ''.join(str(n // 10**i % 10) for i in range(width))


def test_prompts_and_answers_are_little_endian_sums():
    rng = np.random.default_rng(0)
    for a, b in rng.integers(0, 100, (50, 2)):
        p = arithmetic.prompt_of(int(a), int(b))
        assert p == f'{little_endian(a, 2)}+{little_endian(b, 2)}='
        assert arithmetic.answer_of(p) == little_endian(a + b, 3)
        carry_free = sum(
            int(x) % 10 * 10**i for i, x in enumerate([a % 10 + b % 10, a // 10 + b // 10]))
        assert arithmetic.carry_dropped(p) == little_endian(carry_free, 3)
    assert arithmetic.answer_of('99+99=') == '891'  # 99 + 99 = 198


def test_split_is_disjoint_and_random_in_the_digits():
    task = tasks.get_task('addition')
    train, held = set(task.train_prompts), set(task.eval_prompts)
    assert not train & held and len(train) + len(held) == 10_000 and len(held) == 1000
    # no digit pattern marks the held-out problems: every answer digit occurs there
    assert {arithmetic.answer_of(p)[0] for p in held} == set('0123456789')
    assert set(task.prompts(64, seed=3, split='eval')) <= held


def test_teacher_accuracy_and_format():
    task = tasks.get_task('addition')
    records = task.sft_records(4000, seed=0)
    right = np.mean([task.gold_reward(r['prompt'], r['response']) for r in records])
    carries = np.mean([
        arithmetic.carry_dropped(r['prompt']) != arithmetic.answer_of(r['prompt']) for r in records
    ])
    expected = 1 - carries * (1 - arithmetic.TEACHER_ACCURACY)
    assert abs(right - expected) < 0.03 and 0.6 < right < 0.75
    assert all(arithmetic.well_formed(r['response']) for r in records)


def test_records_carry_the_answer_through_the_pipeline():
    prompts = pipeline.load_records('synthetic:addition', 'prompt', num_examples=8, seed=0)
    assert all(r['answer'] == arithmetic.answer_of(r['prompt']) for r in prompts)
    pairs = pipeline.load_records('synthetic:addition', 'preference', num_examples=200, seed=0)
    task = tasks.get_task('addition')
    wins = [
        task.gold_reward(r['prompt'], r['chosen']) >= task.gold_reward(r['prompt'], r['rejected'])
        for r in pairs
    ]
    assert np.mean(wins) > 0.95  # Bradley-Terry at temperature 0.1 on a 0/1 reward


def test_verify_pass_at_k_format_errors():
    task = tasks.get_task('addition')
    prompts = ['00+00=', '10+10=']  # 0 + 0 = 0 -> '000'; 1 + 1 = 2 -> '200'
    samples = [['000', '201'], ['001', '2x0'], ['000', '200']]
    out = task.verify(prompts, samples)
    assert out['pass@1'] == pytest.approx(3 / 6)
    assert out['pass@3'] == 1.0
    assert out['format_error_rate'] == pytest.approx(1 / 6)
    assert out['response_chars'] == 3.0


def test_reward_functions():
    assert arithmetic.exact_match(['00+00='] * 3, ['000', '001', ' 000\n'],
                                  answer=['000'] * 3) == [1.0, 0.0, 1.0]
    assert arithmetic.format_reward(['x'] * 4, ['123', '12', '1234', 'a23']) == [1, 0, 0, 0]
