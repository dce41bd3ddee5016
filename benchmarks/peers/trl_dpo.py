"""TRL DPOTrainer on the dpo workload (CPU torch); prints one JSON line.

Spec (argv[1], JSON): model (shape), pairs, prompt_len, response_len, steps, repeats, lr, beta,
precompute_ref, threads, seed.
"""

from __future__ import annotations

import tempfile

import numpy as np

import torch_common as tc


def main():
    spec = tc.spec_from_argv()
    torch = tc.setup_torch(spec)
    from datasets import Dataset  # pylint: disable=g-import-not-at-top
    from trl import DPOConfig, DPOTrainer  # pylint: disable=g-import-not-at-top

    v = spec['model']['vocab_size']
    steps, repeats, pairs = spec['steps'], spec['repeats'], spec['pairs']
    total = 1 + steps * repeats
    rng = np.random.default_rng(spec.get('seed', 0))
    rows = []
    response = lambda: tc.text(tc.random_ids(rng, spec['response_len'] - 1, v) + [2])
    for _ in range(pairs * total):
        # Responses end with EOS ('</s>') themselves, so TRL appends nothing: exactly 64 + 64.
        rows.append({
            'prompt': tc.text(tc.random_ids(rng, spec['prompt_len'], v)),
            'chosen': ' ' + response(), 'rejected': ' ' + response()
        })
    data = Dataset.from_list(rows)
    model = tc.llama(spec)
    ref = tc.llama(spec)
    ref.load_state_dict(model.state_dict())
    timer = tc.StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=pairs,
                         gradient_accumulation_steps=1, gradient_checkpointing=False,
                         learning_rate=spec['lr'], weight_decay=0.0, max_grad_norm=0.0,
                         lr_scheduler_type='constant', warmup_steps=0, adam_beta1=0.9,
                         adam_beta2=0.999, beta=spec['beta'], loss_type=['sigmoid'
                                                                        ], max_length=None,
                         max_steps=total, precompute_ref_log_probs=spec['precompute_ref'],
                         logging_steps=10_000, save_strategy='no', report_to='none', use_cpu=True,
                         seed=spec.get('seed', 0), dataloader_num_workers=0, disable_tqdm=True)
        trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data,
                             processing_class=tc.tokenizer(v), callbacks=[timer])
        batch = next(iter(trainer.get_train_dataloader()))
        seq_len = int(batch['input_ids'].shape[1])
        trainer.train()
    out = tc.summarise(timer.times, steps, repeats)
    out.update(peer='trl.DPOTrainer', seq_len=seq_len, torch_threads=torch.get_num_threads(),
               precompute_ref=spec['precompute_ref'],
               versions=tc.versions('trl', 'transformers', 'torch'))
    tc.emit(out)


if __name__ == '__main__':
    main()
