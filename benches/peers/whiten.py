"""Masked whitening: rlhf_fast against the masked_whiten of verl, TRL and torchtune.

All compute ``(x - mean) * rsqrt(var + 1e-8)`` with the masked mean and the unbiased masked
variance (verl and torchtune add 1e-8 to the mask count; negligible here). Naming differs:
TRL's and verl's ``shift_mean=True`` give a zero mean, torchtune's ``whiten(shift_mean=True)``
*adds the mean back*, so torchtune is called with ``shift_mean=False`` for a zero mean. Off the
mask the peers return whitened garbage and rlhf_fast returns 0: compared on the mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .common import Implementation, assert_close_on
from .gae import make_mask


@dataclass
class WhitenCase:
    x: np.ndarray  # [B, T] float32
    mask: np.ndarray  # [B, T] bool
    mask_kind: str
    reference: np.ndarray = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape

    @property
    def elements(self) -> int:
        return self.x.size


def make_case(B: int, T: int, kind: str, seed: int = 0) -> WhitenCase:
    import rlhf_fast

    rng = np.random.default_rng(seed)
    mask = make_mask(B, T, kind, rng)
    x = (rng.standard_normal((B, T), dtype=np.float32) * 3 + 1).astype(np.float32)
    case = WhitenCase(x, mask, kind)
    case.reference = rlhf_fast.masked_whiten(x, mask)
    return case


def _check(out: Any, case: WhitenCase) -> None:
    assert_close_on(out, case.reference, case.mask, "whitened", rtol=1e-4, atol=1e-4)


def _ours_fresh(case: WhitenCase) -> Callable[[], Any]:
    import rlhf_fast

    x, m = case.x, case.mask
    return lambda: rlhf_fast.masked_whiten(x, m)


def _ours_out(case: WhitenCase) -> Callable[[], Any]:
    from rlhf_fast import _native

    x, m = case.x, case.mask.view(np.uint8)
    out = np.zeros_like(x)
    return lambda: _native.masked_whiten(x, m, out=out)


def _peer(which: str) -> Callable[[WhitenCase], Callable[[], Any]]:
    def prepare(case: WhitenCase) -> Callable[[], Any]:
        x, mask = torch.from_numpy(case.x), torch.from_numpy(case.mask)
        if which == "verl":
            from verl.utils.torch_functional import masked_whiten

            mask_f = mask.float()  # verl's masks are numeric
            return lambda: masked_whiten(x, mask_f)
        if which == "trl":
            from trl.experimental.ppo.ppo_trainer import masked_whiten

            return lambda: masked_whiten(x, mask)
        from torchtune.rlhf import whiten

        return lambda: whiten(x, mask, shift_mean=False)

    return prepare


def implementations() -> list[Implementation]:
    return [
        Implementation(
            "rlhf_fast", "rlhf_fast", _ours_out, _check, ours=True, variant="out= buffers"
        ),
        Implementation(
            "rlhf_fast", "rlhf_fast", _ours_fresh, _check, ours=True, variant="fresh outputs"
        ),
        Implementation("verl masked_whiten", "verl", _peer("verl"), _check),
        Implementation("TRL masked_whiten (experimental.ppo)", "trl", _peer("trl"), _check),
        Implementation("torchtune whiten", "torchtune", _peer("torchtune"), _check),
    ]


# Two passes over x and the mask (moments, then apply) and one write.
WHITEN_BYTES_PER_ELEMENT = 2 * (4 + 1) + 4
