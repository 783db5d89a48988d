"""Each kernel against the plain numpy and torch loops a user would otherwise write.

float32, B x T from 64 x 256 to 512 x 2048, right-padded responses (each row's
length uniform in [T/2, T]). Implementations:

- ``rlhf_fast``: the public API, fresh output arrays;
- ``rlhf_fast_out``: the same with preallocated ``out=`` buffers (no page faults);
- ``numpy_loop`` / ``torch_loop``: a reversed loop over T, vectorised over rows, with the
  same masked semantics (GAE), or the usual vectorised expressions (the rest).

Every result is checked with ``allclose`` against ``rlhf_fast.reference`` (on a sample
of rows for the per-row kernels, where the Python reference is slow) before
``extra_info["correct"]`` is set; ``extra_info["M_elements_per_s"]`` is B*T over the
median time. torch runs with its default thread count, rlhf_fast with its own
(both recorded in the machine info).

    .venv/bin/python -m pytest benches/test_kernels_bench.py -m benchmark -k "gae and 512x2048"
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import pytest

import rlhf_fast
from rlhf_fast import reference

torch = pytest.importorskip("torch")

SHAPES = [(64, 256), (128, 512), (256, 1024), (512, 2048)]
SHAPE_IDS = [f"{b}x{t}" for b, t in SHAPES]
IMPLS = ["rlhf_fast", "rlhf_fast_out", "numpy_loop", "torch_loop"]
GAMMA, LAM, KL_COEF, GROUP_SIZE = 1.0, 0.95, 0.05, 16
CHECKED_ROWS = 16


@functools.cache
def batch(b: int, t: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(b * 100_003 + t)
    lengths = rng.integers(t // 2, t + 1, size=b)
    mask = np.arange(t)[None, :] < lengths[:, None]
    f32 = lambda: rng.standard_normal((b, t)).astype(np.float32)  # noqa: E731
    return {
        "rewards": f32(),
        "values": f32(),
        "logprobs": f32() - 2,
        "ref_logprobs": f32() - 2,
        "scores": rng.standard_normal(b).astype(np.float32),
        "mask": mask,
        "lengths": lengths,
    }


def run(benchmark: Any, fn: Callable[[], Any], elements: int, group: str) -> Any:
    benchmark.group = group
    benchmark.extra_info["elements"] = elements
    result = benchmark(fn)
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["M_elements_per_s"] = elements / median / 1e6
    return result


def sample_rows(b: int) -> np.ndarray:
    return np.arange(0, b, max(1, b // CHECKED_ROWS))


def assert_close(got: np.ndarray, want: np.ndarray, scale: float) -> None:
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-4 * scale)


# ------------------------------------------------------------------ GAE
def gae_numpy_loop(rewards, values, mask, gamma, lam):
    b, t = rewards.shape
    advantages = np.zeros_like(rewards)
    next_value = np.zeros(b, rewards.dtype)
    next_adv = np.zeros(b, rewards.dtype)
    for step in reversed(range(t)):
        m = mask[:, step]
        delta = rewards[:, step] + gamma * next_value - values[:, step]
        adv = delta + gamma * lam * next_adv
        advantages[:, step] = np.where(m, adv, 0)
        next_value = np.where(m, values[:, step], next_value)
        next_adv = np.where(m, adv, next_adv)
    return advantages, np.where(mask, advantages + values, 0)


def gae_torch_loop(rewards, values, mask, gamma, lam):
    b, t = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(b, dtype=rewards.dtype)
    next_adv = torch.zeros(b, dtype=rewards.dtype)
    zero = torch.zeros((), dtype=rewards.dtype)
    for step in reversed(range(t)):
        m = mask[:, step]
        delta = rewards[:, step] + gamma * next_value - values[:, step]
        adv = delta + gamma * lam * next_adv
        advantages[:, step] = torch.where(m, adv, zero)
        next_value = torch.where(m, values[:, step], next_value)
        next_adv = torch.where(m, adv, next_adv)
    return advantages, torch.where(mask, advantages + values, zero)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_gae(benchmark, shape, impl):
    b, t = shape
    d = batch(b, t)
    r, v, m = d["rewards"], d["values"], d["mask"]
    if impl == "rlhf_fast":
        fn = lambda: rlhf_fast.gae(r, v, m, gamma=GAMMA, lam=LAM)  # noqa: E731
    elif impl == "rlhf_fast_out":
        adv_out, ret_out = np.empty_like(r), np.empty_like(r)
        fn = lambda: rlhf_fast.gae(  # noqa: E731
            r, v, m, gamma=GAMMA, lam=LAM, advantages_out=adv_out, returns_out=ret_out
        )
    elif impl == "numpy_loop":
        fn = lambda: gae_numpy_loop(r, v, m, GAMMA, LAM)  # noqa: E731
    else:
        rt, vt, mt = torch.from_numpy(r), torch.from_numpy(v), torch.from_numpy(m)
        fn = lambda: gae_torch_loop(rt, vt, mt, GAMMA, LAM)  # noqa: E731
    adv, ret = run(benchmark, fn, b * t, f"gae {b}x{t}")
    rows = sample_rows(b)
    want_adv, want_ret = reference.gae(
        r[rows].astype(np.float64), v[rows].astype(np.float64), m[rows], GAMMA, LAM
    )
    assert_close(np.asarray(adv)[rows], want_adv, scale=20)
    assert_close(np.asarray(ret)[rows], want_ret, scale=20)
    benchmark.extra_info["correct"] = True


# ------------------------------------------------------------------ KL shaping
def kl_numpy(lp, ref, mask, scores, kl_coef):
    kl = np.where(mask, lp - ref, 0)
    rewards = -kl_coef * kl
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    has_any = mask.any(axis=1)
    rows = np.nonzero(has_any)[0]
    rewards[rows, last[rows]] += scores[rows]
    return rewards, kl


def kl_torch(lp, ref, mask, scores, kl_coef):
    kl = torch.where(mask, lp - ref, torch.zeros((), dtype=lp.dtype))
    rewards = -kl_coef * kl
    last = mask.shape[1] - 1 - torch.argmax(mask.flip(1).to(torch.uint8), dim=1)
    rows = torch.nonzero(mask.any(dim=1)).squeeze(1)
    rewards[rows, last[rows]] += scores[rows]
    return rewards, kl


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_kl_shaped_rewards(benchmark, shape, impl):
    b, t = shape
    d = batch(b, t)
    lp, ref, m, s = d["logprobs"], d["ref_logprobs"], d["mask"], d["scores"]
    if impl == "rlhf_fast":
        fn = lambda: rlhf_fast.kl_shaped_rewards(lp, ref, m, s, kl_coef=KL_COEF)  # noqa: E731
    elif impl == "rlhf_fast_out":
        r_out, k_out = np.empty_like(lp), np.empty_like(lp)
        fn = lambda: rlhf_fast.kl_shaped_rewards(  # noqa: E731
            lp, ref, m, s, kl_coef=KL_COEF, rewards_out=r_out, kl_out=k_out
        )
    elif impl == "numpy_loop":
        fn = lambda: kl_numpy(lp, ref, m, s, KL_COEF)  # noqa: E731
    else:
        args = [torch.from_numpy(a) for a in (lp, ref, m, s)]
        fn = lambda: kl_torch(*args, KL_COEF)  # noqa: E731
    rewards, kl = run(benchmark, fn, b * t, f"kl_shaped_rewards {b}x{t}")
    rows = sample_rows(b)
    want_rewards, want_kl = reference.kl_shaped_rewards(
        lp[rows].astype(np.float64), ref[rows].astype(np.float64), m[rows], s[rows], KL_COEF
    )
    assert_close(np.asarray(rewards)[rows], want_rewards, scale=5)
    assert_close(np.asarray(kl)[rows], want_kl, scale=5)
    benchmark.extra_info["correct"] = True


# ------------------------------------------------------------------ whitening
def whiten_numpy(x, mask):
    sel = x[mask]
    mean, var = sel.mean(dtype=np.float64), sel.var(ddof=1, dtype=np.float64)
    return np.where(mask, (x - mean) / np.sqrt(var + 1e-8), 0).astype(x.dtype)


def whiten_torch(x, mask):
    m = mask.to(x.dtype)
    count = m.sum()
    mean = (x * m).sum() / count
    var = (((x - mean) ** 2) * m).sum() / (count - 1)
    return (x - mean) * torch.rsqrt(var + 1e-8) * m


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_masked_whiten(benchmark, shape, impl):
    b, t = shape
    d = batch(b, t)
    x, m = d["values"], d["mask"]
    if impl == "rlhf_fast":
        fn = lambda: rlhf_fast.masked_whiten(x, m)  # noqa: E731
    elif impl == "rlhf_fast_out":
        out = np.empty_like(x)
        fn = lambda: rlhf_fast.masked_whiten(x, m, out=out)  # noqa: E731
    elif impl == "numpy_loop":
        fn = lambda: whiten_numpy(x, m)  # noqa: E731
    else:
        xt, mt = torch.from_numpy(x), torch.from_numpy(m)
        fn = lambda: whiten_torch(xt, mt)  # noqa: E731
    got = run(benchmark, fn, b * t, f"masked_whiten {b}x{t}")
    assert_close(np.asarray(got), reference.masked_whiten(x.astype(np.float64), m), scale=5)
    benchmark.extra_info["correct"] = True


# ------------------------------------------------------------------ group advantages
def grpo_numpy(scores, group_size):
    g = scores.reshape(-1, group_size).astype(np.float64)
    adv = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)
    return adv.reshape(-1).astype(scores.dtype)


def grpo_torch(scores, group_size):
    g = scores.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-6)).view(-1)


@pytest.mark.parametrize("impl", ["rlhf_fast", "numpy_loop", "torch_loop"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_group_advantages(benchmark, shape, impl):
    b, t = shape
    scores = batch(b, t)["rewards"].reshape(-1)  # B*T scores in groups of GROUP_SIZE
    if impl == "rlhf_fast":
        fn = lambda: rlhf_fast.group_advantages(scores, group_size=GROUP_SIZE)  # noqa: E731
    elif impl == "numpy_loop":
        fn = lambda: grpo_numpy(scores, GROUP_SIZE)  # noqa: E731
    else:
        st = torch.from_numpy(scores)
        fn = lambda: grpo_torch(st, GROUP_SIZE)  # noqa: E731
    got = np.asarray(run(benchmark, fn, b * t, f"group_advantages {b}x{t}"))
    part = slice(0, GROUP_SIZE * CHECKED_ROWS)
    want = reference.group_advantages(scores[part].astype(np.float64), GROUP_SIZE)
    assert_close(got[part], want, scale=5)
    benchmark.extra_info["correct"] = True


# ------------------------------------------------------------------ ragged -> padded
def pad_numpy(sequences, t):
    padded = np.zeros((len(sequences), t), sequences[0].dtype)
    mask = np.zeros((len(sequences), t), bool)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = seq
        mask[row, : len(seq)] = True
    return padded, mask


def pad_torch(sequences):
    padded = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)
    lengths = torch.tensor([len(s) for s in sequences])
    return padded, torch.arange(padded.shape[1])[None, :] < lengths[:, None]


@pytest.mark.parametrize("impl", ["rlhf_fast", "numpy_loop", "torch_loop"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_pad_ragged(benchmark, shape, impl):
    b, t = shape
    d = batch(b, t)
    sequences = [row[:n] for row, n in zip(d["logprobs"], d["lengths"])]
    longest = int(d["lengths"].max())
    if impl == "rlhf_fast":
        fn = lambda: rlhf_fast.pad_ragged(sequences)  # noqa: E731
    elif impl == "numpy_loop":
        fn = lambda: pad_numpy(sequences, longest)  # noqa: E731
    else:
        tensors = [torch.from_numpy(s) for s in sequences]
        fn = lambda: pad_torch(tensors)  # noqa: E731
    padded, mask = run(benchmark, fn, b * t, f"pad_ragged {b}x{t}")
    want, want_mask = reference.pad_ragged(sequences)
    np.testing.assert_array_equal(np.asarray(padded), want)
    np.testing.assert_array_equal(np.asarray(mask), want_mask)
    benchmark.extra_info["correct"] = True
