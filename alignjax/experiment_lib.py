"""What experiment files share: argument parsing, the base config, and builders from config.

An experiment file is a leaf: `get_config(arg)` calls `parse_arg`, starts from `base_config`,
sets what is particular to it and returns the locked ConfigDict; `main.py` does the rest.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
import optax

from alignjax import sharding
from alignjax.models import config as model_config


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses 'tiny,model=small,beta=0.1' against `defaults`, coercing to the defaults' types.

    A bare word sets that key to True. Unknown keys raise, naming the key and the known ones.
    """
    out = dict(defaults)
    for item in filter(None, (arg or '').split(',')):
        key, _, value = item.partition('=')
        key = key.strip()
        if key not in defaults:
            raise ValueError(f'Unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}')
        default = defaults[key]
        if not _:
            out[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ('true', 'false', '1', '0'):
                raise ValueError(f'Config argument {key!r} expects a boolean, got {value!r}')
            out[key] = value.lower() in ('true', '1')
        elif default is None or isinstance(default, str):
            out[key] = value
        else:
            try:
                out[key] = type(default)(value)
            except ValueError as e:
                raise ValueError(f'Config argument {key!r} expects {type(default).__name__}, '
                                 f'got {value!r}') from e
    return ml_collections.ConfigDict(out)


def model_config_dict(preset: str, **overrides) -> ml_collections.ConfigDict:
    """Every ModelConfig field of a preset, so `--config.model.num_layers=4` works.

    `preset` is a name in `alignjax.models.config` or `hf:DIR`, the architecture of a Hugging Face
    checkpoint directory (its config.json), to pair with `init_from='hf:DIR'`.
    """
    if preset.startswith('hf:'):
        from alignjax.interop import hf  # pylint: disable=g-import-not-at-top
        cfg = hf.read_config(preset[3:]).replace(**overrides)
    else:
        cfg = model_config.get_model_config(preset, **overrides)
    fields = dataclasses.asdict(cfg)
    for key in ('rope_scaling', 'rope_local_scaling'):
        if fields[key] is not None:
            fields[key] = dict(fields[key])
    return ml_collections.ConfigDict({'preset': preset, **fields}, type_safe=False)


def base_config(*, algo: str, model: str = 'tiny', tiny: bool = True) -> ml_collections.ConfigDict:
    """Defaults every experiment shares; the experiment file sets the rest."""
    c = ml_collections.ConfigDict()
    c.algo = algo
    c.seed = 0
    c.model = model_config_dict(model)
    c.tokenizer = 'byte'  # 'byte' or 'hf:DIR' (tokenizer.json or tokenizer.model there)
    c.special_tokens = ml_collections.ConfigDict({'bos': '', 'eos': '', 'pad': ''})  # '': the
    # checkpoint's own (hf: tokenizers); otherwise the token's text
    c.init_from = ''  # '' or a workdir whose latest checkpoint's params start this run

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (1, -1, 1)  # (data, fsdp, tensor); one entry may be -1
    c.mesh.rules = ml_collections.FieldReference(None, field_type=list)

    c.data = ml_collections.ConfigDict()
    c.data.train = 'synthetic:transitive'
    c.data.num_examples = 0  # records to use: 0 = all of a file's, 4096 of a synthetic task
    c.data.batch_size = 32  # global
    c.data.max_prompt_len = 8
    c.data.max_response_len = 12
    # Prompts over max_prompt_len: 'left' truncates (keeps a prompt's end), 'skip' drops the
    # record, 'error' refuses the data (naming file:line); decided before training, counts logged.
    c.data.truncation = 'left'
    # Which records a chat template renders: 'auto' (all, when the tokenizer has one), 'messages'
    # (conversational records only), 'none', or a Jinja file (see alignjax.data.chat).
    c.data.chat_template = 'auto'
    # SFT on conversations: 'last' trains on the final reply, 'all' on every assistant turn.
    c.data.sft_turns = 'last'
    c.data.eval = ''  # held-out records; '' -> fresh synthetic ones, or a slice of data.train
    c.data.eval_fraction = 0.05
    c.data.num_eval_examples = 512  # synthetic held-out records

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.schedule = 'cosine'  # cosine | linear | constant
    c.optim.warmup_steps = 20
    c.optim.end_lr_factor = 0.1
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.grad_clip = 1.0  # global norm; 0 disables
    c.optim.microbatches = 1  # gradient accumulation (exact)

    c.total_steps = 300 if tiny else 10_000
    c.log_every = 25
    c.eval_every = 0  # 0: evaluate only at the end
    c.ckpt_every = 100
    c.keep_ckpts = 2
    # Write checkpoints in the background after the device-to-host copy, so that training goes
    # on while the files are written (the last one, and one on preemption, are waited for).
    c.async_checkpoint = True
    # A non-finite loss or gradient: 'stop' the run (naming the step and the metric) or 'skip'
    # the update (parameters and optimizer state unchanged; counted as nonfinite_skipped).
    c.nonfinite = 'stop'
    # Resuming a workdir with other hyperparameters is refused unless this is set (the change is
    # then logged and kept in WORKDIR/config_history.jsonl); see alignjax/workdir.py.
    c.allow_config_change = False
    # An experiment tracker beside TensorBoard: '' (none) or 'wandb' (alignjax.tracking).
    c.tracker = ''
    c.tracker_project = 'alignjax'

    c.eval = ml_collections.ConfigDict()
    c.eval.num_prompts = 128
    c.eval.max_new_tokens = 12
    c.eval.temperature = 1.0
    return c


def model_config_from(c: ml_collections.ConfigDict) -> model_config.ModelConfig:
    fields = {k: v for k, v in c.to_dict().items() if k != 'preset'}
    for key in ('rope_scaling', 'rope_local_scaling'):
        if isinstance(fields.get(key), dict) and not fields[key]:
            fields[key] = None
    known = {f.name for f in dataclasses.fields(model_config.ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f'Unknown config.model field(s) {unknown}')
    return model_config.ModelConfig(**fields)


def make_mesh(c: ml_collections.ConfigDict):
    return sharding.make_mesh(tuple(c.mesh.shape))


def mesh_rules(c: ml_collections.ConfigDict):
    return sharding.rules_from_config(c.mesh.rules)


def make_schedule(o: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up to `lr`, then cosine / linear decay to `lr * end_lr_factor`, or constant."""
    warmup = min(o.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = o.lr * o.end_lr_factor
    if o.schedule == 'cosine':
        decay = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.end_lr_factor)
    elif o.schedule == 'linear':
        decay = optax.linear_schedule(o.lr, end, decay_steps)
    elif o.schedule == 'constant':
        decay = optax.constant_schedule(o.lr)
    else:
        raise ValueError(f"config.optim.schedule must be cosine, linear or constant, "
                         f"got {o.schedule!r}")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup), decay], [warmup])


def make_optimizer(o: ml_collections.ConfigDict, total_steps: int):
    """AdamW with the schedule and optional global-norm clipping; returns (tx, schedule)."""
    schedule = make_schedule(o, total_steps)
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip else []
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
    return optax.chain(*parts), schedule


def write_config(c: ml_collections.ConfigDict, workdir: str) -> None:
    """DIR/config.json: the resolved config (written by the primary process only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'config.json')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(c.to_dict(), f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def make_tokenizer(c: ml_collections.ConfigDict):
    """The tokenizer named by config.tokenizer: 'byte' (the synthetic tasks) or 'hf:DIR'."""
    from alignjax.data.tokenizer import ByteTokenizer  # pylint: disable=g-import-not-at-top
    if c.tokenizer == 'byte':
        return ByteTokenizer()
    if not c.tokenizer.startswith('hf:'):
        raise ValueError(f"config.tokenizer={c.tokenizer!r}: expected 'byte' or 'hf:DIR'")
    from alignjax.interop import tokenizer as hf_tokenizer  # pylint: disable=g-import-not-at-top
    tok = hf_tokenizer.load_tokenizer(c.tokenizer[3:], **c.special_tokens.to_dict())
    if tok.vocab_size > c.model.vocab_size:
        raise ValueError(f'config.tokenizer={c.tokenizer!r} produces {tok.vocab_size} ids but '
                         f'config.model.vocab_size={c.model.vocab_size}')
    return tok


def build_policy(c: ml_collections.ConfigDict, mesh, *, seed_offset: int = 0):
    """The policy Decoder of config.model, created already sharded from config.seed."""
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from alignjax.models import Decoder  # pylint: disable=g-import-not-at-top
    cfg = model_config_from(c.model)
    return sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(c.seed + seed_offset)),
                                   mesh, mesh_rules(c))


def synthetic_task(c: ml_collections.ConfigDict):
    """The synthetic task behind config.data.train, or None for real data."""
    from alignjax.data import synthetic  # pylint: disable=g-import-not-at-top
    spec = c.data.train
    if not spec.startswith('synthetic:'):
        return None
    return synthetic.get_task(spec.split(':', 1)[1])


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment_path(spec: str) -> str:
    """An experiment spec 'FILE[:ARGS]' with FILE found as given or under the repository root."""
    path, _, arg = spec.partition(':')
    if not os.path.isfile(path) and os.path.isfile(os.path.join(REPO_ROOT, path)):
        path = os.path.join(REPO_ROOT, path)
    return f'{path}:{arg}' if arg else path


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads 'path/to/experiment.py[:ARGS]' the way --config does."""
    import importlib.util  # pylint: disable=g-import-not-at-top
    path, _, arg = spec.partition(':')
    if not os.path.isfile(path):
        raise ValueError(f'--config: no experiment file {path!r}')
    module_spec = importlib.util.spec_from_file_location('_alignjax_experiment', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
        raise ValueError(f'{path}: an experiment file must define get_config(arg)')
    try:
        return module.get_config(arg or None)
    except ValueError as e:
        raise ValueError(f'{path}: {e}') from e


def _get(c: ml_collections.ConfigDict, dotted: str):
    for part in dotted.split('.'):
        c = c[part]
    return c


def check_override_type(key: str, value: str, default, arg: str) -> None:
    """Raises, naming the key and the expected type, when `value` cannot become `default`'s type
    (absl would otherwise answer with a traceback)."""
    if isinstance(default, bool):
        ok = value.lower() in ('true', 'false', '1', '0')
    elif isinstance(default, (int, float)):
        try:
            type(default)(value)
            ok = True
        except ValueError:
            ok = False
    else:
        return  # strings, tuples and None accept what absl parses
    if not ok:
        raise ValueError(f"config key '{key}' expects {type(default).__name__}, got {value!r} "
                         f'(from {arg})')


def apply_override(c: ml_collections.ConfigDict, item: str, where: str) -> None:
    """Sets one 'a.b=value' override in place, typed by the value it replaces (a tuple or None
    field parses `value` as a Python literal); a bad key or value raises naming `where`."""
    import ast  # pylint: disable=g-import-not-at-top
    key, sep, text = item.partition('=')
    key = key.strip()
    if not sep or key not in dotted_keys(c):
        raise ValueError(f"{where}: {item!r} is not 'KEY=VALUE' with a known config key")
    *path, leaf = key.split('.')
    node = _get(c, '.'.join(path)) if path else c
    old = node[leaf]
    check_override_type(key, text, old, where)
    if isinstance(old, bool):
        node[leaf] = text.lower() in ('true', '1')
    elif isinstance(old, (int, float)):
        node[leaf] = type(old)(text)
    elif isinstance(old, str):
        node[leaf] = text
    else:
        node[leaf] = ast.literal_eval(text)


def dotted_keys(c: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
    """Every leaf key of a ConfigDict, as 'a.b.c'."""
    out = []
    for k, v in c.items():
        key = f'{prefix}{k}'
        out.append(key)
        if isinstance(v, ml_collections.ConfigDict):
            out.extend(dotted_keys(v, key + '.'))
    return out


def check_config_args(argv: list[str]) -> None:
    """Fails early, naming the key, on a bad --config file, ARGS or --config.KEY override."""
    import difflib  # pylint: disable=g-import-not-at-top
    spec, overrides = None, []
    for i, a in enumerate(argv):
        if a.startswith('--config='):
            spec = a.split('=', 1)[1]
        elif a == '--config' and i + 1 < len(argv):
            spec = argv[i + 1]
        elif a.startswith('--config.'):
            overrides.append((a[len('--config.'):].split('=', 1)[0], a))
    if spec is None:
        return
    config = load_config(spec)
    keys = set(dotted_keys(config))
    for key, arg in overrides:
        if key not in keys:
            close = difflib.get_close_matches(key, sorted(keys), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ''
            raise ValueError(f"Unknown config key '{key}' (from {arg}){hint}")
        if '=' in arg:
            check_override_type(key, arg.split('=', 1)[1], _get(config, key), arg)


def load_records(c: ml_collections.ConfigDict, kind: str, spec: str, *, with_counts=False,
                 **load_kw):
    """Records of data spec `spec` with config.data.truncation's policy for long prompts applied
    (see `data.lengths`), so that validation and training see the same records. Synthetic
    records are generated once for both (they are a pure function of the arguments)."""
    from absl import logging  # pylint: disable=g-import-not-at-top
    from alignjax.data import lengths  # pylint: disable=g-import-not-at-top
    from alignjax.data import pipeline  # pylint: disable=g-import-not-at-top
    key = (spec, kind, c.tokenizer, c.data.max_prompt_len, c.data.max_response_len,
           c.data.truncation, c.data.chat_template, tuple(sorted(load_kw.items())))
    if spec.startswith('synthetic:') and key in _SYNTHETIC:
        records, counts = _SYNTHETIC[key]
        return (records, counts) if with_counts else records
    records = pipeline.load_records(spec, kind, **load_kw)
    locate = getattr(records, 'where', None)  # a file's records know their lines or rows
    records, counts = lengths.apply_prompt_policy(
        records, kind, make_tokenizer(c), max_prompt_len=c.data.max_prompt_len,
        policy=c.data.truncation, source=spec, locate=locate,
        max_response_len=0 if kind == 'prompt' else c.data.max_response_len,
        chat_template=c.data.chat_template)
    if counts['too_long']:
        logging.warning('%s: %d of %d prompts longer than config.data.max_prompt_len=%d: '
                        '%d truncated, %d skipped (config.data.truncation=%r)', spec,
                        counts['too_long'], counts['records'], c.data.max_prompt_len,
                        counts['truncated'], counts['skipped'], c.data.truncation)
    if counts['long_replies']:
        logging.warning('%s: %d of %d records have a reply longer than '
                        'config.data.max_response_len=%d tokens (EOS included): cut on the right, '
                        'without EOS', spec, counts['long_replies'], counts['records'],
                        c.data.max_response_len)
    if spec.startswith('synthetic:'):
        if len(_SYNTHETIC) >= 8:
            _SYNTHETIC.clear()
        _SYNTHETIC[key] = (records, counts)
    return (records, counts) if with_counts else records


_SYNTHETIC = {}  # the last few synthetic datasets of `load_records`


def train_eval_records(c: ml_collections.ConfigDict, kind: str):
    """(train, held-out) records of `kind` for config.data.train / config.data.eval.

    Held-out records come from config.data.eval when set; synthetic tasks draw fresh ones from
    another seed; other sources keep back the last config.data.eval_fraction of the records.
    """
    d = c.data
    train = load_records(c, kind, d.train, num_examples=d.num_examples, seed=c.seed)
    if d.eval:
        return train, load_records(c, kind, d.eval, split='eval', seed=c.seed)
    if d.train.startswith('synthetic:'):
        held_out = load_records(c, kind, d.train, num_examples=d.num_eval_examples,
                                seed=c.seed + 1_000_003)
        return train, held_out
    n_eval = max(1, int(len(train) * d.eval_fraction))
    if len(train) <= n_eval:
        raise ValueError(f'config.data.train={d.train!r} has {len(train)} records: too few to '
                         f'hold out config.data.eval_fraction={d.eval_fraction}')
    return [train[i] for i in range(len(train) - n_eval)], \
        [train[i] for i in range(len(train) - n_eval, len(train))]


def prompt_truncation(d: ml_collections.ConfigDict) -> str:
    """What tokenisation does with a long prompt: the records were already filtered by
    `load_records`, so 'skip' leaves none and 'left' / 'error' apply as they are."""
    return 'error' if d.truncation == 'error' else 'left'


def make_stream(c: ml_collections.ConfigDict, kind: str, records, tok, *, with_index=False):
    """Random-access batch stream (`stream[step]`) of this process's rows, tokenised."""
    from alignjax.data import pipeline  # pylint: disable=g-import-not-at-top
    d = c.data
    tokenize = pipeline.make_tokenize_fn(kind, tok, max_prompt_len=d.max_prompt_len,
                                         max_response_len=d.max_response_len,
                                         prompt_truncation=prompt_truncation(d),
                                         chat_template=d.chat_template)
    if with_index:
        base = tokenize
        tokenize = lambda record, i: {**base(record, i), 'index': np.int32(i)}
    return pipeline.batch_stream(records, tokenize_fn=tokenize, global_batch_size=d.batch_size,
                                 seed=c.seed, process_index=jax.process_index(),
                                 process_count=jax.process_count())


def fixed_batches(c: ml_collections.ConfigDict, kind: str, records, tok, *, batch_size: int):
    """Every record once, in order, as batches of `batch_size` rows (the last one padded by
    repeating its final record); yields (batch, number of real rows). For evaluation passes."""
    from alignjax.data import pipeline  # pylint: disable=g-import-not-at-top
    d = c.data
    tokenize = pipeline.make_tokenize_fn(kind, tok, max_prompt_len=d.max_prompt_len,
                                         max_response_len=d.max_response_len,
                                         prompt_truncation=prompt_truncation(d),
                                         chat_template=d.chat_template)
    for start in range(0, len(records), batch_size):
        idx = list(range(start, min(start + batch_size, len(records))))
        real = len(idx)
        idx += [idx[-1]] * (batch_size - real)
        rows = [{**tokenize(records[i], i), 'index': np.int32(i)} for i in idx]
        yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}, real


def online_config(algo: str, a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The shared config of the online policy-gradient experiments (ppo, remax, rloo, grpo).

    `a` holds the parsed experiment arguments: tiny, model, task, reward ('gold' or 'rm': a learned
    reward model trained on the task's preference pairs), ensemble, k (samples per prompt), kl
    (< 0: 0.05 with the gold reward, 0.2 with a learned one, whose over-optimisation needs the
    stronger leash: at 0.05 the tiny runs drive the proxy up and the gold reward down), lr, steps
    (iterations; :tiny runs 100 of 64 rollouts). `data.batch_size` counts prompts per iteration;
    a rollout has batch_size * k rows.
    """
    c = base_config(algo=algo, model=a.model, tiny=a.tiny)
    c.data.train = f'synthetic:{a.task}'
    c.init_from = f'experiment:experiments/sft.py:tiny,task={a.task}' if a.tiny else ''
    c.reference_from = ''  # '' -> the same as init_from
    rm_args = f'tiny,task={a.task}' + (f',ensemble={a.ensemble}' if a.ensemble > 1 else '')
    c.reward = ml_collections.ConfigDict(dict(
        source='gold' if a.reward == 'gold' else 'reward_model',
        reward_from=(f'experiment:experiments/reward_model.py:{rm_args}'
                     if a.reward == 'rm' and a.tiny else ''),
        aggregate='mean', lam=1.0))
    if a.reward not in ('gold', 'rm'):
        raise ValueError(f"reward must be 'gold' or 'rm', got {a.reward!r}")
    c.critic_from = ''  # ppo: 'reward_model' | 'policy' | '' (scratch)
    c.rl = ml_collections.ConfigDict(dict(
        samples_per_prompt=a.k, max_new_tokens=c.data.max_response_len, temperature=1.0,
        top_k=0, top_p=1.0,
        epochs=1, minibatches=1,  # optimizer updates per rollout: epochs * minibatches
        clip=0.2, clip_high=0.0, dual_clip=0.0,  # 0: symmetric clip / no dual clip
        vf_coef=0.5, value_clip=0.2, gamma=1.0, lam=0.95,
        kl_coef=a.kl if a.kl >= 0 else (0.2 if a.reward == 'rm' else 0.05),
        kl_estimator='k1', kl_in='reward', adaptive_kl=False, kl_target=1.0,
        kl_horizon=10_000, whiten_advantages=False, aggregation='token_mean',
        missing_eos_penalty=0.0, grpo_normalize=True,
        # The sampler's sharding: 'train' (the update's), 'replicated' (whole copies over 'data'),
        # 'tensor' (tensor-parallel) or a mesh shape 'D,F,T'; see alignjax/resharding.py.
        generation_sharding='train'))
    c.optim.lr = a.lr
    c.optim.warmup_steps = 5
    c.optim.schedule = 'constant'
    c.eval.max_new_tokens = c.data.max_response_len
    if a.tiny:  # 100 iterations of 64 rollouts: batch_size prompts x k samples
        c.data.batch_size = max(64 // a.k, 1)
        c.total_steps = 100
        c.log_every = 10
        c.ckpt_every = 50
        c.eval.num_prompts = 128
    else:
        c.data.batch_size = 64
        c.total_steps = 2000
        c.ckpt_every = 100
        c.eval_every = 200
    if a.steps:
        c.total_steps = a.steps
    return c


def nash_config(algo: str, a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The shared config of the Nash-learning experiments (nash_md, nash_mp, spo, inpo, dno,
    sppo, online_ipo): the online config plus `config.nash`.

    Arguments (`experiments/<method>.py:ARGS`): tiny, model, task (default intransitive),
    preference ('model': the tiny pairwise preference model trained on the task's pairs, the
    judge; 'gold': the task's own preference), tau (KL to the reference inside the objective;
    SPPO and DNO have none), eta (step size), k (samples per prompt), lr, steps.

    :tiny trains or reuses (cached) the SFT policy, start and reference, and the preference
    model. summary.json on the intransitive task: exploitability (the gold preference of the
    best response class over the policy's samples, minus 1/2) and worst_case_win_rate, with
    their `_ref` values for the reference, class fractions, gold_reward and kl_to_ref.
    Full scale: --config.data.train=jsonl:PATH of prompts, --config.init_from=<SFT workdir>,
    --config.nash.preference_from=<preference-model workdir>.
    """
    a = ml_collections.ConfigDict(dict(a.to_dict(), reward='gold', ensemble=1, kl=0.0))
    c = online_config(algo, a)
    del c.reward, c.critic_from
    c.rl.aggregation = 'sequence_sum'  # sequence-level objectives: REINFORCE on log pi(y)
    c.rl.kl_coef = 0.0  # the KL to the reference is tau, inside each method's objective
    if a.preference not in ('model', 'gold'):
        raise ValueError(f"preference must be 'model' or 'gold', got {a.preference!r}")
    c.nash = ml_collections.ConfigDict(dict(
        preference=a.preference,
        preference_from=(f'experiment:experiments/preference_model.py:tiny,task={a.task}'
                         if a.preference == 'model' and a.tiny else ''),
        tau=a.tau, eta=a.eta, mixture=0.125, phase_steps=5, sppo_exact_partition=False))
    if algo in ('inpo', 'dno', 'sppo'):
        # Iterative methods regress towards a target defined by the anchor pi_t (the sampling
        # policy): several updates per rollout. With a single update from pi = pi_t, INPO's
        # gradient is (eta tau)^2 times online IPO's, which Adam cannot tell apart.
        c.rl.epochs, c.rl.minibatches = 2, 2
    return c
