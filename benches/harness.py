"""Timing, the copy-bandwidth ceiling, and the machine description for benches/run_all.py."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch


@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int

    def as_dict(self) -> dict[str, float]:
        return {
            "median_s": self.median_s,
            "min_s": self.min_s,
            "max_s": self.max_s,
            "repeats": self.repeats,
        }


def measure(
    fn: Callable[[], Any], *, budget_s: float = 0.4, min_repeats: int = 7, max_repeats: int = 300
) -> Timing:
    """Median of repeated calls after warm-up, with the garbage collector off while timing.

    Calls are repeated until ``budget_s`` of measured time and ``min_repeats`` calls are reached
    (3 calls for functions slower than ``budget_s / 2``), at most ``max_repeats``.
    """
    fn()  # warm-up: first-call costs (imports, allocator growth, lazy init)
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    wanted = 3 if first > budget_s / 2 else min_repeats
    times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        while len(times) < max_repeats and (len(times) < wanted or sum(times) < budget_s):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(statistics.median(times), min(times), max(times), len(times))


class CopyBound:
    """Time to move the same bytes with a plain copy: the memory-bandwidth floor of a kernel.

    A kernel that reads ``r`` and writes ``w`` bytes moves ``r + w`` bytes; a copy of
    ``(r + w) / 2`` bytes moves as many. One thread: ``numpy.copyto``. Two threads: the faster of
    torch's parallel ``copy_`` and two threads each running ``numpy.copyto`` on one half.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], float] = {}
        self._pool = ThreadPoolExecutor(max_workers=2)

    def seconds(self, bytes_moved: int, threads: int) -> float:
        key = (bytes_moved, threads)
        if key not in self._cache:
            self._cache[key] = self._measure(bytes_moved, threads)
        return self._cache[key]

    def _measure(self, bytes_moved: int, threads: int) -> float:
        n = max(bytes_moved // 2, 64)
        src = np.ones(n, dtype=np.uint8)
        dst = np.zeros(n, dtype=np.uint8)
        if threads == 1:
            return measure(lambda: np.copyto(dst, src), min_repeats=51).min_s
        half = n // 2
        pool = self._pool

        def two_numpy_threads() -> None:
            a = pool.submit(np.copyto, dst[:half], src[:half])
            np.copyto(dst[half:], src[half:])
            a.result()

        src_t, dst_t = torch.from_numpy(src), torch.from_numpy(dst)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            t_torch = measure(lambda: dst_t.copy_(src_t), min_repeats=21).min_s
        finally:
            torch.set_num_threads(previous)
        t_numpy = measure(two_numpy_threads, min_repeats=21).min_s
        # Two threads never need longer than one: on a busy machine the second core may be
        # taken, and the bound must not flatter a kernel because of that.
        return min(t_torch, t_numpy, self.seconds(bytes_moved, 1))


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_description() -> dict[str, str]:
    """Cores, CPU model (from /proc/cpuinfo), caches, memory, OS and the core library versions."""
    info: dict[str, str] = {}
    try:
        cpuinfo = open("/proc/cpuinfo").read()
        models = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ]
        info["CPU model (/proc/cpuinfo)"] = models[0] if models else "unknown"
        flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
        simd = [f for f in ("avx2", "avx512f", "fma") if f" {f}" in flags]
        info["SIMD flags"] = ", ".join(simd) or "none of avx2/avx512f/fma"
    except OSError:
        info["CPU model (/proc/cpuinfo)"] = platform.processor() or "unknown"
    info["cores available to this process"] = str(len(os.sched_getaffinity(0)))
    for line in _run(["lscpu"]).splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "Thread(s) per core", "L1d cache", "L2 cache", "L3 cache"):
            info[f"lscpu {key.strip()}"] = value.strip()
    try:
        mem_kb = next(
            int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")
        )
        info["memory"] = f"{mem_kb / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    info["OS"] = f"{platform.system()} {platform.release()}"
    info["Python"] = platform.python_version()
    info["numpy"] = np.__version__
    info["torch"] = f"{torch.__version__} (threads: {torch.get_num_threads()})"
    info["GPU"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return info
