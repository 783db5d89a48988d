"""RolloutBuffer: flat storage with offsets, seeded padded minibatches."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rlhf_fast
from rlhf_fast import buffer, reference
from rlhf_fast.buffer import RolloutBuffer

FIELDS = {"input_ids": np.int64, "logprobs": np.float32}


def make_rollouts(rng, count, max_len=12):
    lengths = rng.integers(0, max_len + 1, size=count)
    ids = [rng.integers(0, 50_000, size=n) for n in lengths]
    logprobs = [-rng.random(n).astype(np.float32) for n in lengths]
    scores = rng.standard_normal(count).astype(np.float32)
    return ids, logprobs, scores


def filled(rng, count, chunk=7):
    """A buffer filled in chunks (and one-by-one for the first few) plus the raw rollouts."""
    buf = RolloutBuffer(FIELDS, {"score": np.float32})
    ids, logprobs, scores = make_rollouts(rng, count)
    first = min(3, count)
    for i in range(first):
        buf.add(input_ids=ids[i], logprobs=logprobs[i], score=float(scores[i]))
    for start in range(first, count, chunk):
        stop = min(start + chunk, count)
        buf.add(input_ids=ids[start:stop], logprobs=logprobs[start:stop], score=scores[start:stop])
    return buf, ids, logprobs, scores


@given(count=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), chunk=st.integers(1, 9))
def test_storage_round_trips(count, seed, chunk):
    buf, ids, logprobs, scores = filled(np.random.default_rng(seed), count, chunk)
    assert len(buf) == count
    assert buf.num_tokens == sum(len(i) for i in ids)
    np.testing.assert_array_equal(buf.lengths, [len(i) for i in ids])
    for i in range(count):
        item = buf[i]
        np.testing.assert_array_equal(item["input_ids"], ids[i])
        np.testing.assert_array_equal(item["logprobs"], logprobs[i])
        assert item["score"] == scores[i]
    assert buf.tokens("input_ids").dtype == np.int64
    assert buf.scalars("score").dtype == np.float32


@given(
    count=st.integers(1, 30),
    minibatch_size=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    side=st.sampled_from(["right", "left"]),
    drop_last=st.booleans(),
)
def test_minibatches_match_reference_padding(count, minibatch_size, seed, side, drop_last):
    buf, ids, logprobs, scores = filled(np.random.default_rng(seed), count)
    batches = list(
        buf.minibatches(
            minibatch_size,
            seed,
            side=side,
            drop_last=drop_last,
            pad_value={"input_ids": 3},
        )
    )
    expected = rlhf_fast.minibatch_indices(count, minibatch_size, seed=seed, drop_last=drop_last)
    assert len(batches) == len(expected)
    for batch, indices in zip(batches, expected):
        np.testing.assert_array_equal(batch["indices"], indices)
        want_ids, want_mask = reference.pad_ragged([ids[i] for i in indices], 3, side)
        want_lp, _ = reference.pad_ragged([logprobs[i] for i in indices], 0, side)
        np.testing.assert_array_equal(batch["input_ids"], want_ids)
        np.testing.assert_array_equal(batch["logprobs"], want_lp)
        np.testing.assert_array_equal(batch["mask"], want_mask)
        np.testing.assert_array_equal(batch["score"], scores[indices])
    again = list(buf.minibatches(minibatch_size, seed, side=side, drop_last=drop_last))
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["logprobs"], b["logprobs"])


def test_every_rollout_appears_once_per_epoch_and_seeds_differ():
    buf, *_ = filled(np.random.default_rng(0), 50)
    seen = np.concatenate([b["indices"] for b in buf.minibatches(8, seed=1)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(50))
    other = np.concatenate([b["indices"] for b in buf.minibatches(8, seed=2)])
    assert not np.array_equal(seen, other)


def test_growth_beyond_initial_capacity_keeps_data():
    rng = np.random.default_rng(3)
    buf, ids, _, _ = filled(rng, 600, chunk=50)  # > 1024 tokens and > 64 rollouts
    assert buf.num_tokens > 2048
    for i in (0, 299, 599):
        np.testing.assert_array_equal(buf[i]["input_ids"], ids[i])


def test_fixed_length_and_clear():
    buf, *_ = filled(np.random.default_rng(4), 10)
    batch = next(buf.minibatches(4, seed=0, length=20))
    assert batch["input_ids"].shape == (4, 20)
    buf.clear()
    assert len(buf) == 0 and buf.num_tokens == 0
    buf.add(input_ids=[1, 2], logprobs=[-0.5, -0.25], score=1)
    assert len(buf) == 1 and buf[0]["input_ids"].tolist() == [1, 2]


def test_as_torch():
    torch = pytest.importorskip("torch")
    buf, *_ = filled(np.random.default_rng(5), 9)
    batch = next(buf.minibatches(4, seed=0, as_torch=True, device="cpu"))
    assert batch["input_ids"].dtype == torch.int64
    assert batch["logprobs"].dtype == torch.float32
    assert batch["mask"].dtype == torch.bool
    assert batch["indices"].shape == (4,)


def test_accepts_torch_tensors_and_casts_same_kind():
    torch = pytest.importorskip("torch")
    buf = RolloutBuffer({"input_ids": np.int32, "values": np.float32}, {"score": np.float64})
    buf.add(
        input_ids=[torch.tensor([1, 2, 3]), torch.tensor([4])],
        values=[torch.zeros(3, dtype=torch.float64), torch.ones(1)],
        score=torch.tensor([0.5, 1.5]),
    )
    assert buf.tokens("input_ids").dtype == np.int32
    np.testing.assert_array_equal(buf.tokens("values"), [0, 0, 0, 1])
    np.testing.assert_array_equal(buf.scalars("score"), [0.5, 1.5])


def test_bad_adds_raise_and_leave_the_buffer_unchanged():
    buf = RolloutBuffer(FIELDS, {"score": np.float32})
    buf.add(input_ids=[1, 2], logprobs=[-1.0, -1.0], score=0.0)
    with pytest.raises(rlhf_fast.InvalidArgumentError, match="missing"):
        buf.add(input_ids=[1], logprobs=[-1.0])
    with pytest.raises(rlhf_fast.InvalidArgumentError, match="same lengths"):
        buf.add(input_ids=[1, 2], logprobs=[-1.0], score=0.0)
    with pytest.raises(rlhf_fast.InvalidDtypeError, match="input_ids"):
        buf.add(input_ids=[1.5], logprobs=[-1.0], score=0.0)
    with pytest.raises(rlhf_fast.InvalidArgumentError, match="one value per rollout"):
        buf.add(input_ids=[[1], [2]], logprobs=[[-1.0], [-1.0]], score=[0.0])
    with pytest.raises(rlhf_fast.InvalidArgumentError, match="1-D"):
        buf.add(input_ids=[np.ones((2, 2), int)], logprobs=[np.ones((2, 2))], score=[0.0])
    assert len(buf) == 1 and buf.num_tokens == 2
    with pytest.raises(rlhf_fast.InvalidArgumentError, match="reserved"):
        RolloutBuffer({"mask": np.uint8})
    with pytest.raises(rlhf_fast.InvalidDtypeError, match="float16"):
        RolloutBuffer({"x": np.float16})
    with pytest.raises(rlhf_fast.InvalidArgumentError, match="empty"):
        next(RolloutBuffer(FIELDS).minibatches(2, seed=0))


def test_buffer_docstring_examples():
    results = doctest.testmod(buffer)
    assert results.attempted >= 5 and results.failed == 0


@given(
    count=st.integers(0, 12),
    width=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
    holes=st.booleans(),
)
def test_add_padded_equals_adding_the_masked_rows(count, width, seed, holes):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 1000, size=(count, width))
    logprobs = -rng.random((count, width)).astype(np.float32)
    if holes:
        mask = rng.random((count, width)) < 0.6
    else:  # left-padded prompt + right-padded response, as a trainer's rollout
        start = rng.integers(0, width + 1, size=count)
        stop = rng.integers(0, width + 1, size=count)
        cols = np.arange(width)
        mask = (cols >= np.minimum(start, stop)[:, None]) & (
            cols < np.maximum(start, stop)[:, None]
        )
    scores = rng.standard_normal(count).astype(np.float32)
    padded = RolloutBuffer(FIELDS, {"score": np.float32})
    padded.add_padded(mask, input_ids=ids, logprobs=logprobs, score=scores)
    rows = RolloutBuffer(FIELDS, {"score": np.float32})
    for i in range(count):
        rows.add(input_ids=ids[i][mask[i]], logprobs=logprobs[i][mask[i]], score=float(scores[i]))
    assert len(padded) == count
    np.testing.assert_array_equal(padded.offsets, rows.offsets)
    np.testing.assert_array_equal(padded.tokens("input_ids"), rows.tokens("input_ids"))
    np.testing.assert_array_equal(padded.tokens("logprobs"), rows.tokens("logprobs"))
    np.testing.assert_array_equal(padded.scalars("score"), rows.scalars("score"))


def test_add_padded_rejects_shapes_that_do_not_match_the_mask():
    buf = RolloutBuffer(FIELDS)
    mask = np.ones((2, 3), bool)
    with pytest.raises(rlhf_fast.InvalidArgumentError, match="logprobs"):
        buf.add_padded(mask, input_ids=np.zeros((2, 3), np.int64), logprobs=np.zeros((2, 4)))
    with pytest.raises(rlhf_fast.InvalidArgumentError, match="mask"):
        buf.add_padded(np.ones(3, bool), input_ids=np.zeros(3), logprobs=np.zeros(3))
    assert len(buf) == 0


@given(
    count=st.integers(1, 60),
    minibatch_size=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
    drop_last=st.booleans(),
)
def test_length_grouped_minibatches_cover_each_rollout_once_with_less_padding(
    count, minibatch_size, seed, drop_last
):
    buf, *_ = filled(np.random.default_rng(seed), count)
    grouped = list(buf.minibatches(minibatch_size, seed, group_by_length=True, drop_last=drop_last))
    plain = list(buf.minibatches(minibatch_size, seed, drop_last=drop_last))
    seen = np.concatenate([b["indices"] for b in grouped]) if grouped else np.array([], np.int64)
    assert len(np.unique(seen)) == len(seen)
    expected = count - count % minibatch_size if drop_last else count
    assert len(seen) == expected
    assert sum(len(b["indices"]) < minibatch_size for b in grouped) <= 1
    # Minibatches are runs of the bucket-sorted order: their bucket ranges never interleave.
    ranges = sorted(
        (int(buckets.max()), int(buckets.min()))
        for buckets in (buf.lengths[b["indices"]] // buffer.LENGTH_BUCKET for b in grouped)
    )
    for (high, _), (_, next_low) in zip(ranges, ranges[1:]):
        assert high <= next_low
    if not drop_last:
        padding = lambda batches: sum(b["mask"].size - b["mask"].sum() for b in batches)  # noqa: E731
        assert padding(grouped) <= padding(plain) + buffer.LENGTH_BUCKET * count


def test_length_grouped_minibatches_change_with_the_seed():
    buf = RolloutBuffer(FIELDS)
    lengths = np.full(64, 20)  # all in one bucket: grouping leaves the shuffle as it is
    buf.add(
        input_ids=[np.zeros(n, np.int64) for n in lengths],
        logprobs=[np.zeros(n, np.float32) for n in lengths],
    )
    a = [b["indices"].tolist() for b in buf.minibatches(16, 1, group_by_length=True)]
    b = [b["indices"].tolist() for b in buf.minibatches(16, 2, group_by_length=True)]
    assert sorted(sum(a, [])) == sorted(sum(b, [])) == list(range(64))
    assert a != b
    assert {frozenset(x) for x in a} != {frozenset(x) for x in b}


def test_prompt_response_buffer_keeps_attended_tokens_with_zeros_on_the_prompt():
    import torch

    sequences = torch.tensor([[0, 5, 6, 7, 8, 0], [9, 5, 6, 7, 0, 0]])  # prompt 3 (left pad)
    attention = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    response = torch.tensor([[True, True, False], [True, False, False]])
    values = torch.tensor([[0.5, 0.25, 9.0], [1.5, 9.0, 9.0]], dtype=torch.bfloat16)
    buf = buffer.prompt_response_buffer(
        sequences, attention, response, {"values": values}, {"score": torch.tensor([1.0, 2.0])}
    )
    assert buf.lengths.tolist() == [4, 4]
    np.testing.assert_array_equal(buf[0]["input_ids"], [5, 6, 7, 8])
    np.testing.assert_array_equal(buf[1]["is_response"], [0, 0, 0, 1])
    np.testing.assert_array_equal(buf[0]["values"], np.array([0, 0, 0.5, 0.25], np.float32))
    np.testing.assert_array_equal(buf.scalars("score"), np.array([1.0, 2.0], np.float32))
