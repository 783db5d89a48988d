"""Turns benches/results/results.json (and e2e.json) into RESULTS.md and PNG plots.

``python benches/report.py [results_dir]`` re-renders without re-running the benchmarks.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

HEADLINE_SHAPE = "512x2048"
OURS_MAIN = "rlhf_fast (out= buffers)"
OURS_FRESH = "rlhf_fast (fresh outputs)"

SECTIONS = [
    ("gae", "GAE, float32, gamma = 1, lam = 0.95"),
    ("gae_g1", "GAE with gamma = lam = 1 against a reverse cumulative sum"),
    ("kl", "KL-shaped rewards (k1), float32"),
    ("whiten", "Masked whitening, float32"),
    ("grpo", "Group advantages, GRPO (group size 16), float32"),
    ("rloo", "Group advantages, RLOO leave-one-out (group size 16), float32"),
    ("batching", "Ragged -> padded batching: 4,096 int64 rows of lengths 1..2048"),
]


def _ok(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok"


def _index(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["family"], r["mask"], r["shape"])].append(r)
    return groups


def _annotate(records: list[dict[str, Any]]) -> None:
    """Adds ``x_best_peer`` (best peer's median / this median) and ``bandwidth_fraction``."""
    for group in _index(records).values():
        peers = [r["median_s"] for r in group if _ok(r) and not r["ours"]]
        best = min(peers) if peers else None
        for r in group:
            if not _ok(r):
                continue
            r["x_best_peer"] = best / r["median_s"] if best else None
            r["bandwidth_fraction"] = r["bound_s"] / r["median_s"]
            r["melem_per_s"] = r["elements"] / r["median_s"] / 1e6


def _find(
    records: list[dict[str, Any]], family: str, shape: str, label: str, mask: Optional[str] = None
) -> Optional[dict[str, Any]]:
    for r in records:
        if (
            r["family"] == family
            and r["shape"] == shape
            and r["implementation"] == label
            and (mask is None or r["mask"] == mask)
            and _ok(r)
        ):
            return r
    return None


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _times(x: float) -> str:
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x"


def _table(rows: list[dict[str, Any]], mask_column: bool) -> list[str]:
    head = (
        ["shape"]
        + (["mask"] if mask_column else [])
        + [
            "implementation",
            "version",
            "median ms",
            "min ms",
            "max ms",
            "M elem/s",
            "x best peer",
            "% of copy bound",
            "note",
        ]
    )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    skipped: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r["status"] == "n/a":
            skipped[r["implementation"]].add(r["mask"])
            continue
        name = f"**{r['implementation']}**" if r["ours"] else r["implementation"]
        cells = [r["shape"]] + ([r["mask"]] if mask_column else []) + [name, r["version"]]
        if _ok(r):
            best = r.get("x_best_peer")
            cells += [
                _ms(r["median_s"]),
                _ms(r["min_s"]),
                _ms(r["max_s"]),
                f"{r['melem_per_s']:.1f}",
                f"{best:.2f}" if best else "-",
                f"{100 * r['bandwidth_fraction']:.1f}",
                r["note"],
            ]
        else:
            cells += ["-", "-", "-", "-", "-", "-", f"{r['status']} {r['note']}".strip()]
        out.append("| " + " | ".join(cells) + " |")
    if skipped:
        out.append("")
        out.append(
            "Not applicable (convention cannot express the input, see Conventions): "
            + "; ".join(f"{k} ({', '.join(sorted(v))})" for k, v in skipped.items())
            + "."
        )
    return out


def _plot(records: list[dict[str, Any]], family: str, mask: str, path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r["family"] == family and r["mask"] == mask and _ok(r):
            lines[r["implementation"]].append((r["elements"], r["melem_per_s"]))
    if not lines or max(len(v) for v in lines.values()) < 2:
        return False
    fig, ax = plt.subplots(figsize=(11, 5.5))
    colors = plt.get_cmap("tab20").colors
    ordered = sorted(lines.items(), key=lambda kv: -max(p[1] for p in kv[1]))
    for i, (label, points) in enumerate(ordered):
        points.sort()
        ours = label.startswith("rlhf_fast")
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            "-o" if ours else "--.",
            color=colors[i % len(colors)],
            linewidth=2.2 if ours else 1.2,
            label=label,
        )
    bound = sorted(
        {
            (r["elements"], r["elements"] / r["bound_s"] / 1e6)
            for r in records
            if r["family"] == family and r["mask"] == mask and _ok(r)
        }
    )
    ax.plot([p[0] for p in bound], [p[1] for p in bound], ":k", label="copy bound (same bytes)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("elements (B x T)")
    ax.set_ylabel("throughput, M elements / s (higher is better)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_threads(records: list[dict[str, Any]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    any_line = False
    for family in ("gae_threads", "kl_threads", "whiten_threads"):
        for threads in (1, 2):
            pts = sorted(
                (r["elements"], r["median_s"] * 1e3)
                for r in records
                if r["family"] == family and r["threads"] == threads and _ok(r)
            )
            if pts:
                any_line = True
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    "-o" if threads == 2 else "--o",
                    label=f"{family.split('_')[0]}, {threads} thread{'s' * (threads > 1)}",
                )
    pts = sorted(
        {
            (r["elements"], r["bound_s"] * 1e3)
            for r in records
            if r["family"] == "gae_threads" and r["threads"] == 2 and _ok(r)
        }
    )
    if pts:
        ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], ":k", label="copy bound, GAE bytes, 2 thr"
        )
    if not any_line:
        plt.close(fig)
        return False
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("elements (B x T)")
    ax.set_ylabel("median time, ms")
    ax.set_title("rlhf_fast: time vs B*T (out= buffers, full masks)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _summary(records: list[dict[str, Any]], e2e: Optional[dict[str, Any]]) -> list[str]:
    out = ["## Summary", ""]
    for mask in ("right", "holes", "full"):
        ours = _find(records, "gae", HEADLINE_SHAPE, OURS_MAIN, mask)
        fresh = _find(records, "gae", HEADLINE_SHAPE, OURS_FRESH, mask)
        if not ours:
            continue
        out.append(
            f"**GAE {HEADLINE_SHAPE}, {mask} mask**: rlhf_fast {_ms(ours['median_s'])} ms "
            f"with `out=` buffers ({100 * ours['bandwidth_fraction']:.0f} % of the copy "
            f"bound {_ms(ours['bound_s'])} ms), {_ms(fresh['median_s'])} ms with fresh "
            f"outputs."
            if fresh
            else ""
        )
        peers = sorted(
            (
                r
                for r in records
                if r["family"] == "gae"
                and r["mask"] == mask
                and r["shape"] == HEADLINE_SHAPE
                and _ok(r)
                and not r["ours"]
            ),
            key=lambda r: r["median_s"],
        )
        for r in peers:
            out.append(
                f"- vs {r['implementation']} {r['version']}: {_ms(r['median_s'])} ms -> "
                f"**{_times(r['median_s'] / ours['median_s'])}** faster"
            )
        out.append("")
    for family, label in (("kl", "KL shaping"), ("whiten", "whitening")):
        ours = _find(records, family, HEADLINE_SHAPE, OURS_MAIN, "right")
        if ours:
            out.append(
                f"**{label} {HEADLINE_SHAPE}, right mask**: {_ms(ours['median_s'])} ms, "
                f"{ours['x_best_peer']:.1f}x the best torch composite, "
                f"{100 * ours['bandwidth_fraction']:.0f} % of the copy bound."
            )
    batch = [r for r in records if r["family"] == "batching" and _ok(r)]
    if batch:
        ours = min((r for r in batch if r["ours"]), key=lambda r: r["median_s"])
        listed = _find(
            records, "batching", batch[0]["shape"], "rlhf_fast.pad_ragged (list of torch tensors)"
        )
        padseq = next((r for r in batch if r["implementation"] == "torch pad_sequence"), None)
        if padseq and listed:
            out.append(
                f"**Batching** 4,096 rows: `pad_ragged` from a list of tensors "
                f"{_ms(listed['median_s'])} ms vs `pad_sequence` {_ms(padseq['median_s'])} ms "
                f"-> **{padseq['median_s'] / listed['median_s']:.1f}x**; from flat values + "
                f"offsets {_ms(ours['median_s'])} ms -> "
                f"{padseq['median_s'] / ours['median_s']:.1f}x."
            )
    if (
        e2e
        and e2e.get("rlhf_fast", {}).get("iteration_s")
        and e2e.get("trl", {}).get("iteration_s")
    ):
        a, b = e2e["rlhf_fast"], e2e["trl"]
        x_iter, x_whole = _e2e_speedups(e2e)
        whole = ""
        if x_whole is not None:
            whole = (
                f"whole run, set-up included, {a['whole_run_s']:.1f} s vs "
                f"{b['whole_run_s']:.1f} s -> **{x_whole:.2f}x**; "
            )
        out.append(
            f"**End to end** (PPO iterations, same job, `PPOConfig` defaults): rlhf_fast "
            f"{a['iteration_s']:.2f} s vs TRL {b['iteration_s']:.2f} s per iteration -> "
            f"**{x_iter:.2f}x** (median of the rounds' ratios); {whole}"
            f"response tokens/s {a['tokens_per_s']:.0f} vs {b['tokens_per_s']:.0f} -> "
            f"**{a['tokens_per_s'] / b['tokens_per_s']:.2f}x** (each side counts its own "
            f"responses up to <eos>: {a['tokens']:.0f} vs {b['tokens']:.0f} tokens); kernels "
            f"{100 * a.get('kernel_share', float('nan')):.3f} % of the iteration."
        )
    out.append("")
    return out


def _e2e_speedups(e2e: dict[str, Any]) -> tuple[float, Optional[float]]:
    """TRL's time over ours per iteration and per whole run: the median of the rounds' ratios
    when the run had rounds, else the ratio of the two medians."""
    a, b = e2e["rlhf_fast"], e2e["trl"]
    x = e2e.get("speedup_iteration") or b["iteration_s"] / a["iteration_s"]
    w = e2e.get("speedup_whole_run")
    if w is None and a.get("whole_run_s") and b.get("whole_run_s"):
        w = b["whole_run_s"] / a["whole_run_s"]
    return x, w


LIBRARY_PEERS = ("verl", "torchrl", "torchtune")
RUST_PEERS = ("stateset-rl-core", "rlox")


def _targets(records: list[dict[str, Any]], e2e: Optional[dict[str, Any]]) -> list[str]:
    """Where rlhf_fast stands against the targets of the benchmark issue (right masks)."""
    rows: list[tuple[str, str, bool]] = []
    ours = _find(records, "gae", HEADLINE_SHAPE, OURS_MAIN, "right")
    peers = [
        r
        for r in records
        if r["family"] == "gae"
        and r["mask"] == "right"
        and r["shape"] == HEADLINE_SHAPE
        and _ok(r)
        and not r["ours"]
    ]
    if ours and peers:
        lib = min((r for r in peers if r["package"] in LIBRARY_PEERS), key=lambda r: r["median_s"])
        rust = min((r for r in peers if r["package"] in RUST_PEERS), key=lambda r: r["median_s"])
        x_lib, x_rust = lib["median_s"] / ours["median_s"], rust["median_s"] / ours["median_s"]
        rows += [
            (
                f"GAE {HEADLINE_SHAPE} >= 100x the fastest library peer",
                f"{x_lib:.0f}x ({lib['implementation']})",
                x_lib >= 100,
            ),
            (
                f"GAE {HEADLINE_SHAPE} >= 2x the fastest Rust package",
                f"{x_rust:.1f}x ({rust['implementation']})",
                x_rust >= 2,
            ),
            (
                f"GAE {HEADLINE_SHAPE} >= 50 % of the copy bound (out=)",
                f"{100 * ours['bandwidth_fraction']:.0f} %",
                ours["bandwidth_fraction"] >= 0.5,
            ),
        ]
    for family, label in (("kl", "KL shaping"), ("whiten", "whitening")):
        r = _find(records, family, HEADLINE_SHAPE, OURS_MAIN, "right")
        if r:
            rows.append(
                (
                    f"{label} {HEADLINE_SHAPE} >= 50 % of the copy bound",
                    f"{100 * r['bandwidth_fraction']:.0f} %",
                    r["bandwidth_fraction"] >= 0.5,
                )
            )
    batch = [r for r in records if r["family"] == "batching" and _ok(r)]
    padseq = next((r for r in batch if r["implementation"] == "torch pad_sequence"), None)
    listed = next(
        (r for r in batch if r["implementation"] == "rlhf_fast.pad_ragged (list of torch tensors)"),
        None,
    )
    if padseq and listed:
        x = padseq["median_s"] / listed["median_s"]
        rows.append(
            ("batching 4,096 rows >= 5x pad_sequence (list of tensors)", f"{x:.1f}x", x >= 5)
        )
    if (
        e2e
        and e2e.get("rlhf_fast", {}).get("iteration_s")
        and e2e.get("trl", {}).get("iteration_s")
    ):
        a = e2e["rlhf_fast"]
        x, w = _e2e_speedups(e2e)
        rows.append(
            ("PPO iteration (PPOConfig defaults) >= 2x TRL, wall time", f"{x:.2f}x", x >= 2)
        )
        if w is not None:
            rows.append(("PPO whole run, set-up included, >= 2x TRL", f"{w:.2f}x", w >= 2))
        rows.append(
            (
                "kernels < 2 % of the iteration",
                f"{100 * a['kernel_share']:.3f} %",
                a["kernel_share"] < 0.02,
            )
        )
    if not rows:
        return []
    out = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    out += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in rows]
    return out + [""]


def _threads_table(records: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in records if r["family"].endswith("_threads") and _ok(r)]
    if not rows:
        return []
    out = [
        "## Threads and linearity (rlhf_fast, `out=` buffers, full masks)",
        "",
        "| kernel | shape | elements | 1 thread ms | 2 threads ms | speed-up | ns/element (2 thr)"
        " | % of copy bound (1 thr / 2 thr) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_key: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_key[(r["family"].split("_")[0], r["shape"])][r["threads"]] = r
    for (family, shape), t in sorted(
        by_key.items(), key=lambda kv: (kv[0][0], kv[1][1]["elements"] if 1 in kv[1] else 0)
    ):
        if 1 not in t or 2 not in t:
            continue
        one, two = t[1], t[2]
        out.append(
            f"| {family} | {shape} | {one['elements']:,} | {_ms(one['median_s'])} | "
            f"{_ms(two['median_s'])} | {one['median_s'] / two['median_s']:.2f} | "
            f"{two['median_s'] / two['elements'] * 1e9:.2f} | "
            f"{100 * one['bound_1thread_s'] / one['median_s']:.0f} / "
            f"{100 * two['bound_s'] / two['median_s']:.0f} |"
        )
    out += [
        "",
        "Linear in B*T means a flat ns/element column; a rise at the largest shape is the "
        "working set leaving the caches (see the copy bound, which rises the same way).",
        "",
    ]
    return out


def _e2e_section(e2e: Optional[dict[str, Any]]) -> list[str]:
    out = ["## End to end: one PPO iteration", ""]
    if not e2e:
        return out + ["Not run.", ""]
    out.append(e2e.get("description", ""))
    out.append("")
    out += [
        "| trainer | version | iteration s (median) | whole run s | peak RSS MiB | "
        "process CPU s | response tokens/s | kernels share | phases |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ("rlhf_fast", "trl"):
        r = e2e.get(key)
        if not r:
            continue
        if r.get("error"):
            out.append(f"| {key} | {r.get('version', '')} | - | - | - | - | {r['error']} |")
            continue
        share = r.get("kernel_share")
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in r.get("phases_s", {}).items())
        cpu = r.get("cpu_s")
        whole, rss = r.get("whole_run_s"), r.get("peak_rss_mib")
        out.append(
            f"| {key} | {r.get('version', '')} | {r['iteration_s']:.2f} | "
            f"{'-' if whole is None else f'{whole:.1f}'} | "
            f"{'-' if rss is None else f'{rss:.0f}'} | "
            f"{'-' if cpu is None else f'{cpu:.2f}'} | {r['tokens_per_s']:.0f} | "
            f"{'-' if share is None else f'{100 * share:.3f} %'} | {phases} |"
        )
    out.append("")
    return out


def write(results_dir: Path) -> Path:
    data = json.loads((results_dir / "results.json").read_text())
    meta, records = data["meta"], data["records"]
    e2e_path = results_dir / "e2e.json"
    e2e = json.loads(e2e_path.read_text()) if e2e_path.exists() else None
    _annotate(records)

    md = [
        "# rlhf_fast against its peers",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['seconds']:.0f} s of "
        "kernel benchmarks). Each implementation's output is checked against rlhf_fast's "
        "(allclose on the elements both conventions define) before it is timed. Times: median "
        "of repeated calls after a warm-up (at least 7 calls or 0.4 s; 3 for slow peers), GC "
        f"off. Threads: torch {meta['rlhf_fast threads']}, rlhf_fast "
        f"{meta['rlhf_fast threads']}. `x best peer` = fastest peer's median / this median; "
        "`% of copy bound` = time of a plain memory copy moving the kernel's bytes / this time "
        "(GAE and KL: 17 B/element, whitening 14, group 8, batching: ids in, ids + mask out).",
        "",
    ]
    md += _summary(records, e2e)
    md += _targets(records, e2e)
    md += ["## Machine", "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in meta["machine"].items()]
    md.append(
        f"| load average (1 min) at start / end | "
        f"{meta.get('load average (1 min) at start / end', 'not recorded')} |"
    )
    md += [
        "",
        "## Versions",
        "",
        "| package | version |",
        "|---|---|",
        f"| rlhf_fast | {meta['rlhf_fast']} |",
    ]
    md += [f"| {k} | {v} |" for k, v in meta["versions"].items()]
    md.append("")
    for family, title in SECTIONS:
        rows = [r for r in records if r["family"] == family]
        if not rows:
            continue
        rows.sort(key=lambda r: (r["elements"], r["mask"], r.get("median_s", float("inf"))))
        md += [f"## {title}", ""]
        for mask in sorted({r["mask"] for r in rows}):
            png = f"{family}_{mask}.png".replace("-", "all")
            if _plot(records, family, mask, results_dir / png, f"{title} ({mask})"):
                md.append(f"![{family} {mask}]({png})")
        md.append("")
        md += _table(rows, mask_column=len({r["mask"] for r in rows}) > 1)
        md.append("")
    md += _threads_table(records)
    if _plot_threads(records, results_dir / "threads_linearity.png"):
        md += ["![threads and linearity](threads_linearity.png)", ""]
    md += [
        "## GPU",
        "",
        f"GPU on the benchmark machine: {meta['machine'].get('GPU', 'none')}. "
        "The CUDA comparison runs only where a GPU is present.",
        "",
    ]
    md += _e2e_section(e2e)
    md += ["## Conventions", ""]
    for name, doc in meta["conventions"].items():
        md += [f"### {name}", "", (doc or "").strip(), ""]
    path = results_dir / "RESULTS.md"
    path.write_text("\n".join(md) + "\n")
    return path


if __name__ == "__main__":
    print(
        write(
            Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
        )
    )
