"""Online batches: prompts -> jitted sampler -> scores -> policy, reference (and critic) passes.

`Rollout(step, policy, critic)` is the batch source every online algorithm shares. For step s it
takes prompt batch s of the prompt stream, repeats each prompt `samples_per_prompt` times (rows of
one prompt are contiguous: the group layout RLOO and GRPO expect), samples with the key
`fold_in(seed key, s)`, scores the decoded responses, and runs one teacher-forced pass of the
policy, the reference and the critic over the samples. With `greedy_baseline` it also decodes each
prompt greedily with the same sampler and scores and passes that response too (ReMax's baseline).
Everything is deterministic in (seed, step, parameters), so a resumed run redraws the same batch.

With a `generation` sharding (`resharding.GenerationSharding`: tensor-parallel, or replicated over
'data') the sampler runs on its own mesh: the policy is resharded to it before each rollout (the
frozen reference once), timed and logged as `rollout/reshard_s`; the teacher-forced passes and
the update stay in the training sharding. Tokens and log-probs do not depend on the choice.
On several processes each one samples its own rows; the logged rollout figures are global means
(throughputs: global sums).

Scorers map (prompt texts, response texts, token batch) to one float per response:
`GoldScorer` (a synthetic task's gold reward), `RewardModelScorer` (a reward model or ensemble,
aggregated by mean, min or mean - lambda * std). The Nash family scores pairs instead:
`GoldPreference` and `ModelPreference` give P(a > b) for two responses to the same prompts.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import resharding
from alignjax import sampling
from alignjax import sharding
from alignjax.losses import reward as reward_losses
from alignjax.models import scoring


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    samples_per_prompt: int = 1
    max_new_tokens: int = 12
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy_baseline: bool = False


class GoldScorer:
    """A synthetic task's gold reward of each response."""

    name = 'gold'

    def __init__(self, task):
        self.task = task

    def __call__(self, prompts, responses, batch) -> np.ndarray:
        del batch
        return self.task.gold_rewards(prompts, responses).astype(np.float32)


class RewardModelScorer:
    """A (possibly ensemble) reward model's score, members aggregated by `aggregate`."""

    name = 'reward_model'

    def __init__(self, model, mesh, *, aggregate: str = 'mean', lam: float = 1.0):
        self.graphdef, self.state = nnx.split(model)
        self.mesh = mesh
        graphdef = self.graphdef

        def score(state, batch):
            tokens = jnp.concatenate([batch['prompt'], batch['response']], axis=1)
            mask = jnp.concatenate([batch['prompt_mask'], batch['response_mask']], axis=1)
            members = nnx.merge(graphdef, state)(tokens, mask)
            return reward_losses.aggregate_ensemble(members, method=aggregate, lam=lam)

        self._score = jax.jit(score)

    def __call__(self, prompts, responses, batch) -> np.ndarray:
        del prompts, responses
        keys = ('prompt', 'prompt_mask', 'response', 'response_mask')
        out = self._score(self.state, sharding.shard_batch({k: batch[k] for k in keys}, self.mesh))
        return sharding.to_local(out).astype(np.float32)


class GoldPreference:
    """A synthetic task's gold P(a > b) for pairs of responses to the same prompts."""

    name = 'gold'

    def __init__(self, task):
        self.task = task

    def __call__(self, prompts, texts_a, texts_b, batch_a, batch_b) -> np.ndarray:
        del batch_a, batch_b
        return np.array([
            self.task.gold_preference(p, a, b)
            for p, a, b in zip(prompts, texts_a, texts_b, strict=True)
        ], np.float32)


class ModelPreference:
    """A pairwise preference model's P(a > b) = sigmoid(logit(a, b)), antisymmetric."""

    name = 'preference_model'

    def __init__(self, model, mesh):
        self.graphdef, self.state = nnx.split(model)
        self.mesh = mesh
        graphdef = self.graphdef

        def prob(state, a, b):
            cat = lambda x, y: jnp.concatenate([x, y], axis=1)
            logit = nnx.merge(graphdef, state)(cat(a['prompt'], a['response']),
                                               cat(a['prompt_mask'], a['response_mask']),
                                               cat(b['prompt'], b['response']),
                                               cat(b['prompt_mask'], b['response_mask']))
            return jax.nn.sigmoid(logit)

        self._prob = jax.jit(prob)

    def __call__(self, prompts, texts_a, texts_b, batch_a, batch_b) -> np.ndarray:
        del prompts, texts_a, texts_b
        keys = ('prompt', 'prompt_mask', 'response', 'response_mask')
        a, b = ({k: x[k] for k in keys} for x in (batch_a, batch_b))
        out = self._prob(self.state, sharding.shard_batch(a, self.mesh),
                         sharding.shard_batch(b, self.mesh))
        return sharding.to_local(out).astype(np.float32)


def global_metrics(metrics: dict) -> dict:
    """Per-process host figures -> global ones: means over processes (every process holds the
    same number of rows), sums for throughputs. A collective on several processes."""
    if jax.process_count() == 1:
        return metrics
    names = sorted(metrics)
    values = sharding.process_sum(np.array([metrics[k] for k in names], np.float32))
    n = jax.process_count()
    return {k: float(v if k.endswith('tokens_per_s') else v / n) for k, v in zip(names, values)}


@functools.lru_cache(maxsize=16)
def _teacher_forced(policy_def, ref_def, critic_def, group: int = 1):
    """Jitted (policy, reference, critic) pass over sampled responses. With `group` > 1 the rows
    are groups of `group` samples of one prompt (contiguous): each prompt runs once per model."""
    def run(policy_state, ref_state, critic_state, batch):
        args = (batch['prompt'], batch['prompt_mask'], batch['response'], batch['response_mask'])
        out = {
            'old_logp': scoring.rows_response_logprobs(nnx.merge(policy_def, policy_state), *args,
                                                       group=group),
            'ref_logp': scoring.rows_response_logprobs(nnx.merge(ref_def, ref_state), *args,
                                                       group=group),
        }
        if critic_def is not None:
            out['old_values'] = response_values(nnx.merge(critic_def, critic_state), *args)
        return out

    return jax.jit(run)


def response_values(critic, prompt, prompt_mask, response, response_mask):
    """Critic values V(x, y_<t) [B, R] at the positions that predict each response token."""
    tokens = jnp.concatenate([prompt, response], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    p = prompt.shape[1]
    values = critic(tokens, mask)[:, p - 1:p - 1 + response.shape[1]]
    return values * response_mask.astype(jnp.float32)


class Rollout:
    """Samples, scores and scores-by-teacher-forcing one online batch per step.

    Args:
      prompts: random-access stream of prompt batches (`stream[step]` with prompt, prompt_mask,
        index), e.g. `inputs.make_stream(config, 'prompt', records, tok)`.
      records: the prompt records the stream's `index` points into (for prompt texts).
      tok: the tokenizer.
      scorer: maps (prompt texts, response texts, token batch) to scores [N]; None for
        preference-based methods, which score pairs themselves.
      reference: the frozen reference policy.
      config: RolloutConfig.
      mesh: the device mesh.
      seed: sampling seed; step s samples with `fold_in(key(seed), s)`.
      task: a synthetic task, to log the gold reward next to a learned scorer's.
      generation: the sampler's sharding (`resharding.GenerationSharding`); None samples in the
        training sharding.
    """
    def __init__(self, *, prompts, records, tok, scorer, reference, config: RolloutConfig, mesh,
                 seed: int, task=None, generation: resharding.GenerationSharding | None = None):
        self.prompts, self.records, self.tok = prompts, records, tok
        self.scorer, self.config, self.mesh, self.task = scorer, config, mesh, task
        self.generation = generation
        self._on_generation = {}  # id(frozen model) -> its copy on the generation mesh
        self.reshard_s = 0.0  # seconds spent resharding since the last rollout's metrics
        self.reference = reference
        self.ref_def, self.ref_state = nnx.split(reference)
        self.key = jax.random.key(seed)
        self._sampling = sampling.SamplingConfig(max_new_tokens=config.max_new_tokens,
                                                 temperature=config.temperature, top_k=config.top_k,
                                                 top_p=config.top_p, eos_id=tok.eos_id,
                                                 pad_id=tok.pad_id, prompt_bucket=8)
        self._greedy = dataclasses.replace(self._sampling, greedy=True, temperature=1.0, top_k=0,
                                           top_p=1.0)
        self._last_end = None  # (time the previous rollout ended, its tokens): update throughput

    def to_generation(self, models):
        """`models` on the generation mesh: the frozen reference moved once and kept, anything
        else (the policy, which changes every step) moved now; the time adds to reshard_s."""
        single = not isinstance(models, (list, tuple))
        out = []
        for m in [models] if single else models:
            if m is self.reference and id(m) in self._on_generation:
                out.append(self._on_generation[id(m)])
                continue
            moved, seconds = self.generation.reshard(m)
            self.reshard_s += seconds
            if m is self.reference:
                self._on_generation[id(m)] = moved
            out.append(moved)
        return out[0] if single else out

    def _sample(self, models, prompt, prompt_mask, key, config, combine=None, *,
                placed=False) -> dict:
        """Samples on the generation mesh (moving `models` there unless `placed`)."""
        if self.generation is None:
            return self._generate(models, prompt, prompt_mask, key, config, combine, self.mesh)
        if not placed:
            models = self.to_generation(models)
        # The key, replicated on the generation mesh (from host data: on several processes a
        # device_put of a device array to another mesh's devices is refused).
        key = jax.random.wrap_key_data(
            jax.device_put(np.asarray(jax.random.key_data(key)),
                           sharding.replicated(self.generation.mesh)))
        with jax.set_mesh(self.generation.mesh):
            return self._generate(models, prompt, prompt_mask, key, config, combine,
                                  self.generation.mesh)

    @staticmethod
    def _generate(models, prompt, prompt_mask, key, config, combine, mesh) -> dict:
        ids = sharding.shard_batch({'p': prompt, 'm': prompt_mask}, mesh)
        out = sampling.generate(models, ids['p'], ids['m'], key, config, combine)
        return {k: sharding.to_local(out[k]) for k in ('tokens', 'mask', 'logprobs')}

    def sample_opponents(self, step: int, models, batch: dict, combine=None) -> dict:
        """Responses of an opponent (a model, or several through `combine`, e.g. Nash-MD's
        geometric mixture of policy and reference) to the rows of a rollout batch, as tokens,
        masks and texts: what a preference judge reads; no model pass over them is needed."""
        key = jax.random.fold_in(jax.random.fold_in(self.key, step), 1)
        out = self._sample(models, batch['prompt'], batch['prompt_mask'], key, self._sampling,
                           combine)
        return {
            'prompt': batch['prompt'], 'prompt_mask': batch['prompt_mask'],
            'response': out['tokens'], 'response_mask': out['mask'],
            'response_texts': [self.tok.decode(t) for t in out['tokens']]
        }

    def _score_and_pass(self, policy, critic, prompt_texts, batch, texts, group=1) -> dict:
        policy_def, policy_state = nnx.split(policy)
        critic_def, critic_state = nnx.split(critic) if critic is not None else (None, None)
        fn = _teacher_forced(policy_def, self.ref_def, critic_def, group)
        out = fn(policy_state, self.ref_state, critic_state, sharding.shard_batch(batch, self.mesh))
        out = {k: sharding.to_local(v) for k, v in out.items()}
        if self.scorer is not None:
            out['scores'] = self.scorer(prompt_texts, texts, batch)
        if self.task is not None:  # the gold reward next to a learned scorer's (computed once)
            out['gold'] = (out['scores'] if isinstance(self.scorer, GoldScorer) else
                           self.task.gold_rewards(prompt_texts, texts).astype(np.float32))
        return out

    def __call__(self, step: int, policy, critic=None) -> dict:
        """The host batch of `step`: tokens, masks, old/ref log-probs, (values), scores, and the
        prompt and response texts (lists: callers keep them off the device)."""
        c = self.config
        jax.block_until_ready(nnx.state(policy))  # the previous update is done: time it apart
        start = time.perf_counter()
        update_s = None if self._last_end is None else start - self._last_end[0]
        pb = self.prompts[step]
        k = c.samples_per_prompt
        prompt_texts = [self.records[int(i)]['prompt'] for i in pb['index']]
        prompt = np.repeat(pb['prompt'], k, axis=0)
        prompt_mask = np.repeat(pb['prompt_mask'], k, axis=0)
        texts = [t for t in prompt_texts for _ in range(k)]
        key = jax.random.fold_in(self.key, step)
        moved_before = self.reshard_s
        sampler = policy if self.generation is None else self.to_generation(policy)
        sample = self._sample(sampler, prompt, prompt_mask, key, self._sampling, placed=True)
        gen_s = time.perf_counter() - start - (self.reshard_s - moved_before)  # sampling only
        batch = {
            'prompt': prompt, 'prompt_mask': prompt_mask, 'response': sample['tokens'],
            'response_mask': sample['mask']
        }
        response_texts = [self.tok.decode(t) for t in batch['response']]
        batch.update(self._score_and_pass(policy, critic, texts, batch, response_texts, group=k))
        batch['sample_logp'] = sample['logprobs']  # of the distribution sampled from
        resp_mask = batch['response_mask']
        batch['has_eos'] = np.any((batch['response'] == self.tok.eos_id) & (resp_mask > 0), axis=1)
        metrics = {}
        if c.greedy_baseline:
            greedy = self._sample(sampler, pb['prompt'], pb['prompt_mask'], key, self._greedy,
                                  placed=True)
            gb = {
                'prompt': pb['prompt'], 'prompt_mask': pb['prompt_mask'],
                'response': greedy['tokens'], 'response_mask': greedy['mask']
            }
            g = self._score_and_pass(policy, None, prompt_texts, gb,
                                     [self.tok.decode(t) for t in greedy['tokens']])
            batch.update({f'greedy_{name}': v for name, v in g.items()})
            batch['greedy_response'] = greedy['tokens']
            batch['greedy_response_mask'] = greedy['mask']
            batch['greedy_has_eos'] = np.any(
                (greedy['tokens'] == self.tok.eos_id) & (greedy['mask'] > 0), axis=1)
            if 'scores' in g:
                metrics['rollout/greedy_score'] = float(np.mean(g['scores']))
        elapsed = time.perf_counter() - start
        lengths = resp_mask.sum(axis=1)
        new_tokens = int(lengths.sum())
        kl = ((batch['old_logp'] - batch['ref_logp']) * resp_mask).sum(axis=1)
        if 'scores' in batch:
            metrics['rollout/score'] = float(np.mean(batch['scores']))
        metrics.update({
            'rollout/kl_to_ref': float(np.mean(kl)),
            'rollout/response_length': float(np.mean(lengths)),
            'rollout/eos_rate': float(np.mean(batch['has_eos'])),
            'rollout/seconds': elapsed,
            'rollout/tokens_per_s': new_tokens / max(gen_s, 1e-9),
        })
        if 'gold' in batch:
            metrics['rollout/gold_reward'] = float(np.mean(batch['gold']))
        if update_s is not None:
            metrics['update/tokens_per_s'] = self._last_end[1] / max(update_s, 1e-9)
        if self.generation is not None:
            metrics['rollout/reshard_s'] = self.reshard_s
            self.reshard_s = 0.0
        self._last_end = (time.perf_counter(), int(prompt_mask.sum()) + new_tokens)
        batch['metrics'] = global_metrics(metrics)
        batch['prompt_texts'], batch['response_texts'] = texts, response_texts
        return batch
