"""Bad input is refused before any compute: one clear line, and only WORKDIR/error.log written.

Each case builds the config a researcher would get (an experiment file plus overrides), breaks one
thing and calls `runs.train` in process: validation runs first, so no case compiles or trains.
Two cases go through `python -m alignjax.main` for the flag-level errors.
"""

import json
import os
import re
import subprocess
import sys

import jax
import ml_collections
import pytest
from flax import nnx

from alignjax import checkpoint as ckpt_lib
from alignjax import experiment_lib
from alignjax import runs
from alignjax import trainers
from alignjax import validation
from alignjax.data import inputs
from alignjax.models import Decoder
from alignjax.models import config as model_config

import experiment_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD_SFT = json.dumps({'prompt': 'abc:', 'response': 'aab'})
GOOD_PAIR = json.dumps({'prompt': 'abc:', 'chosen': 'aab', 'rejected': 'bba'})


def config_of(spec, **overrides):
    c = experiment_lib.load_config(os.path.join(ROOT, 'experiments', spec))
    return experiment_runs.override(c, **overrides)


def write_lines(path, lines):
    with open(path, 'wb') as f:
        f.write(b'\n'.join(x if isinstance(x, bytes) else x.encode() for x in lines) + b'\n')
    return str(path)


def jsonl(tmp_path, bad, good=GOOD_SFT):
    """A file whose line 3 is `bad` among good lines (line 2 blank: lines, not records, count)."""
    return write_lines(tmp_path / 'data.jsonl', [good, '', bad, good])


def refused(tmp_path, config, message):
    """Runs `config`, expects the refusal `message` (a regex), and checks the workdir."""
    workdir = tmp_path / 'run'
    with pytest.raises(validation.ValidationError, match=message) as info:
        runs.train(config, str(workdir))
    text = str(info.value)
    assert '\n' not in text, text
    assert os.listdir(workdir) == ['error.log']
    assert open(workdir / 'error.log').read() == f'error: {text}\n'
    return text


# --- data ---------------------------------------------------------------------------------------

SFT_LINES = [
    ('invalid_json', '{"prompt": "a" "response": "b"}', r'invalid JSON \(Expecting'),
    ('missing_field', '{"prompt": "a"}', "missing key 'response' for a sft record"),
    ('mistyped_field', '{"prompt": "a", "response": 7}',
     "key 'response' must be a string, got int"),
    ('empty_prompt', '{"prompt": "", "response": "b"}', "key 'prompt' is an empty string"),
    ('empty_response', '{"prompt": "a", "response": ""}', "key 'response' is an empty string"),
    ('not_an_object', '["a", "b"]', 'a record must be a JSON object, got list'),
    ('chat_without_response', '{"messages": [{"role": "user", "content": "q"}]}',
     "the last message must have role 'assistant'"),
    ('non_utf8', b'{"prompt": "a\xff", "response": "b"}',
     r'not valid UTF-8 \(byte 0xff at column 14\)'),
    ('prompt_too_long', json.dumps({'prompt': 'x' * 40, 'response': 'b'}),
     r"prompt of 40 tokens exceeds config.data.max_prompt_len=8 \(config.data.truncation='error'"),
]


@pytest.mark.parametrize('bad, message', [c[1:] for c in SFT_LINES], ids=[c[0] for c in SFT_LINES])
def test_bad_sft_line_names_file_and_line(tmp_path, bad, message):
    path = jsonl(tmp_path, bad)
    c = config_of('sft.py:tiny', **{'data.train': f'jsonl:{path}', 'data.truncation': 'error'})
    refused(tmp_path, c, f'^{re.escape(path)}:3: {message}')


PAIR_LINES = [
    ('chosen_is_rejected', json.dumps({'prompt': 'p', 'chosen': 'aab', 'rejected': 'aab'}),
     "'chosen' and 'rejected' are identical"),
    ('mistyped_margin', json.dumps({'prompt': 'p', 'chosen': 'a', 'rejected': 'b',
                                    'margin': '1'}), "key 'margin' must be a number, got str"),
    ('missing_rejected', json.dumps({'prompt': 'p', 'chosen': 'a'}),
     "missing key 'rejected' for a preference record"),
]


@pytest.mark.parametrize('bad, message', [c[1:] for c in PAIR_LINES],
                         ids=[c[0] for c in PAIR_LINES])
def test_bad_preference_line_names_file_and_line(tmp_path, bad, message):
    path = jsonl(tmp_path, bad, good=GOOD_PAIR)
    c = config_of('dpo.py:tiny', **{'data.train': f'jsonl:{path}'})
    refused(tmp_path, c, f'^{re.escape(path)}:3: {message}')


def test_empty_dataset_after_skipping_long_prompts(tmp_path):
    long_one = json.dumps({'prompt': 'x' * 20, 'response': 'b'})
    path = write_lines(tmp_path / 'long.jsonl', [long_one] * 3)
    c = config_of('sft.py:tiny', **{'data.train': f'jsonl:{path}', 'data.truncation': 'skip'})
    refused(
        tmp_path, c, rf"^jsonl:{re.escape(path)}: no records left after "
        r"config.data.truncation='skip' dropped all 3")


def test_empty_and_missing_files(tmp_path):
    path = write_lines(tmp_path / 'empty.jsonl', [''])
    c = config_of('sft.py:tiny', **{'data.train': f'jsonl:{path}'})
    refused(tmp_path, c, f'^{re.escape(path)}: empty file')
    c = config_of('sft.py:tiny', **{'data.train': f'jsonl:{tmp_path}/nope.jsonl'})
    refused(tmp_path / 'b', c, 'nope.jsonl: no such file')


def test_long_prompt_policies_count_and_filter(tmp_path):
    """'left' keeps and truncates, 'skip' drops: the counts are reported and training reads the
    same filtered records as validation."""
    long_one = json.dumps({'prompt': 'x' * 20, 'response': 'b'})
    path = write_lines(tmp_path / 'mixed.jsonl', [GOOD_SFT, long_one, GOOD_SFT, long_one, GOOD_SFT])
    for policy, kept in (('left', 5), ('skip', 3)):
        c = config_of('sft.py:tiny', **{'data.train': f'jsonl:{path}', 'data.truncation': policy})
        report = validation.validate(c)[f'jsonl:{path}']
        assert report == {
            'records': 5, 'too_long': 2, 'kept': kept, 'truncated': 2 if policy == 'left' else 0,
            'skipped': 2 if policy == 'skip' else 0, 'long_replies': 0
        }
        records = inputs.load_records(c, 'sft', c.data.train)
        assert len(records) == kept
        assert all(r['prompt'] == 'abc:' for r in records) == (policy == 'skip')


# --- configs ------------------------------------------------------------------------------------


def _retyped(section, key, value):
    """A config section with one value of the wrong type, as an experiment file can write it."""
    return ml_collections.ConfigDict(dict(section.to_dict(), **{key: value}), type_safe=False)


CONFIGS = [
    ('zero_lr', 'sft.py:tiny', {'optim.lr': 0.0},
     r'config.optim.lr must be a positive number, got 0.0'),
    ('negative_lr', 'sft.py:tiny', {'optim.lr': -1e-3},
     r'config.optim.lr must be a positive number'),
    ('zero_beta', 'dpo.py:tiny', {'loss.beta': 0.0}, r'config.loss.beta must be a positive number'),
    ('negative_beta', 'dpo.py:tiny', {'loss.beta': -0.1}, r'config.loss.beta must be a positive'),
    ('zero_batch', 'sft.py:tiny', {'data.batch_size': 0},
     r'config.data.batch_size must be a positive int'),
    ('mesh_not_dividing', 'sft.py:tiny', {'mesh.shape':
        (3, -1, 1)}, r'8 devices do not divide by 3; the sizes must multiply to the device count'),
    ('mesh_too_big', 'sft.py:tiny', {'mesh.shape':
        (2, 8, 1)}, r'multiplies to 16 devices; this run has 8'),
    ('mesh_two_unknowns', 'sft.py:tiny', {'mesh.shape':
        (-1, -1, 1)}, r'at most one entry may be -1'),
    ('batch_vs_data_parallel', 'sft.py:tiny', {'mesh.shape': (2, 4, 1), 'data.batch_size': 12},
     r'config.data.batch_size=12 is not divisible by the data-parallel size 8 \(mesh data x fsdp = 2 x 4\)'
    ),
    ('batch_vs_microbatches', 'sft.py:tiny', {'optim.microbatches': 5},
     r'config.optim.microbatches=5 does not divide config.data.batch_size \(32 rows\)'),
    ('rollout_vs_minibatches', 'ppo.py:tiny', {'rl.minibatches': 3},
     r'config.rl.minibatches=3 does not divide the rollout of 64 rows'),
    ('eval_tokens_beyond_context', 'sft.py:tiny', {'eval.max_new_tokens': 300},
     r"config.eval.max_new_tokens=300: with config.data.max_prompt_len=8 that is 308 positions, "
     r"beyond the context of 256 of model preset 'tiny'"),
    ('rollout_tokens_beyond_context', 'grpo.py:tiny', {'rl.max_new_tokens': 250},
     r'config.rl.max_new_tokens=250: .* 258 positions, beyond the context of 256'),
    ('unknown_truncation_policy', 'sft.py:tiny', {'data.truncation': 'middle'},
     r"config.data.truncation='middle': expected one of \('left', 'skip', 'error'\)"),
    ('lora_dropout_of_one', 'dpo.py:tiny,lora=4', {'lora.dropout': 1.0},
     r'config.lora.dropout must be a non-negative number below 1, got 1.0'),
    ('unknown_nonfinite_policy', 'sft.py:tiny', {'nonfinite': 'ignore'},
     r"config.nonfinite='ignore': expected one of \('stop', 'skip'\)"),
]


@pytest.mark.parametrize('spec, overrides, message', [c[1:] for c in CONFIGS],
                         ids=[c[0] for c in CONFIGS])
def test_bad_config_names_the_key(tmp_path, spec, overrides, message):
    refused(tmp_path, config_of(spec, **overrides), message)


def test_wrongly_typed_values_name_the_key(tmp_path):
    c = config_of('dpo.py:tiny')
    c.loss = _retyped(c.loss, 'beta', '0.1')  # a quoted number in an experiment file
    refused(tmp_path / 'a', c, r"config.loss.beta must be a positive number, got '0.1' \(str\)")
    c = config_of('sft.py:tiny', **{'model.num_layers': 2.5})
    refused(tmp_path / 'b', c, r'config.model.num_layers must be a positive int, got 2.5 \(float\)')


# --- starting points ----------------------------------------------------------------------------


def test_missing_init_from(tmp_path):
    c = config_of('sft.py:tiny', init_from=str(tmp_path / 'nowhere'))
    refused(tmp_path, c, r"config.init_from='.*nowhere': no such directory")
    c = config_of('dpo.py:tiny', reference_from=str(tmp_path / 'gone'))
    refused(tmp_path / 'b', c, r"config.reference_from='.*gone': no such directory")
    c = config_of('sft.py:tiny', init_from='experiment:experiments/nope.py:tiny')
    refused(tmp_path / 'c', c, r"config.init_from='experiment:experiments/nope.py:tiny': no "
            r'experiment file')


def test_init_from_a_directory_that_is_not_a_checkpoint(tmp_path):
    plain = tmp_path / 'plain'
    plain.mkdir()
    (plain / 'notes.txt').write_text('not a run')
    c = config_of('sft.py:tiny', init_from=str(plain))
    refused(
        tmp_path, c, r"config.init_from='.*plain' is not a checkpoint: expected .*/checkpoints/"
        r'<step>/state from a finished save')
    # A save killed before it finished leaves only orbax's temporary directory: not a checkpoint.
    killed = tmp_path / 'killed'
    (killed / 'checkpoints' / '5.orbax-checkpoint-tmp' / 'state').mkdir(parents=True)
    c = config_of('sft.py:tiny', init_from=str(killed))
    refused(tmp_path / 'b', c, r"config.init_from='.*killed' is not a checkpoint")


def test_init_from_with_other_shapes(tmp_path):
    other = model_config.get_model_config('tiny', mlp_dim=96)
    params = nnx.to_pure_dict(nnx.state(Decoder(other, rngs=nnx.Rngs(0))))
    with ckpt_lib.Checkpointer(str(tmp_path / 'other' / 'checkpoints'), save_every=1, keep=1) as ck:
        ck.save(1, {'params': params})
    c = config_of('sft.py:tiny', init_from=str(tmp_path / 'other'))
    refused(
        tmp_path, c, r"config.init_from='.*other': parameter 'layers/mlp/\w+' has shape "
        r'\(2, (64, 96|96, 64)\) in the checkpoint; config.model expects '
        r'\(2, (64, 128|128, 64)\)')


# --- the command line ---------------------------------------------------------------------------


def run_main(workdir, *flags):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    cmd = [
        sys.executable, '-m', 'alignjax.main', f'--workdir={workdir}',
        f'--config={ROOT}/experiments/sft.py:tiny', *flags
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('flag, message', [
    ('--config.optim.lrr=1', "Unknown config key 'optim.lrr' (from --config.optim.lrr=1); did "
     "you mean 'optim.lr'?"),
    ('--config.total_steps=abc', "config key 'total_steps' expects int, got 'abc' (from "
     "--config.total_steps=abc)"),
], ids=['unknown_key', 'wrong_type'])
def test_bad_flags_are_one_line_and_an_error_log(tmp_path, flag, message):
    result = run_main(tmp_path / 'run', flag)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f'error: {message}'
    assert 'Traceback' not in result.stderr
    assert os.listdir(tmp_path / 'run') == ['error.log']
    assert open(tmp_path / 'run' / 'error.log').read() == f'error: {message}\n'


def test_valid_presets_pass():
    """The checks must not refuse what the project ships: every experiment's :tiny preset."""
    assert jax.device_count() == 8
    for algo in sorted(set(trainers.ALGORITHMS) - {'nash_md'}) + ['nash_md']:
        validation.check_fields(config_of(f'{algo}.py:tiny'))
        validation.check_shapes(config_of(f'{algo}.py:tiny'))
        validation.check_starting_points(config_of(f'{algo}.py:tiny'))
