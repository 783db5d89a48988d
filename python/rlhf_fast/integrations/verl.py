"""verl 0.9.1 drop-ins backed by rlhf_fast kernels.

Functions here take the arguments of their namesakes in
``verl.trainer.ppo.core_algos`` and ``verl.utils.torch_functional`` and return what
those return, so a call site changes only its import::

    from rlhf_fast.integrations.verl import compute_gae_advantage_return

To switch a verl trainer over without touching its code, call :func:`register` once
in the process that builds the trainer, then select an estimator by name::

    import rlhf_fast.integrations.verl as rf_verl; rf_verl.register()
    # config: algorithm.adv_estimator=rlhf_fast_gae   (or rlhf_fast_grpo, rlhf_fast_rloo)

verl is imported only inside the functions that need it (``register``); the
drop-ins themselves need only torch.

Functions
---------
- ``compute_gae_advantage_return(token_level_rewards, values, response_mask, gamma, lam)``
- ``compute_grpo_outcome_advantage(token_level_rewards, response_mask, index,
  epsilon=1e-6, norm_adv_by_std_in_grpo=True, config=None)``
- ``compute_rloo_outcome_advantage(token_level_rewards, response_mask, index,
  epsilon=1e-6, config=None, **kwargs)``
- ``kl_penalty(logprob, ref_logprob, kl_penalty)`` and ``kl_penalty_forward(...)``
- ``masked_mean(values, mask, axis=None)``, ``masked_var(values, mask, unbiased=True)``,
  ``masked_whiten(values, mask, shift_mean=True)``

What matches verl exactly
-------------------------
- GAE carries its state across masked holes, as verl does: a step with
  ``response_mask == 0`` leaves the running advantage and next value unchanged, and
  its own reward and value are ignored. verl also *writes* that carried advantage
  into the masked positions (the advantage of the next masked step to the right, or
  0 after the last one), sets ``returns = advantages + values`` at every position,
  and whitens every position with the masked mean and variance. The drop-in does
  all three, so masked-out positions hold the same non-zero values as verl's.
- GRPO/RLOO group rows by ``index`` in any order and any group sizes; a group of one
  gets mean 0 and std 1 (GRPO: ``score / (1 + epsilon)``; Dr. GRPO and RLOO: the
  score unchanged), as in verl. The per-row advantage is broadcast as
  ``adv[:, None] * response_mask``, and ``(advantages, returns)`` are the same tensor.
- ``kl_penalty`` names: ``kl``/``k1``, ``abs``, ``mse``/``k2``, ``low_var_kl``/``k3``
  (clamped to [-10, 10]), each with the ``+`` straight-through suffix (k2 gradient,
  the named estimator's value); ``full`` and unknown names raise
  ``NotImplementedError``. verl's inner clamp of ``ref - logprob`` to [-20, 20] in k3
  changes nothing after the outer clamp, so it is not repeated.

Where the drop-ins differ
-------------------------
- Dtypes: the kernels run in float32 or float64. Other float dtypes (bf16, fp16) are
  computed in float32 and cast back. Reductions accumulate in float64, so results
  agree with verl's to float rounding, not bit for bit.
- Masks must hold only 0 and 1 (bool, int or float). verl multiplies by whatever the
  mask holds; other values raise ``InvalidArgumentError`` here. A bool
  ``response_mask`` works here; verl's GAE raises on it (torch has no ``1 - bool``).
- Non-finite inputs at positions that take part raise ``NonFiniteError``; verl returns
  NaN/Inf. At masked-out positions they are never read here, while in verl's GAE
  loop ``x * 0`` lets a NaN/Inf there spread along the row (verl's masked sums
  zero a NaN outside the mask).
- Variance: with an integer mask verl computes the Bessel factor
  ``count / (count - 1)`` in float32 (integer tensor division), so in float64 its
  variances, and whitened values, differ from the exact ones by ~1e-8 relative.
- ``masked_mean`` divides by the exact count; verl divides by ``count + 1e-8``
  (a relative difference below 1e-8). An all-masked input raises
  ``InvalidArgumentError`` here, where verl returns 0. ``masked_var`` and
  ``masked_whiten`` raise as verl does for fewer than 2 masked elements (verl a
  ``ValueError``; ``InvalidArgumentError`` is a ``ValueError``).
- ``masked_mean`` with ``axis`` set is computed in torch (the kernels reduce over
  all elements only).
- Gradients: the kernels do not take part in autograd. ``kl_penalty`` /
  ``kl_penalty_forward`` fall back to torch arithmetic when a gradient is needed
  (grad mode on and an input requires grad); the ``+`` variants always use the
  kernel for the value and torch for the k2 surrogate gradient. The advantage
  estimators run under ``torch.no_grad()`` in verl as here.
- Registration: verl's generic estimator branch (``compute_advantage`` in
  ``verl.trainer.ppo.ray_trainer``) passes a registered estimator only
  ``token_level_rewards``, ``response_mask``, ``config`` and, when present, ``index``
  and ``reward_baselines``: no ``values``, and it turns the critic on only for the
  name ``"gae"``. So ``register()`` also wraps verl's ``compute_advantage`` (to hand
  ``rlhf_fast_gae`` the values, gamma and lam, as verl's own GAE branch does) and
  ``need_critic`` (to treat ``rlhf_fast_gae`` like ``gae``), rebinding both in every
  loaded ``verl`` module. These wrappers live in the process that calls
  ``register()``: with verl's Ray-based entry point (``verl.trainer.main_ppo``, whose
  trainer runs in a Ray actor) call it where the trainer is built, e.g. from a small
  entry script that imports this module before running verl's ``main``. Where
  ``verl.trainer.ppo.ray_trainer`` cannot be imported (a verl install without the
  trainer's dependencies), ``register()`` registers the names and skips that wrapper.
  Not yet run here: a full verl training run (Ray, rollout workers) with these names.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any

from rlhf_fast import ops

__all__ = [
    "ESTIMATOR_NAMES",
    "compute_gae_advantage_return",
    "compute_grpo_outcome_advantage",
    "compute_rloo_outcome_advantage",
    "kl_penalty",
    "kl_penalty_forward",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "register",
]

#: The names ``register()`` adds to verl's advantage-estimator registry.
ESTIMATOR_NAMES = ("rlhf_fast_gae", "rlhf_fast_grpo", "rlhf_fast_rloo")


def _torch() -> Any:
    import torch

    return torch


def _as_kernel_float(x: Any) -> Any:
    """``x`` as float32/float64 (other float dtypes and ints go to float32)."""
    torch = _torch()
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.to(torch.float32)


# ------------------------------------------------------------------ masked moments
def masked_mean(values: Any, mask: Any, axis: Any = None) -> Any:
    """verl's ``masked_mean``: mean of ``values`` where ``mask`` is 1."""
    torch = _torch()
    if axis is not None:
        s = (values * mask).sum(axis=axis)
        return s / mask.sum(axis=axis)
    x = _as_kernel_float(values)
    out = ops.masked_mean(x, mask)
    return out.to(values.dtype) if isinstance(out, torch.Tensor) else out


def masked_var(values: Any, mask: Any, unbiased: bool = True) -> Any:
    """verl's ``masked_var``: variance of ``values`` where ``mask`` is 1."""
    x = _as_kernel_float(values)
    return ops.masked_var(x, mask, unbiased=unbiased).to(values.dtype)


def masked_whiten(values: Any, mask: Any, shift_mean: bool = True) -> Any:
    """verl's ``masked_whiten``: every position (masked or not) becomes
    ``(values - mean) / sqrt(var + 1e-8)`` with the mask's mean and unbiased variance
    (``+ mean`` when not ``shift_mean``)."""
    torch = _torch()
    x = _as_kernel_float(values)
    mean = ops.masked_mean(x, mask)
    var = ops.masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened.to(values.dtype)


# ------------------------------------------------------------------ GAE
def _fill_holes_from_right(adv: Any, mask: Any) -> Any:
    """At each masked-out position, the value at the nearest masked position to its
    right (0 if none): the advantage verl's loop carries through that position."""
    torch = _torch()
    keep = mask.bool()
    if not (~keep[..., :-1] & keep[..., 1:]).any():
        return adv  # no masked step after an unmasked one (right padding): nothing to carry
    length = adv.shape[-1]
    pos = torch.arange(length, device=adv.device).expand_as(adv)
    nxt = torch.where(keep, pos, torch.full_like(pos, length))
    nxt = torch.flip(torch.cummin(torch.flip(nxt, [-1]), dim=-1).values, [-1])
    padded = torch.cat([adv, adv.new_zeros(adv.shape[:-1] + (1,))], dim=-1)
    return torch.gather(padded, -1, nxt)


def compute_gae_advantage_return(
    token_level_rewards: Any,
    values: Any,
    response_mask: Any,
    gamma: Any,
    lam: Any,
) -> tuple[Any, Any]:
    """verl's ``compute_gae_advantage_return``: ``(advantages, returns)``, both
    ``(bs, response_length)``; advantages whitened over ``response_mask``."""
    torch = _torch()
    with torch.no_grad():
        rewards = _as_kernel_float(token_level_rewards)
        vals = _as_kernel_float(values).to(rewards.dtype)
        keep = response_mask.bool()
        adv, _ = ops.gae(rewards, vals, keep, gamma=float(gamma), lam=float(lam))
        adv = _fill_holes_from_right(adv, keep)
        returns = adv + vals
        advantages = masked_whiten(adv, keep)
    dtype = token_level_rewards.dtype
    return advantages.to(dtype), returns.to(dtype)


# ------------------------------------------------------------------ GRPO / RLOO
def _grouped_advantages(
    scores: Any, index: Any, normalize: str, leave_one_out: bool, eps: float
) -> Any:
    """Per-row advantages with rows grouped by ``index`` (any order, any sizes):
    groups of one size go through the kernel together."""
    torch = _torch()
    groups: dict[Any, list[int]] = defaultdict(list)
    for row, key in enumerate(index):
        groups[key].append(row)
    by_size: dict[int, list[int]] = defaultdict(list)
    for rows in groups.values():
        by_size[len(rows)].extend(rows)
    x = _as_kernel_float(scores)
    out = x.clone()
    for size, rows in by_size.items():
        sel = torch.tensor(rows, dtype=torch.long, device=x.device)
        if size == 1:
            # verl: mean 0, std 1 for a group of one; RLOO leaves the score as is.
            if normalize == "std" and not leave_one_out:
                out[sel] = x[sel] / (1.0 + eps)
            continue
        out[sel] = ops.group_advantages(
            x[sel].contiguous(),
            group_size=size,
            normalize=normalize,
            leave_one_out=leave_one_out,
            eps=eps,
        )
    return out.to(scores.dtype)


def compute_grpo_outcome_advantage(
    token_level_rewards: Any,
    response_mask: Any,
    index: Any,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
) -> tuple[Any, Any]:
    """verl's GRPO outcome advantage (Dr. GRPO with ``norm_adv_by_std_in_grpo=False``)."""
    torch = _torch()
    scores = token_level_rewards.sum(dim=-1)
    with torch.no_grad():
        normalize = "std" if norm_adv_by_std_in_grpo else "none"
        adv = _grouped_advantages(scores, index, normalize, False, float(epsilon))
        adv = adv.unsqueeze(-1) * response_mask
    return adv, adv


def compute_rloo_outcome_advantage(
    token_level_rewards: Any,
    response_mask: Any,
    index: Any,
    epsilon: float = 1e-6,
    config: Any = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """verl's RLOO outcome advantage: each score minus the mean of the others in its group."""
    torch = _torch()
    scores = token_level_rewards.sum(dim=-1)
    with torch.no_grad():
        adv = _grouped_advantages(scores, index, "none", True, 0.0)
        adv = adv.unsqueeze(-1) * response_mask
    return adv, adv


# ------------------------------------------------------------------ KL
_ESTIMATORS = {
    "kl": ("k1", None),
    "k1": ("k1", None),
    "abs": ("abs", None),
    "mse": ("k2", None),
    "k2": ("k2", None),
    "low_var_kl": ("k3", 10.0),
    "k3": ("k3", 10.0),
}


def _kl_torch(logprob: Any, ref_logprob: Any, estimator: str) -> Any:
    """The same estimates in torch arithmetic, for when a gradient is needed."""
    torch = _torch()
    lr = logprob - ref_logprob
    if estimator == "k1":
        return lr
    if estimator == "abs":
        return lr.abs()
    if estimator == "k2":
        return 0.5 * lr.square()
    neg = torch.clamp(-lr, min=-20, max=20)
    return torch.clamp(torch.exp(neg) - neg - 1, min=-10, max=10)


def _kl_kernel(logprob: Any, ref_logprob: Any, estimator: str, clamp: float | None) -> Any:
    torch = _torch()
    with torch.no_grad():
        lp = _as_kernel_float(logprob.detach())
        ref = _as_kernel_float(ref_logprob.detach()).to(lp.dtype)
        shape = lp.shape
        lp2 = lp.reshape(1, -1) if lp.dim() < 2 else lp.reshape(-1, shape[-1])
        ref2 = ref.reshape(lp2.shape)
        _, kl = ops.kl_shaped_rewards(
            lp2, ref2, None, None, kl_coef=0.0, estimator=estimator, clamp=clamp
        )
    return kl.reshape(shape).to(logprob.dtype)


def kl_penalty_forward(logprob: Any, ref_logprob: Any, kl_penalty: str) -> Any:
    """verl's ``kl_penalty_forward``: the per-token KL estimate named ``kl_penalty``."""
    torch = _torch()
    if kl_penalty == "full" or kl_penalty not in _ESTIMATORS:
        raise NotImplementedError
    estimator, clamp = _ESTIMATORS[kl_penalty]
    needs_grad = torch.is_grad_enabled() and (logprob.requires_grad or ref_logprob.requires_grad)
    if needs_grad:
        return _kl_torch(logprob, ref_logprob, estimator)
    return _kl_kernel(logprob, ref_logprob, estimator, clamp)


def kl_penalty(logprob: Any, ref_logprob: Any, kl_penalty: str) -> Any:
    """verl's ``kl_penalty``: ``kl_penalty_forward``, or with a ``+`` suffix the named
    estimate's value carrying the k2 estimator's gradient (straight-through)."""
    base = kl_penalty[:-1] if kl_penalty.endswith("+") else kl_penalty
    if not kl_penalty.endswith("+") or kl_penalty in ("mse", "k2"):
        return kl_penalty_forward(logprob, ref_logprob, base)
    if base == "full" or base not in _ESTIMATORS:
        raise NotImplementedError
    forward = _kl_kernel(logprob, ref_logprob, *_ESTIMATORS[base])
    surrogate = 0.5 * (logprob - ref_logprob).square()
    return surrogate - surrogate.detach() + forward.detach()


# ------------------------------------------------------------------ registration
def _gae_estimator(
    token_level_rewards: Any,
    response_mask: Any,
    values: Any = None,
    gamma: Any = None,
    lam: Any = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """``rlhf_fast_gae`` as registered: GAE with gamma/lam from the call or ``config``."""
    if values is None:
        raise ValueError(
            "rlhf_fast_gae needs the critic's values; verl's generic estimator branch "
            "does not pass them. Call rlhf_fast.integrations.verl.register() in the "
            "process that runs the trainer (it routes values, gamma and lam here)."
        )
    if gamma is None:
        gamma = 1.0 if config is None else config.get("gamma", 1.0)
    if lam is None:
        lam = 1.0 if config is None else config.get("lam", 1.0)
    return compute_gae_advantage_return(token_level_rewards, values, response_mask, gamma, lam)


def _name(estimator: Any) -> Any:
    return getattr(estimator, "value", estimator)


def _rebind(original: Any, replacement: Any) -> None:
    """Point every loaded ``verl`` module's global bound to ``original`` at ``replacement``."""
    for mod_name, module in list(sys.modules.items()):
        if module is None or not (mod_name == "verl" or mod_name.startswith("verl.")):
            continue
        for attr, value in list(vars(module).items()):
            if value is original:
                setattr(module, attr, replacement)


def _wrap_compute_advantage(original: Any) -> Any:
    def compute_advantage(
        data: Any,
        adv_estimator: Any,
        gamma: float = 1.0,
        lam: float = 1.0,
        num_repeat: int = 1,
        norm_adv_by_std_in_grpo: bool = True,
        config: Any = None,
    ) -> Any:
        if _name(adv_estimator) != "rlhf_fast_gae":
            return original(
                data,
                adv_estimator=adv_estimator,
                gamma=gamma,
                lam=lam,
                num_repeat=num_repeat,
                norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
                config=config,
            )
        if "response_mask" not in data.batch.keys():
            from verl.trainer.ppo.ray_trainer import compute_response_mask

            data.batch["response_mask"] = compute_response_mask(data)
        advantages, returns = _gae_estimator(
            token_level_rewards=data.batch["token_level_rewards"],
            response_mask=data.batch["response_mask"],
            values=data.batch["values"],
            gamma=gamma,
            lam=lam,
            config=config,
        )
        data.batch["advantages"] = advantages
        data.batch["returns"] = returns
        if config is not None and config.get("use_pf_ppo", False):
            from verl.trainer.ppo import core_algos

            data = core_algos.compute_pf_ppo_reweight_data(
                data, config.pf_ppo.get("reweight_method"), config.pf_ppo.get("weight_pow")
            )
        return data

    compute_advantage._rlhf_fast_original = original  # type: ignore[attr-defined]
    return compute_advantage


def _wrap_need_critic(original: Any) -> Any:
    def need_critic(config: Any) -> bool:
        if (
            config.critic.enable is None
            and _name(config.algorithm.adv_estimator) == "rlhf_fast_gae"
        ):
            return True
        return original(config)

    need_critic._rlhf_fast_original = original  # type: ignore[attr-defined]
    return need_critic


def register() -> tuple[str, ...]:
    """Add ``rlhf_fast_gae``, ``rlhf_fast_grpo`` and ``rlhf_fast_rloo`` to verl's
    advantage-estimator registry (idempotent) and route ``rlhf_fast_gae`` the critic's
    values (see the module docstring). Returns the names registered."""
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo import utils as ppo_utils

    for name, fn in zip(
        ESTIMATOR_NAMES,
        (_gae_estimator, compute_grpo_outcome_advantage, compute_rloo_outcome_advantage),
    ):
        core_algos.register_adv_est(name)(fn)

    try:
        from verl.trainer.ppo import ray_trainer
    except ImportError:  # no trainer in this environment: nothing to route
        ray_trainer = None
    if ray_trainer is not None:
        current = ray_trainer.compute_advantage
        if not hasattr(current, "_rlhf_fast_original"):
            _rebind(current, _wrap_compute_advantage(current))
    current = ppo_utils.need_critic
    if not hasattr(current, "_rlhf_fast_original"):
        _rebind(current, _wrap_need_critic(current))
    return ESTIMATOR_NAMES
