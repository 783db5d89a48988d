"""A KV cache for sampling several responses per prompt, and the attention that reads it.

``transformers``' ``DynamicCache`` keeps one key/value row per sequence and grows it with
``torch.cat`` at every decoded token. Sampling ``G`` responses per prompt then

- holds (and at every step reads) each prompt's keys and values ``G`` times, and
- copies the whole cache once per token and layer, into freshly allocated memory.

On a CPU both are memory traffic, and on small models they cost as much as the matmuls.
``SharedPrefixCache`` keeps each prompt's keys and values once, ``[P, Hkv, Lq, D]``, and
the responses' in a buffer allocated once, ``[B, Hkv, max_new_tokens, D]``, written one
column per step. The decode steps' attention (``_shared_prefix_attention``, registered with
``transformers.AttentionInterface``) scores each query against its prompt's keys, with the
``G`` queries of a prompt in one matmul, and against its own response's keys; one softmax
over both. The numbers are the plain cache's to float rounding
(``tests/test_decode_cache.py``).

The prefill (the prompts themselves) runs with the model's own attention; only the one-token
decode steps switch to this one (``decoding``). Rows may leave the decode batch
(``batch_select_indices``) without their prompt's keys being copied.

Used by ``sampling.sample_responses`` where ``supported(trunk)``: transformers >= 5 and a
model family whose attention goes through ``AttentionInterface`` and whose tests here check
it (GPT-2, Llama, Mistral, Qwen2, GPT-NeoX); other models keep ``DynamicCache``.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Optional

import torch
from torch import nn
from transformers import DynamicCache

__all__ = ["SharedPrefixCache", "decoding", "supported"]

ATTENTION_NAME = "rlhf_fast_shared_prefix"
# Families whose attention modules call ALL_ATTENTION_FUNCTIONS with (query, key, value)
# straight from cache.update, and read no per-model attention options we do not implement.
_FAMILIES = {"gpt2", "llama", "mistral", "qwen2", "gpt_neox"}
_active: contextvars.ContextVar[Optional[SharedPrefixCache]] = contextvars.ContextVar(
    "rlhf_fast_shared_prefix_cache", default=None
)


def supported(trunk: nn.Module) -> bool:
    """Whether ``trunk`` (a causal LM's decoder stack) can decode with ``SharedPrefixCache``."""
    import transformers

    if not hasattr(transformers, "AttentionInterface"):
        return False
    if int(transformers.__version__.split(".")[0]) < 5:
        return False
    config = getattr(trunk, "config", None)
    if config is None or getattr(config, "model_type", None) not in _FAMILIES:
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False  # a window would hide early prompt tokens; we attend to all of them
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager", None)


def _register() -> None:
    from transformers import AttentionInterface

    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, _shared_prefix_attention)


def _shared_prefix_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    cache = _active.get()
    if cache is None:
        raise RuntimeError(f"{ATTENTION_NAME} attention used outside sampling.decoding")
    return cache.attend(module.layer_idx, query, key, value, scaling), None


@contextlib.contextmanager
def decoding(trunk: nn.Module, cache: SharedPrefixCache) -> Iterator[None]:
    """Within: ``trunk``'s attention reads ``cache``'s shared prompts (one-token steps)."""
    _register()
    config = trunk.config
    before = config._attn_implementation
    token = _active.set(cache)
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = before
        _active.reset(token)


class SharedPrefixCache(DynamicCache):  # type: ignore[misc]
    """A ``DynamicCache`` whose prompts are stored once and whose responses grow in place.

    Use: the prefill fills it as a ``DynamicCache`` (one row per prompt); then
    ``batch_repeat_interleave(G)`` makes row ``b`` a response to prompt ``b // G`` without
    copying anything; each later ``update`` (one token per row, inside ``decoding``) writes
    one column of the response buffer. ``prompt_mask``: ``[P, Lq]``, the prompts' mask.
    """

    def __init__(self, prompt_mask: torch.Tensor, max_new_tokens: int) -> None:
        super().__init__()
        self.prompt_mask = prompt_mask.bool()
        self.capacity = max_new_tokens
        self.group = 0  # G once the prompts are shared; 0 during the prefill
        self.rows: Optional[torch.Tensor] = None  # (b,) each decode row's slot in [P * G]
        self.length = 0  # response tokens cached
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.bias: Optional[torch.Tensor] = None  # (P, 1, 1, Lq) 0 / very negative

    # --- the cache protocol ------------------------------------------------------------

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.group:
            raise RuntimeError("SharedPrefixCache: the prompts are already shared")
        self.group = repeats
        self.prefix = [(layer.keys, layer.values) for layer in self.layers]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self.group:
            super().batch_select_indices(indices)
            return
        self.rows = indices if self.rows is None else self.rows[indices]
        self.buffers = [(k[indices], v[indices]) for k, v in self.buffers]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if not self.group:
            return super().get_seq_length(layer_idx)
        return self.prompt_mask.shape[1] + self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        if not self.group:
            return super().get_mask_sizes(query_length, layer_idx)
        return self.get_seq_length() + query_length, 0

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *a: Any,
        **k: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.group:  # the prefill
            return super().update(key_states, value_states, layer_idx, *a, **k)
        if key_states.shape[-2] != 1:
            raise RuntimeError("SharedPrefixCache: decode steps take one token per row")
        if layer_idx == len(self.buffers):  # first decode step
            shape = (*key_states.shape[:2], self.capacity, key_states.shape[-1])
            self.buffers.append((key_states.new_empty(shape), value_states.new_empty(shape)))
        keys, values = self.buffers[layer_idx]
        if self.length >= self.capacity:
            raise RuntimeError("SharedPrefixCache: more tokens than max_new_tokens")
        keys[:, :, self.length] = key_states[:, :, 0]
        values[:, :, self.length] = value_states[:, :, 0]
        if layer_idx == len(self.prefix) - 1:
            self.length += 1  # the last layer has written this step's column
            return keys[:, :, : self.length], values[:, :, : self.length]
        return keys[:, :, : self.length + 1], values[:, :, : self.length + 1]

    # --- the attention -----------------------------------------------------------------

    def attend(
        self,
        layer_idx: int,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        scaling: Optional[float],
    ) -> torch.Tensor:
        """Attention output ``[b, 1, Hq, D]`` of one-token queries ``[b, Hq, 1, D]`` over
        their prompt's keys and their own response's ``keys, values`` ``[b, Hkv, t, D]``."""
        prefix_keys, prefix_values = self.prefix[layer_idx]  # (P, Hkv, Lq, D)
        prompts, heads_kv, n_prompt, dim = prefix_keys.shape
        b, heads_q = query.shape[:2]
        per_kv = heads_q // heads_kv  # query heads per key/value head (grouped-query attention)
        group, slots = self.group, prompts * self.group
        scale = dim**-0.5 if scaling is None else scaling
        q = query.reshape(b, heads_kv, per_kv, dim)
        if self.bias is None or self.bias.dtype != q.dtype:
            very_negative = torch.finfo(q.dtype).min
            self.bias = torch.zeros(
                (prompts, 1, 1, n_prompt), dtype=q.dtype, device=q.device
            ).masked_fill(~self.prompt_mask[:, None, None, :], very_negative)
        # Each prompt's G queries (times the heads sharing a key head) in one matmul.
        if self.rows is None:
            q_slots = q
        else:
            q_slots = q.new_zeros((slots, heads_kv, per_kv, dim)).index_copy_(0, self.rows, q)
        q_grouped = q_slots.view(prompts, group, heads_kv, per_kv, dim).transpose(1, 2)
        q_grouped = q_grouped.reshape(prompts, heads_kv, group * per_kv, dim)
        prefix_scores = torch.matmul(q_grouped, prefix_keys.transpose(-1, -2)) * scale
        prefix_scores = prefix_scores.view(prompts, heads_kv, group * per_kv, n_prompt) + self.bias
        prefix_scores = (
            prefix_scores.view(prompts, heads_kv, group, per_kv, n_prompt)
            .transpose(1, 2)
            .reshape(slots, heads_kv, per_kv, n_prompt)
        )
        if self.rows is not None:
            prefix_scores = prefix_scores.index_select(0, self.rows)
        own_scores = torch.matmul(q, keys.transpose(-1, -2)) * scale  # (b, Hkv, per_kv, t)
        scores = torch.cat([prefix_scores, own_scores], dim=-1)
        # at least float32 for the softmax (bf16 / fp16 models), as transformers' eager does
        weights = scores.softmax(-1, dtype=torch.promote_types(q.dtype, torch.float32))
        weights = weights.to(q.dtype)
        prefix_weights, own_weights = weights.split([n_prompt, keys.shape[-2]], dim=-1)
        if self.rows is not None:
            prefix_weights = prefix_weights.new_zeros(
                (slots, heads_kv, per_kv, n_prompt)
            ).index_copy_(0, self.rows, prefix_weights)
        grouped = (
            prefix_weights.reshape(prompts, group, heads_kv, per_kv, n_prompt)
            .transpose(1, 2)
            .reshape(prompts, heads_kv, group * per_kv, n_prompt)
        )
        out = torch.matmul(grouped, prefix_values)  # (P, Hkv, G * per_kv, D)
        out = out.view(prompts, heads_kv, group, per_kv, dim).transpose(1, 2)
        out = out.reshape(slots, heads_kv, per_kv, dim)
        if self.rows is not None:
            out = out.index_select(0, self.rows)
        out = out + torch.matmul(own_weights, values)  # (b, Hkv, per_kv, D)
        return out.reshape(b, 1, heads_q, dim)
