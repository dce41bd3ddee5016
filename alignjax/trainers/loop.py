"""The one generic train loop: every algorithm is a batch source plus a pure loss.

An algorithm module returns an `Algorithm`; `train` owns the rest: the mesh, the optimizer, the
jitted update with exact gradient accumulation, checkpoints and resumption, preemption, metrics,
evaluation and the final summary.

Non-finite guard (config.nonfinite): a NaN or infinite loss or gradient norm either stops the
run, naming the step and the metric, or ('skip') leaves parameters and optimizer state as they
were and counts the step in `nonfinite_skipped`. Either way no checkpoint holds a non-finite
update, so the last good one is never overwritten.

Determinism: the batch of step s is `algorithm.batches(s, ...)` (the data position is the step)
and the update's RNG is `fold_in(key, s)`, so a run resumed from a checkpoint at step s continues
bit for bit the curve of a run never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax._src import distributed  # the key-value store's client (no public name yet)
import numpy as np
import optax
from absl import logging
from flax import nnx

from alignjax import checkpoint as ckpt_lib
from alignjax import evaluators as evaluators_lib
from alignjax import metrics as metrics_lib
from alignjax import monitors as monitors_lib
from alignjax import sharding
from alignjax import tracking
from alignjax import validation
from alignjax import workdir as workdir_lib
from alignjax.models import lora
from alignjax.trainers import common
from alignjax.trainers import precision

# The key of an adapted model's frozen base among the update's frozen states (`Algorithm.trainable`).
BASE = 'frozen_base'

# loss_fn(model, frozen, batch, rng) -> (loss_sum, weight, {name: (sum, weight)}).
# The loss minimised is sum(loss_sum) / sum(weight) over all microbatches: exact accumulation.
LossFn = Callable[[nnx.Module, dict, dict, jax.Array], tuple[jax.Array, jax.Array, dict]]


@dataclasses.dataclass
class Algorithm:
    """What an algorithm supplies to the loop.

    Attributes:
      model: the trainable model, already sharded.
      loss_fn: pure loss over a batch (see LossFn).
      batches: `(step, model, algo_state) -> (batch, host figures)`: the update's batch as a dict
        of process-local NumPy arrays, and a dict of figures measured on the host while making it
        (rollout reward, lengths, throughput), logged with the update's metrics. Offline sources
        ignore the model (`from_stream`), online ones sample from it. Deterministic in the step.
      frozen: models the loss reads but does not train (reference, reward); passed to the jitted
        update as arguments, never baked in as constants.
      evaluators: `evaluators.Evaluator`s, each run at its own period and at the end (the
        figures of those due at a step written as one `eval/` row; summary.json gets each one's
        final figures).
      algo_state: controllers carried across steps and checkpoints (an adaptive KL coefficient).
      update_algo_state: `(algo_state, metrics) -> algo_state`, on host after each step.
      epochs, minibatches: optimizer updates per batch (PPO's several epochs of minibatches over
        one rollout): each epoch shuffles the batch's rows with the step's RNG and takes one
        optimizer step per minibatch, all inside the one jitted update. The loop's step counts
        batches (rollouts); the learning-rate schedule counts optimizer updates.

      trainable: a filter of the model's state (`models/lora.TRAINABLE` for an adapted model):
        only what it selects trains and has optimizer state; the rest, the frozen base, is an
        argument of the update (under `frozen_states[BASE]`), never donated or checkpointed.
        None: the whole model trains.
      save_every: checkpoints only at multiples of this step (besides the last): algorithms whose
        batch source holds state between steps (Nash mirror prox's anchor policy) save only where
        that state is the current parameters; a preemption waits for the next such step.
    """

    model: nnx.Module
    loss_fn: LossFn
    batches: Callable[[int, nnx.Module, dict], tuple[dict, dict]]
    frozen: dict[str, nnx.Module] = dataclasses.field(default_factory=dict)
    evaluators: list[evaluators_lib.Evaluator] = dataclasses.field(default_factory=list)
    algo_state: dict[str, Any] = dataclasses.field(default_factory=dict)
    update_algo_state: Callable[[dict, dict], dict] | None = None
    epochs: int = 1
    minibatches: int = 1
    save_every: int = 1
    trainable: Any = None

    @property
    def updates_per_batch(self) -> int:
        return self.epochs * self.minibatches


def from_stream(stream) -> Callable[[int, nnx.Module, dict], tuple[dict, dict]]:
    """`Algorithm.batches` of an offline source: batch `step` of a random-access stream, no
    host figures."""
    return lambda step, model, algo_state: (stream[step], {})


def _split_micro(batch, n: int, what: str = 'config.optim.microbatches'):
    def one(x):
        if x.shape[0] % n:
            raise ValueError(f'batch of {x.shape[0]} rows does not split into {what}={n}')
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(one, batch)


def make_update(graphdef, frozen_graphdefs, loss_fn: LossFn, tx, schedule, microbatches: int,
                state_shardings, mesh, *, epochs: int = 1, minibatches: int = 1,
                skip_nonfinite: bool = False, frozen_shardings=None, base_views=None):
    """The jitted update: (state, frozen_states, batch) -> (state, metrics, finite).

    With `skip_nonfinite` a step whose loss or gradient norm is not finite keeps the old
    parameters and optimizer state (selected on device: no host round trip) and increments
    `state['nonfinite_skipped']`; the step counter still advances past the bad batch.

    With epochs * minibatches > 1 the batch is reused: each epoch permutes its rows and takes one
    optimizer step per minibatch; the metrics are the mean over those steps. The state is donated
    and comes back on exactly the shardings it went in with, so every step after the first reuses
    one compiled program. The state (and, given `frozen_shardings`, the frozen models) are
    declared as the program's input shardings; the batch's come from `sharding.shard_batch`.
    Metrics: the loss and the algorithm's own, `grad_norm` (after accumulation, before clipping),
    `update_norm` (the optimizer's step) and `param_norm` (after it).
    """
    views = base_views or {}

    def frozen_state(frozen_states, name):
        if name not in views:
            return frozen_states[name]
        node = frozen_states[BASE]
        for key in views[name]:
            node = node[key]
        return node

    def grads_of(params, frozen_states, batch, rng):
        frozen = {
            k: nnx.merge(g, frozen_state(frozen_states, k)) for k, g in frozen_graphdefs.items()
        }
        base = frozen_states.get(BASE)

        def f(p):
            model = nnx.merge(graphdef, p) if base is None else nnx.merge(graphdef, p, base)
            model = lora.with_dropout(model, rng)  # adapter dropout in the update only
            loss_sum, weight, metrics = loss_fn(model, frozen, batch, rng)
            return loss_sum, (weight, metrics)

        (loss_sum, (weight, metrics)), grads = jax.value_and_grad(f, has_aux=True)(params)
        # Accumulated and normalised in float32 whatever the parameters' storage dtype.
        grads = jax.tree.map(precision.to_float32, grads)
        return grads, loss_sum, weight, metrics

    def optimizer_step(params, opt_state, frozen_states, batch, rng):
        """One optimizer update on `batch`, accumulated exactly over `microbatches`."""
        if microbatches == 1:
            grads, loss_sum, weight, metrics = grads_of(params, frozen_states, batch, rng)
        else:
            micro = _split_micro(batch, microbatches)
            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(grads_of, params, frozen_states, first, rng)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

            def body(acc, xs):
                i, mb = xs
                out = grads_of(params, frozen_states, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, acc, out), None

            (grads, loss_sum, weight, metrics), _ = jax.lax.scan(body, zeros,
                                                                 (jnp.arange(microbatches), micro))
        weight = jnp.maximum(weight, 1e-12)
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        out = {k: s / jnp.maximum(w, 1e-12) for k, (s, w) in metrics.items()}
        out['loss'] = loss_sum / weight
        out['grad_norm'] = optax.global_norm(grads)
        out['update_norm'] = optax.global_norm(updates)
        return params, opt_state, out

    def update(state, frozen_states, batch):
        params, opt_state, step = state['params'], state['opt_state'], state['step']
        rng = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), step)
        if epochs * minibatches == 1:
            params, opt_state, out = optimizer_step(params, opt_state, frozen_states, batch, rng)
        else:
            rows = jax.tree.leaves(batch)[0].shape[0]

            def epoch(carry, e):
                perm_key, erng = jax.random.split(jax.random.fold_in(rng, e))
                perm = jax.random.permutation(perm_key, rows)
                mbs = _split_micro(jax.tree.map(lambda x: x[perm], batch), minibatches,
                                   what='config.rl.minibatches')

                def one(carry, xs):
                    i, mb = xs
                    p, o, m = optimizer_step(*carry, frozen_states, mb, jax.random.fold_in(erng, i))
                    return (p, o), m

                return jax.lax.scan(one, carry, (jnp.arange(minibatches), mbs))

            (params, opt_state), per_step = jax.lax.scan(epoch, (params, opt_state),
                                                         jnp.arange(epochs))
            out = jax.tree.map(jnp.mean, per_step)
        out['param_norm'] = optax.global_norm(params)
        out['lr'] = schedule(step * (epochs * minibatches))
        finite = jnp.isfinite(out['loss']) & jnp.isfinite(out['grad_norm'])
        new_state = dict(state, params=params, opt_state=opt_state, step=step + 1)
        if skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)
            new_state['params'] = jax.tree.map(keep, params, state['params'])
            new_state['opt_state'] = jax.tree.map(keep, opt_state, state['opt_state'])
            skipped = state['nonfinite_skipped']
            new_state['nonfinite_skipped'] = skipped + jnp.where(finite, 0, 1).astype(skipped.dtype)
            out['nonfinite_skipped'] = new_state['nonfinite_skipped']
        return new_state, out, finite

    rep = sharding.replicated(mesh)
    return jax.jit(update, donate_argnums=(0,),
                   in_shardings=(state_shardings, frozen_shardings, None),
                   out_shardings=(state_shardings, rep, rep))


def state_shardings(params, tx, algo_state, mesh):
    """Shardings of the train state: optimizer leaves mirror their parameter, the rest replicated."""
    rep = sharding.replicated(mesh)
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    opt_abstract = jax.eval_shape(tx.init, params)
    opt_sh = optax.tree_map_params(tx, lambda _, sh: sh, opt_abstract, param_sh,
                                   transform_non_params=lambda _: rep)
    return {
        'params': param_sh, 'opt_state': opt_sh, 'step': rep, 'rng': rep,
        'algo': jax.tree.map(lambda _: rep, algo_state)
    }


def _count_tokens(batch) -> int:
    """Real tokens in a host (NumPy) batch: the sum of its masks, this process's rows."""
    return int(sum(np.sum(v) for k, v in batch.items() if k.endswith('mask')))


@jax.jit
def base_digest(base) -> jax.Array:
    """Per-leaf float32 sums of a frozen base: which base a checkpoint's adapters were trained on
    (stored in the train state of an adapted run, compared on resume)."""
    return jnp.stack([jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(base)])


def _check_base(config, ckpt_dir: str, restored: dict, fresh: dict) -> None:
    """Refuses to resume adapters onto a base other than the one they were trained on."""
    if 'base_digest' not in fresh:
        return
    saved, now = np.asarray(restored['base_digest']), np.asarray(fresh['base_digest'])
    # Sums over a resharded base may round differently; another base differs far beyond that.
    if saved.shape != now.shape or not np.allclose(saved, now, rtol=1e-5, atol=1e-5):
        raise ckpt_lib.CheckpointError(
            f'{ckpt_dir}: its adapters were trained on another base than config.init_from='
            f'{config.get("init_from", "")!r} (or backbone_from) gives now; start a new workdir '
            f'or restore the original starting point')


@dataclasses.dataclass
class Setup:
    """What `train` runs: the initial train state and the jitted update (benchmarks reuse it)."""

    graphdef: Any
    state: dict
    shardings: dict
    frozen_states: dict
    update: Callable

    def model(self, params) -> nnx.Module:
        """The model of trainable `params` (with the frozen base of an adapted model)."""
        base = self.frozen_states.get(BASE)
        return nnx.merge(self.graphdef, params) if base is None else nnx.merge(
            self.graphdef, params, base)


def setup(config, algo: Algorithm, mesh) -> Setup:
    """The sharded initial train state of `algo` and its jitted update, under `mesh`."""
    frozen_graphdefs, frozen_states = {}, {}
    if algo.trainable is None:
        graphdef, params = nnx.split(algo.model)
    else:
        graphdef, params, base = nnx.split(algo.model, algo.trainable, ...)
        frozen_states[BASE] = nnx.to_pure_dict(base)
    params = nnx.to_pure_dict(params)
    views = {}
    for name, m in algo.frozen.items():
        frozen_graphdefs[name], s = nnx.split(m)
        s = nnx.to_pure_dict(s)
        where = _where_in(frozen_states.get(BASE), s)
        if where is None:
            frozen_states[name] = s
        else:  # the adapted model's base itself (its reference, adapters off): passed once
            views[name] = where
    tx, schedule = common.make_optimizer(config.optim, config.total_steps * algo.updates_per_batch)
    if precision.needs_master(params):
        logging.info('Low-precision trainable parameters: the optimizer updates a float32 '
                     'master copy (4 bytes a parameter)')
        tx = precision.float32_master(tx)
    algo_state = {k: jnp.asarray(v) for k, v in algo.algo_state.items()}
    shardings = state_shardings(params, tx, algo_state, mesh)
    shardings['nonfinite_skipped'] = sharding.replicated(mesh)  # checkpointed with the state
    state = {
        'params': params,
        'opt_state': jax.jit(tx.init, out_shardings=shardings['opt_state'])(params),
        'step': jnp.int32(0),
        'rng': jax.random.key_data(jax.random.key(config.seed)),
        'nonfinite_skipped': jnp.int32(0),
        'algo': algo_state,
    }
    if BASE in frozen_states:  # which base the checkpointed adapters belong to
        shardings['base_digest'] = sharding.replicated(mesh)
        state['base_digest'] = base_digest(frozen_states[BASE])
    state = jax.device_put(state, shardings)
    update = make_update(graphdef, frozen_graphdefs, algo.loss_fn, tx, schedule,
                         config.optim.microbatches, shardings, mesh, epochs=algo.epochs,
                         minibatches=algo.minibatches,
                         skip_nonfinite=config.get('nonfinite', 'stop') == 'skip',
                         frozen_shardings=jax.tree.map(lambda x: x.sharding,
                                                       frozen_states), base_views=views)
    return Setup(graphdef, state, shardings, frozen_states, update)


def _where_in(base, state) -> tuple | None:
    """The key path at which `base` holds `state`'s very arrays (a frozen model that is a view of
    an adapted model's base: () for the policy's, ('policy',) inside PPO's actor-critic), else
    None."""
    if base is None:
        return None
    same = lambda a, b: (jax.tree.structure(a) == jax.tree.structure(b) and all(
        x is y for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))
    if same(base, state):
        return ()
    for key, sub in base.items():
        if isinstance(sub, dict) and same(sub, state):
            return (key,)
    return None


def train(config, workdir: str, build: Callable[..., Algorithm]) -> dict:
    """Runs (or resumes) an experiment in `workdir`; returns the final summary.

    The run holds `workdir` for its whole length (`workdir.WorkdirLock`: a second run there is
    refused). Every error a user can cause (bad input found by `validation` before any compute,
    a builder's refusal, a config that drifted from the run it resumes, checkpoints that do not
    restore or cannot be written, a non-finite step) reaches the caller as one line, also written
    to `workdir/error.log`.
    """
    metrics_lib.show_progress()
    with hold_workdir(workdir), _reported(workdir):
        return _train(config, workdir, build)


def hold_workdir(workdir: str) -> workdir_lib.WorkdirLock:
    """The workdir lock for this process: process 0 holds it; on several processes the others
    read its verdict from the distributed runtime's key-value store (the one orbax uses)."""
    client = distributed.global_state.client if jax.process_count() > 1 else None
    return workdir_lib.WorkdirLock(workdir, process_index=jax.process_index(), kv_client=client)


@contextlib.contextmanager
def _reported(workdir: str):
    """One line for what a user can cause, in `workdir/error.log` too; tracebacks for the rest."""
    try:
        yield
    except FloatingPointError as e:
        validation.write_error_log(workdir, str(e))
        raise
    except (validation.ValidationError, ckpt_lib.CheckpointError, validation.DataError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        validation.write_error_log(workdir, message)
        raise validation.ValidationError(message) from None


@contextlib.contextmanager
def _refusals(config):
    """What validation and the builders raise on bad input (data, tokenizers, starting points)
    as one line naming the algorithm; the cause stays chained for a debugger."""
    try:
        yield
    except (ValueError, OSError) as e:
        if isinstance(e, (validation.ValidationError, ckpt_lib.CheckpointError)):
            raise
        raise validation.ValidationError(f'{config.algo}: {ckpt_lib.first_line(e)}') from e


def _train(config, workdir: str, build: Callable[..., Algorithm]) -> dict:
    with _refusals(config):
        validation.validate_run(config, workdir)
    mesh = common.make_mesh(config)
    primary = jax.process_index() == 0
    policy = config.get('nonfinite', 'stop')
    ckpt_dir = os.path.join(workdir, 'checkpoints')
    found = ckpt_lib.finished_steps(ckpt_dir)
    if found:  # before anything is built or written: a drifted config changes nothing
        workdir_lib.check_resume(config, workdir, found[-1], primary=primary)
    with jax.set_mesh(mesh), sharding.use_rules(config.mesh.get('rules')):
        with _refusals(config):
            algo = build(config, mesh)
        if config.ckpt_every % algo.save_every:
            raise validation.ValidationError(
                f'config.ckpt_every={config.ckpt_every} must be a multiple of '
                f'{algo.save_every} (this algorithm can only save at those steps)')
        common.write_config(config, workdir)
        run = setup(config, algo, mesh)
        state, shardings = run.state, run.shardings
        frozen_states, update = run.frozen_states, run.update
        ckpt = ckpt_lib.Checkpointer(ckpt_dir, save_every=config.ckpt_every, keep=config.keep_ckpts,
                                     async_save=config.get('async_checkpoint', False))
        tracker = tracking.make_tracker(config.tracker, workdir, config.to_dict(),
                                        project=config.tracker_project) if primary else None
        writer = metrics_lib.MetricsWriter(workdir, total_steps=config.total_steps,
                                           is_primary=primary, tracker=tracker)
        if found:
            logging.info('Restoring the latest of the checkpoints %s in %s', found, ckpt_dir)
        fresh = state
        restored = ckpt.restore_latest(ckpt_lib.abstract_like(state))
        start = None
        if restored is not None:
            start, state, _ = restored
            _check_base(config, ckpt_dir, state, fresh)
            logging.info('Resumed from %s at step %d', workdir, start)
        # Rows past the restored step (or any, killed before the first checkpoint) are redone.
        writer.truncate_after(start or 0)
        start = int(state['step'])
        monitors = monitors_lib.Monitors.for_run(config, workdir, log=logging.warning)
        model = run.model(state['params'])
        pending = None  # (step, metrics, finite) of the previous step, checked one step late
        stop_requested = False
        tokens = 0
        try:
            with ckpt_lib.PreemptionGuard() as guard:
                for step in range(start, config.total_steps):
                    algo_state = jax.device_get(state['algo'])
                    host_batch, host_metrics = algo.batches(step, model, algo_state)
                    tokens += _count_tokens(host_batch)  # on host: no device round trip per step
                    batch = sharding.shard_batch(host_batch, mesh)
                    state, metrics, finite = update(state, frozen_states, batch)
                    model = run.model(state['params'])
                    _check_finite(pending, policy)
                    pending = (step, metrics, finite)
                    # A skipped step's metrics must not move the controllers (an adaptive KL).
                    if algo.update_algo_state is not None and (policy == 'stop'
                                                               or bool(jax.device_get(finite))):
                        state['algo'] = jax.device_put(
                            algo.update_algo_state(algo_state,
                                                   {**jax.device_get(metrics), **host_metrics}),
                            shardings['algo'])
                    done = step + 1
                    if done % config.log_every == 0 or done == config.total_steps:
                        _check_finite(pending, policy)
                        tokens = int(sharding.process_sum(tokens))  # every process's rows
                        fired = monitors.write(writer, done,
                                               {**jax.device_get(metrics), **host_metrics},
                                               tokens=tokens)
                        tokens = 0
                    else:
                        fired = []
                    evaluated = evaluators_lib.figures_due(algo.evaluators, model, done,
                                                           config.total_steps)
                    if evaluated:
                        fired += monitors.write(writer, done,
                                                {f'eval/{k}': v for k, v in evaluated.items()},
                                                timed=False)
                    if fired and monitors.action != 'warn':  # a checkpoint where it fired
                        _check_finite(pending, policy)
                        _save(ckpt, done, state, True, writer)
                        if monitors.action == 'stop':
                            logging.warning('Stopping at step %d: monitor %s fired', done, fired[0])
                            break
                    # A stop request waits for the next save point (the end of an outer step).
                    stop_requested = guard.should_stop(done) or stop_requested
                    boundary = done % algo.save_every == 0
                    stop = stop_requested and boundary
                    final = stop or done == config.total_steps
                    if final or done % config.ckpt_every == 0:
                        # Never write a checkpoint from a non-finite step: the last good one stays.
                        _check_finite(pending, policy)
                    if boundary or final:
                        _save(ckpt, done, state, final, writer)
                    if stop:
                        ckpt.wait()
                        logging.warning(
                            'Preempted: saved step %d to %s; re-run the command to '
                            'resume.', done, workdir)
                        writer.close()
                        ckpt.close()
                        return {}
        except BaseException:
            _finish_saves(ckpt)  # the checkpoints before the failure are committed, not lost
            raise
        _check_finite(pending, policy)
        ckpt.wait()
        ckpt.close()
        summary = {'step': int(state['step'])}
        summary.update(evaluators_lib.summary(algo.evaluators, model, int(state['step'])))
        summary.update(monitors.summary())
        writer.write_summary(summary)
        if jax.process_index() == 0:
            monitors.plot(workdir)
        writer.close()
        logging.info('Summary: %s', summary)
        return summary


def _finish_saves(ckpt) -> None:
    """Waits for background saves, as a run stops on an error (a failed save is logged)."""
    try:
        ckpt.wait()
    except Exception as e:  # pylint: disable=broad-except
        logging.error('A background checkpoint save failed: %s', ckpt_lib.first_line(e))


def _save(ckpt, step: int, state, force: bool, writer) -> None:
    """`ckpt.save`; a save that fails (a full disk, a quota, a vanished directory) stops the run
    in one line, with the metrics cut back to the last complete checkpoint, which stays intact."""
    try:
        ckpt.save(step, state, force=force)
        if force:
            ckpt.wait()
    except Exception as e:  # pylint: disable=broad-except
        _finish_saves(ckpt)  # an earlier background save may still be committing
        last = ckpt_lib.finished_steps(str(ckpt.directory))
        last = max((s for s in last if s < step), default=0)
        writer.drop_after(last)
        raise ckpt_lib.CheckpointError(
            f'saving checkpoint {step} in {ckpt.directory} failed: {ckpt_lib.first_line(e)}; '
            f'the last complete checkpoint is step {last} and the metrics end there: free space '
            f'(or fix the directory) and re-run the command to resume') from e


def _check_finite(pending, policy: str = 'stop') -> None:
    """Stops (policy 'stop') or warns ('skip': the update was already dropped on device) when
    the pending step was not finite, naming the step and the offending metrics. Called one step
    late, so the host never waits on the step it just launched."""
    if pending is None:
        return
    step, metrics, finite = pending
    if bool(jax.device_get(finite)):
        return
    m = jax.device_get(metrics)
    values = {k: float(m[k]) for k in ('loss', 'grad_norm')}
    bad = ', '.join(k for k, v in values.items() if not np.isfinite(v))
    shown = ', '.join(f'{k}={v}' for k, v in values.items())
    if policy == 'skip':
        logging.warning(
            'Skipped step %d: non-finite %s (%s); parameters unchanged, %d skipped '
            'so far (config.nonfinite=skip)', step, bad, shown, int(m['nonfinite_skipped']))
        return
    raise FloatingPointError(
        f'Non-finite values at step {step} in {bad}: {shown}. The last checkpoint is intact; '
        f"lower config.optim.lr, check the data, or set config.nonfinite='skip'.")
