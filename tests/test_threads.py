"""The kernel thread pool: thread count control, the environment switch, and fork safety."""

import multiprocessing as mp
import os
import subprocess
import sys

import numpy as np
import pytest

import rlhf_fast

# Large enough that the kernels use the pool (>= 2**18 elements).
ROWS, COLS = 256, 1024


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    rewards = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    values = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    lengths = rng.integers(1, COLS + 1, ROWS)
    mask = np.arange(COLS)[None, :] < lengths[:, None]
    return rewards, values, mask


def test_set_num_threads_round_trips_and_rejects_zero():
    before = rlhf_fast.get_num_threads()
    try:
        rlhf_fast.set_num_threads(3)
        assert rlhf_fast.get_num_threads() == 3
        with pytest.raises(rlhf_fast.InvalidArgumentError, match="n must be >= 1"):
            rlhf_fast.set_num_threads(0)
    finally:
        rlhf_fast.set_num_threads(before)


def test_environment_variable_sets_the_default():
    code = "import rlhf_fast; print(rlhf_fast.get_num_threads())"
    env = {**os.environ, "RLHF_FAST_NUM_THREADS": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "3"


def _child_gae(queue):
    rewards, values, mask = _batch()
    adv, _ = rlhf_fast.gae(rewards, values, mask, gamma=0.99, lam=0.95)
    queue.put(float(adv.sum()))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_kernels_work_in_a_forked_child_after_the_parent_used_the_pool():
    before = rlhf_fast.get_num_threads()
    rlhf_fast.set_num_threads(2)
    try:
        rewards, values, mask = _batch()
        adv, _ = rlhf_fast.gae(rewards, values, mask, gamma=0.99, lam=0.95)  # starts the pool
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_gae, args=(queue,))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0, "the forked child hung or crashed"
        assert queue.get(timeout=5) == float(adv.sum())
    finally:
        rlhf_fast.set_num_threads(before)
