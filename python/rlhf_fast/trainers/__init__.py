"""The three trainers (SFT, reward model, PPO) and their shared losses and KL controllers.

Import the stage modules directly (``rlhf_fast.trainers.ppo``): each needs torch and
``transformers``, and the PPO trainer the Rust kernels.
"""

from rlhf_fast.trainers.kl_controller import (
    AdaptiveKLController,
    FixedKLController,
    make_kl_controller,
)
from rlhf_fast.trainers.losses import bradley_terry_loss, clipped_surrogate_loss, clipped_value_loss

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "bradley_terry_loss",
    "clipped_surrogate_loss",
    "clipped_value_loss",
    "make_kl_controller",
]
