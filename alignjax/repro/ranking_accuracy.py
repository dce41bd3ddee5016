r"""Ranking accuracy of DPO against the idealised ranking accuracy of its optimum.

Claim (Chen et al. 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings"):
the ranking accuracy mean 1[pi(y_w) > pi(y_l)] of DPO-trained models stays close to the
reference model's (below 60% in their models), far below the idealised ranking accuracy of the
exact DPO optimum pi* ~ mu exp(r / beta), which is computable from the reference alone:
pi*(y_w) / pi*(y_l) = mu(y_w) / mu(y_l) * (p / (1 - p))^(1 / beta) with p = P(y_w > y_l).
Pairs the reference mis-ranks by a wide margin are almost never flipped by training.

Here p is the synthetic task's exact gold preference (Bradley-Terry on the gold reward), mu the
cached tiny SFT policy, and the pairs the held-out preference records of `experiments/dpo.py`.
DPO runs are those of `alignjax.repro.daa_overoptimization` (same specs and workdirs, so with one
--outdir the two reproductions train them once); their held-out ranking accuracy is logged at
every evaluation. The flip analysis loads each run's final policy.

    python -m alignjax.repro.ranking_accuracy --outdir=/tmp/repro   # reuses the DAA runs
    python -m alignjax.repro.ranking_accuracy --outdir=/tmp/repro --quick
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from alignjax.data import inputs
from alignjax.data import synthetic
from alignjax.repro import common
from alignjax.repro import daa_overoptimization as daa
from alignjax.trainers import dpo

NAME = 'ranking_accuracy'
IDEAL_BETAS = tuple(np.geomspace(0.01, 10.0, 13))


@functools.lru_cache(maxsize=4)
def _pair_logps(graphdef):
    return jax.jit(lambda state, batch: dpo.pair_logps(nnx.merge(graphdef, state), batch)[:2])


def held_out_pairs():
    """(the DPO tiny config, held-out preference records, tokenizer) as DPO evaluates them."""
    config = common.config_of('dpo.py:tiny')
    _, held_out = inputs.train_eval_records(config, 'preference')
    return config, held_out, inputs.make_tokenizer(config)


def sequence_logps(model, config, records, tok) -> tuple[np.ndarray, np.ndarray]:
    """log pi(chosen), log pi(rejected) summed over response tokens, for every record."""
    graphdef, state = nnx.split(model)
    fn = _pair_logps(graphdef)
    chosen, rejected = [], []
    for batch, real in inputs.fixed_batches(config, 'preference', records, tok, batch_size=128):
        pc, pr = jax.device_get(fn(state, {k: v for k, v in batch.items() if k != 'index'}))
        chosen.append(np.asarray(pc)[:real])
        rejected.append(np.asarray(pr)[:real])
    return np.concatenate(chosen).astype(np.float64), np.concatenate(rejected).astype(np.float64)


def ranking(diff) -> float:
    """Mean 1[diff > 0], ties counted 1/2."""
    diff = np.asarray(diff)
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def idealized_accuracy(ref_diff, gold_p, beta: float) -> float:
    """Ranking accuracy of pi* ~ mu exp(r/beta): sign of log mu ratio + logit(p) / beta."""
    p = np.clip(gold_p, 1e-12, 1 - 1e-12)
    return ranking(ref_diff + np.log(p / (1 - p)) / beta)


def run(outdir: str, quick: bool = False) -> dict:
    s = dict(daa.QUICK if quick else daa.FULL)
    s['betas'] = {'sigmoid': s['betas']['sigmoid']}
    task = synthetic.get_task('transitive')
    config, records, tok = held_out_pairs()
    gold_p = np.array(
        [task.gold_preference(r['prompt'], r['chosen'], r['rejected']) for r in records])
    with jax.set_mesh(common.mesh()):
        reference, _ = common.load_policy(common.starting_point('sft.py:tiny'))
        rc, rr = sequence_logps(reference, config, records, tok)
    ref_diff = rc - rr
    figures = {
        'num_pairs': len(records),
        'reference_ranking_accuracy': ranking(ref_diff),
        'gold_label_agreement': ranking(gold_p - 0.5),  # what the gold reward itself ranks right
        'idealized': {f'{b:.3g}': idealized_accuracy(ref_diff, gold_p, b) for b in IDEAL_BETAS},
    }
    runs = []
    # Reference mis-ranked pairs, by how wide the reference's wrong margin is.
    wrong = ref_diff < 0
    edges = np.quantile(-ref_diff[wrong], [0.0, 1 / 3, 2 / 3, 1.0]) if wrong.any() else None
    for beta in s['betas']['sigmoid']:
        r = daa.dpo_run(outdir, 'sigmoid', beta, s)
        workdir = daa.run_workdir(outdir, 'sigmoid', beta, s)
        with jax.set_mesh(common.mesh()):
            policy, _ = common.load_policy(workdir)
            pc, pr = sequence_logps(policy, config, records, tok)
        flipped = (pc - pr) > 0
        flips = []
        if edges is not None:
            for lo, hi in zip(edges[:-1], edges[1:]):
                sel = wrong & (-ref_diff >= lo) & (-ref_diff <= hi)
                flips.append({
                    'ref_margin_range': [float(lo), float(hi)], 'num_pairs': int(sel.sum()),
                    'flipped_fraction': float(np.mean(flipped[sel]))
                })
        key = f'DPO beta={beta:g}'
        figures[key] = {
            'idealized_ranking_accuracy': idealized_accuracy(ref_diff, gold_p, beta),
            'ranking_accuracy_final': ranking(pc - pr),
            'ranking_accuracy_max_during_training': float(np.max(r['ranking_accuracy'])),
            'implicit_reward_accuracy_final': float(r['implicit_accuracy'][-1]),
            'reference_misranked_flipped_by_margin_tercile': flips,
        }
        runs.append({
            'beta': beta, 'step': r['step'], 'ranking_accuracy': r['ranking_accuracy'],
            'implicit_accuracy': r['implicit_accuracy'],
            'idealized': figures[key]['idealized_ranking_accuracy'], 'flips': flips
        })
    result = {'name': NAME, 'quick': quick, 'settings': s, 'figures': figures, 'runs': runs}
    return common.save(outdir, NAME, result, plot)


def plot(result: dict, path: str) -> None:
    plt = common.pyplot()
    f = result['figures']
    fig, (ax_i, ax_t, ax_f) = plt.subplots(1, 3, figsize=(13, 4))
    betas = [float(b) for b in f['idealized']]
    ax_i.semilogx(betas, list(f['idealized'].values()), 'o-', color='k',
                  label='idealised (DPO optimum)')
    ax_i.axhline(f['reference_ranking_accuracy'], color='gray', ls=':', label='reference')
    ax_i.axhline(f['gold_label_agreement'], color='C2', ls='--', label='gold reward itself')
    for i, r in enumerate(result['runs']):
        ax_i.semilogx([r['beta']], [r['ranking_accuracy'][-1]], 's', color=f'C{i}', ms=8,
                      label=f'DPO beta={r["beta"]:g}, trained')
        ax_t.plot(r['step'], r['ranking_accuracy'], 'o-', color=f'C{i}', ms=3,
                  label=f'ranking acc., beta={r["beta"]:g}')
        ax_t.plot(r['step'], r['implicit_accuracy'], '--', color=f'C{i}', alpha=0.6,
                  label=f'implicit-reward acc., beta={r["beta"]:g}')
        ax_t.axhline(r['idealized'], color=f'C{i}', ls=':', alpha=0.8)
        if r['flips']:
            x = np.arange(len(r['flips'])) + 0.25 * i
            ax_f.bar(x, [fl['flipped_fraction'] for fl in r['flips']], width=0.25, color=f'C{i}',
                     label=f'beta={r["beta"]:g}')
    ax_i.set(xlabel='beta', ylabel='ranking accuracy (held-out pairs)',
             title='idealised vs achieved ranking accuracy')
    ax_i.legend(fontsize=7)
    ax_t.set(xlabel='step', ylabel='accuracy', title='during DPO (dotted: idealised)')
    ax_t.legend(fontsize=6)
    ax_f.set(xticks=range(3), xticklabels=['narrow', 'middle',
                                           'wide'], xlabel="reference's wrong margin (terciles)",
             ylabel='fraction flipped to correct', title='reference mis-ranked pairs flipped')
    ax_f.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == '__main__':
    common.main(run, __doc__)
