"""What a demo run's reward model pays for: its scores fitted on the gold score's features.

    .venv/bin/python scripts/reward_model_features.py runs/demo

Scores every response of the run's held-out pairs (and up to 1,000 training pairs) with the
reward model, fits them by least squares on the features the hidden gold score is made of
(positive words, negative words, names the product asked about, names another product, words
beyond 12, a constant) and prints the weights, scaled so that a positive word weighs 1 (the
gold score's own weights: 1, -1, 2, -2, -0.5), with R^2 and how often the responses name the
right and a wrong product. README, "The reward model and its ceiling", shows what it found.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from rlhf_fast.demo.task import NEGATIVE_WORDS, POSITIVE_WORDS, PRODUCTS
from rlhf_fast.models import RewardModel
from rlhf_fast.tokenizer import load_tokenizer
from rlhf_fast.trainers.runtime import encode_text, pad_rows

NAMES = ("positive", "negative", "right name", "wrong name", "words > 12", "constant")


def features(prompt: str, response: str) -> list[float]:
    words = response.split()
    asked = prompt.split()[-2]  # "review the kettle :"
    named = set(words) & set(PRODUCTS)
    return [
        sum(w in POSITIVE_WORDS for w in words),
        sum(w in NEGATIVE_WORDS for w in words),
        float(asked in named),
        float(bool(named - {asked})),
        max(0, len(words) - 12),
        1.0,
    ]


def main(run: Path) -> None:
    tok = load_tokenizer(str(run / "sft" / "model"))
    model = RewardModel.from_pretrained(run / "reward" / "model").eval()
    data = run / "data"
    records = [json.loads(x) for x in (data / "preferences_eval.jsonl").read_text().splitlines()]
    train = (data / "preferences_train.jsonl").read_text().splitlines()[:1000]
    records += [json.loads(x) for x in train]
    items = [(r["prompt"], r[k]) for r in records for k in ("candidate_0", "candidate_1")]
    rows = [
        encode_text(tok, p) + encode_text(tok, r, add_eos=True, continuation=True) for p, r in items
    ]
    with torch.no_grad():
        scores = torch.cat(
            [
                model(*pad_rows(rows[i : i + 256], tok.pad_token_id))
                for i in range(0, len(rows), 256)
            ]
        ).numpy()
    x = np.array([features(p, r) for p, r in items])
    weights, *_ = np.linalg.lstsq(x, scores, rcond=None)
    residual = scores - x @ weights
    for name, w in zip(NAMES, weights / weights[0]):
        print(f"{name:>12}: {w:+.2f}")
    print(
        f"R^2 {1 - residual.var() / scores.var():.2f}; right name in {x[:, 2].mean():.0%} of "
        f"the responses, a wrong one in {x[:, 3].mean():.0%}"
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
