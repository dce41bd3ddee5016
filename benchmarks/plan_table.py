r"""The plan table of benchmarks/README.md: for each algorithm and model, the smallest TPU slice
its run fits, with the per-device bytes and compile time of every program.

    /work/tpuvenv/bin/python benchmarks/plan_table.py --out=/tmp/plan.jsonl
    /work/tpuvenv/bin/python benchmarks/plan_table.py --only=dpo:llama3_8b --out=/tmp/plan.jsonl

Each (algorithm, model) starts at the smallest slice whose HBM holds its training state by the
arithmetic (bytes a parameter for every trainable and frozen model, plus a quarter for
activations) and climbs the slices of its generation until the TPU compiler fits every program
(`benchmarks/memory_plan.py`, one subprocess each, so a refusal or a crash costs one entry);
an entry whose generation names a slice ('v5p:4x4x4') is compiled on that slice only.
Rows: one prompt (or pair, or demonstration) a device, `--group` samples a prompt, prompt and
response `--len` tokens each, FSDP over every chip (mesh (1, N, 1)). Appends one JSON line a
compile to `--out` (resumable: entries already there are skipped) and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GiB = 1 << 30
SLICES = {  # (name, chips, HBM a chip) from small to large
    'v5e': [('v5e:2x2', 4), ('v5e:2x4', 8), ('v5e:4x4', 16), ('v5e:4x8', 32), ('v5e:8x8', 64),
            ('v5e:8x16', 128), ('v5e:16x16', 256)],
    'v5p': [('v5p:2x2x1', 4), ('v5p:2x2x2', 8), ('v5p:2x2x4', 16), ('v5p:2x4x4', 32),
            ('v5p:4x4x4', 64), ('v5p:4x4x8', 128)],
}
HBM = {'v5e': 15.75 * GiB, 'v5p': 95.74 * GiB}
PARAMS = {'llama3_2_1b': 1.24e9, 'gemma2_2b': 2.61e9, 'llama3_8b': 8.03e9, 'llama3_70b': 70.6e9}
# Bytes a parameter: a trainable bf16 model 18 (storage, f32 gradient, master, Adam), a frozen 2.
STATE_BYTES = {
    'sft': 18, 'dpo': 18 + 2, 'ppo': 2 * 18 + 2 + 2, 'grpo': 18 + 2 + 2, 'nash_md': 18 + 2 + 2
}
MODELS = ('llama3_2_1b', 'gemma2_2b', 'llama3_8b')
# In the order they are compiled: the offline algorithms, the 8B online runs on a v5p-64 and
# the 70B DPO run, then the online algorithms on v5e.
ENTRIES = [(algo, model, 'v5e') for algo in ('dpo', 'sft') for model in MODELS]
ENTRIES += [('ppo', 'llama3_8b', 'v5p:4x4x4'), ('grpo', 'llama3_8b', 'v5p:4x4x4'),
            ('dpo', 'llama3_70b', 'v5p')]
ENTRIES += [(algo, model, 'v5e') for algo in ('grpo', 'ppo', 'nash_md') for model in MODELS]


def first_slice(algo: str, model: str, generation: str) -> int:
    need = STATE_BYTES[algo] * PARAMS[model] * 1.25
    for i, (_, chips) in enumerate(SLICES[generation]):
        if need / chips < HBM[generation]:
            return i
    return len(SLICES[generation]) - 1


def compile_one(algo, model, target, chips, args) -> dict:
    online = algo in ('ppo', 'grpo', 'nash_md')
    cmd = [
        sys.executable,
        os.path.join(HERE, 'memory_plan.py'), f'--algo={algo}', f'--model={model}',
        f'--target={target}', f'--mesh=1,{chips},1', f'--batch={chips}', f'--prompt_len={args.len}',
        f'--response_len={args.len}'
    ]
    if online:
        cmd.append(f'--group={args.group}')
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
    row = json.loads(lines[-1]) if lines else {}
    refused = proc.returncode != 0
    reason = ''
    if refused:
        tail = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        reason = next((l for l in reversed(tail) if 'DOES NOT FIT' in l or 'Error' in l),
                      tail[-1] if tail else '')[:300]
    return {
        'algo': algo, 'model': model, 'target': target, 'chips': chips, 'fits': not refused,
        'reason': reason, 'wall_s': round(time.time() - start, 1), 'programs': [{
            k: r.get(k) for k in ('name', 'argument', 'temp', 'total', 'peak', 'compile_s', 'error')
        } for r in row.get('rows', [])]
    }


def table(results) -> str:
    out = [
        '| algorithm | model | smallest slice that fits | program | args GiB | temps GiB '
        '| total GiB | compile s |', '|---|---|---|---|---|---|---|---|'
    ]
    order = {m: i for i, m in enumerate((*MODELS, 'llama3_70b'))}
    algos = {a: i for i, a in enumerate(STATE_BYTES)}
    for r in sorted(results, key=lambda r: (order[r['model']], algos[r['algo']], r['chips'])):
        if not r['fits']:
            continue
        for i, p in enumerate(r['programs']):
            head = (f"| {r['algo']} | {r['model']} | {r['target']} ({r['chips']} chips) "
                    if i == 0 else '| | | ')
            out.append(head + f"| {p['name']} | {p['argument'] / GiB:.2f} | "
                       f"{p['temp'] / GiB:.2f} | {p['total'] / GiB:.2f} | "
                       f"{p['compile_s']:.0f} |")
    return '\n'.join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True)
    p.add_argument('--only', default='', help='comma-separated algo:model[:generation]')
    p.add_argument('--len', type=int, default=512)
    p.add_argument('--group', type=int, default=4)
    args = p.parse_args()
    entries = ENTRIES
    if args.only:
        want = [tuple(x.split(':')) for x in args.only.split(',')]
        entries = [e for e in ENTRIES if e in want or e[:2] in want]
    done = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            done = [json.loads(l) for l in f if l.strip()]
    for algo, model, generation in entries:
        tried = {(r['algo'], r['model'], r['target']): r for r in done}
        if ':' in generation:  # a named slice (the acceptance's v5p-64), not the smallest
            slices = [s for s in SLICES[generation.split(':')[0]] if s[0] == generation]
        else:
            slices = SLICES[generation][first_slice(algo, model, generation):]
        for target, chips in slices:
            r = tried.get((algo, model, target))
            if r is None:
                r = compile_one(algo, model, target, chips, args)
                done.append(r)
                with open(args.out, 'a') as f:
                    f.write(json.dumps(r) + '\n')
                print(
                    f"{algo} {model} {target}: {'fits' if r['fits'] else 'refused'} "
                    f"({r['wall_s']:.0f} s) {r['reason']}", flush=True)
            if r['fits']:
                break
    print(
        table([
            r for r in done if any(r['algo'] == a and r['model'] == m and r['target'].startswith(g)
                                   for a, m, g in entries)
        ]))


if __name__ == '__main__':
    main()
