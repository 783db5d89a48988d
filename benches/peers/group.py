"""Group advantages (GRPO, RLOO): rlhf_fast against verl, TRL's composites, stateset-rl-core, rlox.

Conventions:
- GRPO, rlhf_fast ``normalize="std"``: ``(s - group mean) / (unbiased group std + eps)``. verl's
  ``compute_grpo_outcome_advantage`` (a Python loop over samples) and
  ``compute_grpo_vectorized_outcome_advantage`` agree with eps = 1e-6; TRL's GRPO trainer
  (``trl/trainer/grpo_trainer.py``, ``sum_then_normalize``: ``nanmean``/``nanstd`` over
  ``view(-1, num_generations)``, ``repeat_interleave``) agrees with eps = 1e-4.
- stateset-rl-core ``compute_group_advantages(..., "mean", True)`` and rlox
  ``compute_batch_group_advantages`` divide by the *population* std (ddof 0), float64 only:
  compared against ours times ``sqrt(G / (G - 1))`` (ours run with eps = 1e-12 for that check);
  the float32 -> float64 cast is timed.
- RLOO, rlhf_fast ``leave_one_out=True, normalize="none"``: ``s - mean of the other G - 1``.
  verl ``compute_rloo_outcome_advantage`` (Python loop) and TRL's RLOO trainer composite
  (``trl/trainer/rloo_trainer.py``: ``(nansum - s) / (count - 1)``) agree exactly.
- verl's functions take ``[N, T]`` token rewards and a mask and broadcast over tokens; here
  T = 1, so only the group math is timed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .common import Implementation, assert_close_on

GROUP_SIZE = 16


@dataclass
class GroupCase:
    scores: np.ndarray  # [N] float32, group by group
    group_size: int
    loo: bool  # RLOO (leave-one-out, no std) instead of GRPO

    @property
    def elements(self) -> int:
        return self.scores.size

    @property
    def shape(self) -> tuple[int]:
        return self.scores.shape

    @property
    def index(self) -> np.ndarray:
        return np.repeat(np.arange(self.scores.size // self.group_size), self.group_size)


def make_case(n: int, loo: bool, group_size: int = GROUP_SIZE, seed: int = 0) -> GroupCase:
    rng = np.random.default_rng(seed)
    return GroupCase(rng.standard_normal(n, dtype=np.float32), group_size, loo)


def _ours_reference(case: GroupCase, eps: float) -> np.ndarray:
    import rlhf_fast

    if case.loo:
        return rlhf_fast.group_advantages(
            case.scores, group_size=case.group_size, normalize="none", leave_one_out=True
        )
    return rlhf_fast.group_advantages(
        case.scores, group_size=case.group_size, normalize="std", eps=eps
    )


def _check(eps: float, scale_population: bool = False) -> Callable[[Any, GroupCase], None]:
    def check(out: Any, case: GroupCase) -> None:
        want = _ours_reference(case, 1e-12 if scale_population else eps)
        if scale_population:
            G = case.group_size
            want = want * np.sqrt(G / (G - 1))
        got = out[0] if isinstance(out, tuple) else out
        got = got.reshape(-1) if hasattr(got, "reshape") else got
        assert_close_on(got, want, None, "group advantages")

    return check


# ------------------------------------------------------------------ rlhf_fast
def _ours(case: GroupCase) -> Callable[[], Any]:
    import rlhf_fast

    s, G = case.scores, case.group_size
    if case.loo:
        return lambda: rlhf_fast.group_advantages(
            s, group_size=G, normalize="none", leave_one_out=True
        )
    return lambda: rlhf_fast.group_advantages(s, group_size=G, normalize="std", eps=1e-6)


# ------------------------------------------------------------------ peers
def _verl(kind: str) -> Callable[[GroupCase], Callable[[], Any]]:
    def prepare(case: GroupCase) -> Callable[[], Any]:
        from verl.trainer.ppo import core_algos

        fn = {
            "grpo": core_algos.compute_grpo_outcome_advantage,
            "grpo_vec": core_algos.compute_grpo_vectorized_outcome_advantage,
            "rloo": core_algos.compute_rloo_outcome_advantage,
        }[kind]
        token_rewards = torch.from_numpy(case.scores).unsqueeze(-1)  # [N, 1]
        mask = torch.ones_like(token_rewards)
        index = case.index
        return lambda: fn(token_rewards, mask, index)[0].squeeze(-1)

    return prepare


def _trl_grpo(case: GroupCase) -> Callable[[], Any]:
    from trl.trainer.utils import nanstd

    rewards, G = torch.from_numpy(case.scores), case.group_size

    def run() -> Any:  # grpo_trainer.py, multi_objective_aggregation == "sum_then_normalize"
        mean_grouped = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
        std_rewards = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
        advantages = (rewards - mean_grouped) / (std_rewards + 1e-4)
        return torch.nan_to_num(advantages, nan=0.0)

    return run


def _trl_rloo(case: GroupCase) -> Callable[[], Any]:
    rewards, G = torch.from_numpy(case.scores), case.group_size

    def run() -> Any:  # rloo_trainer.py, leave-one-out baseline
        grouped = rewards.view(-1, G)
        counts = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
        grouped_sum = torch.nansum(grouped, dim=1, keepdim=True)
        baselines = ((grouped_sum - grouped) / (counts - 1)).view(-1)
        return torch.nan_to_num(rewards - baselines, nan=0.0)

    return run


def _stateset(case: GroupCase) -> Callable[[], Any]:
    import stateset_rl_core

    s, G = case.scores, case.group_size
    return lambda: stateset_rl_core.compute_group_advantages(
        s.astype(np.float64).reshape(-1, G), "mean", True
    )


def _rlox(case: GroupCase) -> Callable[[], Any]:
    import rlox

    s, G = case.scores, case.group_size
    return lambda: rlox.compute_batch_group_advantages(s.astype(np.float64), G)


def _grpo(case: GroupCase) -> bool:
    return not case.loo


def _rloo(case: GroupCase) -> bool:
    return case.loo


def _small(limit: int) -> Callable[[GroupCase], bool]:
    return lambda case: case.elements <= limit


def implementations() -> list[Implementation]:
    loop_limit = 4096  # verl's per-sample Python loops take seconds beyond this (4 s at 65,536)
    return [
        Implementation("rlhf_fast", "rlhf_fast", _ours, _check(1e-6), ours=True),
        Implementation(
            "verl compute_grpo_outcome_advantage",
            "verl",
            _verl("grpo"),
            _check(1e-6),
            supports=lambda c: _grpo(c) and _small(loop_limit)(c),
            note="Python loop over samples",
        ),
        Implementation(
            "verl compute_grpo_vectorized_outcome_advantage",
            "verl",
            _verl("grpo_vec"),
            _check(1e-6),
            supports=_grpo,
        ),
        Implementation(
            "TRL GRPO composite (grpo_trainer.py)",
            "trl",
            _trl_grpo,
            _check(1e-4),
            supports=_grpo,
            note="inline torch ops, eps 1e-4",
        ),
        Implementation(
            "stateset-rl-core compute_group_advantages",
            "stateset-rl-core",
            _stateset,
            _check(1e-6, scale_population=True),
            supports=_grpo,
            note="population std; incl. f64 cast",
        ),
        Implementation(
            "rlox compute_batch_group_advantages",
            "rlox",
            _rlox,
            _check(1e-6, scale_population=True),
            supports=_grpo,
            note="population std; incl. f64 cast",
        ),
        Implementation(
            "verl compute_rloo_outcome_advantage",
            "verl",
            _verl("rloo"),
            _check(0.0),
            supports=lambda c: _rloo(c) and _small(loop_limit)(c),
            note="Python loop over samples",
        ),
        Implementation(
            "TRL RLOO composite (rloo_trainer.py)",
            "trl",
            _trl_rloo,
            _check(0.0),
            supports=_rloo,
            note="inline torch ops",
        ),
    ]


GROUP_BYTES_PER_ELEMENT = 4 + 4  # read scores, write advantages
