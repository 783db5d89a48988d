"""Run every classic-RL example with fixed seeds and write ``examples/classic/results/``.

    .venv/bin/python examples/classic/run_all.py          # what `make classic` runs
    .venv/bin/python examples/classic/run_all.py --only ppo,dqn

Writes ``results.md`` (one row per run: algorithm, environment, seed, steps, wall
time on this machine, final mean return over the last 20 episodes, the target and
whether it was met), ``results.json`` (the same, machine-readable), one learning
curve PNG per run, ``reinforce_baseline_spread.png`` (three seeds with and without
the baseline) and ``ppo_gae_numpy_vs_rlhf_fast.png`` (the two GAE implementations,
which must give the same curve bit for bit). Runs go to ``--jobs`` worker processes
(default 2, one per core), one torch thread each; every run seeds itself, so the
results do not depend on the scheduling. The whole set takes about 5 CPU-minutes,
3 minutes of wall time on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import a2c
import dqn
import matplotlib
import numpy as np
import ppo
import q_learning
import reinforce

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WINDOW = 20  # episodes in the running mean and in the "final mean return"
REINFORCE_SEEDS = (1, 2, 3)
# Rough single-core cost of one run of each group, for scheduling only.
EXPECTED_CPU_SECONDS = {"ppo": 120, "dqn": 100, "a2c": 60, "reinforce": 30, "q_learning": 10}


@dataclass
class Run:
    """One example run: what to call, with which config, and what it must reach."""

    name: str  # file stem of its PNG
    group: str  # --only selects by this
    train: Callable[[Any], dict[str, Any]]
    config: Any
    target: str  # human-readable target, "" when the run is a comparison only
    check: Optional[Callable[[dict[str, Any]], tuple[str, bool]]] = None  # -> (measured, met)
    threshold: Optional[float] = None  # drawn on the curve


def mean_return_at_least(threshold: float) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    def check(result: dict[str, Any]) -> tuple[str, bool]:
        value = result["final_mean_return"]
        return f"{value:.2f}", value >= threshold

    return check


def shortest_safe_path(result: dict[str, Any]) -> tuple[str, bool]:
    length, outcome = result["greedy_path_length"], result["greedy_outcome"]
    return f"{length} moves, ends at the {outcome}", bool(result["greedy_is_shortest_safe_path"])


def success_rate_at_least(threshold: float) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    def check(result: dict[str, Any]) -> tuple[str, bool]:
        rate = result["eval_success_rate"]
        return f"success {rate:.3f}", rate >= threshold

    return check


def all_runs() -> list[Run]:
    runs = [
        Run(
            "q_learning_catfishdog", "q_learning", q_learning.train,
            q_learning.Config(env="CatFishDog-v0", seed=1, episodes=2_000),
            "greedy path = shortest safe path (13 moves)", shortest_safe_path,
        ),
        Run(
            "q_learning_frozenlake", "q_learning", q_learning.train,
            q_learning.Config(env="FrozenLake-v1", seed=1, episodes=20_000),
            "greedy success >= 0.70 over 1,000 episodes", success_rate_at_least(0.70),
        ),
    ]  # fmt: skip
    for baseline in (True, False):
        tag = "baseline" if baseline else "no_baseline"
        runs.append(
            Run(
                f"reinforce_{tag}_catfishdog", "reinforce", reinforce.train,
                reinforce.Config(env="CatFishDog-v0", seed=1, baseline=baseline,
                                 total_episodes=1_200),
                "mean return >= 0.80 (optimum 0.87)" if baseline else "",
                mean_return_at_least(0.80) if baseline else None, 0.80,
            )
        )  # fmt: skip
        for seed in REINFORCE_SEEDS:
            target = "mean return >= 400" if baseline else ""
            runs.append(
                Run(
                    f"reinforce_{tag}_cartpole_seed{seed}", "reinforce", reinforce.train,
                    reinforce.Config(env="CartPole-v1", seed=seed, baseline=baseline),
                    target, mean_return_at_least(400) if baseline else None, 400,
                )
            )  # fmt: skip
    runs += [
        Run(
            "dqn_cartpole", "dqn", dqn.train, dqn.Config(env="CartPole-v1", seed=1),
            "mean return >= 400 within 500k steps", mean_return_at_least(400), 400,
        ),
        Run(
            "a2c_cartpole", "a2c", a2c.train, a2c.Config(env="CartPole-v1", seed=1),
            "mean return >= 400 within 500k steps", mean_return_at_least(400), 400,
        ),
    ]  # fmt: skip
    for impl in ("rlhf_fast", "numpy"):
        runs.append(
            Run(
                f"ppo_cartpole_gae_{impl}", "ppo", ppo.train,
                ppo.Config(env="CartPole-v1", seed=1, gae_impl=impl),
                "mean return >= 475 within 500k steps", mean_return_at_least(475), 475,
            )
        )  # fmt: skip
    return runs


# ---------------------------------------------------------------------- plots
def running_mean(x: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Mean of the last ``window`` values at each index (fewer at the start)."""
    cumulative = np.cumsum(np.insert(np.asarray(x, dtype=np.float64), 0, 0.0))
    lo = np.maximum(np.arange(1, len(x) + 1) - window, 0)
    return (cumulative[1:] - cumulative[lo]) / (np.arange(1, len(x) + 1) - lo)


def plot_curve(run: Run, result: dict[str, Any], path: Path) -> None:
    steps, returns = np.asarray(result["episode_end_steps"]), np.asarray(result["episode_returns"])
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if len(returns) <= 2_000:  # beyond that the raw returns are a solid band
        ax.plot(steps, returns, color="tab:blue", alpha=0.25, lw=0.8, label="episode return")
    ax.plot(steps, running_mean(returns), color="tab:blue", lw=1.8, label=f"mean of last {WINDOW}")
    if run.threshold is not None:
        ax.axhline(run.threshold, color="tab:red", ls="--", lw=1, label=f"target {run.threshold:g}")
    ax.set(xlabel="environment steps", ylabel="return",
           title=f"{result['algorithm']} on {result['env']} (seed {run.config.seed})")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def seed_spread(curves: list[np.ndarray]) -> np.ndarray:
    """Per-episode standard deviation across seeds of the running means."""
    length = min(len(c) for c in curves)
    return np.std(np.stack([running_mean(c)[:length] for c in curves]), axis=0)


def plot_reinforce_spread(results: dict[str, list[dict[str, Any]]], path: Path) -> dict[str, float]:
    """Mean and min/max band of the running mean over seeds, with and without baseline."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    spreads = {}
    for label, color in (("with baseline", "tab:green"), ("without baseline", "tab:orange")):
        curves = [np.asarray(r["episode_returns"]) for r in results[label]]
        length = min(len(c) for c in curves)
        smoothed = np.stack([running_mean(c)[:length] for c in curves])
        episodes = np.arange(1, length + 1)
        ax.plot(episodes, smoothed.mean(0), color=color, lw=1.8, label=f"{label} (mean of 3 seeds)")
        ax.fill_between(episodes, smoothed.min(0), smoothed.max(0), color=color, alpha=0.25)
        spreads[label] = float(seed_spread(curves).mean())
    ax.axhline(400, color="tab:red", ls="--", lw=1, label="target 400")
    ax.set(xlabel="episode", ylabel=f"return (mean of last {WINDOW})",
           title="REINFORCE on CartPole-v1: seeds 1-3, band = min..max")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return spreads


def plot_ppo_pair(results: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for impl, style in (("rlhf_fast", dict(lw=3.0, alpha=0.5)), ("numpy", dict(lw=1.0, ls="--"))):
        r = results[impl]
        ax.plot(r["episode_end_steps"], running_mean(np.asarray(r["episode_returns"])),
                label=f"GAE: {impl}", **style)  # fmt: skip
    ax.axhline(475, color="tab:red", ls="--", lw=1, label="target 475")
    ax.set(xlabel="environment steps", ylabel=f"return (mean of last {WINDOW})",
           title="PPO on CartPole-v1 (seed 1): rlhf_fast.gae vs the numpy loop")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------- table
def write_results(rows: list[dict[str, Any]], notes: list[str], total_seconds: float) -> None:
    header = ("| algorithm | environment | seed | steps | wall time (s) | "
              f"final mean return (last {WINDOW} ep.) | target | measured | met |")  # fmt: skip
    lines = [
        "# Classic RL results",
        "",
        f"Written by `make classic` (`examples/classic/run_all.py`) on {platform.node()} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}), one torch thread per run; total wall time "
        f"{total_seconds / 60:.1f} min. Steps are environment steps summed over parallel "
        "environments; returns are undiscounted training-episode returns (with the "
        "exploration the algorithm uses at that point).",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for row in rows:
        met = "" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(
            f"| {row['algorithm']} | {row['env']} | {row['seed']} | {row['steps']:,} | "
            f"{row['wall_time_s']:.1f} | {row['final_mean_return']:.2f} | "
            f"{row['target'] or '(comparison)'} | {row['measured'] or ''} | {met} |"
        )
    for note in notes:
        lines += ["", note]
    lines.append("")
    (RESULTS_DIR / "results.md").write_text("\n".join(lines))
    (RESULTS_DIR / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


def report_progress(run: Run, result: dict[str, Any], elapsed: float) -> None:
    measured, met = run.check(result) if run.check else ("", None)
    verdict = "" if met is None else ("MET" if met else "NOT MET")
    print(
        f"[{elapsed:7.1f}s] {run.name}: {result['steps']:,} steps, "
        f"{result['wall_time_s']:.1f} s, final mean {result['final_mean_return']:.2f} "
        f"{measured} {verdict}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes")
    parser.add_argument("--only", default="", help="comma-separated groups: " +
                        ",".join(sorted({r.group for r in all_runs()})))  # fmt: skip
    args = parser.parse_args()
    selected = {g for g in args.only.split(",") if g}
    runs = [r for r in all_runs() if not selected or r.group in selected]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows, notes = [], []
    reinforce_curves: dict[str, list[dict[str, Any]]] = {
        "with baseline": [],
        "without baseline": [],
    }
    ppo_results: dict[str, dict[str, Any]] = {}
    # Longest runs first, so the two workers finish close together.
    order = sorted(range(len(runs)), key=lambda i: -EXPECTED_CPU_SECONDS[runs[i].group])
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = {i: pool.submit(runs[i].train, runs[i].config) for i in order}
        for i in order:
            print(f"[{time.perf_counter() - start:7.1f}s] queued {runs[i].name}", flush=True)
        results = {}
        for i in order:
            results[i] = futures[i].result()
            report_progress(runs[i], results[i], time.perf_counter() - start)
    for i, run in enumerate(runs):
        result = results[i]
        measured, met = run.check(result) if run.check else ("", None)
        plot_curve(run, result, RESULTS_DIR / f"{run.name}.png")
        row = {
            "run": run.name,
            "algorithm": result["algorithm"],
            "env": result["env"],
            "seed": run.config.seed,
            "steps": int(result["steps"]),
            "wall_time_s": round(float(result["wall_time_s"]), 2),
            "final_mean_return": round(float(result["final_mean_return"]), 3),
            "target": run.target,
            "measured": measured,
            "met": met,
            "config": asdict(run.config),
        }
        if "gae_time_s" in result:
            row["gae_time_s"] = round(float(result["gae_time_s"]), 4)
        rows.append(row)
        if run.group == "reinforce" and result["env"] == "CartPole-v1":
            label = "with baseline" if run.config.baseline else "without baseline"
            reinforce_curves[label].append(result)
        if run.group == "ppo":
            ppo_results[run.config.gae_impl] = result

    if all(len(v) == len(REINFORCE_SEEDS) for v in reinforce_curves.values()):
        spreads = plot_reinforce_spread(
            reinforce_curves, RESULTS_DIR / "reinforce_baseline_spread.png"
        )
        notes.append(
            "REINFORCE on CartPole-v1, seeds 1-3 (`reinforce_baseline_spread.png`): standard "
            f"deviation across seeds of the {WINDOW}-episode running mean, averaged over "
            f"training: {spreads['with baseline']:.1f} with the baseline, "
            f"{spreads['without baseline']:.1f} without."
        )
    grid = {r["run"]: r["final_mean_return"] for r in rows if "catfishdog" in r["run"]}
    if {"reinforce_baseline_catfishdog", "reinforce_no_baseline_catfishdog"} <= grid.keys():
        notes.append(
            "REINFORCE on the gridworld, seed 1: final mean return "
            f"{grid['reinforce_baseline_catfishdog']:.2f} with the baseline, "
            f"{grid['reinforce_no_baseline_catfishdog']:.2f} without. Every return there is "
            "negative until the fish is found, so without a baseline each sampled action is "
            "pushed down and the policy can settle on wandering, reaching neither fish nor "
            'dog, until the 100-step limit (return -1.00); the baseline turns "less bad than '
            'expected" into a positive signal.'
        )
    if len(ppo_results) == 2:
        plot_ppo_pair(ppo_results, RESULTS_DIR / "ppo_gae_numpy_vs_rlhf_fast.png")
        a, b = ppo_results["rlhf_fast"], ppo_results["numpy"]
        same = a["episode_returns"] == b["episode_returns"] and a["history"] == b["history"]
        notes.append(
            "PPO with `rlhf_fast.gae` vs the numpy GAE loop, same seed "
            f"(`ppo_gae_numpy_vs_rlhf_fast.png`): {len(a['episode_returns'])} vs "
            f"{len(b['episode_returns'])} episodes, episode returns and every logged loss "
            f"{'identical' if same else 'DIFFERENT'}; time in GAE "
            f"{a['gae_time_s'] * 1e3:.0f} ms (rlhf_fast) vs {b['gae_time_s'] * 1e3:.0f} ms "
            f"(numpy) over {len(a['history']['losses/value_loss'])} rollouts of "
            f"{a['steps'] // len(a['history']['losses/value_loss'])} steps."
        )
    total = time.perf_counter() - start
    notes.append(
        f"Load average (1 min) of the machine: {load_before:.1f} when the runs started, "
        f"{os.getloadavg()[0]:.1f} when they ended; {args.jobs} runs in parallel processes, "
        "so each run's wall time includes sharing the CPU with its neighbour."
    )
    write_results(rows, notes, total)
    print(f"[{total:7.1f}s] wrote {RESULTS_DIR / 'results.md'}")
    print((RESULTS_DIR / "results.md").read_text())


if __name__ == "__main__":
    main()
