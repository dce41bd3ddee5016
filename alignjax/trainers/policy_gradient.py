"""Online policy-gradient RL: PPO, ReMax, RLOO, GRPO and REINFORCE++ over one rollout path.

They share the batch source (`rollout.Rollout`) and the clipped-ratio policy loss; they differ in
the advantage and in what else is trained, one row each of `ONLINE_ALGOS`:

- `ppo`: per-token reward -kl_coef * KL_t with the score on the last token, GAE(gamma, lambda)
  from a critic trained beside the policy (clipped value loss), whitened advantages, several
  epochs of minibatches per rollout (Stiennon et al. 2020; Ouyang et al. 2022).
- `remax`: A = R(y) - R(greedy response of the same prompt), no critic (Li et al. 2023).
- `rloo`: A_i = R_i - mean of the prompt's other k-1 samples (Ahmadian et al. 2024).
- `grpo`: A_i = group z-score of the prompt's k samples, the KL as a k3 loss term (Shao et al.
  2024); `config.rl.grpo_normalize=False` drops the std (Dr. GRPO).
- `reinforce_pp`: REINFORCE++-baseline, A_i = R_i - group mean, standardised over the batch's
  tokens (Hu 2025).

Adding one is a row: a pure advantage function (`losses/advantages.py`) and what the algorithm
needs besides (a critic, a group of samples, a greedy baseline).

R is the score (gold reward or a reward model) minus kl_coef * sum_t KL_t when
`config.rl.kl_in == 'reward'`; with `'loss'` the KL is a loss term instead. With one epoch of
one minibatch the clipped-ratio loss is exactly REINFORCE (its gradient at ratio 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import evaluators
from alignjax import pretrained
from alignjax import resharding
from alignjax import rewards
from alignjax import rollout as rollout_lib
from alignjax import sharding
from alignjax.data import inputs
from alignjax.evaluators import gold
from alignjax.losses import advantages as adv_lib
from alignjax.losses import policy_gradient as pg
from alignjax.losses import robust
from alignjax.models import ValueModel, scoring
from alignjax.trainers import common
from alignjax.trainers import group_rows
from alignjax.trainers import loop
from alignjax.trainers import scorers


@dataclasses.dataclass(frozen=True)
class OnlineAlgo:
    """One row of the online family.

    advantages: (returns [N], response mask [N, R], *, k, rl, baseline) -> token advantages
      [N, R], pure; `returns` are the sequence returns (score minus the in-reward KL), `baseline`
      the greedy responses' returns repeated per sample (None unless `greedy_baseline`). None:
      GAE from the critic's values, or a group loss.
    """
    advantages: Callable[..., jax.Array] | None
    critic: bool = False  # a value model trained beside the policy (ActorCritic)
    min_samples: int = 1  # rl.samples_per_prompt at least
    max_samples: int = 0  # and at most (0: any)
    greedy_baseline: bool = False  # the rollout also decodes each prompt greedily
    # A loss over each prompt's group of samples (losses/group.py) instead of the clipped ratio
    # on advantages: (g: group_rows.GroupInputs, rl) -> (sum, count, metrics).
    group_loss: Callable[..., tuple] | None = None


def _remax(returns, mask, *, k, rl, baseline):
    del k, rl
    return adv_lib.sequence_to_tokens(adv_lib.remax_advantages(returns, baseline), mask)


def _rloo(returns, mask, *, k, rl, baseline):
    del rl, baseline
    return adv_lib.sequence_to_tokens(adv_lib.rloo_advantages(returns, group_size=k), mask)


def _grpo(returns, mask, *, k, rl, baseline):
    del baseline
    return adv_lib.sequence_to_tokens(
        adv_lib.grpo_advantages(returns, group_size=k, normalize=rl.grpo_normalize), mask)


def _reinforce_pp(returns, mask, *, k, rl, baseline):
    del rl, baseline
    return adv_lib.reinforce_pp_advantages(returns, mask, group_size=k)


ONLINE_ALGOS: dict[str, OnlineAlgo] = {
    'ppo': OnlineAlgo(None, critic=True),
    'remax': OnlineAlgo(_remax, greedy_baseline=True),
    'rloo': OnlineAlgo(_rloo, min_samples=2),
    'grpo': OnlineAlgo(_grpo, min_samples=2),
    'reinforce_pp': OnlineAlgo(_reinforce_pp, min_samples=2),
    'p3o': OnlineAlgo(None, min_samples=2, max_samples=2, group_loss=group_rows.p3o),
    'copg': OnlineAlgo(None, min_samples=2, max_samples=2, group_loss=group_rows.copg),
    'raft': OnlineAlgo(None, min_samples=2, group_loss=group_rows.raft),
    'online_dpo': OnlineAlgo(None, min_samples=2, group_loss=group_rows.online_dpo),
}


class ActorCritic(nnx.Module):
    """The policy and its critic, trained together by one optimizer (PPO's trainable model)."""
    def __init__(self, policy, critic):
        self.policy = policy
        self.critic = critic


def check_rl_config(config) -> None:
    """What `validation.check_fields` cannot see from the table of bounds (experiment_lib.RL):
    the algorithm's own needs and the keys that depend on each other."""
    rl, algo = config.rl, config.algo
    if algo not in ONLINE_ALGOS:
        raise ValueError(f'config.algo={algo!r} is not one of {tuple(ONLINE_ALGOS)}')
    row = ONLINE_ALGOS[algo]
    if rl.samples_per_prompt < row.min_samples:
        raise ValueError(f'{algo} needs config.rl.samples_per_prompt >= '
                         f'{row.min_samples} (a group of samples per prompt), '
                         f'got {rl.samples_per_prompt}')
    if row.max_samples and rl.samples_per_prompt > row.max_samples:
        raise ValueError(f'{algo} reads pairs: config.rl.samples_per_prompt must be '
                         f'{row.max_samples}, got {rl.samples_per_prompt}')
    if row.group_loss is not None and config.data.batch_size % rl.minibatches:
        raise ValueError(f'config.rl.minibatches={rl.minibatches} does not divide the '
                         f'{config.data.batch_size} prompt groups of a rollout (data.batch_size)')
    if rl.get('dynamic_sampling_rounds', 0) and (ONLINE_ALGOS[algo].min_samples < 2
                                                 or ONLINE_ALGOS[algo].critic):
        raise ValueError(f'config.rl.dynamic_sampling_rounds needs a group algorithm (grpo, rloo, '
                         f'reinforce_pp), not {algo}')
    rows = config.data.batch_size * rl.samples_per_prompt
    if rows % rl.minibatches:
        raise ValueError(f'config.rl.minibatches={rl.minibatches} does not divide the rollout of '
                         f'{rows} rows (data.batch_size * rl.samples_per_prompt)')
    kinds = {t.kind for t in rewards.parse(config.reward.source)}
    if 'gold' in kinds and inputs.synthetic_task(config) is None:
        raise ValueError(f'config.reward.source={config.reward.source!r} needs a synthetic '
                         'config.data.train (for its gold term)')
    if config.get('critic_from', '') not in ('reward_model', 'policy', ''):
        raise ValueError("config.critic_from must be 'reward_model', 'policy' or '', "
                         f'got {config.critic_from!r}')
    if config.get('critic_from', '') == 'reward_model' and 'reward_model' not in kinds:
        raise ValueError("config.critic_from='reward_model' needs "
                         "config.reward.source='reward_model'")


def make_advantage_fn(config):
    """Jitted (rollout batch, kl_coef) -> (advantages [N, R], returns or None, metrics)."""
    rl, row = config.rl, ONLINE_ALGOS[config.algo]
    k = rl.samples_per_prompt

    def penalised(scores, has_eos, logp, ref_logp, mask, kl_coef):
        if rl.missing_eos_penalty:
            scores = pg.missing_eos_penalty(scores, has_eos, penalty=rl.missing_eos_penalty)
        if rl.get('overlong_buffer', 0):
            scores = pg.overlong_penalty(scores, jnp.sum(mask, axis=1), max_len=rl.max_new_tokens,
                                         buffer=rl.overlong_buffer, penalty=rl.overlong_penalty)
        kl = pg.kl_estimate(logp, ref_logp, kind=rl.kl_estimator) * mask
        coef = kl_coef if rl.kl_in == 'reward' else 0.0
        return scores, kl, coef

    def fn(b: rollout_lib.RolloutBatch, kl_coef):
        mask = b.response_mask.astype(jnp.float32)
        scores, kl, coef = penalised(b.scores, b.has_eos, b.old_logp, b.ref_logp, mask, kl_coef)
        metrics = {'rollout/kl_penalty': jnp.mean(jnp.sum(kl, axis=1)) * coef}
        returns = None
        if row.group_loss is not None:  # the loss reads the sequence returns, no advantages
            return None, scores - coef * jnp.sum(kl, axis=1), metrics
        if row.advantages is None:
            rewards = pg.token_rewards(scores, kl, mask, kl_coef=coef)
            adv, returns = adv_lib.gae(rewards, b.old_values, mask, gamma=rl.gamma, lam=rl.lam)
            metrics['rollout/explained_variance'] = adv_lib.explained_variance(
                b.old_values, returns, mask)
            metrics['rollout/value_mean'] = jnp.sum(b.old_values * mask) / jnp.maximum(
                jnp.sum(mask), 1.0)
        else:
            seq = scores - coef * jnp.sum(kl, axis=1)
            baseline = None
            if row.greedy_baseline:
                g = b.greedy
                g_scores, g_kl, _ = penalised(g.scores, g.has_eos, g.old_logp, g.ref_logp,
                                              g.response_mask.astype(jnp.float32), kl_coef)
                baseline = jnp.repeat(g_scores - coef * jnp.sum(g_kl, axis=1), k)
            adv = row.advantages(seq, mask, k=k, rl=rl, baseline=baseline)
        if rl.whiten_advantages:
            adv = adv_lib.whiten(adv, mask)
        return adv, returns, metrics

    return jax.jit(fn)


def make_loss_fn(config, *, critic: bool | None = None):
    """The clipped-ratio policy loss (with the critic's value loss when `critic`, by default
    what config.algo's row says), the KL as a loss term when config.rl.kl_in == 'loss'. Nash's
    policy-gradient methods use it with critic=False."""
    rl = config.rl
    row = ONLINE_ALGOS.get(config.algo)
    if row is not None and row.group_loss is not None:
        return group_rows.make_loss_fn(config, row.group_loss)
    if critic is None:
        critic = ONLINE_ALGOS[config.algo].critic
    # One update per rollout keeps the rollout's row order (groups of a prompt's samples
    # contiguous, microbatches cutting between groups): each prompt then runs once.
    group = rl.samples_per_prompt if rl.epochs * rl.minibatches == 1 else 1

    def loss_fn(model, frozen, batch, rng):
        del frozen, rng
        policy = model.policy if critic else model
        args = (batch['prompt'], batch['prompt_mask'], batch['response'], batch['response_mask'])
        mask = batch['response_mask'].astype(jnp.float32)
        logp, entropy = scoring.rows_response_logprobs(policy, *args, group=group,
                                                       with_entropy=True)
        total, weight, metrics = pg.policy_loss(logp, batch['old_logp'], batch['advantages'], mask,
                                                clip_low=rl.clip, clip_high=rl.clip_high or None,
                                                dual_clip=rl.dual_clip or None, mode=rl.aggregation,
                                                level=rl.get('importance_level', 'token'))
        metrics = dict(metrics, policy_loss=(total, weight))
        if critic:
            values = scoring.response_values(model.critic, *args)
            v_sum, _, v_metrics = pg.value_loss(values, batch['old_values'], batch['returns'], mask,
                                                clip=rl.value_clip or None, mode=rl.aggregation)
            total = total + rl.vf_coef * v_sum
            metrics.update(v_metrics, value_loss=(v_sum, weight))
        if rl.kl_in == 'loss':
            kl_sum, _ = pg.kl_penalty_loss(logp, batch['ref_logp'], mask, kind=rl.kl_estimator,
                                           mode=rl.aggregation)
            total = total + batch['kl_coef'][0] * kl_sum
            metrics['kl_loss'] = (kl_sum, weight)
        metrics['entropy'] = (jnp.sum(entropy), jnp.sum(mask))
        return total, weight, metrics

    return loss_fn


def build_critic(config, mesh, reward_model):
    """The PPO critic: from the reward model (backbone and the mean reward head), or from the
    policy's starting point (backbone only, zero value head), or from scratch."""
    src = config.critic_from
    if src == 'reward_model':
        rm, rm_config = reward_model
        cfg = common.model_config_of(config, rm_config.model)
        member = rm.members[0] if hasattr(rm, 'members') else rm
    else:
        cfg = common.model_config_of(config)
    critic = sharding.create_sharded(lambda: ValueModel(cfg, rngs=nnx.Rngs(config.seed + 17)), mesh,
                                     common.mesh_rules(config))
    if src == 'reward_model':
        copy = lambda t: jax.tree.map(jnp.copy, t)  # own buffers: the train state is donated
        nnx.update(critic.backbone, copy(nnx.state(member.backbone)))
        critic.value_head[...] = jnp.mean(member.reward_head[...], axis=1, keepdims=True)
        critic.value_bias[...] = jnp.mean(member.reward_bias[...], keepdims=True)
    elif src == 'policy':
        pretrained.init_module(critic.backbone, config.init_from, key='init_from')
    return critic


def dynamic_sampling(rollout, step, policy, critic, first, *, k: int, rounds: int):
    """DAPO's dynamic sampling (Yu et al. 2025, "DAPO", section 3.2): a group whose k scores are
    all equal has zero group-relative advantage and teaches nothing, so it is replaced by an
    informative group of fresh prompts (`Rollout(..., refill=j)`, up to `rounds` more rollouts);
    the batch keeps its size, and if the rounds run out, the first rollout's degenerate groups
    fill what is left. Returns (batch, metrics): the groups found degenerate, refilled, left
    unfilled, and the extra rollouts taken. On several processes every process takes as many
    rounds as the neediest one (the rollout's metrics are collectives)."""
    def informative(b):
        g = np.asarray(b.scores).reshape(-1, k)
        return np.any(g != g[:, :1], axis=1)

    def rows(groups):
        return (np.asarray(groups)[:, None] * k + np.arange(k)).reshape(-1)

    groups = len(first.scores) // k
    found = [(first, np.flatnonzero(informative(first)))]
    have, used = len(found[0][1]), 0
    while used < rounds and sharding.process_sum(np.float32(have < groups)) > 0:
        used += 1
        extra, _ = rollout(step, policy, critic, refill=used)
        found.append((extra, np.flatnonzero(informative(extra))))
        have += len(found[-1][1])
    parts, filled = [], 0
    for b, idx in found:
        take = idx[:groups - filled]
        filled += len(take)
        if len(take):
            parts.append(rollout_lib.take_rows(b, rows(take)))
    if filled < groups:
        rest = np.flatnonzero(~informative(first))[:groups - filled]
        parts.append(rollout_lib.take_rows(first, rows(rest)))
    first_ok = len(found[0][1])
    return rollout_lib.concat_rows(parts), rollout_lib.global_metrics({
        'dynamic_sampling/degenerate_groups': float(groups - first_ok),
        'dynamic_sampling/refilled_groups': float(filled - first_ok),
        'dynamic_sampling/unfilled_groups': float(groups - filled),
        'dynamic_sampling/rounds': float(used),
    })


def advantage_inputs(raw: rollout_lib.RolloutBatch) -> rollout_lib.RolloutBatch:
    """The rollout less what the advantages do not read (tokens, sampling log-probs, gold), which
    then stays on the host."""
    drop = dict(prompt=None, prompt_mask=None, response=None, sample_logp=None, gold=None)
    greedy = None if raw.greedy is None else dataclasses.replace(raw.greedy, **drop)
    return dataclasses.replace(raw, **drop, greedy=greedy)


TRAIN_KEYS = ('prompt', 'prompt_mask', 'response', 'response_mask', 'old_logp', 'ref_logp')


def train_arrays(raw: rollout_lib.RolloutBatch) -> dict:
    """What the policy loss reads of a rollout (the update's batch adds its advantages)."""
    return {k: getattr(raw, k) for k in TRAIN_KEYS}


def online_setup(config, mesh):
    """What every online trainer starts from: tokenizer, synthetic task (or None), prompt records
    and their batch stream, and the policy and frozen reference (from init_from /
    reference_from)."""
    tok = inputs.make_tokenizer(config)
    task = inputs.synthetic_task(config)
    records = inputs.load_records(config, 'prompt', config.data.train,
                                  num_examples=config.data.num_examples, seed=config.seed)
    prompts = inputs.make_stream(config, 'prompt', records, tok)
    policy, reference = common.policy_and_reference(config, mesh)
    return tok, task, records, prompts, policy, reference


def generation_sharding(config, mesh):
    """The sampler's sharding named by config.rl.generation_sharding (None: the update's)."""
    return resharding.GenerationSharding.from_spec(config.rl.generation_sharding, mesh,
                                                   common.mesh_rules(config))


def online_evaluators(config, task, reference, tok, *, policy_of=lambda model: model,
                      scorer=None) -> list:
    """The evaluators of an online trainer: the gold evaluation of `policy_of(model)` against the
    reference on the task's eval prompts (with a learned `scorer`, its proxy reward too); none
    on real data."""
    available = {} if task is None else {
        'gold': lambda: gold.make(config, task, reference, tok, max_new_tokens=config.rl.
                                  max_new_tokens, policy_of=policy_of, scorer=scorer)
    }
    return evaluators.select(config, available)


def build(config, mesh) -> loop.Algorithm:
    check_rl_config(config)
    rl, row = config.rl, ONLINE_ALGOS[config.algo]
    tok, task, records, prompts, policy, reference = online_setup(config, mesh)
    scorer, reward_model = scorers.make_scorer(config, mesh, task, reference=reference, tok=tok)
    constraints = scorers.constraints(config)  # thresholds per term (constrained RLHF), or None
    model = policy
    if row.critic:
        model = ActorCritic(policy, build_critic(config, mesh, reward_model))

    rollout = rollout_lib.Rollout(
        prompts=prompts, records=records, tok=tok, scorer=scorer, reference=reference, mesh=mesh,
        seed=config.seed, task=task, generation=generation_sharding(config, mesh),
        config=rollout_lib.RolloutConfig(samples_per_prompt=rl.samples_per_prompt,
                                         max_new_tokens=rl.max_new_tokens,
                                         temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p,
                                         greedy_baseline=row.greedy_baseline,
                                         top_k_monitor=config.get('monitors', {}).get('top_k', 0)))
    advantage_fn = make_advantage_fn(config)

    def batches(step, model, algo_state):
        policy, critic = (model.policy, model.critic) if row.critic else (model, None)
        if constraints is not None:  # the step's weights, w_i - lambda_i
            scorer.multipliers = np.asarray(algo_state['lagrange'], np.float32)
        raw, metrics = rollout(step, policy, critic)
        if rl.get('dynamic_sampling_rounds', 0):
            raw, refills = dynamic_sampling(rollout, step, policy, critic, raw,
                                            k=rl.samples_per_prompt,
                                            rounds=rl.dynamic_sampling_rounds)
            metrics.update(refills)
        kl_coef = float(algo_state['kl_coef'])
        adv, returns, adv_metrics = jax.device_get(advantage_fn(advantage_inputs(raw), kl_coef))
        batch = train_arrays(raw)
        batch['kl_coef'] = np.full((len(raw.scores),), kl_coef, np.float32)
        if row.group_loss is not None:  # [G, k, ...]: an epoch's shuffle moves whole groups
            batch['returns'] = np.asarray(returns)
            k = rl.samples_per_prompt
            batch = {key: v.reshape(-1, k, *v.shape[1:]) for key, v in batch.items()}
        else:
            batch['advantages'] = np.asarray(adv)
        if row.critic:
            batch['old_values'], batch['returns'] = raw.old_values, np.asarray(returns)
        metrics.update(rollout_lib.global_metrics({k: float(v) for k, v in adv_metrics.items()}))
        metrics['kl_coef'] = kl_coef
        if constraints is not None:
            metrics.update({
                f'lagrange/{s.name}': float(v)
                for (_, s), v in zip(scorer.scorers, algo_state['lagrange'])
            })
        return batch, metrics

    def update_algo_state(algo_state, metrics):
        out = dict(algo_state)
        if rl.adaptive_kl:
            out['kl_coef'] = np.float32(
                pg.adaptive_kl_coef(float(algo_state['kl_coef']), metrics['rollout/kl_to_ref'],
                                    target=rl.kl_target, horizon=rl.kl_horizon,
                                    batch_size=config.data.batch_size * rl.samples_per_prompt))
        if constraints is not None:  # dual ascent on each constrained term's mean
            means = [metrics[f'reward/{s.name}'] for _, s in scorer.scorers]
            out['lagrange'] = robust.lagrange_update(algo_state['lagrange'], means, constraints,
                                                     lr=config.reward.get('dual_lr', 0.1))
        return out

    algo_state = {'kl_coef': np.float32(rl.kl_coef)}
    if constraints is not None:
        algo_state['lagrange'] = np.zeros(len(constraints), np.float32)

    evals = online_evaluators(config, task, reference, tok,
                              policy_of=(lambda m: m.policy) if row.critic else (lambda m: m),
                              scorer=scorers.proxy_scorer(scorer))
    return loop.Algorithm(model=model, loss_fn=make_loss_fn(config), batches=batches,
                          evaluators=evals, algo_state=algo_state,
                          update_algo_state=update_algo_state, epochs=rl.epochs,
                          minibatches=rl.minibatches, trainable=common.trainable(config))
