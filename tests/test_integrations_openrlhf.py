"""OpenRLHF drop-ins (rlhf_fast.integrations.openrlhf) against plain loops written here
with OpenRLHF's conventions (OpenRLHF itself is not installed anywhere here)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rlhf_fast.integrations import openrlhf as ro  # noqa: E402

SHAPES = [(1, 1), (3, 17), (8, 64)]
LAYOUTS = ["right", "left", "holes", "full"]
DTYPES = [torch.float32, torch.float64]
CASES = list(itertools.product(range(2), SHAPES, LAYOUTS, DTYPES))


def _case(seed, shape, layout, dtype):
    rng = np.random.default_rng(seed)
    b, t = shape
    m = np.ones(shape, dtype=np.int64)
    lengths = rng.integers(0, t + 1, size=b)
    for i in range(b):
        if layout == "right":
            m[i, lengths[i] :] = 0
        elif layout == "left":
            m[i, : t - lengths[i]] = 0
        elif layout == "holes":
            m[i] = rng.random(t) < 0.6
    x = [torch.from_numpy(rng.standard_normal(shape)).to(dtype) for _ in range(3)]
    return rng, x, torch.from_numpy(m)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def _loop_gae(v, r, m, gamma, lam):
    """OpenRLHF's convention: the mask is multiplied in, every position is a step."""
    v, r = v * m, r * m
    b, t = r.shape
    adv = np.zeros_like(r)
    for i in range(b):
        last = 0.0
        for j in reversed(range(t)):
            nxt = v[i, j + 1] if j < t - 1 else 0.0
            last = r[i, j] + gamma * nxt - v[i, j] + gamma * lam * last
            adv[i, j] = last
    return adv, adv + v


@pytest.mark.parametrize("seed,shape,layout,dtype", CASES)
def test_gae_matches_loop(seed, shape, layout, dtype):
    _, (v, r, _), m = _case(seed, shape, layout, dtype)
    adv, ret = ro.get_advantages_and_returns(v, r, m, 0.97, 0.9)
    want_adv, want_ret = _loop_gae(v.double().numpy(), r.double().numpy(), m.numpy(), 0.97, 0.9)
    assert adv.dtype == ret.dtype == dtype
    np.testing.assert_allclose(adv.double().numpy(), want_adv, **_tol(dtype))
    np.testing.assert_allclose(ret.double().numpy(), want_ret, **_tol(dtype))


def test_gae_packed_lists_match_rows():
    _, (v, r, _), _ = _case(0, (4, 9), "full", torch.float32)
    vs = [v[0, :3], v[1, :9], v[2, :1], v[3, :5]]
    rs = [r[0, :3], r[1, :9], r[2, :1], r[3, :5]]
    advs, rets = ro.get_advantages_and_returns(vs, rs, None, 1.0, 0.95)
    for vi, ri, a, rt in zip(vs, rs, advs, rets):
        wa, wr = _loop_gae(vi[None].double().numpy(), ri[None].double().numpy(), 1.0, 1.0, 0.95)
        np.testing.assert_allclose(a.double().numpy(), wa[0], **_tol(torch.float32))
        np.testing.assert_allclose(rt.double().numpy(), wr[0], **_tol(torch.float32))


@pytest.mark.parametrize("seed,shape,layout,dtype", CASES)
@pytest.mark.parametrize("kl_coef,clip", [(0.05, None), (-1.0, (-0.5, 0.5))])
def test_compute_reward_matches_loop(seed, shape, layout, dtype, kl_coef, clip):
    _, (kl, _, _), m = _case(seed, shape, layout, dtype)
    r = torch.linspace(-2.0, 2.0, shape[0], dtype=dtype)
    got = ro.compute_reward(r, kl_coef, kl, action_mask=m, reward_clip_range=clip)
    coef = max(kl_coef, 0.0)
    score = r.double().numpy() if clip is None else np.clip(r.double().numpy(), *clip)
    want = -coef * kl.double().numpy()
    for i in range(shape[0]):
        last = shape[1] - 1  # a row without action tokens: the last position
        for j in reversed(range(shape[1])):
            if m[i, j] > 0.5:
                last = j
                break
        want[i, last] += score[i]
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), want, **_tol(dtype))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_compute_approx_kl_matches_loop(estimator, dtype):
    rng = np.random.default_rng(1)
    lp = torch.from_numpy(rng.standard_normal((4, 30)) * 3).to(dtype)
    base = torch.from_numpy(rng.standard_normal((4, 30)) * 3).to(dtype)
    lr = lp.double().numpy() - base.double().numpy()
    want = {"k1": lr, "k2": lr**2 / 2, "k3": np.exp(-lr) - 1 + lr}[estimator]
    got = ro.compute_approx_kl(lp, base, estimator)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = _tol(torch.float64 if dtype == torch.float64 else torch.float32)
    np.testing.assert_allclose(got.double().numpy(), want, **tol)
    lp_g = lp.clone().float().requires_grad_(True)
    out = ro.compute_approx_kl(lp_g, base, estimator)
    out.sum().backward()
    assert lp_g.grad is not None and math.isfinite(float(lp_g.grad.sum()))
    np.testing.assert_allclose(out.detach().double().numpy(), want, **_tol(torch.float32))


def test_compute_approx_kl_unknown_estimator():
    with pytest.raises(ValueError, match="kl_estimator"):
        ro.compute_approx_kl(torch.zeros(2, 2), torch.zeros(2, 2), "k4")
