"""Plain numpy reference implementations of every kernel in ``rlhf_fast.ops``.

One readable loop per kernel, written the way the textbooks (and CleanRL / torchtune)
write them, with no attempt at speed. The tests compare the Rust kernels against
these on random inputs, and the benchmarks use them as the "numpy loop" baseline.

Every function takes numpy arrays in the padded layout (``[B, T]`` plus a ``[B, T]``
0/1 mask), computes in the input's float dtype and returns fresh arrays. They do no
argument validation: give them what ``rlhf_fast.ops`` would accept.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "gae",
    "group_advantages",
    "kl_per_token",
    "kl_shaped_rewards",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "pad_ragged",
    "packed_to_padded",
]


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    mask: np.ndarray,
    gamma: float = 1.0,
    lam: float = 0.95,
    bootstrap_values: np.ndarray | None = None,
    dones: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over the masked positions of each row.

    ``rewards, values, mask, dones``: ``[B, T]``; ``bootstrap_values``: ``[B]``.
    Walking each row from its last token to its first, unmasked positions are skipped
    (the recursion carries across holes). ``V_next``/``A_next`` are the value and
    advantage of the next masked position, ``bootstrap_values[b]`` and 0 after the
    last one, and both 0 on a step where ``dones`` is set. Returns
    ``(advantages, returns)``, 0 outside the mask.
    """
    dtype = rewards.dtype
    num_rows, num_steps = rewards.shape
    advantages = np.zeros_like(rewards)
    returns = np.zeros_like(rewards)
    for b in range(num_rows):
        next_value = dtype.type(0.0) if bootstrap_values is None else bootstrap_values[b]
        next_advantage = dtype.type(0.0)
        for t in reversed(range(num_steps)):
            if not mask[b, t]:
                continue
            if dones is not None and dones[b, t]:
                next_value = dtype.type(0.0)
                next_advantage = dtype.type(0.0)
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            advantages[b, t] = delta + gamma * lam * next_advantage
            returns[b, t] = advantages[b, t] + values[b, t]
            next_value = values[b, t]
            next_advantage = advantages[b, t]
    return advantages, returns


def kl_per_token(log_ratio: np.ndarray, estimator: str = "k1") -> np.ndarray:
    """The per-token KL estimate from ``log_ratio = logprobs - ref_logprobs``.

    ``k1``: ``lr``; ``abs``: ``|lr|``; ``k2``: ``lr**2 / 2``; ``k3``: ``exp(-lr) - 1 + lr``
    (Schulman, "Approximating KL divergence", 2020).
    """
    if estimator == "k1":
        return log_ratio.copy()
    if estimator == "abs":
        return np.abs(log_ratio)
    if estimator == "k2":
        return 0.5 * log_ratio * log_ratio
    if estimator == "k3":
        return np.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"unknown estimator {estimator!r}")


def kl_shaped_rewards(
    logprobs: np.ndarray,
    ref_logprobs: np.ndarray,
    mask: np.ndarray,
    scores: np.ndarray,
    kl_coef: float,
    estimator: str = "k1",
    clamp: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token rewards ``-kl_coef * kl`` plus the score on each row's last masked token.

    ``logprobs, ref_logprobs, mask``: ``[B, T]``; ``scores``: ``[B]``. Returns
    ``(rewards, kl)``, both 0 outside the mask; a row with no masked token gets no score.
    """
    num_rows, num_steps = logprobs.shape
    rewards = np.zeros_like(logprobs)
    kl = np.zeros_like(logprobs)
    for b in range(num_rows):
        last = None
        for t in range(num_steps):
            if not mask[b, t]:
                continue
            log_ratio = logprobs[b, t] - ref_logprobs[b, t]
            kl_t = kl_per_token(np.asarray(log_ratio), estimator)[()]
            if clamp is not None:
                kl_t = np.clip(kl_t, -clamp, clamp)
            kl[b, t] = kl_t
            rewards[b, t] = -kl_coef * kl[b, t]
            last = t
        if last is not None:
            rewards[b, last] += scores[b]
    return rewards, kl


def _masked_values(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    values = x.reshape(-1) if mask is None else x[np.asarray(mask).astype(bool)]
    return values.astype(np.float64)


def masked_mean(x: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean of ``x`` over the elements where ``mask`` is 1 (all when ``mask`` is None)."""
    return float(_masked_values(x, mask).sum() / _masked_values(x, mask).size)


def masked_var(x: np.ndarray, mask: np.ndarray | None = None, unbiased: bool = True) -> float:
    """Variance of ``x`` over the masked elements (Bessel-corrected when ``unbiased``)."""
    values = _masked_values(x, mask)
    mean = values.sum() / values.size
    sum_sq = ((values - mean) ** 2).sum()
    return float(sum_sq / (values.size - 1 if unbiased else values.size))


def masked_whiten(
    x: np.ndarray,
    mask: np.ndarray | None = None,
    shift_mean: bool = True,
    eps: float = 1e-8,
    unbiased: bool = True,
) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps)`` on the masked elements (mean added back when
    ``shift_mean`` is False), 0 elsewhere; moments over the masked elements only."""
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased)
    whitened = (x.astype(np.float64) - mean) / np.sqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    if mask is not None:
        whitened = np.where(np.asarray(mask).astype(bool), whitened, 0.0)
    return whitened.astype(x.dtype)


def group_advantages(
    scores: np.ndarray,
    group_size: int,
    normalize: str = "std",
    leave_one_out: bool = False,
    eps: float = 1e-6,
) -> np.ndarray:
    """GRPO / RLOO advantages for ``[N]`` scores laid out group by group.

    The baseline is the group mean, or with ``leave_one_out`` the mean of the other
    ``group_size - 1`` members (RLOO). ``normalize="std"`` divides by the group's
    unbiased standard deviation plus ``eps`` (GRPO).
    """
    advantages = np.zeros_like(scores)
    for start in range(0, scores.shape[0], group_size):
        group = scores[start : start + group_size].astype(np.float64)
        total = group.sum()
        for i, score in enumerate(group):
            if leave_one_out:
                baseline = (total - score) / (group_size - 1)
            else:
                baseline = total / group_size
            advantage = score - baseline
            if normalize == "std":
                std = group.std(ddof=1)
                advantage = advantage / (std + eps)
            advantages[start + i] = advantage
    return advantages


def pad_ragged(
    sequences: list[np.ndarray],
    pad_value: float = 0,
    side: str = "right",
    max_length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack 1-D arrays into ``(padded [B, L], mask [B, L] bool)``, padding on ``side``.

    ``L`` is ``max_length`` or the longest sequence.
    """
    length = max(len(s) for s in sequences) if max_length is None else max_length
    padded = np.full((len(sequences), length), pad_value, dtype=sequences[0].dtype)
    mask = np.zeros((len(sequences), length), dtype=bool)
    for b, sequence in enumerate(sequences):
        n = len(sequence)
        if n == 0:
            continue
        if side == "right":
            padded[b, :n] = sequence
            mask[b, :n] = True
        else:
            padded[b, length - n :] = sequence
            mask[b, length - n :] = True
    return padded, mask


def packed_to_padded(flat: np.ndarray, cu_seqlens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packed ``[N]`` + offsets ``[B + 1]`` -> right-padded ``([B, L], mask [B, L] uint8)``."""
    rows = [flat[cu_seqlens[b] : cu_seqlens[b + 1]] for b in range(len(cu_seqlens) - 1)]
    length = max(1, max(len(r) for r in rows))
    padded, mask = pad_ragged(rows, 0, "right", length)
    return padded, mask.astype(np.uint8)
