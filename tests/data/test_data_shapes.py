"""Records in their published shapes, chat templates for every kind, and the file sources.

The oracle is TRL's own preprocessing: `DPOTrainer._prepare_dataset` (prompt extraction, EOS,
chat template, tokenisation) and `trl.extract_prompt` / `maybe_extract_prompt` /
`apply_chat_template`, run on the same record and the same tokenizer (trained in the test).
"""

import glob
import json
import os
import types

import numpy as np
import pytest

from alignjax.data import chat, pipeline, records, shapes
from alignjax.data import inputs
from alignjax.data.records import DataError
from alignjax.interop import load_tokenizer

import experiment_runs
from tokenizer_fixtures import CORPUS, bpe_tokenizer

transformers = pytest.importorskip('transformers')
trl = pytest.importorskip('trl')
datasets = pytest.importorskip('datasets')

# Llama-3's layout: the template writes BOS; a turn ends with EOS and nothing after it.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
            "{{ m['content'] }}<|im_end|>{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SKY = [{'role': 'user', 'content': 'hello world'}]
BLUE = [{'role': 'assistant', 'content': 'this is a test'}]
GREEN = [{'role': 'assistant', 'content': 'the policy samples'}]
SHAPES = {  # name -> (record, chat_template for alignjax, as TRL treats it)
    'standard': ({'prompt': 'hello world', 'chosen': ' this is a test',
                  'rejected': ' the policy samples'}, 'none'),
    'hh_rlhf': ({'chosen': '\n\nHuman: hello world\n\nAssistant: this is a test',
                 'rejected': '\n\nHuman: hello world\n\nAssistant: the policy'}, 'none'),
    'conversational': ({'prompt': SKY, 'chosen': BLUE, 'rejected': GREEN}, 'auto'),
    'ultrafeedback_trl': ({'chosen': SKY + BLUE, 'rejected': SKY + GREEN}, 'auto'),
    'ultrafeedback_h4': ({'prompt': 'hello world', 'chosen': SKY + BLUE,
                          'rejected': SKY + GREEN, 'score_chosen': 8.0}, 'auto'),
    'multi_turn': ({'chosen': SKY + BLUE + [{'role': 'user', 'content': 'nash'}] + GREEN,
                    'rejected': SKY + BLUE + [{'role': 'user', 'content': 'nash'}] + BLUE},
                   'auto'),
}
PARTS = {
    'prompt': [{
        'role': 'user', 'content': [{'type': 'text', 'text': 'hello '},
                                    {'type': 'text', 'text': 'world'}]
    }], 'chosen': BLUE, 'rejected': GREEN
}


@pytest.fixture(scope='module')
def tok_dir(tmp_path_factory):
    return bpe_tokenizer(tmp_path_factory.mktemp('tok'), config={'chat_template': TEMPLATE})


def trl_dpo_ids(record, theirs):
    """TRL's DPO preprocessing of one record: prompt, chosen and rejected ids."""
    fake = types.SimpleNamespace(_tokenizer=theirs)
    args = types.SimpleNamespace(dataset_num_proc=None, max_length=None,
                                 truncation_mode='keep_start')
    record = trl.maybe_extract_prompt(record)  # what TRL's docs do for UltraFeedback (H4)
    record = {k: record[k] for k in ('prompt', 'chosen', 'rejected')}
    out = trl.DPOTrainer._prepare_dataset(fake, datasets.Dataset.from_list([record]), theirs, args,
                                          'train')[0]
    return out['prompt_ids'], out['chosen_ids'], out['rejected_ids']


def our_ids(record, kind, tok, chat_template, **lens):
    row = records.validate_record(record, kind, 'test')
    fn = pipeline.make_tokenize_fn(kind, tok, max_prompt_len=lens.get('p', 64),
                                   max_response_len=lens.get('r', 32), chat_template=chat_template)
    out = fn(row, 0)
    return {k: out[k][out[f'{k}_mask'] > 0].tolist() for k in out if f'{k}_mask' in out}


@pytest.mark.parametrize('shape', sorted(SHAPES))
def test_preference_ids_equal_trl_preprocessing(tok_dir, shape):
    record, template = SHAPES[shape]
    theirs = transformers.AutoTokenizer.from_pretrained(tok_dir)
    ours = our_ids(record, 'preference', load_tokenizer(tok_dir), template)
    want = trl_dpo_ids(record, theirs)
    assert (ours['prompt'], ours['chosen'], ours['rejected']) == tuple(map(list, want))
    assert ours['prompt'].count(theirs.bos_token_id) == 1  # one BOS: the template's or ours


def test_text_parts_are_joined(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert our_ids(PARTS, 'preference', tok, 'auto') == \
        our_ids(SHAPES['conversational'][0], 'preference', tok, 'auto')


def test_where_trl_keeps_what_follows_eos(tmp_path):
    """A template that writes a newline after each turn's EOS (ChatML): TRL trains on it after the
    EOS; alignjax ends the reply at EOS, as the sampler does."""
    directory = bpe_tokenizer(tmp_path)  # test_hf_tokenizer's ChatML template
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    record = SHAPES['conversational'][0]
    ours = our_ids(record, 'preference', load_tokenizer(directory), 'auto')
    prompt, chosen, rejected = trl_dpo_ids(record, theirs)
    newline = theirs('\n', add_special_tokens=False)['input_ids']
    assert ours['prompt'] == prompt
    assert ours['chosen'] + newline == chosen and ours['rejected'] + newline == rejected


def test_implicit_prompt_as_trl_extracts_it():
    rng = np.random.default_rng(0)
    cases = [('\n\nHuman: hi\n\nAssistant: yes', '\n\nHuman: hi\n\nAssistant: no'),
             ('ab c', 'ab d'), ('abc', 'abcd'), ('xyz', 'xyq'), ('a b', 'a b c')]
    for _ in range(40):
        head = ''.join(rng.choice(list('ab '), rng.integers(1, 6)))
        cases.append((head + ''.join(rng.choice(list('xy '), rng.integers(1, 4))),
                      head + ''.join(rng.choice(list('zw '), rng.integers(1, 4)))))
    cases += [(SKY + BLUE, SKY + GREEN), (SKY + BLUE + SKY + GREEN, SKY + BLUE + SKY + BLUE)]
    for chosen, rejected in cases:
        want = trl.extract_prompt({'chosen': chosen, 'rejected': rejected})
        n = shapes.shared_prefix(chosen, rejected)
        got = (chosen[:n], chosen[n:], rejected[n:])
        d = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), None)
        if isinstance(chosen, str) and d and not chosen[d - 1].isspace() and \
                any(c.isspace() for c in chosen[:d]):
            # TRL splits inside a word; alignjax before it (the ids agree, see above).
            assert n < d and (chosen[n].isspace() or chosen[n - 1].isspace()), (chosen, rejected)
            assert not any(c.isspace() for c in chosen[n + 1:d]), (chosen, rejected)
        else:
            assert got == (want['prompt'], want['chosen'], want['rejected']), (chosen, rejected)


def test_prompt_completion_and_prompt_records_equal_trl_templates(tok_dir):
    theirs = transformers.AutoTokenizer.from_pretrained(tok_dir)
    tok = load_tokenizer(tok_dir)
    record = {'prompt': SKY, 'completion': BLUE}
    texts = trl.apply_chat_template(record, theirs)
    ours = our_ids(record, 'sft', tok, 'auto')
    assert ours['prompt'] == theirs(texts['prompt'], add_special_tokens=False)['input_ids']
    assert ours['response'] == theirs(texts['completion'], add_special_tokens=False)['input_ids']
    # A prompt record for online RL: apply_chat_template(add_generation_prompt=True), one BOS.
    for prompt in (SKY, 'hello world'):
        ours = our_ids({'prompt': prompt, 'answer': '4'}, 'prompt', tok, 'auto')
        messages = SKY if isinstance(prompt, list) else [{'role': 'user', 'content': prompt}]
        assert ours['prompt'] == theirs.apply_chat_template(messages, add_generation_prompt=True,
                                                            return_dict=False)
    # Text through 'messages' / 'none' stays text (BOS by the tokenizer); a prompt rendered by
    # hand keeps its one BOS.
    assert our_ids({'prompt': 'hello world'}, 'prompt', tok, 'messages')['prompt'] == \
        theirs('hello world')['input_ids']
    rendered = theirs.apply_chat_template(SKY, add_generation_prompt=True, tokenize=False)
    assert our_ids({'prompt': rendered}, 'prompt', tok, 'auto')['prompt'] == \
        theirs(rendered, add_special_tokens=False)['input_ids']


def test_tool_turns_and_a_template_file(tok_dir, tmp_path):
    """The tool role and tool calls reach the template as transformers passes them."""
    template = tmp_path / 'tools.jinja'
    template.write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}"
                        "{% if m.tool_calls %}{{ m.tool_calls | tojson }}{% endif %}{% endfor %}"
                        "{% if add_generation_prompt %}[assistant]{% endif %}")
    call = [{'type': 'function', 'function': {'name': 'add', 'arguments': {'a': 1}}}]
    record = {
        'messages': SKY + [{'role': 'assistant', 'content': None, 'tool_calls': call}, {
            'role': 'tool', 'name': 'add', 'content': '2'
        }, {'role': 'assistant', 'content': 'two'}]
    }
    row = records.validate_record(record, 'sft', 'test')
    theirs = transformers.AutoTokenizer.from_pretrained(tok_dir)
    want = theirs.apply_chat_template(record['messages'][:-1], chat_template=template.read_text(),
                                      add_generation_prompt=True, tokenize=False)
    prompt, _, replies = pipeline.texts(row, 'sft',
                                        chat.Chat.of(load_tokenizer(tok_dir), str(template)))
    assert prompt == want and replies == {'response': 'two'}
    c = experiment_runs.config_of('sft.py:tiny', **{'data.chat_template': str(tmp_path / 'x')})
    from alignjax import validation
    with pytest.raises(validation.ValidationError, match='chat_template=.*not a readable'):
        validation.check_fields(c)


@pytest.mark.parametrize('record,message', [
    ({
        'prompt': [{'role': 'user', 'content': [{'type': 'image', 'url': 'x'}]}], 'chosen': BLUE,
        'rejected': GREEN
    }, "content part 0 has type 'image'; only text parts"),
    ({'chosen': 'abc', 'rejected': SKY + BLUE}, 'both be text or both be lists'),
    ({'chosen': 'yes', 'rejected': 'no'}, 'share no prompt'),
    ({'prompt': SKY, 'chosen': BLUE, 'rejected': BLUE}, 'identical'),
    ({'prompt': SKY + BLUE, 'chosen': GREEN, 'rejected': BLUE}, "role 'user' or 'tool'"),
    ({'prompt': [{'role': 'robot', 'content': 'x'}], 'chosen': BLUE, 'rejected': GREEN
     }, "prompt\\[0\\] has role 'robot'"),
])
def test_bad_shapes_are_one_line_naming_the_line(tmp_path, record, message):
    path = tmp_path / 'x.jsonl'
    good = {'prompt': 'p', 'chosen': 'a', 'rejected': 'b'}
    records.write_jsonl(path, [good, record])
    with pytest.raises(DataError, match=f'^{path}:2: .*{message}'):
        records.read_jsonl(path, 'preference')


def _published(tmp_path, rows):
    """The same rows as a JSONL file, a parquet file and save_to_disk folders."""
    records.write_jsonl(tmp_path / 'd.jsonl', rows)
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / 'd.parquet'))
    ds.select(range(3)).to_parquet(str(tmp_path / 'part-0.parquet'))
    ds.select(range(3, len(rows))).to_parquet(str(tmp_path / 'part-1.parquet'))
    ds.save_to_disk(str(tmp_path / 'saved'))
    datasets.DatasetDict({'train_prefs': ds,
                          'test_prefs': ds.select(range(2))}).save_to_disk(str(tmp_path / 'dict'))


def test_parquet_and_saved_datasets_read_as_jsonl(tmp_path):
    rows = [{
        'prompt': f'q{i}', 'chosen': SKY + [{'role': 'assistant', 'content': f'a{i}'}],
        'rejected': SKY + GREEN, 'score_chosen': 1.0
    } for i in range(7)]
    _published(tmp_path, rows)
    want = pipeline.load_records(f'jsonl:{tmp_path}/d.jsonl', 'preference')
    for spec in (f'parquet:{tmp_path}/d.parquet', f'parquet:{tmp_path}/part-*.parquet',
                 f'hf:{tmp_path}/saved', f'hf:{tmp_path}/dict:train_prefs'):
        got = pipeline.load_records(spec, 'preference')
        assert list(got) == list(want), spec
    assert len(pipeline.load_records(f'hf:{tmp_path}/dict:test_prefs', 'preference')) == 2
    assert pipeline.load_records(f'parquet:{tmp_path}/part-*.parquet', 'preference').where(4) == \
        f'{tmp_path}/part-1.parquet: row 2'
    with pytest.raises(DataError, match='splits train_prefs, test_prefs; name one'):
        pipeline.load_records(f'hf:{tmp_path}/dict', 'preference')
    with pytest.raises(DataError, match='no file matches'):
        pipeline.load_records(f'parquet:{tmp_path}/none-*.parquet', 'preference')
    bad = rows[:4] + [{'prompt': 'q', 'chosen': SKY, 'rejected': SKY + GREEN}]
    datasets.Dataset.from_list(bad).to_parquet(str(tmp_path / 'bad.parquet'))
    with pytest.raises(DataError, match=r'bad.parquet: row 5: .*share no prompt'):
        pipeline.load_records(f'parquet:{tmp_path}/bad.parquet', 'preference')
    json_array = tmp_path / 'd.json'
    json_array.write_text(json.dumps(rows))
    assert list(pipeline.load_records(f'json:{json_array}', 'preference')) == list(want)
    array_as_jsonl = tmp_path / 'array.jsonl'
    array_as_jsonl.write_text(json.dumps(rows, indent=1))
    with pytest.raises(DataError, match='array.jsonl:1: .*use json:PATH'):
        records.read_jsonl(array_as_jsonl, 'preference')


def test_every_bundled_trl_template_renders_as_transformers(tok_dir):
    """TRL's 72 bundled chat templates (34 use {% generation %}): the text equals transformers',
    and the generation spans equal its assistant-token mask."""
    theirs = transformers.AutoTokenizer.from_pretrained(tok_dir)
    conversation = [{'role': 'system', 'content': 'Be brief.'}] + SKY + BLUE + [{
        'role': 'user', 'content': 'again'
    }, {'role': 'assistant', 'content': 'nash!'}]
    variables = {'bos_token': '<s>', 'eos_token': '<|im_end|>', 'pad_token': '<pad>'}
    files = sorted(
        glob.glob(os.path.join(os.path.dirname(trl.__file__), 'chat_templates', '*.jinja')))
    rendered = masks = 0
    for path in files:
        with open(path) as f:
            template = f.read()
        try:
            want = theirs.apply_chat_template(conversation, chat_template=template, tokenize=False)
        except Exception:  # pylint: disable=broad-except  (Gemma refuses system turns, LLaVA text)
            continue
        text, spans = chat.render(template, conversation, variables=variables, spans=True)
        assert text == want, path
        rendered += 1
        if '{% generation %}' in template:
            mask = theirs.apply_chat_template(conversation, chat_template=template, tokenize=True,
                                              return_dict=True,
                                              return_assistant_tokens_mask=True)['assistant_masks']
            offsets = theirs(text, add_special_tokens=False,
                             return_offsets_mapping=True)['offset_mapping']
            ours = [int(any(s <= a < e for s, e in spans)) for a, _ in offsets]
            assert ours == list(mask) and sum(ours), path
            masks += 1
    assert len(files) == 72 and rendered == 68 and masks >= 29, (len(files), rendered, masks)


@pytest.mark.slow
def test_dpo_trains_on_ultrafeedback_parquet_through_the_template(tmp_path):
    """A DPO run from a save_pretrained Llama on UltraFeedback-shaped parquet: the batch's prompt
    ids are apply_chat_template(..., add_generation_prompt=True) with one BOS; the loss falls."""
    torch = pytest.importorskip('torch')
    directory = tmp_path / 'hf'
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    bpe_tokenizer(directory, config={'chat_template': TEMPLATE})
    rows = [{
        'prompt': CORPUS[i % 4][:16], 'chosen': [{'role': 'user', 'content': CORPUS[i % 4][:16]},
                                                 {'role': 'assistant', 'content': 'nash!'}],
        'rejected': [{'role': 'user', 'content': CORPUS[i % 4][:16]},
                     {'role': 'assistant', 'content': CORPUS[(i + 1) % 4][:12]}]
    } for i in range(64)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / 'uf.parquet'))
    overrides = {
        'init_from': f'hf:{directory}', 'tokenizer': f'hf:{directory}',
        'data.train': f'parquet:{tmp_path}/uf.parquet', 'data.max_prompt_len': 48,
        'data.max_response_len': 12, 'data.batch_size': 16, 'optim.warmup_steps': 0, 'log_every': 5
    }
    c = experiment_runs.config_of(f'dpo.py:model=hf:{directory},steps=20', **overrides)
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    tok = inputs.make_tokenizer(c)
    batch = next(
        iter(
            inputs.make_stream(c, 'preference', inputs.load_records(c, 'preference', c.data.train),
                               tok)))
    for ids, mask, i in zip(batch['prompt'], batch['prompt_mask'], range(3)):
        ids = ids[mask > 0].tolist()
        assert ids.count(theirs.bos_token_id) == 1
        assert ids in [
            theirs.apply_chat_template(r['chosen'][:1], add_generation_prompt=True,
                                       return_dict=False) for r in rows[:4]
        ]
    summary = experiment_runs.run(tmp_path / 'run', f'dpo.py:model=hf:{directory},steps=20',
                                  **overrides)
    with open(tmp_path / 'run' / 'metrics.jsonl') as f:
        losses = [json.loads(line)['loss'] for line in f if 'loss' in json.loads(line)]
    # Measured: loss 0.676 -> 0.645 in 20 steps, held-out reward margin 0.10, accuracy 1.0.
    assert losses[-1] < losses[0] - 0.02 and summary['heldout/rewards_margin'] > 0.05, losses


GENERATION = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
              "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>"
              "{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TURNS = [{'role': 'system', 'content': 'Be brief.'}
        ] + SKY + BLUE + [{'role': 'user', 'content': 'nash'}] + GREEN


@pytest.mark.parametrize('template', [GENERATION, TEMPLATE])
def test_every_assistant_turn_is_trained_with_sft_turns_all(tmp_path, template):
    """sft_turns='all': prompt + response ids are the whole rendered conversation, and the loss
    mask is transformers' assistant mask ({% generation %}), or each assistant message's text
    and end of turn (a template without the tag)."""
    directory = bpe_tokenizer(tmp_path, config={'chat_template': template})
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    fn = pipeline.make_tokenize_fn('sft', load_tokenizer(directory), max_prompt_len=48,
                                   max_response_len=48, sft_turns='all')
    out = fn(records.validate_record({'messages': TURNS}, 'sft', 'test'), 0)
    prompt = out['prompt'][out['prompt_mask'] > 0].tolist()
    response = out['response'][out['response_mask'] > 0].tolist()
    loss_mask = out['loss_mask'][out['response_mask'] > 0].tolist()
    full = theirs.apply_chat_template(TURNS, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=template is GENERATION)
    assert prompt + response == list(full['input_ids'])
    if template is GENERATION:
        assert [0] * len(prompt) + loss_mask == list(full['assistant_masks'])
    trained = theirs.decode([t for t, m in zip(response, loss_mask) if m])
    assert trained == 'this is a test<|im_end|>the policy samples<|im_end|>'
    last = pipeline.make_tokenize_fn('sft', load_tokenizer(directory), max_prompt_len=48,
                                     max_response_len=48)({'messages': TURNS}, 0)
    assert 'loss_mask' not in last  # 'last': the final reply, as before


def test_sft_trains_on_every_turn(tmp_path):
    data = tmp_path / 'chat.jsonl'
    records.write_jsonl(data, [{
        'messages': [{'role': 'user', 'content': f'q{i % 7}'}, {
            'role': 'assistant', 'content': 'a'
        }, {'role': 'user', 'content': 'again'}, {'role': 'assistant', 'content': f'b{i % 7}'}]
    } for i in range(64)])
    c = experiment_runs.config_of(
        'sft.py:tiny,steps=2', **{
            'data.train': f'jsonl:{data}', 'data.sft_turns': 'all', 'data.max_prompt_len': 16,
            'data.max_response_len': 32, 'data.batch_size': 8
        })
    tok = inputs.make_tokenizer(c)
    fn = pipeline.make_tokenize_fn('sft', tok, max_prompt_len=16, max_response_len=32,
                                   sft_turns='all')
    out = fn(
        records.validate_record(
            {
                'messages': [{'role': 'user', 'content': 'q'}, {
                    'role': 'assistant', 'content': 'a'
                }, {'role': 'user', 'content': 'x'}, {'role': 'assistant', 'content': 'b'}]
            }, 'sft', 't'), 0)
    ids = out['response'][out['loss_mask'] > 0].tolist()
    assert tok.decode(ids[:-1]) == 'ab' and ids[-1] == tok.eos_id  # plain format: EOS last
    summary = experiment_runs.run(
        tmp_path / 'run', 'sft.py:tiny,steps=2', **{
            'data.train': f'jsonl:{data}', 'data.sft_turns': 'all', 'data.max_prompt_len': 16,
            'data.max_response_len': 32, 'data.batch_size': 8, 'log_every': 1
        })
    assert summary['step'] == 2
