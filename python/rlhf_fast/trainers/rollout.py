"""Group rollouts and their scores: what GRPO and RLOO share.

One rollout takes ``prompts_per_step`` prompts and samples ``group_size`` completions of
each (a prompt's completions are consecutive rows, the layout ``ops.group_advantages``
reads) with the KV-cached loop (``sampling.sample_responses``: the behaviour logprobs come
from the sampling pass). The reference's logprobs of the same tokens and the reward model's
scores come from forwards that run each prompt once for its whole group
(``prompt_sharing``); Python reward functions score the texts.

Reward functions are named ``module:function`` and called as
``function(completions, prompts) -> sequence of floats`` (one per completion, finite);
``rlhf_fast.demo:gold_score`` is one. A function that raises, returns the wrong number
of values or a NaN stops the run with an error naming it and the prompt index.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from rlhf_fast.config import RunConfig, StageSettings, option, redefault
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import (
    RewardModel,
    disable_dropout,
    frozen_copy,
    fuse_activations,
    load_causal_lm,
)
from rlhf_fast.prompt_sharing import response_logprobs, reward_scores
from rlhf_fast.sampling import sample_responses
from rlhf_fast.tokenizer import load_tokenizer
from rlhf_fast.trainers import distributed as dist
from rlhf_fast.trainers.loop import seeded_batch
from rlhf_fast.trainers.ppo_settings import PPOConfig, PPOSettings
from rlhf_fast.trainers.runtime import (
    autocast,
    default_tokenizer_spec,
    encode_text,
    pad_rows,
    resolve_device,
    sampling_options,
    seed_everything,
    skipped_count,
    with_instruction,
)

__all__ = [
    "GroupRollout",
    "GroupSettings",
    "PolicyInputs",
    "RewardFunctionError",
    "RolloutWorker",
    "load_reward_function",
    "sequence_metrics",
]


@dataclass
class GroupSettings(StageSettings):
    """Settings GRPO and RLOO share: sampling in groups, scoring, the policy updates."""

    group_size: int = option(4, "Completions sampled per prompt (G >= 2): the group baseline.")
    prompts_per_step: int = option(16, "Prompts per step (over all ranks); G completions each.")
    max_steps: int = option(100, "Train steps: rollout + policy epochs, this many times.")
    epochs: int = option(1, "Passes over each rollout (1: on-policy, the ratio stays 1).")
    minibatch_size: int = option(
        64, "Completions per optimizer step (over all ranks); divides prompts_per_step * G."
    )
    learning_rate: float = option(1e-5, "Learning rate (AdamW) of the policy.")
    clip_range: float = redefault(PPOSettings, "clip_range", 0.2)
    max_new_tokens: int = redefault(PPOSettings, "max_new_tokens", 32)
    temperature: float = redefault(PPOSettings, "temperature", 1.0)
    top_k: int = redefault(PPOSettings, "top_k", 0)
    top_p: float = redefault(PPOSettings, "top_p", 1.0)
    prompt_field: str = redefault(PPOSettings, "prompt_field", "prompt")
    group_by_length: bool = redefault(PPOSettings, "group_by_length", False)
    normalize_scores: bool = redefault(PPOSettings, "normalize_scores", True)
    reward_functions: list[str] = option(
        [],
        "Python reward functions 'module:function', called as f(completions, prompts) -> "
        "floats; added to the reward model's score (e.g. rlhf_fast.demo:gold_score).",
    )
    reward_weights: list[float] = option(
        [], "Weight of each reward function (default 1 each); the reward model weighs 1."
    )
    log_every: int = redefault(StageSettings, "log_every", 1)
    save_every: int = redefault(StageSettings, "save_every", 50)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("group_size", self.group_size >= 2, "an integer >= 2 (a group baseline)")
        self._require("prompts_per_step", self.prompts_per_step >= 1, "an integer >= 1")
        self._require("max_steps", self.max_steps >= 1, "an integer >= 1")
        self._require("epochs", self.epochs >= 1, "an integer >= 1")
        n = self.prompts_per_step * self.group_size
        self._require(
            "minibatch_size",
            self.minibatch_size >= 1 and n % self.minibatch_size == 0,
            f"a divisor of prompts_per_step * group_size = {n}",
        )
        self._require("learning_rate", self.learning_rate > 0, "a number > 0")
        self._require("clip_range", self.clip_range > 0, "a number > 0")
        self._require("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1")
        self._require("temperature", self.temperature > 0, "a number > 0")
        self._require("top_k", self.top_k >= 0, "an integer >= 0")
        self._require("top_p", 0 < self.top_p <= 1, "a number in (0, 1]")
        self._require(
            "reward_weights",
            not self.reward_weights or len(self.reward_weights) == len(self.reward_functions),
            f"one weight per reward function ({len(self.reward_functions)})",
        )


@dataclass
class PolicyInputs(RunConfig):
    """The models and prompts of a policy-gradient stage."""

    policy: str = redefault(PPOConfig, "policy", "runs/sft/model")
    reward_model: str = option(
        "", "Reward-model directory written by the reward trainer; empty: reward functions only."
    )
    prompts: str = redefault(PPOConfig, "prompts", "")


class RewardFunctionError(InvalidArgumentError):
    """A reward function raised, or returned the wrong number of values or a non-finite one."""


def load_reward_function(spec: str) -> Callable[..., Any]:
    """The function named by ``"package.module:function"``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidArgumentError(
            f"reward_functions: expected 'module:function' (e.g. 'rlhf_fast.demo:gold_score'), "
            f"got {spec!r}"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidArgumentError(f"reward_functions: cannot load {spec!r}: {exc}") from exc
    if not callable(fn):
        raise InvalidArgumentError(f"reward_functions: {spec!r} is not callable")
    return fn


def _call_reward_function(
    spec: str, fn: Callable[..., Any], completions: list[str], prompts: list[str]
) -> np.ndarray:
    """``fn``'s scores as float64 ``[N]``, or a ``RewardFunctionError`` naming the prompt."""
    try:
        values = fn(completions, prompts)
    except Exception as exc:
        where = ""
        for i in range(len(prompts)):  # find the first completion it fails on
            try:
                fn(completions[i : i + 1], prompts[i : i + 1])
            except Exception:
                where = f" on prompt index {i} ({prompts[i]!r})"
                break
        raise RewardFunctionError(
            f"reward_functions: {spec} raised {type(exc).__name__}: {exc}{where}"
        ) from exc
    try:
        scores = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise RewardFunctionError(
            f"reward_functions: {spec} returned {type(values).__name__}, expected "
            f"{len(completions)} numbers"
        ) from exc
    if scores.shape[0] != len(completions) or np.ndim(values) != 1:
        raise RewardFunctionError(
            f"reward_functions: {spec} returned {scores.shape[0]} values for "
            f"{len(completions)} completions (one per completion expected)"
        )
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        i = int(bad[0])
        raise RewardFunctionError(
            f"reward_functions: {spec} returned {scores[i]} for prompt index {i} "
            f"({prompts[i]!r}); expected a finite number"
        )
    return scores


@dataclass
class GroupRollout:
    """Sampled completions, ``B = prompts x group_size`` rows, a prompt's group consecutive.

    The tensors are the ``prompt_sharing`` layout: distinct prompts once, each row's
    completion with the index of its prompt.
    """

    prompts: list[str]  # (B,) each prompt repeated group_size times
    completions: list[str]  # (B,)
    prompt_ids: torch.Tensor  # (P, Lq) the distinct prompts, left-padded
    prompt_mask: torch.Tensor  # (P, Lq)
    prompt_of: torch.Tensor  # (B,) int64: row b completes prompt prompt_of[b]
    tokens: torch.Tensor  # (B, T) completion tokens, right-padded
    response_mask: torch.Tensor  # (B, T) bool: completion tokens up to and including <eos>
    logprobs: torch.Tensor  # (B, T) behaviour policy, from the sampling pass
    ref_logprobs: torch.Tensor  # (B, T)
    scores: torch.Tensor  # (B,) float32 total reward
    ended: torch.Tensor  # (B,) bool: emitted <eos>
    metrics: dict[str, float]  # per-source score means

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``response_logprobs``' inputs for the rows ``index`` ``[M]``, completions cut to
        the longest one among them: ``(prompt_ids, prompt_mask, prompt_of, tokens, mask)``."""
        mask = self.response_mask[index]
        length = max(int(mask.sum(-1).max()), 1)
        return (
            self.prompt_ids,
            self.prompt_mask,
            self.prompt_of[index],
            self.tokens[index, :length],
            mask[:, :length],
        )


class RolloutWorker:
    """The sampling side of a policy-gradient stage: tokenizer, policy, frozen reference,
    reward model and functions, prompts. ``rollout(step)`` draws that step's prompts."""

    def __init__(self, cfg: Any, prompts: Optional[Sequence[str]] = None) -> None:
        self.cfg = cfg
        self.device = dist.init_distributed(resolve_device(cfg.device))
        dist.per_rank("prompts_per_step", cfg.prompts_per_step)
        dist.per_rank("minibatch_size", cfg.minibatch_size)
        seed_everything(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.tokenizer or default_tokenizer_spec(cfg.policy))
        self.policy = fuse_activations(load_causal_lm(cfg.policy, self.tokenizer, seed=cfg.seed))
        disable_dropout(self.policy)
        self.policy.to(self.device)
        self.reference = frozen_copy(self.policy)
        if not cfg.reward_model and not cfg.reward_functions:
            raise InvalidArgumentError(
                "reward_model, reward_functions: expected a reward model directory and/or at "
                "least one reward function 'module:function', got neither"
            )
        self.reward_model = None
        if cfg.reward_model:
            self.reward_model = fuse_activations(RewardModel.from_pretrained(cfg.reward_model))
            self.reward_model.to(self.device).eval()
            for p in self.reward_model.parameters():
                p.requires_grad_(False)
        weights = list(cfg.reward_weights) or [1.0] * len(cfg.reward_functions)
        self.functions = [
            (spec, load_reward_function(spec), float(w))
            for spec, w in zip(cfg.reward_functions, weights)
        ]
        if prompts is None:
            from rlhf_fast.data import load_prompts

            if not cfg.prompts:
                raise InvalidArgumentError("prompts: expected a path to a prompts file, got ''")
            prompts = load_prompts(
                cfg.prompts, field=cfg.prompt_field, skip_invalid=cfg.skip_invalid
            )
        self.n_skipped = skipped_count(prompts)
        if len(prompts) == 0:
            raise InvalidArgumentError("prompts: expected at least one prompt, got none")
        self.prompts = [with_instruction(p, cfg.instruction) for p in prompts]

    def prompts_for(self, step: int) -> list[str]:
        """This rank's prompts of ``step`` (the seeded epoch-wise order; resumable)."""
        cfg = self.cfg
        indices = seeded_batch(len(self.prompts), cfg.prompts_per_step, step, cfg.seed)
        return dist.shard([self.prompts[i] for i in indices])

    @torch.no_grad()
    def score(
        self, prompts: list[str], completions: list[str], *rows: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total reward per completion ``[B]`` float32, and each source's mean; ``rows``:
        the completions' tokens in the ``prompt_sharing`` layout."""
        total = torch.zeros(len(completions), dtype=torch.float64)
        metrics: dict[str, float] = {}
        if self.reward_model is not None:
            with autocast(self.device, self.cfg.bf16_autocast):
                raw = reward_scores(self.reward_model, *rows).double().cpu()  # (B,)
            metrics["rewards/reward_model"] = raw.mean().item()
            if self.cfg.normalize_scores:
                raw = (raw - self.reward_model.score_mean) / self.reward_model.score_std
            total += raw
        for spec, fn, weight in self.functions:
            values = torch.from_numpy(_call_reward_function(spec, fn, completions, prompts))
            metrics[f"rewards/{spec.rpartition(':')[2]}"] = values.mean().item()
            total += weight * values
        return total.float().to(self.device), metrics

    @torch.no_grad()
    def rollout(self, prompts: list[str], group_size: int) -> GroupRollout:
        """``group_size`` completions of each prompt, scored."""
        cfg, tok = self.cfg, self.tokenizer
        repeated = [p for p in prompts for _ in range(group_size)]
        query, query_mask = pad_rows(
            [encode_text(tok, p) for p in prompts], tok.pad_token_id, side="left"
        )
        query, query_mask = query.to(self.device), query_mask.to(self.device)  # (P, Lq)
        prompt_of = torch.arange(len(prompts), device=self.device).repeat_interleave(group_size)
        self.policy.eval()
        with autocast(self.device, cfg.bf16_autocast):
            samples = sample_responses(
                self.policy,
                query,
                query_mask,
                **sampling_options(cfg, tok),
                num_samples=group_size,
            )
        rows = (query, query_mask, prompt_of, samples.tokens, samples.response_mask)
        with autocast(self.device, cfg.bf16_autocast):
            ref = response_logprobs(self.reference, *rows, temperature=cfg.temperature)
        completions = tok.batch_decode(samples.tokens, skip_special_tokens=True)
        scores, metrics = self.score(repeated, completions, *rows)
        return GroupRollout(
            repeated,
            completions,
            *rows,
            samples.logprobs,
            ref,
            scores,
            samples.ended,
            metrics,
        )


def sequence_metrics(batch: GroupRollout) -> dict[str, float]:
    """What every group trainer logs about a rollout (TRL's names where they exist)."""
    mask = batch.response_mask.float()
    seq_kl = ((batch.logprobs - batch.ref_logprobs) * mask).sum(-1)  # (B,) k1, nats per completion
    lengths = mask.sum(-1)
    return {
        "objective/scores": batch.scores.mean().item(),
        "objective/scores_std": batch.scores.std().item(),
        "objective/kl": seq_kl.mean().item(),
        "objective/entropy": (-(batch.logprobs * mask).sum(-1)).mean().item(),
        "completions/mean_length": lengths.mean().item(),
        "completions/eos_fraction": batch.ended.float().mean().item(),
        **batch.metrics,
    }
