"""The per-step cost of the multi-process stop check: JAX's preemption sync point (what
`checkpoint.PreemptionGuard.should_stop` uses on several processes) against gathering every
process's stop flag (what it did before). Two CPU processes on localhost, each step a
`sync_global_devices` collective; one process gets SIGTERM at step 50 and both must stop at
the same step.

    python benchmarks/preemption_check.py
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

STEPS, SIGNAL_AT, GATHERS = 2000, 50, 40


def worker(address: str, pid: int) -> None:
    import jax  # pylint: disable=import-outside-toplevel
    jax.distributed.initialize(address, 2, pid)
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    sync_s = gather_s = 0.0
    for step in range(STEPS):
        multihost_utils.sync_global_devices(f'step {step}')
        time.sleep(0.005)  # the rest of a training step
        if step == SIGNAL_AT and pid == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        if step < GATHERS:
            start = time.perf_counter()
            multihost_utils.process_allgather(np.asarray(False))
            gather_s += time.perf_counter() - start
        start = time.perf_counter()
        stop = multihost_utils.reached_preemption_sync_point(step)
        sync_s += time.perf_counter() - start
        if stop:
            break
    print(
        json.dumps({
            'process': pid, 'stopped_at': step, 'signalled_at': SIGNAL_AT,
            'sync_point_ms': 1e3 * sync_s / (step + 1), 'gather_ms': 1e3 * gather_s / GATHERS
        }), flush=True)


def main() -> None:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        address = f'localhost:{s.getsockname()[1]}'
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=2')
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, address, str(i)], env=env, stdout=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    rows = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    for row in rows:
        print(json.dumps(row))
    assert rows[0]['stopped_at'] == rows[1]['stopped_at'], rows


if __name__ == '__main__':
    if len(sys.argv) == 3:
        worker(sys.argv[1], int(sys.argv[2]))
    else:
        main()
