"""transformers' `generate` (KV cache, CPU torch) on the sample workload; prints one JSON line.

Sampling at temperature 1.0 with top-k and top-p off and no EOS, so every row produces exactly
`new_tokens` tokens. Spec (argv[1], JSON): model, batches, prompt_len, new_tokens, calls, repeats.
"""

from __future__ import annotations

import numpy as np

import peer_common
import torch_common as tc


def main():
    spec = tc.spec_from_argv()
    torch = tc.setup_torch(spec)
    model = tc.llama(spec).eval()
    v, p, n = spec['model']['vocab_size'], spec['prompt_len'], spec['new_tokens']
    rng = np.random.default_rng(spec.get('seed', 0))
    out = {
        'peer': 'transformers.generate', 'versions': tc.versions('transformers', 'torch'),
        'torch_threads': torch.get_num_threads()
    }
    for b in spec['batches']:
        ids = torch.tensor(rng.integers(4, v, (b, p)), dtype=torch.long)
        mask = torch.ones_like(ids)

        def call():
            with torch.inference_mode():
                y = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                   top_k=0, top_p=1.0, max_new_tokens=n, min_new_tokens=n,
                                   eos_token_id=None, pad_token_id=0, use_cache=True)
            assert y.shape == (b, p + n), y.shape
            return y

        timing = peer_common.time_calls(call, spec['calls'], spec['repeats'])
        out[f'batch_{b}'] = {**timing, 'tokens_per_s': round(b * n / timing['median_s'], 1)}
    tc.emit(out)


if __name__ == '__main__':
    main()
