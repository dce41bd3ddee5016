r"""Nash learning against Bradley-Terry RLHF on intransitive preferences, exactly (tabular).

Claims (Munos et al. 2023, "Nash Learning from Human Feedback"; "Accelerating Nash Learning via
Mirror Prox"; Zhang et al. 2024, INPO; Swamy et al. 2024, SPO): when preferences are
intransitive, the optimum of RLHF through a Bradley-Terry reward collapses onto one response
that another response beats, so it is exploitable; Nash-MD, Nash mirror prox and online mirror
descent (INPO's target) converge in the last iterate to the mixed KL-regularised equilibrium,
mirror prox fastest; unregularised self-play (SPO's multiplicative weights) cycles in its last
iterate while its average converges to the Nash equilibrium.

The game is `games.cyclic_example()` (5 responses: a rock-paper-scissors cycle 0 > 1 > 2 > 0 and
two dominated responses; reference mu = (0.3, 0.1, 0.2, 0.15, 0.25)). Every method starts from
mu and runs the exact update of `games.iterate` with the same step size eta and regularisation
tau; the Bradley-Terry baseline is `games.bt_rlhf_policy` (the reward fitted by maximum
likelihood on infinitely many pairs from mu x mu, then the KL-regularised optimum with beta=tau).

The full mode also trains the tiny language models on the intransitive synthetic task (three
response classes in a cycle, `alignjax/data/synthetic.py`) and compares the final exploitability
of Bradley-Terry methods (DPO on the preference pairs; PPO on a Bradley-Terry reward model) with
Nash-MD and INPO judged by the learned pairwise preference model (`experiments/*.py:tiny`).

    python -m alignjax.repro.nash --outdir=/tmp/repro --tabular_only  # < 5 s, NumPy only
    python -m alignjax.repro.nash --outdir=/tmp/repro                 # + 4 LM runs, ~15 min
    python -m alignjax.repro.nash --outdir=/tmp/repro --quick         # 100 tabular iterations

Figures: exploitability (max_y P(y > pi) - 1/2) and KL(pi* || pi_t) per method and iteration,
last and average iterate; the iteration at which each method's KL to pi* first falls below 1e-3;
in full mode the language models' exploitability and worst-case win rate.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from alignjax import games
from alignjax.repro import common

NAME = 'nash'
TAU = 0.05
ETA = 1.0
# name -> (games.iterate method, regularised?)
METHODS = {
    'Nash-MD': ('nash_md', True),
    'Nash-MP (mirror prox)': ('nash_mp', True),
    'INPO (online mirror descent)': ('omd', True),
    'SPO (self-play MWU, tau=0)': ('mwu', False),
}


def first_below(values, threshold: float):
    """The first index where `values` < threshold, or None."""
    hits = np.flatnonzero(np.asarray(values) < threshold)
    return int(hits[0]) if hits.size else None


# label -> (experiment spec, is it a Nash method?)
LM_RUNS = {
    'DPO (BT pairs)': ('dpo.py:tiny,task=intransitive', False),
    'PPO (BT reward model)': ('ppo.py:tiny,task=intransitive,reward=rm', False),
    'Nash-MD': ('nash_md.py:tiny', True),
    'INPO': ('inpo.py:tiny', True),
}


def lm_runs(outdir: str) -> dict:
    """Final exploitability of the tiny language models on the intransitive task."""
    out = {}
    for label, (spec, _) in LM_RUNS.items():
        workdir = os.path.join(outdir, 'runs', spec.replace('.py:', '_').replace(',', '_'))
        s = common.run(workdir, spec)
        out[label] = {
            k: s[k] for k in ('exploitability', 'exploitability_ref', 'worst_case_win_rate',
                             'worst_case_win_rate_ref', 'gold_reward', 'kl_to_ref') if k in s
        }
        out[label].update({f'class{c}_fraction': s.get(f'class{c}_fraction') for c in range(4)})
    return out


def run(outdir: str, quick: bool = False, tabular_only: bool = False) -> dict:
    steps = 100 if quick else 300
    P, mu = games.cyclic_example()
    target = games.regularized_nash(P, mu, TAU)  # the regularised equilibrium pi*_tau
    nash0 = games.regularized_nash(P, mu, 1e-4)  # ~ the unregularised Nash equilibrium
    bt_policy, bt_reward = games.bt_rlhf_policy(P, mu, TAU)
    curves, figures = {}, {}
    for name, (method, regularised) in METHODS.items():
        last = games.iterate(method, P, mu, tau=TAU, eta=ETA, steps=steps)
        avg = games.average_iterates(last)
        goal = target if regularised else nash0
        for kind, hist in (('last', last), ('average', avg)):
            kls = np.array([max(games.kl(goal, p), 1e-16) for p in hist])
            expl = np.array([games.exploitability(P, p) for p in hist])
            curves[f'{name} [{kind}]'] = {'kl': kls, 'exploitability': expl}
            figures[f'{name} [{kind}]'] = {
                'exploitability_final': float(expl[-1]),
                'kl_to_equilibrium_final': float(kls[-1]),
                'kl_to_equilibrium_at_50': float(kls[min(50, steps)]),
                'iterations_to_kl_1e-3': first_below(kls, 1e-3),
                'final_policy': np.round(hist[-1], 4).tolist(),
            }
    figures['Bradley-Terry RLHF'] = {
        'exploitability_final': games.exploitability(P, bt_policy),
        'kl_to_equilibrium_final': games.kl(target, bt_policy),
        'final_policy': np.round(bt_policy, 4).tolist(), 'reward': np.round(bt_reward, 4).tolist()
    }
    figures['reference mu'] = {
        'exploitability_final': games.exploitability(P, mu), 'final_policy': mu.tolist()
    }
    figures['equilibrium pi*_tau'] = {
        'exploitability_final': games.exploitability(P, target),
        'final_policy': np.round(target, 4).tolist()
    }
    if not (quick or tabular_only):
        figures['language models (intransitive task)'] = lm_runs(outdir)
    result = {
        'name': NAME, 'quick': quick, 'tau': TAU, 'eta': ETA, 'steps': steps, 'figures': figures,
        'curves': curves
    }
    return common.save(outdir, NAME, result, plot)


def plot(result: dict, path: str) -> None:
    plt = common.pyplot()
    lm = result['figures'].get('language models (intransitive task)')
    fig, axes = plt.subplots(1, 3 if lm else 2, figsize=(16 if lm else 11, 4.8))
    ax_kl, ax_ex = axes[0], axes[1]
    if lm:
        _plot_lm(axes[2], lm)
    colors = dict(zip(METHODS, ('C0', 'C1', 'C2', 'C3')))
    for key, c in result['curves'].items():
        name, kind = key.rsplit(' [', 1)
        kind = kind.rstrip(']')
        if kind == 'average' and not name.startswith('SPO'):
            continue  # regularised methods converge in the last iterate; keep the plot readable
        style = dict(color=colors[name], ls='-' if kind == 'last' else '--',
                     label=f'{name}, {kind} iterate')
        steps = np.arange(len(c['kl']))
        ax_kl.semilogy(steps, c['kl'], **style)
        ax_ex.plot(steps, c['exploitability'], **style)
    f = result['figures']
    ax_ex.axhline(f['Bradley-Terry RLHF']['exploitability_final'], color='k', ls='-.',
                  label='Bradley-Terry RLHF optimum')
    ax_ex.axhline(f['reference mu']['exploitability_final'], color='gray', ls=':',
                  label='reference mu')
    ax_ex.axhline(f['equilibrium pi*_tau']['exploitability_final'], color='k', ls=':',
                  label='regularised equilibrium pi*')
    ax_kl.set(xlabel='iteration', ylabel='KL(equilibrium || pi_t)',
              title=f'distance to equilibrium (tau={result["tau"]}, eta={result["eta"]})')
    ax_ex.set(xlabel='iteration', ylabel='exploitability  max_y P(y > pi) - 1/2',
              title='exploitability (5-response cyclic game)')
    handles, labels = ax_ex.get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_lm(ax, lm: dict) -> None:
    labels = ['SFT reference'] + list(lm)
    first = next(iter(lm.values()))
    values = [first['exploitability_ref']] + [v['exploitability'] for v in lm.values()]
    colors = ['gray'] + ['C0' if LM_RUNS[k][1] else 'k' for k in lm]
    ax.bar(range(len(values)), values, color=colors)
    for i, v in enumerate(values):
        ax.annotate(f'{v:.3f}', (i, v), ha='center', fontsize=7, textcoords='offset points',
                    xytext=(0, 2))
    ax.set_xticks(range(len(values)), labels, rotation=20, fontsize=7)
    ax.set(ylabel='exploitability (gold preference)',
           title='tiny LMs, intransitive task (blue: Nash)')


if __name__ == '__main__':
    if '--tabular_only' in sys.argv:
        sys.argv.remove('--tabular_only')
        common.main(lambda outdir, quick: run(outdir, quick, tabular_only=True), __doc__)
    else:
        common.main(run, __doc__)
