"""GRPO / RLOO group advantages against the reference loop and their closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FLOAT_DTYPES, as_strided_copy, tolerance
from hypothesis import given
from hypothesis import strategies as st

from rlhf_fast import reference
from rlhf_fast.ops import group_advantages


@st.composite
def grouped_scores(draw: st.DrawFn, min_group: int = 1):
    group_size = draw(st.integers(min_group, 8))
    groups = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scores = rng.standard_normal(groups * group_size) * draw(st.sampled_from([0.1, 1, 30]))
    if draw(st.booleans()):  # binary (verifiable) rewards, with all-equal groups likely
        scores = (rng.random(groups * group_size) < 0.5).astype(np.float64)
    scores = scores.astype(dtype)
    if draw(st.booleans()):
        scores = as_strided_copy(scores)
    return scores, group_size


@given(
    data=grouped_scores(),
    normalize=st.sampled_from(["std", "none"]),
    leave_one_out=st.booleans(),
    eps=st.sampled_from([1e-6, 1e-3]),
)
def test_matches_reference(data, normalize, leave_one_out, eps):
    scores, group_size = data
    if group_size == 1 and (leave_one_out or normalize == "std"):
        return  # rejected (see test_bad_input)
    got = group_advantages(
        scores, group_size=group_size, normalize=normalize, leave_one_out=leave_one_out, eps=eps
    )
    scores64 = scores.astype(np.float64)
    want = reference.group_advantages(scores64, group_size, normalize, leave_one_out, eps)
    assert got.dtype == scores.dtype and got.shape == scores.shape
    np.testing.assert_allclose(got, want, **tolerance(scores.dtype, want, steps=group_size))


@given(data=grouped_scores(min_group=2))
def test_closed_forms(data):
    scores, group_size = data
    g = scores.astype(np.float64).reshape(-1, group_size)
    tol = dict(rtol=1e-5, atol=1e-5 * (1 + np.abs(g).max()))
    # GRPO: (s - mean) / (std + eps)
    grpo = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(
        group_advantages(scores, group_size=group_size).reshape(g.shape), grpo, rtol=1e-5, atol=1e-4
    )
    # RLOO: s_i minus the mean of the others.
    others = (g.sum(1, keepdims=True) - g) / (group_size - 1)
    rloo = group_advantages(scores, group_size=group_size, normalize="none", leave_one_out=True)
    np.testing.assert_allclose(rloo.reshape(g.shape), g - others, **tol)
    # Dr. GRPO: the plain difference from the mean.
    plain = group_advantages(scores, group_size=group_size, normalize="none")
    np.testing.assert_allclose(plain.reshape(g.shape), g - g.mean(1, keepdims=True), **tol)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_equal_scores_give_zero_advantage(dtype):
    scores = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0], dtype=dtype)
    adv = group_advantages(scores, group_size=3)
    np.testing.assert_array_equal(adv[:3], 0.0)
    assert adv[3] < 0 < adv[4]
