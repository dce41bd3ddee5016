"""What the Tunix peers share: the workload as a Tunix Llama3 (float32, untied, random init),
a step timer over a data iterator, and the JSON summary. Run under the Tunix venv's python."""

from __future__ import annotations

import json
import statistics
import sys
import time


def spec_from_argv() -> dict:
    return json.loads(sys.argv[1])


def llama3(spec: dict, seed: int = 0):
    """tunix.models.llama3.Llama3 of the workload shape (Tunix initialises its MLP kernels at zero;
    the matmuls cost the same)."""
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from tunix.models.llama3 import model as llama  # pylint: disable=g-import-not-at-top
    m = spec['model']
    cfg = llama.ModelConfig(num_layers=m['num_layers'], vocab_size=m['vocab_size'],
                            embed_dim=m['embed_dim'], hidden_dim=m['mlp_dim'],
                            num_heads=m['num_heads'], head_dim=m['head_dim'],
                            num_kv_heads=m['num_kv_heads'], rope_theta=int(m['rope_theta']),
                            norm_eps=m['norm_eps'], weight_tying=False)
    return llama.Llama3(cfg, rngs=nnx.Rngs(seed))


class TimedIterator:
    """Yields `items` and records when each is asked for: the gaps are the (pipelined) steps."""

    def __init__(self, items):
        self.items = list(items)
        self.stamps = []

    def __iter__(self):
        for item in self.items:
            self.stamps.append(time.perf_counter())
            yield item
        self.stamps.append(time.perf_counter())


def summarise(stamps: list[float], steps: int, repeats: int) -> dict:
    """stamps[i] is when step i's batch was requested; the last one when the loop asked past the
    end. Step i took stamps[i+1] - stamps[i]; step 0 is the warm-up (compilation)."""
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    warm, rest = times[0], times[1:1 + steps * repeats]
    rounds = [rest[i * steps:(i + 1) * steps] for i in range(repeats)]
    return {'warmup_s': round(warm, 3),
            'round_medians_s': [round(statistics.median(r), 5) for r in rounds if r],
            'median_s': statistics.median(rest) if rest else None, 'steps_timed': len(rest)}


def versions() -> dict:
    import importlib.metadata as md  # pylint: disable=g-import-not-at-top
    return {n: md.version(n) for n in ('google-tunix', 'jax', 'flax')}


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)
