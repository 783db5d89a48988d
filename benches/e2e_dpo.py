"""DPO end to end: rlhf_fast's DPOTrainer against TRL 1.12.0's DPOTrainer on the same work.

The work, on both sides: the built-in ``small-gpt2`` shape (GPT-2, 4 layers, 256 wide, byte
vocabulary of 260, ~3.3 M parameters; ``benches/e2e_ppo.py`` builds it) with its frozen
reference; ``--pairs`` preference pairs (256) in the demo task's words (``demo/task.py``: a
~30-byte prompt asking for a review, two ~45-byte template reviews, the one with the higher gold
score chosen), identical token ids on both sides (``hf_byte_tokenizer`` from ``e2e_grpo.py``,
checked); 32 pairs per optimizer step (8 steps an epoch), no gradient accumulation; the
sigmoid loss (``-log sigmoid(beta h)``, beta 0.1); AdamW at the same learning rate, no warm-up,
gradient norm clipped at 1; ``max_length`` 128, which no pair reaches (checked), so neither side
truncates; dropout off; float32 (TRL's ``DPOConfig`` defaults to bf16, which this CPU emulates
at many times the cost: ``bf16=False`` here; it also defaults to gradient checkpointing:
``gradient_checkpointing=False`` here, as ours does not recompute); CPU, 2 torch threads.

The reference: rlhf_fast scores every pair with it once, before training, and drops it; TRL by
default (``precompute_ref_log_probs=False``) runs it on every batch, and with ``True`` scores
the pairs once before training as we do. Both TRL settings run, each in its own row. The
one-off pass is timed (``ref_pass_s``) and counted in the first epoch (``first_epoch_s``);
``later_epoch_s`` is the median of the epochs after it.

Each trainer runs in its own process. Before its trainer is built, each does one untimed
warm-up forward and backward of a throwaway model of the same shape on a batch of the step's
size (the first-call costs of the torch kernels). Then ``--epochs`` epochs; the first counts
everything it does. Wall and CPU seconds per epoch and per step (median over the later epochs),
``whole_run_s`` from building the trainer to the end of the last step, peak RSS. The loss per
epoch (mean over its steps) shows both sides learning.

    .venv-bench/bin/python benches/e2e_dpo.py --output benches/results/e2e_dpo.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from e2e_grpo import _machine, hf_byte_tokenizer, models, peak_rss_mib, run_side  # noqa: E402

THREADS, BATCH, BETA, LR, MAX_LENGTH, PAIRS, EPOCHS = 2, 32, 0.1, 5e-5, 128, 256, 2
SIDES = ("rlhf_fast", "trl", "trl_precompute")


def make_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` pairs ``{prompt, chosen, rejected}`` from the demo task: a prompt asking for a
    review of one product, two sampled template reviews of two sentences or more, the one with
    the higher gold score chosen (ties redrawn). Responses start with a space: both trainers
    join prompt and response as they are."""
    from rlhf_fast.demo.task import PRODUCTS, gold_score_one

    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    while len(out) < n:
        product = rng.choice(PRODUCTS)
        prompt = f"Write a short review of the {product}:"

        a, b = _review(rng, product), _review(rng, product)
        score_a, score_b = gold_score_one(prompt, a), gold_score_one(prompt, b)
        if a == b or score_a == score_b:
            continue
        chosen, rejected = (a, b) if score_a > score_b else (b, a)
        out.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return out


def _review(rng: random.Random, product: str) -> str:
    from rlhf_fast.demo.task import sample_review

    while True:
        text = sample_review(rng, product)
        if 32 <= len(text) <= 64:
            return text


def warm_up(policy_dir: Path) -> None:
    """One forward and backward of a throwaway copy of the model on a step-sized batch."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_dir, local_files_only=True)
    ids = torch.randint(4, 260, (2 * BATCH, 80))
    model(input_ids=ids, labels=ids).loss.backward()


def epoch_figures(
    epoch_wall: list[float], epoch_cpu: list[float], steps_wall: list[float], ref_pass: float
) -> dict[str, Any]:
    per_epoch = len(steps_wall) // len(epoch_wall)
    later = steps_wall[per_epoch:] or steps_wall
    return {
        "first_epoch_s": epoch_wall[0],
        "later_epoch_s": statistics.median(epoch_wall[1:] or epoch_wall),
        "first_epoch_cpu_s": epoch_cpu[0],
        "later_epoch_cpu_s": statistics.median(epoch_cpu[1:] or epoch_cpu),
        "epochs_s": epoch_wall,
        "ref_pass_s": ref_pass,
        "step_s": statistics.median(later),
        "steps_s": steps_wall,
    }


def run_rlhf_fast(epochs: int, n_pairs: int, workdir: Path) -> dict[str, Any]:
    import rlhf_fast
    from rlhf_fast.data import PreferencePair
    from rlhf_fast.trainers.dpo import DPOConfig, DPOTrainer

    paths = models(workdir)
    pairs = [PreferencePair(**p) for p in make_pairs(n_pairs)]
    steps_per_epoch = n_pairs // BATCH
    warm_up(paths["policy"])
    ref_clock = [0.0, 0.0]  # wall, CPU of the one-off reference pass
    cached = DPOTrainer._cached

    def timed_cached(self: Any, *args: Any) -> Any:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            return cached(self, *args)
        finally:
            ref_clock[0] += time.perf_counter() - start
            ref_clock[1] += time.process_time() - cpu_start

    DPOTrainer._cached = timed_cached  # type: ignore[method-assign]
    set_up = time.perf_counter()
    config = DPOConfig(
        output_dir=str(workdir / "rlhf_fast"),
        policy=str(paths["policy"]),
        beta=BETA,
        loss_type="sigmoid",
        batch_size=BATCH,
        learning_rate=LR,
        warmup_steps=0,
        max_steps=epochs * steps_per_epoch,
        max_length=MAX_LENGTH,
        eval_every=10**6,
        device="cpu",
        tensorboard=False,
        progress=False,
    )
    trainer = DPOTrainer(config, pairs=pairs, eval_pairs=[])
    rows = [r for pair in trainer.train_rows for r, _ in pair]
    assert max(len(r) for r in rows) < MAX_LENGTH, "a pair reaches max_length"
    durations, cpu, losses, accuracies = [], [], [], []
    for _ in range(epochs * steps_per_epoch):
        start, cpu_start = time.perf_counter(), time.process_time()
        metrics = trainer.train_step()
        trainer.step += 1
        durations.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        losses.append(metrics["train/loss"])
        accuracies.append(metrics["train/rewards/accuracies"])
    whole = time.perf_counter() - set_up
    epoch_wall = [
        sum(durations[e * steps_per_epoch : (e + 1) * steps_per_epoch]) for e in range(epochs)
    ]
    epoch_cpu = [sum(cpu[e * steps_per_epoch : (e + 1) * steps_per_epoch]) for e in range(epochs)]
    epoch_wall[0] += ref_clock[0]  # the one-off reference pass belongs to the first epoch
    epoch_cpu[0] += ref_clock[1]
    return {
        "version": rlhf_fast.__version__,
        **epoch_figures(epoch_wall, epoch_cpu, durations, ref_clock[0]),
        "step_cpu_s": statistics.median(cpu[steps_per_epoch:] or cpu),
        "whole_run_s": whole,
        "peak_rss_mib": peak_rss_mib(),
        **learning(losses, accuracies, steps_per_epoch),
    }


def learning(losses: list[float], accuracies: list[float], per_epoch: int) -> dict[str, Any]:
    epochs = [losses[i : i + per_epoch] for i in range(0, len(losses), per_epoch)]
    accs = [accuracies[i : i + per_epoch] for i in range(0, len(accuracies), per_epoch)]
    loss_per_epoch = [statistics.fmean(e) for e in epochs]
    return {
        "loss_per_epoch": loss_per_epoch,
        "reward_accuracy_per_epoch": [statistics.fmean(a) for a in accs],
        "first_step_loss": losses[0],
        "last_step_loss": losses[-1],
        "learns": all(map(lambda x: x == x and abs(x) < 1e6, losses))
        and loss_per_epoch[-1] < loss_per_epoch[0],
    }


def run_trl(epochs: int, n_pairs: int, workdir: Path, precompute: bool) -> dict[str, Any]:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from rlhf_fast.tokenizer import load_tokenizer

    paths = models(workdir)
    pairs = make_pairs(n_pairs)
    steps_per_epoch = n_pairs // BATCH
    warm_up(paths["policy"])
    ref_clock = [0.0, 0.0]
    precompute_fn = DPOTrainer._precompute_ref_logps

    def timed_precompute(self: Any, *args: Any) -> Any:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            return precompute_fn(self, *args)
        finally:
            ref_clock[0] += time.perf_counter() - start
            ref_clock[1] += time.process_time() - cpu_start

    DPOTrainer._precompute_ref_logps = timed_precompute  # type: ignore[method-assign]
    set_up = time.perf_counter()
    tok = hf_byte_tokenizer()
    ours = load_tokenizer(str(paths["policy"]))
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"], local_files_only=True)
    args = DPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        num_train_epochs=epochs,
        loss_type=["sigmoid"],
        beta=BETA,
        learning_rate=LR,
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=MAX_LENGTH,
        truncation_mode="keep_start",
        padding_free=False,
        precompute_ref_log_probs=precompute,
        disable_dropout=True,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[tuple[float, float]] = []
            self.epochs: list[tuple[float, float]] = []

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.steps.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.steps.append((time.perf_counter(), time.process_time()))

        def on_epoch_begin(self, *a: Any, **k: Any) -> None:
            self.epochs.append((time.perf_counter(), time.process_time()))

        def on_epoch_end(self, *a: Any, **k: Any) -> None:
            self.epochs.append((time.perf_counter(), time.process_time()))

    clock = Clock()
    trainer = DPOTrainer(
        model=policy,
        args=args,
        train_dataset=Dataset.from_dict({k: [p[k] for p in pairs] for k in pairs[0]}),
        processing_class=tok,
        callbacks=[clock],
    )
    for row, pair in zip(trainer.train_dataset, pairs):  # the same token ids as ours
        eos = [tok.eos_token_id]
        assert row["prompt_ids"] == ours.encode(pair["prompt"])
        assert row["chosen_ids"] == ours.encode(pair["chosen"]) + eos
        assert row["rejected_ids"] == ours.encode(pair["rejected"]) + eos
        longest = len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        assert longest < MAX_LENGTH, "a pair reaches max_length"
    trainer.train()
    whole = time.perf_counter() - set_up
    pairs_of = lambda xs: list(zip(xs[0::2], xs[1::2]))  # noqa: E731
    durations = [b[0] - a[0] for a, b in pairs_of(clock.steps)]
    step_cpu = [b[1] - a[1] for a, b in pairs_of(clock.steps)]
    epoch_wall = [b[0] - a[0] for a, b in pairs_of(clock.epochs)]
    epoch_cpu = [b[1] - a[1] for a, b in pairs_of(clock.epochs)]
    epoch_wall[0] += ref_clock[0]  # precomputed in the constructor, before the first epoch
    epoch_cpu[0] += ref_clock[1]
    logs = [r for r in trainer.state.log_history if "loss" in r and "rewards/accuracies" in r]
    return {
        "version": trl.__version__,
        "precompute_ref_log_probs": precompute,
        **epoch_figures(epoch_wall, epoch_cpu, durations, ref_clock[0]),
        "step_cpu_s": statistics.median(step_cpu[steps_per_epoch:] or step_cpu),
        "whole_run_s": whole,
        "peak_rss_mib": peak_rss_mib(),
        **learning(
            [r["loss"] for r in logs], [r["rewards/accuracies"] for r in logs], steps_per_epoch
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs (the first counted)")
    parser.add_argument(
        "--pairs", type=int, default=PAIRS, help="training pairs (a multiple of 32)"
    )
    parser.add_argument("--only", choices=SIDES, default=None)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads per side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.pairs % BATCH:
        parser.error(f"--pairs: expected a multiple of {BATCH}, got {args.pairs}")
    if args.only:  # the child process: one trainer, its result as JSON on the last line
        with tempfile.TemporaryDirectory() as tmp:
            if args.only == "rlhf_fast":
                res = run_rlhf_fast(args.epochs, args.pairs, Path(tmp))
            else:
                res = run_trl(args.epochs, args.pairs, Path(tmp), args.only == "trl_precompute")
            print(json.dumps(res))
        return
    sample = make_pairs(args.pairs)
    result: dict[str, Any] = {
        "command": " ".join(["python", "benches/e2e_dpo.py", *sys.argv[1:]]),
        "work": {
            "pairs": args.pairs,
            "batch_pairs": BATCH,
            "steps_per_epoch": args.pairs // BATCH,
            "epochs": args.epochs,
            "mean_prompt_tokens": statistics.fmean(len(p["prompt"].encode()) for p in sample),
            "mean_response_tokens": statistics.fmean(
                len(p[k].encode()) + 1 for p in sample for k in ("chosen", "rejected")
            ),
            "loss": "sigmoid",
            "beta": BETA,
            "learning_rate": LR,
            "max_length": MAX_LENGTH,
            "gradient_accumulation_steps": 1,
            "dtype": "float32",
            "threads": args.threads,
            "model": "small-gpt2 shape (4 x 256, vocab 260)",
        },
        "machine": _machine(args.threads),
    }
    for side in SIDES:
        options = ["--epochs", str(args.epochs), "--pairs", str(args.pairs)]
        result[side] = run_side(__file__, side, [*options, "--threads", str(args.threads)])
    ours = result.get("rlhf_fast", {})
    result["speedup"] = {}
    for peer in ("trl", "trl_precompute"):
        theirs = result.get(peer, {})
        if "step_s" not in ours or "step_s" not in theirs:
            continue
        ratios = {
            k: theirs[k] / ours[k]
            for k in (
                "first_epoch_s",
                "later_epoch_s",
                "first_epoch_cpu_s",
                "later_epoch_cpu_s",
                "step_s",
                "whole_run_s",
            )
        }
        result["speedup"][peer] = ratios
        print(
            f"vs {peer}: rlhf_fast is {ratios['first_epoch_s']:.2f}x per first epoch, "
            f"{ratios['later_epoch_s']:.2f}x per later epoch, {ratios['step_s']:.2f}x per step, "
            f"{ratios['whole_run_s']:.2f}x over the whole run"
        )
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
