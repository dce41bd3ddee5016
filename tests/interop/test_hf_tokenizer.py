"""Tests for alignjax.interop.tokenizer and `hf:` starting points, against transformers.

Tokenizers are trained in the test (a byte-level BPE `tokenizer.json`; a SentencePiece model), so
nothing is downloaded: ids, chat templates and decoding must equal transformers' fast tokenizer.
Then a random transformers Llama saved with `save_pretrained` starts a policy, a reward model's
backbone and a whole SFT run through `model=hf:DIR`, `init_from=hf:DIR`, `tokenizer=hf:DIR`.
"""

import json
import os
import sys

import jax
import numpy as np
import pytest

from alignjax import pretrained, sharding
from alignjax.data import pipeline
from alignjax.interop import from_pretrained, load_tokenizer
from alignjax.trainers import common
from alignjax.trainers import reward_model as reward_model_lib

import experiment_runs
from tokenizer_fixtures import CORPUS, SPECIALS, bpe_tokenizer

transformers = pytest.importorskip('transformers')
torch = pytest.importorskip('torch')
tokenizers = pytest.importorskip('tokenizers')

TEXTS = CORPUS[:4] + [
    '  leading and  double  spaces ', 'inline <|im_end|> special', 'new\nline', '12345 digits', ''
]
CHAT = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hello world '},
        {'role': 'assistant', 'content': 'héllo, nash!'}]


def assert_same_ids(ours, theirs, texts=TEXTS):
    for text in texts:
        for special in (True, False):
            want = theirs(text, add_special_tokens=special)['input_ids']
            assert ours.encode(text, add_special_tokens=special) == want, (text, special)
        ids = theirs(text)['input_ids']
        if ours.eos_id in ids:  # alignjax decodes a sampled response: up to its EOS
            ids = ids[:ids.index(ours.eos_id)]
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text


@pytest.mark.parametrize(
    'config,post_bos',
    [
        ({}, True),  # tokenizer.json's post-processor adds BOS
        ({}, False),  # nothing adds BOS
        ({'add_bos_token': False, 'add_eos_token': True}, True),  # flags ignored beside it
        ({'bos_token': None}, False),  # Qwen-style: no BOS at all
    ])
def test_ids_and_chat_template_match_transformers(tmp_path, config, post_bos):
    directory = bpe_tokenizer(tmp_path, config=config, post_bos=post_bos)
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    ours = load_tokenizer(directory)
    assert_same_ids(ours, theirs)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (theirs.bos_token_id, theirs.eos_token_id,
                                                       theirs.pad_token_id)
    assert ours.add_bos == (theirs('a')['input_ids'][0] == theirs.bos_token_id)
    for history in (CHAT, CHAT[1:2], CHAT[:2]):
        for generation in (True, False):
            text = theirs.apply_chat_template(history, tokenize=False,
                                              add_generation_prompt=generation)
            assert ours.apply_chat_template(history, add_generation_prompt=generation) == text
            ids = theirs.apply_chat_template(history, tokenize=True,
                                             add_generation_prompt=generation)
            ids = ids['input_ids'] if hasattr(ids, 'keys') else ids
            assert ours.apply_chat_template(history, add_generation_prompt=generation,
                                            tokenize=True) == list(ids)
    with pytest.raises(Exception, match='unknown role tool'):
        ours.apply_chat_template([{'role': 'tool', 'content': 'x'}])


def test_chat_record_is_split_as_the_template_renders_it(tmp_path):
    """A messages record: prompt = history + generation prompt; response = the reply, then EOS."""
    directory = bpe_tokenizer(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    ours = load_tokenizer(directory)
    tokenize = pipeline.make_tokenize_fn('sft', ours, max_prompt_len=48, max_response_len=24)
    out = tokenize({'messages': CHAT}, 0)
    prompt = out['prompt'][out['prompt_mask'] > 0].tolist()
    response = out['response'][out['response_mask'] > 0].tolist()
    want_prompt = theirs.apply_chat_template(CHAT[:-1], add_generation_prompt=True)
    want_prompt = want_prompt['input_ids'] if hasattr(want_prompt, 'keys') else want_prompt
    assert prompt == list(want_prompt) and prompt[0] == theirs.bos_token_id  # one BOS, not two
    full = theirs.apply_chat_template(CHAT)
    full = list(full['input_ids'] if hasattr(full, 'keys') else full)
    assert full[:len(prompt) + len(response)] == prompt + response
    assert response[-1] == theirs.convert_tokens_to_ids('<|im_end|>') == ours.eos_id
    # Untemplated text prompts get BOS as the tokenizer puts it.
    plain = pipeline.make_tokenize_fn('sft', ours, max_prompt_len=16, max_response_len=8,
                                      chat_template='none')(
                                          {'prompt': 'hello world', 'response': 'nash'}, 0)
    assert plain['prompt'][plain['prompt_mask'] > 0].tolist() == theirs('hello world')['input_ids']


def test_special_tokens_from_files_and_overrides(tmp_path):
    directory = bpe_tokenizer(tmp_path,
                              config={'bos_token': None, 'eos_token': None, 'pad_token': None})
    with pytest.raises(ValueError, match='no EOS token.*special_tokens.eos'):
        load_tokenizer(directory)
    with open(os.path.join(directory, 'special_tokens_map.json'), 'w') as f:
        json.dump({'bos_token': {'content': '<s>', 'special': True}, 'eos_token': '</s>'}, f)
    tok = load_tokenizer(directory)
    ids = {t: tok._backend.token_id(t) for t in SPECIALS}  # pylint: disable=protected-access
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ids['<s>'], ids['</s>'], ids['</s>'])
    os.remove(os.path.join(directory, 'special_tokens_map.json'))
    with open(os.path.join(directory, 'generation_config.json'), 'w') as f:
        json.dump({'eos_token_id': [ids['<|im_end|>'], ids['</s>']]}, f)
    assert load_tokenizer(directory).eos_id == ids['<|im_end|>']  # the first stop id
    tok = load_tokenizer(directory, eos='</s>', pad='<pad>', bos='<|im_start|>')
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ids['<|im_start|>'], ids['</s>'], ids['<pad>'])
    with pytest.raises(ValueError, match="eos token '<eot>' is not in the vocabulary"):
        load_tokenizer(directory, eos='<eot>')


def test_sentencepiece_model(tmp_path):
    """tokenizer.model alone: SentencePiece's own ids; transformers' conversion agrees except
    before leading whitespace (it does not add SentencePiece's dummy prefix to a leading space)."""
    spm = pytest.importorskip('sentencepiece')
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS),
                                   model_prefix=str(tmp_path / 'tokenizer'), vocab_size=320,
                                   model_type='bpe', unk_id=0, bos_id=1, eos_id=2, pad_id=3,
                                   character_coverage=1.0, byte_fallback=True,
                                   normalization_rule_name='identity',
                                   remove_extra_whitespaces=False, split_digits=True, minloglevel=2)
    with open(tmp_path / 'tokenizer_config.json', 'w') as f:
        json.dump(
            {
                'tokenizer_class': 'LlamaTokenizer', 'bos_token': '<s>', 'eos_token': '</s>',
                'add_bos_token': True
            }, f)
    ours = load_tokenizer(str(tmp_path))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / 'tokenizer.model'))
    for text in TEXTS:
        assert ours.encode(text) == sp.encode(text)
        assert ours.encode(text, add_special_tokens=True) == [1] + sp.encode(text)
        assert ours.decode(sp.encode(text) + [2, 5]) == sp.decode(sp.encode(text))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert_same_ids(ours, theirs, [t for t in TEXTS if not t.startswith(' ')])
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 2)


VOCAB = 320


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
    """A random transformers Llama with the trained tokenizer beside it, as on the Hub."""
    directory = tmp_path_factory.mktemp('hf_llama')
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return bpe_tokenizer(directory)


def test_from_pretrained_generates_as_transformers(hf_dir):
    lm = from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
    prompts = ['hello world', 'the policy samples']
    tokens, mask = lm.encode(prompts)
    ours = lm.generate(prompts, max_new_tokens=6)
    with torch.no_grad():
        out = model.generate(input_ids=torch.as_tensor(tokens, dtype=torch.long),
                             attention_mask=torch.as_tensor(mask,
                                                            dtype=torch.long), max_new_tokens=6,
                             do_sample=False, eos_token_id=None, pad_token_id=theirs.pad_token_id)
    want = [lm.tokenizer.decode(row) for row in out[:, tokens.shape[1]:].numpy()]
    assert ours == want
    assert len(lm.generate([CHAT[:2]], chat=True, max_new_tokens=3)) == 1


def test_hf_starting_points(hf_dir):
    """init_from=hf:DIR fills a policy, and a reward model's backbone (its head stays fresh)."""
    c = experiment_runs.config_of(f'reward_model.py:model=hf:{hf_dir}')
    assert c.model.vocab_size == VOCAB and c.model.num_kv_heads == 2
    mesh = sharding.make_mesh((1, 2, 2))
    with jax.set_mesh(mesh):
        policy = common.build_policy(c, mesh)
        pretrained.init_module(policy, f'hf:{hf_dir}')
        lm = from_pretrained(hf_dir, mesh=mesh)
        tokens = np.arange(1, 25, dtype=np.int32).reshape(2, 12)
        mask = np.ones_like(tokens)
        np.testing.assert_array_equal(np.asarray(policy(tokens, mask)),
                                      np.asarray(lm.model(tokens, mask)))
        c.backbone_from = ''
        fresh = reward_model_lib.build_reward_model(c, mesh)
        c.backbone_from = f'hf:{hf_dir}'
        rm = reward_model_lib.build_reward_model(c, mesh)
    from flax import nnx
    for (path, got), (_, start) in zip(nnx.to_flat_state(nnx.state(rm, nnx.Param)),
                                       nnx.to_flat_state(nnx.state(fresh, nnx.Param))):
        if path[0] != 'backbone':  # the scalar head: as initialised
            np.testing.assert_array_equal(np.asarray(got[...]), np.asarray(start[...]))
    np.testing.assert_array_equal(np.asarray(rm.backbone.embedding[...]),
                                  np.asarray(lm.model.embedding[...]))
    c.model.num_layers = 3
    with pytest.raises(ValueError, match=r'num_layers \(3 here, 2 there\).*model=hf:'):
        with jax.set_mesh(mesh):
            pretrained.init_module(common.build_policy(c, mesh), f'hf:{hf_dir}')


def test_sft_run_from_hf_checkpoint(hf_dir, tmp_path):
    """model/init_from/tokenizer = hf:DIR on chat records: the run trains and the loss falls."""
    data = tmp_path / 'chat.jsonl'
    with open(data, 'w') as f:
        for i in range(64):
            f.write(
                json.dumps({
                    'messages': [{'role': 'user', 'content': CORPUS[i % 4][:20]},
                                 {'role': 'assistant', 'content': 'nash!'}]
                }) + '\n')
    summary = experiment_runs.run(
        tmp_path / 'run', f'sft.py:model=hf:{hf_dir},steps=30', **{
            'init_from': f'hf:{hf_dir}', 'tokenizer': f'hf:{hf_dir}', 'data.train': f'jsonl:{data}',
            'data.max_prompt_len': 48, 'log_every': 5, 'data.max_response_len': 8,
            'data.batch_size': 16, 'optim.warmup_steps': 0
        })
    with open(tmp_path / 'run' / 'metrics.jsonl') as f:
        losses = [json.loads(line)['loss'] for line in f if 'loss' in json.loads(line)]
    assert losses[-1] < 0.7 * losses[0], losses  # measured 4.91 -> 2.99
    assert summary


def test_a_missing_tokenizer_package_names_the_extra(monkeypatch, tmp_path):
    """`pip install -e .` has no tokenizers: loading an HF tokenizer says which extra brings it."""
    from alignjax.errors import ValidationError  # pylint: disable=import-outside-toplevel
    from alignjax.interop import tokenizer as hf_tokenizer  # pylint: disable=import-outside-toplevel
    for name, backend in (('tokenizers', hf_tokenizer._TokenizersBackend),
                          ('sentencepiece', hf_tokenizer._SentencePieceBackend)):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
        with pytest.raises(ValidationError, match=rf"needs the '{name}' package.*alignjax\[hf\]"):
            backend(str(tmp_path / 'tokenizer.json'))
