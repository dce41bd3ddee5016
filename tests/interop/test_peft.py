"""PEFT round trips on random transformers models of two families (Llama; Qwen2, with biases):
alignjax's adapters load in peft, peft's load in alignjax (adapted, or folded into a plain
model through `init_from=peft:DIR`), and the merged export loads in transformers, each with the
logits of the adapted model within 1e-4."""

import jax
import numpy as np
import pytest
from flax import nnx

from alignjax import pretrained
from alignjax.interop import peft as peft_io
from alignjax.interop import save_hf
from alignjax.interop import hf
from alignjax.models import Decoder, lora, transformer

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft')

COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
              tie_word_embeddings=False)
FAMILIES = {'llama': {}, 'qwen2': {}}
RANK, ALPHA = 4, 8.0
# Every projection and the output head.
TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'lm_head']
OURS = ('q', 'k', 'v', 'o', 'gate', 'up', 'down', 'lm_head')
TOKENS = np.random.RandomState(0).randint(1, 256, (2, 11)).astype(np.int32)


def hf_base(family, directory):
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(family, **COMMON, **FAMILIES[family])
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation='eager',
                                                          dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('bias'):
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(directory)
    # From the directory: peft records it as the adapter's base_model_name_or_path.
    return transformers.AutoModelForCausalLM.from_pretrained(directory,
                                                             attn_implementation='eager').eval()


def logits_of(model):
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(TOKENS, dtype=torch.long)).logits.float().numpy()


def adapted_model(directory, scan=True):
    cfg = hf.read_config(str(directory)).replace(lora_rank=RANK, lora_alpha=ALPHA, scan_layers=scan,
                                                 lora_targets=OURS)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    hf.load_into(model, str(directory))
    return model


@pytest.mark.parametrize('family', sorted(FAMILIES))
@pytest.mark.parametrize('scan', [True, False])
def test_alignjax_adapter_and_merged_export_load_in_transformers(family, scan, tmp_path):
    base = hf_base(family, tmp_path / 'base')
    model = adapted_model(tmp_path / 'base', scan)
    state = nnx.state(model, lora.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(1), 64))
    nnx.update(
        model,
        jax.tree.map(lambda x: 0.2 * jax.random.normal(next(keys), x.shape), state,
                     is_leaf=lambda x: isinstance(x, jax.Array)))
    ours = np.asarray(model(TOKENS))
    peft_io.save_peft(model, str(tmp_path / 'adapter'),
                      base_model_name_or_path=str(tmp_path / 'base'))
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / 'adapter')).eval()
    np.testing.assert_allclose(logits_of(theirs), ours, atol=1e-4, rtol=1e-4)
    assert np.abs(ours - logits_of(hf_base(family, tmp_path / 'again'))).max() > 1e-2  # moved
    merged = transformer.merged_model(model)
    save_hf(merged, merged.cfg, str(tmp_path / 'merged'), model_type=family)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'merged'),
                                                                 attn_implementation='eager')
    np.testing.assert_allclose(logits_of(reloaded.eval()), ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_peft_adapter_loads_in_alignjax(family, tmp_path):
    base = hf_base(family, tmp_path / 'base')
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                             init_lora_weights=False)  # random B: a nontrivial adapter
    torch.manual_seed(3)
    theirs = peft.get_peft_model(base, config).eval()
    theirs.save_pretrained(str(tmp_path / 'adapter'))
    expected = logits_of(theirs)
    # Into an adapted model of the same rank: unmerged.
    model = adapted_model(tmp_path / 'base')
    peft_io.load_peft(model, str(tmp_path / 'adapter'))
    np.testing.assert_allclose(np.asarray(model(TOKENS)), expected, atol=1e-4, rtol=1e-4)
    # As a starting point of a plain model: folded into the base it names.
    plain = Decoder(hf.read_config(str(tmp_path / 'base')), rngs=nnx.Rngs(0))
    pretrained.init_module(plain, f'peft:{tmp_path / "adapter"}')
    np.testing.assert_allclose(np.asarray(plain(TOKENS)), expected, atol=1e-4, rtol=1e-4)


def test_unsupported_peft_configs_are_refused(tmp_path):
    hf_base('llama', tmp_path / 'base')
    model = adapted_model(tmp_path / 'base')
    peft_io.save_peft(model, str(tmp_path / 'adapter'), base_model_name_or_path='')
    with pytest.raises(FileNotFoundError, match='not a local Hugging Face checkpoint'):
        pretrained.init_module(Decoder(model.cfg.replace(lora_rank=0), rngs=nnx.Rngs(0)),
                               f'peft:{tmp_path / "adapter"}')
    other = Decoder(model.cfg.replace(lora_rank=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match='differ from the model'):
        peft_io.load_peft(other, str(tmp_path / 'adapter'))
