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
each message names the argument, what was expected and what was given.

torch is optional: it is never imported here. A tensor can only reach these
functions if the caller has imported torch already, so ``sys.modules`` tells.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import numpy as np

from rlhf_fast import _native
from rlhf_fast.errors import InvalidArgumentError, InvalidDtypeError

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
KL_ESTIMATORS = ("k1", "abs", "k2", "k3")
NORMALIZE_MODES = ("std", "none")
PAD_SIDES = ("right", "left")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_RAGGED_DTYPES = tuple(np.dtype(d) for d in (np.float32, np.float64, np.int64, np.int32, np.uint8))


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
def _real(fn: str, value: Any, name: str, hint: str) -> float:
    if isinstance(value, (str, bytes, complex, np.complexfloating)) or value is None:
        raise InvalidDtypeError(f"{fn}: {name} must be a real number, got {value!r}; {hint}")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise InvalidDtypeError(
            f"{fn}: {name} must be a real number, got {_describe(value)}; {hint}"
        ) from err


def _unit_interval(fn: str, value: Any, name: str) -> float:
    v = _real(fn, value, name, f"pass e.g. {name}=0.95")
    if not 0.0 <= v <= 1.0:  # also rejects NaN
        raise InvalidArgumentError(
            f"{fn}: {name} must lie in [0, 1], got {v}; pass e.g. {name}=0.95"
        )
    return v


def _non_negative(fn: str, value: Any, name: str, example: str) -> float:
    v = _real(fn, value, name, f"pass e.g. {name}={example}")
    if not (math.isfinite(v) and v >= 0.0):
        raise InvalidArgumentError(
            f"{fn}: {name} must be finite and >= 0, got {v}; pass e.g. {name}={example}"
        )
    return v


def _integer(fn: str, value: Any, name: str, minimum: int, example: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidDtypeError(
            f"{fn}: {name} must be an int >= {minimum}, got {value!r}; pass e.g. {name}={example}"
        )
    if value < minimum:
        raise InvalidArgumentError(
            f"{fn}: {name} must be an int >= {minimum}, got {value}; pass e.g. {name}={example}"
        )
    return int(value)


def _choice(fn: str, value: Any, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise InvalidArgumentError(f"{fn}: {name} must be one of {options}; got {value!r}")
    return value


def _flag(fn: str, value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidDtypeError(f"{fn}: {name} must be True or False, got {value!r}")
    return bool(value)


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
    """Argument normalisation for one ops call. The first float array decides the
    kind (numpy or torch, and the device) and dtype that every result takes."""

    def __init__(self, fn: str):
        self.fn = fn
        self.device: Any = None  # a torch.device when the caller passed torch tensors
        self.kind_set = False
        self.dtype: np.dtype | None = None
        self.dtype_from = ""

    def _adopt_kind(self, x: Any) -> None:
        if not self.kind_set:
            self.kind_set = True
            self.device = x.device if _is_tensor(x) else None

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

    def _bad_dtype(self, name: str, x: Any) -> Any:
        raise InvalidDtypeError(
            f"{self.fn}: {name} must hold float32 or float64, got {_describe(x)}; "
            f"cast it, e.g. {name}.astype(np.float32) or {name}.float()"
        )

    def floats(
        self,
        x: Any,
        name: str,
        *,
        ndim: int | None = None,
        shape: tuple[int, ...] | None = None,
        like: str = "",
        layout: str = "",
    ) -> np.ndarray:
        """``x`` as a C-contiguous float32/float64 numpy array sharing the call's dtype."""
        if x is None:
            raise InvalidArgumentError(f"{self.fn}: {name} is required, got None")
        arr = self._to_numpy(x, name)
        if arr.dtype not in _FLOAT_DTYPES:
            self._bad_dtype(name, x)
        if ndim is not None and arr.ndim != ndim:
            raise InvalidArgumentError(
                f"{self.fn}: {name} must be {ndim}-D{layout}, got {arr.ndim}-D "
                f"with shape {arr.shape}"
            )
        if shape is not None and arr.shape != shape:
            raise InvalidArgumentError(
                f"{self.fn}: {name} must have shape {shape}{like}, got {arr.shape}"
            )
        if self.dtype is None:
            self.dtype, self.dtype_from = arr.dtype, name
        elif arr.dtype != self.dtype:
            raise InvalidDtypeError(
                f"{self.fn}: {name} has dtype {arr.dtype} but {self.dtype_from} has "
                f"{self.dtype}; all float inputs must share one dtype: cast {name} to "
                f"{self.dtype}"
            )
        self._adopt_kind(x)
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return np.ascontiguousarray(arr)

    def optional_floats(self, x: Any, name: str, **kw: Any) -> np.ndarray | None:
        return None if x is None else self.floats(x, name, **kw)

    def mask(self, m: Any, name: str, shape: tuple[int, ...], like: str) -> np.ndarray:
        """``m`` as a C-contiguous uint8 0/1 array (a bool array is only re-viewed)."""
        arr = self._to_numpy(m, name)
        if arr.shape != shape:
            raise InvalidArgumentError(
                f"{self.fn}: {name} must have shape {shape} (the shape of {like}), got {arr.shape}"
            )
        if arr.dtype == np.bool_:
            return np.ascontiguousarray(arr).view(np.uint8)
        if arr.dtype == np.uint8:
            return np.ascontiguousarray(arr)
        if arr.dtype.kind not in "iuf":
            raise InvalidDtypeError(
                f"{self.fn}: {name} must be bool, uint8, or an int/float array of 0/1, "
                f"got {_describe(m)}; build it with e.g. (tokens != pad_id)"
            )
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidArgumentError(
                f"{self.fn}: {name} must hold only 0 and 1, got {arr[where].item()!r} at "
                f"{list(where)}; pass a bool array, e.g. {name} != 0"
            )
        return arr.astype(np.uint8)

    def offsets(self, cu: Any, name: str, num_elements: int) -> np.ndarray:
        """``cu`` as C-contiguous int64 offsets ``[B + 1]`` into ``num_elements`` values."""
        arr = self._to_numpy(cu, name)
        if arr.dtype.kind not in "iu":
            raise InvalidDtypeError(
                f"{self.fn}: {name} must hold integers (int32/int64 offsets), got {_describe(cu)}"
            )
        if arr.ndim != 1 or arr.shape[0] < 2:
            raise InvalidArgumentError(
                f"{self.fn}: {name} must be 1-D with B + 1 >= 2 offsets, got shape {arr.shape}"
            )
        arr = np.ascontiguousarray(arr, dtype=np.int64)
        if arr[0] < 0 or arr[-1] > num_elements or (np.diff(arr) < 0).any():
            raise InvalidArgumentError(
                f"{self.fn}: {name} must be non-decreasing offsets with {name}[0] >= 0 and "
                f"{name}[-1] <= {num_elements} (the number of elements), got "
                f"{np.array2string(arr, threshold=8)}"
            )
        return arr

    def output(self, given: Any, name: str, shape: tuple[int, ...]) -> _Output:
        """Validates a caller's ``out=`` array, or prepares where a fresh result goes."""
        if given is None:
            if self.on_device:
                staging = _host_buffer(shape, _torch_dtype(self.dtype), self.device)
                return _Output(self, None, staging.numpy(), staging)
            return _Output(self, None, None, None)
        if _is_tensor(given):
            problems = []
            if given.dtype != _torch_dtype(self.dtype):
                problems.append(f"dtype {given.dtype} (expected {_torch_dtype(self.dtype)})")
            if tuple(given.shape) != shape:
                problems.append(f"shape {tuple(given.shape)} (expected {shape})")
            if not given.is_contiguous():
                problems.append("non-contiguous memory (expected contiguous)")
            if problems:
                raise InvalidArgumentError(f"{self.fn}: {name} has " + ", ".join(problems))
            if given.device.type != "cpu":
                staging = _host_buffer(shape, given.dtype, given.device)
                return _Output(self, given, staging.numpy(), staging)
            return _Output(self, given, given.detach().numpy(), None)
        if not isinstance(given, np.ndarray):
            raise InvalidDtypeError(
                f"{self.fn}: {name} must be a numpy array or torch tensor, got {_describe(given)}"
            )
        problems = []
        if given.dtype != self.dtype:
            problems.append(f"dtype {given.dtype} (expected {self.dtype})")
        if given.shape != shape:
            problems.append(f"shape {given.shape} (expected {shape})")
        if not given.flags.c_contiguous:
            problems.append("non-contiguous memory (expected C-contiguous)")
        if not given.flags.writeable:
            problems.append("read-only memory")
        if problems:
            raise InvalidArgumentError(f"{self.fn}: {name} has " + ", ".join(problems))
        return _Output(self, given, given, None)

    def scalar(self, value: float) -> Any:
        """A result scalar in the caller's kind: a numpy scalar or a 0-d tensor."""
        assert self.dtype is not None
        if self.device is None:
            return self.dtype.type(value)
        return _torch().tensor(value, dtype=_torch_dtype(self.dtype), device=self.device)

    def not_empty(self, arr: np.ndarray, name: str) -> None:
        if arr.size == 0:
            raise InvalidArgumentError(
                f"{self.fn}: {name} is empty (shape {arr.shape}); pass at least one row "
                "with at least one element"
            )

    def no_mask_with_packed(self, mask: Any, name: str = "mask") -> None:
        if mask is not None:
            raise InvalidArgumentError(
                f"{self.fn}: pass either {name} (padded [B, T] layout) or cu_seqlens "
                f"(packed layout), not both; got {name}={_describe(mask)}"
            )


def _torch_dtype(dtype: np.dtype | None) -> Any:
    torch = _torch()
    return torch.float64 if dtype == np.float64 else torch.float32


def _row_offsets(rows: int, cols: int) -> np.ndarray:
    """Offsets that cut a flat ``[rows * cols]`` buffer into its rows."""
    return np.arange(0, (rows + 1) * cols, cols, dtype=np.int64)


# ------------------------------------------------------------------ GAE
def gae(
    rewards: Array,
    values: Array,
    mask: Array | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    bootstrap_values: Array | None = None,
    dones: Array | None = None,
    *,
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
    gamma = _unit_interval(fn, gamma, "gamma")
    lam = _unit_interval(fn, lam, "lam")
    check_finite = _flag(fn, check_finite, "check_finite")
    packed = cu_seqlens is not None
    if packed:
        call.no_mask_with_packed(mask)
    layout = " [N] when cu_seqlens is given" if packed else " [B, T] (or pass cu_seqlens)"
    r = call.floats(rewards, "rewards", ndim=1 if packed else 2, layout=layout)
    call.not_empty(r, "rewards")
    shape = r.shape
    v = call.floats(values, "values", shape=shape, like=" (the shape of rewards)")
    m = None if mask is None else call.mask(mask, "mask", shape, "rewards")
    d = None if dones is None else call.mask(dones, "dones", shape, "rewards")
    if cu_seqlens is not None:
        offsets = call.offsets(cu_seqlens, "cu_seqlens", shape[0])
    elif m is None:
        offsets = _row_offsets(shape[0], shape[1])
    else:
        offsets = None
    num_rows = shape[0] if offsets is None else offsets.shape[0] - 1
    boot = call.optional_floats(
        bootstrap_values, "bootstrap_values", shape=(num_rows,), like=" ([B], one per row)"
    )
    adv_out = call.output(advantages_out, "advantages_out", shape)
    ret_out = call.output(returns_out, "returns_out", shape)
    kwargs: dict[str, Any] = dict(
        gamma=gamma, lam=lam, bootstrap_values=boot, check_finite=check_finite
    )
    if m is not None:
        adv, ret = _native.gae(
            r, v, m, dones=d, advantages_out=adv_out.array, returns_out=ret_out.array, **kwargs
        )
    else:
        assert offsets is not None
        adv, ret = _native.gae_packed(
            r.reshape(-1),
            v.reshape(-1),
            offsets,
            dones=None if d is None else d.reshape(-1),
            advantages_out=adv_out.flat(),
            returns_out=ret_out.flat(),
            **kwargs,
        )
    return adv_out.finish(adv, shape), ret_out.finish(ret, shape)


# ------------------------------------------------------------------ KL shaping
def kl_shaped_rewards(
    logprobs: Array,
    ref_logprobs: Array,
    mask: Array | None,
    scores: Array | None,
    kl_coef: float,
    estimator: str = "k1",
    clamp: float | None = None,
    *,
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
    kl_coef = _non_negative(fn, kl_coef, "kl_coef", "0.05")
    estimator = _choice(fn, estimator, "estimator", KL_ESTIMATORS)
    if clamp is not None:
        clamp = _real(fn, clamp, "clamp", "pass e.g. clamp=10.0 or None")
        if not clamp > 0:
            raise InvalidArgumentError(
                f"{fn}: clamp must be > 0 (or None for no clamp), got {clamp}"
            )
    check_finite = _flag(fn, check_finite, "check_finite")
    layout = " [B, T] (or pass cu_seqlens)" if cu_seqlens is None else " [N] with cu_seqlens"
    lp = call.floats(logprobs, "logprobs", ndim=1 if cu_seqlens is not None else 2, layout=layout)
    call.not_empty(lp, "logprobs")
    shape = lp.shape
    ref = call.floats(ref_logprobs, "ref_logprobs", shape=shape, like=" (the shape of logprobs)")
    if cu_seqlens is not None:
        call.no_mask_with_packed(mask)
        offsets: np.ndarray | None = call.offsets(cu_seqlens, "cu_seqlens", shape[0])
        m = None
    elif mask is None:
        offsets, m = _row_offsets(shape[0], shape[1]), None
    else:
        offsets, m = None, call.mask(mask, "mask", shape, "logprobs")
    num_rows = shape[0] if offsets is None else offsets.shape[0] - 1
    if scores is None:
        s = np.zeros(num_rows, dtype=lp.dtype)
    else:
        s = call.floats(scores, "scores", shape=(num_rows,), like=" ([B], one per row)")
    r_out = call.output(rewards_out, "rewards_out", shape)
    k_out = call.output(kl_out, "kl_out", shape)
    kwargs: dict[str, Any] = dict(
        kl_coef=kl_coef, estimator=estimator, clamp=clamp, check_finite=check_finite
    )
    if m is not None:
        rewards, kl = _native.kl_shaped_rewards(
            lp, ref, m, s, rewards_out=r_out.array, kl_out=k_out.array, **kwargs
        )
    else:
        assert offsets is not None
        rewards, kl = _native.kl_shaped_rewards_packed(
            lp.reshape(-1),
            ref.reshape(-1),
            offsets,
            s,
            rewards_out=r_out.flat(),
            kl_out=k_out.flat(),
            **kwargs,
        )
    return r_out.finish(rewards, shape), k_out.finish(kl, shape)


# ------------------------------------------------------------------ masked moments
def _moment_inputs(
    call: _Call, x: Any, mask: Any, cu_seqlens: Any
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """``(values, mask, (start, stop))``: the elements that take part are
    ``values[start:stop]`` where ``mask`` (if any) is 1."""
    if cu_seqlens is None:
        arr = call.floats(x, "x")
        call.not_empty(arr, "x")
        m = None if mask is None else call.mask(mask, "mask", arr.shape, "x")
        return arr, m, (0, arr.size)
    call.no_mask_with_packed(mask)
    arr = call.floats(x, "x", ndim=1, layout=" [N] when cu_seqlens is given")
    call.not_empty(arr, "x")
    offsets = call.offsets(cu_seqlens, "cu_seqlens", arr.shape[0])
    return arr, None, (int(offsets[0]), int(offsets[-1]))


def _moments(
    fn: str, x: Any, mask: Any, cu_seqlens: Any, check_finite: bool, need: int
) -> tuple[_Call, int, float, float]:
    call = _Call(fn)
    check_finite = _flag(fn, check_finite, "check_finite")
    arr, m, (start, stop) = _moment_inputs(call, x, mask, cu_seqlens)
    part = arr.reshape(-1)[start:stop] if m is None else arr
    count, mean, m2 = _native.masked_moments(part, m, check_finite=check_finite)
    if count < need:
        what = "cu_seqlens" if cu_seqlens is not None else ("mask" if mask is not None else "x")
        raise InvalidArgumentError(
            f"{fn}: needs at least {need} element(s) taking part, but {what} selects "
            f"{count} of x's {arr.size}; check that the mask is not all zeros"
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
    unbiased: bool = True,
    *,
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
    shift_mean: bool = True,
    eps: float = 1e-8,
    *,
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
    shift_mean = _flag(fn, shift_mean, "shift_mean")
    unbiased = _flag(fn, unbiased, "unbiased")
    check_finite = _flag(fn, check_finite, "check_finite")
    eps = _non_negative(fn, eps, "eps", "1e-8")
    arr, m, (start, stop) = _moment_inputs(call, x, mask, cu_seqlens)
    if m is None and stop - start < 2:
        what = "x" if cu_seqlens is None else "cu_seqlens"
        raise InvalidArgumentError(
            f"{fn}: needs at least 2 elements taking part, but {what} selects "
            f"{stop - start}; whiten a larger batch"
        )
    result = call.output(out, "out", arr.shape)
    kwargs: dict[str, Any] = dict(
        shift_mean=shift_mean, unbiased=unbiased, eps=eps, check_finite=check_finite
    )
    if m is not None or (start, stop) == (0, arr.size):
        whitened = _native.masked_whiten(arr, m, out=result.array, **kwargs)
        return result.finish(whitened, arr.shape)
    # Packed with elements outside [cu_seqlens[0], cu_seqlens[-1]): whiten the part
    # that takes part in place and zero the rest.
    target = result.array if result.array is not None else np.empty_like(arr)
    _native.masked_whiten(arr[start:stop], None, out=target[start:stop], **kwargs)
    target[:start] = 0
    target[stop:] = 0
    return result.finish(target, arr.shape)


# ------------------------------------------------------------------ group advantages
def group_advantages(
    scores: Array,
    group_size: int,
    normalize: str = "std",
    leave_one_out: bool = False,
    *,
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
        >>> group_advantages(np.array([1.0, 3.0, 0.0, 0.0]), 2, normalize="none")
        array([-1.,  1.,  0.,  0.])
    """
    fn = "group_advantages"
    call = _Call(fn)
    normalize = _choice(fn, normalize, "normalize", NORMALIZE_MODES)
    leave_one_out = _flag(fn, leave_one_out, "leave_one_out")
    check_finite = _flag(fn, check_finite, "check_finite")
    eps = _non_negative(fn, eps, "eps", "1e-6")
    s = call.floats(scores, "scores", ndim=1, layout=" [N] (groups laid out one after another)")
    call.not_empty(s, "scores")
    group_size = _integer(fn, group_size, "group_size", 1, "4")
    n = s.shape[0]
    if n % group_size:
        raise InvalidArgumentError(
            f"{fn}: group_size={group_size} must divide the number of scores N={n}; "
            "lay the scores out as num_groups * group_size"
        )
    if leave_one_out and group_size < 2:
        raise InvalidArgumentError(
            f"{fn}: leave_one_out needs group_size >= 2 (the baseline is the mean of the "
            f"others), got group_size={group_size}"
        )
    if normalize == "std" and group_size < 2:
        raise InvalidArgumentError(
            f"{fn}: normalize='std' needs group_size >= 2 (a group of one has no spread), "
            "got group_size=1; pass normalize='none'"
        )
    staging = call.output(None, "out", s.shape)
    adv = _native.group_advantages(
        s,
        group_size=group_size,
        normalize=normalize,
        leave_one_out=leave_one_out,
        eps=eps,
        check_finite=check_finite,
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
        if values.ndim != 1:
            raise InvalidArgumentError(
                f"{fn}: with offsets, sequences must be the flat 1-D values, got shape "
                f"{values.shape}"
            )
        first = sequences
        flat = np.ascontiguousarray(values)
        offs = helper.offsets(offsets, "offsets", flat.shape[0])
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
    if flat.dtype not in _RAGGED_DTYPES:
        names = ", ".join(str(d) for d in _RAGGED_DTYPES)
        raise InvalidDtypeError(
            f"{fn}: sequences must hold one of {names} or bool, got {flat.dtype}; cast them"
        )
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return flat, offs, first, view_dtype


def pad_ragged(
    sequences: Any,
    pad_value: float = 0,
    side: str = "right",
    max_length: int | None = None,
    *,
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
    side = _choice(fn, side, "side", PAD_SIDES)
    pad = _real(fn, pad_value, "pad_value", "pass e.g. pad_value=0")
    length = None if max_length is None else _integer(fn, max_length, "max_length", 0, "512")
    flat, offs, first, view_dtype = _ragged_parts(fn, sequences, offsets)
    rows = None
    if indices is not None:
        idx = _Call(fn)._to_numpy(indices, "indices")
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise InvalidArgumentError(
                f"{fn}: indices must be a 1-D integer array of row numbers, got "
                f"{_describe(indices)}"
            )
        rows = np.ascontiguousarray(idx, dtype=np.int64)
    if view_dtype is not None and pad not in (0.0, 1.0):
        raise InvalidArgumentError(
            f"{fn}: pad_value must be 0 or 1 (False/True) for bool sequences, got {pad_value!r}"
        )
    native_pad: float = int(pad) if pad.is_integer() else pad
    padded, mask = _native.pad_ragged(
        flat, offs, pad_value=native_pad, side=side, length=length, indices=rows
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
    n: int, minibatch_size: int, seed: int, drop_last: bool = False
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
    n = _integer(fn, n, "n", 1, "len(buffer)")
    minibatch_size = _integer(fn, minibatch_size, "minibatch_size", 1, "64")
    seed = _seed(fn, seed)
    drop_last = _flag(fn, drop_last, "drop_last")
    return _native.minibatch_indices(n, minibatch_size, seed=seed, drop_last=drop_last)


def permutation(n: int, seed: int) -> np.ndarray:
    """The seeded permutation of ``range(n)`` (int64 ``[n]``) that ``minibatch_indices`` cuts.

    Example:
        >>> sorted(permutation(4, seed=7).tolist())
        [0, 1, 2, 3]
    """
    fn = "permutation"
    return _native.permutation(_integer(fn, n, "n", 1, "len(buffer)"), seed=_seed(fn, seed))


def _seed(fn: str, seed: Any) -> int:
    seed = _integer(fn, seed, "seed", 0, "0")
    if seed >= 2**64:
        raise InvalidArgumentError(f"{fn}: seed must be < 2**64, got {seed}")
    return seed
