"""The synthetic task's gold evaluation: the policy's samples scored by the task's gold reward
against its reference's (gold reward, win rate, KL to the reference; exploitability on the
intransitive task; with a learned scorer, its proxy reward too). Nothing on real data."""

from __future__ import annotations

from alignjax import evaluation


def make(config, task, reference, tok, *, max_new_tokens: int, policy_of=lambda model: model,
         scorer=None):
    """`(model, step) -> figures` of `policy_of(model)` against `reference`."""
    def evaluate(model, step):
        del step
        e = config.eval
        return evaluation.gold_evaluation(
            task, policy_of(model), reference, tok, num_prompts=e.num_prompts,
            max_prompt_len=config.data.max_prompt_len, max_new_tokens=max_new_tokens,
            temperature=e.temperature, seed=config.seed, with_kl=True, scorer=scorer,
            beta=config.get('loss', {}).get('beta'), top_k=config.get('monitors',
                                                                      {}).get('top_k', 0))

    return evaluate


def make_policy_only(config, task, tok, *, initial_policy):
    """SFT's: the gold reward of the policy's samples while training, and at the end the full
    evaluation against `initial_policy()` (its starting point, rebuilt)."""
    e = config.eval
    kw = dict(num_prompts=e.num_prompts, max_prompt_len=config.data.max_prompt_len,
              max_new_tokens=e.max_new_tokens, temperature=e.temperature, seed=config.seed)

    def evaluate(model, step):
        del step
        return {'gold_reward': evaluation.policy_gold_reward(task, model, tok, **kw)}

    def final(model):
        return evaluation.gold_evaluation(task, model, initial_policy(), tok, **kw)

    return evaluate, final
