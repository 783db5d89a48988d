"""``rlhf-fast compare``: PPO, GRPO, RLOO and DPO on the demo task, from the same SFT policy,
reward model and labels, over several seeds, in one report.

    make compare     # = rlhf-fast compare --output-dir runs/compare   (seeds 0, 1, 2)

Per seed: the demo (``run.py``: SFT, labels, reward model, PPO) runs first; then GRPO and
RLOO train from its SFT policy against its reward model on its prompts, and DPO on its
labelled pairs. Every policy (SFT included) is then scored the same way: one sample per
held-out prompt (the demo's ``n_eval_samples`` prompts, the same sampling seed), its gold
score, the reward model's score (the proxy) and its KL to the SFT policy (k1, nats per
response). The curves come from each run's own log: the training rollouts' gold, proxy and
KL for PPO, GRPO and RLOO, and for DPO (which samples nothing while training) an evaluation
on ``curve_samples`` held-out prompts every ``curve_every`` steps. Seconds are training
seconds (evaluations not counted). Writes ``<output_dir>/report.md``, ``compare.json`` and
``plots/compare.png``.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from rlhf_fast.config import (
    OptionValueError,
    RunConfig,
    option,
    redefault,
    run_settings,
    settings_of,
)
from rlhf_fast.demo.run import DemoConfig, run_demo
from rlhf_fast.demo.task import gold_score, make_prompts
from rlhf_fast.trainers.dpo import DPOConfig, DPOSettings, DPOTrainer
from rlhf_fast.trainers.grpo import GRPOConfig, GRPOSettings, GRPOTrainer
from rlhf_fast.trainers.rloo import RLOOConfig, RLOOSettings, RLOOTrainer

ALGORITHMS = ("ppo", "grpo", "rloo", "dpo")


def _grpo_defaults() -> GRPOSettings:
    # 60 steps of 64 completions: the same samples as the demo's 60 PPO iterations of 64.
    return GRPOSettings(
        max_steps=60,
        prompts_per_step=16,
        group_size=4,
        minibatch_size=16,
        epochs=2,
        learning_rate=3e-4,
        kl_coef=0.1,
        save_every=1000,
    )


def _rloo_defaults() -> RLOOSettings:
    return RLOOSettings(
        max_steps=60,
        prompts_per_step=16,
        group_size=4,
        minibatch_size=16,
        epochs=2,
        learning_rate=3e-4,
        kl_coef=0.05,
        save_every=1000,
    )


def _dpo_defaults() -> DPOSettings:
    return DPOSettings(
        max_steps=200,
        batch_size=32,
        learning_rate=3e-4,
        beta=0.1,
        eval_every=100,
        log_every=10,
        save_every=1000,
    )


@dataclass
class CompareConfig(DemoConfig):
    """The demo with PPO, GRPO, RLOO and DPO side by side, over several seeds, one report.

    The demo's own options (``--sft.*``, ``--reward.*``, ``--ppo.*``, data sizes) apply to
    every seed; ``--grpo.*``, ``--rloo.*``, ``--dpo.*`` are the other trainers' settings.
    """

    WIRED: ClassVar[dict[str, str]] = {
        **DemoConfig.WIRED,
        **{f"{a}.policy": "the SFT model" for a in ("grpo", "rloo", "dpo")},
        "grpo.reward_model": "the reward stage's model",
        "rloo.reward_model": "the reward stage's model",
        "grpo.prompts": "the demo's prompts",
        "rloo.prompts": "the demo's prompts",
        "dpo.data": "the demo's labelled pairs",
    }

    output_dir: str = redefault(RunConfig, "output_dir", "runs/compare")
    seeds: list[int] = option([0, 1, 2], "Seeds to run the whole comparison with (--seed unused).")
    algorithms: list[Literal["ppo", "grpo", "rloo", "dpo"]] = option(
        list(ALGORITHMS), "Algorithms in the report (PPO always trains: it is the demo's stage)."
    )
    curve_every: int = option(20, "DPO: score the policy every this many steps for the curves.")
    curve_samples: int = option(128, "DPO: held-out prompts per curve point.")
    grpo: GRPOSettings = field(
        default_factory=_grpo_defaults, metadata={"help": "GRPO stage settings."}
    )
    rloo: RLOOSettings = field(
        default_factory=_rloo_defaults, metadata={"help": "RLOO stage settings."}
    )
    dpo: DPOSettings = field(
        default_factory=_dpo_defaults, metadata={"help": "DPO stage settings."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("seeds", len(self.seeds) >= 1, "one or more seeds")
        self._require("algorithms", len(self.algorithms) >= 1, "one or more algorithms")
        self._require("curve_every", self.curve_every >= 1, "an integer >= 1")
        self._require("curve_samples", self.curve_samples >= 2, "an integer >= 2")


class PolicyEvaluator:
    """Scores a policy on fixed prompts: gold, proxy (reward model) and KL to the SFT policy."""

    def __init__(self, sft_dir: str, reward_dir: str, max_new_tokens: int, device: Any) -> None:
        from rlhf_fast.models import RewardModel, frozen_copy, fuse_activations, load_causal_lm
        from rlhf_fast.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(sft_dir)
        self.device = device
        self.reference = frozen_copy(fuse_activations(load_causal_lm(sft_dir, self.tokenizer)))
        self.reference.to(device)
        self.reward_model = fuse_activations(RewardModel.from_pretrained(reward_dir)).to(device)
        self.reward_model.eval()
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, policy: torch.nn.Module, prompts: list[str], seed: int = 0) -> dict:
        from rlhf_fast.models import next_token_logprobs, scored_positions
        from rlhf_fast.sampling import sample_responses
        from rlhf_fast.trainers.runtime import encode_text, pad_rows

        tok, rows = self.tokenizer, []
        was_training = policy.training
        policy.eval()
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the training run's RNG is left as it was
            torch.manual_seed(seed)
            for start in range(0, len(prompts), 128):
                chunk = prompts[start : start + 128]
                query, qmask = pad_rows(
                    [encode_text(tok, p) for p in chunk], tok.pad_token_id, side="left"
                )
                query, qmask = query.to(self.device), qmask.to(self.device)
                s = sample_responses(
                    policy,
                    query,
                    qmask,
                    max_new_tokens=self.max_new_tokens,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )
                ids = torch.cat([query, s.tokens], 1)
                mask = torch.cat([qmask, s.response_mask.long()], 1)
                scored = scored_positions(mask, start=query.shape[1])
                ref, _, _ = next_token_logprobs(self.reference, ids, mask, scored)
                kl = ((s.logprobs - ref[:, query.shape[1] - 1 :]) * s.response_mask).sum(-1)
                proxy = self.reward_model(ids, mask)
                texts = tok.batch_decode(s.tokens, skip_special_tokens=True)
                gold = gold_score(texts, chunk)
                rows += [
                    {"prompt": p, "response": r, "gold": g, "proxy": x, "kl": k}
                    for p, r, g, x, k in zip(chunk, texts, gold, proxy.tolist(), kl.tolist())
                ]
        policy.train(was_training)
        mean = lambda key: statistics.fmean(r[key] for r in rows)  # noqa: E731
        return {
            "gold": mean("gold"),
            "gold_std": statistics.pstdev(r["gold"] for r in rows),
            "proxy": mean("proxy"),
            "kl": mean("kl"),
            "length": statistics.fmean(len(r["response"].split()) for r in rows),
            "samples": rows,
        }


def _gold_metrics(prompts: list[str], responses: list[str]) -> dict[str, float]:
    return {"gold/mean": statistics.fmean(gold_score(responses, prompts))}


def _curve(jsonl: Path, kl: str, gold: str, proxy: str, seconds: str) -> list[dict]:
    """Points ``{step, seconds, kl, gold, proxy}`` from a stage's metrics log."""
    from rlhf_fast.metrics import read_jsonl

    points, elapsed = [], 0.0
    for r in read_jsonl(jsonl):
        if seconds == "perf/seconds_per_step":  # PPO logs per-step time only
            elapsed += r[seconds]
        if gold in r:
            t = elapsed if seconds == "perf/seconds_per_step" else r[seconds]
            points.append(
                {"step": r["step"], "seconds": t, "kl": r[kl], "gold": r[gold], "proxy": r[proxy]}
            )
    return points


def _compare_seed(cfg: CompareConfig, seed: int, out: Path) -> dict[str, Any]:
    """The demo and then every other algorithm for one seed; each one's result and curve."""
    demo_fields = {f.name for f in fields(DemoConfig)}
    demo_cfg = DemoConfig(
        **{k: getattr(cfg, k) for k in demo_fields if k not in ("output_dir", "seed")},
        output_dir=str(out),
        seed=seed,
    )
    if not (cfg.resume and (out / "summary.json").is_file()):
        run_demo(demo_cfg)
    demo = json.loads((out / "summary.json").read_text())
    sft_dir, rm_dir, data = str(out / "sft" / "model"), str(out / "reward" / "model"), out / "data"
    shared = {**run_settings(cfg), "seed": seed, "tokenizer": ""}
    from rlhf_fast.models import resolve_device

    device = resolve_device(cfg.device)  # where the trainers put their policies
    evaluator = PolicyEvaluator(sft_dir, rm_dir, cfg.ppo.max_new_tokens, device)
    eval_prompts = make_prompts(cfg.n_eval_samples, seed=seed + 4)  # the demo's held-out prompts
    from rlhf_fast.models import load_causal_lm

    results: dict[str, Any] = {
        "sft": evaluator(load_causal_lm(sft_dir, evaluator.tokenizer).to(device), eval_prompts),
        "demo": demo,
    }
    ppo_seconds = demo["stage_seconds"]["ppo"]
    results["ppo"] = {
        **evaluator(
            load_causal_lm(str(out / "ppo" / "policy"), evaluator.tokenizer).to(device),
            eval_prompts,
        ),
        "seconds": ppo_seconds,
        "curve": _curve(
            out / "ppo" / "metrics" / "ppo.jsonl",
            "objective/kl",
            "gold/mean",
            "objective/raw_scores",
            "perf/seconds_per_step",
        ),
    }
    prompts = [
        json.loads(line)["prompt"] for line in (data / "prompts.jsonl").read_text().splitlines()
    ]
    for name, cls, config_cls, settings_cls in (
        ("grpo", GRPOTrainer, GRPOConfig, GRPOSettings),
        ("rloo", RLOOTrainer, RLOOConfig, RLOOSettings),
    ):
        if name not in cfg.algorithms:
            continue
        stage_cfg = config_cls(
            **{**shared, "output_dir": str(out / name)},
            **settings_of(getattr(cfg, name), settings_cls, name),
            policy=sft_dir,
            reward_model=rm_dir,
            prompts=str(data / "prompts.jsonl"),
        )
        t = time.perf_counter()
        trainer = cls(stage_cfg, prompts=prompts, sample_metrics=_gold_metrics)
        trainer.train()
        results[name] = {
            **evaluator(trainer.policy, eval_prompts),
            "seconds": time.perf_counter() - t,
            "curve": _curve(
                out / name / "metrics" / f"{name}.jsonl",
                "objective/kl",
                "gold/mean",
                "rewards/reward_model",
                "perf/train_seconds",
            ),
        }
        del trainer
    if "dpo" in cfg.algorithms:
        dpo_cfg = DPOConfig(
            **{**shared, "output_dir": str(out / "dpo")},
            **{
                **settings_of(cfg.dpo, DPOSettings, "dpo"),
                "eval_data": str(data / "preferences_eval.jsonl"),
            },
            policy=sft_dir,
            data=str(data / "preferences_train.jsonl"),
        )
        curve_prompts = eval_prompts[: cfg.curve_samples]

        def score(trainer: Any) -> dict[str, float]:
            r = evaluator(trainer.policy, curve_prompts, seed=1)
            return {"policy/gold": r["gold"], "policy/kl": r["kl"], "policy/proxy": r["proxy"]}

        t = time.perf_counter()
        trainer = DPOTrainer(dpo_cfg)
        trainer.train(hooks=[score], hook_every=cfg.curve_every)
        results["dpo"] = {
            **evaluator(trainer.policy, eval_prompts),
            "seconds": time.perf_counter() - t,
            "curve": _curve(
                out / "dpo" / "metrics" / "dpo.jsonl",
                "policy/kl",
                "policy/gold",
                "policy/proxy",
                "perf/train_seconds",
            ),
        }
    return results


def run_compare(config: CompareConfig) -> dict[str, Any]:
    """Run every seed, write the report; returns the contents of ``compare.json``."""
    from rlhf_fast.demo.compare_report import write_comparison

    cfg = config
    if cfg.seed != 0:
        raise OptionValueError("seed", "compare runs every seed of --seeds; set those instead")
    for name in ("grpo", "rloo"):
        if getattr(cfg, name).prompt_field != "prompt":
            raise OptionValueError(f"{name}.prompt_field", "the demo's prompts file uses 'prompt'")
    if cfg.dpo.eval_data:
        raise OptionValueError("dpo.eval_data", "the demo holds out its own pairs; leave it empty")
    out = Path(cfg.output_dir)
    per_seed = {}
    for seed in cfg.seeds:
        # A finished seed is kept with --resume: seeds can run as separate processes and a
        # last call with every seed writes the report.
        done = out / f"seed_{seed}" / "compare_seed.json"
        if cfg.resume and done.is_file():
            per_seed[seed] = json.loads(done.read_text())
            if all(name in per_seed[seed] for name in cfg.algorithms):
                continue
        per_seed[seed] = _compare_seed(cfg, seed, out / f"seed_{seed}")
        done.write_text(json.dumps(per_seed[seed]))
    return write_comparison(out, per_seed, cfg.algorithms)
