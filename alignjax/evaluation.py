"""Gold evaluation of policies on the synthetic tasks: sample, decode, score with gold functions.

Every figure is measured the same way for the trained and the reference policy: the same fixed
eval prompts, the same sampling key, the same temperature. So `gold_reward - gold_reward_ref` is
the effect of training and nothing else.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from alignjax import rollout as rollout_lib
from alignjax import sampling
from alignjax import sharding
from alignjax.data import pipeline
from alignjax import monitors
from alignjax.models import scoring


def sample(model, prompts: list[str], tok, *, max_prompt_len: int, max_new_tokens: int,
           temperature: float, key, batch_size: int = 128) -> dict:
    """Samples `model` on `prompts` (temperature 0: greedy).

    Returns texts, and as NumPy arrays: prompt ids and mask, response tokens and mask, and the
    policy's (untempered) per-token log-probs of the sampled tokens.
    """
    config = sampling.SamplingConfig(max_new_tokens=max_new_tokens,
                                     temperature=max(temperature, 1e-6), greedy=temperature == 0.0,
                                     eos_id=tok.eos_id, pad_id=tok.pad_id,
                                     prompt_bucket=max_prompt_len)
    batch_size = min(batch_size, len(prompts))
    add_bos = bool(getattr(tok, 'add_bos', False))  # as the training pipeline encodes prompts
    parts = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        rows = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one shape, one compile
        enc = [pipeline.encode_prompt(tok, p, max_prompt_len, add_bos=add_bos) for p in rows]
        ids = np.stack([e[0] for e in enc])
        mask = np.stack([e[1] for e in enc])
        out = sampling.generate(model, ids, mask, jax.random.fold_in(key, start), config)
        # Every process gets every row (the model's activations, and so the samples, may be
        # sharded over processes' devices).
        out = jax.tree.map(sharding.to_global_host, out)
        n = len(chunk)
        parts.append({
            'prompt': ids[:n], 'prompt_mask': mask[:n], 'tokens': out['tokens'][:n],
            'mask': out['mask'][:n], 'policy_logprobs': out['policy_logprobs'][:n]
        })
    result = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    result['texts'] = [tok.decode(t) for t in result['tokens']]
    return result


def sample_responses(model, prompts: list[str], tok, **kw) -> list[str]:
    """Decoded responses of `model` to `prompts`."""
    return sample(model, prompts, tok, **kw)['texts']


def reference_logprobs(samples: dict, reference, *, batch_size: int = 128) -> np.ndarray:
    """The reference's per-token log-probs [N, R] of `sample`'s responses (zero on padding)."""
    graphdef, state = nnx.split(reference)
    ref_logps = _ref_logprobs(graphdef)
    parts = []
    for start in range(0, len(samples['tokens']), batch_size):
        sl = slice(start, start + batch_size)
        parts.append(
            np.asarray(
                ref_logps(state, samples['prompt'][sl], samples['prompt_mask'][sl],
                          samples['tokens'][sl], samples['mask'][sl])))
    return np.concatenate(parts)


def kl_to_reference(samples: dict, reference, *, batch_size: int = 128,
                    ref_logprobs: np.ndarray | None = None) -> float:
    """Monte-Carlo KL(pi || ref) per sequence: mean over samples of sum_t log pi - log ref."""
    if ref_logprobs is None:
        ref_logprobs = reference_logprobs(samples, reference, batch_size=batch_size)
    diff = (samples['policy_logprobs'] - ref_logprobs) * samples['mask']
    return float(np.sum(diff)) / len(samples['tokens'])


def topk_figures(model, samples: dict, *, k: int) -> dict[str, float]:
    """The monitors' top-k mass and entropy (token means) of `model` on `samples`."""
    graphdef, state = nnx.split(model)
    mass, entropy = _topk_stats(graphdef, k)(state, samples['prompt'], samples['prompt_mask'],
                                             samples['tokens'], samples['mask'])
    tokens = max(float(np.sum(samples['mask'])), 1.0)
    return {
        'topk_mass': float(np.sum(mass)) / tokens, 'topk_entropy': float(np.sum(entropy)) / tokens
    }


@functools.lru_cache(maxsize=8)
def _topk_stats(graphdef, k: int):
    return jax.jit(
        lambda state, *a: scoring.response_topk_stats(nnx.merge(graphdef, state), *a, k=k))


@functools.lru_cache(maxsize=8)
def _ref_logprobs(graphdef):
    return jax.jit(lambda state, *a: scoring.response_logprobs(nnx.merge(graphdef, state), *a))


def gold_evaluation(task, model, ref_model, tok, *, num_prompts: int, max_prompt_len: int,
                    max_new_tokens: int, temperature: float, seed: int, with_kl: bool = False,
                    scorer=None, pass_k: int = 4, beta: float | None = None,
                    top_k: int = 0) -> dict[str, float]:
    """gold_reward (policy), gold_reward_ref (reference), gold_win_rate (policy over ref), with_kl
    the sampled KL(policy || reference) per sequence, and with a `scorer` (a learned reward model,
    see `rollout.RewardModelScorer`) the proxy reward of both: proxy_reward, proxy_reward_ref.
    On a verifiable task (one with `verify`, e.g. `data.arithmetic`) also pass@1 and pass@k of
    `pass_k` samples a prompt, the format-error rate and the response length, of the policy and
    (suffix _ref) of the reference. The monitors' figures (`alignjax.monitors`): the response
    length and EOS rate of both; with `beta` (a DPO-family policy) the per-token implicit reward
    beta * log(pi / pi_ref) on the policy's samples; with `top_k` the top-k mass and entropy of
    the policy and of the reference on their own samples."""
    prompts = task.prompts(num_prompts, seed=seed, split='eval')
    key = jax.random.key(seed + 12345)
    kw = dict(max_prompt_len=max_prompt_len, max_new_tokens=max_new_tokens, temperature=temperature,
              key=key)
    samples = sample(model, prompts, tok, **kw)
    ys = samples['texts']
    ref_samples = sample(ref_model, prompts, tok, **kw)
    refs = ref_samples['texts']
    lengths = np.array([len(y) for y in ys], np.float64)
    out = {
        'gold_reward': float(np.mean(task.gold_rewards(prompts, ys))),
        'gold_reward_ref': float(np.mean(task.gold_rewards(prompts, refs))),
        'gold_win_rate': task.gold_win_rate(prompts, ys, refs),
        'response_length': float(lengths.mean()),
        'response_length_ref': float(np.mean([len(y) for y in refs])),
        'eos_rate': _eos_rate(samples, tok.eos_id),
        'eos_rate_ref': _eos_rate(ref_samples, tok.eos_id),
    }
    ref_lp = reference_logprobs(samples, ref_model) if with_kl or beta else None
    if with_kl:
        out['kl_to_ref'] = kl_to_reference(samples, ref_model, ref_logprobs=ref_lp)
    if beta:
        out.update(
            monitors.implicit_reward_summary(samples['policy_logprobs'], ref_lp, samples['mask'],
                                             beta=beta))
    if top_k:
        out.update(topk_figures(model, samples, k=top_k))
        out.update(
            {f'{k}_ref': v for k, v in topk_figures(ref_model, ref_samples, k=top_k).items()})
    if hasattr(task, 'verify'):  # a verifiable task: pass@1 and pass@k, format errors
        for m, first, suffix in ((model, ys, ''), (ref_model, refs, '_ref')):
            more = [
                sample_responses(m, prompts, tok, **dict(kw, key=jax.random.fold_in(key, j)))
                for j in range(1, pass_k)
            ]
            out.update({k + suffix: v for k, v in task.verify(prompts, [first, *more]).items()})
    if hasattr(task, 'exploitability'):  # intransitive: the Nash figures, policy and reference
        out.update(task.exploitability(prompts, ys))
        ref_figures = task.exploitability(prompts, refs)
        out['exploitability_ref'] = ref_figures['exploitability']
        out['worst_case_win_rate_ref'] = ref_figures['worst_case_win_rate']
        classes = np.array([task.response_class(y) for y in ys])
        out.update({f'class{c}_fraction': float(np.mean(classes == c)) for c in range(4)})
    if scorer is not None:
        for name, s in (('proxy_reward', samples), ('proxy_reward_ref', ref_samples)):
            responses = rollout_lib.Responses(prompt=s['prompt'], prompt_mask=s['prompt_mask'],
                                              response=s['tokens'], response_mask=s['mask'],
                                              prompt_texts=prompts, texts=s['texts'])
            out[name] = float(np.mean(scorer(responses)))
    return out


def _eos_rate(samples: dict, eos_id: int) -> float:
    return float(np.mean(np.any((samples['tokens'] == eos_id) & (samples['mask'] > 0), axis=1)))


def policy_gold_reward(task, model, tok, *, num_prompts: int, max_prompt_len: int,
                       max_new_tokens: int, temperature: float, seed: int) -> float:
    """Mean gold reward of `model`'s samples on the eval prompts (periodic evaluation)."""
    prompts = task.prompts(num_prompts, seed=seed, split='eval')
    ys = sample_responses(model, prompts, tok, max_prompt_len=max_prompt_len,
                          max_new_tokens=max_new_tokens, temperature=temperature,
                          key=jax.random.key(seed + 12345))
    return float(np.mean(task.gold_rewards(prompts, ys)))
