"""Synthetic alignment tasks with known gold rewards and preferences.

Both tasks share prompts and alphabet: a prompt is three distinct letters of
``ALPHABET = 'abcdefgh'``, sorted, then ``':'`` (``"bdg:"``); there are 56.
A fixed quarter of them (every fourth in sorted order, 14 prompts) is held
out for evaluation, so train and eval prompts are disjoint for every seed.

``transitive``: the gold reward of a response ``y`` to prompt letters ``S``
is ``(hits - 0.5 * misses - 1.5 * max(0, len(y) - 8)) / 8`` where a hit is a
character of ``y`` in ``S`` and a miss any other character. Eight characters
all from ``S`` score the maximum, 1.0: each character past eight costs more
than a hit earns, so a policy cannot gain by writing longer.
Preferences are Bradley-Terry with
temperature 0.1. The reference policy (length uniform in 3..8, each character
from ``S`` with probability 0.5, else uniform over the alphabet) has mean
gold reward 5.5 * (0.6875 - 0.5 * 0.3125) / 8 = 0.3652.

``intransitive``: the first character sets a class, ``ab -> 0``,
``cd -> 1``, ``ef -> 2``, anything else (empty, ``g``, ``h``, non-letters)
``-> 3`` (invalid). ``P(y > y') = sigmoid(3 C[c, c'] + (q(y) - q(y')) / 0.25)``
with ``C`` antisymmetric, ``C[0,1] = C[1,2] = C[2,0] = 1`` (a rock-paper-
scissors cycle) and ``C[k,3] = 1`` for valid ``k``; ``q`` is the transitive
reward. No reward function reproduces the cycle. The reference policy picks
class 0, 1, 2 with probabilities 0.6, 0.3, 0.1, so a Nash policy must move
mass towards classes the reference neglects.

All sampling is NumPy ``Generator`` based and deterministic in the seed;
record ``i`` has its own generator, so the first ``n`` records do not depend
on how many are asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
import itertools
import math

import numpy as np

ALPHABET = 'abcdefgh'
TARGET_LEN = 8
MISS_PENALTY = 0.5
OVERFLOW_PENALTY = 1.5
MIN_REF_LEN, MAX_REF_LEN = 3, 8
BT_TEMPERATURE = 0.1  # transitive Bradley-Terry temperature
CYCLE_STRENGTH = 3.0  # intransitive class logit scale
QUALITY_TEMPERATURE = 0.25  # intransitive weak transitive part
CLASS_LETTERS = ('ab', 'cd', 'ef')
INVALID_CLASS = 3
REFERENCE_CLASS_PROBS = (0.6, 0.3, 0.1)

ALL_PROMPTS = tuple(''.join(c) + ':' for c in itertools.combinations(ALPHABET, 3))
EVAL_PROMPTS = ALL_PROMPTS[::4]
TRAIN_PROMPTS = tuple(p for i, p in enumerate(ALL_PROMPTS) if i % 4)

# Antisymmetric class logits: row beats column when positive.
CLASS_LOGITS = np.array([[0.0, 1.0, -1.0, 1.0], [-1.0, 0.0, 1.0, 1.0], [1.0, -1.0, 0.0, 1.0],
                         [-1.0, -1.0, -1.0, 0.0]])

# Stream ids folded into the seed so that different uses never share draws.
_STREAMS = {'train': 1, 'eval': 2, 'sft': 3, 'preference': 4, 'prompt': 5, 'flip': 6}


def _rng(seed: int, stream: str, task: str, *index: int) -> np.random.Generator:
    """Generator for (seed, stream, task[, record index])."""
    task_id = sum(ord(c) * 31**i for i, c in enumerate(task)) % 2**31
    return np.random.default_rng([int(seed), _STREAMS[stream], task_id, *index])


def sigmoid_pair(z: float) -> float:
    """sigmoid(z), computed so that ``sigmoid_pair(z) + sigmoid_pair(-z)``
    is exactly 1.0 in floating point."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    return 1.0 - 1.0 / (1.0 + math.exp(z))


def prompt_letters(prompt: str) -> str:
    """The letters of a task prompt (the text before the first ':')."""
    return prompt.split(':', 1)[0]


def transitive_reward(prompt: str, response: str) -> float:
    """Gold reward ``(hits - misses/2 - max(0, len - 8)/2) / 8``."""
    letters = set(prompt_letters(prompt))
    hits = sum(ch in letters for ch in response)
    misses = len(response) - hits
    overflow = max(0, len(response) - TARGET_LEN)
    return (hits - MISS_PENALTY * misses - OVERFLOW_PENALTY * overflow) / TARGET_LEN


def response_class(response: str) -> int:
    """Class of a response by its first character; 3 means invalid."""
    if response:
        for k, letters in enumerate(CLASS_LETTERS):
            if response[0] in letters:
                return k
    return INVALID_CLASS


class Task:
    """A synthetic task: prompts, reference behaviour and gold functions.

    Attributes:
      name: the task name (``'transitive'`` or ``'intransitive'``).
    """

    name: str = ''
    train_prompts: tuple[str, ...] = TRAIN_PROMPTS
    eval_prompts: tuple[str, ...] = EVAL_PROMPTS

    # --- prompts and records -------------------------------------------
    def prompts(self, n: int, *, seed: int, split: str = 'train') -> list[str]:
        """``n`` prompts. Train prompts are drawn i.i.d. from the train pool;
        eval prompts cycle through a seeded permutation of the eval pool, so
        each eval prompt appears equally often and the list is fixed for a
        seed."""
        if split == 'train':
            idx = _rng(seed, 'train', self.name).integers(len(self.train_prompts), size=n)
            return [self.train_prompts[i] for i in idx]
        if split == 'eval':
            order = _rng(seed, 'eval', self.name).permutation(len(self.eval_prompts))
            return [self.eval_prompts[order[i % len(order)]] for i in range(n)]
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")

    def reference_response(self, prompt: str, rng: np.random.Generator) -> str:
        """One response of the reference behaviour (length 3..8, each
        character from the prompt letters with probability 0.5, else uniform
        over the alphabet)."""
        length = int(rng.integers(MIN_REF_LEN, MAX_REF_LEN + 1))
        return self._continue(prompt, '', length, rng)

    @staticmethod
    def _continue(prompt: str, prefix: str, length: int, rng: np.random.Generator) -> str:
        letters = prompt_letters(prompt)
        chars = [prefix]
        for _ in range(length - len(prefix)):
            if rng.random() < 0.5:
                chars.append(letters[rng.integers(len(letters))])
            else:
                chars.append(ALPHABET[rng.integers(len(ALPHABET))])
        return ''.join(chars)

    def sft_records(self, n: int, *, seed: int) -> list[dict]:
        """``n`` ``{prompt, response}`` demonstrations of the reference."""
        out = []
        for i in range(n):
            rng = _rng(seed, 'sft', self.name, i)
            p = self.train_prompts[rng.integers(len(self.train_prompts))]
            response = self.reference_response(p, rng)
            out.append({'prompt': p, 'response': response})
        return out

    def preference_records(self, n: int, *, seed: int) -> list[dict]:
        """``n`` ``{prompt, chosen, rejected, margin}`` pairs of two reference
        responses, labelled by a draw from the gold preference."""
        out = []
        for i in range(n):
            rng = _rng(seed, 'preference', self.name, i)
            p = self.train_prompts[rng.integers(len(self.train_prompts))]
            y1 = self.reference_response(p, rng)
            y2 = self.reference_response(p, rng)
            if rng.random() < self.gold_preference(p, y1, y2):
                chosen, rejected = y1, y2
            else:
                chosen, rejected = y2, y1
            out.append({'prompt': p, 'chosen': chosen, 'rejected': rejected, 'margin': 0.0})
        return out

    def prompt_records(self, n: int, *, seed: int, split: str = 'train') -> list[dict]:
        """``n`` ``{prompt}`` records."""
        return [{'prompt': p} for p in self.prompts(n, seed=seed, split=split)]

    def reference_responses(self, prompts: Sequence[str], *, seed: int) -> list[str]:
        """One reference response per prompt, deterministic in ``seed``."""
        rng = _rng(seed, 'prompt', self.name)
        return [self.reference_response(p, rng) for p in prompts]

    # --- gold functions -----------------------------------------------
    def gold_reward(self, prompt: str, response: str) -> float:
        """The transitive reward of a response (for ``intransitive``, the
        weak quality term q)."""
        return transitive_reward(prompt, response)

    def gold_rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Vectorised ``gold_reward``: float64[len(prompts)]."""
        return np.array([self.gold_reward(p, y) for p, y in zip(prompts, responses, strict=True)],
                        dtype=np.float64)

    def gold_preference(self, prompt: str, y: str, y_prime: str) -> float:
        """P(y preferred to y_prime | prompt); P(y>y') + P(y'>y) == 1."""
        raise NotImplementedError

    def gold_win_rate(self, prompts: Sequence[str], responses: Sequence[str],
                      ref_responses: Sequence[str]) -> float:
        """Mean gold P(response > ref_response) over the prompts."""
        probs = [
            self.gold_preference(p, y, r)
            for p, y, r in zip(prompts, responses, ref_responses, strict=True)
        ]
        return float(np.mean(probs))


class TransitiveTask(Task):
    """Reward-explainable task: preferences are Bradley-Terry on the reward."""

    name = 'transitive'

    def gold_preference(self, prompt: str, y: str, y_prime: str) -> float:
        diff = (transitive_reward(prompt, y) - transitive_reward(prompt, y_prime))
        return sigmoid_pair(diff / BT_TEMPERATURE)


class IntransitiveTask(Task):
    """Cyclic preferences over response classes plus a weak reward term.

    Attributes:
      class_logits: the 4x4 antisymmetric matrix C.
      class_matrix: sigmoid(3 C), the class-level preference matrix (row beats
        column with this probability when the q terms are equal).
    """

    name = 'intransitive'
    class_logits = CLASS_LOGITS
    class_matrix = 1.0 / (1.0 + np.exp(-CYCLE_STRENGTH * CLASS_LOGITS))

    response_class = staticmethod(response_class)

    def reference_response(self, prompt: str, rng: np.random.Generator) -> str:
        """Class 0/1/2 with probabilities 0.6/0.3/0.1 (first character
        uniform in the class's two letters), then the transitive reference
        for the rest; total length 3..8."""
        length = int(rng.integers(MIN_REF_LEN, MAX_REF_LEN + 1))
        k = int(rng.choice(3, p=REFERENCE_CLASS_PROBS))
        first = CLASS_LETTERS[k][rng.integers(2)]
        return self._continue(prompt, first, length, rng)

    def gold_preference(self, prompt: str, y: str, y_prime: str) -> float:
        c, c_prime = response_class(y), response_class(y_prime)
        quality = (transitive_reward(prompt, y) - transitive_reward(prompt, y_prime))
        z = (CYCLE_STRENGTH * CLASS_LOGITS[c, c_prime] + quality / QUALITY_TEMPERATURE)
        return sigmoid_pair(float(z))

    def best_responses(self, prompt: str) -> list[str]:
        """The highest-quality response of each class 0..3 to ``prompt``.

        ``P(y > y')`` increases with ``q(y)`` within a class, so against any
        policy one of these four is a best response: eight characters, the
        first from the class (a prompt letter when the class has one), the
        rest prompt letters.
        """
        letters = prompt_letters(prompt)
        rest = ''.join(letters[i % len(letters)] for i in range(TARGET_LEN - 1))
        out = []
        for group in CLASS_LETTERS + ('gh',):
            in_prompt = [c for c in group if c in letters]
            out.append((in_prompt[0] if in_prompt else group[0]) + rest)
        return out

    def exploitability(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
        """How much the best response beats a policy's samples.

        For each class ``c``, ``win_c`` is the mean gold ``P(y_c > y)`` of
        the class-best response against the policy's response ``y`` to the
        same prompt; ``exploitability = max_c win_c - 1/2`` (0 at a Nash
        equilibrium of the task's preference game, up to sampling) and
        ``worst_case_win_rate = 1 - max_c win_c``: the policy's win rate
        against its strongest opponent.
        """
        wins = np.zeros(len(CLASS_LETTERS) + 1)
        for p, y in zip(prompts, responses, strict=True):
            for c, best in enumerate(self.best_responses(p)):
                wins[c] += self.gold_preference(p, best, y)
        wins /= len(prompts)
        out = {
            'exploitability': float(wins.max() - 0.5),
            'worst_case_win_rate': float(1.0 - wins.max())
        }
        out.update({f'best_response_win_class{c}': float(w) for c, w in enumerate(wins)})
        return out


_TASKS = {'transitive': TransitiveTask, 'intransitive': IntransitiveTask}


def get_task(name: str) -> Task:
    """Returns the letter task called ``name`` (every synthetic task: `data.tasks.get_task`)."""
    if name not in _TASKS:
        raise ValueError(f'unknown synthetic task {name!r}; expected one of '
                         f'{sorted(_TASKS)}')
    return _TASKS[name]()


def flip_labels(records: Sequence[dict], fraction: float, *, seed: int) -> list[dict]:
    """Preference records with about `fraction` of their labels flipped: injected label noise.

    Record i has chosen and rejected swapped when a uniform draw of its own generator (seed, the
    'flip' stream, i) falls below `fraction`, so which records flip does not depend on how many
    there are. Every record gets `label_flipped` (whether it was swapped), which evaluations read
    to tell the injected noise from the task's own Bradley-Terry noise. New dicts: `records`
    stays as it was.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f'flip_labels: fraction must be in [0, 1), got {fraction}')
    out = []
    for i, r in enumerate(records):
        flip = bool(_rng(seed, 'flip', 'labels', i).random() < fraction)
        chosen, rejected = (r['rejected'], r['chosen']) if flip else (r['chosen'], r['rejected'])
        out.append({**r, 'chosen': chosen, 'rejected': rejected, 'label_flipped': flip})
    return out


def cycle_accuracy(score_cr: np.ndarray, records, gold_p: np.ndarray) -> dict[str, float]:
    """Accuracy on held-out pairs of two different valid classes, per ordered class pair.

    A reward model orders the three classes linearly, so it must get at least one of the three
    cyclic class pairs wrong; a model that fits the cycle gets all three right.
    """
    cls = np.array([[response_class(r['chosen']), response_class(r['rejected'])] for r in records])
    valid = (cls[:, 0] < 3) & (cls[:, 1] < 3) & (cls[:, 0] != cls[:, 1])
    out = {
        'cycle_pairs_accuracy': float(np.mean(score_cr[valid] > 0)),
        'cycle_pairs_gold_label_accuracy': float(np.mean(gold_p[valid] > 0.5))
    }
    # Per unordered class pair {a, b}: how often the model prefers the gold winner.
    for a, b in ((0, 1), (1, 2), (2, 0)):
        sel = valid & (((cls[:, 0] == a) & (cls[:, 1] == b)) | ((cls[:, 0] == b) &
                                                                (cls[:, 1] == a)))
        if sel.any():
            prefers_a = np.where(cls[sel, 0] == a, score_cr[sel] > 0, score_cr[sel] < 0)
            out[f'prefers_{a}_over_{b}'] = float(np.mean(prefers_a))
    return out
