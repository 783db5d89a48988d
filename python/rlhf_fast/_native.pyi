"""Type stubs for the Rust extension ``rlhf_fast._native``.

These functions are the raw bindings. They take **C-contiguous numpy arrays only**
(``rlhf_fast.ops`` turns torch tensors, strided arrays and other mask dtypes into
those, zero-copy where it can) and return numpy arrays. Float arguments must all
share one dtype, float32 or float64; masks and ``dones`` are uint8 holding 0/1
(a bool array viewed as uint8 is fine); offsets are int64.

Every argument is checked here, once: the binding checks the arrays (dtype,
dimensions, shape, emptiness, contiguity, outputs) and the kernels the values
(ranges, offsets, mask values, finiteness); errors are ``InvalidArgumentError``
(a ``ValueError``), ``InvalidDtypeError`` (a ``TypeError``) or ``NonFiniteError``
(a ``ValueError``) naming the argument. The GIL is released while kernels run.

Layouts (one entry point each: a mask, ``cu_seqlens``, or neither):
- *padded*: ``[B, T]`` arrays plus a ``[B, T]`` mask; ``mask[b, t] == 1`` marks a
  token that takes part (no mask: every token). Left/right padding and holes are
  all allowed.
- *packed*: flat ``[N]`` arrays plus ``cu_seqlens`` ``[B + 1]`` (non-decreasing
  int64 offsets, ``cu_seqlens[0] >= 0``, ``cu_seqlens[-1] <= N``); row ``b`` is
  ``x[cu_seqlens[b]:cu_seqlens[b + 1]]`` and every element in it takes part.
  Elements outside ``[cu_seqlens[0], cu_seqlens[-1])`` are written as 0.

Outputs are 0 wherever an element does not take part. Finite-checks
(``check_finite=True``) look only at the elements that take part: masked-out
positions are never read.
"""

from typing import Optional, TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

__all__ = [
    "InvalidArgumentError",
    "InvalidDtypeError",
    "NonFiniteError",
    "RlhfFastError",
    "__version__",
    "gae",
    "get_num_threads",
    "group_advantages",
    "kl_shaped_rewards",
    "masked_moments",
    "masked_whiten",
    "minibatch_indices",
    "pad_ragged",
    "permutation",
    "set_num_threads",
]

__version__: str

class RlhfFastError(Exception):
    """Base class of every error raised by rlhf_fast."""

class InvalidArgumentError(RlhfFastError, ValueError):
    """An argument has the wrong shape, value or range."""

class InvalidDtypeError(RlhfFastError, TypeError):
    """An argument has the wrong dtype or kind."""

class NonFiniteError(InvalidArgumentError):
    """A float input holds NaN or +/-Inf where it is used."""

def get_num_threads() -> int:
    """Threads the kernels use for rows in parallel."""

def set_num_threads(n: int) -> None:
    """Set the kernel thread count (``n >= 1``). Results do not depend on it."""

# ---------------------------------------------------------------- GAE
def gae(
    rewards: NDArray[_F],
    values: NDArray[_F],
    mask: Optional[NDArray[np.uint8]] = None,
    *,
    cu_seqlens: Optional[NDArray[np.int64]] = None,
    gamma: float,
    lam: float,
    bootstrap_values: Optional[NDArray[_F]] = None,
    dones: Optional[NDArray[np.uint8]] = None,
    advantages_out: Optional[NDArray[_F]] = None,
    returns_out: Optional[NDArray[_F]] = None,
    check_finite: bool = True,
) -> tuple[NDArray[_F], NDArray[_F]]:
    """GAE. Padded: ``rewards, values, mask, dones`` ``[B, T]``; packed: ``[N]`` with
    ``cu_seqlens`` ``[B + 1]``; ``bootstrap_values``: ``[B]``.

    Per row, over the masked positions from last to first:
    ``delta = r_t + gamma * V_next - V_t``; ``A_t = delta + gamma * lam * A_next``;
    ``R_t = A_t + V_t``. ``V_next``/``A_next`` come from the next masked position,
    or ``bootstrap_values[b]`` / 0 after the last one. Where ``dones[b, t]`` is 1 on
    a masked step, ``V_next = A_next = 0`` for that step (the episode ends there).
    Returns ``(advantages, returns)``, written into the ``*_out`` arrays when given.
    """

# ---------------------------------------------------------------- KL shaping
def kl_shaped_rewards(
    logprobs: NDArray[_F],
    ref_logprobs: NDArray[_F],
    mask: Optional[NDArray[np.uint8]] = None,
    scores: Optional[NDArray[_F]] = None,
    *,
    cu_seqlens: Optional[NDArray[np.int64]] = None,
    kl_coef: float,
    estimator: str = "k1",
    clamp: Optional[float] = None,
    rewards_out: Optional[NDArray[_F]] = None,
    kl_out: Optional[NDArray[_F]] = None,
    check_finite: bool = True,
) -> tuple[NDArray[_F], NDArray[_F]]:
    """KL shaping. Padded: ``logprobs, ref_logprobs, mask`` ``[B, T]``; packed: ``[N]``
    with ``cu_seqlens`` ``[B + 1]``; ``scores``: ``[B]`` (None: no score).

    ``lr = logprobs - ref_logprobs``; ``kl`` by estimator ``"k1"`` (lr), ``"abs"`` (|lr|),
    ``"k2"`` (lr**2 / 2) or ``"k3"`` (exp(-lr) - 1 + lr), clamped to ``[-clamp, clamp]``
    when ``clamp`` is given; ``rewards = -kl_coef * kl`` on masked tokens plus
    ``scores[b]`` on row b's last masked token (a row with no masked token gets no
    score). Returns ``(rewards, kl)``.
    """

# ---------------------------------------------------------------- masked moments
def masked_moments(
    x: NDArray[_F],
    mask: Optional[NDArray[np.uint8]] = None,
    *,
    cu_seqlens: Optional[NDArray[np.int64]] = None,
    min_count: int = 1,
    check_finite: bool = True,
) -> tuple[int, float, float]:
    """``(count, mean, m2)`` over elements where ``mask == 1`` (all when ``mask`` is None;
    with ``cu_seqlens``, those of the packed rows).

    ``x`` and ``mask`` share any shape. ``m2`` is the sum of squared deviations from
    the mean, so ``var = m2 / (count - 1)`` (unbiased) or ``m2 / count``. Accumulates
    in float64 in fixed-size blocks, so the result does not depend on thread count.
    Fewer than ``min_count`` elements taking part is an error.
    """

def masked_whiten(
    x: NDArray[_F],
    mask: Optional[NDArray[np.uint8]] = None,
    *,
    cu_seqlens: Optional[NDArray[np.int64]] = None,
    shift_mean: bool = True,
    unbiased: bool = True,
    eps: float = 1e-8,
    out: Optional[NDArray[_F]] = None,
    check_finite: bool = True,
) -> NDArray[_F]:
    """``(x - mean) / sqrt(var + eps)`` on masked elements (``+ mean`` back when
    ``shift_mean`` is False), 0 elsewhere. Raises if fewer than 2 elements are masked."""

# ---------------------------------------------------------------- group advantages
def group_advantages(
    scores: NDArray[_F],
    *,
    group_size: int,
    normalize: str = "std",
    leave_one_out: bool = False,
    eps: float = 1e-6,
    check_finite: bool = True,
) -> NDArray[_F]:
    """GRPO / RLOO advantages for ``[N]`` scores laid out group by group.

    baseline = group mean (``leave_one_out=False``) or the mean of the other
    ``group_size - 1`` scores (``True``); ``adv = score - baseline``, divided by
    ``(group std, unbiased) + eps`` when ``normalize == "std"``.
    """

# ---------------------------------------------------------------- batching
_N = TypeVar("_N", np.float32, np.float64, np.int64, np.int32, np.uint8)

def pad_ragged(
    values: NDArray[_N],
    offsets: NDArray[np.int64],
    *,
    pad_value: float = 0.0,
    side: str = "right",
    length: Optional[int] = None,
    indices: Optional[NDArray[np.int64]] = None,
) -> tuple[NDArray[_N], NDArray[np.bool_]]:
    """Flat ``values`` ``[N]`` + ``offsets`` ``[B + 1]`` -> ``(padded [R, L], mask [R, L])``.

    Rows are ``indices`` (gathered in that order, repeats allowed) or all ``B``.
    ``L`` is ``length`` or the longest selected row; a longer row is an error.
    ``side`` is ``"right"`` (pad after) or ``"left"`` (pad before).
    ``pad_value`` must be representable in the dtype of ``values``.
    """

def minibatch_indices(
    n: int,
    minibatch_size: int,
    *,
    seed: int,
    drop_last: bool = False,
) -> list[NDArray[np.int64]]:
    """A seeded permutation of ``range(n)`` cut into minibatches of ``minibatch_size``.

    The last minibatch is shorter when ``minibatch_size`` does not divide ``n``
    (dropped when ``drop_last``). Same output for the same seed on every platform.
    """

def permutation(n: int, *, seed: int) -> NDArray[np.int64]:
    """The seeded permutation of ``range(n)`` that ``minibatch_indices`` cuts up."""
