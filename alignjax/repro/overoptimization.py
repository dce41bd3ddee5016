r"""Reward-model over-optimisation: proxy and gold reward as KL grows, for best-of-n and for RL
with a sweep of the KL coefficient.

Claim (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization", the setup the reward
ensemble papers reuse): optimising a learned proxy reward raises the proxy monotonically with
d = sqrt(KL) while the gold reward rises, peaks and falls; for RL a larger KL penalty stops the
policy earlier on the curve (it limits KL, not the shape of the curve).

Setup: the transitive synthetic task's gold reward labels preference pairs; the proxy is the
tiny Bradley-Terry reward model trained on them (`experiments/reward_model.py:tiny`, cached);
the policy starts from the cached tiny SFT policy.
- Best-of-n: N samples per eval prompt, every n = 1, 2, 4, .. N measured without bias
  (`best_of_n.expected_best_of_n`), KL = log n - (n-1)/n.
- RL: ReMax (`experiments/remax.py:tiny,reward=rm,kl=C`) for a sweep of C; per iteration the
  rollout's proxy score, gold reward and KL to the SFT reference from metrics.jsonl.

    python -m alignjax.repro.overoptimization --outdir=/tmp/repro   # ~10 min on 2 busy cores
    python -m alignjax.repro.overoptimization --outdir=/tmp/repro --quick
"""

from __future__ import annotations

import os

import numpy as np

from alignjax.data import synthetic
from alignjax.repro import best_of_n
from alignjax.repro import common

NAME = 'overoptimization'
FULL = dict(bon_prompts=128, bon_n=256, kl_coefs=(0.01, 0.05, 0.2), rl_steps=150, log_every=5)
# Quick: 8 prompts an iteration and 16 eval prompts (the benchmark's shapes in remax_vs_ppo).
QUICK = dict(bon_prompts=16, bon_n=16, kl_coefs=(0.05,), rl_steps=2, log_every=1,
             run_overrides={'data.batch_size': 8, 'eval.num_prompts': 16})


def best_of_n_curves(members_fn, *, num_prompts: int, n_max: int, seed: int = 0,
                     policy_spec: str = 'sft.py:tiny', aggregations=('mean',)) -> dict:
    """Best-of-n curves of the tiny SFT policy against a reward model.

    `members_fn()` returns the reward model to score with (so callers choose single or ensemble).
    Returns ns, kl, sqrt_kl, gold_ref, and for each aggregation {gold, proxy} over ns, plus the
    raw `members` scores [P, N, K] and `gold` [P, N] for further selections.
    """
    import jax  # pylint: disable=g-import-not-at-top
    from alignjax.data.tokenizer import ByteTokenizer  # pylint: disable=g-import-not-at-top
    task = synthetic.get_task('transitive')
    with jax.set_mesh(common.mesh()):
        policy, _ = common.load_policy(common.starting_point(policy_spec))
        samples = best_of_n.sample_candidates(policy, task, ByteTokenizer(),
                                              num_prompts=num_prompts, n=n_max, seed=seed)
        members = best_of_n.member_scores(members_fn(), samples)
    ns = best_of_n.powers_of_two(n_max)
    kl = best_of_n.kl_best_of_n(ns)
    gold = samples['gold']
    members = members.reshape(num_prompts, n_max, -1)
    out = {
        'ns': ns, 'kl': kl, 'sqrt_kl': np.sqrt(kl), 'gold': gold, 'members': members, 'curves': {}
    }
    for agg in aggregations:
        proxy = best_of_n.aggregate(members.reshape(-1, members.shape[-1]),
                                    agg).reshape(num_prompts, n_max)
        out['curves'][agg] = {
            'gold': best_of_n.expected_best_of_n(proxy, gold, ns),
            'proxy': best_of_n.expected_best_of_n(proxy, proxy, ns)
        }
    return out


def rl_run(outdir: str, kl_coef: float, s: dict, *, reward_model: str = '',
           aggregate: str = 'mean') -> dict:
    """One ReMax run against the proxy; returns per-iteration curves and the final summary.

    `reward_model` names another reward_model spec than the preset's ('reward_model.py:ARGS',
    e.g. an ensemble); `aggregate` its member aggregation (mean | min | mean_minus_std).
    """
    tag = f'remax_rm_kl{kl_coef:g}_steps{s["rl_steps"]}'
    spec = f'remax.py:tiny,reward=rm,kl={kl_coef},steps={s["rl_steps"]}'
    overrides = {
        'log_every': s['log_every'], 'ckpt_every': s['rl_steps'], **s.get('run_overrides', {})
    }
    if reward_model:
        tag += '_' + reward_model.removeprefix('reward_model.py:').replace(',', '_') + \
            f'_{aggregate}'
        overrides['reward.reward_from'] = f'experiment:experiments/{reward_model}'
        overrides['reward.aggregate'] = aggregate
    workdir = os.path.join(outdir, 'runs', tag)
    summary = common.run(workdir, spec, overrides)
    rows = common.read_metrics(workdir)
    steps, proxy = common.series(rows, 'rollout/score')
    _, gold = common.series(rows, 'rollout/gold_reward')
    _, kl = common.series(rows, 'rollout/kl_to_ref')
    kl = np.maximum(kl, 0.0)
    return {
        'kl_coef': kl_coef, 'aggregate': aggregate, 'reward_model': reward_model, 'step': steps,
        'proxy': proxy, 'gold': gold, 'kl': kl, 'sqrt_kl': np.sqrt(kl), 'summary': summary
    }


def rl_figures(r: dict) -> dict:
    s = r['summary']
    peak = int(np.argmax(r['gold'])) if len(r['gold']) else 0
    return {
        'eval_gold_reward': s['gold_reward'], 'eval_gold_reward_ref': s['gold_reward_ref'],
        'eval_proxy_reward': s.get('proxy_reward'),
        'eval_proxy_reward_ref': s.get('proxy_reward_ref'), 'eval_kl_to_ref': s.get('kl_to_ref'),
        'rollout_gold_first': float(r['gold'][0]), 'rollout_gold_peak': float(r['gold'][peak]),
        'rollout_gold_last': float(r['gold'][-1]), 'rollout_proxy_first': float(r['proxy'][0]),
        'rollout_proxy_last': float(r['proxy'][-1]), 'rollout_sqrt_kl_last': float(r['sqrt_kl'][-1])
    }


def run(outdir: str, quick: bool = False) -> dict:
    s = QUICK if quick else FULL
    rm_dir = common.starting_point('reward_model.py:tiny')
    bon = best_of_n_curves(lambda: common.load_reward_model(rm_dir)[0],
                           num_prompts=s['bon_prompts'], n_max=s['bon_n'])
    c = bon['curves']['mean']
    peak = int(np.argmax(c['gold']))
    figures = {
        'best_of_n': {
            'gold_n1': float(c['gold'][0]), 'gold_peak': float(c['gold'][peak]),
            'n_at_gold_peak': bon['ns'][peak], 'gold_at_n_max': float(c['gold'][-1]),
            'proxy_n1': float(c['proxy'][0]), 'proxy_at_n_max': float(c['proxy'][-1]),
            'n_max': bon['ns'][-1]
        }
    }
    rl = []
    for coef in s['kl_coefs']:
        r = rl_run(outdir, coef, s)
        rl.append(r)
        figures[f'remax kl_coef={coef:g}'] = rl_figures(r)
    result = {
        'name': NAME, 'quick': quick, 'settings': s, 'figures': figures,
        'best_of_n': {k: bon[k] for k in ('ns', 'kl', 'sqrt_kl', 'curves')},
        'rl': [{k: v for k, v in r.items() if k != 'summary'} for r in rl]
    }
    return common.save(outdir, NAME, result, plot)


def smooth(x, window: int = 3) -> np.ndarray:
    """Centred moving average (shorter at the ends): per-iteration rollout figures are noisy."""
    x = np.asarray(x, np.float64)
    if len(x) < window:
        return x
    kernel = np.ones(window)
    return np.convolve(x, kernel, 'same') / np.convolve(np.ones_like(x), kernel, 'same')


def plot(result: dict, path: str) -> None:
    plt = common.pyplot()
    fig, (ax_b, ax_g, ax_p) = plt.subplots(1, 3, figsize=(14, 4.2))
    bon = result['best_of_n']
    c = bon['curves']['mean']
    twin_b = ax_b.twinx()
    ax_b.plot(bon['sqrt_kl'], c['gold'], 'o-', color='C0', label='gold reward')
    twin_b.plot(bon['sqrt_kl'], c['proxy'], 's--', color='C3', label='proxy (reward model)')
    for n, x, y in zip(bon['ns'], bon['sqrt_kl'], c['gold']):
        ax_b.annotate(f'n={n}', (x, y), fontsize=6, textcoords='offset points', xytext=(2, -9))
    ax_b.set(xlabel='sqrt(KL), KL = log n - (n-1)/n', ylabel='gold reward',
             title='best-of-n against the proxy')
    twin_b.set_ylabel('proxy reward', color='C3')
    ax_b.legend(handles=ax_b.lines + twin_b.lines, fontsize=7, loc='lower right')
    for i, r in enumerate(result['rl']):
        x = smooth(r['sqrt_kl'])
        label = f'kl_coef={r["kl_coef"]:g}'
        ax_g.plot(x, smooth(r['gold']), 'o-', ms=2, color=f'C{i}', label=label)
        ax_p.plot(x, smooth(r['proxy']), 'o-', ms=2, color=f'C{i}', label=label)
    for ax, what in ((ax_g, 'gold'), (ax_p, 'proxy')):
        ax.set(xlabel='sqrt(KL) of the rollout', ylabel=f'{what} reward of the rollout',
               title=f'ReMax against the proxy: {what} reward')
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == '__main__':
    common.main(run, __doc__)
