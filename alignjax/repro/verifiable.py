r"""Verifiable rewards: GRPO, Dr. GRPO and DAPO on the addition task, pass@1 against samples.

Claim (Shao et al. 2024; Liu et al. 2025, "Understanding R1-Zero-Like Training"; Yu et al. 2025,
"DAPO"): RL from a verifiable reward lifts a policy past the demonstrations it was fine-tuned on.
Here the demonstrations come from a noisy teacher that forgets carries half the time
(`alignjax/data/arithmetic.py`), so imitation stops near pass@1 0.65 and only the reward can
teach the carry. Each arm starts from the same cached tiny SFT policy, is scored by the Python
reward function `alignjax.data.arithmetic:exact_match` (`alignjax/rewards.py`), and is evaluated
on held-out problems every `eval_every` iterations; DAPO's refill rollouts count as samples, so
the curves are against samples drawn, not updates.

    python -m alignjax.repro.verifiable --outdir=/tmp/repro   # ~2.5 min on 2 cores
    python -m alignjax.repro.verifiable --outdir=/tmp/repro --quick
"""

from __future__ import annotations

import os

import numpy as np

from alignjax.repro import common

NAME = 'verifiable'
ARMS = {'grpo': '', 'dr_grpo': ',dr_grpo', 'dapo': ',dapo'}
REWARD = 'fn:alignjax.data.arithmetic:exact_match'
FULL = dict(steps=600, eval_every=50, lr=3e-4, seed=0)
QUICK = dict(steps=4, eval_every=2, lr=3e-4, seed=0,
             run_overrides={'data.batch_size': 4, 'eval.num_prompts': 16})


def arm(outdir: str, name: str, s: dict) -> dict:
    workdir = os.path.join(outdir, 'runs', f'{name}_steps{s["steps"]}_seed{s["seed"]}')
    spec = f'grpo.py:tiny,task=addition{ARMS[name]},steps={s["steps"]},lr={s["lr"]}'
    summary = common.run(
        workdir, spec, {
            'reward.source': REWARD, 'eval_every': s['eval_every'], 'log_every': 1,
            'ckpt_every': s['steps'], 'seed': s['seed'], **s.get('run_overrides', {})
        })
    rows = common.read_metrics(workdir)
    steps, rounds = common.series(rows, 'dynamic_sampling/rounds')
    _, rows_per_step = common.series(rows, 'rollout/response_length')  # one row a step
    per_step = np.ones(len(rows_per_step)) if not len(rounds) else 1.0 + rounds
    config = common.config_of(spec, s.get('run_overrides'))
    samples = np.cumsum(per_step) * config.data.batch_size * config.rl.samples_per_prompt
    eval_steps, pass1 = common.series(rows, 'eval/pass@1')
    if not len(eval_steps) or eval_steps[-1] < s['steps']:  # the final evaluation: the summary's
        eval_steps = np.append(eval_steps, s['steps'])
        pass1 = np.append(pass1, summary['pass@1'])
    at = lambda st: float(samples[int(st) - 1])
    return {
        'arm': name, 'eval_step': eval_steps, 'eval_samples': [at(x) for x in eval_steps],
        'eval_pass@1': pass1, 'updates': int(steps[-1]) if len(steps) else s['steps'],
        'samples': float(samples[-1]), 'summary': summary,
        'refilled_groups': float(sum(common.series(rows, 'dynamic_sampling/refilled_groups')[1]))
    }


def run(outdir: str, quick: bool = False) -> dict:
    s = QUICK if quick else FULL
    arms = [arm(outdir, name, s) for name in ARMS]
    start = arms[0]['summary']['pass@1_ref']  # the SFT policy's, same prompts and estimator
    grpo_final = arms[0]['summary']['pass@1']
    figures = {'sft_pass@1': start}
    for a in arms:
        sm = a['summary']
        reach = [int(st) for st, p in zip(a['eval_step'], a['eval_pass@1']) if p >= grpo_final]
        figures[a['arm']] = {
            'pass@1': sm['pass@1'],
            'pass@4': sm['pass@4'],
            'gain': sm['pass@1'] - start,
            'format_error_rate': sm['format_error_rate'],
            'kl_to_ref': sm['kl_to_ref'],
            'samples': a['samples'],
            'updates': a['updates'],
            'updates_to_reach_grpo_final': reach[0] if reach else None,
            'refilled_groups': a['refilled_groups'],
        }
    result = {
        'name': NAME, 'quick': quick, 'settings': s, 'figures': figures,
        'curves': [{k: v for k, v in a.items() if k != 'summary'} for a in arms]
    }
    return common.save(outdir, NAME, result, plot)


def plot(result: dict, path: str) -> None:
    plt = common.pyplot()
    f = result['figures']
    fig, (ax_s, ax_u) = plt.subplots(1, 2, figsize=(10, 4))
    labels = {'grpo': 'GRPO', 'dr_grpo': 'Dr. GRPO', 'dapo': 'DAPO'}
    for c, color in zip(result['curves'], ('C0', 'C1', 'C2')):
        label = f'{labels[c["arm"]]} (final {f[c["arm"]]["pass@1"]:.3f})'
        ax_s.plot([0, *c['eval_samples']], [f['sft_pass@1'], *c['eval_pass@1']], 'o-', ms=3,
                  color=color, label=label)
        ax_u.plot([0, *c['eval_step']], [f['sft_pass@1'], *c['eval_pass@1']], 'o-', ms=3,
                  color=color, label=labels[c['arm']])
    for ax, x in ((ax_s, 'samples drawn (refills included)'), (ax_u, 'updates')):
        ax.axhline(f['sft_pass@1'], color='gray', ls=':', label='SFT start')
        ax.set(xlabel=x, ylabel='held-out pass@1', title='addition, tiny model, exact-match reward')
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == '__main__':
    common.main(run, __doc__)
