"""What experiment files call: argument parsing, the base config, config sections, overrides.

An experiment file is a leaf: `get_config(arg)` calls `parse_arg`, starts from `base_config` (or
`online_base`), sets its algorithm's sections itself (`c.rl = rl(a, ..., epochs=2)`, `c.nash =
nash(a)`, `c.reward = reward(a)`, in big_vision's style: each builder returns one section) and
returns the config; `main.py` does the rest. What trainers build from a config lives below them:
`alignjax.data.inputs` (tokenizer, records, streams) and `alignjax.trainers.common` (model config,
mesh, optimizer, policy).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from alignjax import rewards
from alignjax import specs
from alignjax.interop import hf
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
            raise ValueError(
                f'Unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}')
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
    directory = specs.hf_dir(preset)
    if directory is not None:
        cfg = hf.read_config(directory).replace(**overrides)
    else:
        cfg = model_config.get_model_config(preset, **overrides)
    # The adapters are config.lora's (one section for every trainable model), not a shape.
    fields = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if not k.startswith('lora_') and k != 'base_quant'
    }
    for key in ('rope_scaling', 'rope_local_scaling'):
        if fields[key] is not None:
            fields[key] = dict(fields[key])
    return ml_collections.ConfigDict({'preset': preset, **fields}, type_safe=False)


@dataclasses.dataclass(frozen=True)
class Key:
    """A config key's default and what validation accepts of it: its type ('int', 'number',
    'str'; '' unchecked), a lower bound (`strict`: excluded), an excluded upper bound or a set
    of choices."""
    default: Any
    kind: str = ''
    low: float | None = None
    strict: bool = False
    choices: tuple = ()
    below: float | None = None


def _int(default, low=None, strict=False):
    return Key(default, 'int', low, strict)


def _num(default, low=None, strict=False):
    return Key(default, 'number', low, strict)


def _one_of(*choices):
    """A key whose value is one of `choices`, the first being its default."""
    return Key(choices[0], choices=choices)


POSITIVE, NON_NEGATIVE = dict(low=0, strict=True), dict(low=0)

# The defaults every experiment shares, each with its bound: the one table `base_config` builds
# from and `validation.check_fields` checks against. Insertion order is the config's order.
BASE: dict[str, Key] = {
    'seed': _int(0),
    'tokenizer': Key('byte'),  # 'byte' or 'hf:DIR' (tokenizer.json or tokenizer.model there)
    # '': the checkpoint's own (hf: tokenizers); otherwise the token's text
    'special_tokens.bos': Key(''),
    'special_tokens.eos': Key(''),
    'special_tokens.pad': Key(''),
    'init_from': Key(''),  # '' or a workdir whose latest checkpoint's params start this run
    # Low-rank adapters on every trainable model (alignjax/models/lora.py): rank 0 trains the
    # whole model; rank r > 0 freezes it and trains rank-r adapters on `targets` (and the heads
    # of reward, value and preference models), scaled by alpha / r.
    'lora.rank': _int(0, **NON_NEGATIVE),
    'lora.alpha': _num(16.0, **POSITIVE),
    'lora.targets': Key(model_config.DEFAULT_LORA_TARGETS),  # of model_config.LORA_TARGETS
    # Dropout on each adapter's input in the update only (PEFT's lora_dropout): one mask per
    # update microbatch, adapter and layer.
    'lora.dropout': Key(0.0, 'number', low=0, below=1),
    # The frozen base's projections stored int8 (alignjax/models/quant.py): QLoRA-style.
    'lora.quantize': _one_of('', 'int8'),
    'mesh.shape': Key((1, -1, 1)),  # (data, fsdp, tensor); one entry may be -1
    'data.train': Key('synthetic:transitive', 'str'),
    # records to use: 0 = all of a file's, 4096 of a synthetic task
    'data.num_examples': _int(0, **NON_NEGATIVE),
    'data.batch_size': _int(32, **POSITIVE),  # global
    'data.max_prompt_len': _int(8, **POSITIVE),
    'data.max_response_len': _int(12, **POSITIVE),
    # Prompts over max_prompt_len: 'left' truncates (keeps a prompt's end), 'skip' drops the
    # record, 'error' refuses the data (naming file:line); decided before training, counts logged.
    'data.truncation': _one_of('left', 'skip', 'error'),
    # Which records a chat template renders: 'auto' (all, when the tokenizer has one), 'messages'
    # (conversational records only), 'none', or a Jinja file (see alignjax.data.chat).
    'data.chat_template': Key('auto'),
    # SFT on conversations: 'last' trains on the final reply, 'all' on every assistant turn.
    'data.sft_turns': _one_of('last', 'all'),
    'data.eval': Key(''),  # held-out records; '' -> fresh synthetic ones, or a slice of data.train
    'data.eval_fraction': _num(0.05, **POSITIVE),
    'data.num_eval_examples': Key(512),  # synthetic held-out records
    'optim.lr': _num(1e-3, **POSITIVE),
    'optim.schedule': _one_of('cosine', 'linear', 'constant'),
    'optim.warmup_steps': _int(20, **NON_NEGATIVE),
    'optim.end_lr_factor': Key(0.1),
    'optim.weight_decay': _num(0.0, **NON_NEGATIVE),
    'optim.b1': Key(0.9),
    'optim.b2': Key(0.95),
    'optim.eps': _num(1e-8, **NON_NEGATIVE),
    'optim.grad_clip': _num(1.0, **NON_NEGATIVE),  # global norm; 0 disables
    'optim.microbatches': _int(1, **POSITIVE),  # gradient accumulation (exact)
    'total_steps': _int(300, **POSITIVE),  # 10_000 unless tiny
    'log_every': _int(25, **POSITIVE),
    'eval_every': _int(0, **NON_NEGATIVE),  # 0: evaluate only at the end
    'ckpt_every': _int(100, **POSITIVE),
    'keep_ckpts': _int(2, **POSITIVE),
    # Write checkpoints in the background after the device-to-host copy, so that training goes
    # on while the files are written (the last one, and one on preemption, are waited for).
    'async_checkpoint': Key(True),
    # A non-finite loss or gradient: 'stop' the run (naming the step and the metric) or 'skip'
    # the update (parameters and optimizer state unchanged; counted as nonfinite_skipped).
    'nonfinite': _one_of('stop', 'skip'),
    # Resuming a workdir with other hyperparameters is refused unless this is set (the change is
    # then logged and kept in WORKDIR/config_history.jsonl); see alignjax/workdir.py.
    'allow_config_change': Key(False),
    # An experiment tracker beside TensorBoard: '' (none) or 'wandb' (alignjax.tracking).
    'tracker': _one_of('', 'wandb'),
    'tracker_project': Key('alignjax'),
    'eval.num_prompts': _int(128, **POSITIVE),
    'eval.max_new_tokens': _int(12, **POSITIVE),
    'eval.temperature': _num(1.0, **NON_NEGATIVE),
    # The trainer's evaluators to run ('name' every eval_every steps, 'name:N' every N; empty:
    # the trainer's defaults): alignjax/evaluators/__init__.py lists them.
    'eval.evaluators': Key(()),
    # Over-optimisation monitors (alignjax/monitors.py): 'NAME>VALUE,NAME<VALUE' on logged
    # figures, what a firing does, and the top-k of the policy's top-k mass and entropy (0: off).
    'monitors.thresholds': Key(''),
    'monitors.action': _one_of('warn', 'checkpoint', 'stop'),
    'monitors.top_k': _int(0, **NON_NEGATIVE),
}

# `config.rl` (`rl`): sampling, the policy-gradient update and the KL leash.
RL: dict[str, Key] = {
    'samples_per_prompt': _int(4, **POSITIVE),
    'max_new_tokens': _int(12, **POSITIVE),
    'temperature': _num(1.0, **NON_NEGATIVE),
    'top_k': Key(0),
    'top_p': Key(1.0),
    'epochs': _int(1, **POSITIVE),  # optimizer updates per rollout: epochs * minibatches
    'minibatches': _int(1, **POSITIVE),
    'clip': Key(0.2),
    'clip_high': Key(0.0),
    'dual_clip': Key(0.0),  # 0: symmetric / none
    'vf_coef': Key(0.5),
    'value_clip': Key(0.2),
    'gamma': Key(1.0),
    'lam': Key(0.95),
    'kl_coef': _num(0.05, **NON_NEGATIVE),
    'kl_estimator': _one_of('k1', 'k2', 'k3'),
    'kl_in': _one_of('reward', 'loss'),
    'adaptive_kl': Key(False),
    'kl_target': Key(1.0),
    'kl_horizon': Key(10_000),
    'whiten_advantages': Key(False),
    'aggregation': _one_of('token_mean', 'sequence_mean', 'sequence_sum', 'constant_length'),
    'missing_eos_penalty': Key(0.0),
    'grpo_normalize': Key(True),
    # GSPO: 'sequence' gives every token its response's length-normalised ratio.
    'importance_level': _one_of('token', 'sequence'),
    # DAPO's soft overlong punishment: a ramp to -overlong_penalty over the last overlong_buffer
    # tokens before max_new_tokens (0: off).
    'overlong_buffer': _int(0, **NON_NEGATIVE),
    'overlong_penalty': _num(1.0, **NON_NEGATIVE),
    # DAPO's dynamic sampling: groups whose scores are all equal are replaced by groups of fresh
    # prompts, up to dynamic_sampling_rounds more rollouts a step (0: off).
    'dynamic_sampling_rounds': _int(0, **NON_NEGATIVE),
    # The group losses (losses/group.py): the KL strength of online DPO and CoPG, online DPO's
    # pairing rule, and P3O's clipping of each trajectory ('separate') or of the pair's ratio.
    'beta': _num(0.1, **POSITIVE),
    'pairing': _one_of('best_worst', 'best_random'),
    'p3o_joint': Key(False),
    # The sampler's sharding: 'train' (the update's), 'replicated' (whole copies over 'data'),
    # 'tensor' (tensor-parallel) or a mesh shape 'D,F,T'; see alignjax/resharding.py.
    'generation_sharding': Key('train'),
}

# `config.nash` (`nash`).
NASH: dict[str, Key] = {
    'preference': _one_of('model', 'gold'),
    'preference_from': Key(''),
    'tau': _num(0.0, **NON_NEGATIVE),
    'eta': _num(1.0, **POSITIVE),
    'mixture': Key(0.125),
    'phase_steps': Key(5),
    'sppo_exact_partition': Key(False),
}

# Bounds of keys whose defaults live elsewhere: the experiment files' `config.loss`, and
# `models.config.ModelConfig` (the presets).
ELSEWHERE: dict[str, Key] = {
    'loss.beta': _num(None, **POSITIVE),
    'loss.label_smoothing': _num(None, **NON_NEGATIVE),
    'loss.discopop_tau': _num(None, **POSITIVE),  # DiscoPOP's temperature (default 0.05)
    # Injected label noise (synthetic preference records; `data.inputs.train_eval_records`) and
    # the preference-strength training of reward models (`trainers/reward_model.py`).
    'data.flip_fraction': Key(None, 'number', low=0, below=1),
    'reward.flip_below': _num(None),
    'reward.adaptive_margin': _num(None, **NON_NEGATIVE),
    **{
        f'model.{k}': _int(None, **POSITIVE) for k in ('vocab_size', 'embed_dim', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim')
    },
}

# Every checked key, dotted from the config's root.
BOUNDS: dict[str, Key] = {
    **{k: v for k, v in BASE.items() if v.kind or v.choices},
    **{f'rl.{k}': v for k, v in RL.items() if v.kind or v.choices},
    **{f'nash.{k}': v for k, v in NASH.items() if v.kind or v.choices},
    **ELSEWHERE,
}


def _section(table: dict[str, Key], name: str = 'config', **values) -> ml_collections.ConfigDict:
    """A ConfigDict of a table's defaults (dotted keys nest), `values` replacing some."""
    unknown = sorted(set(values) - set(table))
    if unknown:
        raise ValueError(f'{name} has no key {unknown[0]!r}; known: {sorted(table)}')
    c = ml_collections.ConfigDict()
    for key, spec in table.items():
        *path, leaf = key.split('.')
        parent = c
        for part in path:
            if part not in parent:
                parent[part] = ml_collections.ConfigDict()
            parent = parent[part]
        parent[leaf] = values.get(key, spec.default)
    return c


def base_config(*, algo: str, model: str = 'tiny', tiny: bool = True) -> ml_collections.ConfigDict:
    """Defaults every experiment shares (`BASE`); the experiment file sets the rest."""
    c = _section(BASE, total_steps=300 if tiny else 10_000)
    c.algo = algo
    c.model = model_config_dict(model)
    c.mesh.rules = ml_collections.FieldReference(None, field_type=list)
    return c


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


# Adapters start at zero and move a rank-r slice of the weights: at the full fine-tuning rate the
# tiny runs' adapters gain 0.32x (DPO) to 0.35x (GRPO) of its gold reward; at 3x 0.72x and 0.70x,
# and match its accuracy (reward model). Measured in issue 21's note.
LORA_LR_SCALE = 3.0


def with_lora(c: ml_collections.ConfigDict, rank: int) -> ml_collections.ConfigDict:
    """The experiment argument `lora=R`: rank-R adapters on every trainable model (config.lora)
    with the learning rate, given or default, times `LORA_LR_SCALE`; 0 leaves `c` as it is."""
    if rank:
        c.lora.rank = rank
        c.optim.lr = c.optim.lr * LORA_LR_SCALE
    return c


def online_base(algo: str, a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What the online experiments (ppo, remax, rloo, grpo and the Nash family) share outside
    their algorithm's own sections: the base config, the synthetic task, the SFT start and
    reference, the optimiser's schedule and the run's length. The experiment file then sets
    `c.rl` (`rl`), and `c.reward` (`reward`) or `c.nash` (`nash`), itself.

    `a` holds the parsed experiment arguments: tiny, model, task, lr, k (samples per prompt),
    steps (iterations; :tiny runs 100 of 64 rollouts). `data.batch_size` counts prompts per
    iteration; a rollout has batch_size * k rows.
    """
    c = base_config(algo=algo, model=a.model, tiny=a.tiny)
    c.data.train = f'synthetic:{a.task}'
    c.init_from = f'experiment:experiments/sft.py:tiny,task={a.task}' if a.tiny else ''
    c.reference_from = ''  # '' -> the same as init_from
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


def reward(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.reward` of the policy-gradient experiments: a.reward 'gold' (the task's reward) or
    'rm' (a learned reward model trained on the task's preference pairs; :tiny trains or reuses
    it, an ensemble of a.ensemble members when > 1)."""
    rm_args = f'tiny,task={a.task}' + (f',ensemble={a.ensemble}' if a.ensemble > 1 else '')
    section = ml_collections.ConfigDict(
        dict(
            source={'gold': 'gold', 'rm': 'reward_model'}.get(a.reward, a.reward),
            reward_from=(f'experiment:experiments/reward_model.py:{rm_args}'
                         if a.reward == 'rm' and a.tiny else ''),
            aggregate='mean',
            lam=1.0,
            # Reward functions (alignjax/rewards.py): a pool of processes, a limit a call, and
            # what a failure does ('stop' the run in one line, or score 'penalty').
            workers=1,
            timeout_s=60.0,
            on_error='stop',
            error_penalty=-1.0,
            # Robust rewards (alignjax/losses/robust.py): 'log_sigmoid' transforms the reward
            # model's members against a per-prompt quantile of the reference's rewards;
            # 'TERM<THETA,...' constrains terms' means by Lagrange multipliers (dual_lr their
            # step). aggregate='brme' is lam * mean + (1 - lam) * min of an ensemble.
            transform='',
            ref_quantile=0.85,
            ref_samples=8,
            constraints='',
            dual_lr=0.1))
    rewards.parse(section.source)  # a one-line refusal of a bad term, now
    return section


def rl(a: ml_collections.ConfigDict, max_new_tokens: int, **settings) -> ml_collections.ConfigDict:
    """`config.rl`: sampling, the policy-gradient update and the KL leash; `settings` are the
    experiment's own values. a.k samples a prompt; kl_coef is a.kl, or when a.kl < 0 0.05 with
    the gold reward and 0.2 with a learned one (whose over-optimisation needs the stronger leash:
    at 0.05 the tiny runs drive the proxy up and the gold reward down)."""
    kl = a.get('kl', -1.0)
    return _section(
        RL, 'config.rl', **{
            'samples_per_prompt': a.k, 'max_new_tokens': max_new_tokens,
            'kl_coef': kl if kl >= 0 else (0.2 if a.get('reward') == 'rm' else 0.05), **settings
        })


def nash(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.nash` of the Nash-learning experiments (nash_md, nash_mp, spo, inpo, dno, sppo,
    online_ipo).

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
    if a.preference not in ('model', 'gold'):
        raise ValueError(f"preference must be 'model' or 'gold', got {a.preference!r}")
    return _section(
        NASH, 'config.nash', preference=a.preference, tau=a.tau, eta=a.eta,
        preference_from=(f'experiment:experiments/preference_model.py:tiny,task={a.task}'
                         if a.preference == 'model' and a.tiny else ''))
