"""The config's spec strings, parsed in one place (alignjax/specs.py)."""

from alignjax import specs


def test_starting_points():
    assert specs.Start.parse('') == specs.Start('none', '')
    assert specs.Start.parse('hf:/m/llama') == specs.Start('hf', '/m/llama')
    assert specs.Start.parse('experiment:experiments/sft.py:tiny,task=x') == specs.Start(
        'experiment', 'experiments/sft.py:tiny,task=x')
    assert specs.Start.parse('/runs/sft') == specs.Start('workdir', '/runs/sft')
    assert specs.Start.parse('/runs/hf:odd') == specs.Start('workdir', '/runs/hf:odd')


def test_data_sources_and_hf_dirs():
    assert specs.Data.parse('synthetic:transitive').synthetic_task == 'transitive'
    assert specs.Data.parse('jsonl:/d/a.jsonl') == specs.Data('jsonl', '/d/a.jsonl')
    assert specs.Data.parse('jsonl:/d/a.jsonl').synthetic_task is None
    assert specs.Data.parse('hf:/d/ds:test') == specs.Data('hf', '/d/ds:test')
    assert specs.hf_dir('hf:/m/qwen') == '/m/qwen'
    assert specs.hf_dir('llama3_8b') is None and specs.hf_dir('byte') is None
