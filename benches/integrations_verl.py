"""verl 0.9.1's advantage and KL functions against the rlhf_fast drop-ins, on verl's
call pattern: torch CPU tensors [512, 2048] float32, an int64 right-padded
``response_mask`` (rows of random length), 8 responses per prompt for GRPO/RLOO
(``index`` a numpy array of uid strings, as ``data.non_tensor_batch["uid"]``).

Prints the median and fastest of a few calls each (after one warm-up call) and the
largest difference between the two results. Run it in .venv-bench, where verl is::

    bash scripts/setup_bench_env.sh
    nice -n 10 .venv-bench/bin/python benches/integrations_verl.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from verl.trainer.ppo import core_algos
from verl.utils import torch_functional as verl_F

from rlhf_fast.integrations import verl as rv

B, T, GROUP = 512, 2048, 8


def _time(fn, repeats: int) -> tuple[float, float, object]:
    out = fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3, min(ts) * 1e3, out


def _diff(a, b) -> float:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    rewards = torch.randn(B, T, generator=g) * mask
    values = torch.randn(B, T, generator=g)
    logprob = -torch.rand(B, T, generator=g) * 5
    ref_logprob = -torch.rand(B, T, generator=g) * 5
    index = np.array([f"uid-{i // GROUP}" for i in range(B)], dtype=object)

    cases = [
        (
            "compute_gae_advantage_return",
            lambda: core_algos.compute_gae_advantage_return(rewards, values, mask, 1.0, 0.95),
            lambda: rv.compute_gae_advantage_return(rewards, values, mask, 1.0, 0.95),
        ),
        (
            "compute_grpo_outcome_advantage",
            lambda: core_algos.compute_grpo_outcome_advantage(rewards, mask, index),
            lambda: rv.compute_grpo_outcome_advantage(rewards, mask, index),
        ),
        (
            "compute_rloo_outcome_advantage",
            lambda: core_algos.compute_rloo_outcome_advantage(rewards, mask, index),
            lambda: rv.compute_rloo_outcome_advantage(rewards, mask, index),
        ),
        (
            "kl_penalty low_var_kl",
            lambda: core_algos.kl_penalty(logprob, ref_logprob, "low_var_kl"),
            lambda: rv.kl_penalty(logprob, ref_logprob, "low_var_kl"),
        ),
        (
            "masked_whiten",
            lambda: verl_F.masked_whiten(rewards, mask),
            lambda: rv.masked_whiten(rewards, mask),
        ),
    ]
    print(f"[{B}, {T}] float32, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print(
        f"{'function':34s} {'verl ms (min)':>16s} {'rlhf_fast ms (min)':>20s} {'speedup':>8s} {'max diff':>9s}"
    )
    for name, theirs, ours in cases:
        t_med, t_min, t_out = _time(theirs, args.repeats)
        o_med, o_min, o_out = _time(ours, args.repeats)
        print(
            f"{name:34s} {t_med:8.2f} ({t_min:6.2f}) {o_med:11.2f} ({o_min:6.2f}) "
            f"{t_med / o_med:7.1f}x {_diff(t_out, o_out):9.1e}"
        )


if __name__ == "__main__":
    main()
