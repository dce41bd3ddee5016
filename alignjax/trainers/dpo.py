"""The DPO family: preference pairs as the batch source, a direct-alignment loss.

`config.loss.types` (a weighted list with `config.loss.weights`) picks rows of
`losses.preference.PAIR_LOSSES`: sigmoid (DPO, cDPO with label smoothing), robust, ipo, hinge
(SLiC), simpo, exo_pair, nca_pair, sppo_hard, apo_zero, apo_down, bco_pair, aot, aot_unpaired,
discopop (`loss.discopop_tau`), sft (the chosen NLL's token mean) and sigmoid_norm; `rpo_alpha > 0`
adds RPO's NLL term; `reference_free` drops the reference; `length_normalize` uses per-token
average log-probs (TRL's IPO convention). simpo and sigmoid_norm are defined on averages: the
trainer averages for them, and refuses a list that mixes sigmoid_norm with a type on sums unless
`length_normalize` averages for all (sft reads token NLLs and mixes with either).

bco_pair's reward shift is the paper's running mean of the implicit rewards, kept in the
algorithm's state (checkpointed like PPO's KL coefficient) and passed to the loss as a batch
column: step s uses the mean over the batches before it (`preference.bco_running_shift`).

Reference log-probs are computed inside the jitted update from the frozen reference (one program
a step), or, with `config.loss.precompute_ref`, once over the whole dataset before training and
looked up by record index (`ReferenceLogps`); reference-free losses (SimPO, `reference_free`)
never run the reference. Chosen and rejected share one pass over their prompt
(`scoring.grouped_response_logprobs`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from alignjax import evaluators
from alignjax import sharding
from alignjax.data import inputs
from alignjax.evaluators import gold, heldout_preference
from alignjax.losses import preference as pref_losses
from alignjax.models import scoring
from alignjax.trainers import common
from alignjax.trainers import loop


def pair_logps(model, batch):
    """Per-sequence log-prob sums and token counts of chosen and rejected, the prompt run once."""
    chosen, rejected = batch['chosen'], batch['rejected']
    cm, rm = batch['chosen_mask'], batch['rejected_mask']
    width = max(chosen.shape[1], rejected.shape[1])
    pad = lambda x: jnp.pad(x, ((0, 0), (0, width - x.shape[1])))
    responses = jnp.stack([pad(chosen), pad(rejected)], axis=1)  # [B, 2, R]
    masks = jnp.stack([pad(cm), pad(rm)], axis=1)
    sums = jnp.sum(
        scoring.grouped_response_logprobs(model, batch['prompt'], batch['prompt_mask'], responses,
                                          masks), axis=-1)
    lengths = jnp.maximum(jnp.sum(masks, axis=-1).astype(jnp.float32), 1.0)
    return sums[:, 0], sums[:, 1], lengths[:, 0], lengths[:, 1]


def _check_loss_config(loss) -> tuple[str, ...]:
    types = tuple(loss.types)
    unknown = [t for t in types if t not in pref_losses.LOSS_TYPES]
    if unknown:
        raise ValueError(f'config.loss.types: unknown {unknown}; known: {pref_losses.LOSS_TYPES}')
    alone = [t for t in types if pref_losses.PAIR_LOSSES[t].alone]
    if alone and len(types) > 1:
        raise ValueError(f'config.loss.types: {alone[0]!r} stands alone (its PAIR_LOSSES row); '
                         'combine it with no other type')
    if loss.weights and len(loss.weights) != len(types):
        raise ValueError(f'config.loss.weights has {len(loss.weights)} entries for '
                         f'{len(types)} config.loss.types')
    rows = {t: pref_losses.PAIR_LOSSES[t] for t in types}
    averaged = [t for t, row in rows.items() if row.length_normalized]
    summed = [t for t, row in rows.items() if not (row.length_normalized or row.token_level)]
    if averaged and summed and not loss.length_normalize:
        raise ValueError(f'config.loss.types: {averaged[0]!r} reads per-token average log-probs, '
                         f'{summed[0]!r} sums; set config.loss.length_normalize=True to average '
                         'for every type')
    return types  # loss.beta > 0: validation's table (experiment_lib.BOUNDS)


def uses_reference(loss) -> bool:
    return not (loss.reference_free
                or all(pref_losses.PAIR_LOSSES[t].reference_free for t in loss.types))


BCO_DELTA = 'bco_delta'  # the batch column of bco_pair's reward shift (one value, every row)


def make_loss_fn(loss):
    types = _check_loss_config(loss)
    normalize = loss.length_normalize or any(
        pref_losses.PAIR_LOSSES[t].length_normalized for t in types)
    no_ref = not uses_reference(loss)
    sft = 'sft' in types
    tau = loss.get('discopop_tau', pref_losses.DISCOPOP_TAU)

    def loss_fn(model, frozen, batch, rng):
        del rng
        pc, pr, lc, lr = pair_logps(model, batch)
        if no_ref:
            rc, rr = jnp.zeros_like(pc), jnp.zeros_like(pr)
        elif 'ref_chosen_logps' in batch:  # precomputed
            rc, rr = batch['ref_chosen_logps'], batch['ref_rejected_logps']
        else:
            rc, rr = jax.lax.stop_gradient(pair_logps(frozen['reference'], batch)[:2])
        chosen_nll = -pc / lc
        # sft's token mean counts the real tokens (lc is at least 1): TRL's, empty responses too.
        tokens = jnp.sum(batch['chosen_mask'], axis=-1).astype(jnp.float32) if sft else None
        # Absent where the batch is not the trainer's own (memory_plan's abstract batches): 0.
        delta = batch[BCO_DELTA][0] if BCO_DELTA in batch else 0.0
        if normalize:
            pc, pr, rc, rr = pc / lc, pr / lr, rc / lc, rr / lr
        return pref_losses.dpo_loss(pc, pr, rc, rr, loss_types=types,
                                    loss_weights=tuple(loss.weights) or None, beta=loss.beta,
                                    label_smoothing=loss.label_smoothing, gamma=loss.gamma,
                                    discopop_tau=tau, bco_delta=delta, rpo_alpha=loss.rpo_alpha,
                                    chosen_nll=chosen_nll if loss.rpo_alpha or sft else None,
                                    chosen_lengths=tokens)

    return loss_fn


def with_bco_shift(batches):
    """bco_pair's running reward shift: the batch source with the shift as a column, its state
    and the host update after each step (`loop.Algorithm`'s batches, algo_state and
    update_algo_state)."""
    def shifted(step, model, algo_state):
        batch, figures = batches(step, model, algo_state)
        column = np.full((len(batch['chosen']),), algo_state[BCO_DELTA], np.float32)
        return {**batch, BCO_DELTA: column}, {**figures, 'bco/delta': float(column[0])}

    def update(algo_state, metrics):
        mean = 0.5 * (float(metrics['rewards/chosen']) + float(metrics['rewards/rejected']))
        delta, seen = pref_losses.bco_running_shift(algo_state[BCO_DELTA],
                                                    algo_state['bco_batches'], mean)
        return {BCO_DELTA: np.float32(delta), 'bco_batches': np.int32(seen)}

    return shifted, {BCO_DELTA: np.float32(0.0), 'bco_batches': np.int32(0)}, update


class ReferenceLogps:
    """Reference log-prob sums for batches: computed per batch, or precomputed once and cached."""
    def __init__(self, reference, mesh):
        self.graphdef, self.state = nnx.split(reference)
        self.mesh = mesh
        graphdef = self.graphdef
        self._fn = jax.jit(lambda state, batch: pair_logps(nnx.merge(graphdef, state), batch)[:2])
        self.cache = None

    def compute(self, batch) -> tuple[jax.Array, jax.Array]:
        """Reference log-prob sums of a host batch, left on device (dispatch is not blocked)."""
        return self._fn(self.state, sharding.shard_batch(batch, self.mesh))

    def precompute(self, batches, num_records: int) -> None:
        cache = np.zeros((num_records, 2), np.float32)
        for batch, real in batches:
            rc, rr = (np.asarray(x) for x in jax.device_get(self.compute(batch)))
            cache[batch['index'][:real], 0] = rc[:real]
            cache[batch['index'][:real], 1] = rr[:real]
        self.cache = cache

    def __call__(self, batch) -> dict:
        """The batch with its precomputed reference log-probs (after `precompute`)."""
        rows = self.cache[batch['index']]
        return {**batch, 'ref_chosen_logps': rows[:, 0], 'ref_rejected_logps': rows[:, 1]}


def build(config, mesh) -> loop.Algorithm:
    types = _check_loss_config(config.loss)  # before the starting points: a typo costs no SFT run
    batch_level = [t for t in types if pref_losses.PAIR_LOSSES[t].batch_level]
    if batch_level and config.optim.microbatches > 1:
        logging.warning(
            'config.loss.types %s sort or average across the batch: with '
            'config.optim.microbatches=%d each microbatch is its own batch for them', batch_level,
            config.optim.microbatches)
    tok = inputs.make_tokenizer(config)
    train, held_out = inputs.train_eval_records(config, 'preference')
    stream = inputs.make_stream(config, 'preference', train, tok, with_index=True)
    policy, reference = common.policy_and_reference(config, mesh)
    ref = ReferenceLogps(reference, mesh)
    if config.loss.precompute_ref:
        logging.info('Precomputing reference log-probs over %d records', len(train))
        ref.precompute(
            inputs.fixed_batches(config, 'preference', train, tok,
                                 batch_size=config.data.batch_size), len(train))

    loss_fn = make_loss_fn(config.loss)
    if config.loss.precompute_ref:
        batches = lambda step, model, algo_state: (ref(stream[step]), {})
        frozen = {}
    else:
        batches = loop.from_stream(stream)
        frozen = {'reference': reference} if uses_reference(config.loss) else {}
    algo_state, update_algo_state = {}, None
    if 'bco_pair' in types:
        batches, algo_state, update_algo_state = with_bco_shift(batches)
    algo = loop.Algorithm(model=policy, loss_fn=loss_fn, frozen=frozen, batches=batches,
                          algo_state=algo_state, update_algo_state=update_algo_state,
                          trainable=common.trainable(config))
    graphdef = nnx.graphdef(policy)
    policy_logps = jax.jit(lambda state, batch: pair_logps(nnx.merge(graphdef, state), batch))
    task = inputs.synthetic_task(config)

    available = {
        'heldout_preference': lambda: heldout_preference.make(
            config, held_out, tok, mesh, policy_logps=policy_logps, beta=config.loss.beta,
            reference_logps=ref.compute),  # never the cache: not held-out records
        'gold': lambda: gold.make(config, task, reference, tok, max_new_tokens=config.eval.
                                  max_new_tokens),
    }
    if task is None:
        del available['gold']
    algo.evaluators = evaluators.select(config, available)
    return algo
