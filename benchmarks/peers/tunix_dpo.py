"""Tunix's DPOTrainer on the dpo workload (CPU jax of the Tunix venv); prints one JSON line.

Tokenised inputs (`TrainingInput`), the reference a frozen copy evaluated every step (Tunix has no
precomputed-reference option), AdamW at 1e-6 without weight decay or clipping. The step time is
the gap between consecutive batch requests of Tunix's own (pipelined) train loop.
"""

from __future__ import annotations

import numpy as np

import tunix_common as tc


def main():
    spec = tc.spec_from_argv()
    import jax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from tunix.sft.dpo import dpo_trainer  # pylint: disable=g-import-not-at-top

    steps, repeats, n = spec['steps'], spec['repeats'], spec['pairs']
    total = 1 + steps * repeats
    v, p, r = spec['model']['vocab_size'], spec['prompt_len'], spec['response_len']
    rng = np.random.default_rng(spec.get('seed', 0))
    ids = lambda *shape: rng.integers(4, v, shape).astype(np.int32)
    ones = lambda *shape: np.ones(shape, np.int32)
    batches = [
        dpo_trainer.TrainingInput(prompt_ids=ids(n, p), prompt_mask=ones(n, p),
                                  chosen_ids=ids(n, r), chosen_mask=ones(n, r),
                                  rejected_ids=ids(n, r), rejected_mask=ones(n, r))
        for _ in range(total)
    ]
    policy = tc.llama3(spec)
    ref = tc.llama3(spec)
    nnx.update(ref, jax.tree.map(lambda x: x.copy(), nnx.state(policy)))
    config = dpo_trainer.DPOTrainingConfig(eval_every_n_steps=10**9, max_steps=total,
                                           beta=spec['beta'], pbar_description=None)
    tx = optax.adamw(spec['lr'], b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
    trainer = dpo_trainer.DPOTrainer(model=policy, ref_model=ref, optimizer=tx,
                                     training_config=config)
    data = tc.TimedIterator(batches)
    trainer.train(data)
    out = tc.summarise(data.stamps, steps, repeats)
    out.update(peer='tunix.DPOTrainer', backend=jax.default_backend(), versions=tc.versions())
    tc.emit(out)


if __name__ == '__main__':
    main()
