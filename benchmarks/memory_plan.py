r"""Per-device memory of a run's programs, compiled ahead of time for a TPU pod or simulated CPUs.

    /work/tpuvenv/bin/python benchmarks/memory_plan.py --algo=dpo --model=llama3_8b \
        --target=v5e:8x8 --mesh=1,64,1 --batch=64 --prompt_len=512 --response_len=512 --layers=2
    python benchmarks/memory_plan.py --algo=grpo --model=tiny --target=cpu:8 --mesh=1,8,1 \
        --batch=8 --group=4 --prompt_len=8 --response_len=12

Builds every model abstractly and compiles what `main` would run (the config of
`experiments/<algo>.py[:--exp_args]` with the model, batch, lengths and mesh swapped in; see
`alignjax/memory_plan.py`): the update, and for online algorithms the sampler, the teacher-forced
rollout passes and the reward / preference model. TPU targets need libtpu: run under the venv of
benchmarks/setup_tpu_venv.sh. `cpu:N` runs under any python (the flag that makes N host devices
is set here, before jax is imported).

Prints a table (per device: arguments, outputs, aliased, temporaries, total = arguments +
outputs + temporaries - aliased, the compiler's peak where it gives one, compile seconds, and the
largest buffers of each program), then one JSON line. Exits 1, with the one-line reason, when a
program does not fit the target's HBM (`--hbm_gib` to set it; CPU targets have none) or the
compiler refused it.

--batch counts preference pairs (dpo), demonstrations (sft) or prompts (online; each sampled
--group times). --model is a preset of alignjax/models/config.py or llama3_70b (its public shape,
defined here). Online runs default to a learned reward model (--exp_args=reward=rm for ppo and
grpo): what a run at scale scores with; the Nash methods to their preference model.
"""

from __future__ import annotations

import argparse
import os
import sys


def llama3_70b():
    """Llama-3-70B's public shape (bfloat16 storage and compute, remat, like llama3_8b)."""
    from alignjax.models import get_model_config  # pylint: disable=g-import-not-at-top
    return get_model_config('llama3_8b').replace(vocab_size=128_256, embed_dim=8192, num_layers=80,
                                                 num_heads=64, num_kv_heads=8, head_dim=128,
                                                 mlp_dim=28_672, rope_theta=500_000.0,
                                                 tie_embeddings=False)


DEFAULT_EXP_ARGS = {
    'ppo': 'reward=rm', 'grpo': 'reward=rm', 'rloo': 'reward=rm', 'remax': 'reward=rm'
}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--algo', required=True)
    p.add_argument('--model', default='tiny')
    p.add_argument('--target', default='cpu:8', help="TPU topology ('v5e:8x8'), 'cpu:N', 'local'")
    p.add_argument('--mesh', default='1,-1,1', help='data,fsdp,tensor')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--prompt_len', type=int, default=512)
    p.add_argument('--response_len', type=int, default=512)
    p.add_argument('--group', type=int, default=0, help='samples per prompt (online)')
    p.add_argument('--layers', type=int, default=0, help='override model.num_layers')
    p.add_argument(
        '--remat', default='', help='override model.remat (True|False); the policy: '
        '--set=model.remat_policy=save_dots')
    p.add_argument('--microbatches', type=int, default=0, help='override optim.microbatches')
    p.add_argument('--exp_args', default=None, help='experiment ARGS (default: per algo)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='any config override, e.g. --set=loss.precompute_ref=True')
    p.add_argument('--only', default='', help='comma-separated programs to compile')
    p.add_argument('--hbm_gib', type=float, default=0.0, help="default: the target's")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.target.startswith('cpu:'):
        flag = f'--xla_force_host_platform_device_count={args.target[4:]}'
        os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + flag).strip()
        os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    elif args.target != 'local':
        # Only the TPU compiler is needed: no TPU runtime to find (the host is the CPU backend).
        os.environ.setdefault('JAX_PLATFORMS', 'cpu')
        os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from alignjax import memory_plan as mp  # pylint: disable=g-import-not-at-top

    overrides = list(args.set)
    if args.remat:
        overrides.append(f'model.remat={args.remat}')
    if args.microbatches:
        overrides.append(f'optim.microbatches={args.microbatches}')
    model = llama3_70b() if args.model == 'llama3_70b' else args.model
    exp_args = DEFAULT_EXP_ARGS.get(args.algo, '') if args.exp_args is None else args.exp_args
    config = mp.plan_config(args.algo, model, batch=args.batch, prompt_len=args.prompt_len,
                            response_len=args.response_len, group=args.group or None,
                            mesh_shape=tuple(int(x) for x in args.mesh.split(',')),
                            layers=args.layers or None, exp_args=exp_args, overrides=overrides)
    if args.model == 'llama3_70b':
        config.model.preset = 'llama3_70b'
    only = set(args.only.split(',')) if args.only else None
    log = lambda r: print(
        f'compiled {r.name}: {mp.fmt_bytes(r.total)} a device in '
        f'{r.compile_s:.1f} s' + (f' (REFUSED: {r.error})' if r.error else ''), flush=True)
    report = mp.plan(config, args.target, only=only, log=log)
    print(report.table())
    print(report.to_json())
    hbm = int(args.hbm_gib * mp.GiB) if args.hbm_gib else mp.hbm_bytes(args.target)
    try:
        mp.check_fits(report, hbm)
    except ValueError as e:
        print(f'DOES NOT FIT: {e}', file=sys.stderr)
        return 1
    print(f'fits: every program within {mp.fmt_bytes(hbm) if hbm else "the compiler limit"} '
          'a device')
    return 0


if __name__ == '__main__':
    sys.exit(main())
