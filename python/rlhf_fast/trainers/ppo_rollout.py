"""PPO's rollout: one response per prompt, sampled and scored (steps 1-2 of ``ppo.py``).

``rollout(trainer, prompts)`` reads the trainer's ``config``, ``tokenizer``, ``device``,
``model`` (policy and value head), ``reference`` (``None`` with LoRA: the policy with its
adapters switched off) and ``reward_model``. The sampling pass gives the behaviour
logprobs and, with a shared trunk, the values; the reference's logprobs of the response
tokens, a separate critic's values and the reward model's score come from one forward
each. The score is then normalised, penalised for a missing ``<eos>`` and clipped as the
config says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlhf_fast.models import next_token_logprobs, scored_positions
from rlhf_fast.sampling import sample_responses
from rlhf_fast.trainers import distributed as dist
from rlhf_fast.trainers.runtime import autocast, encode_text, pad_rows, sampling_options

__all__ = ["Rollout", "reference_logprobs", "rollout"]


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


@torch.no_grad()
def reference_logprobs(
    trainer: Any, ids: torch.Tensor, attention_mask: torch.Tensor, scored: torch.Tensor
) -> torch.Tensor:
    """Reference policy's logprobs of the scored next tokens ``[B, L-1]`` (0 elsewhere)."""
    temperature = trainer.config.temperature
    with autocast(trainer.device, trainer.config.bf16_autocast):
        if trainer.reference is None:  # LoRA: the same weights with the adapters switched off
            with trainer.model.policy.disable_adapter():
                logprobs, _, _ = next_token_logprobs(
                    trainer.model.policy, ids, attention_mask, scored, temperature=temperature
                )
        else:
            logprobs, _, _ = next_token_logprobs(
                trainer.reference, ids, attention_mask, scored, temperature=temperature
            )
    return logprobs


@torch.no_grad()
def rollout(trainer: Any, prompts: list[str]) -> Rollout:
    """Sample one response per prompt and score it: everything ``PPOTrainer.update`` needs."""
    cfg, tok = trainer.config, trainer.tokenizer
    query, query_mask = pad_rows(
        [encode_text(tok, p) for p in prompts], tok.pad_token_id, side="left"
    )
    query, query_mask = query.to(trainer.device), query_mask.to(trainer.device)  # (B, Lq)
    n_prompt = query.shape[1]
    trainer.model.eval()
    # Behaviour logprobs (and shared-trunk values) come from the sampling pass itself.
    # FSDP: sampling and the critic call the model's parts, so they get the full weights.
    with dist.full_params(trainer.model):
        with autocast(trainer.device, cfg.bf16_autocast):
            samples = sample_responses(
                trainer.model.policy,
                query,
                query_mask,
                **sampling_options(cfg, tok),
                value_fn=trainer.model.values_from_hidden if trainer.model.shared_trunk else None,
            )
        responses, response_mask = samples.tokens, samples.response_mask  # (B, T)
        sequences = torch.cat([query, responses], dim=1)
        attention_mask = torch.cat([query_mask, response_mask.long()], dim=1)
        scored = scored_positions(attention_mask, start=n_prompt)  # (B, L-1) response tokens
        logprobs, values = samples.logprobs, samples.values
        with autocast(trainer.device, cfg.bf16_autocast):
            if values is None:  # separate critic: one critic pass over prompt + response
                hidden = trainer.model.critic_hidden(sequences, attention_mask)
                values = trainer.model.values_from_hidden(hidden[:, n_prompt - 1 : -1])
            raw_scores = trainer.reward_model(sequences, attention_mask)  # (B,)
    values = values * response_mask
    ref_logprobs = reference_logprobs(trainer, sequences, attention_mask, scored)[:, n_prompt - 1 :]
    scores = raw_scores.clone()
    if cfg.normalize_scores:
        scores = (scores - trainer.reward_model.score_mean) / trainer.reward_model.score_std
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
