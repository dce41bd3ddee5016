"""Shared by the DPO trainer's tests: a tokenised batch of the transitive task's preference pairs
with fixed reference log-probs, and the :tiny preset's loss section with overrides."""

import os

import jax.numpy as jnp
import numpy as np

from alignjax import experiment_lib
from alignjax.data import pipeline
from alignjax.data import synthetic
from alignjax.data.tokenizer import ByteTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def preference_batch(n=8, prompt_len=8, response_len=12, seed=0):
    records = synthetic.get_task('transitive').preference_records(n, seed=seed)
    fn = pipeline.make_tokenize_fn('preference', ByteTokenizer(), max_prompt_len=prompt_len,
                                   max_response_len=response_len)
    rows = [fn(r, i) for i, r in enumerate(records)]
    batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
    batch['ref_chosen_logps'] = -jnp.linspace(5.0, 9.0, n)
    batch['ref_rejected_logps'] = -jnp.linspace(6.0, 8.0, n)
    return batch


def loss_config(**kw):
    c = experiment_lib.load_config(os.path.join(ROOT, 'experiments', 'dpo.py') + ':tiny').loss
    c.unlock()
    c.update(kw)
    return c
