"""GAE: the Rust kernel against the numpy reference, the textbook recursion and CleanRL's loop."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FLOAT_DTYPES, Padded, packed_from_padded, padded_batches, tolerance
from hypothesis import given, settings
from hypothesis import strategies as st

import rlhf_fast
from rlhf_fast import reference
from rlhf_fast.ops import gae

unit = st.floats(0.0, 1.0)


@given(
    batch=padded_batches(2),
    gamma=unit,
    lam=unit,
    with_bootstrap=st.booleans(),
    with_dones=st.booleans(),
)
def test_gae_matches_reference(batch: Padded, gamma, lam, with_bootstrap, with_dones):
    rewards, values = batch.fields
    b, t = batch.shape
    boot = (batch.rng.standard_normal(b) * 5).astype(batch.dtype) if with_bootstrap else None
    dones = (batch.rng.random((b, t)) < 0.2) if with_dones else None

    adv, ret = gae(
        rewards, values, batch.mask, gamma=gamma, lam=lam, bootstrap_values=boot, dones=dones
    )

    f64 = [np.asarray(a, dtype=np.float64) for a in (rewards, values)]
    boot64 = None if boot is None else boot.astype(np.float64)
    ref_adv, ref_ret = reference.gae(*f64, batch.bool_mask, gamma, lam, boot64, dones)
    assert adv.dtype == ret.dtype == batch.dtype
    assert adv.shape == ret.shape == (b, t)
    tol = tolerance(batch.dtype, *f64, steps=t)
    np.testing.assert_allclose(adv, ref_adv, **tol)
    np.testing.assert_allclose(ret, ref_ret, **tol)
    assert (adv[~batch.bool_mask] == 0).all() and (ret[~batch.bool_mask] == 0).all()


@given(batch=padded_batches(2), gamma=unit, lam=unit, with_dones=st.booleans())
def test_packed_equals_padded(batch: Padded, gamma, lam, with_dones):
    rewards, values = batch.fields
    b, t = batch.shape
    boot = (batch.rng.standard_normal(b) * 5).astype(batch.dtype)
    dones = (batch.rng.random((b, t)) < 0.2) if with_dones else None

    adv, ret = gae(
        rewards, values, batch.mask, gamma=gamma, lam=lam, bootstrap_values=boot, dones=dones
    )

    flat_r, cu = packed_from_padded(rewards, batch.bool_mask)
    flat_v, _ = packed_from_padded(values, batch.bool_mask)
    flat_d = None if dones is None else packed_from_padded(dones, batch.bool_mask)[0]
    if flat_r.size == 0:
        with pytest.raises(rlhf_fast.InvalidArgumentError, match="rewards is empty"):
            gae(
                flat_r,
                flat_v,
                None,
                gamma=gamma,
                lam=lam,
                bootstrap_values=boot,
                dones=flat_d,
                cu_seqlens=cu,
            )
        return
    padv, pret = gae(
        flat_r,
        flat_v,
        None,
        gamma=gamma,
        lam=lam,
        bootstrap_values=boot,
        dones=flat_d,
        cu_seqlens=cu,
    )
    np.testing.assert_array_equal(padv, adv[batch.bool_mask])
    np.testing.assert_array_equal(pret, ret[batch.bool_mask])


@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    lead=st.integers(0, 3),
    tail=st.integers(0, 3),
    dtype=st.sampled_from(FLOAT_DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_packed_zeroes_elements_outside_the_rows(lengths, lead, tail, dtype, seed):
    rng = np.random.default_rng(seed)
    cu = lead + np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(cu[-1]) + tail
    if n == 0:
        return
    rewards, values = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    adv, ret = gae(rewards, values, None, gamma=0.9, lam=0.8, cu_seqlens=cu)
    for out in (adv, ret):
        assert (out[: cu[0]] == 0).all() and (out[cu[-1] :] == 0).all()
    for row in range(len(lengths)):
        part = slice(cu[row], cu[row + 1])
        ref_adv, ref_ret = reference.gae(
            rewards[None, part].astype(np.float64),
            values[None, part].astype(np.float64),
            np.ones((1, lengths[row]), bool),
            0.9,
            0.8,
        )
        tol = tolerance(dtype, rewards, values, steps=max(1, lengths[row]))
        np.testing.assert_allclose(adv[part], ref_adv[0], **tol)
        np.testing.assert_allclose(ret[part], ref_ret[0], **tol)


def textbook_gae(rewards, values, gamma, lam):
    """Sutton & Barto / Schulman et al. (2016), rows fully unmasked, vectorised over rows."""
    b, t = rewards.shape
    advantages = np.zeros_like(rewards)
    last = np.zeros(b, dtype=rewards.dtype)
    for step in reversed(range(t)):
        next_values = values[:, step + 1] if step + 1 < t else np.zeros(b, rewards.dtype)
        delta = rewards[:, step] + gamma * next_values - values[:, step]
        last = delta + gamma * lam * last
        advantages[:, step] = last
    return advantages, advantages + values


@given(batch=padded_batches(2, layouts=("full",), dtype=np.float64), gamma=unit, lam=unit)
def test_equals_textbook_recursion_on_unmasked_rows(batch: Padded, gamma, lam):
    rewards, values = batch.fields
    adv, ret = gae(rewards, values, batch.mask, gamma=gamma, lam=lam)
    want_adv, want_ret = textbook_gae(rewards, values, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-12, atol=1e-12)


def cleanrl_gae(rewards, values, dones, next_value, next_done, gamma, lam):
    """CleanRL ``ppo.py``'s loop on ``[T, num_envs]`` storage. ``dones[t]`` marks that
    the observation at step t starts a new episode (the previous step ended one)."""
    num_steps = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    lastgaelam = 0
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * lam * nextnonterminal * lastgaelam
    return advantages, advantages + values


@given(
    num_envs=st.integers(1, 5),
    num_steps=st.integers(1, 16),
    gamma=unit,
    lam=unit,
    seed=st.integers(0, 2**32 - 1),
)
def test_equals_cleanrl_nextnonterminal_loop(num_envs, num_steps, gamma, lam, seed):
    rng = np.random.default_rng(seed)
    rewards = rng.standard_normal((num_steps, num_envs))
    values = rng.standard_normal((num_steps, num_envs))
    starts = (rng.random((num_steps, num_envs)) < 0.25).astype(np.float64)
    next_value = rng.standard_normal(num_envs)
    next_done = (rng.random(num_envs) < 0.3).astype(np.float64)
    want_adv, want_ret = cleanrl_gae(rewards, values, starts, next_value, next_done, gamma, lam)

    # Rows = environments. Our dones[:, t] says step t ends an episode, which is
    # CleanRL's "the next observation starts one": its dones shifted left by one.
    dones = np.concatenate([starts[1:], next_done[None]], axis=0).T
    adv, ret = gae(
        rewards.T, values.T, None, gamma=gamma, lam=lam, bootstrap_values=next_value, dones=dones
    )
    np.testing.assert_allclose(adv, want_adv.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret, want_ret.T, rtol=1e-12, atol=1e-12)


def test_hole_is_skipped_and_recursion_carries_across_it():
    rewards = np.array([[0.0, 100.0, 1.0, 0.0]])
    values = np.array([[0.5, 100.0, 0.25, 0.0]])
    mask = np.array([[1, 0, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    # Step 2: delta = 1 - 0.25 = 0.75. Step 0 (the hole at 1 is skipped):
    # delta = 0 + 0.5 * 0.25 - 0.5 = -0.375, A = -0.375 + 0.5 * 0.75 = 0.
    np.testing.assert_allclose(adv, [[0.0, 0.0, 0.75, 0.0]])
    np.testing.assert_allclose(ret, [[0.5, 0.0, 1.0, 0.0]])


def test_bootstrap_applies_after_last_masked_token_and_dones_override_it():
    rewards = np.zeros((2, 3))
    values = np.zeros((2, 3))
    mask = np.array([[1, 1, 0], [0, 1, 1]])
    boot = np.array([2.0, 4.0])
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=1.0, bootstrap_values=boot)
    np.testing.assert_allclose(adv, [[0.5, 1.0, 0.0], [0.0, 1.0, 2.0]])
    dones = np.array([[0, 1, 0], [0, 0, 0]])
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=1.0, bootstrap_values=boot, dones=dones)
    np.testing.assert_allclose(adv, [[0.0, 0.0, 0.0], [0.0, 1.0, 2.0]])


@given(batch=padded_batches(2))
def test_mask_none_equals_all_ones(batch: Padded):
    rewards, values = batch.fields
    ones = np.ones(batch.shape, dtype=bool)
    for got, want in zip(
        gae(rewards, values, None, gamma=0.97, lam=0.9),
        gae(rewards, values, ones, gamma=0.97, lam=0.9),
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("packed", [False, True])
def test_out_buffers_are_written_in_place(dtype, packed):
    rng = np.random.default_rng(0)
    rewards, values = (rng.standard_normal((4, 9)).astype(dtype) for _ in range(2))
    mask = rng.random((4, 9)) < 0.6
    args = (rewards, values, mask)
    kwargs = {}
    if packed:
        rewards, cu = packed_from_padded(rewards, mask)
        values, _ = packed_from_padded(values, mask)
        args, kwargs = (rewards, values, None), dict(cu_seqlens=cu)
    want = gae(*args, gamma=0.99, lam=0.95, **kwargs)
    adv_out = np.full(rewards.shape, np.nan, dtype=dtype)  # garbage that must be overwritten
    ret_out = np.full(rewards.shape, np.nan, dtype=dtype)
    adv, ret = gae(
        *args, gamma=0.99, lam=0.95, advantages_out=adv_out, returns_out=ret_out, **kwargs
    )
    assert adv is adv_out and ret is ret_out
    np.testing.assert_array_equal(adv_out, want[0])
    np.testing.assert_array_equal(ret_out, want[1])


@settings(max_examples=6)
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    seed=st.integers(0, 2**32 - 1),
    layout=st.sampled_from(["holes", "full", "packed"]),
)
def test_thread_count_does_not_change_the_bits(dtype, seed, layout):
    rng = np.random.default_rng(seed)
    b, t = 384, 700  # above the kernels' parallel threshold (2**18 elements)
    rewards, values = (rng.standard_normal((b, t)).astype(dtype) for _ in range(2))
    mask = rng.random((b, t)) < 0.8 if layout == "holes" else None
    dones = rng.random((b, t)) < 0.01
    boot = rng.standard_normal(b).astype(dtype)
    kwargs = {}
    if layout == "packed":
        lengths = rng.integers(0, t + 1, size=b)
        kwargs["cu_seqlens"] = np.concatenate([[0], np.cumsum(lengths)])
        n = int(kwargs["cu_seqlens"][-1])
        rewards, values, dones = (
            rewards.reshape(-1)[:n],
            values.reshape(-1)[:n],
            dones.reshape(-1)[:n],
        )
    before = rlhf_fast.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            rlhf_fast.set_num_threads(threads)
            results.append(
                gae(
                    rewards,
                    values,
                    mask,
                    gamma=0.99,
                    lam=0.95,
                    bootstrap_values=boot,
                    dones=dones,
                    **kwargs,
                )
            )
    finally:
        rlhf_fast.set_num_threads(before)
    for adv, ret in results[1:]:
        np.testing.assert_array_equal(adv, results[0][0])
        np.testing.assert_array_equal(ret, results[0][1])
