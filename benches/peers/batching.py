"""Ragged -> padded batching: rlhf_fast.pad_ragged against torch's pad_sequence and a numpy loop.

Rows are int64 token ids, right-padded with 0 to the longest row. ``pad_sequence`` returns the
padded tensor only; the row also timed with the ``arange < lengths`` mask a trainer needs next
to it. rlhf_fast returns both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from .common import Implementation, assert_close_on


@dataclass
class BatchCase:
    rows: list[np.ndarray]  # int64 [L_i]
    tensors: list[torch.Tensor]  # the same memory as torch tensors
    flat: np.ndarray  # int64 [sum L_i]
    offsets: np.ndarray  # int64 [R + 1]
    reference: tuple[np.ndarray, np.ndarray]  # padded [R, L], mask [R, L]

    @property
    def shape(self) -> tuple[int, int]:
        return self.reference[0].shape

    @property
    def elements(self) -> int:
        return int(self.offsets[-1])  # real tokens moved


def make_case(n_rows: int, max_len: int, seed: int = 0) -> BatchCase:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n_rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = rng.integers(0, 50_000, size=int(offsets[-1]), dtype=np.int64)
    rows = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    padded = np.zeros((n_rows, int(lengths.max())), dtype=np.int64)
    mask = np.arange(padded.shape[1])[None, :] < lengths[:, None]
    padded[mask] = flat
    return BatchCase(rows, [torch.from_numpy(r) for r in rows], flat, offsets, (padded, mask))


def _check(out: Any, case: BatchCase) -> None:
    padded, mask = out if isinstance(out, tuple) else (out, None)
    assert_close_on(padded, case.reference[0], None, "padded", rtol=0, atol=0)
    if mask is not None:
        assert_close_on(mask, case.reference[1], None, "mask", rtol=0, atol=0)


def _ours_list(case: BatchCase) -> Callable[[], Any]:
    import rlhf_fast

    rows = case.rows
    return lambda: rlhf_fast.pad_ragged(rows)


def _ours_tensors(case: BatchCase) -> Callable[[], Any]:
    import rlhf_fast

    tensors = case.tensors
    return lambda: rlhf_fast.pad_ragged(tensors)


def _ours_flat(case: BatchCase) -> Callable[[], Any]:
    from rlhf_fast import _native

    flat, offsets = case.flat, case.offsets
    return lambda: _native.pad_ragged(flat, offsets)


def _pad_sequence(case: BatchCase) -> Callable[[], Any]:
    tensors = case.tensors
    return lambda: pad_sequence(tensors, batch_first=True, padding_value=0)


def _pad_sequence_mask(case: BatchCase) -> Callable[[], Any]:
    tensors = case.tensors

    def run() -> Any:
        padded = pad_sequence(tensors, batch_first=True, padding_value=0)
        lengths = torch.tensor([t.shape[0] for t in tensors])
        mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
        return padded, mask

    return run


def _numpy_loop(case: BatchCase) -> Callable[[], Any]:
    rows = case.rows

    def run() -> Any:
        length = max(len(r) for r in rows)
        padded = np.zeros((len(rows), length), dtype=rows[0].dtype)
        mask = np.zeros((len(rows), length), dtype=bool)
        for i, r in enumerate(rows):
            padded[i, : len(r)] = r
            mask[i, : len(r)] = True
        return padded, mask

    return run


def implementations() -> list[Implementation]:
    return [
        Implementation(
            "rlhf_fast.pad_ragged",
            "rlhf_fast",
            _ours_list,
            _check,
            ours=True,
            variant="list of numpy arrays",
        ),
        Implementation(
            "rlhf_fast.pad_ragged",
            "rlhf_fast",
            _ours_tensors,
            _check,
            ours=True,
            variant="list of torch tensors",
        ),
        Implementation(
            "rlhf_fast._native.pad_ragged",
            "rlhf_fast",
            _ours_flat,
            _check,
            ours=True,
            variant="flat values + offsets",
        ),
        Implementation(
            "torch pad_sequence", "torch", _pad_sequence, _check, note="padded tensor only"
        ),
        Implementation("torch pad_sequence + mask", "torch", _pad_sequence_mask, _check),
        Implementation("numpy loop", "numpy", _numpy_loop, _check),
    ]


def bytes_moved(case: BatchCase) -> int:
    """Read every token once; write the padded ids and the bool mask."""
    R, L = case.shape
    return case.elements * 8 + R * L * (8 + 1)
