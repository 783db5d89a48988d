"""Each peer's own advantage / reward / KL function against the rlhf_fast drop-in that
replaces it (rlhf_fast.integrations.{verl,openrlhf,trl}), on the peer's call pattern:
torch CPU float32 tensors, [512, 2048] token tensors with right-padded rows of random
length (verl: an int64 ``response_mask``; OpenRLHF: a bool ``action_mask``; TRL PPO:
``sequence_lengths``), and 1024 prompts x 16 completions for GRPO/RLOO (verl: ``index``
a numpy array of uid strings; OpenRLHF and TRL: flat group-contiguous rewards).

What runs on the peer side:

- verl 0.9.1: ``core_algos`` / ``torch_functional`` functions, imported.
- OpenRLHF 0.11.2: ``compute_approx_kl``/``compute_reward`` from
  ``openrlhf/models/utils.py`` and the experience maker's two methods from
  ``experience_maker.py``, loaded from the installed source files (the package's
  imports need deepspeed/Ray/vLLM; an empty deepspeed stands in when missing).
- TRL 1.12.0: the advantage lines of ``GRPOTrainer`` / ``RLOOTrainer``
  ``._generate_and_score_completions`` and ``PPOTrainer.train``, cut from the
  installed source and compiled as they are (TRL has no function to call), and
  ``masked_whiten`` from ``trl.experimental.ppo.ppo_trainer``.

Every pair is checked with ``allclose`` before it is timed. The two sides are timed
alternately, one call each per round (after one warm-up call each), so a burst of load
from elsewhere on a shared machine hits both; the median and the fastest round of each
are reported, the speedup from the medians. ``--threads N`` sets torch's and
rlhf_fast's thread counts (default: their own defaults). Each run is stored under its
thread setting in benches/results/integrations.json, and .md is rebuilt from all::

    bash scripts/setup_bench_env.sh
    chrt -f 10 .venv-bench/bin/python benches/integrations_peers.py --threads 1
    chrt -f 10 .venv-bench/bin/python benches/integrations_peers.py
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib.util
import inspect
import json
import statistics
import sys
import textwrap
import time
import types
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from harness import machine_description

import rlhf_fast
from rlhf_fast.integrations import openrlhf as ro
from rlhf_fast.integrations import trl as rt
from rlhf_fast.integrations import verl as rv

B, T = 512, 2048
PROMPTS, G = 1024, 16
GAMMA, LAM, KL_COEF = 1.0, 0.95, 0.05
RESULTS = Path(__file__).parent / "results"


# ------------------------------------------------------------------ loading the peers
def _openrlhf():
    spec = importlib.util.find_spec("openrlhf")
    root = Path(spec.origin).parent
    stub = None
    if importlib.util.find_spec("deepspeed") is None:
        stub = sys.modules.setdefault("deepspeed", types.ModuleType("deepspeed"))
    try:
        uspec = importlib.util.spec_from_file_location(
            "_bench_openrlhf_utils", root / "models/utils.py"
        )
        utils = importlib.util.module_from_spec(uspec)
        uspec.loader.exec_module(utils)
    finally:  # transformers probes find_spec("deepspeed"), which a bare stand-in breaks
        if stub is not None and sys.modules.get("deepspeed") is stub:
            del sys.modules["deepspeed"]
    path = root / "trainer/ppo_utils/experience_maker.py"
    source = path.read_text()
    cls = next(
        n
        for n in ast.parse(source).body
        if isinstance(n, ast.ClassDef) and n.name == "RemoteExperienceMaker"
    )
    ns: dict = {"torch": torch}
    exec("from typing import List, Tuple", ns)
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("get_"):
            code = textwrap.dedent(ast.get_source_segment(source, node))
            exec(compile(code, str(path), "exec"), ns)
    return SimpleNamespace(
        utils=utils,
        gae=ns["get_advantages_and_returns"],
        returns=ns["get_cumulative_returns"],
    )


def _block(fn, first: str, last: str):
    lines = inspect.getsource(fn).splitlines()
    start = next(i for i, line in enumerate(lines) if first in line)
    end = next(i for i, line in enumerate(lines) if i >= start and last in line)
    return compile(textwrap.dedent("\n".join(lines[start : end + 1])), fn.__qualname__, "exec")


# ------------------------------------------------------------------ cases
def _inputs():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    keep = torch.arange(T)[None] < lengths[:, None]
    return SimpleNamespace(
        keep=keep,
        seq_len=lengths - 1,  # TRL: index of the last response token
        rewards=torch.randn(B, T, generator=g) * keep,
        values=torch.randn(B, T, generator=g),
        logprob=-torch.rand(B, T, generator=g) * 5,
        ref_logprob=-torch.rand(B, T, generator=g) * 5,
        scores=torch.randn(B, generator=g),
        group_scores=(torch.rand(PROMPTS * G, generator=g) < 0.5).float()
        + 0.1 * torch.randn(PROMPTS * G, generator=g),
    )


def _verl_cases(x):
    from verl.trainer.ppo import core_algos
    from verl.utils import torch_functional as verl_F

    mask = x.keep.long()
    index = np.array([f"uid-{i // G}" for i in range(PROMPTS * G)], dtype=object)
    tok = x.group_scores[:, None] * torch.ones(1, 4)  # 4 tokens a response: the score is the sum
    tok_mask = torch.ones_like(tok).long()
    return [
        (
            "verl",
            "compute_gae_advantage_return",
            lambda: core_algos.compute_gae_advantage_return(x.rewards, x.values, mask, GAMMA, LAM),
            lambda: rv.compute_gae_advantage_return(x.rewards, x.values, mask, GAMMA, LAM),
        ),
        (
            "verl",
            "compute_grpo_outcome_advantage",
            lambda: core_algos.compute_grpo_outcome_advantage(tok, tok_mask, index),
            lambda: rv.compute_grpo_outcome_advantage(tok, tok_mask, index),
        ),
        (
            "verl",
            "compute_rloo_outcome_advantage",
            lambda: core_algos.compute_rloo_outcome_advantage(tok, tok_mask, index),
            lambda: rv.compute_rloo_outcome_advantage(tok, tok_mask, index),
        ),
        (
            "verl",
            "kl_penalty (low_var_kl)",
            lambda: core_algos.kl_penalty(x.logprob, x.ref_logprob, "low_var_kl"),
            lambda: rv.kl_penalty(x.logprob, x.ref_logprob, "low_var_kl"),
        ),
        (
            "verl",
            "masked_whiten",
            lambda: verl_F.masked_whiten(x.rewards, mask),
            lambda: rv.masked_whiten(x.rewards, mask),
        ),
    ]


def _openrlhf_cases(x):
    peer = _openrlhf()
    mask = x.keep  # OpenRLHF's action_mask is bool
    kl = ro.compute_approx_kl(x.logprob, x.ref_logprob, kl_estimator="k3")
    return [
        (
            "OpenRLHF",
            "get_advantages_and_returns",
            lambda: peer.gae(None, x.values, x.rewards, mask, GAMMA, LAM),
            lambda: ro.get_advantages_and_returns(x.values, x.rewards, mask, GAMMA, LAM),
        ),
        (
            "OpenRLHF",
            "get_cumulative_returns",
            lambda: peer.returns(None, x.rewards, mask, GAMMA),
            lambda: ro.get_cumulative_returns(x.rewards, mask, GAMMA),
        ),
        (
            "OpenRLHF",
            "compute_reward",
            lambda: peer.utils.compute_reward(x.scores, KL_COEF, kl, action_mask=mask),
            lambda: ro.compute_reward(x.scores, KL_COEF, kl, action_mask=mask),
        ),
        (
            "OpenRLHF",
            "compute_approx_kl (k3)",
            lambda: peer.utils.compute_approx_kl(x.logprob, x.ref_logprob, kl_estimator="k3"),
            lambda: ro.compute_approx_kl(x.logprob, x.ref_logprob, kl_estimator="k3"),
        ),
    ]


def _trl_cases(x):
    from trl.experimental.ppo import ppo_trainer as trl_ppo
    from trl.trainer import grpo_trainer, rloo_trainer
    from trl.trainer.utils import nanstd

    marks = ("unscorable_mask = torch.isnan(rewards_per_func)", "advantages = torch.nan_to_num(")
    grpo = _block(grpo_trainer.GRPOTrainer._generate_and_score_completions, *marks)
    rloo = _block(rloo_trainer.RLOOTrainer._generate_and_score_completions, *marks)
    ppo = _block(
        trl_ppo.PPOTrainer.train,
        "response_idxs = torch.arange(responses.shape[1]",
        "advantages = torch.masked_fill(advantages, padding_mask, 0)",
    )
    per_func = x.group_scores[:, None]
    weights = torch.ones(1)

    def run_grpo():
        self = SimpleNamespace(
            multi_objective_aggregation="sum_then_normalize",
            reward_weights=weights,
            scale_rewards="group",
            reward_funcs=[None],
        )
        ns = dict(torch=torch, nanstd=nanstd, self=self, device="cpu")
        ns.update(rewards_per_func=per_func, num_generations=G)
        exec(grpo, ns)
        return ns["advantages"]

    def run_rloo():
        self = SimpleNamespace(
            reward_weights=weights, reward_clip_range=None, beta=0.0, normalize_advantages=False
        )
        ns = dict(torch=torch, nanstd=nanstd, self=self, device="cpu")
        ns.update(rewards_per_func=per_func, num_generations=G)
        exec(rloo, ns)
        return ns["advantages"]

    args = SimpleNamespace(
        kl_estimator="k1", kl_coef=KL_COEF, whiten_rewards=False, gamma=GAMMA, lam=LAM
    )
    responses = torch.zeros(B, T, dtype=torch.long)

    def run_ppo():
        ns = dict(torch=torch, args=args, INVALID_LOGPROB=trl_ppo.INVALID_LOGPROB)
        ns.update(masked_whiten=trl_ppo.masked_whiten, responses=responses)
        ns.update(sequence_lengths=x.seq_len, logprobs=x.logprob, ref_logprobs=x.ref_logprob)
        ns.update(values=x.values, scores=x.scores)
        exec(ppo, ns)
        return ns["rewards"], ns["advantages"], ns["returns"]

    def ours_ppo():
        rewards, _ = rt.ppo_rewards(x.logprob, x.ref_logprob, x.scores, x.seq_len, KL_COEF)
        adv, ret = rt.ppo_advantages(rewards, x.values, x.seq_len, GAMMA, LAM)
        return rewards, adv, ret

    scores = rt.sum_rewards(per_func, weights)
    return [
        ("TRL", "GRPO advantages (scale_rewards=group)", run_grpo,
         lambda: rt.grpo_advantages(scores, G, "group")),
        ("TRL", "RLOO advantages", run_rloo, lambda: rt.rloo_advantages(scores, G)),
        ("TRL", "PPO rewards + GAE + whitening (train())", run_ppo, ours_ppo),
        (
            "TRL",
            "masked_whiten (experimental.ppo)",
            lambda: trl_ppo.masked_whiten(x.rewards, x.keep),
            lambda: rt.masked_whiten(x.rewards, x.keep),
        ),
    ]  # fmt: skip


# ------------------------------------------------------------------ running
def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _max_diff(theirs, ours) -> float:
    return max(
        float((a.double() - b.double()).abs().max())
        for a, b in zip(_as_tuple(theirs), _as_tuple(ours))
    )


def _check(theirs, ours) -> None:
    for a, b in zip(_as_tuple(theirs), _as_tuple(ours)):
        torch.testing.assert_close(b.double(), a.double(), rtol=1e-4, atol=1e-4)


def _interleaved(theirs, ours, rounds: int):
    theirs(), ours()  # warm-up: lazy init, allocator growth
    times: tuple[list[float], list[float]] = ([], [])
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for fn, out in zip((theirs, ours), times):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    finally:
        if was_enabled:
            gc.enable()
    return [(statistics.median(ts), min(ts)) for ts in times]


def _markdown(runs: dict) -> str:
    lines = ["# Peers' functions against the rlhf_fast drop-ins", ""]
    for key, run in runs.items():
        lines += [
            f"## {key}",
            "",
            f"`{run['command']}`; torch CPU float32, tokens [{B}, {T}], groups {PROMPTS} x {G}; "
            f"median (fastest) of {run['rounds']} alternating rounds; torch threads "
            f"{run['threads']['torch']}, rlhf_fast threads {run['threads']['rlhf_fast']}.",
            "",
            "| peer | function | peer ms (min) | rlhf_fast ms (min) | speedup | max abs diff |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in run["rows"]:
            lines.append(
                f"| {r['peer']} | {r['function']} | {r['peer_ms']:.2f} ({r['peer_min_ms']:.2f}) "
                f"| {r['rlhf_fast_ms']:.2f} ({r['rlhf_fast_min_ms']:.2f}) "
                f"| {r['speedup']:.1f}x | {r['max_abs_diff']:.1e} |"
            )
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in run["versions"].items())]
        lines += ["", "Machine: " + "; ".join(f"{k}: {v}" for k, v in run["machine"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed calls per side")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch and rlhf_fast threads (0: their defaults)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        rlhf_fast.set_num_threads(args.threads)

    x = _inputs()
    cases = _verl_cases(x) + _openrlhf_cases(x) + _trl_cases(x)
    rows = []
    for peer, name, theirs, ours in cases:
        t_out, o_out = theirs(), ours()
        _check(t_out, o_out)  # raises before anything is timed
        (t_med, t_min), (o_med, o_min) = _interleaved(theirs, ours, args.rounds)
        rows.append(
            dict(
                peer=peer,
                function=name,
                peer_ms=t_med * 1e3,
                peer_min_ms=t_min * 1e3,
                rlhf_fast_ms=o_med * 1e3,
                rlhf_fast_min_ms=o_min * 1e3,
                speedup=t_med / o_med,
                max_abs_diff=_max_diff(t_out, o_out),
            )
        )
        print(
            f"{peer:9s} {name:44s} {t_med * 1e3:9.2f} ({t_min * 1e3:8.2f}) ms "
            f"{o_med * 1e3:8.2f} ({o_min * 1e3:7.2f}) ms "
            f"{t_med / o_med:7.1f}x  diff {rows[-1]['max_abs_diff']:.1e}",
            flush=True,
        )
    command = "chrt -f 10 .venv-bench/bin/python benches/integrations_peers.py"
    if args.threads:
        command += f" --threads {args.threads}"
    run = {
        "command": command,
        "rounds": args.rounds,
        "threads": {"torch": torch.get_num_threads(), "rlhf_fast": rlhf_fast.get_num_threads()},
        "shapes": {"tokens": [B, T], "groups": [PROMPTS, G], "dtype": "float32", "device": "cpu"},
        "versions": {
            "verl": version("verl"),
            "openrlhf": version("openrlhf"),
            "trl": version("trl"),
            "torch": torch.__version__,
            "rlhf_fast": rlhf_fast.__version__,
        },
        "machine": machine_description(),
        "rows": rows,
    }
    if args.no_write:
        return
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "integrations.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[f"threads={args.threads or 'default'}"] = run
    runs = dict(sorted(runs.items()))
    path.write_text(json.dumps(runs, indent=2) + "\n")
    (RESULTS / "integrations.md").write_text(_markdown(runs))


if __name__ == "__main__":
    main()
