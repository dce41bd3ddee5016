"""Tests for the byte tokenizer, JSONL records, tokenisation, batching, TFDS."""

import itertools
import json
import re
import sys

import numpy as np
import pytest

from alignjax.data import inputs
from alignjax.data import pipeline
from alignjax.data import records
from alignjax.data import tfds_builder
from alignjax.data.records import DataError
from alignjax.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()

# --- tokenizer ---------------------------------------------------------------


def test_tokenizer_specials_and_vocab():
    assert (TOK.pad_id, TOK.bos_id, TOK.eos_id) == (0, 1, 2)
    assert TOK.vocab_size == 264 and TOK.vocab_size % 8 == 0
    assert TOK.encode('') == []
    assert TOK.encode('a') == [ord('a') + 3]
    assert TOK.encode('\x00\xff') == [3, 0xC3 + 3, 0xBF + 3]  # UTF-8 of U+00FF


@pytest.mark.parametrize('text', ['hello', '', 'héllo wörld ✓ 日本', 'a\nb\x00'])
def test_tokenizer_round_trip(text):
    ids = TOK.encode(text)
    assert all(3 <= i < 259 for i in ids)
    assert TOK.decode(ids) == text
    assert TOK.decode(np.array(ids, dtype=np.int32)) == text


def test_tokenizer_decode_skips_specials_and_stops_at_eos():
    ids = [0, 1] + TOK.encode('ab') + [259, 263] + TOK.encode('c') + [2] + TOK.encode('zz')
    assert TOK.decode(ids) == 'abc'
    # Invalid UTF-8 is replaced, not raised.
    assert TOK.decode([0xFF + 3]) == '\ufffd'


def test_format_chat():
    prompt, response = TOK.format_chat([
        {'role': 'system', 'content': 'be brief'},
        {'role': 'user', 'content': 'hi'},
        {'role': 'assistant', 'content': 'hello'},
    ])
    assert prompt == 'system: be brief\nuser: hi\nassistant: '
    assert response == 'hello'
    with pytest.raises(DataError, match="role 'assistant'"):
        TOK.format_chat([{'role': 'user', 'content': 'hi'}])


# --- records -----------------------------------------------------------------


def _write(path, lines):
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return str(path)


def test_read_jsonl_valid(tmp_path):
    path = _write(tmp_path / 'p.jsonl', [
        json.dumps({'prompt': 'x', 'chosen': 'a', 'rejected': 'b'}),
        '',
        json.dumps(
            {'prompt': 'y', 'chosen': 'c', 'rejected': 'd', 'margin': 2, 'source': 'dropped'}),
    ])
    assert records.read_jsonl(path, 'preference') == [
        {'prompt': 'x', 'chosen': 'a', 'rejected': 'b', 'margin': 0.0},
        {'prompt': 'y', 'chosen': 'c', 'rejected': 'd', 'margin': 2.0},
    ]
    path = _write(tmp_path / 's.jsonl', [
        json.dumps({
            'messages': [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'r'}]
        }),
        json.dumps({'prompt': 'q', 'response': 'r', 'extra': 1}),
    ])
    got = records.read_jsonl(path, 'sft')
    assert got[1] == {'prompt': 'q', 'response': 'r'}
    assert got[0]['messages'][1] == {'role': 'assistant', 'content': 'r'}
    path = _write(tmp_path / 'q.jsonl', [json.dumps({'prompt': 'q', 'id': 7})])
    assert records.read_jsonl(path, 'prompt') == [{'prompt': 'q', 'id': 7}]


@pytest.mark.parametrize('kind, bad_line, message', [
    ('preference', '{"prompt": "x", "chosen": "a" "rejected": "b"}',
     r"invalid JSON \(Expecting ',' delimiter"),
    ('preference', '{"prompt": "x", "rejected": "b"}',
     "missing key 'chosen' for a preference record"),
    ('preference', '{"prompt": "x", "chosen": 3, "rejected": "b"}',
     "key 'chosen' must be a string, got int"),
    ('preference', '{"prompt": "x", "chosen": "a", "rejected": "b", "margin": "1"}',
     "key 'margin' must be a number, got str"),
    ('sft', '{"prompt": "", "response": "b"}', "key 'prompt' is an empty string"),
    ('sft', '{"messages": [{"role": "user", "content": "q"}]}',
     "the last message must have role 'assistant'"),
    ('prompt', '["not", "an", "object"]', 'a record must be a JSON object, got list'),
])
def test_read_jsonl_errors_name_file_and_line(tmp_path, kind, bad_line, message):
    good = {
        'preference': '{"prompt": "p", "chosen": "a", "rejected": "b"}',
        'sft': '{"prompt": "p", "response": "r"}', 'prompt': '{"prompt": "p"}'
    }[kind]
    path = _write(tmp_path / 'x.jsonl', [good, '', good, bad_line, good])
    with pytest.raises(DataError, match=f'^{re.escape(path)}:4: {message}'):
        records.read_jsonl(path, kind)


def test_read_jsonl_empty_and_missing_file(tmp_path):
    path = _write(tmp_path / 'empty.jsonl', ['', '  '])
    with pytest.raises(DataError, match=f'^{re.escape(path)}: empty file'):
        records.read_jsonl(path, 'sft')
    with pytest.raises(DataError, match='no such file'):
        records.read_jsonl(tmp_path / 'nope.jsonl', 'sft')
    with pytest.raises(DataError, match='unknown record kind'):
        records.read_jsonl(path, 'dpo')


def test_a_file_is_read_whole_by_default(tmp_path, caplog):
    """Issue 19: config.data.num_examples (once 4096 for every source) cut a 5,000-record file
    to 3,892 training records without a word; a file is now read whole unless the key says
    otherwise, and a cut is logged."""
    import experiment_runs  # pylint: disable=import-outside-toplevel
    path = tmp_path / 'prefs.jsonl'
    records.write_jsonl(path,
                        [{'prompt': f'p{i}', 'chosen': 'a', 'rejected': 'b'} for i in range(5000)])
    config = experiment_runs.config_of('dpo.py:tiny', **{'data.train': f'jsonl:{path}'})
    train, held_out = inputs.train_eval_records(config, 'preference')
    assert (len(train), len(held_out)) == (4750, 250)  # eval_fraction 0.05, the last records
    assert held_out[-1]['prompt'] == 'p4999'
    config.data.num_examples = 1000
    with caplog.at_level('WARNING'):
        train, held_out = inputs.train_eval_records(config, 'preference')
    assert (len(train), len(held_out)) == (950, 50)
    assert 'the first 1000 of its 5000 records' in caplog.text
    with pytest.raises(DataError, match='num_examples must be >= 0'):
        pipeline.load_records(f'jsonl:{path}', 'preference', num_examples=-1)


def test_load_records_specs(tmp_path):
    path = _write(tmp_path / 's.jsonl',
                  [json.dumps({'prompt': f'p{i}', 'response': 'r'}) for i in range(5)])
    assert len(pipeline.load_records(f'jsonl:{path}', 'sft')) == 5
    assert len(pipeline.load_records(f'jsonl:{path}', 'sft', num_examples=2)) == 2
    recs = pipeline.load_records('synthetic:transitive', 'preference', num_examples=7)
    assert len(recs) == 7 and set(recs[0]) == {'prompt', 'chosen', 'rejected', 'margin'}
    assert len(pipeline.load_records('synthetic:intransitive', 'prompt')) == 4096
    assert len(pipeline.load_records('synthetic:intransitive', 'prompt', num_examples=0)) == 4096
    with pytest.raises(DataError, match="'xx:foo'.*unknown prefix 'xx'"):
        pipeline.load_records('xx:foo', 'sft')
    with pytest.raises(DataError, match='synthetic:nope'):
        pipeline.load_records('synthetic:nope', 'sft')


# --- tokenisation ------------------------------------------------------------


def _ids(text):
    return [ord(c) + 3 for c in text]


def test_encode_prompt_left_pad_and_truncate():
    ids, mask = pipeline.encode_prompt(TOK, 'abc', 6)
    np.testing.assert_array_equal(ids, [0, 0, 0] + _ids('abc'))
    np.testing.assert_array_equal(mask, [0, 0, 0, 1, 1, 1])
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    ids, mask = pipeline.encode_prompt(TOK, 'abcdefgh', 5)
    np.testing.assert_array_equal(ids, _ids('defgh'))
    np.testing.assert_array_equal(mask, [1] * 5)
    ids, _ = pipeline.encode_prompt(TOK, 'abcdefgh', 4, add_bos=True)
    np.testing.assert_array_equal(ids, [1] + _ids('fgh'))
    with pytest.raises(DataError, match='exceeds max_len 5'):
        pipeline.encode_prompt(TOK, 'abcdefgh', 5, truncation='error')


def test_encode_response_eos_and_truncate():
    ids, mask = pipeline.encode_response(TOK, 'abc', 6)
    np.testing.assert_array_equal(ids, _ids('abc') + [2, 0, 0])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 0, 0])
    ids, mask = pipeline.encode_response(TOK, 'abc', 4)  # Exactly fits with EOS.
    np.testing.assert_array_equal(ids, _ids('abc') + [2])
    ids, mask = pipeline.encode_response(TOK, 'abcdef', 4)  # Cut: no EOS.
    np.testing.assert_array_equal(ids, _ids('abcd'))
    np.testing.assert_array_equal(mask, [1, 1, 1, 1])
    with pytest.raises(DataError, match='exceeds max_len 4'):
        pipeline.encode_response(TOK, 'abcdef', 4, truncation='error')


def test_tokenize_fns_layout():
    sft = pipeline.make_tokenize_fn('sft', TOK, max_prompt_len=12, max_response_len=4)
    out = sft(
        {'messages': [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'r'}]}, 0)
    assert TOK.decode(out['prompt']) == 'user: q\nassistant: '[-12:]
    np.testing.assert_array_equal(out['response'], _ids('r') + [2, 0, 0])
    pref = pipeline.make_tokenize_fn('preference', TOK, max_prompt_len=4, max_response_len=3)
    out = pref({'prompt': 'p', 'chosen': 'a', 'rejected': 'bb', 'margin': 0.5}, 3)
    assert set(out) == {
        'prompt', 'prompt_mask', 'chosen', 'chosen_mask', 'rejected', 'rejected_mask', 'margin'
    }
    np.testing.assert_array_equal(out['rejected'], _ids('bb') + [2])
    assert out['margin'].dtype == np.float32 and out['margin'] == 0.5
    prm = pipeline.make_tokenize_fn('prompt', TOK, max_prompt_len=4)
    out = prm({'prompt': 'p'}, 17)
    assert set(out) == {'prompt', 'prompt_mask', 'index'} and out['index'] == 17


# --- batching ----------------------------------------------------------------


def _prompt_stream(n=10, batch=4, seed=0, **kwargs):
    recs = [{'prompt': f'p{i:02d}'} for i in range(n)]
    fn = pipeline.make_tokenize_fn('prompt', TOK, max_prompt_len=4)
    return pipeline.batch_stream(recs, tokenize_fn=fn, global_batch_size=batch, seed=seed, **kwargs)


def _eq(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_batch_stream_deterministic_and_random_access():
    s1, s2 = _prompt_stream(), _prompt_stream()
    batch = s1[7]
    assert batch['prompt'].shape == (4, 4) and batch['prompt'].dtype == np.int32
    assert batch['index'].dtype == np.int32
    assert _eq(batch, s2[7])
    assert not _eq(_prompt_stream(seed=1)[0], s1[0])
    iterated = list(itertools.islice(iter(s1), 8))
    for k in range(8):
        assert _eq(iterated[k], s1[k])
    resumed = list(itertools.islice(iter(s1[5:]), 3))
    for k in range(3):
        assert _eq(resumed[k], s1[5 + k])


def test_batch_stream_epochs_cover_and_reshuffle():
    s = _prompt_stream(n=8, batch=4)
    epoch = lambda e: np.concatenate([s[2 * e]['index'], s[2 * e + 1]['index']])
    e0, e1 = epoch(0), epoch(1)
    assert sorted(e0) == list(range(8)) and sorted(e1) == list(range(8))
    assert not np.array_equal(e0, e1)
    # The prompt of row i is record index[i].
    np.testing.assert_array_equal(s[0]['prompt'][:, -2:] - 3 - ord('0'),
                                  np.stack([s[0]['index'] // 10, s[0]['index'] % 10], axis=1))


def test_batch_stream_process_slices():
    full = _prompt_stream(n=10, batch=6)
    parts = [_prompt_stream(n=10, batch=6, process_index=p, process_count=2) for p in range(2)]
    for step in (0, 1, 5, 123):
        assert parts[0][step]['prompt'].shape == (3, 4)
        joined = {k: np.concatenate([parts[0][step][k], parts[1][step][k]]) for k in full[step]}
        assert _eq(joined, full[step])
    with pytest.raises(DataError, match='multiple of process_count 4'):
        _prompt_stream(batch=6, process_count=4)


# --- TFDS --------------------------------------------------------------------


def test_tfds_build_and_read_round_trip(tmp_path, monkeypatch):
    pref = [{'prompt': f'p{i} é', 'chosen': f'c{i}', 'rejected': 'r', 'margin': i / 4}
            for i in range(50)]
    sft = [{'prompt': 'p', 'response': 'r'},
           {'messages': [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'}]}]
    records.write_jsonl(tmp_path / 'train.jsonl', pref)
    records.write_jsonl(tmp_path / 'test.jsonl', pref[:3])
    records.write_jsonl(tmp_path / 'sft.jsonl', sft)
    data_dir = tmp_path / 'tfds'
    tfds_builder.build_jsonl_dataset(
        'my_prefs', {'train': tmp_path / 'train.jsonl', 'test': tmp_path / 'test.jsonl'},
        'preference', data_dir)
    tfds_builder.build_jsonl_dataset('my_sft', {'train': tmp_path / 'sft.jsonl'}, 'sft', data_dir)
    assert 'tensorflow' not in sys.modules
    files = sorted(p.name for p in (data_dir / 'my_prefs' / '1.0.0').iterdir())
    assert 'dataset_info.json' in files and 'features.json' in files
    assert 'my_prefs-train.array_record-00000-of-00001' in files

    src = pipeline.load_records('tfds:my_prefs', 'preference', data_dir=data_dir)
    assert len(src) == 50 and [src[i] for i in range(50)] == pref  # i/4 exact in f32
    monkeypatch.setenv('TFDS_DATA_DIR', str(data_dir))
    assert [*pipeline.load_records('tfds:my_prefs:test', 'preference')] == pref[:3]
    assert len(pipeline.load_records('tfds:my_prefs', 'preference', num_examples=5)) == 5
    assert pipeline.load_records('tfds:my_prefs', 'prompt')[1]['prompt'] == 'p1 é'
    got = pipeline.load_records('tfds:my_sft', 'sft')
    assert [got[0], got[1]] == sft
    # The source plugs into the batch pipeline.
    fn = pipeline.make_tokenize_fn('preference', TOK, max_prompt_len=8, max_response_len=8)
    assert pipeline.batch_stream(src, tokenize_fn=fn, global_batch_size=4,
                                 seed=0)[3]['chosen'].shape == (4, 8)
    with pytest.raises(DataError, match='already exists'):
        tfds_builder.build_jsonl_dataset('my_sft', {'train': tmp_path / 'sft.jsonl'}, 'sft',
                                         data_dir)
    tfds_builder.build_jsonl_dataset('my_sft', {'train': tmp_path / 'train.jsonl'}, 'prompt',
                                     data_dir, overwrite=True)
    rebuilt = pipeline.load_records('tfds:my_sft', 'prompt')  # Extras kept.
    assert len(rebuilt) == 50 and rebuilt[49] == pref[49]
    with pytest.raises(DataError, match=r"lack \['response'\]"):
        pipeline.load_records('tfds:my_sft', 'sft')
    with pytest.raises(DataError, match='tfds:missing'):
        pipeline.load_records('tfds:missing', 'sft')
    assert 'tensorflow' not in sys.modules


def test_optional_sources_name_their_extra(monkeypatch, tmp_path):
    """tfds:, parquet: and hf: without their packages: one line naming the package and extra."""
    from alignjax.errors import ValidationError
    for module, spec, extra in (('tensorflow_datasets', 'tfds:foo', 'tfds'),
                                ('pyarrow.parquet', f'parquet:{tmp_path}/x.parquet',
                                 'data'), ('pyarrow.ipc', f'hf:{tmp_path}', 'data')):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
        (tmp_path / 'x.parquet').write_bytes(b'')
        with pytest.raises(
                ValidationError, match=rf"needs the '\w[\w-]*' package, which "
                rf"alignjax's \[{extra}\] extra brings"):
            pipeline.load_records(spec, 'preference')
        monkeypatch.delitem(sys.modules, module)
