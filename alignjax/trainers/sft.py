"""Supervised fine-tuning: demonstrations as the batch source, token NLL as the loss."""

from __future__ import annotations

import jax

from alignjax import evaluators
from alignjax import pretrained
from alignjax.data import inputs
from alignjax.evaluators import gold
from alignjax.data import pipeline
from alignjax.losses import sft as sft_losses
from alignjax.models import scoring
from alignjax.trainers import common
from alignjax.trainers import loop


def sft_loss_fn(model, frozen, batch, rng):
    del frozen, rng
    logp = scoring.response_logprobs(model, batch['prompt'], batch['prompt_mask'],
                                     batch['response'], batch['response_mask'])
    # config.data.sft_turns='all': every assistant turn of a conversation (data.pipeline).
    nll, count = sft_losses.sft_loss(logp, batch.get('loss_mask', batch['response_mask']))
    return nll, count, {'nll': (nll, count)}


def build(config, mesh) -> loop.Algorithm:
    tok = inputs.make_tokenizer(config)
    d = config.data
    records = inputs.load_records(config, 'sft', d.train, num_examples=d.num_examples,
                                  seed=config.seed)
    tokenize = pipeline.make_tokenize_fn('sft', tok, max_prompt_len=d.max_prompt_len,
                                         max_response_len=d.max_response_len,
                                         prompt_truncation=inputs.prompt_truncation(d),
                                         chat_template=d.chat_template, sft_turns=d.sft_turns)
    stream = pipeline.batch_stream(records, tokenize_fn=tokenize, global_batch_size=d.batch_size,
                                   seed=config.seed, process_index=jax.process_index(),
                                   process_count=jax.process_count())
    policy = common.build_policy(config, mesh)
    pretrained.init_module(policy, config.init_from)
    algo = loop.Algorithm(model=policy, loss_fn=sft_loss_fn, batches=loop.from_stream(stream),
                          trainable=common.trainable(config))
    task = inputs.synthetic_task(config)

    def initial_policy():
        # The reference of SFT is its starting point, rebuilt deterministically.
        start = common.build_policy(config, mesh)
        pretrained.init_module(start, config.init_from)
        return start

    available = {} if task is None else {
        'gold': lambda: gold.make_policy_only(config, task, tok, initial_policy=initial_policy)
    }
    algo.evaluators = evaluators.select(config, available)
    return algo
