"""Gold evaluation of policies on the synthetic tasks: sample, decode, score with gold functions.

Every figure is measured the same way for the trained and the reference policy: the same fixed
eval prompts, the same sampling key, the same temperature. So `gold_reward - gold_reward_ref` is
the effect of training and nothing else.
"""

from __future__ import annotations

import jax
import numpy as np

from alignjax import sampling
from alignjax.data import pipeline


def sample_responses(model, prompts: list[str], tok, *, max_prompt_len: int, max_new_tokens: int,
                     temperature: float, key, batch_size: int = 128) -> list[str]:
    """Decoded responses of `model` to `prompts` (temperature 0 means greedy)."""
    config = sampling.SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=max(temperature, 1e-6),
        greedy=temperature == 0.0, eos_id=tok.eos_id, pad_id=tok.pad_id,
        prompt_bucket=max_prompt_len)
    out = []
    batch_size = min(batch_size, len(prompts))
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        rows = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one shape, one compile
        enc = [pipeline.encode_prompt(tok, p, max_prompt_len) for p in rows]
        ids = np.stack([e[0] for e in enc])
        mask = np.stack([e[1] for e in enc])
        result = sampling.generate(model, ids, mask, jax.random.fold_in(key, start), config)
        tokens = np.asarray(jax.device_get(result['tokens']))
        out.extend(tok.decode(t) for t in tokens[:len(chunk)])
    return out


def gold_evaluation(task, model, ref_model, tok, *, num_prompts: int, max_prompt_len: int,
                    max_new_tokens: int, temperature: float, seed: int) -> dict[str, float]:
    """gold_reward (policy), gold_reward_ref (reference) and gold_win_rate (policy over ref)."""
    prompts = task.prompts(num_prompts, seed=seed, split='eval')
    key = jax.random.key(seed + 12345)
    kw = dict(max_prompt_len=max_prompt_len, max_new_tokens=max_new_tokens,
              temperature=temperature, key=key)
    ys = sample_responses(model, prompts, tok, **kw)
    refs = sample_responses(ref_model, prompts, tok, **kw)
    lengths = np.array([len(y) for y in ys], np.float64)
    return {
        'gold_reward': float(np.mean(task.gold_rewards(prompts, ys))),
        'gold_reward_ref': float(np.mean(task.gold_rewards(prompts, refs))),
        'gold_win_rate': task.gold_win_rate(prompts, ys, refs),
        'response_length': float(lengths.mean()),
    }


def policy_gold_reward(task, model, tok, *, num_prompts: int, max_prompt_len: int,
                       max_new_tokens: int, temperature: float, seed: int) -> float:
    """Mean gold reward of `model`'s samples on the eval prompts (periodic evaluation)."""
    prompts = task.prompts(num_prompts, seed=seed, split='eval')
    ys = sample_responses(model, prompts, tok, max_prompt_len=max_prompt_len,
                          max_new_tokens=max_new_tokens, temperature=temperature,
                          key=jax.random.key(seed + 12345))
    return float(np.mean(task.gold_rewards(prompts, ys)))
