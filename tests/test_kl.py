"""KL-shaped rewards: estimators, clamp, and the score on the last masked token."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FLOAT_DTYPES, Padded, packed_from_padded, padded_batches, tolerance
from hypothesis import given, settings
from hypothesis import strategies as st

import rlhf_fast
from rlhf_fast import reference
from rlhf_fast.ops import kl_shaped_rewards

estimators = st.sampled_from(["k1", "abs", "k2", "k3"])
clamps = st.one_of(st.none(), st.floats(0.01, 20.0))


@given(
    batch=padded_batches(2, scale=1.0),
    kl_coef=st.floats(0.0, 2.0),
    estimator=estimators,
    clamp=clamps,
)
def test_matches_reference(batch: Padded, kl_coef, estimator, clamp):
    logprobs, ref_logprobs = batch.fields
    scores = (batch.rng.standard_normal(batch.shape[0]) * 3).astype(batch.dtype)

    rewards, kl = kl_shaped_rewards(
        logprobs,
        ref_logprobs,
        batch.mask,
        scores,
        kl_coef=kl_coef,
        estimator=estimator,
        clamp=clamp,
    )

    f64 = [np.asarray(a, dtype=np.float64) for a in (logprobs, ref_logprobs, scores)]
    want_rewards, want_kl = reference.kl_shaped_rewards(
        f64[0], f64[1], batch.bool_mask, f64[2], kl_coef, estimator, clamp
    )
    assert rewards.dtype == kl.dtype == batch.dtype
    tol = tolerance(batch.dtype, want_kl, want_rewards, steps=4)
    np.testing.assert_allclose(kl, want_kl, **tol)
    np.testing.assert_allclose(rewards, want_rewards, **tol)
    assert (rewards[~batch.bool_mask] == 0).all() and (kl[~batch.bool_mask] == 0).all()


@given(batch=padded_batches(2, scale=1.0), estimator=estimators, clamp=clamps)
def test_packed_equals_padded(batch: Padded, estimator, clamp):
    logprobs, ref_logprobs = batch.fields
    scores = batch.rng.standard_normal(batch.shape[0]).astype(batch.dtype)
    rewards, kl = kl_shaped_rewards(
        logprobs, ref_logprobs, batch.mask, scores, kl_coef=0.1, estimator=estimator, clamp=clamp
    )
    flat_lp, cu = packed_from_padded(logprobs, batch.bool_mask)
    flat_ref, _ = packed_from_padded(ref_logprobs, batch.bool_mask)
    if flat_lp.size == 0:
        return  # an all-masked batch has no packed form (empty input is an error)
    p_rewards, p_kl = kl_shaped_rewards(
        flat_lp,
        flat_ref,
        None,
        scores,
        kl_coef=0.1,
        estimator=estimator,
        clamp=clamp,
        cu_seqlens=cu,
    )
    np.testing.assert_array_equal(p_rewards, rewards[batch.bool_mask])
    np.testing.assert_array_equal(p_kl, kl[batch.bool_mask])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_estimators_match_closed_forms(dtype):
    lr = np.linspace(-3, 3, 61).astype(dtype)
    logprobs = (lr - 1.0).astype(dtype)[None, :]
    ref_logprobs = np.full_like(logprobs, -1.0)
    mask = np.ones_like(logprobs, dtype=bool)
    scores = np.zeros(1, dtype=dtype)
    exact_lr = (logprobs - ref_logprobs).astype(np.float64)[0]
    closed = {
        "k1": exact_lr,
        "abs": np.abs(exact_lr),
        "k2": 0.5 * exact_lr**2,
        "k3": np.expm1(-exact_lr) + exact_lr,
    }
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name, want in closed.items():
        rewards, kl = kl_shaped_rewards(
            logprobs, ref_logprobs, mask, scores, kl_coef=0.5, estimator=name
        )
        np.testing.assert_allclose(kl[0], want, rtol=rtol, atol=rtol, err_msg=name)
        np.testing.assert_allclose(rewards[0], -0.5 * want, rtol=rtol, atol=rtol, err_msg=name)
    _, k3 = kl_shaped_rewards(logprobs, ref_logprobs, mask, scores, kl_coef=0.5, estimator="k3")
    assert (k3 >= 0).all(), "k3 is non-negative"


def test_score_goes_on_last_masked_token_not_on_padding():
    logprobs = np.zeros((3, 5))
    ref_logprobs = np.zeros((3, 5))
    mask = np.array(
        [
            [1, 1, 1, 0, 0],  # right padding: score at t=2, not at t=4
            [0, 0, 1, 1, 1],  # left padding: score at t=4
            [1, 0, 1, 0, 0],  # a hole: score at t=2
        ]
    )
    rewards, _ = kl_shaped_rewards(
        logprobs, ref_logprobs, mask, np.array([1.0, 2.0, 3.0]), kl_coef=0.1
    )
    want = np.zeros((3, 5))
    want[0, 2], want[1, 4], want[2, 2] = 1.0, 2.0, 3.0
    np.testing.assert_array_equal(rewards, want)


def test_row_without_masked_tokens_gets_no_score():
    rewards, kl = kl_shaped_rewards(
        np.ones((2, 3)),
        np.zeros((2, 3)),
        np.array([[0, 0, 0], [1, 1, 0]]),
        np.array([5.0, 7.0]),
        kl_coef=1.0,
    )
    np.testing.assert_array_equal(rewards, [[0, 0, 0], [-1, 6, 0]])
    np.testing.assert_array_equal(kl, [[0, 0, 0], [1, 1, 0]])


def test_clamp_bounds_the_estimate_both_ways():
    logprobs = np.array([[5.0, -5.0, 0.5]])
    rewards, kl = kl_shaped_rewards(
        logprobs, np.zeros_like(logprobs), None, None, kl_coef=1.0, estimator="k1", clamp=2.0
    )
    np.testing.assert_array_equal(kl, [[2.0, -2.0, 0.5]])
    np.testing.assert_array_equal(rewards, [[-2.0, 2.0, -0.5]])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_out_buffers(dtype):
    rng = np.random.default_rng(1)
    lp, ref = (rng.standard_normal((3, 7)).astype(dtype) for _ in range(2))
    mask = rng.random((3, 7)) < 0.7
    scores = rng.standard_normal(3).astype(dtype)
    want = kl_shaped_rewards(lp, ref, mask, scores, kl_coef=0.2, estimator="k3")
    rewards_out, kl_out = np.full((3, 7), np.nan, dtype), np.full((3, 7), np.nan, dtype)
    got = kl_shaped_rewards(
        lp, ref, mask, scores, kl_coef=0.2, estimator="k3", rewards_out=rewards_out, kl_out=kl_out
    )
    assert got[0] is rewards_out and got[1] is kl_out
    np.testing.assert_array_equal(rewards_out, want[0])
    np.testing.assert_array_equal(kl_out, want[1])


@settings(max_examples=6)
@given(dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**32 - 1), estimator=estimators)
def test_thread_count_does_not_change_the_bits(dtype, seed, estimator):
    rng = np.random.default_rng(seed)
    lp, ref = (rng.standard_normal((336, 800)).astype(dtype) for _ in range(2))
    mask = rng.random((336, 800)) < 0.9
    scores = rng.standard_normal(336).astype(dtype)
    before = rlhf_fast.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            rlhf_fast.set_num_threads(threads)
            results.append(
                kl_shaped_rewards(
                    lp, ref, mask, scores, kl_coef=0.05, estimator=estimator, clamp=10.0
                )
            )
    finally:
        rlhf_fast.set_num_threads(before)
    for rewards, kl in results[1:]:
        np.testing.assert_array_equal(rewards, results[0][0])
        np.testing.assert_array_equal(kl, results[0][1])
