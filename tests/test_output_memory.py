"""Fresh outputs come from recycled buffers: they must never alias live arrays."""

import gc

import numpy as np

import rlhf_fast

ROWS, COLS = 64, 1024  # outputs well above the recycling threshold


def _inputs(seed):
    rng = np.random.default_rng(seed)
    rewards = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    values = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    return rewards, values, np.ones((ROWS, COLS), dtype=bool)


def test_live_outputs_never_share_memory():
    first = rlhf_fast.gae(*_inputs(0), gamma=0.99, lam=0.95)
    second = rlhf_fast.gae(*_inputs(1), gamma=0.99, lam=0.95)
    arrays = [*first, *second]
    for i, a in enumerate(arrays):
        for b in arrays[i + 1 :]:
            assert not np.shares_memory(a, b)


def test_a_view_keeps_its_buffer_after_the_array_is_dropped():
    adv, _ = rlhf_fast.gae(*_inputs(0), gamma=0.99, lam=0.95)
    view = adv[3:5, 10:20]
    expected = view.copy()
    del adv
    gc.collect()
    # Recycled buffers go to new outputs only once no view refers to them.
    for seed in range(1, 4):
        rlhf_fast.gae(*_inputs(seed), gamma=0.99, lam=0.95)
    np.testing.assert_array_equal(view, expected)


def test_outputs_are_writable_contiguous_and_independent():
    adv, ret = rlhf_fast.gae(*_inputs(0), gamma=0.99, lam=0.95)
    assert adv.flags.writeable and adv.flags.c_contiguous and adv.flags.aligned
    before = ret.copy()
    adv[...] = 123.0
    np.testing.assert_array_equal(ret, before)
    padded, mask = rlhf_fast.pad_ragged([np.arange(COLS * 64, dtype=np.int64)] * 2)
    assert padded.flags.writeable and mask.dtype == np.bool_


def test_torch_tensors_keep_recycled_outputs_alive():
    import torch

    rewards, values, mask = (torch.from_numpy(a) for a in _inputs(0))
    adv, _ = rlhf_fast.gae(rewards, values, mask, gamma=0.99, lam=0.95)
    expected = adv.clone()
    gc.collect()
    for seed in range(1, 4):
        rlhf_fast.gae(*_inputs(seed), gamma=0.99, lam=0.95)
    assert torch.equal(adv, expected)
