"""The demo's report folder: summary.json, report.md, samples, and the curves.

Layout under ``out``::

    summary.json            the headline numbers (see ``run_demo``)
    report.md               the same, for people, with samples before and after PPO
    samples_sft.jsonl       {prompt, response, gold, proxy, kl} of the SFT policy
    samples_ppo.jsonl       the same for the PPO policy
    plots/gold_proxy_vs_kl.png   proxy (reward model) and gold score against KL over PPO
    plots/ppo_curves.png    score, KL, losses, clip fraction over PPO iterations
    {sft,reward,ppo}/       each stage's metrics/, plots/, tensorboard/, model
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhf_fast.demo.task import LENGTH_PENALTY, MAX_GOOD_LENGTH, NAME_BONUS, WRONG_NAME_PENALTY


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_gold_proxy_vs_kl(records: list[dict[str, Any]], path: Path) -> None:
    """Proxy and gold score of each PPO rollout against its KL to the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if "objective/kl" in r and "gold/mean" in r]
    if not rows:
        return
    kl = [r["objective/kl"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(
        kl,
        [r["gold/mean"] for r in rows],
        "o-",
        ms=3,
        color="tab:green",
        label="gold score (hidden)",
    )
    ax.set_xlabel("KL(policy || reference), nats per response")
    ax.set_ylabel("gold score")
    ax2 = ax.twinx()
    ax2.plot(
        kl,
        [r["objective/scores"] for r in rows],
        "s-",
        ms=3,
        color="tab:blue",
        alpha=0.7,
        label="proxy score (reward model, normalised)",
    )
    ax2.set_ylabel("proxy score")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="lower right")
    ax.set_title("PPO: proxy and gold score against KL (each point = one rollout)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ppo_curves(records: list[dict[str, Any]], path: Path) -> None:
    """A grid of the PPO metrics over iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        "gold/mean",
        "objective/scores",
        "objective/kl",
        "objective/kl_coef",
        "loss/policy_avg",
        "loss/value_avg",
        "policy/clipfrac_avg",
        "val/explained_variance",
        "val/num_response_tokens",
    ]
    keys = [k for k in keys if any(k in r for r in records)]
    if not keys:
        return
    cols = 3
    rows_n = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 2.8 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sample_table(samples: list[dict[str, Any]], n: int = 8) -> str:
    lines = ["| prompt | response | gold | proxy |", "|---|---|---:|---:|"]
    for s in samples[:n]:
        response = s["response"].replace("|", "\\|") or "(empty)"
        lines.append(f"| {s['prompt']} | {response} | {s['gold']:.1f} | {s['proxy']:.2f} |")
    return "\n".join(lines)


def write_report(
    out: Path,
    summary: dict[str, Any],
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    *,
    config: dict[str, Any],
) -> None:
    """Write summary.json, report.md, the samples and the demo plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name, samples in (("samples_sft.jsonl", before), ("samples_ppo.jsonl", after)):
        with (out / name).open("w") as fh:
            for s in samples:
                fh.write(json.dumps(s) + "\n")
    records = _read_jsonl(out / "ppo" / "metrics" / "ppo.jsonl")
    plot_gold_proxy_vs_kl(records, out / "plots" / "gold_proxy_vs_kl.png")
    plot_ppo_curves(records, out / "plots" / "ppo_curves.png")
    s = summary
    verdict = "met" if s["passed"] else "NOT met"
    text = f"""# rlhf_fast demo: short, positive reviews that name the product

Task: a prompt asks for a review of a product (`review the kettle :`). The hidden gold score
(`rlhf_fast.demo.gold_score`) is +1 per positive word, -1 per negative word, +{NAME_BONUS:g} when the
review names the product asked about, -{WRONG_NAME_PENALTY:g} when it names another, -{LENGTH_PENALTY:g} per
word beyond {MAX_GOOD_LENGTH}. The reward model never sees it: it learns from {s["n_preference_pairs"]}
pairs of SFT-policy samples labelled by simulated Bradley-Terry annotators (betas {s["annotator_betas"]}).

| | value |
|---|---|
| reward-model accuracy on {s["n_eval_pairs"]} held-out pairs | {s["rm_accuracy"]:.3f} |
| ceiling (gold score's accuracy on the same noisy labels) | {s["rm_accuracy_ceiling"]:.3f} |
| gold score, SFT policy (mean ± std, n={s["n_samples"]}) | {s["gold_sft_mean"]:.2f} ± {s["gold_sft_std"]:.2f} |
| gold score, PPO policy (mean ± std, n={s["n_samples"]}) | {s["gold_ppo_mean"]:.2f} ± {s["gold_ppo_std"]:.2f} |
| gain in SFT standard deviations | {s["gold_gain_in_sft_std"]:.2f} |
| proxy (reward-model) score, SFT -> PPO | {s["proxy_sft_mean"]:.2f} -> {s["proxy_ppo_mean"]:.2f} |
| KL(PPO policy ‖ reference), nats per response | {s["kl_ppo"]:.2f} |
| mean response length in words, SFT -> PPO | {s["length_sft_mean"]:.1f} -> {s["length_ppo_mean"]:.1f} |
| wall time | {s["wall_seconds"]:.0f} s (device {s["device"]}, torch threads: {s["torch_threads"]}) |

Thresholds (gold gain >= 1 SFT std, KL < 10 nats): **{verdict}**.

Stage times (s): {", ".join(f"{k} {v}" for k, v in s["stage_seconds"].items())}.

![gold and proxy against KL](plots/gold_proxy_vs_kl.png)

![PPO curves](plots/ppo_curves.png)

Per-stage curves: `sft/plots/`, `reward/plots/`, `ppo/plots/`; metrics as JSONL in `*/metrics/`;
TensorBoard files in `*/tensorboard/`.

## Samples from the SFT policy

{_sample_table(before)}

## Samples from the PPO policy (same prompts)

{_sample_table(after)}

All samples with their scores: `samples_sft.jsonl`, `samples_ppo.jsonl`. Re-score them with
`rlhf_fast.demo.gold_score(responses, prompts)`.
"""
    (out / "report.md").write_text(text)
