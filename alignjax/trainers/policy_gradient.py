"""Online policy-gradient RL: PPO, ReMax, RLOO and GRPO over one rollout path.

The four share the batch source (`rollout.Rollout`) and the clipped-ratio policy loss; they
differ in the advantage and in what else is trained:

- `ppo`: per-token reward -kl_coef * KL_t with the score on the last token, GAE(gamma, lambda)
  from a critic trained beside the policy (clipped value loss), whitened advantages, several
  epochs of minibatches per rollout (Stiennon et al. 2020; Ouyang et al. 2022).
- `remax`: A = R(y) - R(greedy response of the same prompt), no critic (Li et al. 2023).
- `rloo`: A_i = R_i - mean of the prompt's other k-1 samples (Ahmadian et al. 2024).
- `grpo`: A_i = group z-score of the prompt's k samples, the KL as a k3 loss term (Shao et al.
  2024); `config.rl.grpo_normalize=False` drops the std (Dr. GRPO).

R is the score (gold reward or a reward model) minus kl_coef * sum_t KL_t when
`config.rl.kl_in == 'reward'`; with `'loss'` the KL is a loss term instead. With one epoch of
one minibatch the clipped-ratio loss is exactly REINFORCE (its gradient at ratio 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import evaluation
from alignjax import pretrained
from alignjax import resharding
from alignjax import rollout as rollout_lib
from alignjax import sharding
from alignjax.data import inputs
from alignjax.losses import advantages as adv_lib
from alignjax.losses import policy_gradient as pg
from alignjax.models import ValueModel, scoring
from alignjax.trainers import common
from alignjax.trainers import loop
from alignjax.trainers.reward_model import load_reward_model

ONLINE_ALGOS = ('ppo', 'remax', 'rloo', 'grpo')
KL_IN = ('reward', 'loss')
AGGREGATIONS = ('token_mean', 'sequence_mean', 'sequence_sum')


class ActorCritic(nnx.Module):
    """The policy and its critic, trained together by one optimizer (PPO's trainable model)."""

    def __init__(self, policy, critic):
        self.policy = policy
        self.critic = critic


def check_rl_config(config) -> None:
    rl, algo = config.rl, config.algo
    if algo not in ONLINE_ALGOS:
        raise ValueError(f'config.algo={algo!r} is not one of {ONLINE_ALGOS}')
    if rl.kl_in not in KL_IN:
        raise ValueError(f'config.rl.kl_in must be one of {KL_IN}, got {rl.kl_in!r}')
    if rl.aggregation not in AGGREGATIONS:
        raise ValueError(f'config.rl.aggregation must be one of {AGGREGATIONS}, '
                         f'got {rl.aggregation!r}')
    if rl.kl_estimator not in ('k1', 'k2', 'k3'):
        raise ValueError(f"config.rl.kl_estimator must be k1, k2 or k3, got {rl.kl_estimator!r}")
    if algo in ('rloo', 'grpo') and rl.samples_per_prompt < 2:
        raise ValueError(f'{algo} needs config.rl.samples_per_prompt >= 2 (a group of samples '
                         f'per prompt), got {rl.samples_per_prompt}')
    rows = config.data.batch_size * rl.samples_per_prompt
    if rows % rl.minibatches:
        raise ValueError(f'config.rl.minibatches={rl.minibatches} does not divide the rollout of '
                         f'{rows} rows (data.batch_size * rl.samples_per_prompt)')
    if rl.epochs < 1 or rl.minibatches < 1:
        raise ValueError('config.rl.epochs and config.rl.minibatches must be >= 1')
    if config.reward.source not in ('gold', 'reward_model'):
        raise ValueError("config.reward.source must be 'gold' or 'reward_model', "
                         f'got {config.reward.source!r}')
    if config.reward.source == 'gold' and inputs.synthetic_task(config) is None:
        raise ValueError("config.reward.source='gold' needs a synthetic config.data.train")
    if config.get('critic_from', '') not in ('reward_model', 'policy', ''):
        raise ValueError("config.critic_from must be 'reward_model', 'policy' or '', "
                         f'got {config.critic_from!r}')
    if config.get('critic_from', '') == 'reward_model' and config.reward.source != 'reward_model':
        raise ValueError("config.critic_from='reward_model' needs "
                         "config.reward.source='reward_model'")


def make_advantage_fn(config):
    """Jitted (host batch, kl_coef) -> (advantages [N, R], returns or None, metrics)."""
    rl, algo = config.rl, config.algo
    k = rl.samples_per_prompt

    def penalised(scores, has_eos, logp, ref_logp, mask, kl_coef):
        if rl.missing_eos_penalty:
            scores = pg.missing_eos_penalty(scores, has_eos, penalty=rl.missing_eos_penalty)
        kl = pg.kl_estimate(logp, ref_logp, kind=rl.kl_estimator) * mask
        coef = kl_coef if rl.kl_in == 'reward' else 0.0
        return scores, kl, coef

    def fn(b, kl_coef):
        mask = b['response_mask'].astype(jnp.float32)
        scores, kl, coef = penalised(b['scores'], b['has_eos'], b['old_logp'], b['ref_logp'],
                                     mask, kl_coef)
        metrics = {'rollout/kl_penalty': jnp.mean(jnp.sum(kl, axis=1)) * coef}
        returns = None
        if algo == 'ppo':
            rewards = pg.token_rewards(scores, kl, mask, kl_coef=coef)
            adv, returns = adv_lib.gae(rewards, b['old_values'], mask, gamma=rl.gamma, lam=rl.lam)
            metrics['rollout/explained_variance'] = adv_lib.explained_variance(
                b['old_values'], returns, mask)
            metrics['rollout/value_mean'] = jnp.sum(b['old_values'] * mask) / jnp.maximum(
                jnp.sum(mask), 1.0)
        else:
            seq = scores - coef * jnp.sum(kl, axis=1)
            if algo == 'remax':
                gmask = b['greedy_response_mask'].astype(jnp.float32)
                g_scores, g_kl, _ = penalised(b['greedy_scores'], b['greedy_has_eos'],
                                              b['greedy_old_logp'], b['greedy_ref_logp'], gmask,
                                              kl_coef)
                baseline = jnp.repeat(g_scores - coef * jnp.sum(g_kl, axis=1), k)
                a = adv_lib.remax_advantages(seq, baseline)
            elif algo == 'rloo':
                a = adv_lib.rloo_advantages(seq, group_size=k)
            else:
                a = adv_lib.grpo_advantages(seq, group_size=k, normalize=rl.grpo_normalize)
            adv = adv_lib.sequence_to_tokens(a, mask)
        if rl.whiten_advantages:
            adv = adv_lib.whiten(adv, mask)
        return adv, returns, metrics

    return jax.jit(fn)


def make_loss_fn(config):
    rl, algo = config.rl, config.algo
    # One update per rollout keeps the rollout's row order (groups of a prompt's samples
    # contiguous, microbatches cutting between groups): each prompt then runs once.
    group = rl.samples_per_prompt if rl.epochs * rl.minibatches == 1 else 1

    def loss_fn(model, frozen, batch, rng):
        del frozen, rng
        policy = model.policy if algo == 'ppo' else model
        args = (batch['prompt'], batch['prompt_mask'], batch['response'], batch['response_mask'])
        mask = batch['response_mask'].astype(jnp.float32)
        logp, entropy = scoring.rows_response_logprobs(policy, *args, group=group,
                                                       with_entropy=True)
        total, weight, metrics = pg.policy_loss(
            logp, batch['old_logp'], batch['advantages'], mask, clip_low=rl.clip,
            clip_high=rl.clip_high or None, dual_clip=rl.dual_clip or None, mode=rl.aggregation)
        metrics = dict(metrics, policy_loss=(total, weight))
        if algo == 'ppo':
            values = rollout_lib.response_values(model.critic, *args)
            v_sum, _, v_metrics = pg.value_loss(values, batch['old_values'], batch['returns'],
                                                mask, clip=rl.value_clip or None,
                                                mode=rl.aggregation)
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
        cfg = common.model_config_from(rm_config.model)
        member = rm.members[0] if hasattr(rm, 'members') else rm
    else:
        cfg = common.model_config_from(config.model)
    critic = sharding.create_sharded(lambda: ValueModel(cfg, rngs=nnx.Rngs(config.seed + 17)),
                                     mesh, common.mesh_rules(config))
    if src == 'reward_model':
        copy = lambda t: jax.tree.map(jnp.copy, t)  # own buffers: the train state is donated
        nnx.update(critic.backbone, copy(nnx.state(member.backbone)))
        critic.value_head[...] = jnp.mean(member.reward_head[...], axis=1, keepdims=True)
        critic.value_bias[...] = jnp.mean(member.reward_bias[...], keepdims=True)
    elif src == 'policy':
        pretrained.init_module(critic.backbone, config.init_from, key='init_from')
    return critic


ADVANTAGE_KEYS = ('response_mask', 'scores', 'has_eos', 'old_logp', 'ref_logp', 'old_values',
                  'greedy_response_mask', 'greedy_scores', 'greedy_has_eos', 'greedy_old_logp',
                  'greedy_ref_logp')
TRAIN_KEYS = ('prompt', 'prompt_mask', 'response', 'response_mask', 'old_logp', 'ref_logp')


def online_setup(config, mesh):
    """What every online trainer starts from: tokenizer, synthetic task (or None), prompt records
    and their batch stream, and the policy and frozen reference (from init_from /
    reference_from)."""
    tok = inputs.make_tokenizer(config)
    task = inputs.synthetic_task(config)
    records = inputs.load_records(config, 'prompt', config.data.train,
                                          num_examples=config.data.num_examples,
                                          seed=config.seed)
    prompts = inputs.make_stream(config, 'prompt', records, tok)
    policy = common.build_policy(config, mesh)
    pretrained.init_module(policy, config.init_from)
    reference = common.build_policy(config, mesh)
    pretrained.init_module(reference, config.reference_from or config.init_from,
                           key='reference_from' if config.reference_from else 'init_from')
    return tok, task, records, prompts, policy, reference


def generation_sharding(config, mesh):
    """The sampler's sharding named by config.rl.generation_sharding (None: the update's)."""
    return resharding.GenerationSharding.from_spec(config.rl.generation_sharding, mesh,
                                                   common.mesh_rules(config))


def make_evaluate(config, task, reference, tok, *, policy_of=lambda model: model, scorer=None):
    """`evaluate(model, step)` of an online trainer: the gold evaluation of `policy_of(model)`
    against the reference on the task's eval prompts (with a learned `scorer`, its proxy reward
    too); nothing on real data."""

    def evaluate(model, step):
        del step
        if task is None:
            return {}
        e = config.eval
        return evaluation.gold_evaluation(
            task, policy_of(model), reference, tok, num_prompts=e.num_prompts,
            max_prompt_len=config.data.max_prompt_len, max_new_tokens=config.rl.max_new_tokens,
            temperature=e.temperature, seed=config.seed, with_kl=True, scorer=scorer)

    return evaluate


def build(config, mesh) -> loop.Algorithm:
    check_rl_config(config)
    rl, algo = config.rl, config.algo
    tok, task, records, prompts, policy, reference = online_setup(config, mesh)
    reward_model = None
    if config.reward.source == 'gold':
        scorer = rollout_lib.GoldScorer(task)
    else:
        reward_model = load_reward_model(config.reward.reward_from, mesh)
        scorer = rollout_lib.RewardModelScorer(reward_model[0], mesh,
                                               aggregate=config.reward.aggregate,
                                               lam=config.reward.lam)
    model = policy
    if algo == 'ppo':
        model = ActorCritic(policy, build_critic(config, mesh, reward_model))

    rollout = rollout_lib.Rollout(
        prompts=prompts, records=records, tok=tok, scorer=scorer, reference=reference, mesh=mesh,
        seed=config.seed, task=task, generation=generation_sharding(config, mesh),
        config=rollout_lib.RolloutConfig(
            samples_per_prompt=rl.samples_per_prompt, max_new_tokens=rl.max_new_tokens,
            temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p,
            greedy_baseline=algo == 'remax'))
    advantage_fn = make_advantage_fn(config)

    def batches(step, model, algo_state):
        policy, critic = (model.policy, model.critic) if algo == 'ppo' else (model, None)
        raw = rollout(step, policy, critic)
        kl_coef = float(algo_state['kl_coef'])
        # Only what the advantages read goes to the device (not tokens, texts or gold scores).
        arrays = {k: raw[k] for k in ADVANTAGE_KEYS if k in raw}
        adv, returns, adv_metrics = jax.device_get(advantage_fn(arrays, kl_coef))
        batch = {k: raw[k] for k in TRAIN_KEYS}
        batch['advantages'] = np.asarray(adv)
        if algo == 'ppo':
            batch['old_values'], batch['returns'] = raw['old_values'], np.asarray(returns)
        batch['kl_coef'] = np.full((len(adv),), kl_coef, np.float32)
        metrics = dict(raw['metrics'], **rollout_lib.global_metrics(
            {k: float(v) for k, v in adv_metrics.items()}))
        metrics['kl_coef'] = kl_coef
        batch['metrics'] = metrics
        return batch

    def update_algo_state(algo_state, metrics):
        if not rl.adaptive_kl:
            return algo_state
        coef = pg.adaptive_kl_coef(float(algo_state['kl_coef']), metrics['rollout/kl_to_ref'],
                                   target=rl.kl_target, horizon=rl.kl_horizon,
                                   batch_size=config.data.batch_size * rl.samples_per_prompt)
        return {'kl_coef': np.float32(coef)}

    evaluate = make_evaluate(config, task, reference, tok,
                             policy_of=(lambda m: m.policy) if algo == 'ppo' else (lambda m: m),
                             scorer=scorer if reward_model is not None else None)
    return loop.Algorithm(
        model=model, loss_fn=make_loss_fn(config), batches=batches, evaluate=evaluate,
        algo_state={'kl_coef': np.float32(rl.kl_coef)}, update_algo_state=update_algo_state,
        epochs=rl.epochs, minibatches=rl.minibatches)
