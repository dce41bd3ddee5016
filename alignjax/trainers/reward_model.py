"""Reward models: Bradley-Terry on preference pairs, single or as an ensemble of K members.

`config.reward.ensemble = K` members, as K heads on one backbone (`ensemble_type='heads'`) or K
separately initialised models (`'models'`). Every member is trained on every pair; evaluation
aggregates members by `config.reward.aggregate` (mean, min, mean_minus_std).

Preference strength (Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward
Modeling"): `config.reward.reward_from` names a trained reward model, as a rule an ensemble (a
workdir, or an `experiment:` spec trained first when missing, like a policy run's reward model).
Frozen, it scores every training pair: the strength d is its members' mean reward gap and the
std their spread (`losses.reward.preference_strength`). With `config.reward.flip_negative` the
pairs with d < `config.reward.flip_below` (default 0) have chosen and rejected swapped; with
`config.reward.adaptive_margin` = gamma > 0 the loss is -log sigmoid(r_c - r_r - gamma * d) in the
corrected orientation. The step's metrics give its batch's mean strength, spread and fractions of
negative and flipped pairs (`strength/...`); the `strength` evaluator the same over the whole
training set and, on a synthetic task, how much of the noise it finds: the labels' agreement
with the gold preference before and after the flips, and with injected label noise
(`config.data.flip_fraction`) the fraction of the injected flips it undoes.

The strengths are computed once, before training, and looked up by record index (as DPO's
`precompute_ref` does), not by the frozen model inside each step: the ensemble is frozen, so a
pair's strength is a constant of the dataset; one inference pass costs less than one per epoch
(the :tiny run sees each pair about five times), the ensemble leaves device memory before the
trainee's optimizer state arrives, and the whole-dataset figures come with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from alignjax import evaluators
from alignjax import pretrained
from alignjax import sharding
from alignjax.data import inputs
from alignjax.evaluators import reward_accuracy
from alignjax.losses import reward as reward_losses
from alignjax.models import RewardEnsemble, RewardModel, scoring
from alignjax.trainers import common
from alignjax.trainers import loop


def build_reward_model(config, mesh):
    """The (ensemble) reward model of config.model / config.reward, created sharded."""
    cfg = common.model_config_of(config)
    r = config.reward
    if r.ensemble < 1:
        raise ValueError(f'config.reward.ensemble must be >= 1, got {r.ensemble}')
    if r.ensemble_type == 'heads':
        ctor = lambda: RewardModel(cfg, rngs=nnx.Rngs(config.seed), num_heads=r.ensemble)
    elif r.ensemble_type == 'models':
        seeds = tuple(config.seed + 7919 * i for i in range(r.ensemble))
        ctor = lambda: RewardEnsemble(cfg, seeds=seeds)
    else:
        raise ValueError("config.reward.ensemble_type must be 'heads' or 'models', "
                         f'got {r.ensemble_type!r}')
    model = sharding.create_sharded(ctor, mesh, common.mesh_rules(config))
    backbones = [model.backbone] if r.ensemble_type == 'heads' else \
        [m.backbone for m in model.members]
    for backbone in backbones:
        pretrained.init_module(backbone, config.backbone_from, key='backbone_from')
    return model


def load_reward_model(spec: str, mesh, *, key: str = 'reward.reward_from'):
    """A trained reward model from a workdir or `experiment:` spec, rebuilt from its config.json.

    Returns (model, its run config) so callers can read its aggregation and model config.
    """
    path, rm_config = pretrained.run_config(spec, key=key, algo='reward_model')
    rm_config.backbone_from = ''  # every parameter comes from the checkpoint below
    model = build_reward_model(rm_config, mesh)
    pretrained.init_module(model, path, key=key)
    return model, rm_config


# The batch columns of each pair's preference strength (mean and std over the frozen ensemble).
STRENGTH, STRENGTH_STD = 'strength', 'strength_std'


def strength_settings(r) -> tuple[str, bool, float, float]:
    """(reward_from, flip_negative, flip_below, adaptive_margin) of config.reward, checked."""
    spec, flip = r.get('reward_from', ''), r.get('flip_negative', False)
    below, gamma = r.get('flip_below', 0.0), r.get('adaptive_margin', 0.0)
    if (flip or gamma) and not spec:
        raise ValueError('config.reward.flip_negative and config.reward.adaptive_margin need '
                         'config.reward.reward_from: the reward model (ensemble) that measures '
                         'preference strength')
    if below > 0:
        raise ValueError(f'config.reward.flip_below={below} must be <= 0: a positive threshold '
                         'flips pairs the ensemble agrees with')
    if gamma and r.use_margin:
        raise ValueError('config.reward.adaptive_margin and config.reward.use_margin are two '
                         "margins; the data's does not hold for flipped pairs: set one")
    return spec, flip, below, gamma


def pair_strengths(config, records, tok, mesh) -> np.ndarray:
    """[N, 2]: the preference strength (mean) and its std over the members of the frozen reward
    model of config.reward.reward_from, of each of `records`, in one pass."""
    ensemble, ens_config = load_reward_model(config.reward.reward_from, mesh)
    if ens_config.tokenizer != config.tokenizer:
        raise ValueError(f'config.reward.reward_from={config.reward.reward_from!r} reads '
                         f'tokenizer {ens_config.tokenizer!r}, this run {config.tokenizer!r}')
    graphdef, state = nnx.split(ensemble)
    strength = jax.jit(lambda state, batch: reward_losses.preference_strength(
        *scoring.chosen_rejected_rewards(nnx.merge(graphdef, state), batch)))
    table = np.zeros((len(records), 2), np.float32)
    for batch, real in inputs.fixed_batches(config, 'preference', records, tok,
                                            batch_size=config.data.batch_size):
        mean, std = jax.device_get(strength(state, sharding.shard_batch(batch, mesh)))
        table[batch['index'][:real]] = np.stack([mean, std], axis=1)[:real]
    return table


def strength_figures(table, records, *, flip: bool, below: float, task=None) -> dict:
    """The strength estimator's verdict on the training set (the `strength` evaluator).

    strength_mean, strength_std (the members' spread, averaged), negative_fraction (pairs it
    ranks the other way) and flipped_fraction; with injected noise (records carrying
    `label_flipped`, `config.data.flip_fraction`) injected_fraction, injected_flipped_back (of
    the injected flips, the fraction undone) and clean_flipped (of the other records, the
    fraction flipped); on a synthetic task the labels' agreement with the gold preference as
    given (train_label_gold_agreement) and after the flips (..._after_flips).
    """
    d, std = table[:, 0], table[:, 1]
    flipped = d < below if flip else np.zeros(d.shape, bool)
    out = {
        'strength_mean': float(np.mean(d)), 'strength_std': float(np.mean(std)),
        'negative_fraction': float(np.mean(d < 0)), 'flipped_fraction': float(np.mean(flipped))
    }
    if len(records) and 'label_flipped' in records[0]:
        injected = np.array([r['label_flipped'] for r in records], bool)
        out['injected_fraction'] = float(np.mean(injected))
        if injected.any():
            out['injected_flipped_back'] = float(np.mean(flipped[injected]))
        if not injected.all():
            out['clean_flipped'] = float(np.mean(flipped[~injected]))
    if task is not None:
        p = np.array(
            [task.gold_preference(r['prompt'], r['chosen'], r['rejected']) for r in records])
        agrees = (p > 0.5) + 0.5 * (p == 0.5)
        out['train_label_gold_agreement'] = float(np.mean(agrees))
        out['train_label_gold_agreement_after_flips'] = float(
            np.mean(np.where(flipped, 1.0 - agrees, agrees)))
    return out


def with_strengths(stream, table):
    """`Algorithm.batches` of `stream` (with record indices) plus each row's strength columns."""
    def batches(step, model, algo_state):
        del model, algo_state
        batch = stream[step]
        rows = table[batch['index']]
        return {**batch, STRENGTH: rows[:, 0], STRENGTH_STD: rows[:, 1]}, {}

    return batches


def make_loss_fn(r):
    """Bradley-Terry on a preference batch; with the strength columns (`with_strengths`) the
    flips and the adaptive margin of config.reward, and the batch's strength figures."""
    _, flip, below, gamma = strength_settings(r)

    def loss_fn(model, frozen, batch, rng):
        del frozen, rng
        rc, rr = scoring.chosen_rejected_rewards(model, batch)
        margin = batch['margin'] if r.use_margin else None
        figures = {}
        if STRENGTH in batch:
            d = batch[STRENGTH]
            n = jnp.float32(d.shape[0])
            figures['strength/mean'] = (jnp.sum(d), n)
            figures['strength/std'] = (jnp.sum(batch[STRENGTH_STD]), n)
            figures['strength/negative'] = (jnp.sum((d < 0).astype(jnp.float32)), n)
            if flip:
                rc, rr, d, flipped = reward_losses.flip_by_strength(rc, rr, d, below=below)
                figures['strength/flipped'] = (jnp.sum(flipped.astype(jnp.float32)), n)
            if gamma:
                margin = gamma * d
        loss_sum, count = reward_losses.bradley_terry_loss(rc, rr, margin=margin,
                                                           centering=r.centering)
        agg_c = reward_losses.aggregate_ensemble(rc, method=r.aggregate, lam=r.lam)
        agg_r = reward_losses.aggregate_ensemble(rr, method=r.aggregate, lam=r.lam)
        correct, n = reward_losses.pairwise_accuracy(agg_c, agg_r)
        return loss_sum, count, {
            'accuracy': (correct, n), 'reward_mean': (jnp.sum(rc + rr) / 2, jnp.float32(rc.size)),
            **figures
        }

    return loss_fn


def build(config, mesh) -> loop.Algorithm:
    r = config.reward
    spec, flip, below, _ = strength_settings(r)  # before any data or model: a typo costs nothing
    tok = inputs.make_tokenizer(config)
    train, held_out = inputs.train_eval_records(config, 'preference')
    stream = inputs.make_stream(config, 'preference', train, tok, with_index=bool(spec))
    task = inputs.synthetic_task(config)
    batches, available = loop.from_stream(stream), {}
    if spec:
        logging.info('Measuring the preference strength of %d pairs with %s', len(train), spec)
        table = pair_strengths(config, train, tok, mesh)
        figures = strength_figures(table, train, flip=flip, below=below, task=task)
        logging.info('Preference strength of the training pairs: %s', figures)
        batches = with_strengths(stream, table)
        available['strength'] = lambda: lambda model, step: dict(figures)
    model = build_reward_model(config, mesh)
    loss_fn = make_loss_fn(r)

    graphdef = nnx.graphdef(model)
    score_jit = jax.jit(
        lambda state, batch: scoring.chosen_rejected_rewards(nnx.merge(graphdef, state), batch))
    available['reward_accuracy'] = lambda: reward_accuracy.make(config, held_out, tok, mesh, score=
                                                                score_jit, task=task)
    return loop.Algorithm(model=model, loss_fn=loss_fn, batches=batches,
                          evaluators=evaluators.select(config, available),
                          trainable=common.trainable(config))
