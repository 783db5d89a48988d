"""GAE on CUDA tensors: rlhf_fast's round trip (device -> pinned host -> Rust -> device)
against a torch loop on the GPU (the reversed per-step loop TRL and OpenRLHF run inline).

Right-padded rows of ragged length, float32, gamma 1, lam 0.95; B = 256 rows and
T = 512, 2048, 8192. Each result is checked against the other (allclose) before timing;
times are the median of repeated calls after warm-up, with ``torch.cuda.synchronize``.

    python3 benches/gpu_gae.py --output gpu_gae.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from rlhf_fast import ops

ROWS, LENGTHS, GAMMA, LAM = 256, (512, 2048, 8192), 1.0, 0.95


def torch_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor):
    """The peers' inline loop: one step per column, from last to first, on the device."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + GAMMA * next_value - values[:, t]
        last = delta + GAMMA * LAM * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("gpu_gae.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_gae.py: no CUDA device")
    device = torch.device("cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "rows": ROWS,
        "cases": [],
    }
    for T in LENGTHS:
        lengths = torch.randint(1, T + 1, (ROWS,), generator=gen)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device)
        rewards = torch.randn(ROWS, T, generator=gen).to(device)
        values = torch.randn(ROWS, T, generator=gen).to(device)
        ours = ops.gae(rewards, values, mask, gamma=GAMMA, lam=LAM)
        theirs = torch_gae(rewards, values, mask.float())
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)
        assert ours[0].device == rewards.device
        repeats = 20 if T <= 2048 else 5
        t_ours = timed(
            lambda r=rewards, v=values, m=mask: ops.gae(r, v, m, gamma=GAMMA, lam=LAM), repeats
        )
        float_mask = mask.float()
        t_torch = timed(lambda r=rewards, v=values, m=float_mask: torch_gae(r, v, m), repeats)
        case = {
            "T": T,
            "rlhf_fast_round_trip_ms": t_ours * 1e3,
            "torch_gpu_loop_ms": t_torch * 1e3,
            "speedup": t_torch / t_ours,
        }
        results["cases"].append(case)
        print(
            f"GAE {ROWS}x{T}: rlhf_fast round trip {case['rlhf_fast_round_trip_ms']:.2f} ms, "
            f"torch GPU loop {case['torch_gpu_loop_ms']:.2f} ms -> {case['speedup']:.1f}x",
            flush=True,
        )
    args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
