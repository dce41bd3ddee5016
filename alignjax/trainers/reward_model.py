"""Reward models: Bradley-Terry on preference pairs, single or as an ensemble of K members.

`config.reward.ensemble = K` members, as K heads on one backbone (`ensemble_type='heads'`) or K
separately initialised models (`'models'`). Every member is trained on every pair; evaluation
aggregates members by `config.reward.aggregate` (mean, min, mean_minus_std).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


def build(config, mesh) -> loop.Algorithm:
    tok = inputs.make_tokenizer(config)
    train, held_out = inputs.train_eval_records(config, 'preference')
    stream = inputs.make_stream(config, 'preference', train, tok)
    model = build_reward_model(config, mesh)
    r = config.reward

    def loss_fn(model, frozen, batch, rng):
        del frozen, rng
        rc, rr = scoring.chosen_rejected_rewards(model, batch)
        margin = batch['margin'] if r.use_margin else None
        loss_sum, count = reward_losses.bradley_terry_loss(rc, rr, margin=margin,
                                                           centering=r.centering)
        agg_c = reward_losses.aggregate_ensemble(rc, method=r.aggregate, lam=r.lam)
        agg_r = reward_losses.aggregate_ensemble(rr, method=r.aggregate, lam=r.lam)
        correct, n = reward_losses.pairwise_accuracy(agg_c, agg_r)
        return loss_sum, count, {
            'accuracy': (correct, n), 'reward_mean': (jnp.sum(rc + rr) / 2, jnp.float32(rc.size))
        }

    graphdef = nnx.graphdef(model)
    score_jit = jax.jit(
        lambda state, batch: scoring.chosen_rejected_rewards(nnx.merge(graphdef, state), batch))
    task = inputs.synthetic_task(config)
    available = {
        'reward_accuracy': lambda: reward_accuracy.make(config, held_out, tok, mesh, score=
                                                        score_jit, task=task)
    }
    return loop.Algorithm(model=model, loss_fn=loss_fn, batches=loop.from_stream(stream),
                          evaluators=evaluators.select(config, available),
                          trainable=common.trainable(config))
