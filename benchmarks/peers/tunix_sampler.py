"""Tunix's `Sampler` (KV cache, CPU jax of the Tunix venv) on the sample workload; one JSON line.

Tunix samples either greedily, by top-k or by top-p; top_p=1.0 at temperature 1.0 is the full
distribution. EOS is disabled (eos_tokens=[-1]), so every row produces `new_tokens` tokens.
Prompts are word strings 't<i>' that a minimal word-level tokenizer maps back to ids.
"""

from __future__ import annotations

import numpy as np

import peer_common
import tunix_common as tc


class WordTokenizer:
    """encode / decode / bos_id / eos_id / pad_id: what Tunix's TokenizerAdapter asks of one."""
    def encode(self, text, **kw):
        return [int(w[1:]) for w in text.split()]

    def decode(self, ids, **kw):
        return ' '.join(f't{int(i)}' for i in ids)

    def bos_id(self):
        return 0  # falsy: Tunix adds no BOS

    def eos_id(self):
        return 2

    def pad_id(self):
        return 0


def main():
    spec = tc.spec_from_argv()
    import jax  # pylint: disable=g-import-not-at-top
    from tunix.generate import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
    m = spec['model']
    v, p, n = m['vocab_size'], spec['prompt_len'], spec['new_tokens']
    model = tc.llama3(spec)
    sampler = sampler_lib.Sampler(
        transformer=model, tokenizer=WordTokenizer(),
        cache_config=sampler_lib.CacheConfig(cache_size=p + n, num_layers=m['num_layers'],
                                             num_kv_heads=m['num_kv_heads'],
                                             head_dim=m['head_dim']))
    rng = np.random.default_rng(spec.get('seed', 0))
    out = {'peer': 'tunix.Sampler', 'backend': jax.default_backend(), 'versions': tc.versions()}
    for b in spec['batches']:
        prompts = [' '.join(f't{i}' for i in rng.integers(4, v, p)) for _ in range(b)]
        seed = iter(range(10**6))

        def call():
            res = sampler(prompts, max_generation_steps=n, max_prompt_length=p, eos_tokens=[-1],
                          temperature=1.0, top_p=1.0, seed=next(seed))
            assert all(len(t) == n for t in res.tokens), [len(t) for t in res.tokens]
            return res

        timing = peer_common.time_calls(call, spec['calls'], spec['repeats'])
        out[f'batch_{b}'] = {**timing, 'tokens_per_s': round(b * n / timing['median_s'], 1)}
    tc.emit(out)


if __name__ == '__main__':
    main()
