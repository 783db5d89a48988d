"""GAE: rlhf_fast against verl, torchrl, torchtune, stateset-rl-core, rlox and the inline loops.

Conventions (rlhf_fast: recursion over masked positions only, a hole is skipped and the
recursion carries across it, 0 outside the mask; inputs hold 0 for rewards and values outside
the mask, as TRL and verl arrange before their GAE):
- verl ``compute_gae_advantage_return``: the same masked recursion (holes carried across), but
  returns *whitened* advantages (``masked_whiten`` inside); compared against our advantages
  whitened the same way. Takes a float mask.
- torchtune ``estimate_advantages``: no mask in the recursion (the next value is always
  ``values[:, t + 1]``), so it agrees on full and right-padded rows only; whitens advantages with
  the mean *kept* (its ``whiten(shift_mean=True)`` re-adds the mean).
- torchrl ``generalized_advantage_estimate`` / ``vec_...``: no mask; takes ``next_state_value``
  and ``done`` ``[B, T, 1]``. Right padding is expressed as ``done`` on each row's last token;
  holes cannot be expressed. Those inputs are built once, outside the timing (a torchrl user
  already has them).
- TRL / OpenRLHF: the reversed loop sits inline in their trainers (TRL
  ``trl/experimental/ppo/ppo_trainer.py`` "6. compute advantages and returns"); no mask in the
  recursion, full and right-padded rows only.
- stateset-rl-core ``batch_compute_gae``: a list of per-row float64 arrays of any length (no
  mask, no padding), advantages only. The per-call conversion (gather each row's masked tokens,
  cast to float64, scatter back, ``returns = advantages + values``) is timed: it is what a user
  with a padded batch must do. Gathering masked tokens also makes holes work.
- rlox ``compute_gae_batched_f32``: flat ``[B * T]`` float32 with float ``dones``; right padding
  is a ``done`` on each row's last token (built per call, timed). Holes: the masked tokens are
  packed into one flat stream with ``done`` at every row end (also timed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .common import Implementation, assert_close_on

MASK_KINDS = ("full", "right", "holes")


@dataclass
class GaeCase:
    """One input set: ``[B, T]`` float32 rewards/values (0 outside ``mask``) and a bool mask."""

    rewards: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    mask_kind: str
    gamma: float
    lam: float
    reference: tuple[np.ndarray, np.ndarray] = field(default=None, repr=False)  # ours, for checks

    @property
    def shape(self) -> tuple[int, int]:
        return self.rewards.shape

    @property
    def elements(self) -> int:
        return self.rewards.size

    def last_index(self) -> np.ndarray:
        """Index of each row's last masked token ([B] int64; -1 for an empty row)."""
        T = self.mask.shape[1]
        has = self.mask.any(axis=1)
        return np.where(has, T - 1 - np.argmax(self.mask[:, ::-1], axis=1), -1)


def make_mask(B: int, T: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``[B, T]`` bool: all ones, right-padded ragged rows, or ragged rows with ~10 % holes."""
    if kind == "full":
        return np.ones((B, T), dtype=bool)
    lengths = rng.integers(max(1, T // 8), T + 1, size=B)
    mask = np.arange(T)[None, :] < lengths[:, None]
    if kind == "holes":
        holes = rng.random((B, T)) < 0.10
        holes[np.arange(B), lengths - 1] = False  # keep each row's last token
        mask &= ~holes
    elif kind != "right":
        raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")
    return mask


def make_case(B: int, T: int, kind: str, gamma: float, lam: float, seed: int = 0) -> GaeCase:
    rng = np.random.default_rng(seed)
    mask = make_mask(B, T, kind, rng)
    rewards = (rng.standard_normal((B, T), dtype=np.float32) * 0.1) * mask
    values = rng.standard_normal((B, T), dtype=np.float32) * mask
    case = GaeCase(rewards.astype(np.float32), values.astype(np.float32), mask, kind, gamma, lam)
    import rlhf_fast

    case.reference = rlhf_fast.gae(case.rewards, case.values, mask, gamma=gamma, lam=lam)
    return case


# ------------------------------------------------------------------ checks
def _whiten(x: np.ndarray, mask: np.ndarray, keep_mean: bool) -> np.ndarray:
    sel = x[mask].astype(np.float64)
    mean, var = sel.mean(), sel.var(ddof=1)
    out = (x - mean) / np.sqrt(var + 1e-8)
    return out + mean if keep_mean else out


def _check_plain(out: Any, case: GaeCase) -> None:
    adv, ret = out
    assert_close_on(adv, case.reference[0], case.mask, "advantages")
    assert_close_on(ret, case.reference[1], case.mask, "returns")


def _check_whitened(keep_mean: bool) -> Callable[[Any, GaeCase], None]:
    def check(out: Any, case: GaeCase) -> None:
        adv, ret = out
        want = _whiten(case.reference[0], case.mask, keep_mean)
        assert_close_on(adv, want, case.mask, "whitened advantages")
        assert_close_on(ret, case.reference[1], case.mask, "returns")

    return check


def _no_holes(case: GaeCase) -> bool:
    return case.mask_kind in ("full", "right")


# ------------------------------------------------------------------ rlhf_fast
def _ours_fresh(case: GaeCase) -> Callable[[], Any]:
    import rlhf_fast

    r, v, m, g, lam = case.rewards, case.values, case.mask, case.gamma, case.lam
    return lambda: rlhf_fast.gae(r, v, m, gamma=g, lam=lam)


def _ours_torch(case: GaeCase) -> Callable[[], Any]:
    import rlhf_fast

    r, v = torch.from_numpy(case.rewards), torch.from_numpy(case.values)
    m = torch.from_numpy(case.mask)
    g, lam = case.gamma, case.lam
    return lambda: rlhf_fast.gae(r, v, m, gamma=g, lam=lam)


def _ours_out(case: GaeCase) -> Callable[[], Any]:
    from rlhf_fast import _native

    r, v, g, lam = case.rewards, case.values, case.gamma, case.lam
    m = case.mask.view(np.uint8)
    adv, ret = np.empty_like(r), np.empty_like(r)
    adv.fill(0), ret.fill(0)  # touch the pages once, as a reused buffer would be

    def run() -> Any:
        return _native.gae(r, v, m, gamma=g, lam=lam, advantages_out=adv, returns_out=ret)

    return run


# ------------------------------------------------------------------ peers
def _verl(case: GaeCase) -> Callable[[], Any]:
    from verl.trainer.ppo.core_algos import compute_gae_advantage_return

    r, v = torch.from_numpy(case.rewards), torch.from_numpy(case.values)
    m = torch.from_numpy(case.mask).float()  # verl's response_mask is numeric
    g, lam = case.gamma, case.lam
    return lambda: compute_gae_advantage_return(r, v, m, g, lam)


def _torchtune(case: GaeCase) -> Callable[[], Any]:
    from torchtune.rlhf import estimate_advantages

    r, v = torch.from_numpy(case.rewards), torch.from_numpy(case.values)
    m = torch.from_numpy(case.mask)
    g, lam = case.gamma, case.lam
    return lambda: estimate_advantages(v, r, g, lam, masks=m)


def _torchrl_inputs(case: GaeCase) -> tuple[torch.Tensor, ...]:
    v = torch.from_numpy(case.values)
    next_v = torch.zeros_like(v)
    next_v[:, :-1] = v[:, 1:]
    done = torch.zeros(case.mask.shape, dtype=torch.bool)
    done[torch.arange(case.mask.shape[0]), torch.from_numpy(case.last_index())] = True
    r = torch.from_numpy(case.rewards)
    return v.unsqueeze(-1), next_v.unsqueeze(-1), r.unsqueeze(-1), done.unsqueeze(-1)


def _torchrl(vectorised: bool) -> Callable[[GaeCase], Callable[[], Any]]:
    def prepare(case: GaeCase) -> Callable[[], Any]:
        from torchrl.objectives.value import functional as F

        fn = (
            F.vec_generalized_advantage_estimate if vectorised else F.generalized_advantage_estimate
        )
        v, next_v, r, done = _torchrl_inputs(case)
        g, lam = case.gamma, case.lam

        def run() -> Any:
            adv, ret = fn(g, lam, v, next_v, r, done)
            return adv.squeeze(-1), ret.squeeze(-1)

        return run

    return prepare


def trl_reversed_loop(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float):
    """The reversed GAE loop TRL's PPO trainer (and OpenRLHF's experience maker) run inline."""
    lastgaelam = 0
    advantages_reversed = []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
    return advantages, advantages + values


def _torch_loop(case: GaeCase) -> Callable[[], Any]:
    r, v = torch.from_numpy(case.rewards), torch.from_numpy(case.values)
    g, lam = case.gamma, case.lam
    return lambda: trl_reversed_loop(r, v, g, lam)


COMPILE_MAX_T = int(os.environ.get("RLHF_FAST_BENCH_COMPILE_MAX_T", "256"))


def _torch_compiled(case: GaeCase) -> Callable[[], Any]:
    # torch.compile unrolls the T-step loop: compiling takes ~2 min at T=256 on this machine and
    # grows with T, so the compiled loop is measured up to COMPILE_MAX_T only.
    compiled = torch.compile(trl_reversed_loop)
    r, v = torch.from_numpy(case.rewards), torch.from_numpy(case.values)
    g, lam = case.gamma, case.lam
    compiled(r, v, g, lam)  # compile outside the timing
    return lambda: compiled(r, v, g, lam)


def numpy_masked_loop(rewards, values, mask, gamma, lam):
    """A plain numpy reversed loop over time steps, masked (holes carried across)."""
    B, T = rewards.shape
    adv = np.zeros_like(rewards)
    next_value = np.zeros(B, dtype=rewards.dtype)
    next_adv = np.zeros(B, dtype=rewards.dtype)
    for t in range(T - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = np.where(m, a, 0)
        next_adv = np.where(m, a, next_adv)
        next_value = np.where(m, values[:, t], next_value)
    return adv, (adv + values) * mask


def _numpy_loop(case: GaeCase) -> Callable[[], Any]:
    r, v, m, g, lam = case.rewards, case.values, case.mask, case.gamma, case.lam
    return lambda: numpy_masked_loop(r, v, m, np.float32(g), np.float32(lam))


def _stateset(case: GaeCase) -> Callable[[], Any]:
    import stateset_rl_core

    r, v, m, g, lam = case.rewards, case.values, case.mask, case.gamma, case.lam

    def run() -> Any:
        rows_r = [row[keep].astype(np.float64) for row, keep in zip(r, m)]
        rows_v = [row[keep].astype(np.float64) for row, keep in zip(v, m)]
        rows_adv = stateset_rl_core.batch_compute_gae(rows_r, rows_v, g, lam)
        adv = np.zeros_like(r)
        adv[m] = np.concatenate(rows_adv)
        return adv, (adv + v) * m

    return run


def _rlox(case: GaeCase) -> Callable[[], Any]:
    import rlox

    r, v, m, g, lam = case.rewards, case.values, case.mask, case.gamma, case.lam
    B, T = r.shape
    if case.mask_kind == "holes":

        def run_packed() -> Any:
            counts = m.sum(axis=1)
            dones = np.zeros(int(counts.sum()), dtype=np.float32)
            ends = np.cumsum(counts)
            dones[ends[counts > 0] - 1] = 1.0
            adv_flat, _ = rlox.compute_gae_batched_f32(
                r[m], v[m], dones, np.zeros(1, np.float32), dones.size, g, lam
            )
            adv = np.zeros_like(r)
            adv[m] = adv_flat
            return adv, (adv + v) * m

        return run_packed

    def run() -> Any:
        T_ = m.shape[1]
        last = T_ - 1 - np.argmax(m[:, ::-1], axis=1)
        dones = np.zeros((B, T), dtype=np.float32)
        dones[np.arange(B), last] = 1.0
        adv, ret = rlox.compute_gae_batched_f32(
            r.reshape(-1), v.reshape(-1), dones.reshape(-1), np.zeros(B, np.float32), T, g, lam
        )
        return adv.reshape(B, T), ret.reshape(B, T)

    return run


def implementations() -> list[Implementation]:
    return [
        Implementation(
            "rlhf_fast", "rlhf_fast", _ours_out, _check_plain, ours=True, variant="out= buffers"
        ),
        Implementation(
            "rlhf_fast", "rlhf_fast", _ours_fresh, _check_plain, ours=True, variant="fresh outputs"
        ),
        Implementation(
            "rlhf_fast", "rlhf_fast", _ours_torch, _check_plain, ours=True, variant="torch in/out"
        ),
        Implementation(
            "verl compute_gae_advantage_return",
            "verl",
            _verl,
            _check_whitened(keep_mean=False),
            note="includes its masked_whiten",
        ),
        Implementation(
            "torchrl generalized_advantage_estimate",
            "torchrl",
            _torchrl(False),
            _check_plain,
            supports=_no_holes,
        ),
        Implementation(
            "torchrl vec_generalized_advantage_estimate",
            "torchrl",
            _torchrl(True),
            _check_plain,
            supports=_no_holes,
        ),
        Implementation(
            "torchtune estimate_advantages",
            "torchtune",
            _torchtune,
            _check_whitened(keep_mean=True),
            supports=_no_holes,
            note="includes its whiten",
        ),
        Implementation(
            "torch reversed loop (TRL/OpenRLHF inline)",
            None,
            _torch_loop,
            _check_plain,
            supports=_no_holes,
        ),
        Implementation(
            "torch reversed loop, torch.compile",
            None,
            _torch_compiled,
            _check_plain,
            supports=lambda c: _no_holes(c) and c.shape[1] <= COMPILE_MAX_T,
            note=f"T <= {COMPILE_MAX_T} only: compile time grows with T",
        ),
        Implementation("numpy reversed loop", None, _numpy_loop, _check_plain),
        Implementation(
            "stateset-rl-core batch_compute_gae",
            "stateset-rl-core",
            _stateset,
            _check_plain,
            note="incl. per-row gather, f64 casts, scatter back",
        ),
        Implementation(
            "rlox compute_gae_batched_f32",
            "rlox",
            _rlox,
            _check_plain,
            note="incl. building dones (and packing for holes)",
        ),
    ]


# ------------------------------------------------------------------ gamma = lam = 1
def _cumsum_torch(case: GaeCase) -> Callable[[], Any]:
    r, v = torch.from_numpy(case.rewards), torch.from_numpy(case.values)
    m = torch.from_numpy(case.mask)

    def run() -> Any:
        ret = r.flip(1).cumsum(1).flip(1) * m
        return ret - v, ret

    return run


def _cumsum_numpy(case: GaeCase) -> Callable[[], Any]:
    r, v, m = case.rewards, case.values, case.mask

    def run() -> Any:
        ret = np.cumsum(r[:, ::-1], axis=1)[:, ::-1] * m
        return ret - v, ret

    return run


def implementations_gamma1() -> list[Implementation]:
    """gamma = lam = 1: GAE is a reverse cumulative sum (valid here because rewards are 0 off-mask)."""
    return [
        Implementation(
            "rlhf_fast", "rlhf_fast", _ours_out, _check_plain, ours=True, variant="out= buffers"
        ),
        Implementation(
            "rlhf_fast", "rlhf_fast", _ours_fresh, _check_plain, ours=True, variant="fresh outputs"
        ),
        Implementation("torch reverse cumsum", "torch", _cumsum_torch, _check_plain),
        Implementation("numpy reverse cumsum", "numpy", _cumsum_numpy, _check_plain),
    ]


GAE_BYTES_PER_ELEMENT = 4 + 4 + 1 + 4 + 4  # read rewards, values, mask; write advantages, returns
