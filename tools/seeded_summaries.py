"""Seeded tiny runs of every experiment file, recorded or compared bit for bit.

The safety net of a refactor that must not change behaviour: each experiment's `tiny` config
(a few steps, one device, its starting points trained into a fresh cache) is run in its own
process; its metrics (timings left out: the timing keys, `*seconds`, `*_per_s`, `*_s`) and
summary are written as JSON, or compared with a recorded file, where any difference, down to the
last bit of a float, is reported.

    python tools/seeded_summaries.py --out=/tmp/before.json            # record
    python tools/seeded_summaries.py --compare=/tmp/before.json        # after the change
    python tools/seeded_summaries.py --only=dpo,ppo --steps=4 ...
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

MIN_STEPS = {'nash_mp': 10}  # saves only at the end of its two 5-step phases
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from alignjax import experiment_lib, metrics, trainers
from alignjax.trainers import loop
config = experiment_lib.load_config(sys.argv[2])
config.mesh.shape = (1, 1, 1)
config.total_steps = int(sys.argv[4])
config.log_every = 1
config.ckpt_every = config.total_steps
import alignjax, os
assert alignjax.__file__.startswith(sys.argv[1]), alignjax.__file__
if os.path.exists(os.path.join(sys.argv[1], 'alignjax', 'runs.py')):  # the top floor
    from alignjax import runs
    summary = runs.train(config, sys.argv[3])
else:  # a tree from before alignjax/runs.py
    summary = loop.train(config, sys.argv[3], trainers.get_builder(config.algo))
timed = lambda k: k in metrics.TIMING_KEYS or k.endswith(('seconds', '_per_s', '_s'))
rows = [{k: v for k, v in r.items() if not timed(k)} for r in metrics.read_metrics(sys.argv[3])]
print('RESULT ' + json.dumps({'summary': summary, 'metrics': rows}))
"""


def run_one(name: str, steps: int, cache: str) -> dict:
    spec = os.path.join(ROOT, 'experiments', f'{name}.py:tiny')
    with tempfile.TemporaryDirectory() as workdir:
        env = dict(os.environ, ALIGNJAX_CACHE=cache, JAX_PLATFORMS='cpu',
                   XLA_FLAGS='--xla_force_host_platform_device_count=1')
        out = subprocess.run([sys.executable, '-c', WORKER, ROOT, spec, workdir,
                              str(steps)], env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        return {'error': out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}
    line = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')][-1]
    return json.loads(line[len('RESULT '):])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', default='')
    parser.add_argument('--compare', default='')
    parser.add_argument('--only', default='', help='comma-separated experiment names')
    parser.add_argument('--steps', type=int, default=3)
    args = parser.parse_args()
    names = sorted(
        os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'experiments', '*.py')))
    names = [n for n in names if n != 'quickstart' and (not args.only or n in args.only.split(','))]
    results = {}
    with tempfile.TemporaryDirectory() as cache:  # starting points trained afresh, shared
        for name in names:
            results[name] = run_one(name, max(args.steps, MIN_STEPS.get(name, 0)), cache)
            print(
                name, 'error: ' + results[name]['error'] if 'error' in results[name] else
                f"{len(results[name]['metrics'])} rows", flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=1, sort_keys=True)
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        differ = [n for n in names if before.get(n) != results[n]]
        for n in differ:
            print(f'DIFFERS: {n}')
        print(f'{len(names) - len(differ)} of {len(names)} experiments bit-identical')
        sys.exit(1 if differ else 0)


if __name__ == '__main__':
    main()
