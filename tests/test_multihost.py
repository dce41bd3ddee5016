"""Multi-host correctness: a tiny experiment as two CPU processes equals the one-process run.

Two `python -m alignjax.main --distributed` processes on localhost (a local coordinator, 4 CPU
devices each, gloo collectives) train the tiny SFT experiment over one 8-device mesh; the same
command as one process with 8 devices is the reference. Same global batch, same mesh, so the
curve, the summary and the final parameters must agree to float tolerance (collectives may sum
in another order). The two-process run also resumes: every process restores the checkpoint
every process wrote, and the run continues the same curve. Metrics are written once (process 0).
A second test places process-local batches on meshes that do and do not split rows by process.
"""

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import experiment_runs
from alignjax import checkpoint as ckpt_lib
from alignjax import metrics as metrics_lib
from alignjax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
OVERRIDES = {
    'ckpt_every': 4, 'log_every': 2, 'eval.num_prompts': 8, 'mesh.shape': (1, -1, 1),
    'model.num_layers': 1
}  # one layer: half the compile time, the same question
SPEC = f'sft.py:tiny,steps={STEPS}'
ARGS = [
    f'--config=experiments/{SPEC}',
    *(f'--config.{k}={str(v).replace(" ", "")}' for k, v in OVERRIDES.items())
]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    flags = [
        f for f in env.get('XLA_FLAGS', '').split()
        if 'xla_force_host_platform_device_count' not in f
    ]
    env['XLA_FLAGS'] = ' '.join([*flags, f'--xla_force_host_platform_device_count={devices}'])
    env['JAX_PLATFORMS'] = 'cpu'
    env['JAX_CPU_COLLECTIVES_IMPLEMENTATION'] = 'gloo'  # cross-process CPU collectives (default
    # in jax 0.10; named so that a changed default cannot turn the test into a hang)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def run_processes(workdir, n: int, timeout: int = 600, expect: int = 0) -> list[str]:
    """Runs the experiment as `n` processes of 8 // n devices; returns their logs."""
    cmd = [
        sys.executable, '-m', 'alignjax.main', *ARGS, f'--workdir={workdir}', '--distributed',
        f'--coordinator_address=localhost:{_free_port()}', f'--num_processes={n}'
    ]
    procs = [
        subprocess.Popen(cmd + [f'--process_id={i}'], cwd=ROOT, env=_env(8 // n),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(n)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == expect, f'process {i} ended {p.returncode}:\n{log[-4000:]}'
    return logs


def curve(workdir) -> list[dict]:
    return [{k: v
             for k, v in r.items()
             if k not in metrics_lib.TIMING_KEYS}
            for r in metrics_lib.read_metrics(str(workdir))]


def final_params(workdir) -> dict:
    """The last checkpoint's params as host arrays, whichever devices wrote them (a
    two-process checkpoint names devices this process does not have)."""
    path = os.path.join(workdir, 'checkpoints', str(STEPS), ckpt_lib.STATE_ITEM)
    with ocp.PyTreeCheckpointer() as reader:
        meta = reader.metadata(path)
    tree = getattr(meta, 'item_metadata', None) or meta
    tree = getattr(tree, 'tree', tree)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            tree['params'])
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=1, keep=1)
    try:
        return jax.device_get(ckpt.restore_params(STEPS, abstract))
    finally:
        ckpt.close()


def assert_same_run(a, b):
    ca, cb = curve(a), curve(b)
    assert [r['step'] for r in ca] == [r['step'] for r in cb] == list(range(2, STEPS + 1, 2))
    for ra, rb in zip(ca, cb):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (ra['step'], k)
    with open(os.path.join(a, 'summary.json')) as f, open(os.path.join(b, 'summary.json')) as g:
        sa, sb = json.load(f), json.load(g)
    assert sa.keys() == sb.keys() and sa['step'] == STEPS
    for k in sa:
        assert sb[k] == pytest.approx(sa[k], rel=1e-5, abs=1e-6), k
    pa, pb = final_params(a), final_params(b)
    leaves_a, leaves_b = _leaves(pa), _leaves(pb)
    assert leaves_a.keys() == leaves_b.keys() and leaves_a
    for k in leaves_a:
        np.testing.assert_allclose(leaves_b[k], leaves_a[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _leaves(tree, prefix=''):
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in _leaves(sub, f'{prefix}/{key}').items()
        }
    return {prefix: np.asarray(tree)}


def test_two_processes_equal_one_process_and_resume(tmp_path):
    one, two = tmp_path / 'one', tmp_path / 'two'
    logs = run_processes(two, 2)
    assert all(f'JAX process {i}/2, 8 devices' in log for i, log in enumerate(logs))
    # The reference: this process (8 devices), the same mesh and global batch.
    experiment_runs.run(one, SPEC, **OVERRIDES)
    assert_same_run(str(one), str(two))
    # Start weights must match too (gold_reward_ref) and training moved them (a real comparison).
    with open(two / 'summary.json') as f:
        summary = json.load(f)
    assert summary['gold_reward'] != summary['gold_reward_ref']
    assert sorted(os.listdir(two / 'checkpoints')) == ['4', '8']

    # Resume: lose the last checkpoint and the summary; both processes restore step 4.
    shutil.rmtree(two / 'checkpoints' / '8')
    os.remove(two / 'summary.json')
    logs = run_processes(two, 2)
    assert all('Resumed from' in log for log in logs)
    assert_same_run(str(one), str(two))


def test_a_held_workdir_refuses_every_process(tmp_path):
    """Process 0 meets the lock; the other process reads its verdict (the key-value store) and
    ends with the same line instead of waiting in a collective."""
    workdir = tmp_path / 'held'
    os.makedirs(workdir)
    # Held, but its text does not name a live holder: the early check lets the launch through
    # and the lock itself refuses, on process 0.
    fd = os.open(workdir / workdir_lib.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        logs = run_processes(workdir, 2, timeout=300, expect=1)
    finally:
        os.close(fd)
    for log in logs:
        assert log.strip().splitlines()[-1].startswith(f'error: {workdir} is in use by another'), \
            log[-2000:]
    assert os.listdir(workdir) == [workdir_lib.LOCK_FILE]


WORKER = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
from alignjax import sharding
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
rows = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)  # the global batch
i = jax.process_index()
local = rows[i * 8:(i + 1) * 8]  # this process's rows, as data.pipeline hands them out
weights = jnp.arange(1, 17, dtype=jnp.float32)[:, None]
for shape in ((1, -1, 1), (2, 2, 2), (1, 1, -1), (-1, 1, 1)):
    mesh = sharding.make_mesh(shape)
    x = sharding.shard_batch({'a': local}, mesh)['a']
    assert x.shape == (16, 3), (shape, x.shape)
    total = jax.jit(lambda a: jnp.sum(a * weights), out_shardings=sharding.replicated(mesh))(x)
    assert float(total) == float(np.sum(rows * np.arange(1, 17)[:, None])), (shape, float(total))
    np.testing.assert_array_equal(sharding.to_local(x), local)
print('worker ok', i)
"""


def test_process_local_batches_on_any_mesh():
    """Rows of each process land once, in process order, whether the mesh splits the batch
    by process (data, FSDP) or every device needs every row (tensor-parallel across hosts)."""
    address = f'localhost:{_free_port()}'
    procs = [
        subprocess.Popen(
            [sys.executable, '-c', WORKER, address, str(i)], cwd=ROOT, env=_env(4),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0 and f'worker ok {i}' in log, log[-3000:]


LOADER = r"""
import json, sys
import jax
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import numpy as np
from alignjax import sharding
from alignjax.interop import hf, safetensors_io
made = []
init = safetensors_io.Checkpoint.__init__
def counting(self, *args, **kwargs):
    init(self, *args, **kwargs)
    made.append(self)
safetensors_io.Checkpoint.__init__ = counting
mesh = sharding.make_mesh((1, -1, 1))  # 8 devices, 4 on each process: fsdp across processes
from flax import nnx
model, cfg = hf.load_hf(sys.argv[3], mesh, dtype='float32')
ckpt = made[-1]
read, total = ckpt.bytes_read, sum(ckpt.nbytes(n) for n in ckpt.entries)
whole = safetensors_io.Checkpoint(sys.argv[3])  # every tensor read whole, as the reference
checked = 0
for name, layer, path, var in hf._tensors(nnx.state(model), hf.FAMILIES['llama']):
    shape = var.shape if layer is None else var.shape[1:]
    x = whole.read(name)
    x = (x.T if path[-1] in hf._TRANSPOSED else x).reshape(shape)
    for shard in var.get_value().addressable_shards:
        index = shard.index if layer is None else shard.index[1:]
        got = np.asarray(shard.data) if layer is None else np.asarray(shard.data)[layer]
        np.testing.assert_array_equal(got, x[index])
        checked += 1
print('LOADED', json.dumps({'read': read, 'total': total, 'checked': checked}))
"""


def test_each_process_reads_only_its_shards_of_a_checkpoint(tmp_path):
    """A save_pretrained Llama loaded by two processes onto one fsdp mesh: each reads its half of
    the sharded tensors (norms, replicated, are read whole by both), and every shard equals the
    block of the tensor read whole."""
    transformers = pytest.importorskip('transformers')
    torch = pytest.importorskip('torch')
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / 'hf')
    address = f'localhost:{_free_port()}'
    procs = [
        subprocess.Popen(
            [sys.executable, '-c', LOADER, address,
             str(i), str(tmp_path / 'hf')], cwd=ROOT, env=_env(4), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True) for i in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    results = []
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, log[-3000:]
        results.append(json.loads(log.split('LOADED ', 1)[1].splitlines()[0]))
    norms = sum(p.numel() * 4 for n, p in model.named_parameters() if 'norm' in n)
    for r in results:  # this process's half of every sharded tensor, and every norm whole
        assert r['read'] == (r['total'] - norms) // 2 + norms, (r['read'], r['total'], norms)
        assert r['checked'] > 0
