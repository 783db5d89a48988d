"""The step GRPO and RLOO share: rollout in groups, advantages, epochs of clipped updates.

A subclass gives the two things that make it an algorithm:

- ``advantages(batch) -> [B]``: one advantage per completion from the group's scores;
- ``policy_loss(logprobs, mask, minibatch) -> (loss, metrics)``: its loss on a minibatch of
  completions: ``logprobs``, ``mask`` and the minibatch's ``old_logprobs``,
  ``ref_logprobs`` are ``[M, T]``, aligned with the completion tokens; ``advantages``
  ``[M]``.

Everything else, sampling, scoring, the seeded minibatch order, gradient clipping,
metrics, checkpoints and the saved policy, is here and in ``rollout.py`` / ``loop.py``.
The update's forward runs each prompt of a minibatch once for all its completions
(``prompt_sharing.response_logprobs``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from rlhf_fast.buffer import minibatch_order
from rlhf_fast.prompt_sharing import response_logprobs
from rlhf_fast.trainers import distributed as dist
from rlhf_fast.trainers.loop import CheckpointState, run_loop
from rlhf_fast.trainers.rollout import GroupRollout, RolloutWorker, sequence_metrics
from rlhf_fast.trainers.runtime import autocast, seed_everything

__all__ = ["GroupTrainer"]


class GroupTrainer:
    """Owns the rollout worker (policy, reference, rewards), the optimizer and the step.

    ``sample_metrics``: optional ``f(prompts, completions) -> dict`` logged with each step
    (the demo logs the hidden gold score this way).
    """

    stage = "group"

    def __init__(
        self,
        config: Any,
        prompts: Optional[Sequence[str]] = None,
        sample_metrics: Optional[Callable[[list[str], list[str]], dict[str, float]]] = None,
    ) -> None:
        self.config, self.sample_metrics = config, sample_metrics
        self.worker = RolloutWorker(config, prompts)
        self.device, self.tokenizer = self.worker.device, self.worker.tokenizer
        self.policy = self.worker.policy
        self.minibatch_size = config.minibatch_size // dist.world_size()
        # for the updates only (DDP or FSDP); the worker's reference is a copy made before
        self.ddp_policy = dist.wrap_trained(self.policy, self.device, fsdp=config.fsdp)
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=config.learning_rate * config.lr_multiplier, eps=1e-5
        )
        self.step = 0

    def advantages(self, batch: GroupRollout) -> torch.Tensor:
        raise NotImplementedError

    def policy_loss(
        self, logprobs: torch.Tensor, mask: torch.Tensor, mb: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        """One rollout, its advantages, ``epochs`` passes of minibatch updates; the metrics."""
        cfg = self.config
        if dist.world_size() > 1:  # ranks sample differently; a resumed run samples the same
            seed_everything(dist.rank_seed(cfg.seed, self.step))
        with dist.full_params(self.policy):  # FSDP: sampling calls the policy's parts
            batch = self.worker.rollout(self.worker.prompts_for(self.step), cfg.group_size)
        advantages = self.advantages(batch)  # (B,)
        # tokens per completion (prompt + response), for group_by_length
        lengths = (batch.prompt_mask.sum(-1)[batch.prompt_of] + batch.response_mask.sum(-1)).cpu()
        self.policy.train()
        stats: dict[str, list[float]] = defaultdict(list)
        for epoch in range(cfg.epochs):
            seed = cfg.seed * 1_000_003 + self.step * 131 + epoch
            for order in minibatch_order(
                lengths.numpy(),
                self.minibatch_size,
                seed,
                group_by_length=cfg.group_by_length,
            ):
                index = torch.from_numpy(order).to(self.device)
                rows = batch.rows(index)
                mask = rows[-1]  # (M, T) the minibatch's completion tokens
                with autocast(self.device, cfg.bf16_autocast):
                    logprobs = response_logprobs(
                        self.ddp_policy, *rows, temperature=cfg.temperature
                    )
                length = mask.shape[1]
                mb = {
                    "old_logprobs": batch.logprobs[index, :length],
                    "ref_logprobs": batch.ref_logprobs[index, :length],
                    "advantages": advantages[index],
                }
                loss, loss_stats = self.policy_loss(logprobs, mask, mb)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
                self.optimizer.step()
                stats["loss/policy_avg"].append(loss.item())
                for key, value in loss_stats.items():
                    stats[key].append(float(value))
        metrics = sequence_metrics(batch)
        metrics.update({k: sum(v) / len(v) for k, v in stats.items()})
        groups = batch.scores.view(-1, cfg.group_size)
        metrics["objective/advantage_abs"] = advantages.abs().mean().item()
        metrics["objective/zero_std_groups"] = (groups.std(-1) == 0).float().mean().item()
        if self.sample_metrics is not None:
            metrics.update(self.sample_metrics(batch.prompts, batch.completions))
        return metrics

    def checkpoint_state(self) -> CheckpointState:
        return CheckpointState({"policy": self.policy}, {"optimizer": self.optimizer})

    def train(
        self, hooks: Sequence[Callable[[Any], dict[str, float]]] = (), hook_every: int = 0
    ) -> dict[str, Any]:
        """Run up to ``max_steps`` (resuming when asked), save the policy; a summary dict.

        ``hooks``: ``f(trainer) -> dict`` called every ``hook_every`` steps and at the end.
        """
        metrics = run_loop(
            self,
            self.stage,
            hooks=hooks,
            hook_every=hook_every,
            postfix=("objective/scores", "objective/kl"),
        )
        policy_dir = Path(self.config.output_dir) / "policy"
        policy = dist.full_model(self.policy)  # FSDP: gathered from every rank onto rank 0
        if dist.is_main_process():
            policy.save_pretrained(policy_dir)
            self.tokenizer.save_pretrained(policy_dir)
        dist.barrier()
        return {
            "stage": self.stage,
            "n_skipped_records": self.worker.n_skipped,
            "steps": self.step,
            "policy_dir": str(policy_dir),
            **{k: v for k, v in metrics.items() if k.startswith(("objective/", "rewards/"))},
        }
