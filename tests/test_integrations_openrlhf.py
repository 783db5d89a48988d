"""OpenRLHF drop-ins (rlhf_fast.integrations.openrlhf): against plain loops written here
with OpenRLHF's conventions (always run), and against OpenRLHF 0.11.2's own functions
(run where OpenRLHF is installed: ``.venv-bench/bin/python -m pytest
tests/test_integrations_openrlhf.py``).

OpenRLHF's package imports deepspeed, Ray and vLLM on the way to these functions, so the
OpenRLHF-side tests load them from OpenRLHF's installed source files without importing
the package: ``openrlhf/models/utils.py`` as a module (its one
heavy import, deepspeed, is only used by ``set_z3_leaf_modules``; an empty stand-in is
put in its place when deepspeed is missing), and the two ``RemoteExperienceMaker``
methods compiled from ``openrlhf/trainer/ppo_utils/experience_maker.py`` on their own.
OpenRLHF's own tests load these files the same way."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import math
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from rlhf_fast.integrations import openrlhf as ro  # noqa: E402

SHAPES = [(1, 1), (3, 17), (8, 64)]
LAYOUTS = ["right", "left", "holes", "full"]
DTYPES = [torch.float32, torch.float64]
CASES = list(itertools.product(range(2), SHAPES, LAYOUTS, DTYPES))


def _load_openrlhf():
    """OpenRLHF's ``models/utils.py`` module and its experience maker's GAE and
    returns methods, from the installed source files; ``None`` when not installed."""
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent
    stub = None
    if importlib.util.find_spec("deepspeed") is None:
        stub = sys.modules.setdefault("deepspeed", types.ModuleType("deepspeed"))
    try:
        uspec = importlib.util.spec_from_file_location(
            "_rlhf_fast_openrlhf_utils", root / "models" / "utils.py"
        )
        utils = importlib.util.module_from_spec(uspec)
        uspec.loader.exec_module(utils)
    finally:
        if stub is not None and sys.modules.get("deepspeed") is stub:
            del sys.modules["deepspeed"]
    path = root / "trainer" / "ppo_utils" / "experience_maker.py"
    source = path.read_text()
    cls = next(
        n
        for n in ast.parse(source).body
        if isinstance(n, ast.ClassDef) and n.name == "RemoteExperienceMaker"
    )
    ns: dict = {"torch": torch}
    exec("from typing import List, Tuple", ns)
    methods = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name in (
            "get_advantages_and_returns",
            "get_cumulative_returns",
        ):
            code = textwrap.dedent(ast.get_source_segment(source, node))
            exec(compile(code, str(path), "exec"), ns)
            methods[node.name] = ns[node.name]
    return types.SimpleNamespace(utils=utils, root=root, **methods)


PEER = _load_openrlhf()
needs_openrlhf = pytest.mark.skipif(
    PEER is None,
    reason="openrlhf is not installed here; run under .venv-bench "
    "(bash scripts/setup_bench_env.sh; "
    ".venv-bench/bin/python -m pytest tests/test_integrations_openrlhf.py)",
)


def _mask(rng, shape, layout, allow_empty=True):
    b, t = shape
    m = np.ones(shape, dtype=np.int64)
    lengths = rng.integers(0 if allow_empty else 1, t + 1, size=b)
    for i in range(b):
        if layout == "right":
            m[i, lengths[i] :] = 0
        elif layout == "left":
            m[i, : t - lengths[i]] = 0
        elif layout == "holes":
            m[i] = rng.random(t) < 0.6
    return m


def _case(seed, shape, layout, dtype):
    rng = np.random.default_rng(seed)
    m = _mask(rng, shape, layout)
    x = [torch.from_numpy(rng.standard_normal(shape)).to(dtype) for _ in range(3)]
    return rng, x, torch.from_numpy(m)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ plain loops
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


def _loop_returns(r, m, gamma):
    r = r * m
    out = np.zeros_like(r)
    for i in range(r.shape[0]):
        acc = 0.0
        for j in reversed(range(r.shape[1])):
            acc = r[i, j] + gamma * acc
            out[i, j] = acc
    return out


def _loop_kl(lr, estimator):
    if estimator == "k1":
        value = lr
    elif estimator == "k2":
        value = lr**2 / 2
    else:
        c = np.maximum(lr, -10.0)
        value = np.exp(-c) - 1 + c
    return np.clip(value, -10.0, 10.0)


@st.composite
def gae_inputs(draw: st.DrawFn):
    b, t = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m = _mask(rng, (b, t), layout)
    mask_dtype = draw(st.sampled_from([torch.bool, torch.int64, torch.float32]))
    v, r = (torch.from_numpy(rng.standard_normal((b, t))).to(dtype) for _ in range(2))
    gamma = draw(st.sampled_from([1.0, 0.99]))
    lam = draw(st.sampled_from([1.0, 0.95, 0.0]))
    return v, r, torch.from_numpy(m).to(mask_dtype), gamma, lam


# ------------------------------------------------------------------ against the loops
@settings(deadline=None, max_examples=80)
@given(data=gae_inputs())
def test_gae_matches_loop(data):
    v, r, m, gamma, lam = data
    adv, ret = ro.get_advantages_and_returns(v, r, m, gamma, lam)
    md = m.double().numpy()
    want_adv, want_ret = _loop_gae(v.double().numpy(), r.double().numpy(), md, gamma, lam)
    want_dtype = torch.promote_types(v.dtype, m.dtype) if m.is_floating_point() else v.dtype
    assert adv.dtype == ret.dtype == want_dtype
    np.testing.assert_allclose(adv.double().numpy(), want_adv, **_tol(want_dtype))
    np.testing.assert_allclose(ret.double().numpy(), want_ret, **_tol(want_dtype))


@settings(deadline=None, max_examples=60)
@given(data=gae_inputs())
def test_cumulative_returns_match_loop(data):
    _, r, m, gamma, _ = data
    got = ro.get_cumulative_returns(r, m, gamma)
    assert got.dtype == r.dtype
    want = _loop_returns(r.double().numpy(), m.double().numpy(), gamma)
    np.testing.assert_allclose(got.double().numpy(), want, **_tol(r.dtype))
    np.testing.assert_allclose(
        ro.get_cumulative_returns(r, None, gamma).double().numpy(),
        _loop_returns(r.double().numpy(), 1.0, gamma),
        **_tol(r.dtype),
    )


def test_gae_without_mask_and_bf16():
    _, (v, r, _), _ = _case(0, (3, 17), "full", torch.float32)
    adv, ret = ro.get_advantages_and_returns(v, r, None, 0.99, 0.95)
    want_adv, _ = _loop_gae(v.double().numpy(), r.double().numpy(), 1.0, 0.99, 0.95)
    np.testing.assert_allclose(adv.double().numpy(), want_adv, **_tol(torch.float32))
    adv16, _ = ro.get_advantages_and_returns(v.bfloat16(), r.float(), None, 0.99, 0.95)
    assert adv16.dtype == torch.float32  # promotion of bf16 values and float32 rewards


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
    # wide enough that every estimator meets the [-10, 10] clamp and k3 its lr >= -10
    lp = torch.from_numpy(rng.standard_normal((4, 30)) * 8).to(dtype)
    base = torch.from_numpy(rng.standard_normal((4, 30)) * 8).to(dtype)
    lr = lp.float().double().numpy() - base.float().double().numpy()
    want = _loop_kl(lr, estimator)
    got = ro.compute_approx_kl(lp, base, kl_estimator=estimator)
    assert got.dtype == torch.float32  # OpenRLHF upcasts (and downcasts float64) to float32
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-5)
    lp_g = lp.clone().float().requires_grad_(True)
    out = ro.compute_approx_kl(lp_g, base, kl_estimator=estimator)
    out.sum().backward()
    assert lp_g.grad is not None and math.isfinite(float(lp_g.grad.sum()))
    np.testing.assert_allclose(out.detach().double().numpy(), want, rtol=1e-5, atol=1e-5)


def test_compute_approx_kl_unbiased_gradient():
    rng = np.random.default_rng(2)
    lp = torch.from_numpy(rng.standard_normal((3, 9))).float()
    base = torch.from_numpy(rng.standard_normal((3, 9))).float()
    old = torch.from_numpy(rng.standard_normal((3, 9))).float()
    lp_g = lp.clone().requires_grad_(True)
    out = ro.compute_approx_kl(lp_g, base, old, kl_estimator="k3", unbiased_gradient=True)
    out.sum().backward()
    w = (lp - old).exp().clamp(max=ro.KL_IS_WEIGHT_CLIP)
    torch.testing.assert_close(lp_g.grad, w * (lp - base))
    torch.testing.assert_close(out.detach(), ro.compute_approx_kl(lp, base, kl_estimator="k3"))


def test_compute_approx_kl_unknown_estimator():
    with pytest.raises(ValueError, match="kl_estimator"):
        ro.compute_approx_kl(torch.zeros(2, 2), torch.zeros(2, 2), kl_estimator="k4")


def test_patch_replaces_and_restores():
    class RemoteExperienceMaker:
        def get_advantages_and_returns(self, *args):
            return "theirs"

        def get_cumulative_returns(self, *args):
            return "theirs"

    module = types.SimpleNamespace(
        RemoteExperienceMaker=RemoteExperienceMaker, compute_reward=None, compute_approx_kl=None
    )
    undo = ro.patch(module)
    assert module.compute_reward is ro.compute_reward
    assert module.compute_approx_kl is ro.compute_approx_kl
    v = torch.ones(1, 3)
    adv, _ = RemoteExperienceMaker().get_advantages_and_returns(v, v, None, 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[3.0, 2.0, 1.0]]) - v)
    undo()
    assert RemoteExperienceMaker().get_cumulative_returns() == "theirs"
    assert module.compute_reward is None


# ------------------------------------------------------------------ against OpenRLHF 0.11.2
@needs_openrlhf
@settings(deadline=None, max_examples=80)
@given(data=gae_inputs())
def test_gae_matches_openrlhf(data):
    v, r, m, gamma, lam = data
    want_adv, want_ret = PEER.get_advantages_and_returns(None, v, r, m, gamma, lam)
    adv, ret = ro.get_advantages_and_returns(v, r, m, gamma, lam)
    assert adv.dtype == want_adv.dtype and ret.dtype == want_ret.dtype
    torch.testing.assert_close(adv, want_adv, **_tol(v.dtype))
    torch.testing.assert_close(ret, want_ret, **_tol(v.dtype))


@needs_openrlhf
@settings(deadline=None, max_examples=60)
@given(data=gae_inputs(), masked=st.booleans())
def test_cumulative_returns_match_openrlhf(data, masked):
    _, r, m, gamma, _ = data
    m = m if masked else None
    want = PEER.get_cumulative_returns(None, r, m, gamma)
    got = ro.get_cumulative_returns(r, m, gamma)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, **_tol(r.dtype))


@needs_openrlhf
@pytest.mark.parametrize("seed,shape,layout,dtype", CASES)
@pytest.mark.parametrize("kl_coef,clip", [(0.05, None), (0.0, None), (-1.0, (-0.5, 0.5))])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_compute_reward_matches_openrlhf(seed, shape, layout, dtype, kl_coef, clip, mask_dtype):
    _, (kl, _, _), m = _case(seed, shape, layout, dtype)
    m = m.to(mask_dtype)
    r = torch.linspace(-2.0, 2.0, shape[0], dtype=torch.float32)
    want = PEER.utils.compute_reward(r, kl_coef, kl, action_mask=m, reward_clip_range=clip)
    got = ro.compute_reward(r, kl_coef, kl, action_mask=m, reward_clip_range=clip)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, **_tol(dtype))


@needs_openrlhf
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("with_old", [False, True])
def test_compute_approx_kl_matches_openrlhf(estimator, dtype, unbiased, with_old):
    rng = np.random.default_rng(7)
    lp, base, old = (torch.from_numpy(rng.standard_normal((5, 33)) * 6).to(dtype) for _ in range(3))
    old = old if with_old else None
    kw = dict(kl_estimator=estimator, unbiased_gradient=unbiased)
    want = PEER.utils.compute_approx_kl(lp, base, old, **kw)
    got = ro.compute_approx_kl(lp, base, old, **kw)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # with a gradient: the same value and the same gradient
    grads = []
    for fn in (PEER.utils.compute_approx_kl, ro.compute_approx_kl):
        x = lp.clone().requires_grad_(True)
        out = fn(x, base, old, **kw)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append((out.detach(), x.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-5)
