"""What every trainer does the same way: seeding, device and autocast, tokenising text.

Kept apart so that ``sft.py``, ``reward.py`` and ``ppo.py`` read as the algorithm alone.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np
import torch

from rlhf_fast.config import option  # re-exported: the trainers' config blocks use it
from rlhf_fast.models import pad_rows, resolve_device  # re-exported for the trainers
from rlhf_fast.tokenizer import encode_text  # re-exported for the trainers

__all__ = [
    "sampling_options",
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


def sampling_options(cfg: Any, tokenizer: Any) -> dict[str, Any]:
    """``sample_responses``' keyword options from a stage's settings and its tokenizer."""
    return {
        "max_new_tokens": cfg.max_new_tokens,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "top_p": cfg.top_p,
    }
