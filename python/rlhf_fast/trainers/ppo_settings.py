"""PPO's options: ``PPOSettings`` (the stage's own, ``--ppo.*`` in ``pipeline`` and ``demo``)
and ``PPOConfig`` (those plus the run's: models, prompts, output directory).

Declarations only, so that the option lists of the other stages (``rollout.py``,
``rloo.py``, ``dpo.py``) can take their defaults from PPO's without importing the trainer.
``rlhf_fast.trainers.ppo`` re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from rlhf_fast.config import RunConfig, StageSettings, option, redefault

__all__ = ["PPOConfig", "PPOSettings"]


@dataclass
class PPOSettings(StageSettings):
    """PPO settings of their own (``pipeline`` and ``demo`` take them as ``--ppo.*``)."""

    value_model: str = option(
        "",
        "Separate critic's starting trunk (local directory); empty: a copy of the policy's trunk.",
    )
    shared_value_trunk: bool = option(
        True,
        "Read values from the policy's own trunk (one forward and backward per minibatch, "
        "not two); off: a separate critic trunk.",
    )
    value_head_hidden: int = option(
        256, "Hidden width of the MLP value head (tanh); 0: a linear head."
    )
    prompt_field: str = option("prompt", "Name of the prompt field in the prompts file.")
    max_steps: int = option(100, "RL train steps: rollout + PPO epochs, this many times.")
    rollout_batch_size: int = option(64, "Prompts (= responses) per rollout (over all ranks).")
    minibatch_size: int = option(16, "Responses per PPO minibatch (over all ranks).")
    ppo_epochs: int = option(4, "Passes over each rollout.")
    group_by_length: bool = option(
        True,
        "Minibatches of responses of similar length (less padding); the order stays seeded-random.",
    )
    learning_rate: float = option(1e-4, "Learning rate (AdamW) of policy and value head.")
    max_new_tokens: int = option(
        32, "Response length cap in tokens; prompts get the rest of the policy's context."
    )
    temperature: float = option(1.0, "Sampling temperature (also divides the logits for logprobs).")
    top_k: int = option(0, "Top-k sampling (0: off).")
    top_p: float = option(1.0, "Nucleus sampling (1.0: off).")
    gamma: float = option(1.0, "Discount of the GAE recursion.")
    lam: float = option(0.95, "GAE lambda.")
    clip_range: float = option(0.2, "Policy ratio clip epsilon.")
    value_clip_range: float = option(0.2, "Value clip epsilon around the rollout values.")
    vf_coef: float = option(0.5, "Weight of the value loss.")
    entropy_coef: float = option(0.0, "Entropy bonus weight (0: off).")
    kl_coef: float = option(0.05, "KL penalty coefficient (initial value when target_kl is set).")
    kl_estimator: Literal["k1", "abs", "k2", "k3"] = option(
        "k1", "Per-token KL estimator in the reward."
    )
    target_kl: Optional[float] = option(
        None, "Adaptive KL controller target (nats per sequence); unset: fixed kl_coef."
    )
    kl_horizon: int = option(10000, "Adaptive KL controller horizon (sequences).")
    normalize_scores: bool = option(
        True, "Normalise scores by the reward model's held-out mean and std."
    )
    score_clip: Optional[float] = option(
        None, "Clip (normalised) scores to [-score_clip, score_clip]; unset: no clip."
    )
    missing_eos_penalty: Optional[float] = option(
        None, "Subtract this from the score of responses cut at max_new_tokens."
    )
    whiten_advantages: bool = option(True, "Whiten advantages over the rollout.")
    lora_r: int = option(
        0,
        "LoRA rank for the policy (peft); 0: full fine-tuning. With LoRA the reference is the policy with adapters off.",
    )
    lora_alpha: float = option(16.0, "LoRA alpha.")
    log_every: int = redefault(StageSettings, "log_every", 1)
    save_every: int = redefault(StageSettings, "save_every", 50)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("max_steps", self.max_steps >= 1, "an integer >= 1")
        self._require("rollout_batch_size", self.rollout_batch_size >= 2, "an integer >= 2")
        self._require("minibatch_size", self.minibatch_size >= 1, "an integer >= 1")
        self._require("ppo_epochs", self.ppo_epochs >= 1, "an integer >= 1")
        self._require(
            "value_head_hidden", self.value_head_hidden >= 0, "an integer >= 0 (0: a linear head)"
        )
        self._require("learning_rate", self.learning_rate > 0, "a number > 0")
        self._require("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1")
        self._require("temperature", self.temperature > 0, "a number > 0")
        self._require("top_k", self.top_k >= 0, "an integer >= 0")
        self._require("top_p", 0 < self.top_p <= 1, "a number in (0, 1]")
        self._require("kl_coef", self.kl_coef >= 0, "a number >= 0")
        self._require("lora_r", self.lora_r >= 0, "an integer >= 0")


@dataclass
class PPOConfig(PPOSettings, RunConfig):
    """PPO fine-tuning of a policy against a reward model, with a KL penalty to the reference."""

    output_dir: str = redefault(RunConfig, "output_dir", "runs/ppo")
    policy: str = option(
        "runs/sft/model",
        "Initial policy (and reference): a local causal-LM directory or a built-in name.",
    )
    reward_model: str = option(
        "runs/reward/model", "Reward-model directory written by the reward trainer."
    )
    prompts: str = option("", "Prompts: JSONL or Parquet file with a prompt field.")

    def __post_init__(self) -> None:
        super().__post_init__()
        # FSDP would shard peft's wrapped model, whose adapters the LoRA reference switches
        # off by name and whose merge the saved policy needs: not supported together.
        self._require(
            "lora_r",
            not (self.fsdp and self.lora_r > 0),
            "0 with --fsdp (FSDP does not shard a LoRA policy; drop one of the two)",
        )
