"""KL-shaped rewards: rlhf_fast against the torch eager composites TRL and verl run.

Task: ``kl = logprobs - ref_logprobs`` (k1) on masked tokens, ``rewards = -kl_coef * kl`` plus
each row's score on its last masked token; outputs ``(rewards, kl)``, 0 outside the mask.
- TRL composite: the "4. compute rewards" lines of ``trl/experimental/ppo/ppo_trainer.py``
  (``logr = ref - logprobs``, ``kl = -logr``, ``non_score_reward = -kl_coef * kl``, score added at
  an index). TRL adds the score at ``sequence_length + 1`` (the pad *after* the last token)
  unless the row is full; here the index is the last masked token, which is what the trainer
  means, so the outputs agree.
- verl composite: verl's own ``core_algos.kl_penalty(..., "kl")`` and the body of
  ``apply_kl_penalty`` (``kld * response_mask``, ``token_level_scores - beta * kld``), with the
  score placed at the last masked token as verl's reward manager does.
- rlox's KL functions return one number per sequence (a sum), not per-token shaped rewards, so
  they do not compute this and are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .common import Implementation, assert_close_on
from .gae import make_mask

KL_COEF = 0.05


@dataclass
class KlCase:
    logprobs: np.ndarray  # [B, T] float32
    ref_logprobs: np.ndarray
    mask: np.ndarray  # [B, T] bool
    scores: np.ndarray  # [B] float32
    mask_kind: str
    reference: tuple[np.ndarray, np.ndarray] = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.logprobs.shape

    @property
    def elements(self) -> int:
        return self.logprobs.size


def make_case(B: int, T: int, kind: str, seed: int = 0) -> KlCase:
    import rlhf_fast

    rng = np.random.default_rng(seed)
    mask = make_mask(B, T, kind, rng)
    logprobs = -np.abs(rng.standard_normal((B, T), dtype=np.float32)) * 2
    ref = (logprobs + rng.standard_normal((B, T), dtype=np.float32) * 0.1).astype(np.float32)
    scores = rng.standard_normal(B, dtype=np.float32)
    case = KlCase(logprobs, ref, mask, scores, kind)
    case.reference = rlhf_fast.kl_shaped_rewards(logprobs, ref, mask, scores, kl_coef=KL_COEF)
    return case


def _check(out: Any, case: KlCase) -> None:
    rewards, kl = out
    assert_close_on(rewards, case.reference[0], case.mask, "rewards", rtol=1e-5, atol=1e-5)
    assert_close_on(kl, case.reference[1], case.mask, "kl", rtol=1e-5, atol=1e-5)


def _torch_inputs(case: KlCase) -> tuple[torch.Tensor, ...]:
    return (
        torch.from_numpy(case.logprobs),
        torch.from_numpy(case.ref_logprobs),
        torch.from_numpy(case.mask),
        torch.from_numpy(case.scores),
    )


def _last_masked(mask: torch.Tensor) -> torch.Tensor:
    T = mask.shape[1]
    return T - 1 - mask.flip(1).to(torch.uint8).argmax(1)


def _ours_fresh(case: KlCase) -> Callable[[], Any]:
    import rlhf_fast

    lp, ref, m, s = case.logprobs, case.ref_logprobs, case.mask, case.scores
    return lambda: rlhf_fast.kl_shaped_rewards(lp, ref, m, s, kl_coef=KL_COEF)


def _ours_out(case: KlCase) -> Callable[[], Any]:
    from rlhf_fast import _native

    lp, ref, s = case.logprobs, case.ref_logprobs, case.scores
    m = case.mask.view(np.uint8)
    rewards, kl = np.zeros_like(lp), np.zeros_like(lp)
    return lambda: _native.kl_shaped_rewards(
        lp, ref, m, s, kl_coef=KL_COEF, rewards_out=rewards, kl_out=kl
    )


def _trl(case: KlCase) -> Callable[[], Any]:
    logprobs, ref_logprobs, mask, scores = _torch_inputs(case)
    rows = torch.arange(mask.shape[0])

    def run() -> Any:
        logr = ref_logprobs - logprobs
        kl = (-logr).masked_fill(~mask, 0)
        non_score_reward = -KL_COEF * kl
        rewards = non_score_reward.clone()
        rewards[rows, _last_masked(mask)] += scores
        return rewards, kl

    return run


def _verl(case: KlCase) -> Callable[[], Any]:
    from verl.trainer.ppo.core_algos import kl_penalty

    logprobs, ref_logprobs, mask, scores = _torch_inputs(case)
    response_mask = mask.float()
    rows = torch.arange(mask.shape[0])

    def run() -> Any:
        token_level_scores = torch.zeros_like(logprobs)
        token_level_scores[rows, _last_masked(mask)] = scores
        kld = kl_penalty(logprobs, ref_logprobs, kl_penalty="kl") * response_mask
        return token_level_scores - KL_COEF * kld, kld

    return run


def implementations() -> list[Implementation]:
    return [
        Implementation(
            "rlhf_fast", "rlhf_fast", _ours_out, _check, ours=True, variant="out= buffers"
        ),
        Implementation(
            "rlhf_fast", "rlhf_fast", _ours_fresh, _check, ours=True, variant="fresh outputs"
        ),
        Implementation("TRL composite (ppo_trainer.py)", "trl", _trl, _check, note="torch eager"),
        Implementation(
            "verl kl_penalty + apply_kl_penalty body", "verl", _verl, _check, note="torch eager"
        ),
    ]


KL_BYTES_PER_ELEMENT = 4 + 4 + 1 + 4 + 4  # read logprobs, ref, mask; write rewards, kl
