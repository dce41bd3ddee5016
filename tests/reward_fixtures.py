"""Reward functions for the tests of `alignjax.rewards` (imported by path in its worker processes:
`fn:reward_fixtures:NAME`, this directory being on the tests' sys.path)."""

import time

CALLS = [0]  # calls in this worker process


def length(prompts, responses, **fields):
    del prompts, fields
    return [float(len(y)) for y in responses]


def answer_match(prompts, responses, *, answer, **fields):
    del prompts, fields
    return [float(y == a) for y, a in zip(responses, answer)]


def raises_on_b(prompts, responses, **fields):
    del fields
    for p in prompts:
        if p.startswith('b'):
            raise KeyError(f'no rule for {p}')
    return [1.0] * len(responses)


def sleeps(prompts, responses, **fields):
    del prompts, fields
    time.sleep(30)
    return [0.0] * len(responses)


def nan_on_b(prompts, responses, **fields):
    del fields
    return [float('nan') if p.startswith('b') else 0.5 for p in prompts]


def too_few(prompts, responses, **fields):
    del prompts, responses, fields
    return [1.0]


def nan_from_third_call(prompts, responses, **fields):
    del prompts, fields
    CALLS[0] += 1
    return [float('nan') if CALLS[0] >= 3 else 0.1] * len(responses)


NOT_A_FUNCTION = 3
