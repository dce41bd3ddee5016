"""Pytest setup: eight simulated CPU devices, so that every sharding test runs on a laptop.

XLA reads the flag when jax first initialises its backends, which happens after pytest has loaded
this file and before any test runs, so every test file (run alone or together) sees 8 devices.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
if 'xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
    # XLA_FLAGS was already set for another reason: add the device count to it.
    os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=8'
# The suite is dominated by XLA compiles of tiny programs; LLVM's lowest optimisation level
# halves them. Every test runs under the same flags, so equalities between runs still hold.
if 'xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
    os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'

# Starting points trained on demand (`experiment:` specs) go to a cache fresh for each test
# session, shared by its xdist workers (they inherit the main process's environment), so that a
# stale cache from older code can never make a test pass.
if 'ALIGNJAX_TEST_CACHE_SET' not in os.environ:
    import tempfile
    os.environ['ALIGNJAX_CACHE'] = tempfile.mkdtemp(prefix='alignjax-test-cache-')
    os.environ['ALIGNJAX_TEST_CACHE_SET'] = '1'
    # XLA executables too: the suite compiles the same tiny programs in many tests and workers
    # (a tiny online run drops from ~22 s to ~9 s with a warm cache). Same flags, same programs,
    # same numbers; the directory goes with the session's cache.
    os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(os.environ['ALIGNJAX_CACHE'], 'xla')
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'


def pytest_unconfigure(config):
    """The main process removes the session's cache of starting points."""
    import shutil
    if not hasattr(config, 'workerinput') and os.environ.get('ALIGNJAX_TEST_CACHE_SET') == '1':
        shutil.rmtree(os.environ['ALIGNJAX_CACHE'], ignore_errors=True)


# The fast tier (`-m "not slow"`, the inner loop: under 6 minutes on two cores) is the unit tests
# and equivalences; these modules are learning runs, subprocess launches, notebooks and
# reproductions (each trains starting points or whole runs), and so are the tests named below.
SLOW_MODULES = {
    'test_benchmarks_smoke',
    'test_faults',
    'test_hf_tokenizer',
    'test_launch_scripts',
    'test_lora_learning',
    'test_lora_training',
    'test_memory_plan',
    'test_multihost',
    'test_nash_learning',
    'test_nash_trainers',
    'test_notebooks',
    'test_offline_invariances',
    'test_offline_learning',
    'test_online_groups',
    'test_online_learning',
    'test_peft',
    'test_quickstart',
    'test_repro',
    'test_robust_rewards',
    'test_sweep',
    'test_train',
    'test_workdir',
}
SLOW_TESTS = {  # the slowest single tests of otherwise fast modules (10-50 s each on two cores)
    'test_a_nan_reward_mid_run_stops_it_and_keeps_the_workdir',
    'test_blockwise_grouped_scoring_and_sampling_equal_dense',
    'test_blockwise_logits_and_gradients_equal_dense',
    'test_generation_sharding_gives_the_training_sharding_rollout',
    'test_geometric_mixture_samples_follow_the_analytic_mixture',
    'test_gradients_of_all_three_paths_agree',
    'test_microbatching_equals_full_batch',
    'test_non_finite_step_stops_before_its_checkpoint',
    'test_rows_are_grouped_and_match_sampler_and_teacher_forcing',
    'test_scanned_layers_equal_unrolled_layers',
    'test_two_processes_agree_on_stop_save_and_restore',
}


def pytest_collection_modifyitems(config, items):
    import pytest
    for item in items:
        module = item.module.__name__.rpartition('.')[2]
        if module in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
