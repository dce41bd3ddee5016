r"""ReMax against PPO: memory, time per iteration, and the reward curve.

Claim (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method
for Aligning Large Language Models"): REINFORCE with the greedy response's reward as baseline,
without a critic, reaches PPO's reward while using about half of PPO's GPU memory (46% less on
Llama-2-7B) and running about 1.6-2x faster per iteration.

Memory and time come from `benchmarks/remax_vs_ppo.py` (same model, prompts and response length
for both, random initialisation: it measures cost, not learning); the reward curves from
`experiments/remax.py:tiny` and `experiments/ppo.py:tiny` trained from the cached tiny SFT
policy on the transitive task's gold reward (per-iteration rollout gold reward in metrics.jsonl,
final gold reward on the eval prompts in summary.json).

    python -m alignjax.repro.remax_vs_ppo --outdir=/tmp/repro   # ~10 min on 2 busy cores
    python -m alignjax.repro.remax_vs_ppo --outdir=/tmp/repro --quick
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from alignjax.repro import common

NAME = 'remax_vs_ppo'
FULL = dict(bench=['--model', 'small', '--batch', '64', '--iters', '10', '--warmup', '2'],
            steps=100, log_every=5)
# Quick: the runs take the benchmark's shapes (8 prompts), so compiled programs can be shared
# through the persistent compilation cache.
QUICK = dict(bench=['--model', 'tiny', '--batch', '8', '--iters', '1', '--warmup', '1'], steps=2,
             log_every=1, run_overrides={'data.batch_size': 8, 'eval.num_prompts': 16})
MIB = 2.0**20


def benchmark(args: list[str]) -> dict:
    """Runs benchmarks/remax_vs_ppo.py in a fresh process; returns its JSON result."""
    from alignjax import pretrained  # pylint: disable=g-import-not-at-top
    script = common.repo_path('benchmarks', 'remax_vs_ppo.py')
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        filter(None, [pretrained.REPO_ROOT, env.get('PYTHONPATH', '')]))
    common.log(f'benchmark: {" ".join(args)}')
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode:
        raise RuntimeError(f'{script} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def reward_curve(outdir: str, algo: str, s: dict) -> dict:
    workdir = os.path.join(outdir, 'runs', f'{algo}_gold_steps{s["steps"]}')
    summary = common.run(
        workdir, f'{algo}.py:tiny,steps={s["steps"]}',
        {'log_every': s['log_every'], 'ckpt_every': s['steps'], **s.get('run_overrides', {})})
    rows = common.read_metrics(workdir)
    steps, gold = common.series(rows, 'rollout/gold_reward')
    _, kl = common.series(rows, 'rollout/kl_to_ref')
    _, sps = common.series(rows, 'steps_per_s')
    return {
        'algo': algo, 'step': steps, 'gold': gold, 'kl': kl,
        'train_s_per_iteration_median': float(np.median(1.0 / sps[1:])) if len(sps) > 1 else None,
        'summary': summary
    }


def run(outdir: str, quick: bool = False) -> dict:
    s = QUICK if quick else FULL
    bench = benchmark(s['bench'])
    curves = [reward_curve(outdir, algo, s) for algo in ('remax', 'ppo')]
    figures = {
        'benchmark_settings': {
            k: bench[k] for k in ('model', 'param_count', 'rows', 'new_tokens', 'ppo_epochs',
                                 'ppo_minibatches', 'device')
        }
    }
    for algo in ('remax', 'ppo'):
        b = bench[algo]
        figures[algo] = {
            'trainable_state_mib': b['state']['total'] / MIB,
            'update_peak_mib': (b['update_memory']['peak'] or 0) / MIB,
            'iteration_median_s': b['time']['iteration_median_s'],
            'rollout_median_s': b['time']
                                ['rollout_median_s'], 'update_median_s': b['time']
                                                                         ['update_median_s']
        }
    figures['ppo_over_remax'] = bench['ratios']
    for c in curves:
        sm = c['summary']
        figures[c['algo']].update({
            'gold_reward': sm['gold_reward'], 'gold_reward_ref': sm['gold_reward_ref'],
            'gold_win_rate': sm['gold_win_rate'], 'kl_to_ref': sm.get('kl_to_ref'),
            'tiny_run_s_per_iteration': c['train_s_per_iteration_median']
        })
    result = {
        'name': NAME, 'quick': quick, 'settings': s, 'figures': figures, 'benchmark': bench,
        'curves': [{k: v for k, v in c.items() if k != 'summary'} for c in curves]
    }
    return common.save(outdir, NAME, result, plot)


def plot(result: dict, path: str) -> None:
    plt = common.pyplot()
    f = result['figures']
    fig, (ax_m, ax_t, ax_r) = plt.subplots(1, 3, figsize=(13, 4))
    algos, colors = ('remax', 'ppo'), ('C0', 'C1')
    x = np.arange(2)
    ax_m.bar(x - 0.2, [f[a]['trainable_state_mib'] for a in algos], 0.4, color=colors,
             label='trainable state (params + grads + Adam)')
    ax_m.bar(x + 0.2, [f[a]['update_peak_mib'] for a in algos], 0.4, color=colors, alpha=0.45,
             hatch='//', label='compiled update peak')
    ax_m.set(xticks=x, xticklabels=['ReMax', 'PPO'], ylabel='MiB',
             title=f'memory ({f["benchmark_settings"]["model"]} model)')
    ax_m.legend(fontsize=7)
    roll = [f[a]['rollout_median_s'] for a in algos]
    upd = [f[a]['update_median_s'] for a in algos]
    ax_t.bar(x, roll, 0.5, color='gray', label='rollout (sample, score, passes)')
    ax_t.bar(x, upd, 0.5, bottom=roll, color=colors, label='update')
    ax_t.set(xticks=x, xticklabels=['ReMax', 'PPO'], ylabel='seconds',
             title=f'time per iteration (PPO/ReMax {f["ppo_over_remax"]["iteration_s"]}x)')
    ax_t.legend(fontsize=7)
    for c, color in zip(result['curves'], colors):
        ax_r.plot(
            c['step'], c['gold'], 'o-', ms=2, color=color,
            label=f'{"ReMax" if c["algo"] == "remax" else "PPO"} '
            f'(eval {f[c["algo"]]["gold_reward"]:.3f})')
    ax_r.axhline(f['remax']['gold_reward_ref'], color='gray', ls=':', label='SFT start (eval)')
    ax_r.set(xlabel='iteration', ylabel='gold reward of the rollout',
             title='reward curve (tiny model, gold reward)')
    ax_r.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == '__main__':
    common.main(run, __doc__)
