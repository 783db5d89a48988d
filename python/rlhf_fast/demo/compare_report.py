"""The comparison's report: ``compare.json``, ``report.md`` and ``plots/compare.png``.

Per algorithm and seed: the final policy's gold score, proxy score and KL on the held-out
prompts, its lift in SFT standard deviations and its training seconds; across seeds the
mean and the spread (min..max). Three panels: gold against KL (the frontier), gold
against training seconds, proxy against gold (reward hacking shows as proxy rising while
gold does not).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Sequence

COLORS = {"ppo": "tab:blue", "grpo": "tab:orange", "rloo": "tab:green", "dpo": "tab:red"}


def _row(result: dict[str, Any], sft: dict[str, Any]) -> dict[str, float]:
    return {
        "gold": result["gold"],
        "gain_sft_sd": (result["gold"] - sft["gold"]) / max(sft["gold_std"], 1e-12),
        "proxy": result["proxy"],
        "kl": result["kl"],
        "length": result["length"],
        "seconds": result.get("seconds", 0.0),
    }


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ({min(values):.2f}..{max(values):.2f})"


def plot_comparison(
    per_seed: dict[int, dict[str, Any]], algorithms: Sequence[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for name in algorithms:
        color = COLORS.get(name, "tab:gray")
        for i, results in enumerate(per_seed.values()):
            curve, final = results[name]["curve"], results[name]
            label = name.upper() if i == 0 else None
            if curve:
                axes[0].plot(
                    [p["kl"] for p in curve],
                    [p["gold"] for p in curve],
                    "-",
                    color=color,
                    alpha=0.45,
                    lw=1,
                )
                axes[1].plot(
                    [p["seconds"] for p in curve],
                    [p["gold"] for p in curve],
                    "-",
                    color=color,
                    alpha=0.45,
                    lw=1,
                )
                axes[2].plot(
                    [p["gold"] for p in curve],
                    [p["proxy"] for p in curve],
                    "-",
                    color=color,
                    alpha=0.45,
                    lw=1,
                )
            axes[0].plot(final["kl"], final["gold"], "o", color=color, label=label)
            axes[1].plot(final.get("seconds", 0.0), final["gold"], "o", color=color, label=label)
            axes[2].plot(final["gold"], final["proxy"], "o", color=color, label=label)
    for results in per_seed.values():
        sft = results["sft"]
        axes[0].plot(sft["kl"], sft["gold"], "k*", ms=9)
        axes[2].plot(sft["gold"], sft["proxy"], "k*", ms=9)
    axes[0].set(
        xlabel="KL(policy || SFT), nats per response",
        ylabel="gold score",
        title="gold against KL (lines: training rollouts; dots: held-out)",
    )
    axes[1].set(xlabel="training seconds", ylabel="gold score", title="gold against wall clock")
    axes[2].set(
        xlabel="gold score", ylabel="proxy (reward model) score", title="proxy against gold"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_comparison(
    out: Path, per_seed: dict[int, dict[str, Any]], algorithms: Sequence[str]
) -> dict[str, Any]:
    """Write the report files under ``out``; returns ``compare.json`` without the curves."""
    algorithms = ["ppo", *[a for a in algorithms if a != "ppo"]]
    rows = {
        name: {seed: _row(r[name], r["sft"]) for seed, r in per_seed.items()} for name in algorithms
    }
    reward_models = {
        seed: {"accuracy": r["demo"]["rm_accuracy"], "ceiling": r["demo"]["rm_accuracy_ceiling"]}
        for seed, r in per_seed.items()
    }
    summary = {
        "seeds": list(per_seed),
        "reward_model": reward_models,
        "sft": {
            seed: {k: r["sft"][k] for k in ("gold", "gold_std", "proxy", "kl", "length")}
            for seed, r in per_seed.items()
        },
        "algorithms": rows,
        "curves": {
            name: {seed: r[name]["curve"] for seed, r in per_seed.items()} for name in algorithms
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(summary, indent=2))
    plot_comparison(per_seed, algorithms, out / "plots" / "compare.png")
    seeds = ", ".join(map(str, per_seed))
    lines = [
        "# PPO, GRPO, RLOO and DPO on the demo task",
        "",
        f"Seeds {seeds}; each algorithm starts from the same SFT policy, reward model and labels "
        "of its seed. Held-out: one sample per prompt on the demo's evaluation prompts. "
        "Mean over seeds, (min..max) across them.",
        "",
        "| algorithm | gold | lift (SFT SD) | proxy | KL to SFT | words | train seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    sft_gold = [r["sft"]["gold"] for r in per_seed.values()]
    sft_proxy = [r["sft"]["proxy"] for r in per_seed.values()]
    lines.append(f"| SFT | {_spread(sft_gold)} | 0 | {_spread(sft_proxy)} | 0 | | |")
    for name in algorithms:
        cols = [
            _spread([row[key] for row in rows[name].values()])
            for key in ("gold", "gain_sft_sd", "proxy", "kl", "length", "seconds")
        ]
        lines.append(f"| {name.upper()} | " + " | ".join(cols) + " |")
    lines += [
        "",
        "Per seed (gold / lift in SFT SD / KL):",
        "",
        "| seed | RM accuracy (ceiling) | " + " | ".join(a.upper() for a in algorithms) + " |",
        "|---|---|" + "---|" * len(algorithms),
    ]
    for seed in per_seed:
        rm = reward_models[seed]
        cells = [
            f"{rows[a][seed]['gold']:.2f} / {rows[a][seed]['gain_sft_sd']:+.2f} / "
            f"{rows[a][seed]['kl']:.1f}"
            for a in algorithms
        ]
        lines.append(
            f"| {seed} | {rm['accuracy']:.3f} ({rm['ceiling']:.3f}) | " + " | ".join(cells) + " |"
        )
    lines += ["", "![comparison](plots/compare.png)", ""]
    for name in algorithms:
        first = next(iter(per_seed.values()))[name]["samples"][:3]
        lines.append(f"Samples, {name.upper()} (seed {next(iter(per_seed))}):")
        lines += [f"- `{s['prompt']}` {s['response']} (gold {s['gold']:+.1f})" for s in first]
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    return {k: v for k, v in summary.items() if k != "curves"}
