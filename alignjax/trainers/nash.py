"""Nash learning from preferences: the policy plays against opponents judged by a preference
model (or a synthetic task's gold preference), never through a Bradley-Terry reward.

Two shapes of update share `rollout.Rollout` and `losses.nash`:

- policy-gradient methods (rows are samples; the clipped-ratio loss of `losses.policy_gradient`
  on a sequence advantage):
  - `nash_md`: the opponent is sampled token by token from the geometric mixture
    pi^(1-m) mu^m (`sampling.geometric_mixture`); A = P(y > y') - 1/2 - tau log pi/mu.
  - `nash_mp`: Nash mirror prox. An outer step is two phases of `phase_steps` updates, both
    proximal to the anchor pi_t (the policy at the outer step's start):
    A = P(y > y') - 1/2 - tau log pi/mu - (1/eta) log pi/pi_t; the opponent is pi_t in the first
    phase and the first phase's end (the half step) in the second. Checkpoints are written only
    at outer-step boundaries, where the anchor is the current policy.
  - `spo`: the reward of a sample is its win rate against the other k-1 samples of its prompt;
    A = win - 1/2 - tau log pi/mu.
- regression methods (rows are prompts, each with k samples from the current policy pi_t, which
  is also the anchor; every pair of a group is labelled by its preference probability):
  `inpo`, `dno`, `sppo` and `online_ipo`.

Each method's sample loss reproduces its tabular update exactly on a softmax table
(tests/losses/test_nash_losses.py against `alignjax.games`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import rollout as rollout_lib
from alignjax import sampling
from alignjax.data import inputs
from alignjax.losses import advantages as adv_lib
from alignjax.losses import nash as nash_losses
from alignjax.models import scoring
from alignjax.trainers import common
from alignjax.trainers import loop
from alignjax.trainers import policy_gradient
from alignjax.trainers.preference_model import load_preference_model

# The regression methods' losses, one pure function each over a batch of G prompt groups of k
# samples: (logp, ref, anchor [G, k] sequence log-probs, pref [G, k, k] P(y_i > y_j), win [G, k]
# win rates, (i, j) the k(k-1)/2 pairs of a group, n = config.nash) -> (loss_sum, count).


def inpo_pairs(logp, ref, anchor, pref, win, ij, n):
    del win
    i, j = ij
    return nash_losses.inpo_loss(logp[:, i], logp[:, j], ref[:, i], ref[:, j], anchor[:, i],
                                 anchor[:, j], eta=n.eta, tau=n.tau, prob_w=pref[:, i, j])


def dno_pairs(logp, ref, anchor, pref, win, ij, n):
    del ref, pref
    i, j = ij
    return nash_losses.dno_loss(logp[:, i], logp[:, j], anchor[:, i], anchor[:, j],
                                nash_losses.dno_target(win[:, i], win[:, j]), eta=1.0 / n.eta)


def sppo_samples(logp, ref, anchor, pref, win, ij, n):
    del ref, pref, ij
    log_z = None
    if n.sppo_exact_partition:
        log_z = jnp.broadcast_to(nash_losses.sppo_log_partition(win, eta=n.eta)[:, None], win.shape)
    return nash_losses.sppo_loss(logp, anchor, win, eta=n.eta, log_partition=log_z)


def online_ipo_pairs(logp, ref, anchor, pref, win, ij, n):
    del anchor, win
    i, j = ij
    return nash_losses.online_ipo_loss(logp[:, i] - ref[:, i], logp[:, j] - ref[:, j],
                                       pref[:, i, j], tau=n.tau)


@dataclasses.dataclass(frozen=True)
class NashMethod:
    """One row of the Nash family: a policy-gradient method (rows are samples, advantage against
    an `opponent`: 'mixture', 'anchor' or 'group') or a regression one (rows are prompt groups,
    `pair_loss` above)."""
    opponent: str = ''
    pair_loss: Callable[..., tuple] | None = None
    min_samples: int = 1
    phases: bool = False  # Nash-MP's two proximal phases an outer step (saves at their ends)
    uses_tau: bool = True  # the KL to the reference inside the objective (DNO and SPPO: none)


METHODS: dict[str, NashMethod] = {
    'nash_md': NashMethod(opponent='mixture'),
    'nash_mp': NashMethod(opponent='anchor', phases=True),
    'spo': NashMethod(opponent='group', min_samples=2),
    'inpo': NashMethod(pair_loss=inpo_pairs, min_samples=2),
    'dno': NashMethod(pair_loss=dno_pairs, min_samples=2, uses_tau=False),
    'sppo': NashMethod(pair_loss=sppo_samples, min_samples=2, uses_tau=False),
    'online_ipo': NashMethod(pair_loss=online_ipo_pairs, min_samples=2),
}


def check_nash_config(config) -> None:
    n, algo = config.nash, config.algo
    if algo not in METHODS:
        raise ValueError(f'config.algo={algo!r} is not one of {tuple(METHODS)}')
    k = config.rl.samples_per_prompt
    if k < METHODS[algo].min_samples:
        raise ValueError(f'{algo} compares samples of a prompt: config.rl.samples_per_prompt must '
                         f'be >= {METHODS[algo].min_samples}, got {k}')
    if METHODS[algo].uses_tau and n.tau <= 0:  # the table's bound is >= 0 (experiment_lib.NASH)
        raise ValueError(f'config.nash.tau must be > 0, got {n.tau}')
    if METHODS[algo].phases and n.phase_steps < 1:
        raise ValueError(f'config.nash.phase_steps must be >= 1, got {n.phase_steps}')
    if not 0.0 <= n.mixture <= 1.0:
        raise ValueError(f'config.nash.mixture must be in [0, 1], got {n.mixture}')
    if n.preference == 'gold' and inputs.synthetic_task(config) is None:
        raise ValueError("config.nash.preference='gold' needs a synthetic config.data.train")


def group_preferences(oracle, raw: rollout_lib.Responses, k: int) -> np.ndarray:
    """[G, k, k] matrix of P(y_gi > y_gj) over the k samples of each prompt (rows contiguous)."""
    g = len(raw.response) // k
    i, j = np.triu_indices(k, 1)
    rows_a = (np.arange(g)[:, None] * k + i[None]).reshape(-1)
    rows_b = (np.arange(g)[:, None] * k + j[None]).reshape(-1)
    p = oracle(raw.take(rows_a), raw.take(rows_b)).reshape(g, -1)
    out = np.full((g, k, k), 0.5, np.float32)
    out[:, i, j] = p
    out[:, j, i] = 1.0 - p
    return out


def make_pair_loss_fn(config):
    """The regression methods' loss on groups: batch rows are prompts with k samples each."""
    n, pair_loss = config.nash, METHODS[config.algo].pair_loss
    k = config.rl.samples_per_prompt
    i, j = np.triu_indices(k, 1)

    def loss_fn(model, frozen, batch, rng):
        del frozen, rng
        g = batch['response'].shape[0]
        flat = lambda x: x.reshape(g * k, *x.shape[2:])
        logp = scoring.response_logprobs(model, flat(batch['prompt']), flat(batch['prompt_mask']),
                                         flat(batch['response']), flat(batch['response_mask']))
        logp = jnp.sum(logp, axis=-1).reshape(g, k)
        ref, anchor = batch['ref_logp'], batch['anchor_logp']
        loss, count = pair_loss(logp, ref, anchor, batch['pref'], batch['win'], (i, j), n)
        metrics = {
            'logratio_to_anchor': (jnp.sum(logp - anchor), jnp.float32(g * k)),
            'logratio_to_ref': (jnp.sum(logp - ref), jnp.float32(g * k))
        }
        return loss, count, metrics

    return loss_fn


@jax.jit
def _copy(state):
    return jax.tree.map(jnp.copy, state)


class Opponents:
    """Nash-MP's anchor pi_t and opponent, refreshed at phase boundaries from the policy."""
    def __init__(self, config, mesh):
        self.phase = config.nash.phase_steps
        self.anchor = common.build_policy(config, mesh)
        self.opponent = common.build_policy(config, mesh)
        self._seq_logps = None

    def refresh(self, step: int, policy) -> None:
        state = nnx.state(policy)
        outer = 2 * self.phase
        if step % outer == 0 or self._seq_logps is None:  # resumes start at outer boundaries
            nnx.update(self.anchor, _copy(state))
            nnx.update(self.opponent, _copy(state))
        elif step % outer == self.phase:
            nnx.update(self.opponent, _copy(state))  # the half step
        if self._seq_logps is None:
            graphdef = nnx.graphdef(self.anchor)
            self._seq_logps = jax.jit(lambda s, *a: jnp.sum(
                scoring.response_logprobs(nnx.merge(graphdef, s), *a), axis=-1))

    def anchor_logp(self, r: rollout_lib.Responses) -> np.ndarray:
        args = (r.prompt, r.prompt_mask, r.response, r.response_mask)
        return np.asarray(self._seq_logps(nnx.state(self.anchor), *args))


def build(config, mesh) -> loop.Algorithm:
    check_nash_config(config)
    n, rl, method = config.nash, config.rl, METHODS[config.algo]
    tok, task, records, prompts, policy, reference = policy_gradient.online_setup(config, mesh)
    if n.preference == 'gold':
        oracle = rollout_lib.GoldPreference(task)
    else:
        oracle = rollout_lib.ModelPreference(load_preference_model(n.preference_from, mesh), mesh)
    k = rl.samples_per_prompt
    rollout = rollout_lib.Rollout(
        prompts=prompts, records=records, tok=tok, scorer=None, reference=reference, mesh=mesh,
        seed=config.seed, task=task, generation=policy_gradient.generation_sharding(config, mesh),
        config=rollout_lib.RolloutConfig(samples_per_prompt=k, max_new_tokens=rl.max_new_tokens,
                                         temperature=rl.temperature, top_k=rl.top_k,
                                         top_p=rl.top_p))
    opponents = Opponents(config, mesh) if method.opponent == 'anchor' else None
    mixture = sampling.geometric_mixture(float(n.mixture))

    def pg_batch(step, model, raw):
        mask = raw.response_mask.astype(np.float32)
        logp, ref = raw.old_logp.sum(1), raw.ref_logp.sum(1)
        metrics = {}
        if method.opponent == 'group':
            pref = group_preferences(oracle, raw, k)
            win = np.asarray(nash_losses.group_win_rates(pref)).reshape(-1)
            adv = np.asarray(nash_losses.nash_md_advantages(win, logp, ref, tau=n.tau))
            metrics['rollout/win_rate_spread'] = float(np.mean(np.abs(win - 0.5)))
        else:
            if method.opponent == 'mixture':
                opp = rollout.sample_opponents(step, [model, reference], raw, combine=mixture)
            else:
                opponents.refresh(step, model)
                opp = rollout.sample_opponents(step, opponents.opponent, raw)
            pref = oracle(raw, opp)
            if method.opponent == 'mixture':
                adv = np.asarray(nash_losses.nash_md_advantages(pref, logp, ref, tau=n.tau))
            else:
                adv = np.asarray(
                    nash_losses.proximal_advantages(pref, logp, ref, opponents.anchor_logp(raw),
                                                    tau=n.tau, eta=n.eta))
            metrics['rollout/win_rate_vs_opponent'] = float(np.mean(pref))
        batch = policy_gradient.train_arrays(raw)
        batch['advantages'] = np.asarray(adv_lib.sequence_to_tokens(adv, mask))
        return batch, metrics

    def pair_batch(raw):
        g = len(raw.response) // k
        group = lambda x: x.reshape(g, k, *x.shape[1:])
        pref = group_preferences(oracle, raw, k)
        win = np.asarray(nash_losses.group_win_rates(pref))
        batch = {
            'prompt': group(raw.prompt), 'prompt_mask': group(raw.prompt_mask),
            'response': group(raw.response), 'response_mask': group(raw.response_mask),
            'ref_logp': group(raw.ref_logp.sum(1)), 'anchor_logp': group(raw.old_logp.sum(1)),
            'pref': pref, 'win': win
        }
        return batch, {'rollout/win_rate_spread': float(np.mean(np.abs(win - 0.5)))}

    def batches(step, model, algo_state):
        del algo_state
        raw, metrics = rollout(step, model)
        batch, own = pair_batch(raw) if method.pair_loss else pg_batch(step, model, raw)
        return batch, {**metrics, **rollout_lib.global_metrics(own)}

    loss_fn = (make_pair_loss_fn(config) if method.pair_loss else policy_gradient.make_loss_fn(
        config, critic=False))
    return loop.Algorithm(
        model=policy, loss_fn=loss_fn, batches=batches,
        evaluators=policy_gradient.online_evaluators(config, task, reference, tok),
        epochs=rl.epochs, minibatches=rl.minibatches,
        save_every=2 * n.phase_steps if method.phases else 1, trainable=common.trainable(config))
