"""alignjax.memory_plan on simulated CPU devices: the run's programs compile abstractly, their
per-device memory shrinks with more FSDP devices, and check_fits refuses what does not fit.

The TPU compile itself (benchmarks/memory_plan.py --target=v5e:8x8) needs the libtpu venv of
benchmarks/setup_tpu_venv.sh and minutes a program, so it stays out of the suite; the logic it
runs is the same as here, with another device list.
"""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from alignjax import memory_plan as mp
from alignjax.models import get_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_plan(algo, fsdp=8, **kw):
    kw = dict(dict(batch=16, prompt_len=8, response_len=8), **kw)
    config = mp.plan_config(algo, 'tiny', mesh_shape=(1, fsdp, 1), **kw)
    return mp.plan(config, f'cpu:{fsdp}')


@pytest.fixture(scope='module')
def sft8():
    return tiny_plan('sft')


def check_row(row):
    assert row.argument > 0 and row.temp > 0 and row.total > 0 and row.compile_s > 0, row
    assert row.total == row.argument + row.output + row.temp - row.alias
    assert row.largest and all(size > 0 for size, _ in row.largest)
    assert row.largest == sorted(row.largest, key=lambda t: -t[0])


def test_sft_update(sft8):
    (row,) = sft8.rows
    assert row.name == 'update'
    check_row(row)
    # The state is donated: the new state is written into it (outputs aliased to arguments).
    assert 0 < row.alias <= row.argument


def test_dpo_update_has_the_reference(sft8):
    report = tiny_plan('dpo')
    (row,) = report.rows
    check_row(row)
    # The frozen reference is an argument of the step: one more model's parameters (float32,
    # sharded over 8 devices) than SFT's policy and Adam moments.
    params = get_model_config('tiny').num_params()
    assert row.argument - sft8.rows[0].argument >= 0.9 * params * 4 / 8


def test_online_plan_has_rollout_programs():
    report = tiny_plan('grpo', batch=4, group=2)
    names = [r.name for r in report.rows]
    assert names == ['update', 'sampler', 'rollout: policy + reference']
    for row in report.rows:
        check_row(row)


def test_more_fsdp_devices_less_memory(sft8):
    two = tiny_plan('sft', fsdp=2).rows[0]
    eight = sft8.rows[0]
    # Parameters and Adam moments are sharded over fsdp: 4x the devices, ~1/4 the arguments.
    assert eight.argument < 0.35 * two.argument, (eight.argument, two.argument)
    assert eight.total < two.total


def test_check_fits_refuses_a_tiny_budget(sft8):
    mp.check_fits(sft8, 1 << 30)  # 1 GiB: fits
    with pytest.raises(ValueError) as e:
        mp.check_fits(sft8, 1 << 10)
    msg = str(e.value)
    assert '\n' not in msg
    assert 'update needs' in msg and 'largest buffers' in msg
    assert sft8.rows[0].largest[0][1] in msg  # the largest buffer, named
    assert 'config.optim.microbatches' in msg and 'config.model.remat' in msg
    assert 'config.mesh.shape (now (1, 8, 1))' in msg


class _Refused:
    """A program whose compile the TPU compiler refuses, as it words it."""
    def lower(self, x):
        lowered = jax.jit(lambda x: jnp.cumsum(x * 2.0, axis=0)).lower(x)

        class Lowered:
            as_text = lowered.as_text

            def compile(self):
                raise jax.errors.JaxRuntimeError(
                    'RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for '
                    'HLO temporaries (17.26G) exceeds available HBM (15.75G).\nmore detail')

        return Lowered()


def test_refused_compile_becomes_the_same_one_line_error(sft8):
    x = jax.ShapeDtypeStruct((1024, 256), jnp.float32)
    row = mp.compile_program('update', _Refused(), (x,))
    assert row.error.startswith('RESOURCE_EXHAUSTED') and '\n' not in row.error
    assert row.temp == int(17.26 * (1 << 30))
    assert row.largest[0][0] == 1024 * 256 * 4 and 'f32[1024,256]' in row.largest[0][1]
    report = mp.Report('sft', 'tiny', 'v5e:8x8', (1, 64, 1), sft8.config, [row])
    with pytest.raises(
            ValueError, match=r'update needs RESOURCE_EXHAUSTED.*HLO temporaries '
            r'\(17.26G\).*f32\[1024,256\].*microbatches'):
        mp.check_fits(report, None)  # refused: no budget needed to know it does not fit


def test_largest_buffers_of_a_compiled_program():
    x = jax.ShapeDtypeStruct((512, 128), jnp.float32)
    text = jax.jit(lambda x: jnp.cumsum(jnp.exp(x), axis=0) @ x.T).lower(x).compile().as_text()
    size, what = mp.largest_buffers(text)[0]
    assert size == 512 * 512 * 4 and what.startswith('f32[512,512]')


def test_targets_and_hbm():
    assert len(mp.target_devices('cpu:4')) == 4
    with pytest.raises(ValueError, match='xla_force_host_platform_device_count=4096'):
        mp.target_devices('cpu:4096')
    assert mp.hbm_bytes('v5e:8x8') == 16 << 30 and mp.hbm_bytes('v5p:4x4x4') == 95 << 30
    assert mp.hbm_bytes('v6e:16x16') == 32 << 30 and mp.hbm_bytes('cpu:8') is None


def test_plan_config_is_the_experiment_config():
    c = mp.plan_config('ppo', 'llama3_8b', batch=64, prompt_len=256, response_len=128, group=2,
                       mesh_shape=(2, 32, 1), layers=4, exp_args='reward=rm',
                       overrides=['optim.microbatches=4'])
    assert (c.algo, c.model.preset, c.model.num_layers, c.model.embed_dim) == \
        ('ppo', 'llama3_8b', 4, 4096)
    assert (c.rl.epochs, c.rl.minibatches, c.critic_from) == (2, 2, 'reward_model')  # ppo.py's
    assert (c.rl.samples_per_prompt, c.rl.max_new_tokens, c.data.max_prompt_len) == (2, 128, 256)
    assert tuple(c.mesh.shape) == (2, 32, 1) and c.optim.microbatches == 4
    with pytest.raises(ValueError, match='algo'):
        mp.plan_config('nope', batch=1, prompt_len=1, response_len=1)


def test_llama3_70b_shape():
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        import memory_plan as cli  # pylint: disable=g-import-not-at-top
    finally:
        sys.path.pop(0)
    assert abs(cli.llama3_70b().num_params() / 70.55e9 - 1) < 0.01


@pytest.mark.skipif(shutil.which('shellcheck') is None, reason='shellcheck not installed')
def test_setup_script_is_shellcheck_clean():
    done = subprocess.run(['shellcheck', 'benchmarks/setup_tpu_venv.sh'], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_main_plans_large_models_by_default():
    tiny = mp.plan_config('sft', 'tiny', batch=16, prompt_len=8, response_len=8)
    big = mp.plan_config('dpo', 'llama3_2_1b', batch=16, prompt_len=8, response_len=8)
    assert not mp.should_plan(tiny) and mp.should_plan(tiny, 'on')
    assert mp.should_plan(big) and not mp.should_plan(big, 'off')
    with pytest.raises(ValueError, match='memory_plan'):
        mp.should_plan(tiny, 'sometimes')


def test_check_run_refuses_what_does_not_fit():
    config = mp.plan_config('sft', 'tiny', batch=16, prompt_len=8, response_len=8,
                            mesh_shape=(1, 8, 1))
    assert [r.name for r in mp.check_run(config, 'cpu:8', hbm=1 << 30).rows] == ['update']
    with pytest.raises(mp.DoesNotFit, match='sft tiny does not fit cpu:8'):
        mp.check_run(config, 'cpu:8', hbm=1 << 10)
