"""OpenRLHF drop-ins backed by rlhf_fast kernels.

Same names, arguments and results as OpenRLHF's ``compute_approx_kl`` and
``compute_reward`` (``openrlhf.models.utils``) and the experience maker's
``get_advantages_and_returns`` (a method there; a plain function here, so pass the
arguments after ``self``). OpenRLHF is never imported. No OpenRLHF release is pinned
in ``benches/requirements.txt``; these follow the current source's forms:

- ``compute_approx_kl(log_probs, log_probs_base, kl_estimator="k1")``
- ``compute_reward(r, kl_coef, kl, action_mask=None, reward_clip_range=None)``
- ``get_advantages_and_returns(values, rewards, action_mask, gamma, lambd)``

Conventions matched
-------------------
- GAE multiplies ``action_mask`` into ``values`` and ``rewards`` and then runs the
  plain recursion over every position: a masked-out step is a real step with reward 0
  and value 0 (the discount runs through holes, and left padding gets non-zero
  advantages), unlike verl, which skips masked steps. ``returns = advantages +
  values`` (masked values). ``values``/``rewards`` given as lists of 1-D tensors
  (OpenRLHF's sample packing, with ``action_mask=None``) give lists back, each row
  on its own.
- ``compute_reward`` puts the (optionally clipped) score ``r`` on each row's last
  position with ``action_mask > 0.5`` (position ``T - 1`` for a row with none) and
  ``-kl_coef * kl`` on every position, masked or not; ``kl_coef <= 0`` means 0.
- ``compute_approx_kl`` computes in float32 (it upcasts, as OpenRLHF does) and
  returns float32 (float64 inputs stay float64 here); ``k1`` ``lr``, ``k2``
  ``lr**2 / 2``, ``k3`` ``exp(-lr) - 1 + lr``, no clamp.

Where the drop-ins differ
-------------------------
- Dtypes: GAE runs in float32/float64 (other float dtypes go through float32 and
  are cast back); sums are not bit-identical to the torch loop.
- Non-finite values at positions that take part raise ``NonFiniteError``.
- ``compute_approx_kl`` with an unknown ``kl_estimator`` raises ``ValueError``
  (OpenRLHF fails on an unbound local). When a gradient is needed (grad mode on and
  an input requires grad) it is computed in torch, since the kernels do not take
  part in autograd.
- Older OpenRLHF releases took ``action_mask`` in ``compute_approx_kl`` and
  ``num_actions`` in ``compute_reward``; those forms are not provided.
"""

from __future__ import annotations

from typing import Any

from rlhf_fast import ops

__all__ = ["compute_approx_kl", "compute_reward", "get_advantages_and_returns"]


def _torch() -> Any:
    import torch

    return torch


def _kernel_float(x: Any) -> Any:
    torch = _torch()
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def compute_approx_kl(log_probs: Any, log_probs_base: Any, kl_estimator: str = "k1") -> Any:
    """OpenRLHF's ``compute_approx_kl``: the per-token KL estimate ``kl_estimator``."""
    torch = _torch()
    if kl_estimator not in ("k1", "k2", "k3"):
        raise ValueError(
            f"compute_approx_kl: kl_estimator must be k1, k2 or k3, got {kl_estimator!r}"
        )
    lp = log_probs if log_probs.dtype == torch.float64 else log_probs.float()
    base = log_probs_base.to(lp.dtype)
    if torch.is_grad_enabled() and (lp.requires_grad or base.requires_grad):
        lr = lp - base
        if kl_estimator == "k1":
            return lr
        if kl_estimator == "k2":
            return lr**2 / 2.0
        return (-lr).exp() - 1 + lr
    shape = lp.shape
    lp2 = lp.reshape(1, -1) if lp.dim() < 2 else lp.reshape(-1, shape[-1])
    _, kl = ops.kl_shaped_rewards(
        lp2, base.reshape(lp2.shape), None, None, kl_coef=0.0, estimator=kl_estimator
    )
    return kl.reshape(shape)


def compute_reward(
    r: Any,
    kl_coef: float,
    kl: Any,
    action_mask: Any = None,
    reward_clip_range: Any = None,
) -> Any:
    """OpenRLHF's ``compute_reward``: ``-kl_coef * kl`` everywhere plus the score on
    each row's last action token."""
    torch = _torch()
    if kl_coef <= 0.0:
        kl_coef = 0.0
    if reward_clip_range:
        r = r.clamp(min=reward_clip_range[0], max=reward_clip_range[1])
    keep = action_mask > 0.5
    # the kernel: -kl_coef * kl on the action tokens plus the score on the last one
    x = _kernel_float(kl)
    rewards, _ = ops.kl_shaped_rewards(
        x, torch.zeros_like(x), keep, r.to(x.dtype), kl_coef=float(kl_coef), estimator="k1"
    )
    rewards = torch.where(keep, rewards, -kl_coef * x)
    empty = ~keep.any(dim=1)
    if bool(empty.any()):  # OpenRLHF's argmax lands on the last position
        rewards[empty, -1] += r.to(x.dtype)[empty]
    return rewards.to(kl.dtype)


def get_advantages_and_returns(
    values: Any, rewards: Any, action_mask: Any, gamma: float, lambd: float
) -> tuple[Any, Any]:
    """OpenRLHF's ``get_advantages_and_returns``: GAE over every position with the
    mask multiplied into ``values`` and ``rewards``; ``(advantages, returns)``."""
    torch = _torch()
    with torch.no_grad():
        if isinstance(values, list):
            if not values:
                return [], []
            lengths = torch.tensor([0] + [v.numel() for v in values]).cumsum(0)
            v = _kernel_float(torch.cat(list(values)))
            r = _kernel_float(torch.cat(list(rewards))).to(v.dtype)
            adv, ret = ops.gae(
                r, v, None, gamma=float(gamma), lam=float(lambd), cu_seqlens=lengths.numpy()
            )
            bounds = lengths.tolist()
            advs = [adv[a:b].to(values[0].dtype) for a, b in zip(bounds[:-1], bounds[1:])]
            rets = [ret[a:b].to(values[0].dtype) for a, b in zip(bounds[:-1], bounds[1:])]
            return advs, rets
        v = _kernel_float(values)
        r = _kernel_float(rewards).to(v.dtype)
        if action_mask is not None:
            v = action_mask * v
            r = action_mask * r
        adv, ret = ops.gae(r.to(v.dtype), v, None, gamma=float(gamma), lam=float(lambd))
    return adv.to(values.dtype), ret.to(values.dtype)
