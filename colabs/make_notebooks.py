"""Writes the reproduction notebooks colabs/*.ipynb (without outputs) from the specs below.

    python colabs/make_notebooks.py

Each notebook opens with an "Open in Colab" badge, installs alignjax when it is not importable,
runs one `alignjax.repro` module and shows its plot and figures. The code lives in the package;
the notebooks only call it. ALIGNJAX_NOTEBOOK_QUICK=1 (set by tests/test_notebooks.py) selects
the reduced budgets; ALIGNJAX_REPRO_DIR chooses where runs and figures go (notebooks sharing it
share runs: the ranking-accuracy notebook reuses the direct-alignment notebook's DPO runs).
"""

from __future__ import annotations

import os

import nbformat
from nbformat import v4

COLABS = os.path.dirname(os.path.abspath(__file__))
BADGE = ('[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]'
         '(https://colab.research.google.com/github/alignjax/alignjax/blob/main/colabs/'
         '{name}.ipynb)')

INSTALL = """\
# Install alignjax when it is not importable (a fresh Colab runtime). The repository is cloned,
# not only pip-installed: the reproductions train the experiment files in experiments/ and call
# benchmarks/, which live next to the package.
try:
    import alignjax
except ImportError:
    !git clone -q --depth 1 https://github.com/alignjax/alignjax /content/alignjax
    !pip install -q -e /content/alignjax
    import sys
    sys.path.insert(0, '/content/alignjax')
    import alignjax
print('alignjax from', alignjax.__file__)"""

SETTINGS = """\
import json
import os

# The tests set ALIGNJAX_NOTEBOOK_QUICK=1: reduced budgets, the same code path. Set it to '' (or
# run the command in docs/results.md) for the full reproduction.
QUICK = os.environ.get('ALIGNJAX_NOTEBOOK_QUICK', '').lower() in ('1', 'true', 'yes')
OUTDIR = os.environ.get('ALIGNJAX_REPRO_DIR', '/tmp/alignjax_repro')
print('quick mode' if QUICK else 'full mode', '->', OUTDIR)"""

SHOW = """\
from IPython.display import Image, display

display(Image(result['figure']))
print(json.dumps(result['figures'], indent=1, default=str)[:4000])"""

NOTEBOOKS = {
    'overoptimization': dict(
        title='Reward-model over-optimisation: best-of-n and RL against a proxy',
        claim='Gao et al. 2022, *Scaling Laws for Reward Model Overoptimization*: optimising a '
        'learned proxy reward raises the proxy steadily with d = sqrt(KL) while the gold '
        'reward rises, peaks and falls; in RL a larger KL penalty stops the policy '
        'earlier on that curve.',
        setup='The synthetic transitive task has a known gold reward; its preference pairs train '
        'a small Bradley-Terry reward model (the proxy). Best-of-n picks, among n samples '
        'of the SFT policy, the one the proxy likes best (KL = log n - (n-1)/n); ReMax '
        'optimises the proxy with a sweep of KL coefficients.',
        look='Left: gold peaks at a large n while the proxy keeps rising. Middle and right: with '
        'kl_coef 0.01 and 0.05 the proxy keeps rising while gold falls below its peak; '
        'with 0.2 the run stays near the peak.'),
    'ensembles': dict(
        title='Reward-model ensembles against over-optimisation',
        claim='Coste et al. 2023, *Reward Model Ensembles Help Mitigate Overoptimization*: '
        'worst-case (min over members) and uncertainty-weighted (mean - lambda * spread) '
        'optimisation of an ensemble over-optimise less than a single reward model.',
        setup='Four reward models trained on the same pairs (each from the SFT backbone with its '
        'own head initialisation) select best-of-n samples alone and aggregated by mean, '
        'min and mean - std; ReMax at kl_coef 0.05 optimises the single model and each '
        'aggregate (full mode only).',
        look='Best-of-n: the aggregated ensembles against the grey single-member curves at large '
        'n. ReMax: gold reward of the rollouts per iteration for each proxy.'),
    'nash': dict(
        title='Nash learning against Bradley-Terry RLHF on intransitive preferences',
        claim='Munos et al. 2023 (NLHF), Nash mirror prox, INPO, SPO: with intransitive '
        'preferences the Bradley-Terry RLHF optimum collapses onto one response that '
        'another beats; Nash-MD, mirror prox and online mirror descent converge in the '
        'last iterate to the mixed regularised equilibrium (mirror prox fastest); '
        'unregularised self-play cycles while its average converges.',
        setup='The exact tabular game `alignjax.games.cyclic_example()` (a rock-paper-scissors '
        'cycle plus two dominated responses); every method runs its exact update from '
        'the reference with the same step size and regularisation. NumPy only: seconds.',
        look='Left: KL to the equilibrium falls linearly (log scale) for Nash-MP and INPO; '
        "Nash-MD stalls at the bias of its constant step; SPO's last iterate drifts away "
        'while its average approaches the Nash equilibrium. Right: exploitability against '
        "the Bradley-Terry optimum's."),
    'remax_vs_ppo': dict(
        title='ReMax against PPO: memory, time per iteration, reward',
        claim="Li et al. 2023, *ReMax*: without a critic, ReMax needs about half of PPO's "
        'memory, runs about 1.6-2x faster per iteration and reaches the same reward.',
        setup='`benchmarks/remax_vs_ppo.py` measures both on the same model and batch; '
        '`experiments/remax.py:tiny` and `experiments/ppo.py:tiny` train from the same '
        'SFT policy on the gold reward of the transitive task.',
        look='Trainable state (parameters, gradients, Adam) about 2x for PPO; time per '
        'iteration split into rollout and update; reward curves side by side.'),
    'daa_overoptimization': dict(
        title='Over-optimisation in direct alignment: DPO and IPO across beta',
        claim='Rafailov et al. 2024, *Scaling Laws for Reward Model Overoptimization in Direct '
        'Alignment Algorithms*, and *Understanding Likelihood Over-optimisation in DAAs*: '
        'gold reward against sqrt(KL) is hump-shaped along DPO / IPO training, and the '
        "chosen responses' log-likelihood falls although the preference loss improves.",
        setup="DPO (sigmoid) and IPO from the tiny SFT policy on the transitive task's "
        'preference pairs, with a held-out evaluation (gold reward, sampled KL, held-out '
        'chosen/rejected log-probs) every few steps.',
        look='Left: gold reward against sqrt(KL), one curve per run (the full mode shows the '
        'hump). Right: chosen (and rejected) log-probs falling.'),
    'ranking_accuracy': dict(
        title="DPO's ranking accuracy against the idealised ranking accuracy",
        claim='Chen et al. 2024, *Preference Learning Algorithms Do Not Learn Preference '
        'Rankings*: the ranking accuracy 1[pi(y_w) > pi(y_l)] of DPO models stays near '
        "the reference's, far below the idealised accuracy of the exact DPO optimum "
        "pi* ~ mu exp(r / beta), which follows from the reference's log-probs and the "
        'true preference probability.',
        setup='Held-out preference pairs of the transitive task; mu the tiny SFT policy; the '
        "true preference is the task's gold Bradley-Terry probability. DPO runs are the "
        "direct-alignment reproduction's (shared through OUTDIR).",
        look='Left: the idealised accuracy (black) against what DPO reaches (squares). Middle: '
        'ranking accuracy during training stays low while the implicit-reward accuracy '
        'rises. Right: pairs the reference mis-ranks by a wide margin are rarely flipped.'),
    'lora_dpo': dict(
        title='LoRA DPO from a Hugging Face checkpoint, against full fine-tuning',
        claim='Hu et al. 2021, *LoRA*: rank-r adapters on a frozen base fit the preference '
        'pairs with the same steps as full fine-tuning while training a small fraction of the '
        'parameters; the optimizer holds only the adapters, and the reference policy is the '
        'base with its adapters off (no second copy).',
        setup='A transformers checkpoint directory: set the environment variable '
        '`ALIGNJAX_HF_CHECKPOINT` to a local one (e.g. Qwen2.5-0.5B-Instruct downloaded with '
        '`huggingface-cli download`; a single v5e or v6e chip holds a 2B model with rank-16 '
        'adapters, see the README) before running; by default a small random-init Llama is '
        'written with `save_pretrained`. Both runs are `experiments/dpo.py` from '
        '`init_from=hf:DIR` on the synthetic transitive pairs, one with `lora=8`.',
        look='Left: both losses fall. Right: the held-out implicit-reward accuracy of the '
        'adapters follows full fine-tuning; the figures give the trained fraction of the '
        'parameters and the optimizer bytes of each.'),
    'verifiable': dict(
        title='Verifiable rewards: GRPO, Dr. GRPO and DAPO on an addition task',
        claim='Shao et al. 2024 (GRPO), Liu et al. 2025 (*Dr. GRPO*), Yu et al. 2025 (*DAPO*): '
        'RL from a programmatic, verifiable reward lifts a policy past the demonstrations it '
        "was fine-tuned on; DAPO's dynamic sampling spends its samples on prompts that teach.",
        setup='Two-digit sums written least-significant digit first (`synthetic:addition`, '
        '`alignjax/data/arithmetic.py`). The SFT demonstrations come from a teacher that '
        'forgets every carry half the time, so imitation stops near pass@1 0.65; each RL arm '
        'starts there and is scored by the Python reward function '
        '`alignjax.data.arithmetic:exact_match` in a worker pool (`alignjax/rewards.py`).',
        look="Held-out pass@1 against samples drawn (left; DAPO's refills count) and "
        'against updates (right), from the SFT start (dotted).'),
    'monitors': dict(
        title='Over-optimisation monitors: which warn before the gold reward peaks',
        claim="Reward hacking shows before the gold reward falls: in the top-k entropy and mass "
        "of the policy's own samples (Shi et al. 2024), in a reward ensemble's disagreement, "
        'in the proxy-minus-gold gap, in length, EOS rate and KL to the reference.',
        setup='ReMax against the mean of a 4-member tiny reward-model ensemble on the transitive '
        'task, kl_coef 0.01 (over-optimises) and 0.2 (healthy), three seeds, every monitor of '
        "`alignjax/monitors.py` on with thresholds relative to each figure's first value.",
        look='Left: gold curves and their peaks. Right: for each monitor, how many iterations '
        'before the peak it fired on the over-optimised runs, and its false alarms on the '
        'healthy ones.'),
    'robust_rewards': dict(
        title='Robust rewards: BRME, the log-sigmoid transform and constrained RLHF',
        claim='Reward-robust aggregation (Yan et al. 2024), the log-sigmoid transform against a '
        'per-prompt reference reward (Wang et al. 2024) and a Lagrange-multiplier constraint on '
        'the proxy at its proxy point (Moskovitz et al. 2023) each lose less of the gold reward '
        'than the plain proxy.',
        setup="The monitors' over-optimised setting (its plain runs are shared through OUTDIR): "
        'ReMax at kl_coef 0.01 against a 4-member ensemble, three seeds per proxy.',
        look='Left: mean gold curve of each proxy. Right: peak and final gold, with the spread '
        'over seeds.'),
}


def notebook(name: str, spec: dict) -> nbformat.NotebookNode:
    cells = [
        v4.new_markdown_cell(f'# {spec["title"]}\n\n{BADGE.format(name=name)}\n\n'
                             f'**Claim.** {spec["claim"]}\n\n**Setup.** {spec["setup"]}\n\n'
                             f'Code: `alignjax/repro/{name}.py` (its docstring has the command '
                             f'line); results and figures of the full run: `docs/results.md`.'),
        v4.new_code_cell(INSTALL),
        v4.new_code_cell(SETTINGS),
        v4.new_markdown_cell('Run the reproduction (trains or reuses every run it needs; the '
                             'first call also trains the cached tiny SFT policy and reward '
                             'models, about a minute each on a CPU runtime).'),
        v4.new_code_cell(f'from alignjax.repro import {name}\n\n'
                         f'result = {name}.run(OUTDIR, quick=QUICK)'),
        v4.new_markdown_cell(f'**What to look for.** {spec["look"]}'),
        v4.new_code_cell(SHOW),
    ]
    for i, cell in enumerate(cells):
        cell.id = f'{name}-{i}'  # stable ids: regenerating gives the same files
    nb = v4.new_notebook(cells=cells)
    nb.metadata['kernelspec'] = {
        'name': 'python3', 'display_name': 'Python 3', 'language': 'python'
    }
    nb.metadata['language_info'] = {'name': 'python'}
    nb.metadata['colab'] = {'provenance': []}
    return nb


def main() -> None:
    for name, spec in NOTEBOOKS.items():
        path = os.path.join(COLABS, f'{name}.ipynb')
        nbformat.write(notebook(name, spec), path)
        print('wrote', path)


if __name__ == '__main__':
    main()
