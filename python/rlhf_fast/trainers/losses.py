"""The losses of RLHF, in torch (they need autograd).

- ``bradley_terry_loss``: reward-model loss on preference pairs.
- ``clipped_surrogate_loss``: PPO's policy loss (Schulman et al. 2017, eq. 7).
- ``clipped_value_loss``: PPO's value loss with the old-value clip (as in OpenAI baselines).
- ``grpo_loss``: GRPO's clipped surrogate with sequence advantages and a k3 KL term.
- ``dpo_loss``: DPO (sigmoid), IPO and hinge losses on sequence logprobs.

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


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    *,
    ref_logprobs: Optional[torch.Tensor] = None,
    kl_coef: float = 0.0,
    aggregation: str = "token",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRPO's policy loss (Shao et al. 2024, eq. 3): clipped surrogate with one advantage per
    sequence, plus ``kl_coef`` times the k3 estimate of KL(policy || reference) per token.

    ``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``mask``: ``[B, T]``; ``advantages``:
    ``[B]`` (broadcast over the row's tokens). Per token
    ``l_t = max(-A r_t, -A clip(r_t, 1 - eps, 1 + eps)) + kl_coef * (exp(q_t) - q_t - 1)``
    with ``r_t = exp(logprobs - old_logprobs)``, ``q_t = ref_logprobs - logprobs``.
    ``aggregation="token"``: the mean over every masked token of the batch (long and short
    responses weigh per token, as DAPO argues); ``"sequence"``: the mean over rows of each
    row's token mean (the paper's ``1/G sum_i 1/|o_i| sum_t``). Returns ``(loss, clipfrac,
    kl)``, the last two masked token means (detached).
    """
    if clip_range <= 0:
        raise InvalidArgumentError(f"clip_range: expected > 0, got {clip_range}")
    if aggregation not in ("token", "sequence"):
        raise InvalidArgumentError(
            f"aggregation: expected 'token' or 'sequence', got {aggregation!r}"
        )
    if advantages.ndim != 1 or advantages.shape[0] != logprobs.shape[0]:
        raise InvalidArgumentError(
            f"advantages: expected shape ({logprobs.shape[0]},) (one per row), "
            f"got {tuple(advantages.shape)}"
        )
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None].to(logprobs.dtype)
    unclipped, clipped = -adv * ratio, -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None:
        q = ref_logprobs - logprobs
        kl = torch.exp(q) - q - 1.0
        if kl_coef:
            per_token = per_token + kl_coef * kl
    if aggregation == "token":
        loss = _masked_mean(per_token, mask)
    else:
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    with torch.no_grad():
        clipfrac = _masked_mean((clipped > unclipped).float(), mask)
        mean_kl = _masked_mean(kl, mask)
    return loss, clipfrac, mean_kl


def dpo_loss(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO-family losses on sequence logprobs (sums over each response's tokens), all ``[B]``.

    With ``h = (chosen - ref_chosen) - (rejected - ref_rejected)``:
    ``"sigmoid"`` (DPO, Rafailov et al. 2023) ``-log sigmoid(beta h)``; ``"ipo"`` (Azar et al.
    2023) ``(h - 1 / (2 beta))^2``; ``"hinge"`` (SLiC, Zhao et al. 2023) ``max(0, 1 - beta h)``.
    Returns ``(loss, chosen_rewards, rejected_rewards)``: the mean loss and the implicit
    rewards ``beta (logprobs - ref_logprobs)`` per pair (detached).
    """
    if not beta > 0:
        raise InvalidArgumentError(f"beta: expected > 0, got {beta}")
    shape = chosen_logprobs.shape
    for name, x in (
        ("rejected_logprobs", rejected_logprobs),
        ("ref_chosen_logprobs", ref_chosen_logprobs),
        ("ref_rejected_logprobs", ref_rejected_logprobs),
    ):
        if x.shape != shape:
            raise InvalidArgumentError(
                f"{name}: expected shape {tuple(shape)} like chosen_logprobs, got {tuple(x.shape)}"
            )
    chosen = chosen_logprobs - ref_chosen_logprobs
    rejected = rejected_logprobs - ref_rejected_logprobs
    h = chosen - rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)).square()
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * h)
    else:
        raise InvalidArgumentError(
            f"loss_type: expected 'sigmoid', 'ipo' or 'hinge', got {loss_type!r}"
        )
    return losses.mean(), (beta * chosen).detach(), (beta * rejected).detach()
