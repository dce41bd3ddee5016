"""The main job's plumbing: every stage of experiments/quickstart.py runs from the one before it,
the comparison table and its plot are written, and a re-run resumes instead of retraining.

`:smoke` budgets (40 steps, 3 iterations) test the wiring, not the learning; the learning figures
of the full run are in README.md and docs/results.md.
"""

import json
import os

import pytest

from alignjax import experiment_lib
from alignjax import stages

import experiment_runs


def test_quickstart_smoke(tmp_path):
    config = experiment_lib.load_config(
        os.path.join(experiment_runs.ROOT, 'experiments', 'quickstart.py:smoke'))
    summary = stages.run(config, str(tmp_path))
    names = [r['algorithm'] for r in summary['rows']]
    assert names == ['sft', 'ppo', 'remax', 'grpo', 'dpo', 'nash_md']
    for row in summary['rows']:
        assert set(row) == set(stages.COLUMNS)
        assert row['wall_s'] > 0 and -1 <= row['gold_win_rate'] <= 1
    assert abs(summary['rows'][0]['kl_to_ref']) < 1e-6  # the reference against itself
    for name in ('results.md', 'results.csv', 'reward_vs_kl.png', 'summary.json'):
        assert os.path.getsize(tmp_path / name) > 0
    with open(tmp_path / 'results.md') as f:
        assert f.read().count('\n') == 2 + len(names)
    # Every stage started from the SFT stage's workdir, and PPO scored with the stage's ensemble.
    with open(tmp_path / 'ppo' / 'config.json') as f:
        ppo = json.load(f)
    assert ppo['init_from'] == str(tmp_path / 'sft')
    assert ppo['reward']['reward_from'] == str(tmp_path / 'rm')
    # A re-run trains nothing: the stage times stay as they were.
    with open(tmp_path / 'stage_times.json') as f:
        times = json.load(f)
    stages.run(config, str(tmp_path))
    with open(tmp_path / 'stage_times.json') as f:
        assert json.load(f) == times


def test_stage_overrides_are_typed_and_checked():
    config = experiment_runs.config_of('ppo.py:tiny')
    for item in ('init_from=/w/sft', 'total_steps=7', 'rl.whiten_advantages=false',
                 'mesh.shape=(1, 2, 1)'):
        experiment_lib.apply_override(config, item, 'config.stages.ppo.overrides')
    assert (config.init_from, config.total_steps, config.rl.whiten_advantages,
            tuple(config.mesh.shape)) == ('/w/sft', 7, False, (1, 2, 1))
    with pytest.raises(ValueError, match="'total_steps' expects int, got 'x'.*stages.ppo"):
        experiment_lib.apply_override(config, 'total_steps=x', 'config.stages.ppo.overrides')
    with pytest.raises(ValueError, match="stages.ppo.overrides: 'rl.kl=1' is not 'KEY=VALUE'"):
        experiment_lib.apply_override(config, 'rl.kl=1', 'config.stages.ppo.overrides')
