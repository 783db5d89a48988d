"""One PPO iteration end to end, rlhf_fast's PPOTrainer against TRL 1.12.0's PPO trainer.

Same work on both sides: the built-in ``small-gpt2`` (GPT-2, 4 layers, 256 wide, 4 heads,
byte-level vocabulary of 260, ~3.3 M parameters) as policy, a frozen copy as reference, a
separate critic trunk of the same size and a reward model of the same size (fresh weights; the
numbers do not depend on what they learned); 64 prompts, 48 sampled tokens per response
(temperature 1, no top-k/top-p), k1 KL penalty, GAE (gamma 1, lam 0.95), whitened advantages,
4 PPO epochs x 4 minibatches of 16 with one AdamW step each; CPU, 2 torch threads.
Both stop a response at ``<eos>`` (TRL: ``stop_token="eos"``; it still computes over all 48
positions), and tokens/s counts each side's response tokens up to and including ``<eos>``.

Each trainer runs ``--iterations`` iterations after one warm-up iteration; the median is
reported. For rlhf_fast the time inside the Rust kernels (every ``rlhf_fast._native`` call:
KL shaping, GAE, whitening, buffer batching and shuffling) is summed to give their share.

    .venv-bench/bin/python benches/e2e_ppo.py --output benches/results/e2e.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

N_PROMPTS, RESPONSE_LENGTH, EPOCHS, MINIBATCHES, THREADS = 64, 48, 4, 4, 2
MODEL = "small-gpt2"


def prompts() -> list[str]:
    subjects = ["kettle", "backpack", "headphones", "desk lamp", "water bottle", "notebook",
                "keyboard", "umbrella"]
    openers = ["Review of the", "My thoughts on this", "Honest review:", "After a month with the"]
    return [f"{openers[i % 4]} {subjects[i % 8]} #{i}:" for i in range(N_PROMPTS)]


class KernelClock:
    """Sums the wall time of every call into ``rlhf_fast._native`` (the Rust kernels)."""

    def __init__(self) -> None:
        from rlhf_fast import _native

        self.seconds = 0.0
        self.calls = 0
        for name in dir(_native):
            fn = getattr(_native, name)
            if callable(fn) and not name.startswith("_") and not isinstance(fn, type):
                setattr(_native, name, self._wrap(fn))

    def _wrap(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return timed


# The trainer's speed levers. Each can be switched off to measure what it gives alone;
# "off" restores the way the work was done before the lever (TRL's way).
LEVERS = ("shared_trunk", "response_head", "lean_sampling", "group_by_length", "fused_gelu")


def generate_then_forward(causal_lm, query, query_mask, *, max_new_tokens, eos_token_id,
                          pad_token_id, temperature, top_k, top_p, value_fn=None):
    """``lean_sampling`` off: ``model.generate``, then a full forward for logprobs and values."""
    from rlhf_fast.models import position_ids_from_mask, token_logprobs
    from rlhf_fast.sampling import Samples

    out = causal_lm.generate(
        input_ids=query, attention_mask=query_mask, do_sample=True, temperature=temperature,
        top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
        pad_token_id=pad_token_id)
    n_prompt = query.shape[1]
    tokens = out[:, n_prompt:]
    is_eos = tokens == eos_token_id
    mask = (is_eos.long().cumsum(-1) - is_eos.long()) == 0
    tokens = tokens.masked_fill(~mask, pad_token_id)
    ids = torch.cat([query, tokens], 1)
    attention = torch.cat([query_mask, mask.long()], 1)
    full = causal_lm(input_ids=ids, attention_mask=attention,
                     position_ids=position_ids_from_mask(attention), use_cache=False,
                     output_hidden_states=value_fn is not None)
    logprobs = token_logprobs(full.logits[:, n_prompt - 1 : -1] / temperature, tokens) * mask
    values = None
    if value_fn is not None:
        values = value_fn(full.hidden_states[-1][:, n_prompt - 1 : -1]) * mask
    return Samples(tokens, mask, logprobs, values, is_eos.any(-1))


def run_rlhf_fast(iterations: int, workdir: Path,
                  levers: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``levers``: the ones switched on (the others off); None: ``PPOConfig``'s defaults."""
    import rlhf_fast
    import rlhf_fast.models
    import rlhf_fast.trainers.ppo
    from rlhf_fast.models import RewardModel, load_causal_lm
    from rlhf_fast.tokenizer import load_tokenizer
    from rlhf_fast.trainers.ppo import PPOConfig, PPOTrainer

    chosen = {} if levers is None else {
        "shared_value_trunk": "shared_trunk" in levers,
        "group_by_length": "group_by_length" in levers}
    levers = LEVERS if levers is None else levers
    if "response_head" not in levers:  # logits over the whole sequence, then select
        rlhf_fast.models.causal_lm_parts = lambda causal_lm: None
    if "fused_gelu" not in levers:
        rlhf_fast.trainers.ppo.fuse_activations = lambda model: model
    if "lean_sampling" not in levers:
        rlhf_fast.trainers.ppo.sample_responses = generate_then_forward

    tok = load_tokenizer("bytes")
    reward_dir = workdir / "reward_model"
    RewardModel.from_causal_lm(load_causal_lm(MODEL, tok, seed=1)).save_pretrained(reward_dir)
    config = PPOConfig(
        output_dir=str(workdir / "rlhf_fast"), policy=MODEL, tokenizer="bytes",
        reward_model=str(reward_dir), rollout_batch_size=N_PROMPTS,
        minibatch_size=N_PROMPTS // MINIBATCHES, ppo_epochs=EPOCHS, max_new_tokens=RESPONSE_LENGTH,
        kl_estimator="k1", gamma=1.0, lam=0.95, device="cpu", tensorboard=False, progress=False,
        max_steps=iterations + 1, **chosen,
    )
    trainer = PPOTrainer(config, prompts=prompts())
    clock = KernelClock()
    records = []
    for step in range(iterations + 1):
        clock.seconds, clock.calls = 0.0, 0
        cpu_start = time.process_time()
        start = time.perf_counter()
        batch = trainer.rollout(trainer._prompts_for(step))
        rolled = time.perf_counter()
        trainer.train_step(batch)
        trainer.step += 1
        end = time.perf_counter()
        records.append({"iteration_s": end - start, "cpu_s": time.process_time() - cpu_start,
                        "rollout_s": rolled - start,
                        "train_s": end - rolled, "kernel_s": clock.seconds,
                        "kernel_calls": clock.calls,
                        "tokens": int(batch.response_mask.sum().item())})
    timed = records[1:]
    median = statistics.median(r["iteration_s"] for r in timed)
    tokens = statistics.median(r["tokens"] for r in timed)
    kernel = statistics.median(r["kernel_s"] for r in timed)
    return {
        "version": rlhf_fast.__version__, "iteration_s": median,
        "iterations_s": [r["iteration_s"] for r in timed], "tokens": tokens,
        "cpu_s": statistics.median(r["cpu_s"] for r in timed),
        "tokens_per_s": tokens / median, "kernel_s": kernel, "kernel_share": kernel / median,
        "kernel_calls": timed[-1]["kernel_calls"],
        "phases_s": {"rollout (generate + scoring passes)":
                     statistics.median(r["rollout_s"] for r in timed),
                     "kernels": kernel,
                     "PPO epochs + buffer": statistics.median(r["train_s"] for r in timed) - kernel},
        "parameters": sum(p.numel() for p in trainer.model.policy.parameters()),
        "levers": [k for k in LEVERS if k in levers and (
            k not in ("shared_trunk", "group_by_length")
            or getattr(config, {"shared_trunk": "shared_value_trunk"}.get(k, k)))],
    }


def run_trl(iterations: int, workdir: Path) -> dict[str, Any]:
    import trl
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from rlhf_fast.models import load_causal_lm
    from rlhf_fast.tokenizer import load_tokenizer

    tok = load_tokenizer("bytes")
    policy = load_causal_lm(MODEL, tok, seed=0)
    ref_policy = copy.deepcopy(policy)
    torch.manual_seed(1)
    cls_config = copy.deepcopy(policy.config)
    cls_config.num_labels = 1
    value_model = GPT2ForSequenceClassification(cls_config)
    reward_model = GPT2ForSequenceClassification(cls_config)
    ids = [tok.encode(p) for p in prompts()]  # as rlhf_fast encodes them
    dataset = Dataset.from_dict({"input_ids": ids})

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)  # left padding, as generation wants
        rows = [[tok.pad_token_id] * (width - len(f["input_ids"])) + list(f["input_ids"])
                for f in features]
        return {"input_ids": torch.tensor(rows, dtype=torch.long)}

    args = PPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=N_PROMPTS,
        gradient_accumulation_steps=1, num_mini_batches=MINIBATCHES, num_ppo_epochs=EPOCHS,
        local_rollout_forward_batch_size=N_PROMPTS, response_length=RESPONSE_LENGTH,
        total_episodes=N_PROMPTS * (iterations + 1), stop_token="eos", kl_estimator="k1",
        kl_coef=0.05, gamma=1.0, lam=0.95, learning_rate=1e-4, num_sample_generations=0,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
        logging_steps=1,
    )

    class IterationClock(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.cpu: list[float] = []

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())

    import trl.experimental.ppo.ppo_trainer as trl_ppo

    counted: list[int] = []
    truncate = trl_ppo.truncate_response

    def counting_truncate(stop_token_id: int, pad_token_id: int, responses: torch.Tensor):
        is_stop = responses == stop_token_id
        first = torch.where(is_stop.any(1), is_stop.int().argmax(1) + 1, responses.shape[1])
        counted.append(int(first.sum()))
        return truncate(stop_token_id, pad_token_id, responses)

    trl_ppo.truncate_response = counting_truncate
    clock = IterationClock()
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref_policy,
                         reward_model=reward_model, train_dataset=dataset,
                         value_model=value_model, data_collator=collate, callbacks=[clock])
    trainer.train()
    durations = [b - a for a, b in zip(clock.stamps[:-1], clock.stamps[1:])][1:]
    median = statistics.median(durations)
    tokens = statistics.median(counted[1:])
    cpu = [b - a for a, b in zip(clock.cpu[:-1], clock.cpu[1:])][1:]
    return {"version": trl.__version__, "iteration_s": median, "iterations_s": durations,
            "cpu_s": statistics.median(cpu),
            "tokens": tokens, "tokens_per_s": tokens / median, "kernel_share": None,
            "parameters": sum(p.numel() for p in policy.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per trainer")
    parser.add_argument("--only", choices=["rlhf_fast", "trl"], default=None)
    parser.add_argument("--output", type=Path, default=Path("benches/results/e2e.json"))
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads")
    parser.add_argument("--levers", default=None,
                        help="rlhf_fast only: comma-separated levers to switch on, the others off "
                        f"({', '.join(LEVERS)}; 'none' for all off); default: PPOConfig's defaults")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    result: dict[str, Any] = {"description": __doc__.split("\n\n")[1].replace("\n", " "),
                              "iterations": args.iterations, "threads": args.threads}
    runners = {"rlhf_fast": run_rlhf_fast, "trl": run_trl}
    for name, run in runners.items():
        if args.only and name != args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                if name == "rlhf_fast" and args.levers is not None:
                    chosen = tuple(x for x in args.levers.split(",") if x and x != "none")
                    unknown = set(chosen) - set(LEVERS)
                    if unknown:
                        parser.error(f"--levers: unknown {sorted(unknown)}; choose from {LEVERS}")
                    result[name] = run_rlhf_fast(args.iterations, Path(tmp), chosen)
                else:
                    result[name] = run(args.iterations, Path(tmp))
                print(f"{name}: {result[name]['iteration_s']:.2f} s/iteration, "
                      f"{result[name]['tokens_per_s']:.0f} tokens/s", flush=True)
            except Exception as err:  # report a failing trainer instead of losing the other
                traceback.print_exc()
                result[name] = {"error": f"{type(err).__name__}: {err}"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
