"""Shared test set-up: hypothesis profiles and the strategies the kernel tests draw from.

Profiles (pick one with ``HYPOTHESIS_PROFILE=name``):

- ``fast`` (default): 200 examples per property, so ``make test`` stays quick;
- ``thorough``: 10,000 examples per property, for the acceptance run
  (``HYPOTHESIS_PROFILE=thorough .venv/bin/python -m pytest tests -k "not slow"
  --hypothesis-show-statistics``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("fast", max_examples=200, **_COMMON)
settings.register_profile("thorough", max_examples=10_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

FLOAT_DTYPES = (np.float32, np.float64)
MASK_DTYPES = (np.bool_, np.uint8, np.int64, np.float32)
MASK_LAYOUTS = ("right", "left", "holes", "full")


def tolerance(dtype: np.dtype, *arrays: np.ndarray, steps: int = 1) -> dict[str, float]:
    """``rtol``/``atol`` for comparing a kernel with the float64 reference: a few ulps
    per accumulated step at the data's scale."""
    scale = 1.0 + max((float(np.abs(a).max()) if a.size else 0.0) for a in arrays)
    ulp = 1e-6 if np.dtype(dtype) == np.float32 else 1e-14
    return dict(rtol=10 * ulp, atol=10 * ulp * scale * max(1, steps))


def as_strided_copy(x: np.ndarray) -> np.ndarray:
    """The same values in non-contiguous memory (every other column of a wider array)."""
    wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
    wide[..., ::2] = x
    view = wide[..., ::2]
    assert not view.flags.c_contiguous or x.shape[-1] <= 1
    return view


@dataclass
class Padded:
    """A random ``[B, T]`` batch: float fields, a 0/1 mask and how it was laid out."""

    fields: list[np.ndarray]
    mask: np.ndarray  # the mask as passed to the kernel (any allowed dtype)
    bool_mask: np.ndarray
    dtype: type
    layout: str
    rng: np.random.Generator

    @property
    def shape(self) -> tuple[int, int]:
        return self.bool_mask.shape


def _mask(rng: np.random.Generator, b: int, t: int, layout: str) -> np.ndarray:
    if layout == "full":
        return np.ones((b, t), dtype=bool)
    if layout == "holes":
        return rng.random((b, t)) < rng.uniform(0.2, 0.9)
    lengths = rng.integers(0, t + 1, size=b)
    cols = np.arange(t)[None, :]
    if layout == "right":
        return cols < lengths[:, None]
    return cols >= (t - lengths)[:, None]


@st.composite
def padded_batches(
    draw: st.DrawFn,
    num_fields: int,
    *,
    max_rows: int = 6,
    max_cols: int = 12,
    layouts: tuple[str, ...] = MASK_LAYOUTS,
    dtype: type | None = None,
    scale: float = 5.0,
) -> Padded:
    """``num_fields`` float ``[B, T]`` arrays (some strided) and a mask of a drawn layout
    and dtype; rows may be fully masked out, T may be 1."""
    b = draw(st.integers(1, max_rows))
    t = draw(st.integers(1, max_cols))
    dtype = dtype or draw(st.sampled_from(FLOAT_DTYPES))
    layout = draw(st.sampled_from(layouts))
    mask_dtype = draw(st.sampled_from(MASK_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bool_mask = _mask(rng, b, t, layout)
    fields = []
    for _ in range(num_fields):
        x = (rng.standard_normal((b, t)) * scale).astype(dtype)
        if draw(st.booleans()):
            x = as_strided_copy(x)
        fields.append(x)
    mask = bool_mask.astype(mask_dtype)
    return Padded(fields, mask, bool_mask, dtype, layout, rng)


def packed_from_padded(x: np.ndarray, bool_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The masked elements of each row, concatenated, and their ``cu_seqlens``."""
    cu = np.zeros(bool_mask.shape[0] + 1, dtype=np.int64)
    np.cumsum(bool_mask.sum(axis=1), out=cu[1:])
    return np.ascontiguousarray(x[bool_mask]), cu


# ---------------------------------------------- tiny decoders of four model families
DECODER_VOCAB = 40
DECODER_FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2")


def decoder_config(family: str, **overrides: object) -> object:
    """A 2-layer, 32-wide ``transformers`` config of ``family`` (Llama: 2 key/value heads of
    4, Qwen2: 1; GPT-2 and GPT-NeoX: one per head), pad id 0, bos/eos 1."""
    import transformers

    shape = dict(
        vocab_size=DECODER_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=96,
    )
    make = {
        "gpt2": lambda: transformers.GPT2Config(
            vocab_size=DECODER_VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=96
        ),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(**shape),
        "llama": lambda: transformers.LlamaConfig(**shape, num_key_value_heads=2),
        "qwen2": lambda: transformers.Qwen2Config(**shape, num_key_value_heads=1),
        "mistral": lambda: transformers.MistralConfig(**shape, num_key_value_heads=2),
    }
    config = make[family]()
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 1
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_decoder(family: str, dtype: object = None) -> object:
    """A seeded causal LM of ``decoder_config(family)`` in eval mode (float64 by default)."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(decoder_config(family))
    return model.to(dtype or torch.float64).eval()
