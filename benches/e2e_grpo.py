"""GRPO end to end: rlhf_fast's GRPOTrainer against TRL 1.12.0's GRPOTrainer on the same work.

The work, on both sides: the built-in ``small-gpt2`` shape (GPT-2, 4 layers, 256 wide, byte
vocabulary of 260, ~3.3 M parameters; ``benches/e2e_ppo.py`` builds it), a frozen reference,
a reward model of the policy's shape (fresh weights: the timings do not depend on what it
learned); per step 8 prompts x 8 completions (group size 8) of at most 48 tokens, sampled at
temperature 1 (no top-k / top-p) and stopped at ``<eos>``; advantages over the group's std;
clipped surrogate (epsilon 0.2) with the k3 KL to the reference (beta 0.04), token-level
aggregation (TRL's ``loss_type="dapo"``, our ``loss_aggregation="token"``); one epoch, one
AdamW step per rollout; float32 (TRL's ``GRPOConfig`` defaults to bf16, which this CPU
emulates at many times the cost: ``bf16=False`` here); CPU, 2 torch threads.

Each trainer runs in its own process: one warm-up step, then ``--steps`` timed ones (median
reported, wall and CPU seconds), and ``whole_run_s``, from building the trainer to the end of
the last step. On a shared machine the CPU seconds of a one-thread run (``--threads 1``) are
the steadier measure of the work each side does.

    .venv-bench/bin/python benches/e2e_grpo.py --output benches/results/e2e_grpo.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from e2e_ppo import SUBJECTS, build_models, peak_rss_mib  # noqa: E402

THREADS, PROMPTS_PER_STEP, GROUP, MAX_TOKENS, BETA, LR = 2, 8, 8, 48, 0.04, 1e-5


def prompts(n: int) -> list[str]:
    return [f"Review of the {SUBJECTS[i % 8]} #{i}:" for i in range(n)]


def models(workdir: Path) -> dict[str, Path]:
    return build_models("small", workdir)


def run_rlhf_fast(steps: int, workdir: Path) -> dict[str, Any]:
    import rlhf_fast
    from rlhf_fast.trainers.grpo import GRPOConfig, GRPOTrainer

    paths = models(workdir)
    set_up = time.perf_counter()
    config = GRPOConfig(
        output_dir=str(workdir / "rlhf_fast"),
        policy=str(paths["policy"]),
        reward_model=str(paths["reward_model"]),
        prompts_per_step=PROMPTS_PER_STEP,
        group_size=GROUP,
        minibatch_size=PROMPTS_PER_STEP * GROUP,
        epochs=1,
        max_new_tokens=MAX_TOKENS,
        kl_coef=BETA,
        learning_rate=LR,
        normalize="std",
        loss_aggregation="token",
        max_steps=steps + 1,
        device="cpu",
        tensorboard=False,
        progress=False,
        normalize_scores=False,
    )
    trainer = GRPOTrainer(config, prompts=prompts(PROMPTS_PER_STEP * (steps + 1)))
    durations, cpu, tokens = [], [], []
    for _ in range(steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        metrics = trainer.train_step()
        trainer.step += 1
        durations.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        tokens.append(metrics["completions/mean_length"] * PROMPTS_PER_STEP * GROUP)
    whole = time.perf_counter() - set_up
    return {
        "version": rlhf_fast.__version__,
        "step_s": statistics.median(durations[1:]),
        "steps_s": durations[1:],
        "cpu_s": statistics.median(cpu[1:]),
        "whole_run_s": whole,
        "peak_rss_mib": peak_rss_mib(),
        "tokens": statistics.median(tokens[1:]),
    }


def hf_byte_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` that gives the same ids as rlhf_fast's ``bytes`` tokenizer
    (4 special tokens, then the 256 bytes): TRL's GRPOTrainer accepts only Hugging Face
    tokenizers. A byte-level BPE without merges, so every byte is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    try:
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:  # older transformers
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    chars = bytes_to_unicode()
    vocab = {
        "<pad>": 0,
        "<eos>": 1,
        "<bos>": 2,
        "<unk>": 3,
        **{chars[b]: 4 + b for b in range(256)},
    }
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


def run_trl(steps: int, workdir: Path) -> dict[str, Any]:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, GPT2ForSequenceClassification, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhf_fast.tokenizer import load_tokenizer

    paths = models(workdir)
    set_up = time.perf_counter()
    tok = hf_byte_tokenizer()
    ours = load_tokenizer(str(paths["policy"]))
    assert all(tok(p, add_special_tokens=False)["input_ids"] == ours.encode(p) for p in prompts(8))
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"], local_files_only=True)
    cls_config = policy.config.__class__.from_dict(policy.config.to_dict())
    cls_config.num_labels = 1
    cls_config.pad_token_id = tok.pad_token_id
    torch.manual_seed(1)
    reward_model = GPT2ForSequenceClassification(cls_config)
    dataset = Dataset.from_dict({"prompt": prompts(PROMPTS_PER_STEP * (steps + 1))})
    args = GRPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=PROMPTS_PER_STEP * GROUP,
        num_generations=GROUP,
        max_completion_length=MAX_TOKENS,
        num_iterations=1,
        beta=BETA,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=LR,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_steps=steps + 1,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        gradient_accumulation_steps=1,
        shuffle_dataset=False,
    )

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.cpu: list[float] = []

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())

    clock = StepClock()
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=[reward_model],
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        reward_processing_classes=[tok],
        callbacks=[clock],
    )
    trainer.train()
    whole = time.perf_counter() - set_up
    durations = [b - a for a, b in zip(clock.stamps[0::2], clock.stamps[1::2])]
    cpu = [b - a for a, b in zip(clock.cpu[0::2], clock.cpu[1::2])]
    lengths = [
        r["completions/mean_length"]
        for r in trainer.state.log_history
        if "completions/mean_length" in r
    ]
    return {
        "version": trl.__version__,
        "step_s": statistics.median(durations[1:]),
        "steps_s": durations[1:],
        "cpu_s": statistics.median(cpu[1:]),
        "whole_run_s": whole,
        "peak_rss_mib": peak_rss_mib(),
        "tokens": statistics.median(lengths[1:]) * PROMPTS_PER_STEP * GROUP if lengths else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--only", choices=["rlhf_fast", "trl"], default=None)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads per side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only:  # the child process: one trainer, its result as JSON on the last line
        with tempfile.TemporaryDirectory() as tmp:
            run = run_rlhf_fast if args.only == "rlhf_fast" else run_trl
            print(json.dumps(run(args.steps, Path(tmp))))
        return
    result: dict[str, Any] = {
        "work": {
            "prompts_per_step": PROMPTS_PER_STEP,
            "group_size": GROUP,
            "max_new_tokens": MAX_TOKENS,
            "beta": BETA,
            "epochs": 1,
            "dtype": "float32",
            "threads": args.threads,
            "model": "small-gpt2 shape (4 x 256, vocab 260)",
        },
        "machine": _machine(args.threads),
    }
    for side in ("rlhf_fast", "trl"):
        result[side] = run_side(
            __file__, side, ["--steps", str(args.steps), "--threads", str(args.threads)]
        )
    if "step_s" in result.get("rlhf_fast", {}) and "step_s" in result.get("trl", {}):
        result["speedup_step"] = result["trl"]["step_s"] / result["rlhf_fast"]["step_s"]
        result["speedup_whole_run"] = (
            result["trl"]["whole_run_s"] / result["rlhf_fast"]["whole_run_s"]
        )
        print(
            f"rlhf_fast is {result['speedup_step']:.2f}x TRL per step, "
            f"{result['speedup_whole_run']:.2f}x over the whole run"
        )
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


def run_side(script: str, side: str, options: list[str]) -> dict[str, Any]:
    """One trainer's result: ``script --only side *options`` in a child process, which prints
    its result as JSON on its last line; ``{"error": ...}`` (and its stderr shown) if it fails.
    The per-step and per-epoch lists are left out of what is printed here."""
    out = subprocess.run(
        [sys.executable, script, "--only", side, *options],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return {"error": out.stderr.strip().splitlines()[-1:]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(side, json.dumps({k: v for k, v in result.items() if k not in ("steps_s", "epochs_s")}))
    return result


def _machine(threads: int) -> str:
    import platform

    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor()
    load = open("/proc/loadavg").read().split()[0] if Path("/proc/loadavg").exists() else "?"
    return f"{model}, torch {torch.__version__}, {threads} threads, load average {load} at start"


if __name__ == "__main__":
    main()
