"""Tunix's GRPO and PPO learners on the grpo / ppo workloads (CPU jax of the Tunix venv); one JSON
line. The spec's `algo` ('grpo' or 'ppo') picks the learner.

Both: `RLCluster` with every role (actor, rollout, reference, critic) on one 1x1 ('fsdp', 'tp')
CPU mesh, so the actor and the rollout share one model and no weight sync runs; the vanilla rollout
(Tunix's `Sampler`, KV cache of prompt + new tokens), 32-token prompts, 64 new tokens, temperature
1.0, top_p 1.0, EOS disabled (eos_tokens=[-1]), so every completion has 64 tokens; the reward
function is the fraction of even token ids in the completion (as for alignjax and TRL); AdamW
(optax) at the spec's lr, no weight decay, no clipping, constant rate.

- grpo: `GRPOLearner`, 2 prompts a batch, num_generations=4 (8 rows), beta 0.04 (k3 KL in the
  loss), epsilon 0.2, num_iterations=1: one update of the 8 rows an iteration. With one
  iteration Tunix skips the old-policy pass (the ratio is taken against a stopped copy of the
  current log-probs), so its rollout runs the sampler and the reference pass only; alignjax also
  runs a teacher-forced policy pass.
- ppo: `PPOLearner`, 8 prompts a batch (the 2 prompts each repeated 4 times: PPO has no groups),
  a critic of the policy's shape (the Llama3 backbone without its output head, plus a zero
  [embed, 1] value head; Tunix's Llama3 has no value head of its own, and `compute_score` wants
  [B, T, 1]), GAE (gamma 1, lambda 0.95), value clip 0.2, ratio clip 0.2, KL (k1, 'kl') times
  the spec's beta subtracted from the reward; rollout = sampler + reference, old-policy and
  critic passes. Updates: num_iterations = the spec's `epochs` (2) over the whole 8-row rollout
  for the actor and for the critic, i.e. 2 actor + 2 critic optimizer steps of 8 rows. In Tunix
  0.1.7 a mini-batch is a unit of rollout as well as of update (`RLLearner._run_global_step`
  rolls out each mini-batch separately), so alignjax's 2 epochs x 2 minibatches of 4 rows over
  one rollout of 8 cannot be expressed: the default keeps the rollout shape and the rows and
  FLOPs of the update, with half the optimizer steps. `minibatches: 2` in the spec gives Tunix's
  own variant instead (two rollouts of 4 rows, 2 + 2 updates of 4 rows each); on tiny (2 cores,
  load ~4) it ran at ~300 ms/iteration against the default's ~210, so the default is Tunix's
  faster choice.

Tunix 0.1.7 quirks that leave the compute as it is: the PPO learner builds its token rewards
with `zeros_like(completion_ids)` (int32), so the float score is truncated to an integer when it
is added (the scatter FutureWarning on stderr) and only the KL part of the reward survives; with
`RolloutConfig.seed` unset the sampler starts every rollout from PRNGKey(0).

Tokenizer: Tunix's `TokenizerAdapter` asks for encode / decode / bos_id / eos_id / pad_id; the
smallest adapter is word-level, token i <-> 't<i>' (as benchmarks/grpo.py's WordTokenizer), with
BOS 0 (falsy: Tunix adds none), EOS -1 and pad = vocab size: ids the model never samples, so no
sampled token is masked as padding (prompts are exactly 32 tokens and completions exactly 64, so
pad never reaches the model either).

Timing: the step time is the gap between consecutive batch requests of Tunix's own train loop
(`tunix_common.TimedIterator`); batch 0 is the warm-up (compilation), then `repeats` rounds of
`steps` iterations. `rollout_s` is the time in `_generate_and_compute_advantage` (sampler, reward,
reference / old-policy / critic passes, advantages; blocked on its outputs) per iteration; the
rest of an iteration is the update.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import tunix_common as tc


class WordTokenizer:
    """encode / decode / bos_id / eos_id / pad_id over words 't<i>' (see the module docstring)."""
    def __init__(self, vocab: int):
        self.vocab = vocab

    def encode(self, text, **kw):
        return [int(w[1:]) for w in str(text).split()]

    def decode(self, ids, **kw):
        return ' '.join(f't{int(i)}' for i in ids)

    def bos_id(self):
        return 0

    def eos_id(self):
        return -1

    def pad_id(self):
        return self.vocab


def even_fraction(new_tokens: int):
    """The reward: the fraction of even token ids; checks that every completion is full length."""
    def reward(prompts, completions, **kw):
        del prompts, kw
        words = [c.split() for c in completions]
        assert all(len(w) == new_tokens for w in words), [len(w) for w in words]
        return [float(np.mean([int(t[1:]) % 2 == 0 for t in w])) for w in words]

    return reward


def critic(spec: dict, seed: int):
    """The PPO critic: the workload's Llama3 backbone (no output head) and a zero value head;
    called as Tunix calls a scoring model, it returns values [B, T, 1]."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top

    class Critic(nnx.Module):
        def __init__(self, backbone):
            self.backbone = backbone
            self.value_head = nnx.Param(jnp.zeros((backbone.config.embed_dim, 1), jnp.float32))

        def __call__(self, input_tokens, positions, cache, attention_mask, segment_ids=None):
            del cache, segment_ids
            b = self.backbone
            x = b.embedder.encode(input_tokens)
            for layer in b.layers:
                _, x = layer(x, positions, None, attention_mask)
            return b.final_norm(x) @ self.value_head[...]

    return Critic(tc.llama3(spec, seed, weight_tying=True))


def main():
    spec = tc.spec_from_argv()
    import jax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from tunix.rl import rl_cluster as rl  # pylint: disable=g-import-not-at-top
    from tunix.rl.rollout import base_rollout  # pylint: disable=g-import-not-at-top

    algo = spec.get('algo', 'grpo')
    steps, repeats = spec['steps'], spec['repeats']
    total = 1 + steps * repeats
    v, p, n = spec['model']['vocab_size'], spec['prompt_len'], spec['new_tokens']
    prompts_n, samples = spec['prompts'], spec['samples']
    rows = prompts_n * samples
    epochs = spec.get('epochs', 1)
    minibatches = spec.get('minibatches', 1) if algo == 'ppo' else 1

    rng = np.random.default_rng(spec.get('seed', 0))
    prompts = [' '.join(f't{i}' for i in rng.integers(4, v, p)) for _ in range(prompts_n)]
    if algo == 'ppo':  # no groups: the 8 rows are the prompts themselves, each repeated
        prompts = [q for q in prompts for _ in range(samples)]
    data = tc.TimedIterator([{'prompts': np.array(prompts)} for _ in range(total)])

    policy = tc.llama3(spec, spec.get('seed', 0))
    reference = tc.llama3(spec, spec.get('seed', 0))
    nnx.update(reference, jax.tree.map(lambda x: x.copy(), nnx.state(policy)))
    mesh = jax.make_mesh((1, 1), ('fsdp', 'tp'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    roles = [rl.Role.ACTOR, rl.Role.ROLLOUT, rl.Role.REFERENCE]
    if algo == 'ppo':
        roles.append(rl.Role.CRITIC)
    tx = lambda: optax.adamw(spec['lr'], b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
    training = rl.RLTrainingConfig(
        actor_optimizer=tx(),
        critic_optimizer=tx() if algo == 'ppo' else None,
        eval_every_n_steps=10**9,
        max_steps=10**9,  # the data's end stops the loop
        mini_batch_size=rows // minibatches if minibatches > 1 else None)
    rollout = base_rollout.RolloutConfig(max_tokens_to_generate=n, max_prompt_length=p,
                                         kv_cache_size=p + n, temperature=1.0, top_p=1.0,
                                         top_k=None, eos_tokens=[-1])
    cluster = rl.RLCluster(
        actor=policy, reference=reference,
        critic=critic(spec,
                      spec.get('seed', 0) + 17) if algo == 'ppo' else None,
        tokenizer=WordTokenizer(v),
        cluster_config=rl.ClusterConfig(role_to_mesh={r: mesh for r in roles},
                                        rollout_engine='vanilla', offload_to_cpu=False,
                                        training_config=training, rollout_config=rollout))
    if algo == 'grpo':
        from tunix.rl.grpo import grpo_learner  # pylint: disable=g-import-not-at-top
        config = grpo_learner.GRPOConfig(num_generations=samples, num_iterations=epochs,
                                         beta=spec['beta'], epsilon=0.2)
        learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=config,
                                           reward_fns=even_fraction(n))
    else:
        from tunix.rl.ppo import ppo_learner  # pylint: disable=g-import-not-at-top
        config = ppo_learner.PPOConfig(num_iterations=epochs, beta=spec['beta'], kl_method='kl',
                                       gamma=1.0, gae_lambda=0.95, epsilon=0.2,
                                       clip_range_value=0.2)
        learner = ppo_learner.PPOLearner(rl_cluster=cluster, ppo_config=config,
                                         reward_fns=even_fraction(n))

    rollout_s = []
    generate = learner._generate_and_compute_advantage  # pylint: disable=protected-access

    def timed_generate(*args, **kw):
        start = time.perf_counter()
        out = jax.block_until_ready(generate(*args, **kw))
        rollout_s.append(time.perf_counter() - start)
        return out

    learner._generate_and_compute_advantage = timed_generate  # pylint: disable=protected-access
    learner.train(data)

    out = tc.summarise(data.stamps, steps, repeats)
    per_iteration = [
        sum(rollout_s[i:i + minibatches]) for i in range(0, len(rollout_s), minibatches)
    ]
    counts = {'rollouts': len(rollout_s), 'actor_updates': int(cluster.actor_trainer.train_steps)}
    if algo == 'ppo':
        counts['critic_updates'] = int(cluster.critic_trainer.train_steps)
    out.update(peer=f'tunix.{"GRPOLearner" if algo == "grpo" else "PPOLearner"}', algo=algo,
               backend=jax.default_backend(), versions=tc.versions(),
               rollout_s=statistics.median(per_iteration[1:]) if len(per_iteration) > 1 else None,
               rows=rows, rollout_rows=rows // minibatches, epochs=epochs, minibatches=minibatches,
               **counts)
    tc.emit(out)


if __name__ == '__main__':
    main()
