"""What the workload benchmarks share: the issue-11 model shapes, timing, the hardware limit,
model-FLOP counts and running a peer library in its own interpreter.

The workload models are defined here rather than taken from `alignjax.models.PRESETS`, whose
`tiny` / `small` are the test and Colab presets (tied embeddings, GQA): the benchmarks must use
exactly the shapes the issue fixes, so that figures compare across libraries and over time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.path.join(HERE, 'peers')
VENVS = os.environ.get('ALIGNJAX_BENCH_VENVS', '/tmp/alignjax_bench_venvs')

# Llama-style: RMSNorm, RoPE, SwiGLU, untied embeddings; float32; random init, seed 0.
WORKLOADS = {
    'tiny': dict(vocab_size=1024, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=4,
                 head_dim=16, mlp_dim=176),
    'small': dict(vocab_size=8192, embed_dim=512, num_layers=8, num_heads=8, num_kv_heads=8,
                  head_dim=64, mlp_dim=1408),
    # GPU only: a Llama-3.2-1B-shaped bfloat16 model (no RoPE scaling), for MFU on an accelerator.
    '1b': dict(vocab_size=128_256, embed_dim=2048, num_layers=16, num_heads=32, num_kv_heads=8,
               head_dim=64, mlp_dim=8192, dtype='bfloat16', param_dtype='bfloat16'),
}
NORM_EPS = 1e-6
ROPE_THETA = 10_000.0


def set_threads(n: int = 2) -> None:
    """Every library on `n` threads (both cores of the benchmark machine); call before imports."""
    for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
        os.environ.setdefault(var, str(n))


def model_config(size: str, layers: str = 'scan'):
    """The alignjax ModelConfig of a workload size; `layers`: 'scan' (stacked, one lax.scan: the
    library's default) or 'loop' (a Python loop over the blocks)."""
    from alignjax.models import ModelConfig  # pylint: disable=g-import-not-at-top
    shape = dict(WORKLOADS[size])
    return ModelConfig(**shape, norm_eps=NORM_EPS, rope_theta=ROPE_THETA, tie_embeddings=False,
                       scan_layers=layers == 'scan')


def workload_spec(size: str) -> dict:
    """The shape as plain data, for the peers (they build their own model from it)."""
    return dict(WORKLOADS[size], norm_eps=NORM_EPS, rope_theta=ROPE_THETA, size=size)


def num_params(size: str) -> int:
    return model_config(size).num_params()


# --------------------------------------------------------------------------- model FLOPs / bytes


def matmul_params(cfg) -> int:
    """Parameters that enter a matmul for every token: blocks and the output head (not the
    embedding table, which is a lookup)."""
    d, h, kv, hd, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    block = d * hd * (h + 2 * kv) + h * hd * d + 3 * d * f
    return cfg.num_layers * block + d * cfg.vocab_size


def forward_flops(cfg, tokens: int, context: float, head_tokens: int | None = None) -> float:
    """Model FLOPs of a forward pass over `tokens` tokens, each attending to `context` keys on
    average, with the output head applied to `head_tokens` of them (default: all)."""
    head_tokens = tokens if head_tokens is None else head_tokens
    body = matmul_params(cfg) - cfg.embed_dim * cfg.vocab_size
    attn = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context  # QK^T and PV
    return 2.0 * body * tokens + attn * tokens + 2.0 * cfg.embed_dim * cfg.vocab_size * head_tokens


def sequence_flops(cfg, rows: int, prompt: int, response: int, *, train: bool) -> float:
    """Teacher-forced pass over rows of prompt + response tokens, the head on response positions
    only (what a log-prob needs); causal attention (a token sees (T + 1) / 2 keys on average).
    Training counts forward + backward = 3x the forward."""
    t = prompt + response
    fwd = forward_flops(cfg, rows * t, (t + 1) / 2, head_tokens=rows * response)
    return 3.0 * fwd if train else fwd


def grouped_sequence_flops(cfg, prompts: int, group: int, prompt: int, response: int, *,
                           train: bool) -> float:
    """FLOPs alignjax executes for `group` responses to each of `prompts` prompts when the prompt
    runs once (scoring.grouped_response_logprobs): the prompt pass, then the responses attending
    to its cache. `sequence_flops(rows=prompts * group)` is the model-FLOP count (every row's
    prompt counted)."""
    fwd = forward_flops(cfg, prompts * prompt, (prompt + 1) / 2, head_tokens=0)
    rows = prompts * group
    fwd += forward_flops(cfg, rows * response, prompt + (response + 1) / 2,
                         head_tokens=rows * response)
    return 3.0 * fwd if train else fwd


def param_bytes(cfg) -> int:
    from alignjax.models.config import _DTYPES  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    return cfg.num_params() * np.dtype(_DTYPES[cfg.param_dtype]).itemsize


def decode_bytes_per_step(cfg, batch: int, context: float) -> float:
    """Bytes one decode step must read: every matmul weight once, one embedding row and the KV
    cache of `context` positions per row."""
    from alignjax.models.config import _DTYPES  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    item = np.dtype(_DTYPES[cfg.param_dtype]).itemsize
    weights = (matmul_params(cfg) + batch * cfg.embed_dim) * item
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * context * batch * item
    return weights + kv


# --------------------------------------------------------------------------- timing


def timed_steps(step, *, steps: int, repeats: int = 2, sync=lambda out: out) -> dict:
    """Warm-up call (compilation) timed apart, then `repeats` rounds of `steps` timed calls.

    `step()` does one unit of work and returns something `sync` blocks on. Returns warmup_s, the
    per-round medians, their median (`median_s`) and every time.
    """
    start = time.perf_counter()
    sync(step())
    warmup = time.perf_counter() - start
    rounds = []
    for _ in range(repeats):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            sync(step())
            times.append(time.perf_counter() - start)
        rounds.append(times)
    medians = [statistics.median(r) for r in rounds]
    return {
        'warmup_s': round(warmup, 3), 'round_medians_s': [round(m, 5) for m in medians],
        'median_s': statistics.median([t for r in rounds for t in r]),
        'times_s': [[round(t, 5) for t in r] for r in rounds]
    }


def add_shared_flags(parser) -> None:
    """The flags every workload script takes: the limit measurement's sizes and the seed."""
    parser.add_argument('--limit_size', type=int, default=2048,
                        help='matmul size of the peak measurement (smaller: a quick smoke run)')
    parser.add_argument('--limit_mib', type=int, default=512,
                        help='array MiB of the bandwidth measurement')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--layers', default='scan', choices=('scan', 'loop'),
                        help="alignjax's blocks: stacked under one scan, or a Python loop")


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --------------------------------------------------------------------------- the hardware limit


def hardware_limit(*, size: int = 2048, bandwidth_mib: int = 512, repeats: int = 5) -> dict:
    """The machine's dense float32 matmul peak and memory (read) bandwidth, measured now.

    Peak: the best of a jitted `jnp.dot` and NumPy's BLAS on [size, size] float32 operands (the
    median of `repeats` calls each). Bandwidth: the best of a jitted full reduction and NumPy's
    sum over a `bandwidth_mib` MiB float32 array (read-bound; what decoding weights needs), and
    a NumPy copy (read + write counted) for reference.
    """
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    def med(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    on_gpu = jax.default_backend() != 'cpu'
    n = size * (4 if on_gpu else 1)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n**3
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    dot = jax.jit(jnp.dot)
    out = {
        'matmul_size': n, 'jax_matmul_flops': flops / med(lambda: dot(ja, jb).block_until_ready())
    }
    if on_gpu:
        a16, b16 = ja.astype(jnp.bfloat16), jb.astype(jnp.bfloat16)
        out['jax_matmul_bf16_flops'] = flops / med(lambda: dot(a16, b16).block_until_ready())
    else:
        out['numpy_matmul_flops'] = flops / med(lambda: np.dot(a, b))
    out['matmul_peak_flops'] = max(v for k, v in out.items() if k.endswith('matmul_flops'))

    count = bandwidth_mib * 2**20 // 4 * (8 if on_gpu else 1)
    x = np.ones(count, np.float32)
    jx = jnp.asarray(x)
    total = jax.jit(jnp.sum)
    out['bandwidth_array_bytes'] = int(x.nbytes)
    out['jax_sum_bytes_per_s'] = x.nbytes / med(lambda: total(jx).block_until_ready())
    if not on_gpu:
        y = np.empty_like(x)
        out['numpy_sum_bytes_per_s'] = x.nbytes / med(lambda: x.sum())
        out['numpy_copy_bytes_per_s'] = 2 * x.nbytes / med(lambda: np.copyto(y, x))
    out['read_bandwidth_bytes_per_s'] = max(
        v for k, v in out.items() if k.endswith('sum_bytes_per_s'))
    out['device'] = describe_device()
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}


def describe_device() -> str:
    import jax  # pylint: disable=g-import-not-at-top
    d = jax.devices()[0]
    if d.platform == 'cpu':
        cpu = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                for line in f:
                    if line.startswith('model name'):
                        cpu = line.split(':', 1)[1].strip()
                        break
        except OSError:
            pass
        return f'CPU {cpu}, {os.cpu_count()} cores'
    return f'{d.device_kind} x{jax.device_count()}'


# --------------------------------------------------------------------------- peers


def default_python(peer: str) -> str:
    """The interpreter of a peer: its venv made by peers/setup_venvs.sh, else this one (TRL and
    transformers may be installed beside alignjax; Tunix pins its own jax and never is)."""
    venv = os.path.join(VENVS, peer, 'bin', 'python')
    if os.path.exists(venv):
        return venv
    return sys.executable if peer == 'trl' else venv


def run_peer(script: str, python: str, spec: dict, *, timeout: float = 1800) -> dict:
    """Runs peers/<script> under `python` with the JSON `spec`; returns its last JSON line, or
    {'error': ...} (a peer that fails does not stop the benchmark)."""
    if not os.path.exists(python):
        return {'error': f'no interpreter {python} (run benchmarks/peers/setup_venvs.sh)'}
    env = dict(os.environ, PYTHONPATH=PEERS, OMP_NUM_THREADS=str(spec.get('threads', 2)))
    env.pop('XLA_FLAGS', None)
    try:
        proc = subprocess.run([python, os.path.join(PEERS, script),
                               json.dumps(spec)], capture_output=True, text=True, timeout=timeout,
                              env=env, check=False)
    except subprocess.TimeoutExpired:
        return {'error': f'{script} timed out after {timeout} s'}
    lines = [l for l in proc.stdout.strip().splitlines() if l.startswith('{')]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        return {'error': f'{script} exited {proc.returncode}: ' + ' | '.join(tail)}
    return json.loads(lines[-1])


def log(msg: str) -> None:
    print(msg, flush=True)


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def _fmt(x) -> str:
    if x is None:
        return '-'
    if isinstance(x, float):
        return f'{x:.3g}' if abs(x) < 1000 else f'{x:,.0f}'
    return str(x)
