"""TRL as an oracle for the DPO loss family (DESIGN.md, "Testing strategy": peers as oracles).

Tested against trl 1.16.0, transformers 5.23.0, accelerate 1.15.0, datasets 5.2.0 and
torch 2.13.0+cpu, installed by `pip install torch==2.13.0` (first, so that pip takes the local CPU
wheel rather than CUDA builds) and then `pip install transformers trl safetensors tokenizers`.
The module is skipped when TRL or torch is not installed; it needs no network (HF_HUB_OFFLINE).

How TRL is called, and why this way:

- DPO family: in TRL 1.16 the per-type losses are computed inline in `DPOTrainer._compute_loss(
  model, inputs, return_outputs)`, after the policy forward pass; there is no standalone loss
  function. Each case builds a real `DPOTrainer` (TRL's own `__init__` from a `DPOConfig`) around
  a tiny random Llama with a word-level tokenizer made here, with `precompute_ref_log_probs=True`
  so that the reference log-prob sums are read from the batch. `_compute_loss` is then called
  with a stub in place of the policy: the stub returns the per-token log-probs we choose (what
  TRL's fused LM head would return), so both libraries see identical float64 inputs. TRL returns
  the batch mean, so per-example losses come from batches of one pair; a full batch also checks
  the mean and TRL's logged metrics (rewards/*, logps/*).
- SimPO and label-smoothed (conservative) DPO: `CPOTrainer.cpo_loss(policy_chosen_logps,
  policy_rejected_logps)` from `trl.experimental.cpo` returns per-example losses. CPO is
  reference-free and its sigmoid/ipo/hinge losses depend only on pi_c - pi_r, so passing the
  log-ratios (pi - ref) gives DPO with a reference.

Conventions found in TRL 1.16 (and how the tests align the inputs):

- IPO: `DPOTrainer` divides each log-ratio sum by its completion length *inside* the loss
  (chosen and rejected separately, as the IPO authors did); CPO averages log-probs in its forward
  pass. alignjax's `ipo` takes whatever the caller passes, so the tests feed it per-token averages
  (pi/L - ref/L), which equals TRL's (pi - ref)/L.
- `DPOTrainer`'s 'sigmoid' ignores `label_smoothing` (it is applied only to 'robust', 'exo_pair'
  and the 'aot' types); conservative DPO is checked against CPO's label-smoothed sigmoid instead.
- RPO: `DPOTrainer` has no `rpo_alpha`; the same objective is `loss_type=['sigmoid', 'sft']`
  with `loss_weights=[1, alpha]`. Its 'sft' term is the token-mean NLL over the whole batch of
  chosen responses, alignjax's `rpo_alpha` term the mean over pairs of per-pair token means: equal
  for a batch of one pair, which is what is compared. alignjax's own 'sft' type is TRL's token
  mean (given the chosen token counts), compared on whole batches.
- Batch-level types ('aot', 'aot_unpaired' sort across the batch; 'sft' averages over its tokens)
  have no per-example losses in either library: they are compared on whole batches, on inputs
  where the batch mean differs from the mean of single-pair losses.
- 'bco_pair': TRL 1.16 keeps no running mean of the rewards (older TRL subtracted one, as the BCO
  paper does); alignjax's pure loss takes the shift as an input, compared here at 0, TRL 1.16's.
- 'sigmoid_norm' divides each log-ratio sum by its completion length inside the loss, like IPO;
  alignjax's row is defined on averages (the trainer divides), so it is fed averages.
- 'discopop': its temperature is `discopop_tau` in both libraries' keyword arguments.
- 'apo_zero' / 'apo_down' carry TRL's +1 constant (alignjax documents the same shift);
  'exo_pair' in TRL builds epsilon as a float32 tensor, hence a 1e-6 tolerance for it alone.
"""

import os
import tempfile
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

# Read when huggingface_hub and trl.experimental are first imported: set before importing TRL.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')

torch = pytest.importorskip('torch')
trl = pytest.importorskip('trl')
pytest.importorskip('transformers')
pytest.importorskip('datasets')
pytest.importorskip('tokenizers')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from alignjax.losses import preference  # noqa: E402

DPOConfig, DPOTrainer = trl.DPOConfig, trl.DPOTrainer
if not hasattr(DPOTrainer, '_compute_loss'):
    pytest.skip(
        f'written against trl 1.16.0, whose DPOTrainer._compute_loss holds the DPO losses; '
        f'trl {trl.__version__} has none', allow_module_level=True)

RTOL = 1e-10  # float64 on both sides

WORDS = ['<pad>', '<eos>', '<unk>', 'a', 'b', 'c', 'd']


def tiny_model_and_tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<eos>', pad_token='<pad>',
                                        unk_token='<unk>')
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=8, intermediate_size=16,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=32)
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def tiny_dataset():
    return Dataset.from_dict({'prompt': ['a b'], 'chosen': [' c'], 'rejected': [' d']})


@pytest.fixture(scope='module')
def workdir():
    with tempfile.TemporaryDirectory() as d:
        yield d


@pytest.fixture(scope='module')
def dpo_trainer(workdir):
    """A factory of real DPOTrainers, one per configuration, cached."""
    cache = {}

    def make(**config):
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()))
        if key not in cache:
            model, tokenizer = tiny_model_and_tokenizer()
            with warnings.catch_warnings():  # TRL/transformers deprecation notices
                warnings.simplefilter('ignore')
                args = DPOConfig(output_dir=workdir, report_to=[], use_cpu=True,
                                 precompute_ref_log_probs=True, **config)
                cache[key] = DPOTrainer(model=model, args=args, train_dataset=tiny_dataset(),
                                        processing_class=tokenizer)
        return cache[key]

    return make


class StubPolicy:
    """Stands in for the policy's forward: returns the per-token log-probs we chose."""
    def __init__(self, per_token_logps):
        self.per_token_logps = per_token_logps

    def __call__(self, **unused_kwargs):
        n, t = self.per_token_logps.shape
        zeros = torch.zeros(n, t, dtype=self.per_token_logps.dtype)
        return SimpleNamespace(log_probs=self.per_token_logps, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros(n, t, dtype=torch.bool))


def make_pairs(seed, b=6, max_len=5, scale=1.0):
    """Random pairs: per-token policy log-probs, completion lengths, reference sums (float64)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=(2, b))  # [chosen, rejected] x B
    tokens = np.zeros((2, b, max_len))
    for side in range(2):
        for i in range(b):
            tokens[side, i, :lengths[side, i]] = -scale * rng.uniform(0.0, 3.0, lengths[side, i])
    policy = tokens.sum(axis=-1)
    ref = policy + rng.normal(0.0, 2.0 * scale, size=(2, b))
    return SimpleNamespace(tokens=tokens, lengths=lengths, policy=policy, ref=ref)


def trl_dpo_batch(trainer, pairs, idx):
    """Loss of TRL's DPOTrainer on the pairs in idx; also returns its logged metrics."""
    b = len(idx)
    max_len = pairs.tokens.shape[-1]
    # Rows are [chosen of each pair; rejected of each pair]; column 0 is the prompt token.
    per_token = np.concatenate([pairs.tokens[0, idx], pairs.tokens[1, idx]])
    lengths = np.concatenate([pairs.lengths[0, idx], pairs.lengths[1, idx]])
    completion_mask = np.zeros((2 * b, max_len + 1), np.int64)
    for row, n in enumerate(lengths):
        completion_mask[row, 1:1 + n] = 1
    inputs = {
        'input_ids': torch.zeros(2 * b, max_len + 1, dtype=torch.long),
        'attention_mask': torch.ones(2 * b, max_len + 1, dtype=torch.long),
        'completion_mask': torch.from_numpy(completion_mask),
        'ref_chosen_logps': torch.from_numpy(pairs.ref[0, idx]),
        'ref_rejected_logps': torch.from_numpy(pairs.ref[1, idx]),
    }
    mode = 'train' if trainer.model.training else 'eval'
    trainer._metrics[mode].clear()
    with torch.no_grad():
        loss = trainer._compute_loss(StubPolicy(torch.from_numpy(per_token)), inputs,
                                     return_outputs=False)
    assert loss.dtype == torch.float64
    return float(loss), {k: v[-1] for k, v in trainer._metrics[mode].items()}


def trl_dpo_per_example(trainer, pairs):
    return np.array([trl_dpo_batch(trainer, pairs, [i])[0] for i in range(pairs.policy.shape[1])])


def alignjax_per_example(pairs, loss_types, *, weights=None, length_average=False, chosen_nll=None,
                         chosen_lengths=None, **kw):
    """alignjax's per-example losses in float64 (dpo_loss on one pair at a time, as TRL is
    called), and dpo_loss on the whole batch."""
    policy, ref = pairs.policy, pairs.ref
    if length_average:
        policy, ref = policy / pairs.lengths, ref / pairs.lengths
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (policy[0], policy[1], ref[0], ref[1])]

        def loss(part):
            rows = {
                name: None if x is None else jnp.asarray(x)[part]
                for name, x in (('chosen_nll', chosen_nll), ('chosen_lengths', chosen_lengths))
            }
            return preference.dpo_loss(*(a[part] for a in args), loss_types=loss_types,
                                       loss_weights=weights, **rows, **kw)

        full = loss(slice(None))
        assert full[0].dtype == jnp.float64
        per_example = np.array([float(loss(slice(i, i + 1))[0]) for i in range(len(args[0]))])
    return per_example, full


DPO_CASES = [
    # (TRL loss_type list, loss weights, beta, label_smoothing, keywords of both DPOConfig and
    # dpo_loss)
    (['sigmoid'], None, 0.1, 0.0, {}),
    (['sigmoid'], None, 1.0, 0.0, {}),
    (['hinge'], None, 0.1, 0.0, {}),
    (['hinge'], None, 1.0, 0.0, {}),
    (['robust'], None, 0.5, 0.0, {}),
    (['robust'], None, 0.5, 0.1, {}),
    (['robust'], None, 0.1, 0.3, {}),
    (['exo_pair'], None, 0.5, 2.0**-10, {}),
    (['exo_pair'], None, 0.5, 0.25, {}),
    (['nca_pair'], None, 0.5, 0.0, {}),
    (['sppo_hard'], None, 0.5, 0.0, {}),
    (['apo_zero'], None, 0.5, 0.0, {}),
    (['apo_down'], None, 0.5, 0.0, {}),
    (['bco_pair'], None, 0.1, 0.0, {}),
    (['bco_pair'], None, 0.5, 0.0, {}),
    (['discopop'], None, 0.1, 0.0, {}),  # the default temperature, 0.05
    (['discopop'], None, 0.5, 0.0, {'discopop_tau': 0.05}),
    (['discopop'], None, 0.5, 0.0, {'discopop_tau': 0.5}),
    (['sigmoid', 'hinge'], [1.0, 0.3], 0.2, 0.0, {}),
    (['bco_pair', 'discopop', 'apo_zero'], [0.5, 1.0, 2.0], 0.3, 0.0, {'discopop_tau': 0.2}),
]


def case_id(types, beta, e, extra):
    return f"{'+'.join(types)}-beta{beta}-e{e:g}" + ''.join(f'-{k}{v}' for k, v in extra.items())


@pytest.mark.parametrize('scale', [1.0, 30.0], ids=['moderate', 'large'])
@pytest.mark.parametrize('loss_types,weights,beta,e,extra', DPO_CASES,
                         ids=[case_id(t, b, e, x) for t, _, b, e, x in DPO_CASES])
def test_dpo_trainer_losses_match(dpo_trainer, loss_types, weights, beta, e, extra, scale):
    config = dict(loss_type=loss_types, beta=beta, label_smoothing=e, **extra)
    if weights is not None:
        config['loss_weights'] = weights
    trainer = dpo_trainer(**config)
    pairs = make_pairs(seed=len(loss_types) + int(beta * 10), scale=scale)
    expected = trl_dpo_per_example(trainer, pairs)
    actual, _ = alignjax_per_example(pairs, tuple(loss_types), weights=weights, beta=beta,
                                     label_smoothing=e, **extra)
    rtol = 1e-6 if 'exo_pair' in loss_types else RTOL  # TRL's epsilon is a float32 tensor
    assert np.all(np.isfinite(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize('loss_type', ['ipo', 'sigmoid_norm'])
@pytest.mark.parametrize('beta', [0.1, 0.5])
def test_dpo_trainer_matches_on_length_averaged_logps(dpo_trainer, loss_type, beta):
    trainer = dpo_trainer(loss_type=[loss_type], beta=beta)
    pairs = make_pairs(seed=3)
    expected = trl_dpo_per_example(trainer, pairs)
    actual, _ = alignjax_per_example(pairs, (loss_type,), beta=beta, length_average=True)
    np.testing.assert_allclose(actual, expected, rtol=RTOL)
    # And the convention matters: on sums (no averaging) the two differ whenever some L > 1.
    on_sums, _ = alignjax_per_example(pairs, (loss_type,), beta=beta)
    assert not np.allclose(on_sums, expected)


BATCH_CASES = [
    # (TRL loss_type list, loss weights, beta, label_smoothing, length-averaged inputs)
    (['aot'], None, 0.1, 0.0, False),
    (['aot'], None, 0.5, 0.2, False),
    (['aot_unpaired'], None, 0.1, 0.0, False),
    (['aot_unpaired'], None, 0.5, 0.3, False),
    (['sigmoid', 'sft'], [1.0, 0.7], 0.2, 0.0, False),
    (['sft'], None, 0.2, 0.0, False),
    (['aot', 'aot_unpaired', 'sft'], [1.0, 0.5, 0.3], 0.3, 0.1, False),
    (['sigmoid_norm', 'sft'], [1.0, 0.4], 0.5, 0.0, True),
]


@pytest.mark.parametrize('scale', [1.0, 30.0], ids=['moderate', 'large'])
@pytest.mark.parametrize('loss_types,weights,beta,e,averaged', BATCH_CASES,
                         ids=[case_id(t, b, e, {}) for t, _, b, e, _ in BATCH_CASES])
def test_dpo_trainer_batch_level_losses_match(dpo_trainer, loss_types, weights, beta, e, averaged,
                                              scale):
    config = dict(loss_type=loss_types, beta=beta, label_smoothing=e)
    if weights is not None:
        config['loss_weights'] = weights
    trainer = dpo_trainer(**config)
    pairs = make_pairs(seed=8 + len(loss_types), b=7, scale=scale)
    expected, _ = trl_dpo_batch(trainer, pairs, list(range(7)))
    nll = -pairs.policy[0] / pairs.lengths[0]  # per-pair mean token NLL of the chosen
    per_pair, (total, count, _) = alignjax_per_example(
        pairs, tuple(loss_types), weights=weights, length_average=averaged, chosen_nll=nll,
        chosen_lengths=pairs.lengths[0].astype(np.float64), beta=beta, label_smoothing=e)
    assert np.isfinite(expected)
    np.testing.assert_allclose(float(total) / float(count), expected, rtol=RTOL, atol=1e-12)
    # These inputs do tell a batch-level loss from a per-example one.
    assert not np.isclose(np.mean(per_pair), expected, rtol=1e-6)


def test_dpo_trainer_rpo_is_sigmoid_plus_weighted_sft(dpo_trainer):
    alpha = 0.7
    trainer = dpo_trainer(loss_type=['sigmoid', 'sft'], loss_weights=[1.0, alpha], beta=0.2)
    pairs = make_pairs(seed=4)
    expected = trl_dpo_per_example(trainer, pairs)
    chosen_nll = -pairs.policy[0] / pairs.lengths[0]  # per-pair mean token NLL of the chosen
    actual, _ = alignjax_per_example(pairs, ('sigmoid',), beta=0.2, rpo_alpha=alpha,
                                     chosen_nll=chosen_nll)
    np.testing.assert_allclose(actual, expected, rtol=RTOL)


def test_dpo_trainer_batch_mean_and_metrics_match(dpo_trainer):
    beta = 0.3
    trainer = dpo_trainer(loss_type=['sigmoid'], beta=beta)
    pairs = make_pairs(seed=5, b=8)
    pairs.ref[:, 0] = pairs.policy[:, 0]  # one tie: zero margin is not counted as correct
    loss, metrics = trl_dpo_batch(trainer, pairs, list(range(8)))
    _, (total, count, ours) = alignjax_per_example(pairs, ('sigmoid',), beta=beta)
    np.testing.assert_allclose(float(total) / float(count), loss, rtol=RTOL)
    names = {
        'rewards/chosen': 'rewards/chosen', 'rewards/rejected': 'rewards/rejected',
        'rewards/margin': 'rewards/margins', 'rewards/accuracy': 'rewards/accuracies',
        'logps/chosen': 'logps/chosen', 'logps/rejected': 'logps/rejected'
    }
    for name, trl_name in names.items():
        s, n = ours[name]
        np.testing.assert_allclose(float(s) / float(n), metrics[trl_name], rtol=1e-9, atol=1e-12)


# --- CPOTrainer.cpo_loss: label-smoothed (conservative) DPO and SimPO -----------------------------


@pytest.fixture(scope='module')
def cpo_trainer(workdir):
    cpo = pytest.importorskip('trl.experimental.cpo')
    cache = {}

    def make(**config):
        key = tuple(sorted(config.items()))
        if key not in cache:
            model, tokenizer = tiny_model_and_tokenizer()
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                args = cpo.CPOConfig(output_dir=workdir, report_to=[], use_cpu=True, **config)
                trainer = cpo.CPOTrainer(model=model, args=args, train_dataset=tiny_dataset(),
                                         processing_class=tokenizer)
            assert trainer.alpha == 0.0  # no AlphaPO reward transform: logits = pi_c - pi_r
            cache[key] = trainer
        return cache[key]

    return make


def cpo_losses(trainer, chosen, rejected):
    with torch.no_grad():
        losses, _, _ = trainer.cpo_loss(torch.from_numpy(chosen), torch.from_numpy(rejected))
    assert losses.dtype == torch.float64
    return losses.numpy()


CPO_CASES = [
    # (type, beta, label_smoothing)
    ('sigmoid', 0.1, 0.0),
    ('sigmoid', 0.5, 0.1),
    ('sigmoid', 2.0, 0.3),
    ('hinge', 0.5, 0.0),
    ('ipo', 0.5, 0.0),
]


@pytest.mark.parametrize('scale', [1.0, 30.0], ids=['moderate', 'large'])
@pytest.mark.parametrize('loss_type,beta,e', CPO_CASES,
                         ids=[f'{t}-beta{b}-e{e:g}' for t, b, e in CPO_CASES])
def test_cpo_loss_matches_dpo_with_reference(cpo_trainer, loss_type, beta, e, scale):
    trainer = cpo_trainer(loss_type=loss_type, beta=beta, label_smoothing=e)
    pairs = make_pairs(seed=6, b=8, scale=scale)
    if loss_type == 'ipo':  # CPO averages log-probs over tokens for IPO in its forward pass
        pairs.policy, pairs.ref = pairs.policy / pairs.lengths, pairs.ref / pairs.lengths
    logratio = pairs.policy - pairs.ref
    expected = cpo_losses(trainer, logratio[0], logratio[1])
    with jax.enable_x64(True):
        actual = preference.preference_losses(
            *(jnp.asarray(a)
              for a in (pairs.policy[0], pairs.policy[1], pairs.ref[0], pairs.ref[1])),
            loss_type=loss_type, beta=beta, label_smoothing=e)
        assert actual.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize('scale', [1.0, 30.0], ids=['moderate', 'large'])
@pytest.mark.parametrize('beta,gamma,e', [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (10.0, 3.0, 0.2)])
def test_cpo_simpo_matches(cpo_trainer, beta, gamma, e, scale):
    trainer = cpo_trainer(loss_type='simpo', beta=beta, simpo_gamma=gamma, label_smoothing=e)
    pairs = make_pairs(seed=7, b=8, scale=scale)
    avg = pairs.policy / pairs.lengths  # SimPO's length-normalised log-probs
    expected = cpo_losses(trainer, avg[0], avg[1])
    with jax.enable_x64(True):
        zeros = jnp.zeros(8, jnp.float64)
        actual = preference.preference_losses(jnp.asarray(avg[0]), jnp.asarray(avg[1]), zeros,
                                              zeros, loss_type='simpo', beta=beta,
                                              label_smoothing=e, gamma=gamma)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=RTOL, atol=1e-12)
