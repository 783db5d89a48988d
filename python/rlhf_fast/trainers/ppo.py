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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch
from tqdm.auto import tqdm

from rlhf_fast import ops
from rlhf_fast.buffer import RolloutBuffer, prompt_response_buffer
from rlhf_fast.config import RunConfig, StageSettings, redefault
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import (
    PolicyWithValueHead,
    RewardModel,
    backbone_of,
    disable_dropout,
    frozen_copy,
    fuse_activations,
    load_causal_lm,
    next_token_logprobs,
    scored_positions,
)
from rlhf_fast.sampling import sample_responses
from rlhf_fast.tokenizer import load_tokenizer
from rlhf_fast.trainers import distributed as dist
from rlhf_fast.trainers.kl_controller import make_kl_controller
from rlhf_fast.trainers.loop import CheckpointState, restore_latest, save_if_due, seeded_batch
from rlhf_fast.trainers.losses import clipped_surrogate_loss, clipped_value_loss
from rlhf_fast.trainers.runtime import (
    autocast,
    default_tokenizer_spec,
    encode_text,
    option,
    pad_rows,
    resolve_device,
    seed_everything,
    skipped_count,
    with_instruction,
)


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


@dataclass
class Rollout:
    """One batch of sampled responses with everything PPO needs. ``[B, T]`` = responses."""

    prompts: list[str]
    responses: list[str]
    sequences: torch.Tensor  # (B, Lq + T) prompt (left-padded) + response (right-padded)
    attention_mask: torch.Tensor  # (B, Lq + T)
    response_mask: torch.Tensor  # (B, T) 1 on response tokens up to and including <eos>
    logprobs: torch.Tensor  # (B, T)
    ref_logprobs: torch.Tensor  # (B, T)
    values: torch.Tensor  # (B, T)
    scores: torch.Tensor  # (B,) as given to the reward shaping
    raw_scores: torch.Tensor  # (B,) reward-model output


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
    @torch.no_grad()
    def reference_logprobs(
        self, ids: torch.Tensor, attention_mask: torch.Tensor, scored: torch.Tensor
    ) -> torch.Tensor:
        """Reference policy's logprobs of the scored next tokens ``[B, L-1]`` (0 elsewhere)."""
        temperature = self.config.temperature
        with autocast(self.device, self.config.bf16_autocast):
            if self.reference is None:  # LoRA: the same weights with the adapters switched off
                with self.model.policy.disable_adapter():
                    logprobs, _, _ = next_token_logprobs(
                        self.model.policy, ids, attention_mask, scored, temperature=temperature
                    )
            else:
                logprobs, _, _ = next_token_logprobs(
                    self.reference, ids, attention_mask, scored, temperature=temperature
                )
        return logprobs

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Rollout:
        """Sample one response per prompt and score it: everything ``train_step`` needs."""
        cfg, tok = self.config, self.tokenizer
        query, query_mask = pad_rows(
            [encode_text(tok, p) for p in prompts], tok.pad_token_id, side="left"
        )
        query, query_mask = query.to(self.device), query_mask.to(self.device)  # (B, Lq)
        n_prompt = query.shape[1]
        self.model.eval()
        # Behaviour logprobs (and shared-trunk values) come from the sampling pass itself.
        # FSDP: sampling and the critic call the model's parts, so they get the full weights.
        with dist.full_params(self.model):
            with autocast(self.device, cfg.bf16_autocast):
                samples = sample_responses(
                    self.model.policy,
                    query,
                    query_mask,
                    max_new_tokens=cfg.max_new_tokens,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                    temperature=cfg.temperature,
                    top_k=cfg.top_k,
                    top_p=cfg.top_p,
                    value_fn=self.model.values_from_hidden if self.model.shared_trunk else None,
                )
            responses, response_mask = samples.tokens, samples.response_mask  # (B, T)
            sequences = torch.cat([query, responses], dim=1)
            attention_mask = torch.cat([query_mask, response_mask.long()], dim=1)
            scored = scored_positions(attention_mask, start=n_prompt)  # (B, L-1) response tokens
            logprobs, values = samples.logprobs, samples.values
            with autocast(self.device, cfg.bf16_autocast):
                if values is None:  # separate critic: one critic pass over prompt + response
                    hidden = self.model.critic_hidden(sequences, attention_mask)
                    values = self.model.values_from_hidden(hidden[:, n_prompt - 1 : -1])
                raw_scores = self.reward_model(sequences, attention_mask)  # (B,)
        values = values * response_mask
        ref_logprobs = self.reference_logprobs(sequences, attention_mask, scored)[:, n_prompt - 1 :]
        scores = raw_scores.clone()
        if cfg.normalize_scores:
            scores = (scores - self.reward_model.score_mean) / self.reward_model.score_std
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~samples.ended).float()
        if cfg.score_clip is not None:
            scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
        texts = tok.batch_decode(responses, skip_special_tokens=True)
        return Rollout(
            prompts,
            texts,
            sequences,
            attention_mask,
            response_mask,
            logprobs,
            ref_logprobs,
            values,
            scores.float(),
            raw_scores.float(),
        )

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

    def train_step(self, batch: Rollout) -> dict[str, float]:
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

    def checkpoint_state(self) -> CheckpointState:
        """What a checkpoint holds: weights, optimizer, the KL controller's coefficient."""
        return CheckpointState(
            modules={"model": self.model},
            optimizers={"optimizer": self.optimizer},
            extra={"kl_controller": self.kl_controller.state_dict(), "config": asdict(self.config)},
            restore_extra=lambda extra: self.kl_controller.load_state_dict(extra["kl_controller"]),
        )

    def train(self) -> dict[str, Any]:
        from rlhf_fast.metrics import MetricsLogger

        cfg, out = self.config, Path(self.config.output_dir)
        if (resumed := restore_latest(cfg, self.checkpoint_state())) is not None:
            self.step = resumed
        logger = MetricsLogger(
            out,
            "ppo",
            tensorboard=cfg.tensorboard,
            resume_step=self.step if cfg.resume else None,
            enabled=dist.is_main_process(),
        )
        metrics: dict[str, float] = {}
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc="ppo",
            disable=not cfg.progress or not dist.is_main_process(),
        )
        while self.step < cfg.max_steps:
            if dist.world_size() > 1:  # ranks sample differently; a resumed run samples the same
                seed_everything(dist.rank_seed(cfg.seed, self.step))
            t0 = time.perf_counter()
            batch = self.rollout(dist.shard(self.prompts_for(self.step)))
            t_rollout = time.perf_counter() - t0
            metrics = self.train_step(batch)
            self.step += 1
            elapsed = time.perf_counter() - t0
            n_tokens = batch.response_mask.sum().item()
            metrics.update(
                {
                    "perf/tokens_per_second": n_tokens / elapsed,
                    "perf/generated_tokens_per_second": n_tokens / max(t_rollout, 1e-9),
                    "perf/seconds_per_step": elapsed,
                }
            )
            if self.sample_metrics is not None:
                metrics.update(self.sample_metrics(batch.prompts, batch.responses))
            metrics = dist.all_reduce_mean(metrics)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                logger.log(self.step, metrics)
            bar.update(1)
            bar.set_postfix(
                score=f"{metrics['objective/scores']:.2f}", kl=f"{metrics['objective/kl']:.2f}"
            )
            save_if_due(cfg, self.step, self.checkpoint_state)
        bar.close()
        logger.close()
        policy_dir = out / "policy"
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
