"""The group rows of the online family (online DPO, RAFT, P3O, CoPG): the glue between a
rollout's groups of k samples and the pure losses of `losses/group.py`, and the loss function
the loop differentiates for them (`policy_gradient.ONLINE_ALGOS` names these rows)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from alignjax.losses import group as group_lib
from alignjax.models import scoring


class GroupInputs(NamedTuple):
    """What a group loss reads, rows in groups of k: sequence log-probs [N] of the policy
    (differentiated), of the sampler and of the reference; the policy's token log-probs and the
    response mask [N, R]; the sequence returns [N]."""
    logp: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array
    token_logp: jax.Array
    mask: jax.Array
    returns: jax.Array
    k: int


def p3o(g: GroupInputs, rl):
    return group_lib.p3o_loss(g.logp, g.old_logp, g.returns, clip=rl.clip, joint=rl.p3o_joint)


def copg(g: GroupInputs, rl):
    return group_lib.copg_loss(g.logp, g.ref_logp, g.returns, beta=rl.beta)


def raft(g: GroupInputs, rl):
    del rl
    return group_lib.raft_loss(g.token_logp, g.mask, g.returns, k=g.k)


def online_dpo(g: GroupInputs, rl):
    return group_lib.online_dpo_loss(g.logp, g.ref_logp, g.returns, k=g.k, beta=rl.beta,
                                     rule=rl.pairing)


def make_loss_fn(config, group_loss):
    """The loss of a group row: the batch's arrays come as [G, k, ...] (so that an epoch's
    shuffle moves whole groups) and are flattened back to the rollout's rows."""
    rl = config.rl
    k = rl.samples_per_prompt

    def loss_fn(model, frozen, batch, rng):
        del frozen, rng
        b = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)
        mask = b['response_mask'].astype(jnp.float32)
        token_logp, entropy = scoring.rows_response_logprobs(model, b['prompt'], b['prompt_mask'],
                                                             b['response'], b['response_mask'],
                                                             group=k, with_entropy=True)
        seq = lambda x: jnp.sum(x * mask, axis=1)
        g = GroupInputs(logp=seq(token_logp), old_logp=seq(b['old_logp']),
                        ref_logp=seq(b['ref_logp']), token_logp=token_logp, mask=mask,
                        returns=b['returns'], k=k)
        total, weight, metrics = group_loss(g, rl)
        metrics = dict(metrics, group_loss=(total, weight))
        metrics['entropy'] = (jnp.sum(entropy), jnp.sum(mask))
        return total, weight, metrics

    return loss_fn
