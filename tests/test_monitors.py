"""Over-optimisation monitors (`alignjax.monitors`): thresholds, firing once, a resumed run's
replay, the KL-spike figure, the plot, and the figures against NumPy (top-k mass and entropy of
the model's next-token distribution, the per-token implicit reward)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignjax import monitors, validation
from alignjax.models import Decoder, get_model_config, scoring


def test_thresholds_parse_and_refuse():
    t = monitors.parse('a/b<0.5, c>first*1.5,d<first-0.1,e>first+2,f>-1e-3')
    assert [(x.name, x.above, x.bound, x.relative) for x in t] == [('a/b', False, 0.5, ''),
                                                                   ('c', True, 1.5, '*'),
                                                                   ('d', False, -0.1, '+'),
                                                                   ('e', True, 2.0, '+'),
                                                                   ('f', True, -1e-3, '')]
    assert monitors.parse('') == []
    for bad in ('a/b=3', 'x>>1', 'y<first/2', 'z>'):
        with pytest.raises(validation.ValidationError, match='config.monitors.thresholds'):
            monitors.parse(bad)


def test_fires_once_relative_to_the_first_value_and_replays():
    logged = []
    m = monitors.Monitors(monitors.parse('x<first*0.5,y>3'), log=logged.append)
    rows = [(1, {'x': 2.0, 'y': 1.0}), (2, {'x': 1.5, 'y': 3.5}), (3, {'x': 0.9}),
            (4, {'x': 0.1, 'y': 9.0})]
    fired = {step: m.check(step, row)[1] for step, row in rows}
    assert fired == {1: [], 2: ['y'], 3: ['x'], 4: []}  # x: below 0.5 * 2.0 at step 3; once each
    assert m.summary() == {'monitors_fired': {'y': 2, 'x': 3}}
    assert logged[1] == 'monitor x fired at step 3: 0.9 (threshold x < first*0.5 = 1)'
    again = monitors.Monitors(monitors.parse('x<first*0.5,y>3'), log=logged.append)
    for step, row in rows[:3]:
        again.check(step, row, replay=True)
    assert again.fired == m.fired and len(logged) == 2  # a replay warns of nothing
    assert again.check(4, rows[3][1])[1] == []
    with pytest.raises(validation.ValidationError, match='action'):
        monitors.Monitors([], action='pause')


def test_kl_spike_is_against_the_recent_median_with_a_floor():
    m = monitors.Monitors(monitors.parse('monitor/kl_spike>3'), log=lambda _: None)
    kls = [0.0, 0.1, 0.2, 0.4, 1.0, 1.2, 1.1, 4.0]
    spikes = [
        m.check(i, {'rollout/kl_to_ref': kl})[0].get('monitor/kl_spike') for i, kl in enumerate(kls)
    ]
    assert spikes[:3] == [None] * 3
    assert spikes[3] == pytest.approx(0.4 / monitors.KL_FLOOR)  # median 0.1, floored
    assert spikes[7] == pytest.approx(4.0 / max(np.median(kls[:7]), monitors.KL_FLOOR))
    assert m.fired == {'monitor/kl_spike': 7}


def test_plot_writes_the_png(tmp_path):
    import json
    with open(tmp_path / 'metrics.jsonl', 'w') as f:
        for step in range(1, 6):
            f.write(json.dumps({'step': step, 'x': 1.0 / step, 'rollout/gold_reward': step}) + '\n')
    m = monitors.Monitors(monitors.parse('x<0.3'), log=lambda _: None)
    for row in monitors.rows(str(tmp_path)):
        m.check(row['step'], row)
    assert m.fired == {'x': 4}
    path = m.plot(str(tmp_path))
    assert path.endswith('monitors.png') and (tmp_path / 'monitors.png').stat().st_size > 1000


def test_implicit_reward_summary_against_numpy():
    rng = np.random.default_rng(0)
    logp, ref = rng.normal(size=(2, 4, 6))
    mask = (np.arange(6)[None] < np.array([6, 3, 1, 0])[:, None]).astype(np.float32)
    out = monitors.implicit_reward_summary(logp, ref, mask, beta=0.5)
    r = 0.5 * (logp - ref)
    rows = [r[i, :n] for i, n in enumerate((6, 3, 1))]
    assert out['implicit_reward_mean'] == pytest.approx(np.mean([x.mean() for x in rows]))
    assert out['implicit_reward_max'] == pytest.approx(np.mean([x.max() for x in rows]))
    pos = [np.argmax(x) / max(len(x) - 1, 1) for x in rows]
    assert out['implicit_reward_argmax_position'] == pytest.approx(np.mean(pos))


def test_topk_mass_and_entropy_against_numpy():
    model = Decoder(get_model_config('tiny'), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    prompt = jnp.asarray(rng.integers(1, 250, (2, 4)))
    response = jnp.asarray(rng.integers(1, 250, (2, 5)))
    pmask = jnp.ones((2, 4), jnp.int32)
    rmask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    mass, entropy = scoring.response_topk_stats(model, prompt, pmask, response, rmask, k=7)
    logits = np.asarray(scoring.sequence_logits(model, prompt, pmask, response, rmask), np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top = -np.sort(-p, axis=-1)[..., :7]
    q = top / top.sum(-1, keepdims=True)
    m = np.asarray(rmask, np.float64)
    np.testing.assert_allclose(mass, top.sum(-1) * m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entropy, -(q * np.log(q)).sum(-1) * m, rtol=1e-5, atol=1e-6)
    assert jax.tree.leaves(mass)[0].shape == (2, 5)
    chunked = scoring.response_topk_stats(model, prompt, pmask, response, rmask, k=7, chunk=2)
    np.testing.assert_allclose(chunked[0], mass, rtol=1e-6, atol=1e-7)  # in pieces, the same
    np.testing.assert_allclose(chunked[1], entropy, rtol=1e-6, atol=1e-7)
