"""torch tensors in and out: same kind, dtype and device; zero-copy on CPU; optional torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import rlhf_fast
from rlhf_fast import ops

torch = pytest.importorskip("torch")

DTYPES = (torch.float32, torch.float64)


def data_ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.fixture
def native_args(monkeypatch):
    """Records the arrays each native kernel receives (the kernels still run)."""
    seen: dict[str, tuple] = {}

    def spy(name):
        real = getattr(ops._native, name)

        def wrapper(*args, **kwargs):
            seen[name] = (args, kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(ops._native, name, wrapper)

    for name in ("gae", "kl_shaped_rewards", "masked_moments", "masked_whiten"):
        spy(name)
    return seen


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_tensors_reach_the_kernel_without_copies(native_args, dtype):
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 16, dtype=dtype), torch.randn(4, 16, dtype=dtype)
    mask = torch.rand(4, 16) < 0.7
    adv, ret = rlhf_fast.gae(rewards, values, mask, gamma=0.99, lam=0.95)
    (r, v, m), _ = native_args["gae"]
    assert data_ptr(r) == rewards.data_ptr() and data_ptr(v) == values.data_ptr()
    assert data_ptr(m) == mask.data_ptr() and m.dtype == np.uint8  # bool re-viewed, not cast
    assert isinstance(adv, torch.Tensor) and adv.dtype == dtype and adv.device.type == "cpu"
    want = rlhf_fast.gae(rewards.numpy(), values.numpy(), mask.numpy(), gamma=0.99, lam=0.95)
    np.testing.assert_array_equal(adv.numpy(), want[0])
    np.testing.assert_array_equal(ret.numpy(), want[1])


def test_out_tensors_are_written_in_place():
    rewards, values = torch.randn(3, 8), torch.randn(3, 8)
    mask = torch.ones(3, 8, dtype=torch.bool)
    adv_out, ret_out = torch.full((3, 8), float("nan")), torch.empty(3, 8)
    ptrs = adv_out.data_ptr(), ret_out.data_ptr()
    adv, ret = rlhf_fast.gae(rewards, values, mask, advantages_out=adv_out, returns_out=ret_out)
    assert adv is adv_out and ret is ret_out
    assert (adv.data_ptr(), ret.data_ptr()) == ptrs
    want = rlhf_fast.gae(rewards, values, mask)
    assert torch.equal(adv, want[0]) and torch.equal(ret, want[1])
    out = np.empty((3, 8), np.float32)
    whitened = rlhf_fast.masked_whiten(rewards.numpy(), out=out)
    assert whitened is out and np.shares_memory(whitened, out)


def test_requires_grad_and_strided_tensors():
    base = torch.randn(4, 20, dtype=torch.float64, requires_grad=True)
    rewards = base[:, ::2]  # non-contiguous view of a tensor that requires grad
    values = torch.zeros(4, 10, dtype=torch.float64)
    adv, _ = rlhf_fast.gae(rewards, values, None, gamma=1.0, lam=1.0)
    assert not adv.requires_grad
    want = torch.flip(torch.cumsum(torch.flip(rewards.detach(), [1]), 1), [1])
    torch.testing.assert_close(adv, want)


def test_every_op_returns_tensors():
    lp, ref = torch.randn(2, 5), torch.randn(2, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    rewards, kl = rlhf_fast.kl_shaped_rewards(lp, ref, mask, torch.tensor([1.0, 2.0]), kl_coef=0.1)
    assert isinstance(rewards, torch.Tensor) and kl.dtype == torch.float32
    mean = rlhf_fast.masked_mean(lp, mask)
    assert isinstance(mean, torch.Tensor) and mean.ndim == 0 and mean.dtype == torch.float32
    torch.testing.assert_close(mean, lp[mask.bool()].mean())
    torch.testing.assert_close(rlhf_fast.masked_var(lp, mask), lp[mask.bool()].var())
    whitened = rlhf_fast.masked_whiten(lp, mask)
    sel = lp[mask.bool()]
    torch.testing.assert_close(whitened[mask.bool()], (sel - sel.mean()) / sel.std())
    adv = rlhf_fast.group_advantages(
        torch.tensor([1.0, 2.0, 3.0, 3.0], dtype=torch.float64), group_size=2
    )
    assert adv.dtype == torch.float64
    padded, pmask = rlhf_fast.pad_ragged([torch.tensor([1, 2, 3]), torch.tensor([4])], side="left")
    assert padded.dtype == torch.int64 and pmask.dtype == torch.bool
    assert padded.tolist() == [[1, 2, 3], [0, 0, 4]]


def test_packed_tensors_with_int32_cu_seqlens():
    flat = torch.randn(9, dtype=torch.float64)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)  # flash-attention's dtype
    adv, _ = rlhf_fast.gae(flat, torch.zeros(9, dtype=torch.float64), None, cu_seqlens=cu)
    padded = torch.zeros(2, 5, dtype=torch.float64)
    padded[0, :4], padded[1] = flat[:4], flat[4:]
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    want, _ = rlhf_fast.gae(padded, torch.zeros_like(padded), mask)
    assert torch.equal(adv, want[mask])


def test_bfloat16_is_a_dtype_error():
    with pytest.raises(rlhf_fast.InvalidDtypeError, match="rewards"):
        rlhf_fast.gae(torch.zeros(2, 2, dtype=torch.bfloat16), torch.zeros(2, 2), None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_come_back_on_their_device():
    device = torch.device("cuda")
    rewards, values = torch.randn(8, 32, device=device), torch.randn(8, 32, device=device)
    mask = torch.rand(8, 32, device=device) < 0.8
    adv, ret = rlhf_fast.gae(rewards, values, mask, gamma=0.99, lam=0.95)
    assert adv.device == device and ret.device == device and adv.dtype == torch.float32
    want = rlhf_fast.gae(rewards.cpu(), values.cpu(), mask.cpu(), gamma=0.99, lam=0.95)
    torch.testing.assert_close(adv.cpu(), want[0], rtol=0, atol=0)
    out = torch.empty(8, 32, device=device)
    got, _ = rlhf_fast.gae(rewards, values, mask, gamma=0.99, lam=0.95, advantages_out=out)
    assert got is out
    torch.testing.assert_close(out.cpu(), want[0], rtol=0, atol=0)
    mean = rlhf_fast.masked_mean(rewards, mask)
    assert mean.device == device
    padded, pmask = rlhf_fast.pad_ragged([torch.arange(3, device=device)])
    assert padded.device == device and pmask.device == device


def test_import_does_not_need_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "import numpy as np, rlhf_fast\n"
        "adv, _ = rlhf_fast.gae(np.ones((1, 2)), np.zeros((1, 2)), None, gamma=1.0, lam=1.0)\n"
        "assert adv.tolist() == [[2.0, 1.0]], adv\n"
        "buf = rlhf_fast.RolloutBuffer({'ids': np.int64}); buf.add(ids=[1, 2])\n"
        "assert next(buf.minibatches(1, seed=0))['ids'].tolist() == [[1, 2]]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
