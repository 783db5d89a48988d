r"""RLOO: REINFORCE with a leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024).

    rlhf-fast rloo --policy runs/sft/model --reward-model runs/reward/model \
        --prompts prompts.jsonl --output-dir runs/rloo --group-size 4

One step (``policy_gradient.GroupTrainer.train_step``):
  1. rollout in groups of ``group_size`` completions per prompt, scored (``rollout.py``);
  2. the KL goes into the reward, in Rust: ``ops.kl_shaped_rewards`` gives
     ``-kl_coef * kl_t`` per token plus the score on the last one, and a completion's
     reward is their sum, ``score - kl_coef * KL(completion)``;
  3. advantages in Rust, ``ops.group_advantages(leave_one_out=True)``: each reward minus
     the mean of the other ``G - 1`` rewards of its group (an unbiased baseline);
     optionally whitened over the rollout;
  4. ``epochs`` passes of PPO's clipped surrogate with that advantage on every token of
     the completion (with ``epochs = 1`` and one minibatch this is plain REINFORCE);
  5. metrics and checkpoints (``loop.run_loop``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlhf_fast import ops
from rlhf_fast.config import RunConfig, redefault
from rlhf_fast.trainers.losses import clipped_surrogate_loss
from rlhf_fast.trainers.policy_gradient import GroupTrainer
from rlhf_fast.trainers.ppo_settings import PPOSettings
from rlhf_fast.trainers.rollout import GroupRollout, GroupSettings, PolicyInputs


@dataclass
class RLOOSettings(GroupSettings):
    """RLOO settings of their own (``demo`` takes them as ``--rloo.*``)."""

    kl_coef: float = redefault(PPOSettings, "kl_coef", 0.05)
    kl_estimator: Literal["k1", "abs", "k2", "k3"] = redefault(PPOSettings, "kl_estimator", "k1")
    whiten_advantages: bool = redefault(PPOSettings, "whiten_advantages", False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("kl_coef", self.kl_coef >= 0, "a number >= 0")


@dataclass
class RLOOConfig(RLOOSettings, PolicyInputs):
    """RLOO fine-tuning of a policy against a reward model and/or reward functions."""

    output_dir: str = redefault(RunConfig, "output_dir", "runs/rloo")


class RLOOTrainer(GroupTrainer):
    """RLOO on the shared group step: its KL-shaped rewards, baseline and loss."""

    stage = "rloo"

    def advantages(self, batch: GroupRollout) -> torch.Tensor:
        """``[B]``: KL-penalised reward minus the leave-one-out mean of its group."""
        cfg = self.config
        rewards, _ = ops.kl_shaped_rewards(
            batch.logprobs,
            batch.ref_logprobs,
            batch.response_mask,
            batch.scores,
            kl_coef=cfg.kl_coef,
            estimator=cfg.kl_estimator,
        )  # (B, T)
        total = rewards.sum(-1)  # (B,) score - kl_coef * KL
        advantages = ops.group_advantages(
            total, group_size=cfg.group_size, normalize="none", leave_one_out=True
        )
        if cfg.whiten_advantages:
            advantages = ops.masked_whiten(advantages[None], torch.ones_like(advantages[None]))[0]
        return advantages

    def policy_loss(
        self, logprobs: torch.Tensor, mask: torch.Tensor, mb: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        advantages = mb["advantages"][:, None].expand_as(logprobs)  # (M, T)
        loss, clipfrac, approx_kl = clipped_surrogate_loss(
            logprobs, mb["old_logprobs"], advantages, mask, self.config.clip_range
        )
        return loss, {"policy/clipfrac_avg": clipfrac, "policy/approxkl_avg": approx_kl}


def run_rloo(config: RLOOConfig) -> dict[str, Any]:
    """The CLI entry point of ``rlhf-fast rloo``: train and return a summary dict."""
    from rlhf_fast.preflight import ppo_prompts

    return RLOOTrainer(config, prompts=ppo_prompts(config)).train()
