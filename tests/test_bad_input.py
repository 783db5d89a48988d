# ruff: noqa: E501  (one case per line reads best as a table)
"""The bad-input matrix: every case raises the right class with a message naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_fast import (
    InvalidArgumentError,
    InvalidDtypeError,
    NonFiniteError,
    gae,
    group_advantages,
    kl_shaped_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
    minibatch_indices,
    pad_ragged,
)

B, T = 3, 4
X = np.zeros((B, T))
X32 = np.zeros((B, T), np.float32)
M = np.ones((B, T), bool)
S = np.zeros(B)
CU = np.array([0, 2, 5, 12])
FLAT = np.zeros(12)


def with_value(value, where=(1, 2), base=X):
    x = base.copy()
    x[where] = value
    return x


# (id, call, exception class, words the message must contain)
# fmt: off
CASES = [
    # wrong number of dimensions
    ("gae-1d-rewards", lambda: gae(np.zeros(4), np.zeros(4), None), InvalidArgumentError, ["rewards", "2-D"]),
    ("gae-3d-values", lambda: gae(X, np.zeros((B, T, 1)), M), InvalidArgumentError, ["values", "shape"]),
    ("gae-packed-2d", lambda: gae(X, X, None, cu_seqlens=CU), InvalidArgumentError, ["rewards", "1-D"]),
    ("kl-1d", lambda: kl_shaped_rewards(np.zeros(4), np.zeros(4), None, S, kl_coef=0.1), InvalidArgumentError, ["logprobs", "2-D"]),
    ("group-2d", lambda: group_advantages(X, group_size=2), InvalidArgumentError, ["scores", "1-D"]),
    ("pad-2d-element", lambda: pad_ragged([np.zeros(3), np.zeros((2, 2))]), InvalidArgumentError, ["sequences[1]", "1-D"]),
    # shapes that disagree
    ("gae-values-shape", lambda: gae(X, np.zeros((B, T + 1)), M), InvalidArgumentError, ["values", "(3, 4)"]),
    ("gae-mask-shape", lambda: gae(X, X, np.ones((B, T + 1), bool)), InvalidArgumentError, ["mask", "(3, 5)"]),
    ("gae-dones-shape", lambda: gae(X, X, M, dones=np.zeros((B + 1, T), bool)), InvalidArgumentError, ["dones", "shape"]),
    ("gae-bootstrap-shape", lambda: gae(X, X, M, bootstrap_values=np.zeros(B + 1)), InvalidArgumentError, ["bootstrap_values", "(3,)"]),
    ("gae-packed-bootstrap", lambda: gae(FLAT, FLAT, None, bootstrap_values=np.zeros(2), cu_seqlens=CU), InvalidArgumentError, ["bootstrap_values", "(3,)"]),
    ("kl-scores-shape", lambda: kl_shaped_rewards(X, X, M, np.zeros(B + 2), kl_coef=0.1), InvalidArgumentError, ["scores", "(3,)"]),
    ("kl-ref-shape", lambda: kl_shaped_rewards(X, np.zeros((B, 2)), M, S, kl_coef=0.1), InvalidArgumentError, ["ref_logprobs", "shape"]),
    ("mean-mask-shape", lambda: masked_mean(X, np.ones(T, bool)), InvalidArgumentError, ["mask", "shape"]),
    ("cu-past-end", lambda: gae(FLAT, FLAT, None, cu_seqlens=[0, 5, 13]), InvalidArgumentError, ["cu_seqlens", "13"]),
    ("cu-decreasing", lambda: masked_mean(FLAT, cu_seqlens=[0, 5, 3]), InvalidArgumentError, ["cu_seqlens", "non-decreasing"]),
    ("cu-float", lambda: masked_mean(FLAT, cu_seqlens=np.array([0.0, 3.0])), InvalidDtypeError, ["cu_seqlens", "int"]),
    ("mask-and-cu", lambda: gae(FLAT, FLAT, np.ones(12, bool), cu_seqlens=CU), InvalidArgumentError, ["mask", "cu_seqlens"]),
    ("out-wrong-shape", lambda: gae(X, X, M, advantages_out=np.zeros((B, T + 1))), InvalidArgumentError, ["advantages_out", "shape"]),
    ("out-wrong-dtype", lambda: gae(X, X, M, returns_out=np.zeros((B, T), np.float32)), InvalidDtypeError, ["returns_out", "dtype"]),
    ("out-strided", lambda: masked_whiten(X, out=np.zeros((B, 2 * T))[:, ::2]), InvalidArgumentError, ["out", "contiguous"]),
    # empty batch
    ("gae-empty", lambda: gae(np.zeros((0, T)), np.zeros((0, T)), np.zeros((0, T), bool)), InvalidArgumentError, ["rewards", "empty"]),
    ("gae-empty-T", lambda: gae(np.zeros((B, 0)), np.zeros((B, 0)), None), InvalidArgumentError, ["rewards", "empty"]),
    ("kl-empty", lambda: kl_shaped_rewards(np.zeros((0, T)), np.zeros((0, T)), None, np.zeros(0), kl_coef=0.1), InvalidArgumentError, ["logprobs", "empty"]),
    ("mean-empty", lambda: masked_mean(np.zeros(0)), InvalidArgumentError, ["x", "empty"]),
    ("group-empty", lambda: group_advantages(np.zeros(0), group_size=1), InvalidArgumentError, ["scores", "empty"]),
    # non-float data where floats are due
    ("gae-int-rewards", lambda: gae(X.astype(np.int64), X, M), InvalidDtypeError, ["rewards", "int64", "float32"]),
    ("gae-str-values", lambda: gae(X, np.full((B, T), "a"), M), InvalidDtypeError, ["values", "float"]),
    ("gae-object", lambda: gae(X.astype(object), X, M), InvalidDtypeError, ["rewards", "object"]),
    ("kl-complex", lambda: kl_shaped_rewards(X.astype(complex), X, M, S, kl_coef=0.1), InvalidDtypeError, ["logprobs", "complex"]),
    ("kl-int-scores", lambda: kl_shaped_rewards(X, X, M, np.zeros(B, int), kl_coef=0.1), InvalidDtypeError, ["scores", "int64"]),
    ("whiten-float16", lambda: masked_whiten(X.astype(np.float16)), InvalidDtypeError, ["x", "float16"]),
    ("group-bool", lambda: group_advantages(np.ones(4, bool), group_size=2), InvalidDtypeError, ["scores", "bool"]),
    # float arrays that must share a dtype
    ("gae-mixed-floats", lambda: gae(X, X32, M), InvalidDtypeError, ["values", "float32", "float64"]),
    ("gae-mixed-bootstrap", lambda: gae(X32, X32, M, bootstrap_values=S), InvalidDtypeError, ["bootstrap_values", "float64"]),
    ("kl-mixed-scores", lambda: kl_shaped_rewards(X32, X32, M, S, kl_coef=0.1), InvalidDtypeError, ["scores", "float64"]),
    # masks holding anything but 0/1
    ("mask-2", lambda: gae(X, X, with_value(2, base=np.ones((B, T), np.int64))), InvalidArgumentError, ["mask", "0 and 1", "2"]),
    ("mask-uint8-7", lambda: gae(X, X, with_value(7, base=np.ones((B, T), np.uint8))), InvalidArgumentError, ["mask"]),
    ("mask-half", lambda: kl_shaped_rewards(X, X, with_value(0.5, base=np.ones((B, T))), S, kl_coef=0.1), InvalidArgumentError, ["mask", "0.5"]),
    ("mask-nan", lambda: masked_mean(X, with_value(np.nan, base=np.ones((B, T))).astype(np.float32)), InvalidArgumentError, ["mask", "nan"]),
    ("mask-negative", lambda: masked_whiten(X, with_value(-1, base=np.ones((B, T), np.int8))), InvalidArgumentError, ["mask", "-1"]),
    ("dones-3", lambda: gae(X, X, M, dones=with_value(3, base=np.zeros((B, T), np.int32))), InvalidArgumentError, ["dones", "3"]),
    ("mask-str", lambda: gae(X, X, np.full((B, T), "1")), InvalidDtypeError, ["mask"]),
    # gamma, lam outside [0, 1] or NaN
    ("gamma-high", lambda: gae(X, X, M, gamma=1.01), InvalidArgumentError, ["gamma", "[0, 1]", "1.01"]),
    ("gamma-negative", lambda: gae(X, X, M, gamma=-0.1), InvalidArgumentError, ["gamma", "-0.1"]),
    ("gamma-nan", lambda: gae(X, X, M, gamma=float("nan")), InvalidArgumentError, ["gamma", "NaN"]),
    ("lam-high", lambda: gae(X, X, M, lam=2), InvalidArgumentError, ["lam", "2"]),
    ("lam-nan", lambda: gae(X, X, M, lam=np.nan), InvalidArgumentError, ["lam", "NaN"]),
    ("gamma-str", lambda: gae(X, X, M, gamma="0.9"), InvalidDtypeError, ["gamma", "number"]),
    # kl_coef negative or not finite
    ("kl-coef-negative", lambda: kl_shaped_rewards(X, X, M, S, kl_coef=-0.1), InvalidArgumentError, ["kl_coef", "-0.1"]),
    ("kl-coef-inf", lambda: kl_shaped_rewards(X, X, M, S, kl_coef=float("inf")), InvalidArgumentError, ["kl_coef", "inf"]),
    ("kl-coef-nan", lambda: kl_shaped_rewards(X, X, M, S, kl_coef=float("nan")), InvalidArgumentError, ["kl_coef", "NaN"]),
    ("kl-clamp-zero", lambda: kl_shaped_rewards(X, X, M, S, kl_coef=0.1, clamp=0.0), InvalidArgumentError, ["clamp", "> 0"]),
    # unknown estimator / normalize / side names
    ("kl-estimator", lambda: kl_shaped_rewards(X, X, M, S, kl_coef=0.1, estimator="k4"), InvalidArgumentError, ["estimator", "'k4'", "'k3'"]),
    ("group-normalize", lambda: group_advantages(np.zeros(4), group_size=2, normalize="mad"), InvalidArgumentError, ["normalize", "'mad'", "'std'"]),
    ("pad-side", lambda: pad_ragged([np.zeros(2)], side="middle"), InvalidArgumentError, ["side", "'middle'", "'left'"]),
    # group size rules
    ("group-size-0", lambda: group_advantages(np.zeros(4), group_size=0), InvalidArgumentError, ["group_size", ">= 1", "0"]),
    ("group-size-divides", lambda: group_advantages(np.zeros(6), group_size=4), InvalidArgumentError, ["group_size", "6 scores", "groups of 4"]),
    ("group-size-1-loo", lambda: group_advantages(np.zeros(6), group_size=1, normalize="none", leave_one_out=True), InvalidArgumentError, ["leave_one_out", "group_size"]),
    ("group-size-1-std", lambda: group_advantages(np.zeros(6), group_size=1), InvalidArgumentError, ["normalize", "group_size"]),
    ("group-size-float", lambda: group_advantages(np.zeros(6), group_size=2.0), InvalidDtypeError, ["group_size", "int"]),
    # whitening with fewer than 2 masked elements; all-masked moments
    ("whiten-one", lambda: masked_whiten(X, with_value(True, base=np.zeros((B, T), bool))), InvalidArgumentError, ["at least 2", "mask", "got 1"]),
    ("whiten-none", lambda: masked_whiten(X, np.zeros((B, T), bool)), InvalidArgumentError, ["mask", "got 0"]),
    ("whiten-single", lambda: masked_whiten(np.zeros(1)), InvalidArgumentError, ["masked_whiten", "at least 2", "got 1"]),
    ("mb-n-0", lambda: minibatch_indices(0, 2, seed=0), InvalidArgumentError, ["n", ">= 1", "0"]),
    ("mean-all-masked", lambda: masked_mean(X, np.zeros((B, T), bool)), InvalidArgumentError, ["mask", "selects 0"]),
    ("var-one", lambda: masked_var(X, with_value(1, base=np.zeros((B, T), np.uint8))), InvalidArgumentError, ["mask", "selects 1"]),
    ("whiten-packed-one", lambda: masked_whiten(FLAT, cu_seqlens=[3, 4]), InvalidArgumentError, ["at least 2", "got 1"]),
    ("mean-packed-none", lambda: masked_mean(FLAT, cu_seqlens=[3, 3]), InvalidArgumentError, ["cu_seqlens", "selects 0"]),
    ("whiten-eps-negative", lambda: masked_whiten(X, eps=-1.0), InvalidArgumentError, ["eps", "-1"]),
    # pad_ragged: no sequences, non-1-D element, mixed dtypes, bad pad value
    ("pad-none", lambda: pad_ragged([]), InvalidArgumentError, ["sequences", "empty"]),
    ("pad-array-not-list", lambda: pad_ragged(np.zeros((2, 3))), InvalidArgumentError, ["sequences", "list"]),
    ("pad-mixed", lambda: pad_ragged([np.zeros(2), np.zeros(2, np.float32)]), InvalidDtypeError, ["sequences[1]", "float32", "float64"]),
    ("pad-scalar-element", lambda: pad_ragged([np.zeros(2), np.float64(1.0)]), InvalidArgumentError, ["sequences[1]", "1-D"]),
    ("pad-int16", lambda: pad_ragged([np.zeros(2, np.int16)]), InvalidDtypeError, ["sequences", "int16"]),
    ("pad-value-unrepresentable", lambda: pad_ragged([np.zeros(2, np.uint8)], pad_value=300), InvalidArgumentError, ["pad_value", "300"]),
    ("pad-value-fraction-int", lambda: pad_ragged([np.zeros(2, np.int64)], pad_value=0.5), InvalidArgumentError, ["pad_value", "0.5"]),
    ("pad-bool-value", lambda: pad_ragged([np.zeros(2, bool)], pad_value=2), InvalidArgumentError, ["pad_value", "2"]),
    ("pad-negative-length", lambda: pad_ragged([np.zeros(2)], max_length=-1), InvalidArgumentError, ["max_length", "-1"]),
    ("pad-index-range", lambda: pad_ragged(FLAT, offsets=CU, indices=[0, 3]), InvalidArgumentError, ["indices", "3"]),
    ("pad-offsets-past-end", lambda: pad_ragged(FLAT, offsets=[0, 20]), InvalidArgumentError, ["offsets", "20"]),
    # minibatch indices
    ("mb-size-0", lambda: minibatch_indices(10, 0, seed=0), InvalidArgumentError, ["minibatch_size", "0"]),
    ("mb-negative-seed", lambda: minibatch_indices(10, 2, seed=-1), InvalidArgumentError, ["seed", "-1"]),
    ("mb-float-n", lambda: minibatch_indices(10.0, 2, seed=0), InvalidDtypeError, ["n", "int"]),
    # NaN / Inf in float inputs (masked positions only)
    ("nan-rewards", lambda: gae(with_value(np.nan), X, M), NonFiniteError, ["rewards", "[1, 2]", "check_finite"]),
    ("inf-values", lambda: gae(X, with_value(np.inf), M), NonFiniteError, ["values", "inf"]),
    ("nan-bootstrap", lambda: gae(X, X, M, bootstrap_values=np.array([0, np.nan, 0])), NonFiniteError, ["bootstrap_values"]),
    ("nan-packed", lambda: gae(with_value(np.nan, 7, FLAT), FLAT, None, cu_seqlens=CU), NonFiniteError, ["rewards"]),
    ("nan-logprobs", lambda: kl_shaped_rewards(with_value(np.nan), X, M, S, kl_coef=0.1), NonFiniteError, ["logprobs"]),
    ("inf-ref", lambda: kl_shaped_rewards(X, with_value(-np.inf), M, S, kl_coef=0.1), NonFiniteError, ["ref_logprobs"]),
    ("nan-scores", lambda: kl_shaped_rewards(X, X, M, np.array([0, 0, np.nan]), kl_coef=0.1), NonFiniteError, ["scores"]),
    ("nan-mean", lambda: masked_mean(with_value(np.nan)), NonFiniteError, ["x"]),
    ("inf-whiten", lambda: masked_whiten(with_value(np.inf), M), NonFiniteError, ["x"]),
    ("nan-group", lambda: group_advantages(np.array([0, np.nan, 1, 2]), group_size=2), NonFiniteError, ["scores"]),
]
# fmt: on


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_error_classes_derive_from_the_builtins():
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(InvalidDtypeError, TypeError)
    assert issubclass(NonFiniteError, InvalidArgumentError)


def test_check_finite_false_skips_the_check():
    rewards = with_value(np.nan)
    adv, _ = gae(rewards, X, M, check_finite=False)
    assert np.isnan(adv[1, :3]).all()
    masked_mean(with_value(np.inf), check_finite=False)
    group_advantages(np.array([0, np.nan]), group_size=2, check_finite=False)


def test_non_finite_outside_the_mask_is_fine():
    mask = M.copy()
    mask[1, 2] = False
    adv, _ = gae(with_value(np.nan), with_value(np.inf), mask)
    assert np.isfinite(adv).all()


def test_fortran_ordered_masks_give_the_c_ordered_results():
    # A transposed int mask is Fortran-ordered; its bytes must not be read in C order.
    rng = np.random.default_rng(0)
    r, v = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    mask_f = (rng.random((5, 3)) < 0.7).astype(np.int64).T
    mask_c = np.ascontiguousarray(mask_f)
    for got, want in [
        (gae(r, v, mask_f, gamma=0.9, lam=0.8)[0], gae(r, v, mask_c, gamma=0.9, lam=0.8)[0]),
        (
            kl_shaped_rewards(r, v, mask_f, S, kl_coef=0.1)[0],
            kl_shaped_rewards(r, v, mask_c, S, kl_coef=0.1)[0],
        ),
        (masked_whiten(r, mask_f), masked_whiten(r, mask_c)),
    ]:
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InvalidArgumentError, match="mask must be C-contiguous"):
        from rlhf_fast import _native

        _native.gae(r, v, np.asfortranarray(mask_c.astype(np.uint8)), gamma=0.9, lam=0.8)
