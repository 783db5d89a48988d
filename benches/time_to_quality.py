"""Time to quality on the demo task: rlhf_fast's PPO and TRL 1.12.0's PPO from the same start.

Both trainers start from one finished ``rlhf-fast demo`` run (made first when missing): its
SFT policy, its reward model (TRL gets it wrapped as the sequence classifier its trainer
expects, with the score normalisation rlhf_fast applies folded into the head, and a copy of it
as the value model, TRL's usual initialisation), its prompts and the demo's PPO settings (64
prompts per iteration, 32 tokens, temperature 1, k1 KL at 0.1, 4 epochs x 4 minibatches, AdamW
at 3e-4, gamma 1, lam 0.95). rlhf_fast runs with its ``PPOConfig`` defaults for everything
else; TRL with its own. After every iteration the hidden gold score of that iteration's
sampled responses is recorded against the training wall-clock (the time spent scoring gold is
left out). Quality is reported in SFT standard deviations of gold above the SFT policy
(``rlhf-fast demo``'s ``gold_gain_in_sft_std``); the time to reach ``--target`` (and half of
it) is the first time the 3-iteration moving average reaches it. A target close to where
the run levels off is reached after a number of iterations that a little noise decides, so
the table gives both.

    .venv-bench/bin/python benches/time_to_quality.py --seeds 0 1 \
        --output benches/results/time_to_quality.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ITERATIONS = 40


def ensure_demo(seed: int, root: Path) -> Path:
    """A finished demo run of ``seed`` (SFT policy, reward model, prompts, summary)."""
    out = root / f"demo-seed{seed}"
    if not (out / "summary.json").exists():
        rlhf_fast = Path(sys.executable).with_name("rlhf-fast")
        command = [
            str(rlhf_fast) if rlhf_fast.exists() else "rlhf-fast",
            "demo",
            "--seed",
            str(seed),
            "--output-dir",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
        subprocess.run(command, check=True)
    return out


def moving_average(xs: list[float], n: int = 3) -> list[float]:
    return [statistics.fmean(xs[max(0, i - n + 1) : i + 1]) for i in range(len(xs))]


def run_rlhf_fast(demo: Path, seed: int) -> dict[str, list[float]]:
    from rlhf_fast.demo.task import gold_score
    from rlhf_fast.trainers.ppo import PPOConfig, PPOTrainer

    prompts = [json.loads(line)["prompt"] for line in open(demo / "data" / "prompts.jsonl")]
    # transformers imports its model code lazily, on first use; import it before the clock
    # starts, as importing TRL does on the other side.
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    config = PPOConfig(
        output_dir=str(demo / "ttq-rlhf_fast"),
        seed=seed,
        policy=str(demo / "sft" / "model"),
        reward_model=str(demo / "reward" / "model"),
        max_steps=ITERATIONS,
        rollout_batch_size=64,
        minibatch_size=16,
        ppo_epochs=4,
        learning_rate=3e-4,
        max_new_tokens=32,
        kl_coef=0.1,
        device="cpu",
        tensorboard=False,
        progress=False,
    )
    start = time.perf_counter()
    trainer = PPOTrainer(config, prompts=prompts)
    seconds, gold, kl, excluded = [], [], [], 0.0
    for step in range(ITERATIONS):
        batch = trainer.rollout(trainer.prompts_for(step))
        metrics = trainer.train_step(batch)
        trainer.step += 1
        t = time.perf_counter()
        gold.append(statistics.fmean(gold_score(batch.responses, batch.prompts)))
        kl.append(metrics["objective/kl"])
        excluded += time.perf_counter() - t
        seconds.append(time.perf_counter() - start - excluded)
    return {"seconds": seconds, "gold": gold, "kl": kl}


class SequenceScorer(nn.Module):
    """rlhf_fast's reward model as TRL reads one: ``model.<base_model_prefix>`` is the trunk,
    ``model.score`` maps its last hidden states to a score per position."""

    base_model_prefix = "backbone"

    def __init__(self, reward_model: Any) -> None:
        super().__init__()
        self.backbone = reward_model.backbone
        self.config = reward_model.backbone.config
        head = reward_model.head
        self.score = nn.Linear(head.in_features, 1)
        with torch.no_grad():  # (w.h + b - mean) / std: the normalised score rlhf_fast uses
            self.score.weight.copy_(head.weight / reward_model.score_std)
            self.score.bias.copy_((head.bias - reward_model.score_mean) / reward_model.score_std)


def run_trl(demo: Path, seed: int) -> dict[str, list[float]]:
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from rlhf_fast.demo.task import gold_score
    from rlhf_fast.models import RewardModel
    from rlhf_fast.tokenizer import load_tokenizer

    policy_dir = demo / "sft" / "model"
    tok = load_tokenizer(str(policy_dir))
    prompts = [json.loads(line)["prompt"] for line in open(demo / "data" / "prompts.jsonl")]
    start = time.perf_counter()
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, local_files_only=True)
    reward_model = SequenceScorer(RewardModel.from_pretrained(demo / "reward" / "model"))
    value_model = copy.deepcopy(reward_model)
    dataset = Dataset.from_dict({"input_ids": [tok.encode(p) for p in prompts]})

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        rows = [
            [tok.pad_token_id] * (width - len(f["input_ids"])) + list(f["input_ids"])
            for f in features
        ]
        return {"input_ids": torch.tensor(rows, dtype=torch.long)}

    args = PPOConfig(
        output_dir=str(demo / "ttq-trl"),
        per_device_train_batch_size=64,
        gradient_accumulation_steps=1,
        num_mini_batches=4,
        num_ppo_epochs=4,
        local_rollout_forward_batch_size=64,
        response_length=32,
        temperature=1.0,
        total_episodes=64 * ITERATIONS,
        stop_token="eos",
        kl_estimator="k1",
        kl_coef=0.1,
        gamma=1.0,
        lam=0.95,
        learning_rate=3e-4,
        num_sample_generations=0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
        logging_steps=1,
    )
    seconds: list[float] = []
    gold: list[float] = []
    kl: list[float] = []
    pending: list[float] = []
    excluded = [0.0]
    real_get_reward = trl_ppo.get_reward

    def scored_get_reward(model, query_responses, pad_token_id, context_length):
        out = real_get_reward(model, query_responses, pad_token_id, context_length)
        if model is reward_model:  # the rollout's scoring of its responses: gold on the side
            t = time.perf_counter()
            queries = tok.batch_decode(query_responses[:, :context_length])
            responses = tok.batch_decode(query_responses[:, context_length:])
            pending.extend(gold_score(responses, queries))
            excluded[0] += time.perf_counter() - t
        return out

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "objective/kl" in logs:
                kl.append(float(logs["objective/kl"]))

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            seconds.append(time.perf_counter() - start - excluded[0])
            gold.append(statistics.fmean(pending))
            pending.clear()

    trl_ppo.get_reward = scored_get_reward
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=copy.deepcopy(policy),
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
        data_collator=collate,
        callbacks=[Clock()],
    )
    trainer.train()
    return {"seconds": seconds, "gold": gold, "kl": kl}


def summarise(
    run: dict[str, list[float]], sft_mean: float, sft_std: float, target: float
) -> dict[str, Any]:
    gain = [(g - sft_mean) / sft_std for g in run["gold"]]
    smooth = moving_average(gain)
    reached = next((s for s, g in zip(run["seconds"], smooth) if g >= target), None)
    halfway = next((s for s, g in zip(run["seconds"], smooth) if g >= target / 2), None)
    return {
        **run,
        "gain_sd": gain,
        "gain_sd_smoothed": smooth,
        "seconds_to_target": reached,
        "seconds_to_half_target": halfway,
        "final_gain_sd": statistics.fmean(gain[-5:]),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"rlhf_fast": "tab:blue", "trl": "tab:orange"}
    for seed, runs in result["seeds"].items():
        for name, run in runs.items():
            ax.plot(
                run["seconds"],
                run["gain_sd_smoothed"],
                color=colours[name],
                alpha=0.85,
                label=f"{name} seed {seed}",
            )
    ax.axhline(
        result["target"],
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"+{result['target']} SFT std",
    )
    ax.set_xlabel("training wall-clock seconds (CPU)")
    ax.set_ylabel("gold score gain (SFT std, 3-iteration mean)")
    ax.set_title("PPO on the demo task: gold score against time")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    global ITERATIONS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--target", type=float, default=1.5, help="gold gain in SFT std")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo's)")
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="PPO iterations")
    parser.add_argument("--workdir", type=Path, default=Path("runs/time_to_quality"))
    parser.add_argument("--output", type=Path, default=Path("benches/results/time_to_quality.json"))
    parser.add_argument("--only", choices=["rlhf_fast", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ITERATIONS = args.iterations
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if args.only:  # child: one trainer, one seed, in a fresh process
        demo = ensure_demo(args.seed, args.workdir)
        run = (run_rlhf_fast if args.only == "rlhf_fast" else run_trl)(demo, args.seed)
        args.output.write_text(json.dumps(run))
        return
    result: dict[str, Any] = {
        "description": __doc__.split("\n\n")[1].replace("\n", " "),
        "target": args.target,
        "threads": args.threads,
        "seeds": {},
    }
    for seed in args.seeds:
        demo = ensure_demo(seed, args.workdir)
        summary = json.loads((demo / "summary.json").read_text())
        runs = {}
        for name in ("rlhf_fast", "trl"):
            child_out = args.workdir / f"{name}-seed{seed}.json"
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--only",
                    name,
                    "--seed",
                    str(seed),
                    "--threads",
                    str(args.threads),
                    "--workdir",
                    str(args.workdir),
                    "--iterations",
                    str(args.iterations),
                    "--output",
                    str(child_out),
                ],
                check=True,
            )
            runs[name] = summarise(
                json.loads(child_out.read_text()),
                summary["gold_sft_mean"],
                summary["gold_sft_std"],
                args.target,
            )
            print(
                f"seed {seed} {name}: {runs[name]['seconds'][-1]:.0f} s for {ITERATIONS} "
                f"iterations, +{args.target} SFT std after {runs[name]['seconds_to_target']} s, "
                f"final {runs[name]['final_gain_sd']:.2f}",
                flush=True,
            )
        result["seeds"][str(seed)] = runs
    rows = [
        f"| seed | trainer | s / iteration | s to +{args.target / 2:.2f} SFT std | "
        f"s to +{args.target:.1f} SFT std | final gain (SFT std) | final KL |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, runs in result["seeds"].items():
        for name, run in runs.items():
            reached, half = run["seconds_to_target"], run["seconds_to_half_target"]
            rows.append(
                f"| {seed} | {name} | {run['seconds'][-1] / len(run['seconds']):.2f} | "
                f"{'not reached' if half is None else f'{half:.1f}'} | "
                f"{'not reached' if reached is None else f'{reached:.1f}'} | "
                f"{run['final_gain_sd']:.2f} | "
                f"{statistics.fmean(run['kl'][-5:]) if run['kl'] else float('nan'):.1f} |"
            )
        ratios = []
        for key in ("seconds_to_half_target", "seconds_to_target"):
            a, b = runs["rlhf_fast"][key], runs["trl"][key]
            ratios.append(f"**{b / a:.2f}x**" if a and b else "-")
        rows.append(f"| {seed} | TRL / rlhf_fast | | {ratios[0]} | {ratios[1]} | | |")
    table = "\n".join(rows) + "\n"
    result["table"] = table
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    args.output.with_suffix(".md").write_text(table)
    plot(result, args.output.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
