"""Benchmarks rlhf_fast against its peers, side by side, and writes benches/results/.

Run through ``make bench`` (which builds the extension and sets up ``.venv-bench`` with the
peers), or directly: ``.venv-bench/bin/python benches/run_all.py [--quick] [--only gae,kl]``.

Every implementation's output is checked against rlhf_fast's (allclose, on the elements where
both conventions define a result) before it is timed; one that disagrees is reported, not timed.
Writes ``results.json`` (raw), ``RESULTS.md`` (tables) and PNG plots; see benches/report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CopyBound, machine_description, measure  # noqa: E402
from peers import batching, gae, group, kl, whiten  # noqa: E402
from peers.common import Implementation, package_version  # noqa: E402

import rlhf_fast  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = [(64, 256), (128, 512), (256, 1024), (512, 2048), (1024, 4096)]
QUICK_SHAPES = [(64, 256), (128, 512)]
GROUP_SIZES = [4096, 65_536, 1_048_576]
PEER_PACKAGES = [
    "verl",
    "torchrl",
    "tensordict",
    "torchtune",
    "stateset-rl-core",
    "rlox",
    "trl",
    "torch",
    "numpy",
    "transformers",
]
THREADS = 2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Runner:
    def __init__(self, bound: CopyBound) -> None:
        self.bound = bound
        self.records: list[dict[str, Any]] = []

    def run_case(
        self,
        family: str,
        mask: str,
        case: Any,
        impls: list[Implementation],
        bytes_moved: int,
        threads: int = THREADS,
    ) -> None:
        shape = "x".join(str(d) for d in case.shape)
        bound = {t: self.bound.seconds(bytes_moved, t) for t in (1, threads)}
        for impl in impls:
            rec: dict[str, Any] = {
                "family": family,
                "mask": mask,
                "shape": shape,
                "elements": case.elements,
                "implementation": impl.label,
                "name": impl.name,
                "variant": impl.variant,
                "package": impl.package or "",
                "version": impl.version,
                "ours": impl.ours,
                "note": impl.note,
                "threads": threads,
                "bytes": bytes_moved,
                "bound_s": bound[threads],
                "bound_1thread_s": bound[1],
            }
            if not impl.supports(case):
                rec["status"] = "n/a"
                self.records.append(rec)
                continue
            try:
                fn = impl.prepare(case)
                impl.check(fn(), case)
                rec["checked"] = True
                timing = measure(fn)
                rec.update(timing.as_dict(), status="ok")
                log(
                    f"{family:8s} {mask:6s} {shape:>10s} {impl.label:58s} "
                    f"{timing.median_s * 1e3:10.3f} ms"
                )
            except AssertionError as err:
                rec.update(status=f"disagrees: {err}")
                log(f"{family} {mask} {shape} {impl.label}: DISAGREES: {err}")
            except Exception as err:  # a peer failing must not stop the run
                rec.update(status=f"error: {type(err).__name__}: {err}")
                log(f"{family} {mask} {shape} {impl.label}: ERROR {err}")
                traceback.print_exc()
            self.records.append(rec)


def _only(impls: list[Implementation], ours_only: bool) -> list[Implementation]:
    return [i for i in impls if i.ours] if ours_only else impls


def bench_gae(runner: Runner, shapes: list[tuple[int, int]]) -> None:
    impls = gae.implementations()
    for B, T in shapes:
        for mask in gae.MASK_KINDS:
            case = gae.make_case(B, T, mask, gamma=1.0, lam=0.95)
            runner.run_case("gae", mask, case, impls, case.elements * gae.GAE_BYTES_PER_ELEMENT)
    impls1 = gae.implementations_gamma1()
    for B, T in shapes:
        case = gae.make_case(B, T, "holes", gamma=1.0, lam=1.0)
        runner.run_case("gae_g1", "holes", case, impls1, case.elements * gae.GAE_BYTES_PER_ELEMENT)


def bench_kl_whiten(runner: Runner, shapes: list[tuple[int, int]]) -> None:
    for B, T in shapes:
        for mask in ("right", "holes"):
            case = kl.make_case(B, T, mask)
            runner.run_case(
                "kl", mask, case, kl.implementations(), case.elements * kl.KL_BYTES_PER_ELEMENT
            )
            case = whiten.make_case(B, T, mask)
            runner.run_case(
                "whiten",
                mask,
                case,
                whiten.implementations(),
                case.elements * whiten.WHITEN_BYTES_PER_ELEMENT,
            )


def bench_group(runner: Runner, sizes: list[int]) -> None:
    for n in sizes:
        for loo, name in ((False, "grpo"), (True, "rloo")):
            case = group.make_case(n, loo)
            runner.run_case(
                name,
                "-",
                case,
                group.implementations(),
                case.elements * group.GROUP_BYTES_PER_ELEMENT,
            )


def bench_batching(runner: Runner, n_rows: int, max_len: int) -> None:
    case = batching.make_case(n_rows, max_len)
    runner.run_case(
        "batching", "ragged", case, batching.implementations(), batching.bytes_moved(case)
    )


def bench_threads(runner: Runner, shapes: list[tuple[int, int]]) -> None:
    """rlhf_fast alone at 1 and 2 threads (full masks: time vs B*T), against the copy bound."""
    families: list[tuple[str, Callable[[int, int], Any], list[Implementation], int]] = [
        (
            "gae",
            lambda B, T: gae.make_case(B, T, "full", 1.0, 0.95),
            gae.implementations()[:1],
            gae.GAE_BYTES_PER_ELEMENT,
        ),
        (
            "kl",
            lambda B, T: kl.make_case(B, T, "full"),
            kl.implementations()[:1],
            kl.KL_BYTES_PER_ELEMENT,
        ),
        (
            "whiten",
            lambda B, T: whiten.make_case(B, T, "full"),
            whiten.implementations()[:1],
            whiten.WHITEN_BYTES_PER_ELEMENT,
        ),
    ]
    previous = rlhf_fast.get_num_threads()
    try:
        for threads in (1, 2):
            rlhf_fast.set_num_threads(threads)
            for family, make, impls, bpe in families:
                for B, T in shapes:
                    case = make(B, T)
                    runner.run_case(
                        f"{family}_threads",
                        "full",
                        case,
                        impls,
                        case.elements * bpe,
                        threads=threads,
                    )
    finally:
        rlhf_fast.set_num_threads(previous)


def run_e2e(out: Path) -> None:
    """End-to-end PPO iteration, rlhf_fast vs TRL, in a fresh process (own threads, memory)."""
    script = Path(__file__).resolve().parent / "e2e_ppo.py"
    if not script.exists():
        return
    log("end-to-end PPO iteration (rlhf_fast vs TRL) ...")
    subprocess.run(
        [sys.executable, str(script), "--rounds", "3", "--output", str(out / "e2e.json")],
        check=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes only (development)")
    parser.add_argument(
        "--only",
        default="gae,kl,group,batching,threads,e2e",
        help="comma-separated sections to run",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    sections = set(args.only.split(","))
    args.output.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(THREADS)
    rlhf_fast.set_num_threads(THREADS)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    runner = Runner(CopyBound())
    started = time.time()
    load_at_start = os.getloadavg()
    if load_at_start[0] > 1.5:
        log(
            f"warning: load average {load_at_start[0]:.1f} on {os.cpu_count()} cores; other "
            "processes will distort the timings (two-thread torch ops stall for whole time slices)"
        )
    if "gae" in sections:
        bench_gae(runner, shapes)
    if "kl" in sections:
        bench_kl_whiten(runner, shapes)
    if "group" in sections:
        bench_group(runner, GROUP_SIZES[:2] if args.quick else GROUP_SIZES)
    if "batching" in sections:
        bench_batching(runner, 512 if args.quick else 4096, 2048)
    if "threads" in sections:
        bench_threads(runner, shapes)

    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make bench" + ("" if not args.quick else "  (--quick)"),
        "quick": args.quick,
        "seconds": round(time.time() - started, 1),
        "load average (1 min) at start / end": f"{load_at_start[0]:.2f} / {os.getloadavg()[0]:.2f}",
        "machine": machine_description(),
        "rlhf_fast": rlhf_fast.__version__,
        "rlhf_fast threads": THREADS,
        "versions": {name: package_version(name) for name in PEER_PACKAGES},
        "torch.compile max T": gae.COMPILE_MAX_T,
        "conventions": {
            m.__name__.split(".")[-1]: m.__doc__ for m in (gae, group, kl, whiten, batching)
        },
    }
    (args.output / "results.json").write_text(
        json.dumps({"meta": meta, "records": runner.records}, indent=1, default=str)
    )
    if "e2e" in sections and not args.quick:
        run_e2e(args.output)

    import report

    report.write(args.output)
    log(f"wrote {args.output}/RESULTS.md in {time.time() - started:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    np.seterr(all="ignore")
    main()
