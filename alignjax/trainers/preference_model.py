"""Pairwise preference model: P(y > y' | x) = sigmoid(logit(y, y')), antisymmetric by design.

Trained by the logistic loss on each pair in both orders. Unlike a Bradley-Terry reward model
it can represent cyclic preferences; on the intransitive synthetic task the summary reports its
accuracy on pairs whose response classes differ (where the cycle decides).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from alignjax import evaluators
from alignjax import pretrained
from alignjax import sharding
from alignjax.data import inputs
from alignjax.evaluators import preference_accuracy
from alignjax.losses import preference as pref_losses
from alignjax.losses import reward as reward_losses
from alignjax.models import PreferenceModel, scoring
from alignjax.trainers import common
from alignjax.trainers import loop


def build_preference_model(config, mesh):
    cfg = common.model_config_of(config)
    return sharding.create_sharded(lambda: PreferenceModel(cfg, rngs=nnx.Rngs(config.seed)), mesh,
                                   common.mesh_rules(config))


def load_preference_model(spec: str, mesh, *, key: str = 'nash.preference_from'):
    """A trained pairwise preference model from a workdir or `experiment:` spec."""
    path, pm_config = pretrained.run_config(spec, key=key, algo='preference_model')
    model = build_preference_model(pm_config, mesh)
    pretrained.init_module(model, path, key=key)
    return model


def build(config, mesh) -> loop.Algorithm:
    tok = inputs.make_tokenizer(config)
    train, held_out = inputs.train_eval_records(config, 'preference')
    stream = inputs.make_stream(config, 'preference', train, tok)
    model = build_preference_model(config, mesh)
    pretrained.init_module(model.backbone, config.backbone_from, key='backbone_from')

    def loss_fn(model, frozen, batch, rng):
        del frozen, rng
        l_cr, l_rc = scoring.pair_logits(model, batch)
        loss_sum, count = pref_losses.preference_model_loss(l_cr, l_rc)
        correct, n = reward_losses.pairwise_accuracy(l_cr, jnp.zeros_like(l_cr))
        return loss_sum, count, {'accuracy': (correct, n)}

    graphdef = nnx.graphdef(model)
    logits_jit = jax.jit(
        lambda state, batch: scoring.pair_logits(nnx.merge(graphdef, state), batch)[0])
    task = inputs.synthetic_task(config)
    available = {
        'preference_accuracy': lambda: preference_accuracy.make(config, held_out, tok, mesh, logits=
                                                                logits_jit, task=task)
    }
    return loop.Algorithm(model=model, loss_fn=loss_fn, batches=loop.from_stream(stream),
                          evaluators=evaluators.select(config, available),
                          trainable=common.trainable(config))
