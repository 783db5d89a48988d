"""Simulated human annotators: noisy Bradley-Terry judges of the hidden gold score.

Annotator ``k`` prefers response ``a`` over ``b`` with probability
``sigmoid(beta_k * (gold(a) - gold(b)))`` (Bradley & Terry 1952): a large ``beta`` is a
careful judge, a small one a hasty judge. Each pair is labelled by one annotator drawn
at random. The labels are all the reward model ever sees.

The **ceiling** of a reward model on such labels is the accuracy of the gold score itself
(``ceiling_accuracy``): no model can beat the function the labels were drawn from, in
expectation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from rlhf_fast.errors import InvalidArgumentError


class BradleyTerryAnnotators:
    """A panel of simulated annotators with skills ``betas`` (each > 0)."""

    def __init__(self, betas: Sequence[float], seed: int) -> None:
        betas = [float(b) for b in betas]
        if not betas or any(not math.isfinite(b) or b <= 0 for b in betas):
            raise InvalidArgumentError(
                f"betas: expected one or more finite numbers > 0, got {betas}"
            )
        self.betas = betas
        self.rng = random.Random(seed)

    def prefer_first(self, gold_a: float, gold_b: float) -> tuple[bool, int]:
        """Whether the drawn annotator prefers ``a``, and which annotator judged."""
        who = self.rng.randrange(len(self.betas))
        z = self.betas[who] * (gold_a - gold_b)
        p_first = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        return self.rng.random() < p_first, who

    def label(self, gold_a: Sequence[float], gold_b: Sequence[float]) -> list[int]:
        """``choice`` per pair: 0 when ``a`` is preferred, 1 when ``b`` is."""
        if len(gold_a) != len(gold_b):
            raise InvalidArgumentError(
                f"gold_b: expected {len(gold_a)} scores like gold_a, got {len(gold_b)}"
            )
        return [0 if self.prefer_first(a, b)[0] else 1 for a, b in zip(gold_a, gold_b)]


def ceiling_accuracy(gold_chosen: Sequence[float], gold_rejected: Sequence[float]) -> float:
    """Share of labelled pairs where the gold score agrees with the label (ties count half)."""
    if not gold_chosen:
        raise InvalidArgumentError("gold_chosen: expected at least one pair, got none")
    hits = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(gold_chosen, gold_rejected))
    return hits / len(gold_chosen)
