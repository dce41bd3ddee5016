r"""Reward-model ensembles against over-optimisation: mean, worst-case and uncertainty-weighted
aggregation against a single proxy.

Claim (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization"): optimising
the worst case (min over members) or an uncertainty-weighted objective (mean - lambda * spread)
of an ensemble of reward models over-optimises less than optimising a single reward model; the
gains are large for best-of-n; with PPO, ensembles reduce over-optimisation and, combined with a
small KL penalty, prevent it.

Setup: as `alignjax.repro.overoptimization` (transitive task, gold reward, tiny SFT policy). The
ensemble is `experiments/reward_model.py:tiny,ensemble=4,ensemble_type=models`: four reward
models (each its own backbone from the SFT policy and its own head initialisation) trained on the
same pairs; each member alone is a single proxy like Coste et al.'s. Aggregations: mean, min
(worst-case optimisation, WCO) and mean - std (uncertainty-weighted optimisation, UWO, here with
the standard deviation and lambda = 1; the paper penalises the variance with a tuned lambda).
- Best-of-n: the same N samples selected by each member alone and by each aggregate.
- RL: ReMax at kl_coef 0.05 (where the single proxy over-optimises in
  `alignjax.repro.overoptimization`) against the single reward model and each aggregate.

    python -m alignjax.repro.ensembles --outdir=/tmp/repro   # reuses the over-optimisation runs
    python -m alignjax.repro.ensembles --outdir=/tmp/repro --quick  # 2 heads, best-of-n only
"""

from __future__ import annotations

import numpy as np

from alignjax.repro import best_of_n
from alignjax.repro import common
from alignjax.repro import overoptimization

NAME = 'ensembles'
AGGREGATIONS = ('mean', 'min', 'mean_minus_std')
LABELS = {
    'mean': 'ensemble mean', 'min': 'worst case (min)',
    'mean_minus_std': 'uncertainty-weighted (mean - std)'
}
FULL = dict(overoptimization.FULL, rm='reward_model.py:tiny,ensemble=4,ensemble_type=models',
            rl_kl=0.05, rl_aggregations=AGGREGATIONS)
QUICK = dict(overoptimization.QUICK, rm='reward_model.py:tiny,ensemble=2,steps=50', rl_kl=0.05,
             rl_aggregations=())


def run(outdir: str, quick: bool = False) -> dict:
    s = QUICK if quick else FULL
    rm_dir = common.starting_point(s['rm'])
    bon = overoptimization.best_of_n_curves(lambda: common.load_reward_model(rm_dir)[0],
                                            num_prompts=s['bon_prompts'], n_max=s['bon_n'],
                                            aggregations=AGGREGATIONS)
    members, gold, ns = bon['members'], bon['gold'], bon['ns']
    single = [
        best_of_n.expected_best_of_n(members[..., k], gold, ns) for k in range(members.shape[-1])
    ]
    curves = {'single member (mean of members)': np.mean(single, axis=0)}
    curves.update({LABELS[a]: bon['curves'][a]['gold'] for a in AGGREGATIONS})
    figures = {
        'best_of_n': {
            name: {
                'gold_peak': float(np.max(c)), 'n_at_peak': ns[int(np.argmax(c))],
                f'gold_at_n={ns[-1]}': float(c[-1])
            } for name, c in curves.items()
        }, 'best_of_n_gold_n1': float(curves[LABELS['mean']][0])
    }
    figures['best_of_n']['single members, gold at n_max'] = [float(c[-1]) for c in single]
    rl = []
    if s['rl_aggregations']:
        r = overoptimization.rl_run(outdir, s['rl_kl'], s)  # the single reward model
        r['label'] = 'single reward model'
        rl.append(r)
        for agg in s['rl_aggregations']:
            r = overoptimization.rl_run(outdir, s['rl_kl'], s, reward_model=s['rm'], aggregate=agg)
            r['label'] = LABELS[agg]
            rl.append(r)
        for r in rl:
            figures[f'remax, {r["label"]}'] = overoptimization.rl_figures(r)
    result = {
        'name': NAME, 'quick': quick, 'settings': s, 'figures': figures, 'best_of_n': {
            'ns': ns, 'sqrt_kl': bon['sqrt_kl'], 'curves': curves, 'single_members': single
        }, 'rl': [{k: v for k, v in r.items() if k != 'summary'} for r in rl]
    }
    return common.save(outdir, NAME, result, plot)


def plot(result: dict, path: str) -> None:
    plt = common.pyplot()
    panels = 2 if result['rl'] else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    ax_b = axes[0, 0]
    bon = result['best_of_n']
    for k, c in enumerate(bon['single_members']):
        ax_b.plot(bon['sqrt_kl'], c, color='gray', alpha=0.35, lw=1,
                  label='single members' if k == 0 else None)
    for i, (name, c) in enumerate(bon['curves'].items()):
        ax_b.plot(bon['sqrt_kl'], c, 'o-', ms=3, color='k' if i == 0 else f'C{i - 1}', label=name)
    ax_b.set(xlabel='sqrt(KL) = sqrt(log n - (n-1)/n)', ylabel='gold reward of the best of n',
             title='best-of-n, selected by each proxy')
    ax_b.legend(fontsize=7)
    if result['rl']:
        ax_r = axes[0, 1]
        for i, r in enumerate(result['rl']):
            ax_r.plot(r['step'], r['gold'], '-', color='k' if i == 0 else f'C{i - 1}',
                      label=r['label'])
        ax_r.set(xlabel='ReMax iteration', ylabel='gold reward of the rollout',
                 title=f'ReMax against each proxy (kl_coef={result["settings"]["rl_kl"]})')
        ax_r.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == '__main__':
    common.main(run, __doc__)
