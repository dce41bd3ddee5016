"""alignjax's objectives: pure `jnp` functions of log-probs, values, rewards and masks.

They know nothing of models, meshes or files; each states its equation and paper in its docstring
and is tested against an independent NumPy reference (tests/losses/). Losses return
`(sum, count)` so that accumulation over microbatches divides once.

    from alignjax import losses
    loss_sum, count, metrics = losses.dpo_loss(pc, pr, rc, rr, beta=0.1)
    sorted(losses.PAIR_LOSSES)  # the DPO family, one pure function a row

Modules: `sft`, `reward` (Bradley-Terry, ensembles, calibration), `preference` (the pairwise
preference model and the DPO family), `policy_gradient` (clipped ratio, value loss, KL
estimators), `advantages` (GAE, ReMax, RLOO, GRPO, REINFORCE++, whitening), `nash` (the Nash
family's advantages and regression losses).
"""

from alignjax.losses import advantages, nash, policy_gradient, preference, reward, sft
from alignjax.losses.advantages import (gae, grpo_advantages, reinforce_pp_advantages,
                                        remax_advantages, rloo_advantages, whiten)
from alignjax.losses.policy_gradient import kl_estimate, policy_loss, value_loss
from alignjax.losses.preference import (LOSS_TYPES, PAIR_LOSSES, PairLoss, dpo_loss,
                                        preference_losses, preference_model_loss)
from alignjax.losses.reward import aggregate_ensemble, bradley_terry_loss
from alignjax.losses.sft import sft_loss

__all__ = [
    'advantages', 'nash', 'policy_gradient', 'preference', 'reward', 'sft', 'gae',
    'grpo_advantages', 'reinforce_pp_advantages', 'remax_advantages', 'rloo_advantages', 'whiten',
    'kl_estimate', 'policy_loss', 'value_loss', 'LOSS_TYPES', 'PAIR_LOSSES', 'PairLoss', 'dpo_loss',
    'preference_losses', 'preference_model_loss', 'aggregate_ensemble', 'bradley_terry_loss',
    'sft_loss'
]
