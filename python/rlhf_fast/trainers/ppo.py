r"""PPO with a value head and a per-token KL penalty against a frozen reference.

    rlhf-fast ppo --policy runs/sft/model --reward-model runs/reward/model \
        --prompts prompts.jsonl --output-dir runs/ppo
    torchrun --nproc-per-node 2 -m rlhf_fast.cli ppo ...   # DDP, rollouts split by rank

One iteration (Ziegler et al. 2019; Ouyang et al. 2022), each step a plain function call:
  1. rollout: ``sampling.sample_responses`` (KV cache, batched, stop at ``<eos>``, at most
     ``max_new_tokens``) also returns the behaviour logprobs and, with a shared trunk, the
     values, read off the sampling pass: no second policy forward;
  2. score: reward model on prompt + response, reference logprobs of the response tokens
     (``models.next_token_logprobs``: the LM head only where a response token is
     predicted), the separate critic's values when there is one;
  3. per-token math in Rust (``rlhf_fast.ops``): ``kl_shaped_rewards`` -> ``gae`` ->
     ``masked_whiten`` of the advantages, with bool masks;
  4. ``ppo_epochs`` passes over shuffled minibatches from the ``RolloutBuffer`` (filled by
     one masked selection; ``group_by_length`` minibatches carry less padding): clipped
     surrogate + clipped value loss (- entropy bonus), gradient clipping, AdamW;
  5. KL controller update, metrics (TRL's names), checkpoint.
Where the time goes is torch work, so the trainer does less of it: one forward per model
per rollout, logits only on response positions, fused GELUs (``models.fuse_activations``),
less padding; ``benches/e2e_ppo.py --lever-table`` measures each of these alone.
Deviation from TRL: the reward model's score is normalised by its held-out mean/std
(``normalize_scores``) so that ``kl_coef`` means the same thing whatever the RM scale.
On several ranks ``rollout_batch_size`` and ``minibatch_size`` stay global: each rank
samples its share of the prompts with its own seed, whitens its own advantages, and
updates through ``DistributedDataParallel``; the adaptive KL controller reads the KL
averaged over ranks, so ``kl_coef`` stays the same everywhere.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from rlhf_fast import ops
from rlhf_fast.buffer import RolloutBuffer, prompt_response_buffer
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import (
    PolicyWithValueHead,
    RewardModel,
    backbone_of,
    disable_dropout,
    frozen_copy,
    fuse_activations,
    load_causal_lm,
)
from rlhf_fast.tokenizer import load_tokenizer
from rlhf_fast.trainers import distributed as dist
from rlhf_fast.trainers import ppo_rollout
from rlhf_fast.trainers.kl_controller import make_kl_controller
from rlhf_fast.trainers.loop import CheckpointState, run_loop, seeded_batch
from rlhf_fast.trainers.losses import clipped_surrogate_loss, clipped_value_loss
from rlhf_fast.trainers.ppo_rollout import Rollout
from rlhf_fast.trainers.ppo_settings import PPOConfig, PPOSettings
from rlhf_fast.trainers.runtime import (
    autocast,
    default_tokenizer_spec,
    resolve_device,
    seed_everything,
    skipped_count,
    with_instruction,
)

__all__ = ["PPOConfig", "PPOSettings", "PPOTrainer", "Rollout", "run_ppo"]


class PPOTrainer:
    """Owns the policy, value head, reference, reward model and optimizer of one PPO run.

    ``sample_metrics``: optional ``f(prompts, responses) -> dict`` whose values are logged
    with each iteration's metrics (the demo logs the hidden gold score this way).
    """

    def __init__(
        self,
        config: PPOConfig,
        prompts: Optional[list[str]] = None,
        sample_metrics: Optional[Callable[[list[str], list[str]], dict[str, float]]] = None,
    ) -> None:
        cfg = config
        if (
            cfg.rollout_batch_size < 2
            or cfg.minibatch_size < 1
            or cfg.max_steps < 1
            or cfg.ppo_epochs < 1
        ):
            raise InvalidArgumentError(
                "rollout_batch_size >= 2, minibatch_size, max_steps, ppo_epochs >= 1 expected, got "
                f"{cfg.rollout_batch_size}, {cfg.minibatch_size}, {cfg.max_steps}, {cfg.ppo_epochs}"
            )
        self.config, self.sample_metrics = cfg, sample_metrics
        self.device = dist.init_distributed(resolve_device(cfg.device))
        dist.per_rank("rollout_batch_size", cfg.rollout_batch_size)
        self.minibatch_size = dist.per_rank("minibatch_size", cfg.minibatch_size)  # this rank's
        seed_everything(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.tokenizer or default_tokenizer_spec(cfg.policy))
        policy = fuse_activations(load_causal_lm(cfg.policy, self.tokenizer, seed=cfg.seed))
        disable_dropout(policy)
        critic = None
        if not cfg.shared_value_trunk:
            critic = backbone_of(
                fuse_activations(
                    load_causal_lm(cfg.value_model or cfg.policy, self.tokenizer, seed=cfg.seed)
                )
            )
            disable_dropout(critic)
        if cfg.lora_r > 0:  # reference = the same weights with the adapters switched off
            from peft import LoraConfig, get_peft_model
            from transformers.pytorch_utils import Conv1D

            gpt2_style = any(
                isinstance(m, Conv1D) for m in policy.modules()
            )  # weights stored (in, out)
            lora = LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, fan_in_fan_out=gpt2_style
            )
            policy = get_peft_model(policy, lora)
            self.reference = None
        else:
            self.reference = frozen_copy(policy).to(self.device)
        self.model = PolicyWithValueHead(policy, critic, cfg.value_head_hidden).to(self.device)
        # for the PPO updates only (DDP or FSDP). The reference stays whole on every rank:
        # frozen, it has no gradients or optimizer state to shard, and sharded it would be
        # gathered whole for every rollout anyway.
        self.ddp_model = dist.wrap_trained(self.model, self.device, fsdp=cfg.fsdp)
        self.reward_model = fuse_activations(RewardModel.from_pretrained(cfg.reward_model))
        self.reward_model.to(self.device).eval()
        for p in self.reward_model.parameters():
            p.requires_grad_(False)
        if prompts is None:  # loaded and checked against the policy's context
            from rlhf_fast.preflight import ppo_prompts

            prompts = ppo_prompts(cfg)
        self.n_skipped = skipped_count(prompts)
        if len(prompts) == 0:
            raise InvalidArgumentError("prompts: expected at least one prompt, got none")
        self.prompts = [with_instruction(p, cfg.instruction) for p in prompts]
        params = [p for p in self.model.parameters() if p.requires_grad]
        # fused (torch >= 2.4): one kernel over every tensor, not a loop of small ones per step
        fused = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.learning_rate * cfg.lr_multiplier, eps=1e-5, fused=fused or None
        )
        self.kl_controller = make_kl_controller(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.step = 0

    # ------------------------------------------------------------------ 1-2. rollout and scoring
    def rollout(self, prompts: list[str]) -> Rollout:
        """Sample one response per prompt and score it (``ppo_rollout.rollout``): everything
        ``update`` needs."""
        return ppo_rollout.rollout(self, prompts)

    # ------------------------------------------------------------------ 3-4. advantages and PPO epochs
    def advantages(self, batch: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rust kernels: KL-shaped rewards -> GAE -> whitening. Returns (advantages, returns, kl), ``[B, T]``."""
        cfg, mask = self.config, batch.response_mask  # bool: the kernels' fastest mask
        rewards, kl = ops.kl_shaped_rewards(
            batch.logprobs,
            batch.ref_logprobs,
            mask,
            batch.scores,
            kl_coef=self.kl_controller.value,
            estimator=cfg.kl_estimator,
        )
        advantages, returns = ops.gae(rewards, batch.values, mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            advantages = ops.masked_whiten(advantages, mask)
        return advantages, returns, kl

    def fill_buffer(
        self, batch: Rollout, advantages: torch.Tensor, returns: torch.Tensor
    ) -> RolloutBuffer:
        """One buffer row per response: prompt + response tokens without padding, the
        per-token fields 0 on prompt tokens (``buffer.prompt_response_buffer``)."""
        per_token = {
            "old_logprobs": batch.logprobs,
            "old_values": batch.values,
            "advantages": advantages,
            "returns": returns,
        }
        return prompt_response_buffer(
            batch.sequences, batch.attention_mask, batch.response_mask, per_token
        )

    def update(self, batch: Rollout) -> dict[str, float]:
        """``ppo_epochs`` passes of minibatch updates on ``batch``, the KL controller's
        update; the rollout's and the updates' metrics."""
        cfg = self.config
        mask = batch.response_mask.float()  # (B, T) for the metrics' sums
        kl_coef = self.kl_controller.value  # the coefficient this rollout is shaped with
        advantages, returns, kl = self.advantages(batch)
        buffer = self.fill_buffer(batch, advantages, returns)
        self.model.train()
        stats: dict[str, list[float]] = {
            k: [] for k in ("pg", "vf", "ent", "clip", "vclip", "akl", "ratio")
        }
        for epoch in range(cfg.ppo_epochs):
            seed = cfg.seed * 1_000_003 + self.step * 131 + epoch
            for mb in buffer.minibatches(
                self.minibatch_size,
                seed,
                side="right",
                as_torch=True,
                device=self.device,
                group_by_length=cfg.group_by_length,
            ):
                attention_mask = mb["mask"].long()  # (M, L)
                mb_mask = mb["is_response"][:, 1:].bool()  # (M, L-1) token s+1 is a response token
                with autocast(self.device, cfg.bf16_autocast):
                    logprobs, values, entropy = self.ddp_model(
                        mb["input_ids"],
                        attention_mask,
                        mb_mask,
                        temperature=cfg.temperature,
                        entropy=True,
                    )  # (M, L-1) each
                if cfg.entropy_coef == 0:
                    entropy = entropy.detach()  # logged only: no gradient through it
                old_logprobs, old_values = mb["old_logprobs"][:, 1:], mb["old_values"][:, 1:]
                pg_loss, clipfrac, approx_kl = clipped_surrogate_loss(
                    logprobs, old_logprobs, mb["advantages"][:, 1:], mb_mask, cfg.clip_range
                )
                vf_loss, vf_clipfrac = clipped_value_loss(
                    values, old_values, mb["returns"][:, 1:], mb_mask, cfg.value_clip_range
                )
                mean_entropy = entropy.sum() / mb_mask.sum().clamp(min=1)
                loss = pg_loss + cfg.vf_coef * vf_loss - cfg.entropy_coef * mean_entropy
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                with torch.no_grad():
                    ratio = ((logprobs - old_logprobs).exp() * mb_mask).sum() / mb_mask.sum().clamp(
                        min=1.0
                    )
                for key, value in zip(
                    stats, (pg_loss, vf_loss, mean_entropy, clipfrac, vf_clipfrac, approx_kl, ratio)
                ):
                    stats[key].append(float(value.detach()))
        n_prompt = batch.sequences.shape[1] - mask.shape[1]
        seq_kl = (kl * mask).sum(-1)  # (B,) nats per response
        mean_kl = dist.all_reduce_mean({"kl": seq_kl.mean()})["kl"]  # same on every rank
        new_coef = self.kl_controller.update(mean_kl, mask.shape[0] * dist.world_size())
        explained_variance = 1.0 - float(
            ops.masked_var(returns - batch.values, mask, unbiased=False)
            / max(float(ops.masked_var(returns, mask, unbiased=False)), 1e-8)
        )
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return {
            "objective/kl": seq_kl.mean().item(),
            "objective/scores": batch.scores.mean().item(),
            "objective/raw_scores": batch.raw_scores.mean().item(),
            "objective/non_score_reward": (-kl_coef * seq_kl).mean().item(),
            "objective/rlhf_reward": (batch.scores - kl_coef * seq_kl).mean().item(),
            "objective/entropy": (-(batch.logprobs * mask).sum(-1)).mean().item(),
            "objective/kl_coef": new_coef,
            "loss/policy_avg": mean(stats["pg"]),
            "loss/value_avg": mean(stats["vf"]),
            "policy/entropy_avg": mean(stats["ent"]),
            "policy/clipfrac_avg": mean(stats["clip"]),
            "policy/approxkl_avg": mean(stats["akl"]),
            "val/clipfrac_avg": mean(stats["vclip"]),
            "val/ratio": mean(stats["ratio"]),
            "val/explained_variance": explained_variance,
            "val/num_response_tokens": mask.sum(-1).mean().item(),
            "val/num_eos_tokens": (batch.sequences[:, n_prompt:] == self.tokenizer.eos_token_id)
            .any(-1)
            .float()
            .sum()
            .item(),
        }

    # ------------------------------------------------------------------ 5. the loop
    def prompts_for(self, step: int) -> list[str]:
        """Prompts of iteration ``step`` over all ranks (seeded, so a resumed run gets the same):
        for callers that drive ``rollout`` and ``train_step`` themselves."""
        cfg = self.config
        order = seeded_batch(len(self.prompts), cfg.rollout_batch_size, step, cfg.seed)
        return [self.prompts[i] for i in order]

    def train_step(self, batch: Optional[Rollout] = None) -> dict[str, float]:
        """One iteration (``run_loop``'s step): this rank's rollout of the step's prompts,
        then ``update``. Given a ``batch`` rolled out by the caller: ``update(batch)`` alone."""
        if batch is not None:
            return self.update(batch)
        cfg = self.config
        if dist.world_size() > 1:  # ranks sample differently; a resumed run samples the same
            seed_everything(dist.rank_seed(cfg.seed, self.step))
        t0 = time.perf_counter()
        batch = self.rollout(dist.shard(self.prompts_for(self.step)))
        t_rollout = time.perf_counter() - t0
        metrics = self.update(batch)
        elapsed = time.perf_counter() - t0
        n_tokens = batch.response_mask.sum().item()
        metrics["perf/tokens_per_second"] = n_tokens / elapsed
        metrics["perf/generated_tokens_per_second"] = n_tokens / max(t_rollout, 1e-9)
        if self.sample_metrics is not None:
            metrics.update(self.sample_metrics(batch.prompts, batch.responses))
        return metrics

    def checkpoint_state(self) -> CheckpointState:
        """What a checkpoint holds: weights, optimizer, the KL controller's coefficient."""
        return CheckpointState(
            modules={"model": self.model},
            optimizers={"optimizer": self.optimizer},
            extra={"kl_controller": self.kl_controller.state_dict(), "config": asdict(self.config)},
            restore_extra=lambda extra: self.kl_controller.load_state_dict(extra["kl_controller"]),
        )

    def train(self) -> dict[str, Any]:
        """Run up to ``max_steps`` (resuming when asked), save the policy; a summary dict."""
        metrics = run_loop(self, "ppo", postfix=("objective/scores", "objective/kl"))
        policy_dir = Path(self.config.output_dir) / "policy"
        model = dist.full_model(self.model)  # FSDP: gathered from every rank onto rank 0
        if dist.is_main_process():
            model.save_pretrained(policy_dir)
            self.tokenizer.save_pretrained(policy_dir)
        dist.barrier()
        return {
            "stage": "ppo",
            "n_skipped_records": self.n_skipped,
            "steps": self.step,
            "policy_dir": str(policy_dir),
            **{k: v for k, v in metrics.items() if k.startswith(("objective/", "val/"))},
        }


def run_ppo(config: PPOConfig) -> dict[str, Any]:
    """The CLI entry point of ``rlhf-fast ppo``: train and return a summary dict."""
    return PPOTrainer(config).train()
