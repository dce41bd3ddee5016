r"""The main job: the whole pipeline on the transitive synthetic task, in minutes on a CPU.

  python -m alignjax.main --config=experiments/quickstart.py --workdir=/tmp/alignjax/quickstart

Stages (each a run in WORKDIR/<stage>, resumed or skipped when re-run):
  sft      the policy, from scratch on the task's demonstrations (sft.py:tiny);
  rm       a 3-member reward-model ensemble (shared backbone from the SFT policy, mean score);
  ppo, remax, grpo   online RL from the SFT policy against the ensemble (the proxy reward);
  dpo      DPO from the SFT policy on the task's preference pairs (offline);
  nash_md  Nash-MD from the SFT policy, judged by the task's gold preference.
Then every policy is sampled on the same 256 held-out prompts: gold reward, proxy reward (the
ensemble), KL to the SFT policy, gold win rate against it, and each stage's wall time, printed and
written to WORKDIR/results.md, results.csv, summary.json and reward_vs_kl.png.

Measured (2 CPU cores, seed 0): see README.md's quickstart section and docs/results.md.

Arguments: iterations (online RL and Nash-MD; default 60), smoke (tiny budgets for the test
suite: the plumbing, not the learning).
"""

import ml_collections

from alignjax import experiment_lib


def _stage(experiment, signal, *overrides):
    return ml_collections.ConfigDict(
        {'experiment': experiment, 'signal': signal, 'overrides': tuple(overrides)})


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, iterations=60, smoke=False)
    n = 3 if a.smoke else a.iterations
    short = ('total_steps=40', 'ckpt_every=20', 'log_every=10') if a.smoke else ()
    online = ('init_from={sft}', 'reward.reward_from={rm}', f'total_steps={n}', 'ckpt_every=10',
              'log_every=10')
    c = ml_collections.ConfigDict()
    c.algo = 'pipeline'
    c.seed = 0
    c.mesh_shape = (1, 1, 1)  # one device: the tiny models gain nothing from splitting
    c.order = ('sft', 'rm', 'ppo', 'remax', 'grpo', 'dpo', 'nash_md')
    c.stages = ml_collections.ConfigDict({
        'sft': _stage('experiments/sft.py:tiny', 'demonstrations', *short),
        'rm': _stage('experiments/reward_model.py:tiny,ensemble=3', 'preference pairs',
                     'backbone_from={sft}', *short),
        'ppo': _stage('experiments/ppo.py:tiny,reward=rm,ensemble=3', 'proxy RM', *online),
        'remax': _stage('experiments/remax.py:tiny,reward=rm,ensemble=3', 'proxy RM', *online),
        'grpo': _stage('experiments/grpo.py:tiny,reward=rm,ensemble=3', 'proxy RM', *online),
        'dpo': _stage('experiments/dpo.py:tiny', 'preference pairs', 'init_from={sft}', *short),
        'nash_md': _stage('experiments/nash_md.py:tiny,task=transitive,preference=gold',
                          'gold preference', 'init_from={sft}', f'total_steps={n}',
                          'ckpt_every=5' if a.smoke else 'ckpt_every=10', 'log_every=10'),
    })
    c.reference = 'sft'
    c.reward_model = 'rm'
    c.compare = ('ppo', 'remax', 'grpo', 'dpo', 'nash_md')
    c.evaluation = ml_collections.ConfigDict(
        dict(num_prompts=32 if a.smoke else 256, max_new_tokens=12, temperature=1.0))
    c.lock()
    return c
