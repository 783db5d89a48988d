"""TRL 1.12.0 drop-ins backed by rlhf_fast kernels.

TRL computes its GRPO, RLOO and PPO advantages inline, inside trainer methods, so for
most of it there is nothing to swap in from outside. This module has

- functions with TRL's exact semantics on TRL's tensors, for code that calls the
  math itself (a custom trainer, a subclass that overrides the whole method, offline
  evaluation): :func:`sum_rewards`, :func:`grpo_advantages`, :func:`rloo_kl_rewards`,
  :func:`rloo_advantages`, :func:`ppo_rewards`, :func:`ppo_advantages`;
- drop-ins for the one seam TRL has, the module-level ``masked_mean``,
  ``masked_var`` and ``masked_whiten`` of ``trl.experimental.ppo.ppo_trainer`` that
  ``PPOTrainer.train`` calls by name (reward whitening and advantage whitening), and
  :func:`patch`, which rebinds them there.

Importing this module never imports TRL; :func:`patch` does. ``tests/test_integrations_trl.py``
runs these against the advantage lines of TRL's installed trainers and checks that a real
``GRPOTrainer`` and ``RLOOTrainer`` step hands its loss the advantages computed here.

Where TRL 1.12.0 has no seam (all in ``trl/trainer`` and ``trl/experimental/ppo``)
----------------------------------------------------------------------------------
- GRPO: ``GRPOTrainer._generate_and_score_completions`` (grpo_trainer.py, the method
  starts at line 2343; the advantage lines are 2781-2832): reward weighting, the NaN-aware group mean, ``nanstd`` per group
  (``scale_rewards="group"``/``"none"``) or over the batch (``"batch"``), the
  ``+ 1e-4`` and ``nan_to_num`` are inline statements in a ~600-line method that
  also generates, scores and logs. The only names it looks up at call time are
  ``nanstd`` (``trl.trainer.utils``) and torch's; replacing ``nanstd`` alone changes
  one reduction, not the advantage computation. The KL term of GRPO is in the loss
  (``_compute_loss``, with gradients), where the kernels do not apply.
- RLOO: ``RLOOTrainer._generate_and_score_completions`` (rloo_trainer.py, from line
  1361; the advantage lines are 1560-1606): reward clipping, the sequence-level KL penalty
  ``rewards - beta * sum_t((old_logp - ref_logp) * mask)``, the leave-one-out
  baseline over scorable siblings and the optional batch normalization are inline.
- PPO: ``PPOTrainer.train`` (experimental/ppo/ppo_trainer.py, from line 604; the
  reward and advantage lines are 763-798): the
  INVALID_LOGPROB fill, KL (k1/k3), score placement, the GAE loop and the whitening
  are inline in the training loop; only ``masked_whiten`` (and the ``masked_mean`` /
  ``masked_var`` it calls) are looked up by name, which :func:`patch` covers.

Conventions matched
-------------------
- Layout: flat ``[B * G]`` rewards, the ``G = num_generations`` completions of one
  prompt consecutive (TRL's ``RepeatSampler`` order). NaN marks an unscorable
  completion (every reward function returned ``None``): it is left out of its
  group's mean, std and leave-one-out baseline, and its advantage is 0. A group with
  one scorable completion gets advantage 0 (TRL: NaN, then ``nan_to_num``).
- GRPO: ``(r - group_mean) / (std + 1e-4)``, std unbiased (``nanstd``), over the
  group (``"group"``) or the whole batch (``"batch"``); ``"none"`` only centres.
  ``num_generations == 1`` gives 0.
- RLOO: ``r_i - (sum_j r_j - r_i) / (n - 1)``; ``normalize_advantages`` whitens over
  the batch as ``(a - mean) / (std + 1e-4)``. The KL penalty is k1, summed per
  sequence over ``completion_mask``, subtracted from the reward *before* the
  baseline (so it is baselined too), after reward clipping.
- PPO score placement: the score goes one position *after* the last response token
  (``sequence_lengths + 1``, the first padding position), or on the last token when
  the response fills the row. KL is 0 after ``sequence_lengths`` (TRL fills both
  log-probs with INVALID_LOGPROB there), GAE runs over every position with values
  zeroed after ``sequence_lengths + 1``, advantages are whitened over positions
  ``<= sequence_lengths`` and 0 after.

Where the drop-ins differ
-------------------------
- Dtypes: the kernels run in float32/float64; other float dtypes are computed in
  float32 and cast back. Sums agree with TRL's to rounding, not bit for bit.
- Non-finite values other than a NaN reward (Inf rewards, NaN/Inf log-probs or
  values at positions that take part) raise ``NonFiniteError``; TRL propagates them.
- Rows with NaN rewards are computed in torch (the NaN-aware path); all-finite
  batches go through the kernels.
- ``masked_mean``/``masked_var``/``masked_whiten``: masks must hold 0/1; fewer than 2
  masked elements raise ``InvalidArgumentError`` (a ``ValueError``), where TRL's
  ``masked_var`` raises ``ValueError`` for 0 and divides by zero for 1. They compute
  without gradients (TRL calls them on detached rollout data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlhf_fast import ops

__all__ = [
    "SCALE_REWARDS",
    "grpo_advantages",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "patch",
    "ppo_advantages",
    "ppo_rewards",
    "rloo_advantages",
    "rloo_kl_rewards",
    "sum_rewards",
]

#: The values of ``GRPOConfig.scale_rewards``.
SCALE_REWARDS = ("group", "batch", "none")
_STD_EPS = 1e-4  # TRL adds this to the std in GRPO and in RLOO's normalization


def _torch() -> Any:
    import torch

    return torch


def _kernel_float(x: Any) -> Any:
    torch = _torch()
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def _nanstd(x: Any, dim: Any = None) -> Any:
    """Unbiased std ignoring NaNs (NaN with fewer than 2 values), as TRL's ``nanstd``."""
    torch = _torch()
    keep = ~torch.isnan(x)
    count = keep.sum(dim=dim, keepdim=True)
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    sq = torch.where(keep, (x - mean) ** 2, torch.zeros((), dtype=x.dtype))
    var = sq.sum(dim=dim, keepdim=True) / (count - 1).clamp(min=1)
    var = torch.where(count > 1, var, torch.full_like(var, float("nan")))
    std = var.sqrt()
    return std.reshape(()) if dim is None else std.squeeze(dim)


def _groups(rewards: Any, num_generations: int) -> Any:
    n = rewards.numel()
    if num_generations < 1 or n % num_generations:
        raise ValueError(
            f"rewards has {n} elements, not a multiple of num_generations={num_generations}"
        )
    return rewards.reshape(-1, num_generations)


# ------------------------------------------------------------------ GRPO
def sum_rewards(rewards_per_func: Any, reward_weights: Any) -> Any:
    """TRL's reward per completion: ``[N, K]`` rewards (NaN where a reward function
    returned ``None``) weighted and summed ignoring NaN; NaN where all ``K`` are NaN."""
    torch = _torch()
    weights = torch.as_tensor(reward_weights, dtype=rewards_per_func.dtype)
    rewards = (rewards_per_func * weights.to(rewards_per_func.device)).nansum(dim=1)
    return rewards.masked_fill(torch.isnan(rewards_per_func).all(dim=1), float("nan"))


def grpo_advantages(rewards: Any, num_generations: int, scale_rewards: str = "group") -> Any:
    """TRL's GRPO advantages (``multi_objective_aggregation="sum_then_normalize"``)
    from the weighted reward sums ``[B * G]``; NaN marks an unscorable completion."""
    torch = _torch()
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(
            f"Invalid value for scale_rewards: {scale_rewards}. "
            "Must be one of 'batch', 'group', or 'none'."
        )
    g = int(num_generations)
    with torch.no_grad():
        x = _kernel_float(rewards)
        grouped = _groups(x, g)
        if g == 1:
            # each completion is its own group: r - mean == 0 (or NaN, then 0)
            return torch.zeros_like(rewards)
        if bool(torch.isnan(x).any()):
            mean = torch.nanmean(grouped, dim=1, keepdim=True)
            if scale_rewards == "batch":
                std = _nanstd(x) if x.numel() > 1 else x.new_zeros(())
            else:
                std = _nanstd(grouped, dim=1).unsqueeze(1)
            adv = grouped - mean
            if scale_rewards != "none":
                adv = adv / (std + _STD_EPS)
            adv = torch.nan_to_num(adv.reshape(x.shape), nan=0.0)
        elif scale_rewards == "group":
            adv = ops.group_advantages(
                x.reshape(-1).contiguous(), group_size=g, normalize="std", eps=_STD_EPS
            ).reshape(x.shape)
        else:
            adv = ops.group_advantages(
                x.reshape(-1).contiguous(), group_size=g, normalize="none"
            ).reshape(x.shape)
            if scale_rewards == "batch":
                adv = adv / (x.std() + _STD_EPS)
    return adv.to(rewards.dtype)


# ------------------------------------------------------------------ RLOO
def rloo_kl_rewards(
    rewards: Any,
    old_per_token_logps: Any,
    ref_per_token_logps: Any,
    completion_mask: Any,
    beta: float,
    reward_clip_range: Any = None,
) -> Any:
    """TRL's RLOO reward: clipped (``reward_clip_range``), minus ``beta`` times the
    per-sequence sum of ``old_logp - ref_logp`` over ``completion_mask``."""
    torch = _torch()
    with torch.no_grad():
        if reward_clip_range:
            rewards = rewards.clamp(min=reward_clip_range[0], max=reward_clip_range[1])
        if beta == 0.0:
            return rewards
        lp = _kernel_float(old_per_token_logps)
        ref = ref_per_token_logps.to(lp.dtype)
        _, kl = ops.kl_shaped_rewards(
            lp, ref, completion_mask.bool(), None, kl_coef=0.0, estimator="k1"
        )
        return rewards - beta * kl.sum(-1).to(rewards.dtype)


def rloo_advantages(rewards: Any, num_generations: int, normalize_advantages: bool = False) -> Any:
    """TRL's RLOO advantages from ``[B * G]`` rewards (KL already subtracted, see
    :func:`rloo_kl_rewards`): each reward minus the mean of its scorable siblings."""
    torch = _torch()
    g = int(num_generations)
    with torch.no_grad():
        x = _kernel_float(rewards)
        grouped = _groups(x, g)
        if g == 1:
            return torch.zeros_like(rewards)
        if bool(torch.isnan(x).any()):
            counts = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
            total = torch.nansum(grouped, dim=1, keepdim=True)
            adv = (grouped - (total - grouped) / (counts - 1)).reshape(x.shape)
            if normalize_advantages:
                adv = (adv - torch.nanmean(adv)) / (_nanstd(adv) + _STD_EPS)
            adv = torch.nan_to_num(adv, nan=0.0)
        else:
            adv = ops.group_advantages(
                x.reshape(-1).contiguous(), group_size=g, normalize="none", leave_one_out=True
            ).reshape(x.shape)
            if normalize_advantages:
                adv = (adv - adv.mean()) / (adv.std() + _STD_EPS)
    return adv.to(rewards.dtype)


# ------------------------------------------------------------------ PPO
def ppo_rewards(
    logprobs: Any,
    ref_logprobs: Any,
    scores: Any,
    sequence_lengths: Any,
    kl_coef: float,
    kl_estimator: str = "k1",
    whiten_rewards: bool = False,
) -> tuple[Any, Any]:
    """TRL PPO's "compute rewards" step: ``(rewards, kl)``, ``[B, T]``.

    ``sequence_lengths[b]`` is the index of row ``b``'s last response token (TRL's
    ``first_true_indices(responses == pad) - 1``). KL is ``k1`` (``logp - ref``) or
    ``k3`` (``exp(ref - logp) - 1 - (ref - logp)``) up to that index and 0 after;
    ``rewards = -kl_coef * kl`` plus ``scores[b]`` at ``sequence_lengths[b] + 1`` (at
    ``sequence_lengths[b]`` when that is the last column). ``whiten_rewards`` scales
    the rewards at positions ``<= sequence_lengths + 1`` by their std (mean kept,
    unbiased, ``+ 1e-8``) and zeroes the rest, as TRL's ``args.whiten_rewards``."""
    torch = _torch()
    if kl_estimator not in ("k1", "k3"):
        raise ValueError(f"ppo_rewards: kl_estimator must be k1 or k3, got {kl_estimator!r}")
    with torch.no_grad():
        lp = _kernel_float(logprobs)
        ref = ref_logprobs.to(lp.dtype)
        b, t = lp.shape
        idx = torch.arange(t, device=lp.device)
        keep = idx[None, :] <= sequence_lengths[:, None]
        rewards, kl = ops.kl_shaped_rewards(
            lp, ref, keep, None, kl_coef=float(kl_coef), estimator=kl_estimator
        )
        end = torch.where(sequence_lengths + 1 < t, sequence_lengths + 1, sequence_lengths)
        rewards[torch.arange(b, device=lp.device), end] += scores.to(lp.dtype)
        if whiten_rewards:
            rewards = ops.masked_whiten(
                rewards, idx[None, :] <= (sequence_lengths + 1)[:, None], shift_mean=False
            )
    return rewards.to(logprobs.dtype), kl.to(logprobs.dtype)


def ppo_advantages(
    rewards: Any, values: Any, sequence_lengths: Any, gamma: float, lam: float
) -> tuple[Any, Any]:
    """TRL PPO's "compute advantages and returns" step: ``(advantages, returns)``.

    Values after ``sequence_lengths + 1`` count as 0; GAE runs over every position
    (no mask); ``returns = advantages + values``; advantages are whitened over the
    positions ``<= sequence_lengths`` and 0 after."""
    torch = _torch()
    with torch.no_grad():
        v = _kernel_float(values)
        r = rewards.to(v.dtype)
        t = v.shape[1]
        idx = torch.arange(t, device=v.device)[None, :]
        v = v.masked_fill(idx > (sequence_lengths + 1)[:, None], 0)
        adv, ret = ops.gae(r, v, None, gamma=float(gamma), lam=float(lam))
        adv = ops.masked_whiten(adv, idx <= sequence_lengths[:, None], eps=1e-8)
    return adv.to(values.dtype), ret.to(values.dtype)


# ------------------------------------------------------------------ masked moments
def masked_mean(values: Any, mask: Any, axis: Any = None) -> Any:
    """TRL's ``masked_mean``: mean of ``values`` where ``mask`` is 1."""
    if axis is not None:
        return (values * mask).sum(axis=axis) / mask.sum(axis=axis)
    return ops.masked_mean(_kernel_float(values), mask).to(values.dtype)


def masked_var(values: Any, mask: Any, unbiased: bool = True) -> Any:
    """TRL's ``masked_var``: variance of ``values`` where ``mask`` is 1."""
    return ops.masked_var(_kernel_float(values), mask, unbiased=unbiased).to(values.dtype)


def masked_whiten(values: Any, mask: Any, shift_mean: bool = True) -> Any:
    """TRL's ``masked_whiten``: every position becomes ``(values - mean) *
    rsqrt(var + 1e-8)`` with the mask's mean and unbiased variance (``+ mean`` when
    not ``shift_mean``)."""
    torch = _torch()
    with torch.no_grad():
        x = _kernel_float(values)
        mean = ops.masked_mean(x, mask)
        var = ops.masked_var(x, mask, unbiased=True)
        whitened = (x - mean) * torch.rsqrt(var + 1e-8)
        if not shift_mean:
            whitened = whitened + mean
    return whitened.to(values.dtype)


def patch(module: Any = None) -> Callable[[], None]:
    """Rebind ``masked_mean``, ``masked_var`` and ``masked_whiten`` in
    ``trl.experimental.ppo.ppo_trainer`` (or ``module``) to the drop-ins, so
    ``PPOTrainer.train`` whitens rewards and advantages with the kernels. Returns a
    function that puts TRL's back."""
    if module is None:
        import importlib

        module = importlib.import_module("trl.experimental.ppo.ppo_trainer")
    saved = {name: getattr(module, name) for name in ("masked_mean", "masked_var", "masked_whiten")}
    module.masked_mean = masked_mean
    module.masked_var = masked_var
    module.masked_whiten = masked_whiten

    def undo() -> None:
        for name, fn in saved.items():
            setattr(module, name, fn)

    return undo
