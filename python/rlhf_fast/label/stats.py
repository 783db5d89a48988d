"""What ``/stats`` shows: progress, counts per annotator, agreement and position bias.

- **Agreement** is Cohen's kappa, ``(p_o - p_e) / (1 - p_e)``, over the pairs that two people
  judged (skips left out), on three categories in the pair's own order: candidate 0 better,
  candidate 1 better, tie. With more than two judgements of a pair its first two count, so
  every pair weighs the same; ``by_annotators`` gives kappa for each two annotators as well.
- **Position bias** is the share of decisive choices (ties and skips left out) that went to
  the answer shown on the left, with a 95 % Wilson interval: each annotator sees each pair in
  a random orientation, so with no bias it is 0.5 up to noise.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import combinations
from typing import Any, Optional

from rlhf_fast.label.store import Judgement

__all__ = ["cohen_kappa", "label_stats", "wilson_interval"]


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> Optional[float]:
    """Cohen's kappa of two raters' labels on the same items; ``None`` for no items, and
    for chance agreement 1 (both always gave one and the same label: kappa is 0/0)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} labels against {len(b)}")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    count_a, count_b = Counter(a), Counter(b)
    expected = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> Optional[tuple[float, float]]:
    """The Wilson score interval of a binomial proportion (95 % by default)."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 4)


def label_stats(judgements: Sequence[Judgement], n_pairs: int) -> dict[str, Any]:
    """The statistics of ``judgements`` (oldest first) on a set of ``n_pairs`` pairs."""
    per_annotator: dict[str, Counter[str]] = defaultdict(Counter)
    by_pair: dict[str, list[Judgement]] = defaultdict(list)
    for j in judgements:
        per_annotator[j.annotator][j.verdict] += 1
        if j.winner is not None:
            by_pair[j.pair_id].append(j)

    # Agreement: the first two judgements of every pair judged twice or more.
    firsts = [(js[0].winner, js[1].winner) for js in by_pair.values() if len(js) >= 2]
    kappa = cohen_kappa([a for a, _ in firsts], [b for _, b in firsts])
    by_annotators = []
    for x, y in combinations(sorted(per_annotator), 2):
        shared = [
            (jx.winner, jy.winner)
            for js in by_pair.values()
            for jx in js
            for jy in js
            if jx.annotator == x and jy.annotator == y
        ]
        if shared:
            k = cohen_kappa([a for a, _ in shared], [b for _, b in shared])
            by_annotators.append({"annotators": [x, y], "n_pairs": len(shared), "kappa": _round(k)})

    decisive = [j for j in judgements if j.verdict in ("left", "right")]
    left_wins = sum(j.verdict == "left" for j in decisive)
    interval = wilson_interval(left_wins, len(decisive))
    return {
        "progress": {
            "pairs": n_pairs,
            "labelled": len(by_pair),  # pairs with at least one verdict that is not a skip
            "labelled_twice": sum(len(js) >= 2 for js in by_pair.values()),
            "judgements": len(judgements),
        },
        "annotators": {
            name: {
                "total": sum(c.values()),
                **{verdict: c[verdict] for verdict in ("left", "right", "tie", "skip")},
            }
            for name, c in sorted(per_annotator.items())
        },
        "agreement": {
            "kappa": _round(kappa),
            "n_pairs": len(firsts),
            "observed": _round(sum(a == b for a, b in firsts) / len(firsts)) if firsts else None,
            "by_annotators": by_annotators,
        },
        "position_bias": {
            "n_decisive": len(decisive),
            "left_wins": left_wins,
            "left_win_rate": _round(left_wins / len(decisive)) if decisive else None,
            "ci95": [_round(v) for v in interval] if interval else None,
        },
    }
