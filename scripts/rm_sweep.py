"""Reward-model settings against the Bradley-Terry ceiling, on one demo seed's own pairs.

    .venv/bin/python scripts/rm_sweep.py --seed 11 base lr1e3:learning_rate=1e-3 \\
        wd:weight_decay=0.1,max_steps=3000

Builds the demo's SFT policy and labelled pairs once per seed (``run_demo`` with one
reward-model step and one PPO iteration, into ``runs/rm_sweep/seed_S``; an existing build is
reused), then trains one reward model per variant on the same pairs: ``NAME`` alone is the
demo's reward settings, ``NAME:key=value,...`` changes any ``RewardConfig`` option. For each
it prints held-out accuracy against the ceiling (the gold score's own accuracy on the same
labels), the accuracy on the pairs whose two responses differ in product naming (right name
+2 / wrong name -2 / none) and on the others, the held-out accuracy at every ``eval_every``
steps, and the reward model's scores fitted on the gold features (as
``scripts/reward_model_features.py``). Results are appended to ``.../sweep/results.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reward_model_features import NAMES, features  # noqa: E402

from rlhf_fast import preflight  # noqa: E402
from rlhf_fast.config import run_settings, settings_of  # noqa: E402
from rlhf_fast.demo.annotators import ceiling_accuracy  # noqa: E402
from rlhf_fast.demo.run import DemoConfig, run_demo  # noqa: E402
from rlhf_fast.demo.task import PRODUCTS, gold_score  # noqa: E402
from rlhf_fast.models import RewardModel  # noqa: E402
from rlhf_fast.trainers import reward as reward_module  # noqa: E402
from rlhf_fast.trainers.reward import RewardConfig, RewardSettings, RewardTrainer  # noqa: E402


def build(seed: int, root: Path) -> Path:
    """The demo's SFT model and labelled pairs for ``seed`` (built once, then reused)."""
    out = root / f"seed_{seed}"
    if (out / "sft" / "model").is_dir() and (out / "data" / "preferences_eval.jsonl").is_file():
        return out
    cfg = DemoConfig(seed=seed, output_dir=str(out), progress=False, n_eval_samples=2)
    cfg.reward.max_steps = 1
    cfg.ppo.max_steps = 1
    t = time.perf_counter()
    run_demo(cfg)
    print(f"seed {seed}: built {out} in {time.perf_counter() - t:.0f}s", flush=True)
    return out


def _coerce(field_type: object, text: str) -> object:
    kind = {"int": int, "float": float, "bool": lambda s: s.lower() in ("1", "true", "yes")}
    return kind.get(str(field_type), str)(text)


def reward_config(run: Path, seed: int, name: str, overrides: dict[str, str]) -> RewardConfig:
    """The demo's own reward-model config for ``run``, with ``overrides`` applied."""
    demo = DemoConfig(seed=seed, output_dir=str(run), progress=False)
    shared = {**run_settings(demo), "tokenizer": ""}
    shared["output_dir"] = str(run / "sweep" / name)
    settings = settings_of(demo.reward, RewardSettings, "reward")
    settings["eval_data"] = str(run / "data" / "preferences_eval.jsonl")
    kwargs = {
        **shared,
        **settings,
        "model": str(run / "sft" / "model"),
        "data": str(run / "data" / "preferences_train.jsonl"),
    }
    types = {f.name: f.type for f in dataclasses.fields(RewardConfig)}
    for key, value in overrides.items():
        if key not in types:
            raise SystemExit(f"{key}: not a RewardConfig option")
        kwargs[key] = _coerce(types[key], value)
    return RewardConfig(**kwargs)


def _name_term(prompt: str, response: str) -> float:
    f = features(prompt, response)
    return 2.0 * f[2] - 2.0 * f[3]


def run_variant(run: Path, seed: int, spec: str, analyse_only: bool = False) -> dict[str, object]:
    name, _, rest = spec.partition(":")
    overrides = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    # Trials that are not options: head=zero|small re-initialises the scalar head;
    # center=C adds C * mean((r_chosen + r_rejected)^2) to the loss.
    head = overrides.pop("head", "")
    center = float(overrides.pop("center", 0.0))
    cfg = reward_config(run, seed, name, overrides)
    t = time.perf_counter()
    pairs, eval_pairs = preflight.preference_pairs(cfg)
    trainer = RewardTrainer(cfg, pairs=pairs, eval_pairs=eval_pairs)
    with torch.no_grad():
        if head == "zero":
            trainer.model.head.weight.zero_()
        elif head == "small":
            trainer.model.head.weight.mul_(0.1)
    plain_loss = reward_module.bradley_terry_loss
    if center:

        def centred(c: torch.Tensor, r: torch.Tensor, margin: object = None) -> torch.Tensor:
            return plain_loss(c, r, margin) + center * ((c + r) ** 2).mean()

        reward_module.bradley_terry_loss = centred
    if analyse_only:
        saved = RewardModel.from_pretrained(Path(cfg.output_dir) / "model")
        trainer.model.load_state_dict(saved.state_dict())
        result = {"eval_accuracy": trainer.evaluate()["eval/accuracy"]}
    else:
        try:
            result = trainer.train()
        finally:
            reward_module.bradley_terry_loss = plain_loss
    seconds = time.perf_counter() - t

    # Per held-out pair: the label, the gold scores, the reward model's verdict.
    with torch.no_grad():
        trainer.model.eval()
        rows = trainer.eval_rows
        c = trainer.scores_of([a for a, _ in rows]).numpy()
        r = trainer.scores_of([b for _, b in rows]).numpy()
    hit = np.where(c > r, 1.0, np.where(c == r, 0.5, 0.0))
    prompts = [p.prompt for p in eval_pairs]
    g_c = gold_score([p.chosen for p in eval_pairs], prompts)
    g_r = gold_score([p.rejected for p in eval_pairs], prompts)
    naming = np.array(
        [_name_term(p.prompt, p.chosen) != _name_term(p.prompt, p.rejected) for p in eval_pairs]
    )
    gold_hit = np.array([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(g_c, g_r)])
    # Scores fitted on the gold features with one constant per product asked about (a
    # per-prompt shift changes no pairwise verdict), then the product-match weight
    # (right name - wrong name; the gold score's: 4) per product asked about.
    texts = [(p.prompt, t) for p in eval_pairs for t in (p.chosen, p.rejected)]
    asked = [q.split()[-2] for q, _ in texts]
    x = np.array([features(q, t)[:5] for q, t in texts])
    dummies = np.array([[a == q for q in PRODUCTS] for a in asked], dtype=float)
    s = np.stack([c, r], 1).reshape(-1)
    w, *_ = np.linalg.lstsq(np.concatenate([x, dummies], 1), s, rcond=None)
    resid = s - np.concatenate([x, dummies], 1) @ w
    match = {}
    for q in PRODUCTS:
        rows_q = np.array([a == q for a in asked])
        xq = np.concatenate([x[rows_q], np.ones((rows_q.sum(), 1))], 1)
        wq, *_ = np.linalg.lstsq(xq, s[rows_q], rcond=None)
        match[q] = round(float((wq[2] - wq[3]) / w[0]), 1)
    curve = []
    metrics = Path(cfg.output_dir) / "metrics" / "reward.jsonl"
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if "eval/accuracy" in rec:
            curve.append((rec["step"], round(rec["eval/accuracy"], 3)))
    ceiling = ceiling_accuracy(g_c, g_r)
    record = {
        "seed": seed,
        "variant": spec,
        "accuracy": result["eval_accuracy"],
        "ceiling": ceiling,
        "gap_points": 100 * (ceiling - result["eval_accuracy"]),
        "naming_pairs": int(naming.sum()),
        "accuracy_naming": float(hit[naming].mean()),
        "ceiling_naming": float(gold_hit[naming].mean()),
        "accuracy_other": float(hit[~naming].mean()),
        "ceiling_other": float(gold_hit[~naming].mean()),
        "weights": {n: round(float(v), 2) for n, v in zip(NAMES[:5], w[:5] / w[0])},
        "match_by_product": match,
        "r2": float(1 - resid.var() / s.var()),
        "curve": curve,
        "seconds": round(seconds),
    }
    print(
        f"seed {seed} {spec}: acc {record['accuracy']:.3f} ceiling {ceiling:.3f} "
        f"gap {record['gap_points']:.1f} | naming pairs ({record['naming_pairs']}) "
        f"{record['accuracy_naming']:.3f}/{record['ceiling_naming']:.3f}, others "
        f"{record['accuracy_other']:.3f}/{record['ceiling_other']:.3f} | weights "
        f"{record['weights']} R^2 {record['r2']:.2f} | right-wrong by product asked "
        f"{list(match.values())} | curve {curve} | {seconds:.0f}s",
        flush=True,
    )
    name = "analysis.jsonl" if analyse_only else "results.jsonl"
    with (run / "sweep" / name).open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=["base"])
    parser.add_argument("--seed", type=int, action="append", required=True)
    parser.add_argument("--root", default="runs/rm_sweep")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument(
        "--analyse-only", action="store_true", help="Score the variants' saved models again."
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    for seed in args.seed:
        run = build(seed, Path(args.root))
        if args.build_only:
            continue
        (run / "sweep").mkdir(exist_ok=True)
        for spec in args.variants:
            run_variant(run, seed, spec, args.analyse_only)


if __name__ == "__main__":
    main()
