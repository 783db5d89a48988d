"""Per-call latency of `ops.gae` in a tight loop, the way a PPO step calls it.

Times 200 back-to-back calls on a [512, 2048] float32 batch with a bool mask
(gamma=1.0, lam=0.95) and prints the median of the first 40 calls, the median of
the last 100 and the fastest. Compare the default thread count with
`RLHF_FAST_NUM_THREADS=1`, on a quiet machine and on a busy one: a call that waits
for pool workers the OS has not scheduled shows up as the default being slower.

    .venv/bin/python benches/gae_loop.py
    RLHF_FAST_NUM_THREADS=1 .venv/bin/python benches/gae_loop.py
"""

import time

import numpy as np

from rlhf_fast import ops

B, T = 512, 2048
rng = np.random.default_rng(0)
r = rng.standard_normal((B, T), dtype=np.float32)
v = rng.standard_normal((B, T), dtype=np.float32)
lengths = rng.integers(1, T + 1, B)
m = np.arange(T)[None] < lengths[:, None]
ts = []
for _ in range(200):
    a = time.perf_counter()
    ops.gae(r, v, m, gamma=1.0, lam=0.95)
    ts.append(time.perf_counter() - a)
ts = np.array(ts) * 1e3
print(
    f"first 40 median {np.median(ts[:40]):.3f} ms, last 100 median {np.median(ts[100:]):.3f} ms, "
    f"min {ts.min():.3f}"
)
