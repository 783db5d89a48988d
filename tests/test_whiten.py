"""Masked moments and whitening against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FLOAT_DTYPES, Padded, packed_from_padded, padded_batches, tolerance
from hypothesis import given, settings
from hypothesis import strategies as st

import rlhf_fast
from rlhf_fast import reference
from rlhf_fast.ops import masked_mean, masked_var, masked_whiten


@given(batch=padded_batches(1), unbiased=st.booleans())
def test_moments_match_reference(batch: Padded, unbiased):
    (x,) = batch.fields
    count = int(batch.bool_mask.sum())
    x64 = x.astype(np.float64)
    if count == 0:
        with pytest.raises(rlhf_fast.InvalidArgumentError, match="mask selects 0"):
            masked_mean(x, batch.mask)
        return
    mean = masked_mean(x, batch.mask)
    assert isinstance(mean, batch.dtype)
    tol = tolerance(batch.dtype, x64, steps=4)
    np.testing.assert_allclose(mean, reference.masked_mean(x64, batch.bool_mask), **tol)
    if count < (2 if unbiased else 1):
        with pytest.raises(rlhf_fast.InvalidArgumentError, match="mask selects 1"):
            masked_var(x, batch.mask, unbiased=unbiased)
        return
    var = masked_var(x, batch.mask, unbiased=unbiased)
    want = reference.masked_var(x64, batch.bool_mask, unbiased)
    np.testing.assert_allclose(var, want, rtol=tol["rtol"], atol=tol["atol"] * (1 + want))


@given(
    batch=padded_batches(1),
    shift_mean=st.booleans(),
    unbiased=st.booleans(),
    eps=st.sampled_from([0.0, 1e-8, 1e-2]),
    use_mask=st.booleans(),
)
def test_whiten_matches_reference(batch: Padded, shift_mean, unbiased, eps, use_mask):
    (x,) = batch.fields
    mask = batch.mask if use_mask else None
    bool_mask = batch.bool_mask if use_mask else None
    count = int(batch.bool_mask.sum()) if use_mask else x.size
    x64 = x.astype(np.float64)
    if count < 2:
        with pytest.raises(rlhf_fast.InvalidArgumentError, match="at least 2"):
            masked_whiten(x, mask, shift_mean=shift_mean, eps=eps, unbiased=unbiased)
        return
    if reference.masked_var(x64, bool_mask, unbiased) + eps == 0:
        return  # constant input with eps=0: division by zero (covered by the error tests)
    got = masked_whiten(x, mask, shift_mean=shift_mean, eps=eps, unbiased=unbiased)
    want = reference.masked_whiten(x64, bool_mask, shift_mean, eps, unbiased)
    assert got.dtype == batch.dtype and got.shape == x.shape
    np.testing.assert_allclose(got, want, **tolerance(batch.dtype, want, x64, steps=4))
    if use_mask:
        assert (got[~batch.bool_mask] == 0).all()


@given(batch=padded_batches(1), shift_mean=st.booleans())
def test_packed_equals_padded(batch: Padded, shift_mean):
    (x,) = batch.fields
    flat, cu = packed_from_padded(x, batch.bool_mask)
    if flat.size < 2:
        return
    # Same math, but the kernel's four striped accumulators see the elements at other
    # positions, so the last bits may differ.
    tol = tolerance(batch.dtype, x, steps=4)
    np.testing.assert_allclose(masked_mean(flat, cu_seqlens=cu), masked_mean(x, batch.mask), **tol)
    var = masked_var(x, batch.mask)
    np.testing.assert_allclose(
        masked_var(flat, cu_seqlens=cu), var, rtol=tol["rtol"], atol=tol["atol"] * (1 + var)
    )
    whitened = masked_whiten(x, batch.mask, shift_mean=shift_mean)
    np.testing.assert_allclose(
        masked_whiten(flat, None, shift_mean=shift_mean, cu_seqlens=cu),
        whitened[batch.bool_mask],
        **tolerance(batch.dtype, whitened, steps=4),
    )


@given(
    lead=st.integers(0, 3),
    body=st.integers(2, 12),
    tail=st.integers(0, 3),
    dtype=st.sampled_from(FLOAT_DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_packed_reads_only_inside_the_rows(lead, body, tail, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead + body + tail).astype(dtype)
    x[:lead] = np.nan  # outside the rows: never read, so no NonFiniteError
    x[lead + body :] = np.inf
    cu = np.array([lead, lead + body // 2, lead + body])
    inside = x[lead : lead + body]
    assert masked_mean(x, cu_seqlens=cu) == masked_mean(inside)  # the same elements, in order
    whitened = masked_whiten(x, cu_seqlens=cu)
    np.testing.assert_array_equal(whitened[lead : lead + body], masked_whiten(inside))
    assert (whitened[:lead] == 0).all() and (whitened[lead + body :] == 0).all()


def test_masked_positions_are_never_read():
    x = np.array([[1.0, np.nan, 3.0], [np.inf, 5.0, -np.inf]])
    mask = np.array([[1, 0, 1], [0, 1, 0]])
    assert masked_mean(x, mask) == 3.0
    assert masked_var(x, mask) == 4.0
    np.testing.assert_allclose(masked_whiten(x, mask, eps=0.0), [[-1, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_whiten_out_buffer(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6)).astype(dtype)
    mask = rng.random((5, 6)) < 0.5
    mask[0, :2] = True
    out = np.full_like(x, np.nan)
    got = masked_whiten(x, mask, out=out)
    assert got is out
    np.testing.assert_array_equal(out, masked_whiten(x, mask))


def test_out_may_not_alias_the_input():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(rlhf_fast.InvalidArgumentError, match="out"):
        masked_whiten(x, out=x)


@settings(max_examples=6)
@given(dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**32 - 1))
def test_thread_count_does_not_change_the_bits(dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((192, 1500)) * 3 + 1).astype(dtype)
    mask = rng.random((192, 1500)) < 0.7
    before = rlhf_fast.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            rlhf_fast.set_num_threads(threads)
            results.append((masked_mean(x, mask), masked_var(x, mask), masked_whiten(x, mask)))
    finally:
        rlhf_fast.set_num_threads(before)
    for mean, var, whitened in results[1:]:
        assert mean == results[0][0] and var == results[0][1]
        np.testing.assert_array_equal(whitened, results[0][2])
