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

A rollout is a `RolloutBatch` (with ReMax's greedy responses as a second one inside it) and a
dict of host figures for the log, apart. Both types are pytrees of their arrays (the texts are
left out), so a jitted function takes them whole.

Scorers map `Responses` to one float per response: `GoldScorer` (a synthetic task's gold
reward), `RewardModelScorer` (a reward model or ensemble, aggregated by mean, min or
mean - lambda * std). The Nash family scores pairs instead: `GoldPreference` and
`ModelPreference` give P(a > b) for two `Responses` to the same prompts.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

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
    top_k_monitor: int = 0  # the policy's top-k mass and entropy on its samples (monitors)


_TEXTS = ('prompt_texts', 'texts', 'records')
REFILL_STRIDE = 1_000_003  # prompt batches between a step's refill rounds (dynamic sampling)


def _pytree_of_arrays(cls):
    """Registers dataclass `cls` as a pytree of its fields but the texts (`_TEXTS`), which a
    rebuilt instance leaves empty: jitted functions take it whole and never key on its text."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in _TEXTS]
    jax.tree_util.register_pytree_with_keys(
        cls, lambda x: ([(jax.tree_util.GetAttrKey(n), getattr(x, n)) for n in names], None),
        lambda _, children: cls(**dict(zip(names, children))), flatten_func=lambda x:
        ([getattr(x, n) for n in names], None))
    return cls


@_pytree_of_arrays
@dataclasses.dataclass(frozen=True, kw_only=True)
class Responses:
    """Responses to prompts, one a row, as host NumPy arrays: what a scorer or a judge reads.

    prompt, prompt_mask: [N, P] (left-padded); response, response_mask: [N, R]. prompt_texts and
    texts are the decoded prompt and response of each row, records its prompt record (what a
    reward function reads besides: a reference answer, test cases; may be empty); a pytree of
    Responses holds only its arrays (a jitted function sees no text, and its cache does not key
    on them).
    """

    prompt: np.ndarray
    prompt_mask: np.ndarray
    response: np.ndarray
    response_mask: np.ndarray
    prompt_texts: Sequence[str] = ()
    texts: Sequence[str] = ()
    records: Sequence[dict] = ()

    def tokens(self) -> Responses:
        """The four token arrays alone (what a model pass reads)."""
        return Responses(prompt=self.prompt, prompt_mask=self.prompt_mask, response=self.response,
                         response_mask=self.response_mask)

    def take(self, rows: np.ndarray) -> Responses:
        """The rows `rows` (arrays and texts)."""
        return Responses(prompt=self.prompt[rows], prompt_mask=self.prompt_mask[rows],
                         response=self.response[rows], response_mask=self.response_mask[rows],
                         prompt_texts=[self.prompt_texts[r] for r in rows],
                         texts=[self.texts[r] for r in rows],
                         records=[self.records[r] for r in rows] if self.records else ())


@_pytree_of_arrays
@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutBatch(Responses):
    """One online batch on the host: sampled responses with their scores and model passes.

    sample_logp: [N, R] log-probs under the distribution sampled from (temperature, top-k/p);
    old_logp, ref_logp: [N, R] the policy's and the reference's teacher-forced log-probs;
    has_eos: [N] whether the response ended. scores: [N] the scorer's (None for methods that
    judge pairs); gold: [N] a synthetic task's gold reward (None on real data); old_values:
    [N, R] the critic's (None without one); greedy: the greedy decode of each prompt, scored and
    passed the same way (ReMax's baseline; None otherwise), one row a prompt.
    """

    sample_logp: np.ndarray
    old_logp: np.ndarray
    ref_logp: np.ndarray
    has_eos: np.ndarray
    scores: np.ndarray | None = None
    gold: np.ndarray | None = None
    old_values: np.ndarray | None = None
    greedy: RolloutBatch | None = None


class GoldScorer:
    """A synthetic task's gold reward of each response."""

    name = 'gold'

    def __init__(self, task):
        self.task = task

    def __call__(self, responses: Responses) -> np.ndarray:
        return self.task.gold_rewards(responses.prompt_texts, responses.texts).astype(np.float32)


class RewardModelScorer:
    """A (possibly ensemble) reward model's score, members aggregated by `aggregate`."""

    name = 'reward_model'

    def __init__(self, model, mesh, *, aggregate: str = 'mean', lam: float = 1.0):
        self.graphdef, self.state = nnx.split(model)
        self.mesh = mesh
        graphdef = self.graphdef

        def score(state, r: Responses):
            tokens = jnp.concatenate([r.prompt, r.response], axis=1)
            mask = jnp.concatenate([r.prompt_mask, r.response_mask], axis=1)
            members = nnx.merge(graphdef, state)(tokens, mask)
            spread = jnp.std(members, axis=-1) if members.ndim == 2 else jnp.zeros(len(members))
            return reward_losses.aggregate_ensemble(members, method=aggregate, lam=lam), spread

        self._score = jax.jit(score)
        self._members = jax.jit(lambda state, r: nnx.merge(graphdef, state)
                                (jnp.concatenate([r.prompt, r.response], axis=1),
                                 jnp.concatenate([r.prompt_mask, r.response_mask], axis=1)))
        self._spread = None

    def members(self, responses: Responses) -> np.ndarray:
        """Each member's reward [N, K] ([N, 1] for a single reward model); their spread is the
        next `metrics()`'s, as after a call."""
        out = sharding.to_local(
            self._members(self.state, sharding.shard_batch(responses.tokens(), self.mesh)))
        out = np.asarray(out, np.float32)
        out = out[:, None] if out.ndim == 1 else out
        self._spread = float(np.mean(out.std(axis=1)))
        return out

    def __call__(self, responses: Responses) -> np.ndarray:
        out, spread = self._score(self.state, sharding.shard_batch(responses.tokens(), self.mesh))
        self._spread = float(np.mean(sharding.to_local(spread)))
        return sharding.to_local(out).astype(np.float32)

    def metrics(self) -> dict:
        """reward/ensemble_std: the members' spread on the last scored responses (a monitor)."""
        return {} if self._spread is None else {'reward/ensemble_std': self._spread}


class GoldPreference:
    """A synthetic task's gold P(a > b) for pairs of responses to the same prompts."""

    name = 'gold'

    def __init__(self, task):
        self.task = task

    def __call__(self, a: Responses, b: Responses) -> np.ndarray:
        return np.array([
            self.task.gold_preference(p, ya, yb)
            for p, ya, yb in zip(a.prompt_texts, a.texts, b.texts, strict=True)
        ], np.float32)


class ModelPreference:
    """A pairwise preference model's P(a > b) = sigmoid(logit(a, b)), antisymmetric."""

    name = 'preference_model'

    def __init__(self, model, mesh):
        self.graphdef, self.state = nnx.split(model)
        self.mesh = mesh
        graphdef = self.graphdef

        def prob(state, a: Responses, b: Responses):
            cat = lambda x, y: jnp.concatenate([x, y], axis=1)
            logit = nnx.merge(graphdef, state)(cat(a.prompt, a.response),
                                               cat(a.prompt_mask, a.response_mask),
                                               cat(b.prompt, b.response),
                                               cat(b.prompt_mask, b.response_mask))
            return jax.nn.sigmoid(logit)

        self._prob = jax.jit(prob)

    def __call__(self, a: Responses, b: Responses) -> np.ndarray:
        out = self._prob(self.state, sharding.shard_batch(a.tokens(), self.mesh),
                         sharding.shard_batch(b.tokens(), self.mesh))
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
def _teacher_forced(policy_def, ref_def, critic_def, group: int = 1, top_k: int = 0):
    """Jitted (policy, reference, critic) pass over sampled responses. With `group` > 1 the rows
    are groups of `group` samples of one prompt (contiguous): each prompt runs once per model.
    With `top_k` also the policy's per-token top-k mass and entropy (the monitors')."""
    def run(policy_state, ref_state, critic_state, r: Responses):
        args = (r.prompt, r.prompt_mask, r.response, r.response_mask)
        out = {}
        if top_k:
            mass, entropy = scoring.response_topk_stats(nnx.merge(policy_def, policy_state), *args,
                                                        k=top_k)
            out.update(topk_mass=mass, topk_entropy=entropy)
        out |= {
            'old_logp': scoring.rows_response_logprobs(nnx.merge(policy_def, policy_state), *args,
                                                       group=group),
            'ref_logp': scoring.rows_response_logprobs(nnx.merge(ref_def, ref_state), *args,
                                                       group=group),
        }
        if critic_def is not None:
            out['old_values'] = scoring.response_values(nnx.merge(critic_def, critic_state), *args)
        return out

    return jax.jit(run)


class Rollout:
    """Samples, scores and scores-by-teacher-forcing one online batch per step.

    Args:
      prompts: random-access stream of prompt batches (`stream[step]` with prompt, prompt_mask,
        index), e.g. `inputs.make_stream(config, 'prompt', records, tok)`.
      records: the prompt records the stream's `index` points into (for prompt texts).
      tok: the tokenizer.
      scorer: maps `Responses` to scores [N]; None for
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
        self._topk = {}  # the last pass's top-k sums (monitors)

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

    def sample_opponents(self, step: int, models, batch: Responses, combine=None) -> Responses:
        """Responses of an opponent (a model, or several through `combine`, e.g. Nash-MD's
        geometric mixture of policy and reference) to the rows of a rollout batch: what a
        preference judge reads; no model pass over them is needed."""
        key = jax.random.fold_in(jax.random.fold_in(self.key, step), 1)
        out = self._sample(models, batch.prompt, batch.prompt_mask, key, self._sampling, combine)
        return Responses(prompt=batch.prompt, prompt_mask=batch.prompt_mask, response=out['tokens'],
                         response_mask=out['mask'], prompt_texts=batch.prompt_texts,
                         texts=[self.tok.decode(t) for t in out['tokens']])

    def _scored(self, policy, critic, prompt, prompt_mask, records, sample, group=1,
                top_k=0) -> RolloutBatch:
        """The sampled responses decoded, scored and passed through the policy, the reference
        and the critic (`group` > 1: rows are groups of one prompt's samples)."""
        r = Responses(prompt=prompt, prompt_mask=prompt_mask, response=sample['tokens'],
                      response_mask=sample['mask'], prompt_texts=[x['prompt'] for x in records],
                      texts=[self.tok.decode(t) for t in sample['tokens']], records=records)
        policy_def, policy_state = nnx.split(policy)
        critic_def, critic_state = nnx.split(critic) if critic is not None else (None, None)
        fn = _teacher_forced(policy_def, self.ref_def, critic_def, group, top_k)
        out = fn(policy_state, self.ref_state, critic_state,
                 sharding.shard_batch(r.tokens(), self.mesh))
        out = {k: sharding.to_local(v) for k, v in out.items()}
        if top_k:  # token means over this process's rows
            tokens = max(float(r.response_mask.sum()), 1.0)
            self._topk = {
                k: float(out.pop(k).sum()) / tokens for k in ('topk_mass', 'topk_entropy')
            }
        scores = gold = None
        if self.scorer is not None:
            scores = self.scorer(r)
        if self.task is not None:  # the gold reward next to a learned scorer's (computed once)
            gold = (scores if isinstance(self.scorer, GoldScorer) else self.task.gold_rewards(
                r.prompt_texts, r.texts).astype(np.float32))
        has_eos = np.any((r.response == self.tok.eos_id) & (r.response_mask > 0), axis=1)
        return RolloutBatch(**vars(r), sample_logp=sample['logprobs'], old_logp=out['old_logp'],
                            ref_logp=out['ref_logp'], has_eos=has_eos, scores=scores, gold=gold,
                            old_values=out.get('old_values'))

    def __call__(self, step: int, policy, critic=None, *,
                 refill: int = 0) -> tuple[RolloutBatch, dict]:
        """The rollout of `step` and its host figures (rollout/score, lengths, throughput, ...).

        refill = j > 0 is the j-th extra rollout of the step (DAPO's dynamic sampling): prompt
        batch `REFILL_STRIDE * j + step` of the stream (fresh prompts from far later epochs) and
        its own key, both fixed by (seed, step, j), so that a resumed run redraws them."""
        c = self.config
        jax.block_until_ready(nnx.state(policy))  # the previous update is done: time it apart
        start = time.perf_counter()
        update_s = None if self._last_end is None or refill else start - self._last_end[0]
        pb = self.prompts[step + REFILL_STRIDE * refill]
        k = c.samples_per_prompt
        records = [self.records[int(i)] for i in pb['index']]
        prompt = np.repeat(pb['prompt'], k, axis=0)
        prompt_mask = np.repeat(pb['prompt_mask'], k, axis=0)
        key = jax.random.fold_in(self.key, step)
        if refill:
            key = jax.random.fold_in(jax.random.fold_in(key, 2), refill)
        moved_before = self.reshard_s
        sampler = policy if self.generation is None else self.to_generation(policy)
        sample = self._sample(sampler, prompt, prompt_mask, key, self._sampling, placed=True)
        gen_s = time.perf_counter() - start - (self.reshard_s - moved_before)  # sampling only
        batch = self._scored(policy, critic, prompt, prompt_mask,
                             [r for r in records for _ in range(k)], sample, group=k,
                             top_k=c.top_k_monitor)
        metrics = getattr(self.scorer, 'metrics', dict)()  # a sum's per-term means, its errors
        if c.greedy_baseline:
            greedy = self._sample(sampler, pb['prompt'], pb['prompt_mask'], key, self._greedy,
                                  placed=True)
            g = self._scored(policy, None, pb['prompt'], pb['prompt_mask'], records, greedy)
            batch = dataclasses.replace(batch, greedy=g)
            if g.scores is not None:
                metrics['rollout/greedy_score'] = float(np.mean(g.scores))
        elapsed = time.perf_counter() - start
        lengths = batch.response_mask.sum(axis=1)
        new_tokens = int(lengths.sum())
        kl = ((batch.old_logp - batch.ref_logp) * batch.response_mask).sum(axis=1)
        if batch.scores is not None:
            metrics['rollout/score'] = float(np.mean(batch.scores))
        metrics.update({
            'rollout/kl_to_ref': float(np.mean(kl)),
            'rollout/response_length': float(np.mean(lengths)),
            'rollout/eos_rate': float(np.mean(batch.has_eos)),
            'rollout/seconds': elapsed,
            'rollout/tokens_per_s': new_tokens / max(gen_s, 1e-9),
        })
        if batch.gold is not None:
            metrics['rollout/gold_reward'] = float(np.mean(batch.gold))
            if batch.scores is not None and not isinstance(self.scorer, GoldScorer):
                metrics['rollout/proxy_gold_gap'] = float(np.mean(batch.scores - batch.gold))
        if c.top_k_monitor:
            metrics.update({f'rollout/{k}': v for k, v in self._topk.items()})
        if update_s is not None:
            metrics['update/tokens_per_s'] = self._last_end[1] / max(update_s, 1e-9)
        if self.generation is not None:
            metrics['rollout/reshard_s'] = self.reshard_s
            self.reshard_s = 0.0
        if not refill:
            self._last_end = (time.perf_counter(), int(prompt_mask.sum()) + new_tokens)
        return batch, global_metrics(metrics)


def concat_rows(batches: Sequence[RolloutBatch]) -> RolloutBatch:
    """Row-wise concatenation of rollouts of one shape (no greedy baselines)."""
    first = batches[0]
    out = {}
    for f in dataclasses.fields(first):
        values = [getattr(b, f.name) for b in batches]
        if f.name == 'greedy':
            if any(v is not None for v in values):
                raise ValueError('concat_rows: rollouts with greedy baselines do not concatenate')
            out[f.name] = None
        elif values[0] is None:
            out[f.name] = None
        elif f.name in _TEXTS:
            out[f.name] = [x for v in values for x in v]
        else:
            out[f.name] = np.concatenate(values, axis=0)
    return RolloutBatch(**out)


def take_rows(batch: RolloutBatch, rows: np.ndarray) -> RolloutBatch:
    """The rows `rows` of a rollout (arrays and texts; no greedy baseline)."""
    out = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        if v is None or f.name == 'greedy':
            out[f.name] = None
        elif f.name in _TEXTS:
            out[f.name] = [v[r] for r in rows] if len(v) else v
        else:
            out[f.name] = v[rows]
    return RolloutBatch(**out)
