r"""LoRA DPO from a Hugging Face checkpoint directory, against full fine-tuning of the same model.

Claim (Hu et al. 2021, "LoRA"; the one-chip recipe of TRL's and Tunix's users): rank-r adapters
on a frozen base fit the preference pairs with the same steps as full fine-tuning while training
a small fraction of the parameters (under 1% at 2B-8B scale, `benchmarks/memory_plan.py`), so the
optimizer state shrinks from three float32 copies of the model to that of the adapters, and the
reference policy costs nothing (it is the base with the adapters off).

The checkpoint: the directory in ALIGNJAX_HF_CHECKPOINT (a transformers checkpoint of the Llama,
Qwen, Mistral or Gemma families, e.g. a downloaded Qwen2.5-0.5B-Instruct; its tokenizer is used),
or by default a small random-init Llama written with transformers' `save_pretrained` (torch and
transformers needed) on the byte tokenizer's vocabulary. Both runs are `experiments/dpo.py` from
`init_from=hf:DIR` on the synthetic transitive task's preference pairs (a real run points
`--config.data.train` at its own pairs; see the README), one with `lora=8` (its learning rate
x3), one without; the held-out implicit-reward accuracy is evaluated along training.

    python -m alignjax.repro.lora_dpo --outdir=/tmp/repro          # 2 x 300 steps, ~5 min
    python -m alignjax.repro.lora_dpo --outdir=/tmp/repro --quick  # 2 x 20 steps
"""

from __future__ import annotations

import os

import numpy as np

from alignjax.repro import common

NAME = 'lora_dpo'
CHECKPOINT_ENV = 'ALIGNJAX_HF_CHECKPOINT'
FULL = dict(steps=300, eval_every=50, rank=8, num_prompts=128)
QUICK = dict(steps=20, eval_every=10, rank=8, num_prompts=16)


def random_checkpoint(directory: str) -> str:
    """A small random-init Llama saved by transformers (once), on the byte tokenizer's ids."""
    if os.path.exists(os.path.join(directory, 'config.json')):
        return directory
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=264, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def trainable_bytes(checkpoint: str, rank: int) -> dict:
    """Parameters of the model and of its adapters, and the bytes the optimizer updates (the
    trained parameters and Adam's two moments, float32)."""
    import jax  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from alignjax.interop import hf  # pylint: disable=g-import-not-at-top
    from alignjax.models import Decoder, lora  # pylint: disable=g-import-not-at-top
    cfg = hf.read_config(checkpoint).replace(lora_rank=rank)
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    count = lambda what: int(sum(x.size for x in jax.tree.leaves(nnx.state(model, what))))
    base, adapters = count(nnx.Param), count(lora.LoRAParam)
    return {
        'base_params': base, 'adapter_params': adapters, 'adapter_fraction': adapters / base,
        'full_optimizer_bytes': 12 * base, 'lora_optimizer_bytes': 12 * adapters
    }


def dpo_run(outdir: str, checkpoint: str, rank: int, s: dict, tokenizer: str) -> dict:
    name = f'lora{rank}' if rank else 'full'
    workdir = os.path.join(outdir, 'runs', NAME, f'{name}_steps{s["steps"]}')
    overrides = {
        'init_from': f'hf:{checkpoint}', 'tokenizer': tokenizer, 'eval_every': s['eval_every'],
        'log_every': 5, 'ckpt_every': s['steps'], 'eval.num_prompts': s['num_prompts'],
        'data.batch_size': 32
    }
    spec = f'dpo.py:model=hf:{checkpoint},steps={s["steps"]},lora={rank}'
    summary = common.run(workdir, spec, overrides)
    rows = common.read_metrics(workdir)
    steps, loss = common.series(rows, 'loss')
    eval_steps, accuracy = common.series(rows, 'eval/heldout/implicit_accuracy')
    if not len(eval_steps) or eval_steps[-1] < s['steps']:  # the final evaluation: the summary
        eval_steps = np.append(eval_steps, s['steps'])
        accuracy = np.append(accuracy, summary['heldout/implicit_accuracy'])
    return {
        'name': name, 'step': steps, 'loss': loss, 'eval_step': eval_steps,
        'implicit_accuracy': accuracy, 'summary': summary
    }


def run(outdir: str, quick: bool = False) -> dict:
    s = QUICK if quick else FULL
    checkpoint = os.environ.get(CHECKPOINT_ENV, '')
    tokenizer = f'hf:{checkpoint}' if checkpoint else 'byte'
    if not checkpoint:
        checkpoint = random_checkpoint(os.path.join(outdir, 'runs', NAME, 'random_llama'))
    runs = [dpo_run(outdir, checkpoint, rank, s, tokenizer) for rank in (0, s['rank'])]
    figures = {'checkpoint': checkpoint, **trainable_bytes(checkpoint, s['rank'])}
    for r in runs:
        summary = r['summary']
        figures[r['name']] = {
            'heldout_implicit_accuracy': summary.get('heldout/implicit_accuracy'),
            'heldout_rewards_margin': summary.get('heldout/rewards_margin'),
            'final_loss': float(r['loss'][-1]) if len(r['loss']) else None,
            'gold_reward': summary.get('gold_reward'),
            'gold_reward_ref': summary.get('gold_reward_ref'),
        }
    result = {
        'name': NAME, 'quick': quick, 'settings': dict(s), 'figures': figures,
        'curves': [{k: v for k, v in r.items() if k != 'summary'} for r in runs]
    }
    return common.save(outdir, NAME, result, plot)


def plot(result: dict, path: str) -> None:
    plt = common.pyplot()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    f = result['figures']
    for i, c in enumerate(result['curves']):
        label = ('full fine-tuning' if c['name'] == 'full' else
                 f'LoRA rank {result["settings"]["rank"]} ({100 * f["adapter_fraction"]:.1f}% '
                 f'of the parameters)')
        ax_l.plot(c['step'], c['loss'], color=f'C{i}', label=label)
        ax_a.plot(np.concatenate([[0], c['eval_step']]),
                  np.concatenate([[0.5], c['implicit_accuracy']]), color=f'C{i}', marker='o',
                  label=label)
    ax_l.set(xlabel='step', ylabel='DPO loss', title='training loss')
    ax_a.set(xlabel='step', ylabel='held-out implicit-reward accuracy',
             title='preference fit on held-out pairs')
    ax_l.legend(fontsize=8)
    ax_a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == '__main__':
    common.main(run, __doc__)
