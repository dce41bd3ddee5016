"""Multi-stage experiments: several runs in one workdir, each starting from earlier ones.

A stage config (`config.algo = 'pipeline'`, see experiments/quickstart.py) lists stages in
`config.order`; stage NAME is `config.stages.NAME.experiment` (an experiment file and its
arguments, as for --config) with `config.stages.NAME.overrides`, a tuple of 'key=value' strings in
which `{STAGE}` names an earlier stage's workdir (`init_from={sft}`). Stage NAME runs in
WORKDIR/NAME and is skipped when its summary.json exists, so re-running the command resumes where
it stopped (inside a stage too: each run resumes from its checkpoints).

At the end every policy stage is evaluated the same way (`compare`): on the same held-out prompts
and seed, its samples' gold reward, their score under the pipeline's reward model (the proxy), the
sampled KL to the reference policy and the gold win rate against it; the table goes to stdout,
WORKDIR/results.md, results.csv and summary.json, and a reward-against-KL plot to
WORKDIR/reward_vs_kl.png.
"""

from __future__ import annotations

import csv
import json
import os
import time

import jax
import ml_collections
from absl import logging

from alignjax import evaluation
from alignjax import experiment_lib
from alignjax import metrics as metrics_lib
from alignjax import pretrained
from alignjax import rollout as rollout_lib
from alignjax import runs
from alignjax import validation
from alignjax.data import inputs
from alignjax.trainers import common
from alignjax.trainers import loop
from alignjax.trainers import reward_model as reward_model_lib

COLUMNS = ('algorithm', 'signal', 'gold_reward', 'proxy_reward', 'kl_to_ref', 'gold_win_rate',
           'wall_s')


def stage_config(config, name: str, workdir: str) -> ml_collections.ConfigDict:
    """The resolved config of stage `name`."""
    stage = config.stages[name]
    spec = experiment_lib.experiment_path(stage.experiment)
    sub = experiment_lib.load_config(spec)
    sub.seed = config.seed
    sub.mesh.shape = tuple(config.mesh_shape)
    dirs = {other: os.path.join(workdir, other) for other in config.order}
    for item in stage.overrides:
        experiment_lib.apply_override(sub, item.format(**dirs), f'config.stages.{name}.overrides')
    return sub


def run(config, workdir: str) -> dict:
    """Runs every stage in order (resuming), then `compare`; returns the summary. The pipeline
    holds `workdir` (and each stage its own), so a second copy of the command is refused."""
    metrics_lib.show_progress()
    with loop.hold_workdir(workdir):
        return _run(config, workdir)


def _run(config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    timings_path = os.path.join(workdir, 'stage_times.json')
    timings = {}
    if os.path.exists(timings_path):
        with open(timings_path) as f:
            timings = json.load(f)
    for i, name in enumerate(config.order):
        if name not in config.stages:
            raise validation.ValidationError(
                f'config.order names {name!r}, which is not in config.stages')
        stage_dir = os.path.join(workdir, name)
        if os.path.exists(os.path.join(stage_dir, 'summary.json')):
            logging.info('[%d/%d] %s: done (%s)', i + 1, len(config.order), name, stage_dir)
            continue
        try:
            sub = stage_config(config, name, workdir)
        except ValueError as e:  # a stage's experiment file, arguments or overrides
            raise validation.ValidationError(f'stage {name}: {e}') from None
        print(
            f'[{i + 1}/{len(config.order)}] {name}: {config.stages[name].experiment} '
            f'({sub.total_steps} steps) -> {stage_dir}', flush=True)
        start = time.time()
        with jax.set_mesh(common.make_mesh(sub)):
            runs.train(sub, stage_dir)
        timings[name] = timings.get(name, 0.0) + time.time() - start
        if jax.process_index() == 0:
            with open(timings_path, 'w') as f:
                json.dump(timings, f, indent=2)
    return compare(config, workdir, timings)


def _load_policy(stage_cfg, path: str, mesh):
    policy = common.build_policy(stage_cfg, mesh)
    pretrained.init_module(policy, path)
    return policy


def compare(config, workdir: str, timings: dict) -> dict:
    """Evaluates every stage in `config.compare` against `config.reference` the same way."""
    c = config.evaluation
    ref_cfg = stage_config(config, config.reference, workdir)
    task = inputs.synthetic_task(ref_cfg)
    tok = inputs.make_tokenizer(ref_cfg)
    mesh = common.make_mesh(ref_cfg)
    rows = []
    with jax.set_mesh(mesh):
        reference = _load_policy(ref_cfg, os.path.join(workdir, config.reference), mesh)
        rm, rm_config = reward_model_lib.load_reward_model(
            os.path.join(workdir, config.reward_model), mesh, key='config.reward_model')
        scorer = rollout_lib.RewardModelScorer(rm, mesh, aggregate=rm_config.reward.aggregate,
                                               lam=rm_config.reward.lam)
        for name in (config.reference, *config.compare):
            policy = reference if name == config.reference else _load_policy(
                stage_config(config, name, workdir), os.path.join(workdir, name), mesh)
            figures = evaluation.gold_evaluation(task, policy, reference, tok,
                                                 num_prompts=c.num_prompts,
                                                 max_prompt_len=ref_cfg.data.max_prompt_len,
                                                 max_new_tokens=c.max_new_tokens,
                                                 temperature=c.temperature, seed=config.seed,
                                                 with_kl=True, scorer=scorer)
            rows.append({
                'algorithm': name, 'signal': config.stages[name].signal,
                'gold_reward': figures['gold_reward'], 'proxy_reward': figures['proxy_reward'],
                'kl_to_ref': figures['kl_to_ref'], 'gold_win_rate': figures['gold_win_rate'],
                'wall_s': timings.get(name, float('nan'))
            })
    total = sum(timings.values())
    summary = {
        'rows': rows, 'total_wall_s': total, 'beats_reference': {
            r['algorithm']: r['gold_reward'] > rows[0]['gold_reward'] for r in rows[1:]
        }
    }
    if jax.process_index() == 0:
        _write(workdir, rows, summary, config)
    return summary


def table(rows: list[dict]) -> str:
    """The comparison as a Markdown table."""
    head = '| ' + ' | '.join(COLUMNS) + ' |\n|' + '---|' * len(COLUMNS) + '\n'
    fmt = lambda k, v: (f'{v:.0f}' if k == 'wall_s' else f'{v:.3f}') if isinstance(v, float) \
        else str(v)
    return head + ''.join('| ' + ' | '.join(fmt(k, r[k]) for k in COLUMNS) + ' |\n' for r in rows)


def _write(workdir: str, rows: list[dict], summary: dict, config) -> None:
    text = table(rows)
    print(
        '\n' + text + f'\ntotal wall time {summary["total_wall_s"]:.0f} s; every number is on '
        f'{config.evaluation.num_prompts} held-out prompts (seed {config.seed}); KL and win '
        f'rate against {config.reference!r}\n', flush=True)
    with open(os.path.join(workdir, 'results.md'), 'w') as f:
        f.write(text)
    with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    plot(rows, os.path.join(workdir, 'reward_vs_kl.png'))


def plot(rows: list[dict], path: str) -> None:
    """Gold (filled) and proxy (hollow) reward against the sampled KL to the reference."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, r in enumerate(rows):
        color = f'C{i}'
        ax.scatter(r['kl_to_ref'], r['gold_reward'], color=color, s=60, label=r['algorithm'])
        ax.scatter(r['kl_to_ref'], r['proxy_reward'], facecolors='none', edgecolors=color, s=60)
        ax.plot([r['kl_to_ref']] * 2, [r['gold_reward'], r['proxy_reward']], color=color, lw=0.8,
                alpha=0.5)
    ax.set_xlabel('KL(policy || SFT) per sequence (nats)')
    ax.set_ylabel('reward (filled: gold, hollow: proxy RM)')
    ax.set_title('Quickstart: reward against KL, transitive synthetic task')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
