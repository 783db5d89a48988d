"""What every trainer does the same way: seeding, device and autocast, tokenising pairs.

Kept apart so that ``sft.py``, ``reward.py`` and ``ppo.py`` read as the algorithm alone.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rlhf_fast.config import option  # re-exported: the trainers' config blocks use it
from rlhf_fast.models import resolve_device  # re-exported for the trainers
from rlhf_fast.tokenizer import Tokenizer

__all__ = [
    "autocast",
    "default_tokenizer_spec",
    "option",
    "encode_text",
    "pad_rows",
    "resolve_device",
    "seed_everything",
    "skipped_count",
    "with_instruction",
]


def default_tokenizer_spec(model: str) -> str:
    """The tokenizer to use when none is named: the model directory's, or bytes for a built-in."""
    from pathlib import Path

    return model if Path(model).is_dir() else "bytes"


def skipped_count(*loaded: Any) -> int:
    """Records the data loaders skipped as invalid (``skip_invalid=True``), summed."""
    return sum(getattr(getattr(x, "report", None), "n_skipped", 0) for x in loaded)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (libraries still draw from the global RNG)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``enabled``; a no-op context otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def with_instruction(prompt: str, instruction: str) -> str:
    """``instruction`` prepended to ``prompt`` (a knob hosted pipelines expose)."""
    return f"{instruction} {prompt}" if instruction else prompt


def encode_text(
    tokenizer: Any, text: str, *, add_eos: bool = False, continuation: bool = False
) -> list[int]:
    """Token ids of ``text`` with no special tokens (``<eos>`` appended when asked).

    ``continuation``: the text follows earlier text (HF BPE tokenizers need the space).
    Works with ``rlhf_fast.tokenizer.Tokenizer`` and Hugging Face tokenizers.
    """
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.encode(text, add_eos=add_eos)
    ids = list(
        tokenizer(" " + text if continuation else text, add_special_tokens=False)["input_ids"]
    )
    if add_eos:
        ids.append(tokenizer.eos_token_id)
    return ids


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int, *, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged id lists -> ``(ids [B, T] int64, mask [B, T] int64)`` padded on ``side``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "right":
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        else:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask
