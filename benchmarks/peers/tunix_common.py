"""What the Tunix peers share: the workload as a Tunix Llama3 (float32, untied, random init),
a step timer over a data iterator, and the JSON summary. Run under the Tunix venv's python."""

from __future__ import annotations

import time

import peer_common
from peer_common import emit, spec_from_argv  # pylint: disable=unused-import


def llama3(spec: dict, seed: int = 0, weight_tying: bool = False):
    """tunix.models.llama3.Llama3 of the workload shape (Tunix initialises its MLP kernels at zero;
    the matmuls cost the same). weight_tying=True leaves out the output head (a critic's
    backbone)."""
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from tunix.models.llama3 import model as llama  # pylint: disable=g-import-not-at-top
    m = spec['model']
    cfg = llama.ModelConfig(num_layers=m['num_layers'], vocab_size=m['vocab_size'],
                            embed_dim=m['embed_dim'], hidden_dim=m['mlp_dim'],
                            num_heads=m['num_heads'], head_dim=m['head_dim'],
                            num_kv_heads=m['num_kv_heads'], rope_theta=int(m['rope_theta']),
                            norm_eps=m['norm_eps'], weight_tying=weight_tying)
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
    return peer_common.summarise([b - a for a, b in zip(stamps, stamps[1:])], steps, repeats)


def versions() -> dict:
    return peer_common.versions('google-tunix', 'jax', 'flax')
