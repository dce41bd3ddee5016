"""``addition``: a verifiable reasoning task that a tiny model learns on a CPU in minutes.

A prompt asks for the sum of two numbers of ``DIGITS`` digits, each written least-significant
digit first and zero-padded (``37 + 45`` is ``"73+54="``); the answer is the sum written the same
way in ``DIGITS + 1`` digits (``82`` is ``"280"``), then the end of the response. Writing digits
in this order lets a causal model produce each digit after the digits it depends on (the
reversed format of Lee et al. 2023, "Teaching Arithmetic to Small Transformers").

Answer format: exactly ``DIGITS + 1`` decimal digits and nothing else. A response in any other
shape is a format error. The gold reward is 1 for the right answer and 0 otherwise (a format
error included), so the mean gold reward of samples is pass@1.

The demonstrations come from a noisy teacher: with probability ``TEACHER_ACCURACY`` it adds
correctly, otherwise it forgets every carry (digit-wise sums mod 10, a top digit of 0). It
always keeps the format. Imitating it teaches the format and part of the skill: on the problems
with a carry (about 70% of them at two digits) an imitating policy is right about half the time,
so its pass@1 is near 0.3 + 0.7 * 0.5 = 0.65 and a verifiable reward has about 0.35 to gain.

Of the ``10^(2 DIGITS)`` problems, a tenth (by a fixed permutation) is held out for
evaluation; train and eval prompts are disjoint for every seed. Prompt records carry the
reference answer in their ``answer`` field (what a reward function such as `exact_match` reads).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alignjax.data import synthetic

DIGITS = 2
TEACHER_ACCURACY = 0.5


def _rev(n: int, width: int) -> str:
    """``n`` zero-padded to ``width`` digits, least-significant digit first."""
    return str(n).zfill(width)[::-1]


def prompt_of(a: int, b: int) -> str:
    return f'{_rev(a, DIGITS)}+{_rev(b, DIGITS)}='


def answer_of(prompt: str) -> str:
    """The correct response to an addition prompt."""
    a, b = (int(x[::-1]) for x in prompt.rstrip('=').split('+'))
    return _rev(a + b, DIGITS + 1)


def carry_dropped(prompt: str) -> str:
    """The teacher's mistake: each digit the sum of the operands' digits mod 10, no carries."""
    a, b = prompt.rstrip('=').split('+')
    return ''.join(str((int(x) + int(y)) % 10) for x, y in zip(a, b)) + '0'


def well_formed(response: str) -> bool:
    """Exactly DIGITS + 1 decimal digits."""
    return len(response) == DIGITS + 1 and all('0' <= ch <= '9' for ch in response)


_PROBLEMS = [(a, b) for a in range(10**DIGITS) for b in range(10**DIGITS)]
# Every tenth problem, by a fixed permutation (not by a property of the digits, which would
# leave a digit pattern the training problems never show).
_HELD_OUT = set(np.random.default_rng(20251204).permutation(len(_PROBLEMS))[:len(_PROBLEMS) // 10])


class AdditionTask(synthetic.Task):
    """Multi-digit addition with an exact-match gold reward; preferences are Bradley-Terry on it
    (temperature `synthetic.BT_TEMPERATURE`)."""

    name = 'addition'
    train_prompts = tuple(prompt_of(*p) for i, p in enumerate(_PROBLEMS) if i not in _HELD_OUT)
    eval_prompts = tuple(prompt_of(*p) for i, p in enumerate(_PROBLEMS) if i in _HELD_OUT)

    def reference_response(self, prompt: str, rng: np.random.Generator) -> str:
        """The noisy teacher's answer (right with probability TEACHER_ACCURACY, else without
        carries)."""
        return answer_of(prompt) if rng.random() < TEACHER_ACCURACY else carry_dropped(prompt)

    def prompt_records(self, n: int, *, seed: int, split: str = 'train') -> list[dict]:
        """``n`` ``{prompt, answer}`` records."""
        return [
            {'prompt': p, 'answer': answer_of(p)} for p in self.prompts(n, seed=seed, split=split)
        ]

    def gold_reward(self, prompt: str, response: str) -> float:
        return float(response == answer_of(prompt))

    def gold_preference(self, prompt: str, y: str, y_prime: str) -> float:
        diff = self.gold_reward(prompt, y) - self.gold_reward(prompt, y_prime)
        return synthetic.sigmoid_pair(diff / synthetic.BT_TEMPERATURE)

    def verify(self, prompts: Sequence[str], samples: Sequence[Sequence[str]]) -> dict[str, float]:
        """pass@1 and pass@k of k samples a prompt (`samples[j][i]`: sample j of prompt i), the
        format-error rate and the mean response length (characters), over all samples."""
        right = np.array(
            [[self.gold_reward(p, y) for p, y in zip(prompts, ys, strict=True)] for ys in samples])
        flat = [y for ys in samples for y in ys]
        k = len(samples)
        return {
            'pass@1': float(right.mean()),
            f'pass@{k}': float(right.max(axis=0).mean()),
            'format_error_rate': float(np.mean([not well_formed(y) for y in flat])),
            'response_chars': float(np.mean([len(y) for y in flat])),
        }


def exact_match(prompts: Sequence[str], responses: Sequence[str], *, answer: Sequence[str],
                **fields) -> list[float]:
    """A reward function (`config.reward.source='fn:alignjax.data.arithmetic:exact_match'`): 1
    where the response equals the record's reference answer, else 0."""
    del prompts, fields
    return [float(y.strip() == a) for y, a in zip(responses, answer, strict=True)]


def format_reward(prompts: Sequence[str], responses: Sequence[str], **fields) -> list[float]:
    """A reward function: 1 where the response has the answer format, else 0."""
    del prompts, fields
    return [float(well_formed(y)) for y in responses]
