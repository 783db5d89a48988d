"""verl drop-ins (rlhf_fast.integrations.verl): against plain loops written here with
verl's conventions (always run), and against verl's own functions (run where verl is
importable: ``.venv-bench/bin/python -m pytest tests/test_integrations_verl.py``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rlhf_fast.integrations import verl as rv  # noqa: E402

try:
    from verl.trainer.ppo import core_algos
    from verl.utils import torch_functional as verl_F

    HAVE_VERL = True
except ImportError:  # the main .venv has no verl
    HAVE_VERL = False

needs_verl = pytest.mark.skipif(
    not HAVE_VERL,
    reason="verl is not importable here; run under .venv-bench "
    "(bash scripts/setup_bench_env.sh; .venv-bench/bin/python -m pytest tests/test_integrations_verl.py)",
)

SHAPES = [(1, 2), (3, 17), (8, 64), (16, 5)]
LAYOUTS = ["right", "left", "holes", "full"]
DTYPES = [torch.float32, torch.float64]


def _mask(rng: np.random.Generator, shape: tuple[int, int], layout: str) -> torch.Tensor:
    b, t = shape
    m = np.ones(shape, dtype=np.int64)
    lengths = rng.integers(1, t + 1, size=b)
    for i in range(b):
        if layout == "right":
            m[i, lengths[i] :] = 0
        elif layout == "left":
            m[i, : t - lengths[i]] = 0
        elif layout == "holes":
            m[i] = rng.random(t) < 0.6
            m[i, rng.integers(t)] = 1
    m.reshape(-1)[:2] = 1  # whitening needs two masked elements
    return torch.from_numpy(m)


def _case(seed: int, shape, layout, dtype):
    rng = np.random.default_rng(seed)
    rewards = torch.from_numpy(rng.standard_normal(shape)).to(dtype)
    values = torch.from_numpy(rng.standard_normal(shape)).to(dtype)
    return rng, rewards, values, _mask(rng, shape, layout)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def _verl_tol(dtype):
    """verl computes the Bessel factor ``count / (count - 1)`` of an integer mask in
    float32 (int / int tensor division), so float64 variances agree to ~1e-8 relative."""
    return _tol(dtype) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)


def _index(rng: np.random.Generator, b: int) -> np.ndarray:
    """Uids in shuffled order with unequal group sizes, singletons included."""
    ids = rng.integers(0, max(1, b // 2), size=b)
    return np.array([f"uid-{i}" for i in ids], dtype=object)


CASES = list(itertools.product(range(2), SHAPES, LAYOUTS, DTYPES))


# ------------------------------------------------------------------ plain loops
def _loop_whiten(x: np.ndarray, m: np.ndarray, shift_mean: bool = True) -> np.ndarray:
    sel = x[m.astype(bool)]
    mean, var = sel.mean(), sel.var(ddof=1)
    out = (x - mean) / math.sqrt(var + 1e-8)
    return out + mean if not shift_mean else out


def _loop_gae(r, v, m, gamma, lam):
    """verl's convention: masked steps carry the running state and are written with it."""
    b, t = r.shape
    adv = np.zeros_like(r)
    for i in range(b):
        next_value = next_adv = 0.0
        for j in reversed(range(t)):
            if m[i, j]:
                next_adv = r[i, j] + gamma * next_value - v[i, j] + gamma * lam * next_adv
                next_value = v[i, j]
            adv[i, j] = next_adv
    return _loop_whiten(adv, m), adv + v


def _loop_group(scores, index, grpo: bool, norm: bool, eps: float):
    groups: dict = {}
    for i, key in enumerate(index):
        groups.setdefault(key, []).append(i)
    out = scores.copy()
    for rows in groups.values():
        s = scores[rows]
        n = len(rows)
        for k, i in enumerate(rows):
            if grpo:
                mean, std = (s.mean(), s.std(ddof=1)) if n > 1 else (0.0, 1.0)
                out[i] = (s[k] - mean) / (std + eps) if norm else s[k] - mean
            elif n > 1:
                out[i] = s[k] - (s.sum() - s[k]) / (n - 1)
    return out


def _loop_kl(lp, ref, name):
    lr = lp - ref
    base = name.rstrip("+")
    if base in ("kl", "k1"):
        return lr
    if base == "abs":
        return np.abs(lr)
    if base in ("mse", "k2"):
        return 0.5 * lr**2
    k = np.clip(-lr, -20, 20)
    return np.clip(np.exp(k) - k - 1, -10, 10)


@pytest.mark.parametrize("seed,shape,layout,dtype", CASES)
def test_gae_matches_loop(seed, shape, layout, dtype):
    _, r, v, m = _case(seed, shape, layout, dtype)
    adv, ret = rv.compute_gae_advantage_return(r, v, m, 0.97, 0.9)
    want_adv, want_ret = _loop_gae(r.double().numpy(), v.double().numpy(), m.numpy(), 0.97, 0.9)
    assert adv.dtype == dtype and ret.dtype == dtype
    np.testing.assert_allclose(adv.double().numpy(), want_adv, **_tol(dtype))
    np.testing.assert_allclose(ret.double().numpy(), want_ret, **_tol(dtype))


@pytest.mark.parametrize("seed,shape,layout,dtype", CASES)
def test_group_advantages_match_loop(seed, shape, layout, dtype):
    rng, r, _, m = _case(seed, shape, layout, dtype)
    index = _index(rng, shape[0])
    scores = r.sum(-1).double().numpy()
    for norm in (True, False):
        adv, ret = rv.compute_grpo_outcome_advantage(r, m, index, norm_adv_by_std_in_grpo=norm)
        assert adv is ret
        want = _loop_group(scores, index, True, norm, 1e-6)[:, None] * m.numpy()
        np.testing.assert_allclose(adv.double().numpy(), want, **_tol(dtype))
    adv, _ = rv.compute_rloo_outcome_advantage(r, m, index)
    want = _loop_group(scores, index, False, False, 0.0)[:, None] * m.numpy()
    np.testing.assert_allclose(adv.double().numpy(), want, **_tol(dtype))


@pytest.mark.parametrize(
    "name", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "k1+", "k3+", "k2+"]
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_penalty_matches_loop(name, dtype):
    rng = np.random.default_rng(3)
    lp = torch.from_numpy(rng.standard_normal((5, 40)) * 8).to(dtype)
    ref = torch.from_numpy(rng.standard_normal((5, 40)) * 8).to(dtype)
    lp[0, 0], ref[0, 0] = 60.0, -60.0  # past the clamps
    got = rv.kl_penalty(lp, ref, name)
    np.testing.assert_allclose(
        got.double().numpy(),
        _loop_kl(lp.double().numpy(), ref.double().numpy(), name),
        **_tol(dtype),
    )
    # with a gradient: the value is the same; "+" carries the k2 gradient lp - ref
    lp_g = lp.clone().requires_grad_(True)
    out = rv.kl_penalty(lp_g, ref, name)
    np.testing.assert_allclose(out.detach().double().numpy(), got.double().numpy(), **_tol(dtype))
    out.sum().backward()
    if name.endswith("+"):
        np.testing.assert_allclose(
            lp_g.grad.double().numpy(), (lp - ref).double().numpy(), **_tol(dtype)
        )


def test_kl_penalty_unknown_names():
    x = torch.zeros(2, 3)
    for name in ("full", "nope", "full+"):
        with pytest.raises(NotImplementedError):
            rv.kl_penalty(x, x, name)


@pytest.mark.parametrize("seed,shape,layout,dtype", CASES)
def test_masked_moments_match_loop(seed, shape, layout, dtype):
    _, r, _, m = _case(seed, shape, layout, dtype)
    x, mm = r.double().numpy(), m.numpy()
    for shift in (True, False):
        got = rv.masked_whiten(r, m, shift_mean=shift)
        np.testing.assert_allclose(got.double().numpy(), _loop_whiten(x, mm, shift), **_tol(dtype))
    sel = x[mm.astype(bool)]
    np.testing.assert_allclose(float(rv.masked_mean(r, m)), sel.mean(), **_tol(dtype))
    np.testing.assert_allclose(float(rv.masked_var(r, m)), sel.var(ddof=1), **_tol(dtype))
    np.testing.assert_allclose(float(rv.masked_var(r, m, unbiased=False)), sel.var(), **_tol(dtype))


def test_bf16_is_computed_in_float32_and_cast_back():
    _, r, v, m = _case(0, (4, 9), "holes", torch.float32)
    adv, ret = rv.compute_gae_advantage_return(r.bfloat16(), v.bfloat16(), m, 1.0, 0.95)
    assert adv.dtype == ret.dtype == torch.bfloat16


def test_registered_gae_without_values_says_why():
    with pytest.raises(ValueError, match="register"):
        rv._gae_estimator(torch.zeros(2, 3), torch.ones(2, 3))


# ------------------------------------------------------------------ against verl
@needs_verl
@pytest.mark.parametrize("seed,shape,layout,dtype", CASES)
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
def test_gae_matches_verl(seed, shape, layout, dtype, gamma, lam):
    _, r, v, m = _case(seed, shape, layout, dtype)
    want = core_algos.compute_gae_advantage_return(r, v, m, gamma, lam)
    got = rv.compute_gae_advantage_return(r, v, m, gamma, lam)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, **_verl_tol(dtype))


@needs_verl
@pytest.mark.parametrize("seed,shape,layout,dtype", CASES)
def test_group_advantages_match_verl(seed, shape, layout, dtype):
    rng, r, _, m = _case(seed, shape, layout, dtype)
    index = _index(rng, shape[0])
    for norm in (True, False):
        want = core_algos.compute_grpo_outcome_advantage(
            r.clone(), m, index, norm_adv_by_std_in_grpo=norm
        )
        got = rv.compute_grpo_outcome_advantage(r.clone(), m, index, norm_adv_by_std_in_grpo=norm)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **_verl_tol(dtype))
    want = core_algos.compute_rloo_outcome_advantage(r.clone(), m, index)
    got = rv.compute_rloo_outcome_advantage(r.clone(), m, index)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **_verl_tol(dtype))


@needs_verl
@pytest.mark.parametrize(
    "name", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "k1+", "k3+", "k2+", "abs+"]
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (4, 33), (2, 3, 11)])
def test_kl_penalty_matches_verl(name, dtype, shape):
    rng = np.random.default_rng(5)
    lp = torch.from_numpy(rng.standard_normal(shape) * 10).to(dtype)
    ref = torch.from_numpy(rng.standard_normal(shape) * 10).to(dtype)
    torch.testing.assert_close(
        rv.kl_penalty(lp, ref, name), core_algos.kl_penalty(lp, ref, name), **_verl_tol(dtype)
    )
    grads = []
    for fn in (rv.kl_penalty, core_algos.kl_penalty):
        x = lp.clone().requires_grad_(True)
        fn(x, ref, name).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], **_verl_tol(dtype))


@needs_verl
@pytest.mark.parametrize("seed,shape,layout,dtype", CASES)
def test_masked_moments_match_verl(seed, shape, layout, dtype):
    _, r, _, m = _case(seed, shape, layout, dtype)
    for shift in (True, False):
        torch.testing.assert_close(
            rv.masked_whiten(r, m, shift_mean=shift),
            verl_F.masked_whiten(r, m, shift_mean=shift),
            **_verl_tol(dtype),
        )
    torch.testing.assert_close(rv.masked_mean(r, m), verl_F.masked_mean(r, m), **_verl_tol(dtype))
    torch.testing.assert_close(
        rv.masked_mean(r, m, axis=-1), verl_F.masked_mean(r, m, axis=-1), **_verl_tol(dtype)
    )
    torch.testing.assert_close(rv.masked_var(r, m), verl_F.masked_var(r, m), **_verl_tol(dtype))


@needs_verl
def test_register_adds_estimators_and_routes_gae():
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo import utils as ppo_utils

    assert rv.register() == rv.ESTIMATOR_NAMES
    assert rv.register() == rv.ESTIMATOR_NAMES  # idempotent
    rng, r, v, m = _case(1, (6, 12), "holes", torch.float32)
    index = np.array(list("aabbbc"), dtype=object)
    cfg = AlgoConfig(gamma=0.9, lam=0.8)

    # verl's generic branch: token_level_rewards, response_mask, config, index
    for ours, theirs in (("rlhf_fast_grpo", "grpo"), ("rlhf_fast_rloo", "rloo")):
        kwargs = dict(token_level_rewards=r.clone(), response_mask=m, config=cfg, index=index)
        got = core_algos.get_adv_estimator_fn(ours)(**kwargs)
        want = core_algos.get_adv_estimator_fn(theirs)(
            **dict(kwargs, token_level_rewards=r.clone())
        )
        torch.testing.assert_close(got[0], want[0], **_tol(torch.float32))

    # the compute_advantage wrapper hands rlhf_fast_gae the values, gamma and lam
    calls = []
    wrapped = rv._wrap_compute_advantage(
        lambda data, **kw: calls.append(kw["adv_estimator"]) or data
    )
    data = DataProto.from_dict(
        tensors={"token_level_rewards": r, "values": v, "response_mask": m},
        non_tensors={"uid": index},
    )
    out = wrapped(data, "rlhf_fast_gae", gamma=0.9, lam=0.8, config=cfg)
    want = core_algos.compute_gae_advantage_return(r, v, m, 0.9, 0.8)
    torch.testing.assert_close(out.batch["advantages"], want[0], **_tol(torch.float32))
    torch.testing.assert_close(out.batch["returns"], want[1], **_tol(torch.float32))
    wrapped(data, "grpo", config=cfg)
    assert calls == ["grpo"]

    # the critic is on for rlhf_fast_gae as for gae, unless critic.enable says otherwise
    def config(name, enable=None):
        return OmegaConf.create(
            {"critic": {"enable": enable}, "algorithm": {"adv_estimator": name}}
        )

    assert ppo_utils.need_critic(config("rlhf_fast_gae")) is True
    assert ppo_utils.need_critic(config("rlhf_fast_gae", False)) is False
    with pytest.warns(UserWarning):
        assert ppo_utils.need_critic(config("rlhf_fast_grpo")) is False


@needs_verl
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_mask_dtypes_and_empty_rows_match_verl(mask_dtype):
    rng, r, v, m = _case(4, (6, 20), "holes", torch.float32)
    m[2] = 0  # a row with no response token
    m = m.to(mask_dtype)
    # verl's GAE computes ``1 - mask``, which torch refuses for bool; the drop-in takes bool
    verl_m = m.long() if mask_dtype == torch.bool else m
    want = core_algos.compute_gae_advantage_return(r, v, verl_m, 0.99, 0.95)
    got = rv.compute_gae_advantage_return(r, v, m, 0.99, 0.95)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **_tol(torch.float32))
    index = _index(rng, 6)
    want = core_algos.compute_grpo_outcome_advantage(r.clone(), m, index)
    got = rv.compute_grpo_outcome_advantage(r.clone(), m, index)
    torch.testing.assert_close(got[0], want[0], **_tol(torch.float32))
