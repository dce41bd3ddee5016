r"""Over-optimisation in direct alignment: gold reward against sqrt(KL) for DPO and IPO across
beta, and the chosen response's log-probability falling.

Claims (Rafailov et al. 2024, "Scaling Laws for Reward Model Overoptimization in Direct
Alignment Algorithms"; Shi et al. 2024, "Understanding Likelihood Over-optimisation in Direct
Alignment Algorithms"): DPO and IPO over-optimise like RLHF does: along training the gold reward
against d = sqrt(KL(pi || pi_ref)) rises, peaks and falls (hump-shaped), and a smaller beta
travels further in KL; the log-likelihood of the chosen responses falls during training although
the preference loss improves, so a higher chosen likelihood is not what makes a better policy.

Each run is `experiments/dpo.py:tiny,loss=L,beta=B` from the cached tiny SFT policy on the
transitive synthetic task, trained longer and at a higher learning rate than the preset (the
over-optimised regime) with a held-out evaluation every `eval_every` steps: gold reward and
sampled KL on 256 eval prompts, and the mean log-prob of held-out chosen / rejected responses.

    python -m alignjax.repro.daa_overoptimization --outdir=/tmp/repro   # 6 runs, ~20 min
    python -m alignjax.repro.daa_overoptimization --outdir=/tmp/repro --quick  # DPO, 20 steps
"""

from __future__ import annotations

import os

import numpy as np

from alignjax.repro import common

NAME = 'daa_overoptimization'
FULL = dict(betas={'sigmoid': (0.01, 0.1, 1.0), 'ipo': (0.01, 0.1, 1.0)}, steps=500, eval_every=25,
            lr=3e-4, num_prompts=256)
QUICK = dict(betas={'sigmoid': (0.1,)}, steps=20, eval_every=10, lr=3e-4, num_prompts=16)
LOSS_NAMES = {'sigmoid': 'DPO', 'ipo': 'IPO'}


def run_workdir(outdir: str, loss: str, beta: float, s: dict) -> str:
    return os.path.join(outdir, 'runs', f'{loss}_beta{beta:g}_steps{s["steps"]}')


def dpo_run(outdir: str, loss: str, beta: float, s: dict) -> dict:
    """Trains (or reads back) one DPO-family run; returns its evaluation curve.

    Returns a dict of arrays over evaluation points (step 0 = the SFT reference): step, kl,
    sqrt_kl, gold_reward, gold_win_rate, logps_chosen, logps_rejected, ranking_accuracy,
    implicit_accuracy; and the final summary.
    """
    workdir = run_workdir(outdir, loss, beta, s)
    overrides = {
        'eval_every': s['eval_every'], 'eval.num_prompts': s['num_prompts'],
        'ckpt_every': s['steps'], 'log_every': s['eval_every']
    }
    spec = f'dpo.py:tiny,loss={loss},beta={beta},steps={s["steps"]},lr={s["lr"]}'
    summary = common.run(workdir, spec, overrides)
    rows = [{k.removeprefix('eval/'): v
             for k, v in r.items()}
            for r in common.read_metrics(workdir)
            if 'eval/gold_reward' in r]
    rows.append(summary)
    first = rows[0]
    # The reference's own figures at step 0: KL 0, its log-probs from the implicit reward.
    ref = {
        'step': 0, 'kl_to_ref': 0.0, 'gold_reward': first['gold_reward_ref'], 'gold_win_rate': 0.5,
        'heldout/ranking_accuracy': first['heldout/ranking_accuracy_ref'],
        'heldout/implicit_accuracy': 0.5,
        'heldout/logps_chosen': first['heldout/logps_chosen']
                                - first['heldout/rewards_chosen'] / beta,
        'heldout/logps_rejected': first['heldout/logps_rejected']
                                  - first['heldout/rewards_rejected'] / beta
    }
    rows.insert(0, ref)
    get = lambda k: np.array([r[k] for r in rows], np.float64)
    kl = np.maximum(get('kl_to_ref'), 0.0)  # a sampled KL near 0 can come out slightly < 0
    return {
        'loss': loss, 'beta': beta, 'step': get('step'), 'kl': kl, 'sqrt_kl': np.sqrt(kl),
        'gold_reward': get('gold_reward'), 'gold_win_rate': get('gold_win_rate'),
        'logps_chosen': get('heldout/logps_chosen'),
        'logps_rejected': get('heldout/logps_rejected'),
        'ranking_accuracy': get('heldout/ranking_accuracy'),
        'implicit_accuracy': get('heldout/implicit_accuracy'), 'summary': summary
    }


def run(outdir: str, quick: bool = False) -> dict:
    s = QUICK if quick else FULL
    runs, figures = [], {}
    for loss, betas in s['betas'].items():
        for beta in betas:
            r = dpo_run(outdir, loss, beta, s)
            runs.append(r)
            peak = int(np.argmax(r['gold_reward']))
            figures[f'{LOSS_NAMES[loss]} beta={beta:g}'] = {
                'gold_reward_ref': float(r['gold_reward'][0]),
                'gold_reward_peak': float(r['gold_reward'][peak]),
                'sqrt_kl_at_peak': float(r['sqrt_kl'][peak]),
                'step_at_peak': int(r['step'][peak]),
                'gold_reward_final': float(r['gold_reward'][-1]),
                'sqrt_kl_final': float(r['sqrt_kl'][-1]),
                'logps_chosen_ref': float(r['logps_chosen'][0]),
                'logps_chosen_final': float(r['logps_chosen'][-1]),
                'logps_rejected_final': float(r['logps_rejected'][-1]),
            }
    result = {
        'name': NAME, 'quick': quick, 'settings': {k: v for k, v in s.items()}, 'figures': figures,
        'curves': [{k: v for k, v in r.items() if k != 'summary'} for r in runs]
    }
    return common.save(outdir, NAME, result, plot)


def plot(result: dict, path: str) -> None:
    plt = common.pyplot()
    fig, (ax_g, ax_lp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, c in enumerate(result['curves']):
        label = f'{LOSS_NAMES[c["loss"]]} beta={c["beta"]:g}'
        style = dict(color=f'C{i}', marker='o', ms=3, ls='-' if c['loss'] == 'sigmoid' else '--')
        ax_g.plot(c['sqrt_kl'], c['gold_reward'], label=label, **style)
        ax_lp.plot(c['step'], c['logps_chosen'], label=f'{label}: chosen', **style)
        ax_lp.plot(c['step'], c['logps_rejected'], color=f'C{i}', ls=':', alpha=0.6)
    ax_g.axhline(result['curves'][0]['gold_reward'][0], color='gray', ls=':', label='SFT reference')
    ax_g.set(xlabel='sqrt(KL(pi || pi_ref))', ylabel='gold reward',
             title='gold reward along training')
    ax_g.legend(fontsize=7)
    ax_lp.set(xlabel='step', ylabel='mean held-out log-prob',
              title='chosen (solid / dashed) and rejected (dotted) log-probs')
    ax_lp.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == '__main__':
    common.main(run, __doc__)
