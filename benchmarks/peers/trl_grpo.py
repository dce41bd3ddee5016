"""TRL GRPOTrainer on the grpo workload (CPU torch, transformers generate); one JSON line.

2 prompts x 4 generations, 32-token prompts, 64 new tokens (temperature 1.0, top-k / top-p off,
EOS never sampled: the tokenizer's EOS is outside the model's vocabulary), the same host reward
as alignjax (fraction of even token ids), beta (k3 KL to a reference the trainer loads), one
update per generation, AdamW at 1e-6 without weight decay or clipping. The random-init model is
saved to a temporary directory so that TRL builds its reference the way it does for a real one.
"""

from __future__ import annotations

import tempfile

import numpy as np

import torch_common as tc


def even_fraction(completions, **kw):
    return [
        float(np.mean([int(w[1:]) % 2 == 0 for w in c.split() if w[1:].isdigit()]
                      or [0.0])) for c in completions
    ]


def main():
    spec = tc.spec_from_argv()
    torch = tc.setup_torch(spec)
    from datasets import Dataset  # pylint: disable=g-import-not-at-top
    from trl import GRPOConfig, GRPOTrainer  # pylint: disable=g-import-not-at-top

    v = spec['model']['vocab_size']
    steps, repeats = spec['steps'], spec['repeats']
    total = 1 + steps * repeats
    rng = np.random.default_rng(spec.get('seed', 0))
    prompts = [tc.text(tc.random_ids(rng, spec['prompt_len'], v)) for _ in range(spec['prompts'])]
    data = Dataset.from_list([{'prompt': p} for p in prompts * total])
    timer = tc.StepTimer()
    rows = spec['prompts'] * spec['samples']
    with tempfile.TemporaryDirectory() as tmp:
        tok = tc.tokenizer(v)
        tc.llama(spec).save_pretrained(f'{tmp}/model')
        tok.save_pretrained(f'{tmp}/model')
        args = GRPOConfig(output_dir=f'{tmp}/out', per_device_train_batch_size=rows,
                          gradient_accumulation_steps=1, gradient_checkpointing=False,
                          num_generations=spec['samples'], max_completion_length=spec['new_tokens'],
                          temperature=1.0, top_k=0, top_p=1.0, beta=spec['beta'], num_iterations=1,
                          steps_per_generation=1, learning_rate=spec['lr'], weight_decay=0.0,
                          max_grad_norm=0.0, lr_scheduler_type='constant', warmup_steps=0,
                          max_steps=total, logging_steps=10_000, save_strategy='no',
                          report_to='none', use_cpu=True, seed=spec.get('seed', 0),
                          disable_tqdm=True, shuffle_dataset=False,
                          generation_kwargs={'min_new_tokens': spec['new_tokens']})
        trainer = GRPOTrainer(model=f'{tmp}/model', reward_funcs=even_fraction, args=args,
                              train_dataset=data, processing_class=tok, callbacks=[timer])
        trainer.train()
    out = tc.summarise(timer.times, steps, repeats)
    out.update(peer='trl.GRPOTrainer', torch_threads=torch.get_num_threads(),
               versions=tc.versions('trl', 'transformers', 'torch'))
    tc.emit(out)


if __name__ == '__main__':
    main()
