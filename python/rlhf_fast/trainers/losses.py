"""The three losses of RLHF, in torch (they need autograd).

- ``bradley_terry_loss``: reward-model loss on preference pairs.
- ``clipped_surrogate_loss``: PPO's policy loss (Schulman et al. 2017, eq. 7).
- ``clipped_value_loss``: PPO's value loss with the old-value clip (as in OpenAI baselines).

Token-level losses average over the masked tokens of the whole minibatch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from rlhf_fast.errors import InvalidArgumentError


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Differentiable mean of ``x`` over ``mask == 1`` (``[B, T]`` -> scalar)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: Optional[torch.Tensor | float] = None,
) -> torch.Tensor:
    """``mean(-log sigmoid(r_chosen - r_rejected - margin))``.

    ``chosen_scores``, ``rejected_scores``: ``[B]`` float; ``margin``: ``[B]`` or a float
    (Llama-2's margin term), 0 when None. Returns a scalar.
    """
    if chosen_scores.shape != rejected_scores.shape:
        raise InvalidArgumentError(
            f"rejected_scores: expected shape {tuple(chosen_scores.shape)} like chosen_scores, "
            f"got {tuple(rejected_scores.shape)}"
        )
    diff = chosen_scores - rejected_scores
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def clipped_surrogate_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped policy loss and its diagnostics.

    All inputs ``[B, T]`` (``mask`` 0/1). ``ratio = exp(logprobs - old_logprobs)``;
    loss = masked mean of ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``.
    Returns ``(loss, clipfrac, approx_kl)``: the fraction of tokens where the clipped
    term was chosen, and ``mean(0.5 * (logprobs - old_logprobs)^2)`` (both detached).
    """
    if clip_range <= 0:
        raise InvalidArgumentError(f"clip_range: expected > 0, got {clip_range}")
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = _masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = _masked_mean((clipped > unclipped).float(), mask)
        approx_kl = _masked_mean(0.5 * log_ratio.square(), mask)
    return loss, clipfrac, approx_kl


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's value loss: ``0.5 * masked mean of max((v - R)^2, (v_clip - R)^2)``.

    ``v_clip = old_values + clamp(values - old_values, -eps, eps)``. All inputs ``[B, T]``.
    Returns ``(loss, clipfrac)``, the latter the fraction of tokens where the clipped
    error was the larger one (detached).
    """
    if clip_range <= 0:
        raise InvalidArgumentError(f"clip_range: expected > 0, got {clip_range}")
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err_unclipped = (values - returns).square()
    err_clipped = (clipped_values - returns).square()
    loss = 0.5 * _masked_mean(torch.maximum(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        clipfrac = _masked_mean((err_clipped > err_unclipped).float(), mask)
    return loss, clipfrac
