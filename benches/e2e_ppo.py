"""PPO end to end: rlhf_fast's PPOTrainer against TRL 1.12.0's PPO trainer on the same work.

Shapes (``--shape``):
- ``small`` (default): the built-in ``small-gpt2`` (GPT-2, 4 layers, 256 wide, 4 heads,
  byte-level vocabulary of 260, ~3.3 M parameters); 64 prompts, 48 sampled tokens.
- ``gpt2-124m``: GPT-2-124M's shape (12 layers, 768 wide, 12 heads, 50,257-token vocabulary,
  random init from a config); 16 prompts, 64 sampled tokens.
Both sides: a policy and a frozen reference, a reward model of the policy's shape (fresh
weights; the timings do not depend on what they learned), TRL's separate value model of that
shape; temperature 1 (no top-k/top-p), k1 KL penalty, GAE (gamma 1, lam 0.95), whitened
advantages, 4 PPO epochs x 4 minibatches with one AdamW step each; CPU (2 torch threads) or
one CUDA device (``--device cuda``, as ``benches/gpu_check.sh`` runs it).
Both stop a response at ``<eos>`` (TRL: ``stop_token="eos"``; it still computes over every
position), and tokens/s counts each side's response tokens up to and including ``<eos>``.
rlhf_fast runs with ``PPOConfig``'s defaults unless ``--levers`` says otherwise.

Each trainer runs in a process of its own (so that its peak RSS is its own): one warm-up
iteration, then ``--iterations`` timed ones (median reported), and ``whole_run_s``, the time
from building the trainer to the end of the last iteration (set-up included). For rlhf_fast
the time inside the Rust kernels (every ``rlhf_fast._native`` call) is summed.

``--lever-table`` measures each of rlhf_fast's speed levers alone and all together, against
all off and against TRL, and writes a markdown table next to the JSON.

On a machine shared with other jobs, the whole comparison can run at real-time priority so
that background work does not land on one trainer's turn (the committed results were taken
this way): ``chrt -f 10 .venv-bench/bin/python benches/e2e_ppo.py ...``.

    .venv-bench/bin/python benches/e2e_ppo.py --rounds 3 --output benches/results/e2e.json
    .venv-bench/bin/python benches/e2e_ppo.py --shape gpt2-124m --iterations 1 \
        --output benches/results/e2e_gpt2_124m.json
    .venv-bench/bin/python benches/e2e_ppo.py --lever-table --output benches/results/ppo_levers.json
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

EPOCHS, MINIBATCHES, THREADS = 4, 4, 2
SHAPES: dict[str, dict[str, Any]] = {
    "small": {
        "n_prompts": 64,
        "response_length": 48,
        "model": {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 256},
        "vocab_size": 260,
    },
    "gpt2-124m": {
        "n_prompts": 16,
        "response_length": 64,
        "model": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024},
        "vocab_size": 50257,
    },
}
N_PROMPTS = 64  # set from --shape
DEVICE = "cpu"  # set from --device


def build_models(shape: str, workdir: Path) -> dict[str, Path]:
    """Policy (with its tokenizer) and reward model of ``shape``, written to ``workdir``.

    The tokenizer is bytes plus made-up whole words up to the shape's vocabulary size, so the
    LM head has its real width and every sampled id decodes.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf_fast.models import RewardModel
    from rlhf_fast.tokenizer import Tokenizer

    spec = SHAPES[shape]
    tok = Tokenizer(words=[f"w{i}" for i in range(spec["vocab_size"] - 260)])
    config = GPT2Config(
        vocab_size=len(tok),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **spec["model"],
    )
    paths = {"policy": workdir / "policy", "reward_model": workdir / "reward_model"}
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(paths["policy"])
    tok.save_pretrained(paths["policy"])
    torch.manual_seed(1)
    RewardModel.from_causal_lm(GPT2LMHeadModel(config)).save_pretrained(paths["reward_model"])
    return paths


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# The products the benches' prompts review (e2e_grpo's too).
SUBJECTS = [
    "kettle",
    "backpack",
    "headphones",
    "desk lamp",
    "water bottle",
    "notebook",
    "keyboard",
    "umbrella",
]


def prompts() -> list[str]:
    openers = ["Review of the", "My thoughts on this", "Honest review:", "After a month with the"]
    return [f"{openers[i % 4]} {SUBJECTS[i % 8]} #{i}:" for i in range(N_PROMPTS)]


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


def generate_then_forward(
    causal_lm,
    query,
    query_mask,
    *,
    max_new_tokens,
    eos_token_id,
    pad_token_id,
    temperature,
    top_k,
    top_p,
    value_fn=None,
):
    """``lean_sampling`` off: ``model.generate``, then a full forward for logprobs and values."""
    from rlhf_fast.models import position_ids_from_mask, token_logprobs
    from rlhf_fast.sampling import Samples

    out = causal_lm.generate(
        input_ids=query,
        attention_mask=query_mask,
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    n_prompt = query.shape[1]
    tokens = out[:, n_prompt:]
    is_eos = tokens == eos_token_id
    mask = (is_eos.long().cumsum(-1) - is_eos.long()) == 0
    tokens = tokens.masked_fill(~mask, pad_token_id)
    ids = torch.cat([query, tokens], 1)
    attention = torch.cat([query_mask, mask.long()], 1)
    full = causal_lm(
        input_ids=ids,
        attention_mask=attention,
        position_ids=position_ids_from_mask(attention),
        use_cache=False,
        output_hidden_states=value_fn is not None,
    )
    logprobs = token_logprobs(full.logits[:, n_prompt - 1 : -1] / temperature, tokens) * mask
    values = None
    if value_fn is not None:
        values = value_fn(full.hidden_states[-1][:, n_prompt - 1 : -1]) * mask
    return Samples(tokens, mask, logprobs, values, is_eos.any(-1))


def run_rlhf_fast(
    iterations: int, workdir: Path, shape: str, levers: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """``levers``: the ones switched on (the others off); None: ``PPOConfig``'s defaults."""
    import rlhf_fast
    import rlhf_fast.models
    import rlhf_fast.trainers.ppo
    import rlhf_fast.trainers.ppo_rollout
    from rlhf_fast.trainers.ppo import PPOConfig, PPOTrainer

    chosen = (
        {}
        if levers is None
        else {
            "shared_value_trunk": "shared_trunk" in levers,
            "group_by_length": "group_by_length" in levers,
        }
    )
    levers = LEVERS if levers is None else levers
    if "response_head" not in levers:  # logits over the whole sequence, then select
        rlhf_fast.models.causal_lm_parts = lambda causal_lm: None
    if "fused_gelu" not in levers:
        rlhf_fast.trainers.ppo.fuse_activations = lambda model: model
    if "lean_sampling" not in levers:
        rlhf_fast.trainers.ppo_rollout.sample_responses = generate_then_forward

    paths = build_models(shape, workdir)
    set_up = time.perf_counter()
    config = PPOConfig(
        output_dir=str(workdir / "rlhf_fast"),
        policy=str(paths["policy"]),
        reward_model=str(paths["reward_model"]),
        rollout_batch_size=N_PROMPTS,
        minibatch_size=N_PROMPTS // MINIBATCHES,
        ppo_epochs=EPOCHS,
        max_new_tokens=SHAPES[shape]["response_length"],
        kl_estimator="k1",
        gamma=1.0,
        lam=0.95,
        device=DEVICE,
        tensorboard=False,
        progress=False,
        max_steps=iterations + 1,
        **chosen,
    )
    trainer = PPOTrainer(config, prompts=prompts())
    clock = KernelClock()
    records = []
    for step in range(iterations + 1):
        clock.seconds, clock.calls = 0.0, 0
        cpu_start = time.process_time()
        start = time.perf_counter()
        batch = trainer.rollout(trainer.prompts_for(step))
        rolled = time.perf_counter()
        trainer.train_step(batch)
        trainer.step += 1
        end = time.perf_counter()
        records.append(
            {
                "iteration_s": end - start,
                "cpu_s": time.process_time() - cpu_start,
                "rollout_s": rolled - start,
                "train_s": end - rolled,
                "kernel_s": clock.seconds,
                "kernel_calls": clock.calls,
                "tokens": int(batch.response_mask.sum().item()),
            }
        )
    whole_run = time.perf_counter() - set_up
    timed = records[1:]
    median = statistics.median(r["iteration_s"] for r in timed)
    tokens = statistics.median(r["tokens"] for r in timed)
    kernel = statistics.median(r["kernel_s"] for r in timed)
    return {
        "version": rlhf_fast.__version__,
        "iteration_s": median,
        "whole_run_s": whole_run,
        "peak_rss_mib": peak_rss_mib(),
        "iterations_s": [r["iteration_s"] for r in timed],
        "tokens": tokens,
        "cpu_s": statistics.median(r["cpu_s"] for r in timed),
        "tokens_per_s": tokens / median,
        "kernel_s": kernel,
        "kernel_share": kernel / median,
        "kernel_calls": timed[-1]["kernel_calls"],
        "phases_s": {
            "rollout (generate + scoring passes)": statistics.median(r["rollout_s"] for r in timed),
            "kernels": kernel,
            "PPO epochs + buffer": statistics.median(r["train_s"] for r in timed) - kernel,
        },
        "parameters": sum(p.numel() for p in trainer.model.policy.parameters()),
        "levers": [
            k
            for k in LEVERS
            if k in levers
            and (
                k not in ("shared_trunk", "group_by_length")
                or getattr(config, {"shared_trunk": "shared_value_trunk"}.get(k, k))
            )
        ],
    }


def run_trl(iterations: int, workdir: Path, shape: str) -> dict[str, Any]:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, GPT2ForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from rlhf_fast.tokenizer import load_tokenizer

    paths = build_models(shape, workdir)
    set_up = time.perf_counter()
    tok = load_tokenizer(str(paths["policy"]))
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"], local_files_only=True)
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
        rows = [
            [tok.pad_token_id] * (width - len(f["input_ids"])) + list(f["input_ids"])
            for f in features
        ]
        return {"input_ids": torch.tensor(rows, dtype=torch.long)}

    args = PPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=N_PROMPTS,
        gradient_accumulation_steps=1,
        num_mini_batches=MINIBATCHES,
        num_ppo_epochs=EPOCHS,
        local_rollout_forward_batch_size=N_PROMPTS,
        response_length=SHAPES[shape]["response_length"],
        total_episodes=N_PROMPTS * (iterations + 1),
        stop_token="eos",
        kl_estimator="k1",
        kl_coef=0.05,
        gamma=1.0,
        lam=0.95,
        learning_rate=1e-4,
        num_sample_generations=0,
        report_to=[],
        save_strategy="no",
        use_cpu=DEVICE == "cpu",
        seed=0,
        disable_tqdm=True,
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
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
        data_collator=collate,
        callbacks=[clock],
    )
    trainer.train()
    whole_run = time.perf_counter() - set_up
    durations = [b - a for a, b in zip(clock.stamps[:-1], clock.stamps[1:])][1:]
    median = statistics.median(durations)
    tokens = statistics.median(counted[1:])
    cpu = [b - a for a, b in zip(clock.cpu[:-1], clock.cpu[1:])][1:]
    return {
        "version": trl.__version__,
        "iteration_s": median,
        "iterations_s": durations,
        "whole_run_s": whole_run,
        "peak_rss_mib": peak_rss_mib(),
        "cpu_s": statistics.median(cpu),
        "tokens": tokens,
        "tokens_per_s": tokens / median,
        "kernel_share": None,
        "parameters": sum(p.numel() for p in policy.parameters()),
    }


def lever_configurations() -> dict[str, tuple[str, ...]]:
    """Every lever alone and all together, against all off."""
    configs = {"all off": ()}
    configs.update({f"{lever} alone": (lever,) for lever in LEVERS})
    configs["all on"] = LEVERS
    return configs


def run_child(trainer: str, args: argparse.Namespace, levers: tuple[str, ...] | None) -> dict:
    """One trainer in a fresh process: its own peak RSS, no state left by the other."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [
            sys.executable,
            __file__,
            "--only",
            trainer,
            "--shape",
            args.shape,
            "--iterations",
            str(args.iterations),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
            "--output",
            str(out),
        ]
        if levers is not None:
            command += ["--levers", ",".join(levers) or "none"]
        done = subprocess.run(command, check=False)
        if done.returncode != 0 or not out.exists():
            return {"error": f"{trainer} exited with status {done.returncode}"}
        return json.loads(out.read_text())[trainer]


def lever_table(result: dict[str, Any]) -> str:
    """Markdown: configuration -> s/iteration -> speed-up over all off -> over TRL."""
    base = result["rlhf_fast"]["all off"]["iteration_s"]
    trl = result.get("trl", {}).get("iteration_s")
    lines = [
        "| rlhf_fast levers | s/iteration | x all off | x TRL | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    rows = list(result["rlhf_fast"].items())
    if trl:
        rows.append(("TRL " + result["trl"]["version"], result["trl"]))
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | |")
            continue
        vs_trl = f"{trl / r['iteration_s']:.2f}" if trl else "-"
        lines.append(
            f"| {name} | {r['iteration_s']:.2f} | {base / r['iteration_s']:.2f} | "
            f"{vs_trl} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    global N_PROMPTS, DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per trainer")
    parser.add_argument(
        "--only",
        choices=["rlhf_fast", "trl"],
        default=None,
        help="run this trainer in this process (default: each in a child)",
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--output", type=Path, default=Path("benches/results/e2e.json"))
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads")
    parser.add_argument(
        "--levers",
        default=None,
        help="rlhf_fast only: comma-separated levers to switch on, the others off "
        f"({', '.join(LEVERS)}; 'none' for all off); default: PPOConfig's defaults",
    )
    parser.add_argument(
        "--lever-table",
        action="store_true",
        help="every lever alone and all together, all off, and TRL",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the whole comparison, alternating the trainers (noisy "
        "machines); each figure is the median over rounds",
    )
    args = parser.parse_args()
    N_PROMPTS, DEVICE = SHAPES[args.shape]["n_prompts"], args.device
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    chosen = None
    if args.levers is not None:
        chosen = tuple(x for x in args.levers.split(",") if x and x != "none")
        unknown = set(chosen) - set(LEVERS)
        if unknown:
            parser.error(f"--levers: unknown {sorted(unknown)}; choose from {LEVERS}")
    result: dict[str, Any] = {
        "description": __doc__.split("\n\n")[1].replace("\n", " "),
        "shape": args.shape,
        "iterations": args.iterations,
        "threads": args.threads,
        "rounds": args.rounds,
        "device": args.device,
        "load_average_start": os.getloadavg(),
    }
    if args.only:  # the child: one trainer, this process
        with tempfile.TemporaryDirectory() as tmp:
            try:
                if args.only == "rlhf_fast":
                    result["rlhf_fast"] = run_rlhf_fast(
                        args.iterations, Path(tmp), args.shape, chosen
                    )
                else:
                    result["trl"] = run_trl(args.iterations, Path(tmp), args.shape)
            except Exception as err:  # report a failing trainer instead of losing the other
                traceback.print_exc()
                result[args.only] = {"error": f"{type(err).__name__}: {err}"}
    else:
        runs: dict[str, list[tuple[str, tuple[str, ...] | None]]] = {
            "trl": [("trl", None)],
            "rlhf_fast": [(name, levers) for name, levers in lever_configurations().items()]
            if args.lever_table
            else [("rlhf_fast", chosen)],
        }
        rounds: dict[str, list[dict]] = {}
        for round_index in range(args.rounds):
            order = [("trl", runs["trl"][0])] + [("rlhf_fast", r) for r in runs["rlhf_fast"]]
            if round_index % 2:  # alternate who goes first
                order.reverse()
            for key, (name, levers) in order:
                r = run_child("trl" if key == "trl" else "rlhf_fast", args, levers)
                rounds.setdefault(name, []).append(r)
                if "error" not in r:
                    print(
                        f"{name}: {r['iteration_s']:.2f} s/iteration, "
                        f"{r['whole_run_s']:.1f} s whole run, {r['peak_rss_mib']:.0f} MiB",
                        flush=True,
                    )

        def median_of(records: list[dict]) -> dict:
            good = [r for r in records if "error" not in r]
            if not good:
                return records[-1]
            pick = sorted(good, key=lambda r: r["iteration_s"])[len(good) // 2]
            return {**pick, "rounds_iteration_s": [r["iteration_s"] for r in good]}

        result["trl"] = median_of(rounds["trl"])
        if args.lever_table:
            result["rlhf_fast"] = {name: median_of(rounds[name]) for name, _ in runs["rlhf_fast"]}
        else:
            result["rlhf_fast"] = median_of(rounds["rlhf_fast"])
            # A busy machine slows whichever trainer runs during the busy spell: compare the
            # two within each round (they run back to back) and report the median ratio.
            paired = [
                (t, r)
                for t, r in zip(rounds["trl"], rounds["rlhf_fast"])
                if "error" not in t and "error" not in r
            ]
            if paired:
                per_iteration = [t["iteration_s"] / r["iteration_s"] for t, r in paired]
                whole = [t["whole_run_s"] / r["whole_run_s"] for t, r in paired]
                result["speedup_iteration_rounds"] = per_iteration
                result["speedup_whole_run_rounds"] = whole
                result["speedup_iteration"] = statistics.median(per_iteration)
                result["speedup_whole_run"] = statistics.median(whole)
                print(
                    f"rlhf_fast vs TRL, median over {len(paired)} rounds: "
                    f"{result['speedup_iteration']:.2f}x per iteration "
                    f"({', '.join(f'{x:.2f}' for x in per_iteration)}), "
                    f"{result['speedup_whole_run']:.2f}x whole run "
                    f"({', '.join(f'{x:.2f}' for x in whole)})"
                )
    result["load_average_end"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    if args.lever_table:
        table = lever_table(result)
        args.output.with_suffix(".md").write_text(table)
        print(table)


if __name__ == "__main__":
    sys.exit(main())
