"""The `grpo` and `ppo` workloads side by side with TRL's GRPOTrainer and Tunix's RL learners.

    PYTHONPATH=. python benchmarks/grpo.py --algo=grpo --size=small [--peers=trl,tunix]
    PYTHONPATH=. python benchmarks/grpo.py --algo=ppo --size=small [--peers=tunix]

One iteration: 2 prompts x 4 samples, 32-token prompts, 64 new tokens (temperature 1.0, EOS
disabled so every row has 64 tokens), scored by a cheap host reward (the fraction of even token
ids, the same function for every library), then the update. alignjax runs exactly what
`loop.train` runs: `trainers.policy_gradient.build` from `experiments/{grpo,ppo}.py:tiny` with the
workload model, random init, and the prompt source swapped for fixed random prompts; rollout
(sampler, reward, policy / reference / critic passes, advantages) and the jitted update. GRPO: one
update an iteration, k3 KL in the loss (beta 0.04); PPO: a critic of the policy's shape, GAE, 2
epochs x 2 minibatches (experiments/ppo.py). AdamW at 1e-6, no clipping, constant rate.

Reported: warm-up (first iteration: compilation) apart, the median of --steps iterations repeated
twice, split into rollout and update; tokens/s (rows x (prompt + response) a second); model FLOP/s
against the matmul peak; the peers' figures and the ratio peer / alignjax. The last line is one
JSON object. Peers: TRL's GRPOTrainer (grpo only; peers/trl_grpo.py) and Tunix's GRPOLearner /
PPOLearner (peers/tunix_grpo.py, whose docstring says where Tunix's iteration differs: no
old-policy pass in GRPO, and PPO's 2 epochs over the whole rollout rather than 2 x 2 minibatches).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

common.set_threads(2)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from alignjax import experiment_lib, sharding  # pylint: disable=g-import-not-at-top
from alignjax.trainers import common as trainer_common  # pylint: disable=g-import-not-at-top
from alignjax.trainers import loop, policy_gradient  # pylint: disable=g-import-not-at-top

EXPERIMENTS = os.path.join(common.HERE, '..', 'experiments')


class WordTokenizer:
    """Token i is the word 't<i>'; EOS disabled (-1), so every row decodes max_new_tokens."""

    eos_id = -1
    pad_id = 0
    bos_id = 1

    def decode(self, ids):
        return ' '.join(f't{int(i)}' for i in ids)


class EvenTokenTask:
    """The host reward of every library here: the fraction of even token ids in a response."""
    def gold_rewards(self, prompts, responses):
        del prompts
        return np.array(
            [np.mean([int(w[1:]) % 2 == 0 for w in r.split()] or [0.0]) for r in responses],
            np.float32)


class RandomPrompts:
    """`stream[step]`: `prompts` random 32-token prompts (ids >= 4), the same for every step."""
    def __init__(self, vocab: int, prompts: int, length: int, seed: int):
        rng = np.random.default_rng(seed)
        self.batch = {
            'prompt': rng.integers(4, vocab, (prompts, length)).astype(np.int32),
            'prompt_mask': np.ones((prompts, length),
                                   np.int32), 'index': np.arange(prompts, dtype=np.int32)
        }
        self.records = [{'prompt': WordTokenizer().decode(p)} for p in self.batch['prompt']]

    def __getitem__(self, step):
        return dict(self.batch)


def make_config(args):
    c = experiment_lib.load_config(os.path.join(EXPERIMENTS, f'{args.algo}.py') + ':tiny')
    for key, value in common.WORKLOADS[args.size].items():
        c.model[key] = value
    c.model.norm_eps, c.model.rope_theta = common.NORM_EPS, common.ROPE_THETA
    c.model.tie_embeddings = False
    c.model.scan_layers = args.layers == 'scan'
    c.data.batch_size = args.prompts
    c.data.max_prompt_len = args.prompt_len
    c.rl.samples_per_prompt = args.samples
    c.rl.max_new_tokens = args.new_tokens
    c.reward.source = 'gold'
    c.init_from = c.reference_from = ''
    if 'critic_from' in c:
        c.critic_from = ''
    c.optim.lr = 1e-6
    c.optim.grad_clip = 0.0
    c.optim.warmup_steps = 0
    c.optim.schedule = 'constant'
    c.eval_every = 0
    c.total_steps = 1 + args.steps * args.repeats
    c.seed = args.seed
    return c


def build(config, args, mesh):
    """policy_gradient.build with the prompt source, tokenizer and reward of this workload."""
    prompts = RandomPrompts(config.model.vocab_size, args.prompts, args.prompt_len, args.seed)

    def online_setup(config, mesh):
        policy = trainer_common.build_policy(config, mesh)
        reference = trainer_common.build_policy(config, mesh)
        return WordTokenizer(), EvenTokenTask(), prompts.records, prompts, policy, reference

    original = policy_gradient.online_setup
    policy_gradient.online_setup = online_setup
    try:
        return policy_gradient.build(config, mesh)
    finally:
        policy_gradient.online_setup = original


class Iteration:
    """Rollout + update, as `loop.train` steps them."""
    def __init__(self, config, args):
        self.mesh = trainer_common.make_mesh(config)
        with jax.set_mesh(self.mesh):
            self.algo = build(config, args, self.mesh)
            run = loop.setup(config, self.algo, self.mesh)
        self.graphdef, self.state = run.graphdef, run.state
        self.frozen, self.update = run.frozen_states, run.update
        self.model = nnx.merge(self.graphdef, self.state['params'])
        self.step, self.rollout_s, self.update_s = 0, [], []

    def __call__(self):
        with jax.set_mesh(self.mesh):
            start = time.perf_counter()
            host, _ = self.algo.batches(self.step, self.model, jax.device_get(self.state['algo']))
            batch = sharding.shard_batch(host, self.mesh)
            mid = time.perf_counter()
            self.state, metrics, finite = self.update(self.state, self.frozen, batch)
            self.model = nnx.merge(self.graphdef, self.state['params'])
            jax.block_until_ready(metrics)
        self.rollout_s.append(mid - start)
        self.update_s.append(time.perf_counter() - mid)
        self.step += 1
        return metrics


def flops_per_iteration(cfg, args, config, *, executed: bool = False) -> float:
    """Model FLOPs of an iteration (every row's prompt counted, as a plain forward does); with
    `executed`, what alignjax runs: the policy and reference passes, and a single update's policy
    pass, run each prompt once for its group of samples (scoring.grouped_response_logprobs)."""
    rows, p, n = args.prompts * args.samples, args.prompt_len, args.new_tokens
    gen = common.forward_flops(cfg, rows * p, (p + 1) / 2, head_tokens=rows)
    gen += sum(common.forward_flops(cfg, rows, p + i + 1) for i in range(n))
    fwd = lambda train: common.sequence_flops(cfg, rows, p, n, train=train)
    grouped = lambda train: common.grouped_sequence_flops(cfg, args.prompts, args.samples, p, n,
                                                          train=train)
    shared = grouped if executed and args.samples > 1 else fwd
    one_update = config.rl.epochs * config.rl.minibatches == 1
    total = gen + 2 * shared(False)  # policy and reference teacher-forced
    if args.algo == 'ppo':
        # The critic's pass, then each epoch's minibatches over every row: policy and critic.
        total += fwd(False) + config.rl.epochs * 2 * fwd(True)
    else:
        total += config.rl.epochs * (shared if one_update else fwd)(True)
    return total


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--algo', default='grpo', choices=('grpo', 'ppo'))
    parser.add_argument('--size', default='small', choices=('tiny', 'small'))
    parser.add_argument('--prompts', type=int, default=2)
    parser.add_argument('--samples', type=int, default=4)
    parser.add_argument('--prompt_len', type=int, default=32)
    parser.add_argument('--new_tokens', type=int, default=64)
    parser.add_argument('--steps', type=int, default=10, help='timed iterations per round')
    parser.add_argument('--repeats', type=int, default=2, help='rounds of --steps iterations')
    parser.add_argument(
        '--peers', default=None,
        help='comma-separated of trl (grpo only), tunix; default: trl,tunix for '
        'grpo, tunix for ppo; empty: none')
    parser.add_argument('--trl_python', default=common.default_python('trl'))
    parser.add_argument('--tunix_python', default=common.default_python('tunix'))
    common.add_shared_flags(parser)
    args = parser.parse_args(argv)

    config = make_config(args)
    cfg = trainer_common.model_config_from(config.model)
    load_before = common.load_average()
    hw = common.hardware_limit(size=args.limit_size, bandwidth_mib=args.limit_mib)
    common.log(f'{hw["device"]}; load average {load_before}; matmul peak '
               f'{hw["matmul_peak_flops"] / 1e9:.1f} GFLOP/s')
    common.log(f'{args.algo} {args.size}: {cfg.num_params() / 1e6:.2f}M params, {args.prompts} '
               f'prompts x {args.samples} samples, prompt {args.prompt_len}, '
               f'{args.new_tokens} new tokens, {config.rl.epochs} epochs x '
               f'{config.rl.minibatches} minibatches')
    it = Iteration(config, args)
    t = common.timed_steps(it, steps=args.steps, repeats=args.repeats)
    s = t['median_s']
    rows = args.prompts * args.samples
    flops = flops_per_iteration(cfg, args, config)
    executed = flops_per_iteration(cfg, args, config, executed=True)
    ours = {
        'ms_per_step': round(1e3 * s, 3), 'warmup_s': t['warmup_s'],
        'round_medians_ms': [round(1e3 * m, 3) for m in t['round_medians_s']],
        'rollout_ms': round(1e3 * statistics.median(it.rollout_s[1:]),
                            3), 'update_ms': round(1e3 * statistics.median(it.update_s[1:]), 3),
        'tokens_per_s': round(rows * (args.prompt_len + args.new_tokens) / s,
                              1), 'model_flops_per_step': flops, 'flops_per_s': round(flops / s, 1),
        'fraction_of_matmul_peak': round(flops / s / hw['matmul_peak_flops'],
                                         4), 'executed_flops_per_step': executed,
        'executed_fraction_of_matmul_peak': round(executed / s / hw['matmul_peak_flops'], 4)
    }
    common.log(f'alignjax {args.algo}: {ours["ms_per_step"]:.1f} ms/iteration (rollout '
               f'{ours["rollout_ms"]:.1f}, update {ours["update_ms"]:.1f})')

    spec = dict(model=common.workload_spec(args.size), prompts=args.prompts, samples=args.samples,
                prompt_len=args.prompt_len, new_tokens=args.new_tokens, steps=args.steps,
                repeats=args.repeats, lr=1e-6, beta=config.rl.kl_coef, threads=2, seed=args.seed,
                algo=args.algo, epochs=config.rl.epochs)
    if args.peers is None:
        args.peers = 'trl,tunix' if args.algo == 'grpo' else 'tunix'
    peers = {}
    for peer in filter(None, args.peers.split(',')):
        if peer == 'trl' and args.algo == 'grpo':
            common.log('running trl ...')
            peers['trl'] = common.run_peer('trl_grpo.py', args.trl_python, spec)
        elif peer == 'trl':
            peers['trl'] = {'error': 'TRL 1.x has no PPOTrainer in its stable API'}
        elif peer == 'tunix':
            common.log('running tunix ...')
            peers['tunix'] = common.run_peer('tunix_grpo.py', args.tunix_python, spec)
        else:
            raise ValueError(f'unknown peer {peer!r}')

    table = [[
        f'alignjax {args.algo}', ours['ms_per_step'], ours['warmup_s'], ours['tokens_per_s'],
        ours['fraction_of_matmul_peak'], None
    ]]
    ratios = {}
    for name, r in peers.items():
        if r.get('median_s'):
            ms = 1e3 * r['median_s']
            ratios[name] = round(ms / ours['ms_per_step'], 2)
            table.append([
                name,
                round(ms, 3), r['warmup_s'],
                round(rows * (args.prompt_len + args.new_tokens) / r['median_s'], 1),
                round(flops / r['median_s'] / hw['matmul_peak_flops'], 4), ratios[name]
            ])
        else:
            table.append([name, None, None, None, None, r.get('error', '')[:80]])
    common.log(
        common.table(table,
                     ['', 'ms/iteration', 'warm-up s', 'tokens/s', 'of peak', 'peer/alignjax']))
    result = {
        'workload': args.algo, 'size': args.size, 'params': cfg.num_params(),
        'prompts': args.prompts, 'samples': args.samples, 'prompt_len': args.prompt_len,
        'new_tokens': args.new_tokens, 'epochs': config.rl.epochs,
        'minibatches': config.rl.minibatches, **ours, 'peers': peers, 'speedup_vs_peers': ratios,
        'hardware': hw, 'jax': jax.__version__, 'load_average_before': load_before,
        'load_average_after': common.load_average()
    }
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
