"""The tensor-facing API of the Rust kernels.

Every function here accepts numpy arrays and torch tensors (float32 or float64) and
returns the same kind, dtype and device it was given:

- numpy arrays and CPU torch tensors reach the kernels without a copy when they are
  C-contiguous (a strided input is copied once);
- CUDA tensors are copied to pinned host memory, computed on the CPU and copied back
  to the input's device;
- masks may be bool (viewed as uint8, no copy), uint8, or integer/float arrays
  holding only 0 and 1.

Two layouts are accepted by ``gae``, ``kl_shaped_rewards`` and the masked moments:

- *padded*: ``[B, T]`` arrays plus a ``[B, T]`` mask (``mask=None`` means every
  element takes part); rows may be left- or right-padded and may hold holes;
- *packed*: flat ``[N]`` arrays plus ``cu_seqlens`` ``[B + 1]`` int offsets (as in
  flash-attention's varlen API); row ``b`` is ``x[cu_seqlens[b]:cu_seqlens[b + 1]]``.

Bad input raises ``InvalidArgumentError`` (a ``ValueError``), ``InvalidDtypeError``
(a ``TypeError``) or ``NonFiniteError`` (NaN/Inf, skipped with ``check_finite=False``);
each message names the function and the argument, what was expected and what was given.
Each check is made once: this module only converts (torch -> numpy views, device
staging, masks to uint8, Python scalars to their types); the binding
(``rust/python``) checks every array (dtype, dimensions, shape, emptiness, ``out=``)
and the kernels every value (ranges, offsets, mask values, finiteness).

torch is optional: it is never imported here. A tensor can only reach these
functions if the caller has imported torch already, so ``sys.modules`` tells.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from rlhf_fast import _native
from rlhf_fast.errors import InvalidArgumentError, InvalidDtypeError, RlhfFastError

__all__ = [
    "gae",
    "group_advantages",
    "kl_shaped_rewards",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "minibatch_indices",
    "pad_ragged",
    "permutation",
]

Array = Any  # a numpy array or a torch tensor


# ------------------------------------------------------------------ torch, if present
def _torch() -> Any:
    return sys.modules.get("torch")


def _is_tensor(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _tensor_to_host(t: Any) -> Any:
    """A detached, C-contiguous CPU tensor with ``t``'s data: ``t`` itself when it
    already is one, a pinned host copy for device tensors, else one contiguous copy."""
    t = t.detach()
    if t.device.type != "cpu":
        host = _host_buffer(t.shape, t.dtype, t.device)
        host.copy_(t)
        return host
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t if t.is_contiguous() else t.contiguous()


def _host_buffer(shape: Any, dtype: Any, device: Any) -> Any:
    """A CPU tensor to stage data for ``device``: pinned for CUDA, so copies are fast
    and the copy back can be asynchronous."""
    return _torch().empty(shape, dtype=dtype, pin_memory=device.type == "cuda")


def _numpy_dtype_of_tensor(t: Any) -> np.dtype | None:
    torch = _torch()
    table = {
        torch.float32: np.float32,
        torch.float64: np.float64,
        torch.int64: np.int64,
        torch.int32: np.int32,
        torch.uint8: np.uint8,
        torch.bool: np.bool_,
    }
    found = table.get(t.dtype)
    return None if found is None else np.dtype(found)


def _describe(x: Any) -> str:
    if _is_tensor(x):
        return f"a tensor of dtype {x.dtype} and shape {tuple(x.shape)} on {x.device}"
    if isinstance(x, np.ndarray):
        return f"an array of dtype {x.dtype} and shape {x.shape}"
    return f"{type(x).__name__} {x!r:.60}"


# ------------------------------------------------------------------ scalar arguments
# Python scalars are converted here (the binding would raise a bare TypeError); their
# ranges are the kernels' to check.
def _real(fn: str, value: Any, name: str, hint: str) -> float:
    if isinstance(value, (str, bytes, complex, np.complexfloating)) or value is None:
        raise InvalidDtypeError(f"{fn}: {name} must be a real number, got {value!r}; {hint}")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise InvalidDtypeError(
            f"{fn}: {name} must be a real number, got {_describe(value)}; {hint}"
        ) from err


def _integer(fn: str, value: Any, name: str, example: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidDtypeError(
            f"{fn}: {name} must be an int, got {value!r}; pass e.g. {name}={example}"
        )
    return int(value)


def _choice(fn: str, value: Any, name: str, example: str) -> str:
    if not isinstance(value, str):
        raise InvalidDtypeError(
            f"{fn}: {name} must be a str, got {value!r}; pass e.g. {name}={example!r}"
        )
    return value


def _flag(fn: str, value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidDtypeError(f"{fn}: {name} must be True or False, got {value!r}")
    return bool(value)


def _native_call(fn: str, native: Any, *args: Any, **kwargs: Any) -> Any:
    """``native(*args, **kwargs)`` with the public function's name before any error."""
    try:
        return native(*args, **kwargs)
    except RlhfFastError as err:
        raise type(err)(f"{fn}: {err}") from None


# ------------------------------------------------------------------ array arguments
class _Output:
    """Where one result goes: a caller's ``out=`` array, a pinned staging buffer for
    device results, or a fresh array the kernel allocates (``array is None``)."""

    def __init__(self, call: _Call, given: Any, array: np.ndarray | None, staging: Any):
        self.call = call
        self.given = given
        self.array = array
        self.staging = staging  # pinned host tensor when the result goes to a device

    def flat(self) -> np.ndarray | None:
        return None if self.array is None else self.array.reshape(-1)

    def finish(self, result: np.ndarray, shape: tuple[int, ...]) -> Array:
        torch = _torch()
        if self.staging is not None:
            if self.given is not None:
                return self.given.copy_(self.staging, non_blocking=True)
            return self.staging.to(self.call.device, non_blocking=True)
        if self.given is not None:
            return self.given
        result = result.reshape(shape)
        return torch.from_numpy(result) if self.call.device is not None else result


class _Call:
    """Argument conversion for one ops call. The first float array decides the kind
    (numpy or torch, and the device) and dtype that every result takes."""

    def __init__(self, fn: str):
        self.fn = fn
        self.device: Any = None  # a torch.device when the caller passed torch tensors
        self.kind_set = False
        self.dtype: np.dtype | None = None

    @property
    def on_device(self) -> bool:
        return self.device is not None and self.device.type != "cpu"

    def _to_numpy(self, x: Any, name: str) -> np.ndarray:
        if _is_tensor(x):
            if _numpy_dtype_of_tensor(x) is None:
                raise InvalidDtypeError(
                    f"{self.fn}: {name} is {_describe(x)}, a dtype rlhf_fast does not take; "
                    f"cast it, e.g. {name}.float() for float data"
                )
            return _tensor_to_host(x).numpy()
        if isinstance(x, np.ndarray):
            return x
        try:
            return np.asarray(x)
        except (ValueError, TypeError) as err:
            raise InvalidArgumentError(
                f"{self.fn}: {name} must be an array or tensor, got {_describe(x)} ({err})"
            ) from err

    def floats(self, x: Any, name: str) -> np.ndarray:
        """``x`` as a C-contiguous native-endian numpy array; the first one sets the
        kind, device and dtype of the results."""
        if x is None:
            raise InvalidArgumentError(f"{self.fn}: {name} is required, got None")
        arr = self._to_numpy(x, name)
        if not self.kind_set:
            self.kind_set = True
            self.device = x.device if _is_tensor(x) else None
            self.dtype = arr.dtype
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return np.ascontiguousarray(arr)

    def optional_floats(self, x: Any, name: str) -> np.ndarray | None:
        return None if x is None else self.floats(x, name)

    def mask(self, m: Any, name: str) -> Any:
        """``m`` as C-contiguous uint8 0/1 (a bool array is only re-viewed). An int or
        float mask is converted only when every value is 0 or 1, so nothing is lost on
        the way; any other dtype is passed on for the binding to refuse."""
        if m is None:
            return None
        arr = self._to_numpy(m, name)
        if arr.dtype == np.bool_:
            return np.ascontiguousarray(arr).view(np.uint8)
        if arr.dtype == np.uint8 or arr.dtype.kind not in "iuf":
            return np.ascontiguousarray(arr)
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidArgumentError(
                f"{self.fn}: {name} must hold only 0 and 1, got {arr[where].item()!r} at "
                f"{list(where)}; pass a bool array, e.g. {name} != 0"
            )
        return np.ascontiguousarray(arr, dtype=np.uint8)

    def offsets(self, cu: Any, name: str) -> Any:
        """Integer offsets as C-contiguous int64 (anything else goes on to be refused)."""
        if cu is None:
            return None
        arr = self._to_numpy(cu, name)
        if arr.dtype.kind in "iu":
            return np.ascontiguousarray(arr, dtype=np.int64)
        return arr

    def output(self, given: Any, name: str, shape: tuple[int, ...]) -> _Output:
        """Where a result goes: the caller's ``out=`` (a device tensor through a pinned
        staging copy), a staging buffer for device results, or a fresh array."""
        if given is None:
            if self.on_device:
                staging = _host_buffer(shape, _torch_dtype(self.dtype), self.device)
                return _Output(self, None, staging.numpy(), staging)
            return _Output(self, None, None, None)
        if _is_tensor(given):
            if _numpy_dtype_of_tensor(given) is None:
                raise InvalidDtypeError(
                    f"{self.fn}: {name} is {_describe(given)}, a dtype rlhf_fast does not take"
                )
            if given.device.type != "cpu":
                staging = _host_buffer(tuple(given.shape), given.dtype, given.device)
                return _Output(self, given, staging.numpy(), staging)
            return _Output(self, given, given.detach().numpy(), None)
        return _Output(self, given, given, None)

    def scalar(self, value: float) -> Any:
        """A result scalar in the caller's kind: a numpy scalar or a 0-d tensor."""
        assert self.dtype is not None
        if self.device is None:
            return self.dtype.type(value)
        return _torch().tensor(value, dtype=_torch_dtype(self.dtype), device=self.device)


def _torch_dtype(dtype: np.dtype | None) -> Any:
    torch = _torch()
    return torch.float64 if dtype == np.float64 else torch.float32


# ------------------------------------------------------------------ GAE
def gae(
    rewards: Array,
    values: Array,
    mask: Array | None = None,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    bootstrap_values: Array | None = None,
    dones: Array | None = None,
    cu_seqlens: Array | None = None,
    advantages_out: Array | None = None,
    returns_out: Array | None = None,
    check_finite: bool = True,
) -> tuple[Array, Array]:
    """Generalised advantage estimation, one reverse pass per row (rows in parallel).

    Args:
        rewards: ``[B, T]`` float32/float64 per-token rewards (``[N]`` when packed).
        values: ``[B, T]`` value estimates, same dtype as ``rewards``.
        mask: ``[B, T]`` bool/uint8/int/float 0/1; 1 marks a step that takes part.
            Left and right padding and holes are allowed: the recursion skips
            unmasked steps and carries across them. ``None``: every step takes part.
        gamma: discount in [0, 1].
        lam: GAE lambda in [0, 1].
        bootstrap_values: ``[B]`` value after each row's last masked step, for rows
            cut off before their episode ended (truncation); ``None`` means 0.
        dones: ``[B, T]`` (``[N]`` packed) 0/1; 1 on a step that ends an episode
            inside the row: the next value and advantage are 0 there. (CleanRL's
            ``dones[t + 1]``, "the next observation starts an episode", is ``dones[t]`` here.)
        cu_seqlens: ``[B + 1]`` int offsets for the packed layout (with ``mask=None``).
        advantages_out, returns_out: optional C-contiguous arrays of the result's
            shape and dtype to write into (no allocation).
        check_finite: raise ``NonFiniteError`` on NaN/Inf in a masked input.

    Returns:
        ``(advantages, returns)`` in the input's kind, dtype and device; 0 outside the
        mask.

    Equivalent to this naive loop::

        for b in range(B):
            next_value, next_adv = bootstrap_values[b] (or 0), 0
            for t in reversed(range(T)):
                if not mask[b, t]:
                    continue
                if dones[b, t]:
                    next_value, next_adv = 0, 0
                delta = rewards[b, t] + gamma * next_value - values[b, t]
                advantages[b, t] = delta + gamma * lam * next_adv
                returns[b, t] = advantages[b, t] + values[b, t]
                next_value, next_adv = values[b, t], advantages[b, t]

    Example:
        >>> import numpy as np
        >>> rewards = np.array([[0.0, 0.0, 1.0, 0.0]], dtype=np.float32)
        >>> values = np.zeros_like(rewards)
        >>> mask = np.array([[True, True, True, False]])
        >>> advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
        >>> advantages
        array([[1., 1., 1., 0.]], dtype=float32)
    """
    fn = "gae"
    call = _Call(fn)
    r = call.floats(rewards, "rewards")
    outputs = (
        call.output(advantages_out, "advantages_out", r.shape),
        call.output(returns_out, "returns_out", r.shape),
    )
    adv, ret = _native_call(
        fn,
        _native.gae,
        r,
        call.floats(values, "values"),
        call.mask(mask, "mask"),
        cu_seqlens=call.offsets(cu_seqlens, "cu_seqlens"),
        gamma=_real(fn, gamma, "gamma", "pass e.g. gamma=1.0"),
        lam=_real(fn, lam, "lam", "pass e.g. lam=0.95"),
        bootstrap_values=call.optional_floats(bootstrap_values, "bootstrap_values"),
        dones=call.mask(dones, "dones"),
        advantages_out=outputs[0].array,
        returns_out=outputs[1].array,
        check_finite=_flag(fn, check_finite, "check_finite"),
    )
    return outputs[0].finish(adv, r.shape), outputs[1].finish(ret, r.shape)


# ------------------------------------------------------------------ KL shaping
def kl_shaped_rewards(
    logprobs: Array,
    ref_logprobs: Array,
    mask: Array | None,
    scores: Array | None,
    *,
    kl_coef: float,
    estimator: str = "k1",
    clamp: float | None = None,
    cu_seqlens: Array | None = None,
    rewards_out: Array | None = None,
    kl_out: Array | None = None,
    check_finite: bool = True,
) -> tuple[Array, Array]:
    """Per-token rewards with a KL penalty against a reference policy.

    Args:
        logprobs: ``[B, T]`` float32/float64 log-probabilities of the sampled tokens
            under the policy (``[N]`` when packed).
        ref_logprobs: ``[B, T]`` the same under the reference model, same dtype.
        mask: ``[B, T]`` bool/uint8/int/float 0/1 response-token mask, or ``None``
            (every token takes part; required ``None`` with ``cu_seqlens``).
        scores: ``[B]`` sequence scores (e.g. reward-model outputs), added on each
            row's last masked token; ``None`` adds nothing.
        kl_coef: finite, >= 0.
        estimator: ``"k1"`` (``lr``), ``"abs"`` (``|lr|``), ``"k2"`` (``lr**2 / 2``) or
            ``"k3"`` (``exp(-lr) - 1 + lr``) with ``lr = logprobs - ref_logprobs``.
        clamp: clamp the per-token KL to ``[-clamp, clamp]`` (``clamp > 0``); ``None``
            leaves it as is.
        cu_seqlens: ``[B + 1]`` int offsets for the packed layout.
        rewards_out, kl_out: optional arrays to write the results into.
        check_finite: raise ``NonFiniteError`` on NaN/Inf in a masked input.

    Returns:
        ``(rewards, kl)``, both 0 outside the mask. The score lands on the last
        *masked* token, never on padding after it.

    Equivalent to this naive loop::

        for b in range(B):
            for t in range(T):
                if mask[b, t]:
                    kl[b, t] = clip(estimate(logprobs[b, t] - ref_logprobs[b, t]), -clamp, clamp)
                    rewards[b, t] = -kl_coef * kl[b, t]
            rewards[b, last masked t] += scores[b]

    Example:
        >>> import numpy as np
        >>> logprobs = np.array([[-1.0, -1.0, -1.0]])
        >>> ref_logprobs = np.array([[-1.5, -1.0, -2.0]])
        >>> rewards, kl = kl_shaped_rewards(
        ...     logprobs, ref_logprobs, np.array([[1, 1, 0]]), np.array([2.0]), kl_coef=0.1)
        >>> kl
        array([[0.5, 0. , 0. ]])
        >>> rewards
        array([[-0.05,  2.  ,  0.  ]])
    """
    fn = "kl_shaped_rewards"
    call = _Call(fn)
    lp = call.floats(logprobs, "logprobs")
    outputs = (
        call.output(rewards_out, "rewards_out", lp.shape),
        call.output(kl_out, "kl_out", lp.shape),
    )
    rewards, kl = _native_call(
        fn,
        _native.kl_shaped_rewards,
        lp,
        call.floats(ref_logprobs, "ref_logprobs"),
        call.mask(mask, "mask"),
        call.optional_floats(scores, "scores"),
        cu_seqlens=call.offsets(cu_seqlens, "cu_seqlens"),
        kl_coef=_real(fn, kl_coef, "kl_coef", "pass e.g. kl_coef=0.05"),
        estimator=_choice(fn, estimator, "estimator", "k1"),
        clamp=None if clamp is None else _real(fn, clamp, "clamp", "pass e.g. clamp=10.0 or None"),
        rewards_out=outputs[0].array,
        kl_out=outputs[1].array,
        check_finite=_flag(fn, check_finite, "check_finite"),
    )
    return outputs[0].finish(rewards, lp.shape), outputs[1].finish(kl, lp.shape)


# ------------------------------------------------------------------ masked moments
def _moments(
    fn: str, x: Any, mask: Any, cu_seqlens: Any, check_finite: bool, need: int
) -> tuple[_Call, int, float, float]:
    call = _Call(fn)
    count, mean, m2 = _native_call(
        fn,
        _native.masked_moments,
        call.floats(x, "x"),
        call.mask(mask, "mask"),
        cu_seqlens=call.offsets(cu_seqlens, "cu_seqlens"),
        min_count=need,
        check_finite=_flag(fn, check_finite, "check_finite"),
    )
    return call, count, mean, m2


def masked_mean(
    x: Array,
    mask: Array | None = None,
    *,
    cu_seqlens: Array | None = None,
    check_finite: bool = True,
) -> Any:
    """Mean of ``x`` over the elements where ``mask`` is 1.

    Args:
        x: float32/float64 array of any shape (``[N]`` when packed).
        mask: same shape as ``x``, bool/uint8/int/float 0/1; ``None``: all elements.
        cu_seqlens: ``[B + 1]`` int offsets: the elements of every packed row take part.
        check_finite: raise ``NonFiniteError`` on NaN/Inf in a masked element.

    Returns:
        A scalar of ``x``'s dtype (a 0-d tensor on ``x``'s device for torch input),
        accumulated in float64. An all-masked input raises ``InvalidArgumentError``.

    Equivalent to ``x[mask.astype(bool)].astype(np.float64).mean()``.

    Example:
        >>> import numpy as np
        >>> masked_mean(np.array([1.0, 2.0, 9.0]), np.array([True, True, False]))
        np.float64(1.5)
    """
    call, _, mean, _ = _moments("masked_mean", x, mask, cu_seqlens, check_finite, need=1)
    return call.scalar(mean)


def masked_var(
    x: Array,
    mask: Array | None = None,
    *,
    unbiased: bool = True,
    cu_seqlens: Array | None = None,
    check_finite: bool = True,
) -> Any:
    """Variance of ``x`` over the elements where ``mask`` is 1.

    Args:
        x: float32/float64 array of any shape (``[N]`` when packed).
        mask: same shape as ``x``, 0/1; ``None``: all elements.
        unbiased: divide by ``count - 1`` (Bessel) rather than ``count``; needs at
            least 2 masked elements (1 when biased).
        cu_seqlens: ``[B + 1]`` int offsets for the packed layout.
        check_finite: raise ``NonFiniteError`` on NaN/Inf in a masked element.

    Returns:
        A scalar of ``x``'s dtype (0-d tensor for torch input), accumulated in float64.

    Equivalent to ``x[mask.astype(bool)].astype(np.float64).var(ddof=1 if unbiased else 0)``.

    Example:
        >>> import numpy as np
        >>> masked_var(np.array([1.0, 3.0, 100.0]), np.array([1, 1, 0]))
        np.float64(2.0)
    """
    unbiased = _flag("masked_var", unbiased, "unbiased")
    call, count, _, m2 = _moments(
        "masked_var", x, mask, cu_seqlens, check_finite, need=2 if unbiased else 1
    )
    return call.scalar(m2 / (count - 1 if unbiased else count))


def masked_whiten(
    x: Array,
    mask: Array | None = None,
    *,
    shift_mean: bool = True,
    eps: float = 1e-8,
    unbiased: bool = True,
    cu_seqlens: Array | None = None,
    out: Array | None = None,
    check_finite: bool = True,
) -> Array:
    """Whiten ``x`` with the mean and variance of its masked elements.

    Args:
        x: float32/float64 array of any shape (``[N]`` when packed), e.g. ``[B, T]``
            advantages.
        mask: same shape as ``x``, 0/1; ``None``: all elements.
        shift_mean: ``False`` adds the mean back (whiten the scale only).
        eps: added to the variance, finite and >= 0.
        unbiased: Bessel-corrected variance (as TRL's ``masked_whiten``).
        cu_seqlens: ``[B + 1]`` int offsets for the packed layout.
        out: optional array of ``x``'s shape and dtype to write into; it must not
            share memory with ``x``.
        check_finite: raise ``NonFiniteError`` on NaN/Inf in a masked element.

    Returns:
        ``(x - mean) / sqrt(var + eps)`` (``+ mean`` when not ``shift_mean``) on masked
        elements, 0 elsewhere. Fewer than 2 masked elements raise ``InvalidArgumentError``.

    Equivalent to::

        sel = x[mask.astype(bool)]
        mean, var = sel.mean(), sel.var(ddof=1)
        out = np.where(mask, (x - mean) / np.sqrt(var + eps) + (0 if shift_mean else mean), 0)

    Example:
        >>> import numpy as np
        >>> masked_whiten(np.array([1.0, 3.0, 7.0]), np.array([1, 1, 0]), eps=0.0)
        array([-0.70710678,  0.70710678,  0.        ])
    """
    fn = "masked_whiten"
    call = _Call(fn)
    arr = call.floats(x, "x")
    result = call.output(out, "out", arr.shape)
    whitened = _native_call(
        fn,
        _native.masked_whiten,
        arr,
        call.mask(mask, "mask"),
        cu_seqlens=call.offsets(cu_seqlens, "cu_seqlens"),
        shift_mean=_flag(fn, shift_mean, "shift_mean"),
        unbiased=_flag(fn, unbiased, "unbiased"),
        eps=_real(fn, eps, "eps", "pass e.g. eps=1e-8"),
        out=result.array,
        check_finite=_flag(fn, check_finite, "check_finite"),
    )
    return result.finish(whitened, arr.shape)


# ------------------------------------------------------------------ group advantages
def group_advantages(
    scores: Array,
    *,
    group_size: int,
    normalize: str = "std",
    leave_one_out: bool = False,
    eps: float = 1e-6,
    check_finite: bool = True,
) -> Array:
    """GRPO / RLOO advantages for scores laid out group by group.

    Args:
        scores: ``[N]`` float32/float64, ``N = num_groups * group_size``; the
            ``group_size`` completions of one prompt are consecutive.
        group_size: completions per prompt, >= 1, divides ``N``; >= 2 with
            ``leave_one_out`` or ``normalize="std"``.
        normalize: ``"std"`` divides by the group's unbiased std plus ``eps`` (GRPO);
            ``"none"`` keeps the raw difference (Dr. GRPO, RLOO).
        leave_one_out: baseline is the mean of the *other* members of the group (RLOO)
            instead of the group mean.
        eps: finite, >= 0.
        check_finite: raise ``NonFiniteError`` on NaN/Inf in ``scores``.

    Returns:
        ``[N]`` advantages in ``scores``' kind and dtype.

    Equivalent to::

        g = scores.reshape(-1, group_size)
        baseline = (g.sum(1, keepdims=True) - g) / (group_size - 1) if leave_one_out \\
            else g.mean(1, keepdims=True)
        adv = g - baseline
        if normalize == "std":
            adv = adv / (g.std(1, ddof=1, keepdims=True) + eps)

    Example:
        >>> import numpy as np
        >>> group_advantages(np.array([1.0, 3.0, 0.0, 0.0]), group_size=2, normalize="none")
        array([-1.,  1.,  0.,  0.])
    """
    fn = "group_advantages"
    call = _Call(fn)
    s = call.floats(scores, "scores")
    staging = call.output(None, "out", s.shape)
    adv = _native_call(
        fn,
        _native.group_advantages,
        s,
        group_size=_integer(fn, group_size, "group_size", "4"),
        normalize=_choice(fn, normalize, "normalize", "std"),
        leave_one_out=_flag(fn, leave_one_out, "leave_one_out"),
        eps=_real(fn, eps, "eps", "pass e.g. eps=1e-6"),
        check_finite=_flag(fn, check_finite, "check_finite"),
    )
    if staging.array is not None:
        staging.array[...] = adv
    return staging.finish(adv, s.shape)


# ------------------------------------------------------------------ batching
def _ragged_parts(
    fn: str, sequences: Any, offsets: Any
) -> tuple[np.ndarray, np.ndarray, Any, np.dtype | None]:
    """``(flat values, int64 offsets, first input, view dtype)`` from a list of 1-D
    arrays or from flat values + offsets. Bool data is carried as uint8."""
    helper = _Call(fn)
    if offsets is not None:
        values = helper._to_numpy(sequences, "sequences")
        first = sequences
        flat = np.ascontiguousarray(values)
        offs = helper.offsets(offsets, "offsets")
    else:
        if (
            _is_tensor(sequences)
            or isinstance(sequences, np.ndarray)
            or not isinstance(sequences, (list, tuple))
        ):
            raise InvalidArgumentError(
                f"{fn}: sequences must be a list of 1-D arrays/tensors (or flat values "
                f"with offsets=), got {_describe(sequences)}"
            )
        if len(sequences) == 0:
            raise InvalidArgumentError(
                f"{fn}: sequences is empty; pass at least one 1-D array or tensor"
            )
        first = sequences[0]
        # This runs once per sequence, so it stays lean: numpy arrays pass as they are.
        arrays = [
            s if type(s) is np.ndarray else helper._to_numpy(s, "sequences") for s in sequences
        ]
        dtype = arrays[0].dtype
        for i, a in enumerate(arrays):
            if a.ndim != 1:
                raise InvalidArgumentError(
                    f"{fn}: every element of sequences must be 1-D, but sequences[{i}] has "
                    f"shape {a.shape}; flatten it or pass it row by row"
                )
            if a.dtype != dtype:
                raise InvalidDtypeError(
                    f"{fn}: every element of sequences must share one dtype, but "
                    f"sequences[0] is {dtype} and sequences[{i}] is {a.dtype}; "
                    "cast them to one dtype first"
                )
        lengths = np.fromiter([a.shape[0] for a in arrays], dtype=np.int64, count=len(arrays))
        offs = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offs[1:])
        flat = np.concatenate(arrays)
    view_dtype = None
    if flat.dtype == np.bool_:
        view_dtype, flat = flat.dtype, flat.view(np.uint8)
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return flat, offs, first, view_dtype


def pad_ragged(
    sequences: Any,
    *,
    pad_value: float = 0,
    side: str = "right",
    max_length: int | None = None,
    offsets: Array | None = None,
    indices: Array | None = None,
) -> tuple[Array, Array]:
    """Stack variable-length 1-D sequences into a padded ``[B, L]`` batch and its mask.

    Args:
        sequences: a list of ``B`` 1-D arrays/tensors of one dtype (float32, float64,
            int64, int32, uint8 or bool), or, with ``offsets``, their flat
            concatenation ``[N]``.
        pad_value: value written in the padding; must fit the dtype.
        side: ``"right"`` (pad after) or ``"left"`` (pad before, as generation wants).
        max_length: pad to this length ``L`` instead of the longest selected row; a
            longer row is an error.
        offsets: ``[B + 1]`` int offsets into the flat ``sequences``.
        indices: ``[R]`` int rows to gather, in that order (repeats allowed); the
            result is then ``[R, L]``.

    Returns:
        ``(padded [B, L], mask [B, L] bool)`` in the kind and device of
        ``sequences[0]`` (or of the flat values).

    Equivalent to::

        L = max_length or max(len(s) for s in sequences)
        padded = np.full((B, L), pad_value); mask = np.zeros((B, L), bool)
        for b, s in enumerate(sequences):
            cols = slice(0, len(s)) if side == "right" else slice(L - len(s), L)
            padded[b, cols], mask[b, cols] = s, True

    Example:
        >>> import numpy as np
        >>> padded, mask = pad_ragged([np.array([1, 2, 3]), np.array([4])], side="left")
        >>> padded
        array([[1, 2, 3],
               [0, 0, 4]])
        >>> mask
        array([[ True,  True,  True],
               [False, False,  True]])
    """
    fn = "pad_ragged"
    side = _choice(fn, side, "side", "right")
    pad = _real(fn, pad_value, "pad_value", "pass e.g. pad_value=0")
    length = None if max_length is None else _integer(fn, max_length, "max_length", "512")
    flat, offs, first, view_dtype = _ragged_parts(fn, sequences, offsets)
    rows = _Call(fn).offsets(indices, "indices")
    if view_dtype is not None and pad not in (0.0, 1.0):
        raise InvalidArgumentError(
            f"{fn}: pad_value must be 0 or 1 (False/True) for bool sequences, got {pad_value!r}"
        )
    native_pad: float = int(pad) if pad.is_integer() else pad
    padded, mask = _native_call(
        fn,
        _native.pad_ragged,
        flat,
        offs,
        pad_value=native_pad,
        side=side,
        length=length,
        indices=rows,
    )
    if view_dtype is not None:
        padded = padded.view(view_dtype)
    if _is_tensor(first):
        torch = _torch()
        padded_t, mask_t = torch.from_numpy(padded), torch.from_numpy(mask)
        if first.device.type != "cpu":
            return (
                padded_t.to(first.device, non_blocking=False),
                mask_t.to(first.device, non_blocking=False),
            )
        return padded_t, mask_t
    return padded, mask


def minibatch_indices(
    n: int, minibatch_size: int, *, seed: int, drop_last: bool = False
) -> list[np.ndarray]:
    """A seeded shuffle of ``range(n)`` cut into minibatches of ``minibatch_size``.

    Args:
        n: number of items, >= 1.
        minibatch_size: items per minibatch, >= 1; the last one is shorter when it
            does not divide ``n`` (dropped with ``drop_last``).
        seed: int in ``[0, 2**64)``; the same seed gives the same minibatches on every
            platform and thread count.

    Returns:
        A list of int64 ``[minibatch_size]`` arrays (numpy).

    Equivalent to ``np.array_split``-ing ``permutation(n, seed)`` every
    ``minibatch_size`` items.

    Example:
        >>> batches = minibatch_indices(5, 2, seed=0)
        >>> [len(b) for b in batches], sorted(np.concatenate(batches).tolist())
        ([2, 2, 1], [0, 1, 2, 3, 4])
    """
    fn = "minibatch_indices"
    return _native_call(
        fn,
        _native.minibatch_indices,
        _integer(fn, n, "n", "len(buffer)"),
        _integer(fn, minibatch_size, "minibatch_size", "64"),
        seed=_integer(fn, seed, "seed", "0"),
        drop_last=_flag(fn, drop_last, "drop_last"),
    )


def permutation(n: int, *, seed: int) -> np.ndarray:
    """The seeded permutation of ``range(n)`` (int64 ``[n]``) that ``minibatch_indices`` cuts.

    Example:
        >>> sorted(permutation(4, seed=7).tolist())
        [0, 1, 2, 3]
    """
    fn = "permutation"
    return _native_call(
        fn,
        _native.permutation,
        _integer(fn, n, "n", "len(buffer)"),
        seed=_integer(fn, seed, "seed", "0"),
    )
