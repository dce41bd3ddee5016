"""Pairwise preference model: P(y > y' | x) = sigmoid(logit(y, y')), antisymmetric by design.

Trained by the logistic loss on each pair in both orders. Unlike a Bradley-Terry reward model
it can represent cyclic preferences; on the intransitive synthetic task the summary reports its
accuracy on pairs whose response classes differ (where the cycle decides).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import pretrained
from alignjax import sharding
from alignjax.data import inputs
from alignjax.data import synthetic
from alignjax.losses import preference as pref_losses
from alignjax.losses import reward as reward_losses
from alignjax.models import PreferenceModel
from alignjax.trainers import common
from alignjax.trainers import loop
from alignjax.trainers.reward_model import pair_tokens


def pair_logits(model, batch):
    """(logit(chosen, rejected), logit(rejected, chosen)), each [B], from one backbone pass."""
    tokens, mask = pair_tokens(batch, 'chosen', 'rejected')
    e = model.embed(tokens, mask)
    b = batch['prompt'].shape[0]
    ec, er = e[:b], e[b:]
    return model.score(ec, er) - model.score(er, ec), model.score(er, ec) - model.score(ec, er)


def build_preference_model(config, mesh):
    cfg = common.model_config_from(config.model)
    return sharding.create_sharded(lambda: PreferenceModel(cfg, rngs=nnx.Rngs(config.seed)),
                                   mesh, common.mesh_rules(config))


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
        l_cr, l_rc = pair_logits(model, batch)
        loss_sum, count = pref_losses.preference_model_loss(l_cr, l_rc)
        correct, n = reward_losses.pairwise_accuracy(l_cr, jnp.zeros_like(l_cr))
        return loss_sum, count, {'accuracy': (correct, n)}

    graphdef = nnx.graphdef(model)
    logits_jit = jax.jit(lambda state, batch: pair_logits(nnx.merge(graphdef, state), batch)[0])
    task = inputs.synthetic_task(config)

    def evaluate(model, step):
        del step
        state = nnx.state(model)
        logits = []
        for batch, real in inputs.fixed_batches(config, 'preference', held_out, tok,
                                                        batch_size=config.data.batch_size):
            logits.append(np.asarray(logits_jit(state, sharding.shard_batch(batch, mesh)))[:real])
        return preference_figures(np.concatenate(logits), held_out, task)

    return loop.Algorithm(model=model, loss_fn=loss_fn,
                          batches=lambda step, model, algo_state: stream[step],
                          evaluate=evaluate)


def preference_figures(logit_cr: np.ndarray, records, task) -> dict[str, float]:
    """Held-out accuracy and calibration of P(chosen > rejected) predictions."""
    prob = 1.0 / (1.0 + np.exp(-logit_cr))
    swap = np.arange(len(prob)) % 2 == 1
    out = {
        'accuracy': float(np.mean((logit_cr > 0) + 0.5 * (logit_cr == 0))),
        'ece': float(reward_losses.expected_calibration_error(
            np.where(swap, 1.0 - prob, prob), np.where(swap, 0.0, 1.0))),
    }
    if task is not None:
        p = np.array([task.gold_preference(r['prompt'], r['chosen'], r['rejected'])
                      for r in records])
        out['gold_label_accuracy'] = float(np.mean((p > 0.5) + 0.5 * (p == 0.5)))
        out['bayes_accuracy'] = float(np.mean(np.maximum(p, 1.0 - p)))
        if task.name == 'intransitive':
            out.update(synthetic.cycle_accuracy(logit_cr, records, p))
    return out


