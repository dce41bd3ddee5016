"""Data: byte tokenizer, record validation, JSONL/TFDS readers, synthetic
tasks and the grain batch pipeline.

Only the light modules are re-exported here; import
``alignjax.data.pipeline`` (grain) and ``alignjax.data.tfds_builder`` (TFDS)
where they are needed.
"""

from alignjax.data.records import DataError
from alignjax.data.records import read_jsonl
from alignjax.data.records import validate_record
from alignjax.data.synthetic import get_task
from alignjax.data.tokenizer import ByteTokenizer

__all__ = ['ByteTokenizer', 'DataError', 'get_task', 'read_jsonl', 'validate_record']
