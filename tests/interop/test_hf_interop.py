"""Tests for alignjax.interop.hf: logits parity with transformers for seven families, both ways.

Each family is a small random transformers model (float32, eager attention) in which every
parameter, norm scales and biases included, is randomised; it is saved with `save_pretrained`,
imported with `load_hf` and compared with transformers on a padded batch whose first row has 512
real tokens (sliding windows are shorter, so local layers really drop keys). The import is then
exported with `save_hf` and reloaded by transformers, which must get back bit-identical tensors
and logits. Published config.json files (legacy `rope_theta` / `rope_scaling` spellings) must map
onto the matching presets, and transformers' own normalisation of them onto the same configs.
"""

import functools
import json

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from alignjax import sampling, sharding
from alignjax.interop import config_from_hf, hf_config, load_hf, load_into, save_hf
from alignjax.interop import safetensors_io
from alignjax.models import PRESETS, Decoder

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5)
# Per family: transformers config overrides, and the ModelConfig fields they must map to.
FAMILIES = {
    # Llama-3.1 frequency scaling; at head_dim 16 pairs are kept, blended and divided.
    'llama': ({
        'rope_parameters': {
            'rope_type': 'llama3', 'rope_theta': 10_000.0, 'factor': 8.0, 'low_freq_factor': 1.0,
            'high_freq_factor': 4.0, 'original_max_position_embeddings': 64
        }
    }, {
        'tie_embeddings': False,
        'rope_scaling': (('factor', 8.0), ('high_freq_factor', 4.0), ('low_freq_factor', 1.0),
                         ('original_max_position', 64), ('type', 'llama3'))
    }),
    'qwen2': ({
        'tie_word_embeddings': True,
        'rope_parameters': {'rope_type': 'linear', 'rope_theta': 10_000.0, 'factor': 2.0}
    }, {
        'attention_bias': True, 'tie_embeddings': True,
        'rope_scaling': (('factor', 2.0), ('type', 'linear'))
    }),
    # Qwen's sliding window on every layer (max_window_layers=0).
    'qwen3': ({
        'rope_parameters': {'rope_type': 'default', 'rope_theta': 1e6}, 'use_sliding_window': True,
        'sliding_window': 128, 'max_window_layers': 0
    }, {'qk_norm': True, 'rope_theta': 1e6, 'sliding_window': 128, 'local_layer_period': 1}),
    'mistral': ({'sliding_window': 100}, {'sliding_window': 100, 'local_layer_period': 1}),
    'gemma': ({}, {
        'norm_offset': True, 'embed_scale': True, 'activation': 'gelu_tanh', 'tie_embeddings': True,
        'sliding_window': None
    }),
    'gemma2': ({
        'sliding_window': 64, 'query_pre_attn_scalar': 32, 'attn_logit_softcapping': 3.0,
        'final_logit_softcapping': 4.0
    }, {
        'post_norms': True, 'sliding_window': 64, 'local_layer_period': 2, 'query_scale': 32**-0.5,
        'attn_logit_softcap': 3.0, 'final_logit_softcap': 4.0
    }),
    # Gemma-3 4B and larger: linear RoPE scaling on the global layers only.
    'gemma3_text': ({
        'sliding_window': 64, 'query_pre_attn_scalar': 24,
        'layer_types': ['sliding_attention', 'full_attention'], 'final_logit_softcapping': 6.0,
        'rope_parameters': {
            'full_attention': {'rope_type': 'linear', 'rope_theta': 1e6, 'factor': 8.0},
            'sliding_attention': {'rope_type': 'default', 'rope_theta': 10_000.0}
        }
    }, {
        'qk_norm': True, 'post_norms': True, 'rope_theta': 1e6, 'rope_scaling': (
            ('factor', 8.0), ('type', 'linear')), 'rope_local_theta': 10_000.0,
        'rope_local_scaling': None, 'local_layer_period': 2, 'query_scale': 24**-0.5,
        'attn_logit_softcap': None
    }),
}
MESHES = {'llama': (1, 4, 2)}  # every parameter split over all 8 devices; others (1, 1, 1)
SHARDED_FILES = ('qwen2',)  # saved as several shards with model.safetensors.index.json
LENGTH, PAD = 512, 137  # row 0: 512 real tokens; row 1: 137 left pads, then 375 real tokens


def hf_model(family, **overrides):
    """A random float32 transformers model whose norms and biases are random too."""
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(family,
                                               **{**COMMON, **FAMILIES[family][0], **overrides})
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation='eager',
                                                          dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('norm.weight'):  # Gemma's (1 + w) norms start at w = 0
                p.copy_((0.0 if family.startswith('gemma') else 1.0) + 0.3 * torch.randn_like(p))
            elif name.endswith('bias'):
                p.copy_(0.3 * torch.randn_like(p))
            elif 'embed_tokens' in name or 'lm_head' in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1]**0.5)
    return model.eval()


def hf_logits(model, tokens, mask):
    """transformers' logits with alignjax's positions (real-token count - 1; pads 0)."""
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    as_long = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=as_long(tokens), attention_mask=as_long(mask),
                    position_ids=as_long(positions))
    return out.logits.float().numpy()


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens, mask):
    return nnx.merge(graphdef, state)(tokens, mask)


def padded_batch(vocab_size):
    rng = np.random.RandomState(0)
    tokens = rng.randint(1, vocab_size, (2, LENGTH)).astype(np.int32)
    mask = np.ones((2, LENGTH), np.int32)
    mask[1, :PAD] = 0
    return tokens * mask, mask


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize('family', list(FAMILIES))
def test_import_and_export_match_transformers(family, tmp_path):
    hf = hf_model(family)
    sharded_files = family in SHARDED_FILES
    hf.save_pretrained(tmp_path / 'hf', max_shard_size='100KB' if sharded_files else '1GB')
    assert (tmp_path / 'hf' / 'model.safetensors.index.json').exists() == sharded_files
    mesh = sharding.make_mesh(MESHES.get(family, (1, 1, 1)))
    model, cfg = load_hf(str(tmp_path / 'hf'), mesh)
    for key, value in FAMILIES[family][1].items():
        want = pytest.approx(value) if isinstance(value, float) else value
        assert getattr(cfg, key) == want, key
    assert cfg.param_dtype == 'float32'

    # Every parameter was placed on its own sharding, never whole on one device.
    graphdef, state = nnx.split(model)
    targets = dict(sharding.state_shardings(state, mesh).flat_state())
    for path, var in state.flat_state():
        assert var.get_value().sharding == targets[path], path
    if family in MESHES:
        q = model.layers.attn.q_proj.get_value()  # stacked: [L, D, H, hd], layers replicated
        assert q.sharding.spec == P(None, 'fsdp', 'tensor', None)
        assert {s.data.shape for s in q.addressable_shards} == {(cfg.num_layers, 16, 2, 16)}
        assert model.lm_head.get_value().sharding.spec == P('fsdp', 'tensor')

    tokens, mask = padded_batch(cfg.vocab_size)
    want = hf_logits(hf, tokens, mask)
    got = np.asarray(_forward(graphdef, state, tokens, mask))
    real = mask.astype(bool)
    print(f'{family}: max |logit error| {np.abs(got[real] - want[real]).max():.2e} '
          f'(logits up to {np.abs(want[real]).max():.1f})')
    np.testing.assert_allclose(got[real], want[real], rtol=0, atol=1e-4)

    # Export: transformers reads back the very same tensors and computes the very same logits.
    save_hf(model, cfg, str(tmp_path / 'out'), model_type=family)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out',
                                                             attn_implementation='eager',
                                                             dtype=torch.float32)
    assert_same_weights(hf, back)
    np.testing.assert_array_equal(hf_logits(back, tokens, mask), want)


def test_greedy_decoding_matches_transformers(tmp_path):
    """Gemma-2 (soft-caps, local and global layers) with a 6-token window that decoding crosses."""
    hf = hf_model('gemma2', sliding_window=6, tie_word_embeddings=False,
                  final_logit_softcapping=30.0)
    hf.save_pretrained(tmp_path)
    model, _ = load_hf(str(tmp_path), sharding.make_mesh((1, 1, 1)))
    rng = np.random.RandomState(1)
    new = 12
    prompt = rng.randint(3, COMMON['vocab_size'], (2, 11)).astype(np.int32)
    mask = np.ones_like(prompt)
    mask[1, :6] = 0  # a 5-token prompt, left-padded
    prompt = prompt * mask
    config = sampling.SamplingConfig(max_new_tokens=new, greedy=True, eos_id=-1)
    ours = np.asarray(sampling.generate(model, prompt, mask, jax.random.key(0), config)['tokens'])

    hf.generation_config.eos_token_id = None  # run every row to `new` tokens, as alignjax does
    hf.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = hf.generate(input_ids=torch.as_tensor(prompt, dtype=torch.long),
                          attention_mask=torch.as_tensor(mask,
                                                         dtype=torch.long), max_new_tokens=new,
                          do_sample=False, output_scores=True, return_dict_in_generate=True)
    theirs = out.sequences[:, prompt.shape[1]:].numpy()
    np.testing.assert_array_equal(ours, theirs)
    # The comparison means something: no near-ties on the path, and not one token repeated.
    top2 = torch.stack(out.scores, dim=1).topk(2, dim=-1).values
    assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-3
    assert len(np.unique(theirs)) > 4


def test_bfloat16_checkpoint_keeps_its_dtype(tmp_path):
    hf = hf_model('qwen3').to(torch.bfloat16)
    hf.save_pretrained(tmp_path / 'hf')
    mesh = sharding.make_mesh((1, 1, 1))
    model, cfg = load_hf(str(tmp_path / 'hf'), mesh)
    assert (cfg.param_dtype, cfg.dtype) == ('bfloat16', 'bfloat16')
    leaves = [v.get_value() for _, v in nnx.state(model, nnx.Param).flat_state()]
    assert {x.dtype.name for x in leaves} == {'bfloat16'}
    # Exact values: q_proj is HF's weight transposed, with heads split out.
    w = hf.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
    q = np.asarray(model.layers.attn.q_proj.get_value()[1], np.float32)
    np.testing.assert_array_equal(q, w.T.reshape(64, 4, 16))
    model32, cfg32 = load_hf(str(tmp_path / 'hf'), mesh, dtype='float32')
    assert cfg32.param_dtype == 'float32'
    np.testing.assert_array_equal(np.asarray(model32.layers.attn.q_proj.get_value()[1]), q)

    save_hf(model, cfg, str(tmp_path / 'out'), model_type='qwen3')
    ckpt = safetensors_io.Checkpoint(str(tmp_path / 'out'))
    assert {ckpt.dtype(name).name for name in ckpt.entries} == {'bfloat16'}
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out', dtype=torch.bfloat16)
    assert_same_weights(hf, back)


def test_missing_and_unexpected_tensors_are_listed(tmp_path):
    cfg = config_from_hf({'model_type': 'llama', **COMMON})
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    tokenizer = tmp_path / 'tokenizer'
    tokenizer.mkdir()
    for name in ('tokenizer.json', 'tokenizer_config.json', 'notes.txt'):
        (tokenizer / name).write_text('{}')
    save_hf(model, cfg, str(tmp_path), model_type='llama', tokenizer_dir=str(tokenizer))
    assert (tmp_path / 'tokenizer.json').exists() and (tmp_path / 'tokenizer_config.json').exists()
    assert not (tmp_path / 'notes.txt').exists()
    mesh = sharding.make_mesh((1, 1, 1))
    # Round trip alignjax -> files -> alignjax is exact.
    loaded, cfg2 = load_hf(str(tmp_path), mesh)
    assert cfg2 == cfg
    for (path, a), (_, b) in zip(nnx.state(model).flat_state(), nnx.state(loaded).flat_state()):
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), path)

    ckpt = safetensors_io.Checkpoint(str(tmp_path))
    names = sorted(set(ckpt.entries) - {'model.layers.1.mlp.up_proj.weight'})
    extra = {
        'model.layers.0.self_attn.o_proj.bias': np.zeros(64, np.float32),
        'model.rotary_emb.inv_freq': np.ones(8, np.float32)
    }  # a buffer: ignored
    arrays = {**{n: ckpt.read(n) for n in names}, **extra}  # read all before rewriting the file
    tensors = [(n, x.shape, x.dtype, lambda x=x: x) for n, x in arrays.items()]
    safetensors_io.write(str(tmp_path / 'model.safetensors'), tensors)
    with pytest.raises(ValueError) as error:
        load_hf(str(tmp_path), mesh)
    message = str(error.value)
    assert "missing ['model.layers.1.mlp.up_proj.weight']" in message
    assert "unexpected ['model.layers.0.self_attn.o_proj.bias']" in message


# Published config.json files (legacy spellings: rope_theta, rope_scaling, torch_dtype).
LLAMA_3_2_1B = {
    'model_type': 'llama', 'vocab_size': 128256, 'hidden_size': 2048, 'intermediate_size': 8192,
    'num_hidden_layers': 16, 'num_attention_heads': 32, 'num_key_value_heads': 8, 'head_dim': 64,
    'rms_norm_eps': 1e-05, 'rope_theta': 500000.0, 'max_position_embeddings': 131072,
    'rope_scaling': {
        'factor': 32.0, 'high_freq_factor': 4.0, 'low_freq_factor': 1.0,
        'original_max_position_embeddings': 8192, 'rope_type': 'llama3'
    }, 'tie_word_embeddings': True, 'hidden_act': 'silu', 'torch_dtype': 'bfloat16'
}
QWEN2_5_7B = {
    'model_type': 'qwen2', 'vocab_size': 152064, 'hidden_size': 3584, 'intermediate_size': 18944,
    'num_hidden_layers': 28, 'num_attention_heads': 28, 'num_key_value_heads': 4,
    'rms_norm_eps': 1e-06, 'rope_theta': 1000000.0, 'sliding_window': 131072,
    'use_sliding_window': False, 'max_window_layers': 28, 'tie_word_embeddings': False,
    'hidden_act': 'silu', 'torch_dtype': 'bfloat16'
}
MISTRAL_7B_V0_3 = {
    'model_type': 'mistral', 'vocab_size': 32768, 'hidden_size': 4096, 'intermediate_size': 14336,
    'num_hidden_layers': 32, 'num_attention_heads': 32, 'num_key_value_heads': 8,
    'rms_norm_eps': 1e-05, 'rope_theta': 1000000.0, 'sliding_window': None,
    'tie_word_embeddings': False, 'hidden_act': 'silu', 'torch_dtype': 'bfloat16'
}
GEMMA_2_2B = {
    'model_type': 'gemma2', 'vocab_size': 256000, 'hidden_size': 2304, 'intermediate_size': 9216,
    'num_hidden_layers': 26, 'num_attention_heads': 8, 'num_key_value_heads': 4, 'head_dim': 256,
    'hidden_act': 'gelu_pytorch_tanh', 'hidden_activation': 'gelu_pytorch_tanh',
    'query_pre_attn_scalar': 256, 'sliding_window': 4096, 'attn_logit_softcapping': 50.0,
    'final_logit_softcapping': 30.0, 'rms_norm_eps': 1e-06, 'rope_theta': 10000.0,
    'torch_dtype': 'bfloat16'
}
GEMMA_3_1B = {
    'model_type': 'gemma3_text', 'vocab_size': 262144, 'hidden_size': 1152,
    'intermediate_size': 6912, 'num_hidden_layers': 26, 'num_attention_heads': 4,
    'num_key_value_heads': 1, 'head_dim': 256, 'hidden_activation': 'gelu_pytorch_tanh',
    'query_pre_attn_scalar': 256, 'sliding_window': 512, 'sliding_window_pattern': 6,
    'rope_theta': 1000000, 'rope_local_base_freq': 10000, 'rope_scaling': None,
    'attn_logit_softcapping': None, 'final_logit_softcapping': None, 'rms_norm_eps': 1e-06,
    'torch_dtype': 'bfloat16'
}
GEMMA_3_4B = {
    **GEMMA_3_1B, 'vocab_size': 262208, 'hidden_size': 2560, 'intermediate_size': 10240,
    'num_hidden_layers': 34, 'num_attention_heads': 8, 'num_key_value_heads': 4,
    'sliding_window': 1024, 'rope_scaling': {'factor': 8.0, 'rope_type': 'linear'}
}


@pytest.mark.parametrize('published,preset', [(LLAMA_3_2_1B, 'llama3_2_1b'),
                                              (QWEN2_5_7B, 'qwen2_5_7b'),
                                              (MISTRAL_7B_V0_3, 'mistral_7b'),
                                              (GEMMA_2_2B, 'gemma2_2b'), (GEMMA_3_1B, None),
                                              (GEMMA_3_4B, None)])
def test_published_configs(published, preset):
    cfg = config_from_hf(published)
    if preset is not None:
        assert cfg == PRESETS[preset].replace(remat=False)
    else:  # Gemma-3: 5 local layers (RoPE base 1e4, unscaled) per global one (base 1e6)
        assert [cfg.is_local_layer(i) for i in range(6)] == [True] * 5 + [False]
        assert (cfg.sliding_window, cfg.rope_theta,
                cfg.rope_local_theta) == (published['sliding_window'], 1e6, 1e4)
        assert cfg.qk_norm and cfg.post_norms and cfg.query_scale == 256**-0.5
        scaled = published['rope_scaling'] is not None  # 4B and larger: global layers only
        assert cfg.rope(False) == (1e6, (('factor', 8.0), ('type', 'linear')) if scaled else None)
        assert cfg.rope(True) == (1e4, None)
    # transformers' own normalisation of the file (rope_parameters, layer_types) maps the same.
    normalised = transformers.AutoConfig.for_model(**published).to_dict()
    assert config_from_hf(normalised) == cfg
    # Export writes a config that maps back to the same model.
    assert config_from_hf(json.loads(json.dumps(hf_config(cfg, published['model_type'])))) == cfg


BASE = {'model_type': 'llama', **COMMON}


@pytest.mark.parametrize(
    'change,field',
    [
        ({'model_type': 'phi3'}, 'model_type'),
        ({'mlp_bias': True}, 'mlp_bias'),
        ({'attention_bias': True}, 'attention_bias'),  # Llama's flag also biases o_proj
        ({'rope_parameters': {'rope_type': 'yarn', 'factor': 4.0}}, 'rope_type'),
        ({'hidden_act': 'gelu'}, 'hidden_act'),  # exact GELU: alignjax has the tanh form only
        ({
            'model_type': 'qwen2', 'use_sliding_window': True, 'sliding_window': 8,
            'max_window_layers': 1
        }, 'layer_types'),  # [global, local]: not a local_layer_period
        ({'num_hidden_layers': None}, 'num_hidden_layers'),
    ])
def test_unsupported_configs_raise_naming_field_and_file(change, field):
    config = {**BASE, **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(ValueError, match=field) as error:
        config_from_hf(config, source='ckpt/config.json')
    assert 'ckpt/config.json' in str(error.value)


def test_export_refuses_what_the_family_cannot_express():
    cfg = PRESETS['tiny']
    with pytest.raises(ValueError, match='post_norms'):
        hf_config(cfg.replace(post_norms=True), 'llama')
    with pytest.raises(ValueError, match='local_layers'):  # Mistral: every layer or none
        hf_config(cfg.replace(sliding_window=8, local_layer_period=2), 'mistral')
    gemma_like = cfg.replace(activation='gelu_tanh', norm_offset=True, post_norms=True,
                             embed_scale=True, sliding_window=8, local_layer_period=2)
    assert hf_config(gemma_like, 'gemma2')['layer_types'] == ['sliding_attention', 'full_attention']


def test_stacked_and_unrolled_layers_read_and_write_the_same_tensors(tmp_path):
    """Scanned layers store one [L, ...] array a parameter; the checkpoint keeps one tensor a
    layer. Both layouts load the same numbers (logits equal) and export identical files."""
    hf_model('gemma2').save_pretrained(tmp_path / 'hf')
    mesh = sharding.make_mesh((1, 1, 1))
    stacked, cfg = load_hf(str(tmp_path / 'hf'), mesh)
    assert cfg.scan_layers and stacked.layers.attn.q_proj.get_value().shape[0] == cfg.num_layers
    unrolled = Decoder(cfg.replace(scan_layers=False), rngs=nnx.Rngs(1))
    load_into(unrolled, str(tmp_path / 'hf'))
    tokens, mask = padded_batch(cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(stacked(tokens, mask)),
                               np.asarray(unrolled(tokens, mask)), atol=1e-5, rtol=1e-5)
    save_hf(stacked, cfg, str(tmp_path / 'a'), model_type='gemma2')
    save_hf(unrolled, unrolled.cfg, str(tmp_path / 'b'), model_type='gemma2')
    a = safetensors_io.Checkpoint(str(tmp_path / 'a'))
    b = safetensors_io.Checkpoint(str(tmp_path / 'b'))
    assert sorted(a.entries) == sorted(b.entries)
    for name in a.entries:
        np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=name)


def test_blocks_read_only_their_bytes(tmp_path):
    """read_block equals slicing the whole tensor, and reads only the block's rows: one range of
    rows is one read of exactly its bytes."""
    rng = np.random.default_rng(0)
    tensors = {
        'a': rng.standard_normal((12, 10)).astype(np.float32), 'b': rng.standard_normal(
            (6, 4, 5)).astype(np.float32), 'c': rng.standard_normal(7).astype(np.float32)
    }
    safetensors_io.write(str(tmp_path / 'model.safetensors'),
                         [(k, v.shape, v.dtype, lambda v=v: v) for k, v in tensors.items()])
    ckpt = safetensors_io.Checkpoint(str(tmp_path))
    for _ in range(30):
        name = rng.choice(sorted(tensors))
        x = tensors[name]
        ranges = [tuple(sorted(rng.choice(n + 1, 2, replace=False))) for n in x.shape]
        want = x[tuple(slice(a, b) for a, b in ranges)]
        before = ckpt.bytes_read
        np.testing.assert_array_equal(ckpt.read_block(name, ranges), want)
        assert ckpt.bytes_read - before == want.nbytes  # nothing outside the block
    before = ckpt.bytes_read
    np.testing.assert_array_equal(ckpt.read('a'), tensors['a'])
    assert ckpt.bytes_read - before == tensors['a'].nbytes
