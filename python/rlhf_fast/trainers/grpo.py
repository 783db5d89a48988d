r"""GRPO: group-relative advantages, no critic (Shao et al. 2024, DeepSeekMath).

    rlhf-fast grpo --policy runs/sft/model --reward-model runs/reward/model \
        --prompts prompts.jsonl --output-dir runs/grpo --group-size 8
    rlhf-fast grpo --policy runs/sft/model --reward-functions rlhf_fast.demo:gold_score ...

One step (``policy_gradient.GroupTrainer.train_step``), each part a plain function call:
  1. rollout (``rollout.RolloutWorker``): ``prompts_per_step`` prompts, ``group_size``
     completions each, behaviour logprobs from the sampling pass, reference logprobs;
  2. scores: the reward model's (normalised by its held-out mean and std) plus weighted
     reward functions;
  3. advantages in Rust, ``ops.group_advantages``: score minus the group mean, over the
     group std (``normalize="none"`` keeps the raw difference, as Dr. GRPO does);
  4. ``epochs`` passes over shuffled minibatches of ``losses.grpo_loss``: clipped surrogate
     with one advantage per completion, plus ``kl_coef`` x the k3 KL to the reference on
     every token, aggregated per token or per sequence;
  5. metrics and checkpoints (``loop.run_loop``).
With ``kl_coef = 0`` the reference still scores the completions, for the logged KL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlhf_fast import ops
from rlhf_fast.config import RunConfig, option, redefault
from rlhf_fast.trainers.losses import grpo_loss
from rlhf_fast.trainers.policy_gradient import GroupTrainer
from rlhf_fast.trainers.rollout import GroupRollout, GroupSettings, PolicyInputs


@dataclass
class GRPOSettings(GroupSettings):
    """GRPO settings of their own (``demo`` takes them as ``--grpo.*``)."""

    kl_coef: float = option(0.04, "beta: weight of the k3 KL to the reference in the loss.")
    normalize: Literal["std", "none"] = option(
        "std", "Divide advantages by the group's std ('none': Dr. GRPO)."
    )
    loss_aggregation: Literal["token", "sequence"] = option(
        "token",
        "'token': mean over every completion token of the minibatch; 'sequence': mean over "
        "completions of each completion's token mean (the paper's).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("kl_coef", self.kl_coef >= 0, "a number >= 0")


@dataclass
class GRPOConfig(GRPOSettings, PolicyInputs):
    """GRPO fine-tuning of a policy against a reward model and/or reward functions."""

    output_dir: str = redefault(RunConfig, "output_dir", "runs/grpo")


class GRPOTrainer(GroupTrainer):
    """GRPO on the shared group step: its advantages and its loss."""

    stage = "grpo"

    def advantages(self, batch: GroupRollout) -> torch.Tensor:
        """``[B]``: (score - group mean) / (group std + eps), or without the division."""
        cfg = self.config
        return ops.group_advantages(
            batch.scores, group_size=cfg.group_size, normalize=cfg.normalize
        )

    def policy_loss(
        self, logprobs: torch.Tensor, mask: torch.Tensor, mb: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        loss, clipfrac, kl = grpo_loss(
            logprobs,  # (M, T)
            mb["old_logprobs"],
            mb["advantages"],  # (M,)
            mask,
            cfg.clip_range,
            ref_logprobs=mb["ref_logprobs"],
            kl_coef=cfg.kl_coef,
            aggregation=cfg.loss_aggregation,
        )
        return loss, {"policy/clipfrac_avg": clipfrac, "policy/k3_kl_avg": kl}


def run_grpo(config: GRPOConfig) -> dict[str, Any]:
    """The CLI entry point of ``rlhf-fast grpo``: train and return a summary dict."""
    from rlhf_fast.preflight import ppo_prompts

    return GRPOTrainer(config, prompts=ppo_prompts(config)).train()
