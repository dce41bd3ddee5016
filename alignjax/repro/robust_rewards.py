r"""Robust rewards against over-optimisation: BRME, the log-sigmoid transform and constrained RLHF
against the plain proxy.

Claims: reward-robust aggregation of an ensemble (Yan et al. 2024, "Reward-Robust RLHF in
LLMs": lam * nominal + (1 - lam) * min), the log-sigmoid transform against a per-prompt
reference reward (Wang et al. 2024, "Transforming and Combining Rewards for Aligning Large
Language Models") and a constraint on the proxy's mean at its "proxy point" (Moskovitz et al.
2023, "Confronting Reward Model Overoptimization with Constrained RLHF") each lose less of the
gold reward than optimising the proxy as it is.

Setting: `repro.monitors`' over-optimised one (ReMax, 4-member ensemble proxy, kl_coef 0.01,
150 iterations, three seeds; its plain runs are shared). BRME at lam 0.5; the transform
against the 0.85 quantile of 8 reference samples a prompt, summed over the 4 members;
constrained RLHF with the proxy's mean bounded by its held-out value at the seed-0 plain run's
gold peak, dual step 0.1.

    python -m alignjax.repro.robust_rewards --outdir=/tmp/repro   # 9 more runs, ~15 min
    python -m alignjax.repro.robust_rewards --outdir=/tmp/repro --quick
"""

from __future__ import annotations

import numpy as np

from alignjax.repro import common
from alignjax.repro import monitors

NAME = 'robust_rewards'
LABELS = {
    'plain': 'plain proxy (mean)', 'brme': 'BRME (lam 0.5)', 'log_sigmoid': 'log-sigmoid transform',
    'constrained': 'constrained RLHF'
}


def arms(theta: float) -> dict:
    return {
        'brme': {'reward.aggregate': 'brme', 'reward.lam': 0.5},
        'log_sigmoid': {
            'reward.transform': 'log_sigmoid', 'reward.ref_quantile': 0.85, 'reward.ref_samples': 8
        },
        'constrained': {'reward.constraints': f'reward_model<{theta:.4f}', 'reward.dual_lr': 0.1},
    }


def run(outdir: str, quick: bool = False) -> dict:
    s = monitors.QUICK if quick else monitors.FULL
    kl = min(s['kl_coefs'])
    plain = [monitors.run_arm(outdir, s, kl=kl, seed=seed) for seed in s['seeds']]
    first = plain[0]
    at = int(np.argmax(first['gold']))
    theta = float(first['proxy'][at])  # the proxy point: the proxy where gold peaked
    runs = {'plain': plain}
    for arm, overrides in arms(theta).items():
        runs[arm] = [
            monitors.run_arm(outdir, s, kl=kl, seed=seed, arm=arm, overrides=overrides)
            for seed in s['seeds']
        ]
    figures = {'proxy_point': theta}
    for arm, rs in runs.items():
        final = [r['final_gold'] for r in rs]
        drop = [r['peak_gold'] - r['final_gold'] for r in rs]
        figures[arm] = {
            'final_gold_mean': float(np.mean(final)),
            'final_gold_std': float(np.std(final)),
            'peak_gold_mean': float(np.mean([r['peak_gold'] for r in rs])),
            'peak_to_final_drop_mean': float(np.mean(drop)),
            'final_gold': final,
            'drop': drop,
        }
    result = {
        'name': NAME, 'quick': quick, 'settings': s, 'figures': figures,
        'runs': {arm: rs for arm, rs in runs.items()}
    }
    return common.save(outdir, NAME, result, plot)


def plot(result: dict, path: str) -> None:
    plt = common.pyplot()
    f = result['figures']
    fig, (ax_c, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (arm, rs) in enumerate(result['runs'].items()):
        steps = np.asarray(rs[0]['step'])
        gold = np.mean([np.asarray(r['gold']) for r in rs], axis=0)
        ax_c.plot(steps, gold, 'o-', ms=2, color=f'C{i}', label=LABELS[arm])
    ax_c.set(xlabel='iteration', ylabel='held-out gold reward (mean of seeds)',
             title='ReMax at kl 0.01 against the 4-member proxy')
    ax_c.legend(fontsize=7)
    names = list(result['runs'])
    x = np.arange(len(names))
    ax_b.bar(x - 0.2, [f[a]['peak_gold_mean'] for a in names], 0.4, label='peak', color='gray')
    ax_b.bar(x + 0.2, [f[a]['final_gold_mean'] for a in names], 0.4,
             yerr=[f[a]['final_gold_std'] for a in names], label='final', color='C0')
    ax_b.set(xticks=x, xticklabels=[LABELS[a] for a in names], ylabel='held-out gold reward',
             title='peak and final gold (three seeds)')
    ax_b.tick_params(axis='x', labelsize=7, rotation=15)
    ax_b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == '__main__':
    common.main(run, __doc__)
