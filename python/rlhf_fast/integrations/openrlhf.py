"""OpenRLHF 0.11.2 drop-ins backed by rlhf_fast kernels.

Same names, arguments and results as OpenRLHF's ``compute_approx_kl`` and
``compute_reward`` (``openrlhf/models/utils.py``) and the experience maker's
``get_advantages_and_returns`` and ``get_cumulative_returns`` (methods of
``RemoteExperienceMaker`` in ``openrlhf/trainer/ppo_utils/experience_maker.py``; plain
functions here, so pass the arguments after ``self``). The version is the one pinned in
``benches/requirements.txt``:

- ``compute_approx_kl(log_probs, log_probs_base, log_probs_old=None, kl_estimator="k1",
  unbiased_gradient=False)``
- ``compute_reward(r, kl_coef, kl, action_mask=None, reward_clip_range=None)``
- ``get_advantages_and_returns(values, rewards, action_mask, gamma, lambd)``
- ``get_cumulative_returns(rewards, action_mask, gamma)``

Importing this module never imports OpenRLHF. To switch a running OpenRLHF over,
call :func:`patch` in the process that builds the experience maker::

    import rlhf_fast.integrations.openrlhf as rf_openrlhf
    undo = rf_openrlhf.patch()   # imports openrlhf.trainer.ppo_utils.experience_maker

The seams OpenRLHF has: the experience maker module binds ``compute_approx_kl`` and
``compute_reward`` by name at import (``from openrlhf.models.utils import ...``), so
:func:`patch` rebinds those module globals, and GAE / REINFORCE returns are methods of
``RemoteExperienceMaker``, which :func:`patch` replaces on the class (a subclass that
overrides the two methods works the same way). What has no seam: the group baselines
(``rloo``, ``reinforce_baseline``/``dr_grpo``, ``group_norm``, ``flash_reinforce``) and
the batch whitening of advantages are inlined in
``RemoteExperienceMaker.compute_advantages_and_returns`` (experience_maker.py, lines
~244-336 in 0.11.2), so they stay OpenRLHF's torch code.

Conventions matched
-------------------
- GAE multiplies ``action_mask`` into ``values`` and ``rewards`` and then runs the
  plain recursion over every position: a masked-out step is a real step with reward 0
  and value 0 (the discount runs through holes, and left padding gets non-zero
  advantages), unlike verl, which skips masked steps. ``returns = advantages +
  values`` (masked values). ``action_mask=None`` means no mask. The result dtype is
  the one torch's promotion gives OpenRLHF's loop (``values``, ``rewards`` and a
  floating ``action_mask``).
- ``get_cumulative_returns``: the discounted sum of the masked rewards from each
  position to the end of the row (every position is a step), in ``rewards``' dtype.
- ``compute_reward`` puts the (optionally clipped) score ``r`` on each row's last
  action token (position ``T - 1`` for a row with none) and ``-kl_coef * kl`` on
  every position, masked or not; ``kl_coef <= 0`` means 0. Result in ``kl``'s dtype.
  It is torch arithmetic, not a kernel (see the comment in it).
- ``compute_approx_kl`` casts both inputs to float32 (float64 too, as ``.float()``
  does) and returns float32: ``k1`` ``lr``, ``k2`` ``lr**2 / 2``, ``k3``
  ``exp(-lr) - 1 + lr`` with ``lr`` clamped below at -10 first, every estimate then
  clamped to [-10, 10]. Unknown names raise ``ValueError``. With
  ``unbiased_gradient=True`` the value is the same and the gradient is that of
  ``w * lr**2 / 2``, ``w = exp(log_probs - log_probs_old)`` clamped above at 10 and
  detached (``w = 1`` without ``log_probs_old``).

Where the drop-ins differ
-------------------------
- Dtypes: the kernels run in float32/float64 (``compute_reward`` runs in ``kl``'s
  dtype, as OpenRLHF's). OpenRLHF's loops run in the inputs' dtype, so bf16/fp16 inputs are computed here in float32 and rounded once at the end
  (closer to the exact result than OpenRLHF's bf16 arithmetic, not bit-identical).
  Float32/float64 sums agree to rounding, not bit for bit.
- Masks must hold 0 and 1 (bool, int or float): OpenRLHF multiplies by any value
  (GAE) and takes ``action_mask.long()`` to find the last token (``compute_reward``).
- Non-finite values at positions that take part raise ``NonFiniteError`` in the
  kernel-backed functions; OpenRLHF (and ``compute_reward`` here) propagates them. A NaN/Inf at a masked-out GAE or returns position is dropped here
  (the mask selects, it does not multiply); in OpenRLHF ``0 * NaN`` spreads it along
  the row.
- Gradients: the kernels do not take part in autograd. ``compute_approx_kl`` computes
  in torch when a gradient is needed (grad mode on and an input requires grad); the
  ``unbiased_gradient`` surrogate is always torch. GAE and returns run under
  ``torch.no_grad()`` in OpenRLHF as here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlhf_fast import ops

__all__ = [
    "KL_IS_WEIGHT_CLIP",
    "compute_approx_kl",
    "compute_reward",
    "get_advantages_and_returns",
    "get_cumulative_returns",
    "patch",
]

#: Upper clamp of the importance weight in ``compute_approx_kl(unbiased_gradient=True)``.
KL_IS_WEIGHT_CLIP = 10.0
_KL_CLAMP = 10.0


def _torch() -> Any:
    import torch

    return torch


def _kernel_float(x: Any) -> Any:
    torch = _torch()
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


# ------------------------------------------------------------------ KL
def _kl_torch(lr: Any, kl_estimator: str) -> Any:
    """OpenRLHF's estimate in torch arithmetic, for when a gradient is needed."""
    if kl_estimator == "k1":
        value = lr
    elif kl_estimator == "k2":
        value = lr**2 / 2.0
    else:
        k3_lr = lr.clamp(min=-10)
        value = (-k3_lr).exp() - 1 + k3_lr
    return value.clamp(min=-_KL_CLAMP, max=_KL_CLAMP)


def compute_approx_kl(
    log_probs: Any,
    log_probs_base: Any,
    log_probs_old: Any = None,
    kl_estimator: str = "k1",
    unbiased_gradient: bool = False,
) -> Any:
    """OpenRLHF's ``compute_approx_kl``: the per-token KL estimate ``kl_estimator``,
    clamped to [-10, 10], in float32."""
    torch = _torch()
    if kl_estimator not in ("k1", "k2", "k3"):
        raise ValueError(f"Unknown kl_estimator: {kl_estimator}")
    lp = log_probs.float()
    base = log_probs_base.float()
    needs_grad = torch.is_grad_enabled() and (lp.requires_grad or base.requires_grad)
    if needs_grad and not unbiased_gradient:
        return _kl_torch(lp - base, kl_estimator)
    with torch.no_grad():
        shape = lp.shape
        lp2 = lp.detach().reshape(1, -1) if lp.dim() < 2 else lp.detach().reshape(-1, shape[-1])
        _, value = ops.kl_shaped_rewards(
            lp2,
            base.detach().reshape(lp2.shape),
            None,
            None,
            kl_coef=0.0,
            estimator=kl_estimator,
            clamp=_KL_CLAMP,
        )
        value = value.reshape(shape)
    if not unbiased_gradient or not needs_grad:
        return value
    # straight-through: the estimate's value, the importance-weighted k2 gradient
    if log_probs_old is None:
        w = 1.0
    else:
        w = (lp - log_probs_old.float()).exp().clamp(max=KL_IS_WEIGHT_CLIP).detach()
    surrogate = w * ((lp - base) ** 2 / 2.0)
    return value + surrogate - surrogate.detach()


# ------------------------------------------------------------------ shaped rewards
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
    if action_mask is None:
        raise ValueError("compute_reward: action_mask is required (OpenRLHF reads its size)")
    # A multiply and a last-index search: memory-bound torch arithmetic, which measured
    # faster than the kernel (two outputs) plus a fill of the positions outside the mask.
    with torch.no_grad():
        rewards = -kl_coef * kl
        length = action_mask.shape[1]
        pos = torch.arange(length, dtype=torch.int32, device=kl.device)
        last = torch.where(action_mask.bool(), pos, -1).amax(dim=1)
        last = torch.where(last < 0, length - 1, last).long()  # no action token: the last position
        rows = torch.arange(rewards.shape[0], device=kl.device)
        rewards.index_put_((rows, last), r.to(kl.dtype), accumulate=True)
    return rewards


# ------------------------------------------------------------------ GAE / returns
def _result_dtype(*tensors: Any) -> Any:
    torch = _torch()
    dtype = None
    for t in tensors:
        if (
            t is None
            or (t.dtype == torch.bool)
            or (dtype is not None and not t.is_floating_point())
        ):
            continue
        dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    if dtype is None or not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return dtype


def get_advantages_and_returns(
    values: Any, rewards: Any, action_mask: Any, gamma: float, lambd: float
) -> tuple[Any, Any]:
    """OpenRLHF's ``get_advantages_and_returns``: GAE over every position with the
    mask multiplied into ``values`` and ``rewards``; ``(advantages, returns)``."""
    torch = _torch()
    mask = action_mask if action_mask is not None and action_mask.is_floating_point() else None
    dtype = _result_dtype(values, rewards, mask)
    with torch.no_grad():
        v = _kernel_float(values.to(dtype))
        r = _kernel_float(rewards.to(dtype))
        if action_mask is not None:
            keep = action_mask.bool()
            v = torch.where(keep, v, torch.zeros((), dtype=v.dtype))
            r = torch.where(keep, r, torch.zeros((), dtype=r.dtype))
        adv, ret = ops.gae(r, v, None, gamma=float(gamma), lam=float(lambd))
    return adv.to(dtype), ret.to(dtype)


def get_cumulative_returns(rewards: Any, action_mask: Any, gamma: float) -> Any:
    """OpenRLHF's ``get_cumulative_returns``: per position, the discounted sum of the
    (masked) rewards from there to the end of the row."""
    torch = _torch()
    with torch.no_grad():
        r = _kernel_float(rewards)
        if action_mask is not None:
            r = torch.where(action_mask.bool(), r, torch.zeros((), dtype=r.dtype))
        returns, _ = ops.gae(r, torch.zeros_like(r), None, gamma=float(gamma), lam=1.0)
    return returns.to(rewards.dtype)


# ------------------------------------------------------------------ patching
def _method(fn: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    method.__name__ = fn.__name__
    method.__doc__ = fn.__doc__
    method._rlhf_fast = True  # type: ignore[attr-defined]
    return method


def patch(experience_maker: Any = None) -> Callable[[], None]:
    """Route OpenRLHF's experience maker through the drop-ins.

    ``experience_maker`` is the module ``openrlhf.trainer.ppo_utils.experience_maker``
    (imported when not given) or any module loaded from that file. Rebinds its
    ``compute_approx_kl`` and ``compute_reward`` globals and replaces
    ``RemoteExperienceMaker.get_advantages_and_returns`` and
    ``get_cumulative_returns``. Returns a function that puts the originals back.
    """
    if experience_maker is None:
        import importlib

        experience_maker = importlib.import_module("openrlhf.trainer.ppo_utils.experience_maker")
    cls = experience_maker.RemoteExperienceMaker
    saved: list[tuple[Any, str, Any]] = []
    for owner, name, new in (
        (experience_maker, "compute_approx_kl", compute_approx_kl),
        (experience_maker, "compute_reward", compute_reward),
        (cls, "get_advantages_and_returns", _method(get_advantages_and_returns)),
        (cls, "get_cumulative_returns", _method(get_cumulative_returns)),
    ):
        saved.append((owner, name, vars(owner).get(name)))
        setattr(owner, name, new)

    def undo() -> None:
        for owner, name, old in reversed(saved):
            setattr(owner, name, old)

    return undo
