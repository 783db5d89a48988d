"""The trainers (SFT, reward model, PPO, GRPO, RLOO, DPO), their losses and KL controllers.

Import the stage modules directly (``rlhf_fast.trainers.ppo``, ``.grpo``, ``.rloo``, ``.dpo``):
each needs torch and ``transformers``, and the RL trainers the Rust kernels. GRPO and RLOO
share ``rollout.py`` (group sampling and scoring) and ``policy_gradient.py`` (their step);
PPO keeps its options in ``ppo_settings.py`` and its sampling and scoring in
``ppo_rollout.py``; PPO, GRPO, RLOO and DPO share ``loop.py`` (resume, metrics, checkpoints).
"""

from rlhf_fast.trainers.kl_controller import (
    AdaptiveKLController,
    FixedKLController,
    make_kl_controller,
)
from rlhf_fast.trainers.losses import (
    bradley_terry_loss,
    clipped_surrogate_loss,
    clipped_value_loss,
    dpo_loss,
    grpo_loss,
)

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "bradley_terry_loss",
    "clipped_surrogate_loss",
    "clipped_value_loss",
    "dpo_loss",
    "grpo_loss",
    "make_kl_controller",
]
