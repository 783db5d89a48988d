"""Sampling responses with a KV cache, keeping what PPO needs from the sampling pass itself.

``sample_responses`` is a lean decode loop over a ``transformers`` causal LM: one prefill of
the (left-padded) prompts, then one cached step per token until every row has emitted
``<eos>`` or ``max_new_tokens`` is reached. At each step it already holds the logits of the
next token and the hidden state of the current one, so it records

- the sampled token's logprob under ``softmax(logits / temperature)`` (before top-k/top-p
  filtering: the same quantity PPO's update recomputes), and
- optionally a value head's estimate on the trunk's hidden state (policy and value sharing
  one trunk),

which saves PPO the separate policy forward over prompt + response after sampling. In float32
these equal a fresh forward's numbers to rounding (``tests/test_sampling.py``). Rows that have
emitted ``<eos>`` leave the decode batch (and the KV cache) once they are half of it, so a
policy that answers briefly does not keep paying for its longest answer. With several
samples per prompt the prompt's prefill runs once; where ``decode_cache.supported``, its keys
and values are also kept once (not once per sample) and the responses' grow in place
instead of being copied at every token.

Why not ``model.generate``: on small models its per-step bookkeeping (logits processors,
stopping criteria, cache and mask updates for any model) costs as much as the model itself,
and its scores do not come with hidden states unless every layer's are kept
(``benches/e2e_ppo.py --lever`` measures both).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import causal_lm_parts, position_ids_from_mask
from rlhf_fast.prompt_sharing import cache_argument

__all__ = ["Samples", "sample_responses", "filter_logits"]


@dataclass
class Samples:
    """Sampled responses, ``[B, T]`` with ``T <= max_new_tokens`` (the loop stops early
    once every row has emitted ``<eos>``)."""

    tokens: torch.Tensor  # (B, T) int64, pad after each row's <eos>
    response_mask: torch.Tensor  # (B, T) bool: response tokens up to and including <eos>
    logprobs: torch.Tensor  # (B, T) float32, 0 outside the mask
    values: Optional[torch.Tensor]  # (B, T) float32 from value_fn, 0 outside the mask
    ended: torch.Tensor  # (B,) bool: the row emitted <eos>


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """``logits`` ``[B, V]`` with everything outside the top-k / nucleus set to ``-inf``.

    ``top_k = 0`` and ``top_p = 1.0`` switch the filters off. The nucleus keeps the smallest
    set of most likely tokens whose probability reaches ``top_p`` (always at least one) in
    the distribution top-k left, as ``transformers``' warpers do.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before it suffices
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample_responses(
    causal_lm: nn.Module,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    value_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    num_samples: int = 1,
) -> Samples:
    """Sample ``num_samples`` responses per left-padded prompt row.

    Args:
        causal_lm: a ``transformers`` causal LM (peft-wrapped too); its adapters, dtype and
            device are used as they are.
        query, query_mask: ``[B, Lq]`` prompt ids and attention mask, padded on the left.
        max_new_tokens: response length cap.
        eos_token_id, pad_token_id: a row stops at ``<eos>`` (kept in the response) and is
            filled with ``pad_token_id`` after it.
        temperature: logits are divided by it before sampling and for the logprobs (> 0).
        top_k, top_p: sampling filters (0 / 1.0: off); logprobs stay those of the unfiltered
            temperature-scaled distribution.
        value_fn: maps hidden states ``[B, H]`` of the trunk to values ``[B]``; ``values[b,
            t]`` is its estimate on the state before response token ``t``.
        num_samples: responses per prompt; the ``P * num_samples`` returned rows hold each
            prompt's responses consecutively. The prompt's prefill runs once and its KV
            cache is shared by its rows.

    Draws from torch's global RNG, so ``torch.manual_seed`` makes it reproducible.
    """
    if not temperature > 0:
        raise InvalidArgumentError(f"temperature: expected > 0, got {temperature}")
    if max_new_tokens < 1:
        raise InvalidArgumentError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
    if num_samples < 1:
        raise InvalidArgumentError(f"num_samples: expected >= 1, got {num_samples}")
    if query.ndim != 2 or query.shape != query_mask.shape:
        raise InvalidArgumentError(
            f"query, query_mask: expected two [B, Lq] tensors, got {tuple(query.shape)} and "
            f"{tuple(query_mask.shape)}"
        )
    from transformers import DynamicCache

    from rlhf_fast import decode_cache  # imports transformers

    parts = causal_lm_parts(causal_lm)
    if parts is None:
        raise InvalidArgumentError(
            f"causal_lm: {type(causal_lm).__name__} post-processes its logits; sample with "
            "model.generate instead"
        )
    trunk, head = parts
    batch, device = query.shape[0] * num_samples, query.device
    shared = decode_cache.supported(trunk)
    cache = decode_cache.SharedPrefixCache(query_mask, max_new_tokens) if shared else DynamicCache()
    cache_arg = cache_argument(trunk)
    # The decode steps read each prompt's keys once (decode_cache); the prefill is plain.
    decoding = contextlib.ExitStack()
    attention_mask = query_mask.long()
    positions = position_ids_from_mask(attention_mask)
    next_position = attention_mask.sum(-1, keepdim=True)  # (B, 1) position of the next token
    step_ids = query
    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    values = torch.zeros_like(logprobs) if value_fn is not None else None
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)  # the rows still in the decode batch
    length = 0
    with decoding:
        for t in range(max_new_tokens):
            hidden = trunk(
                input_ids=step_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                use_cache=True,
                **{cache_arg: cache},
            ).last_hidden_state[:, -1]  # (b, H) state before response token t
            if t == 0 and (num_samples > 1 or shared):  # one prefill per prompt, G rows each
                cache.batch_repeat_interleave(num_samples)
                if shared:
                    decoding.enter_context(decode_cache.decoding(trunk, cache))
                hidden = hidden.repeat_interleave(num_samples, dim=0)
                attention_mask = attention_mask.repeat_interleave(num_samples, dim=0)
                next_position = next_position.repeat_interleave(num_samples, dim=0)
            logits = head(hidden).float() / temperature  # (b, V)
            filtered = filter_logits(logits, top_k, top_p)
            token = torch.multinomial(filtered.softmax(-1), 1).squeeze(-1)  # (b,)
            live = ~ended[rows]
            token = torch.where(live, token, torch.full_like(token, pad_token_id))
            tokens[rows, t] = token
            logprobs[rows, t] = torch.where(
                live, logits.gather(-1, token[:, None]).squeeze(-1) - logits.logsumexp(-1), 0.0
            )
            if values is not None:
                values[rows, t] = torch.where(live, value_fn(hidden), 0.0)
            length = t + 1
            ended[rows] |= live & (token == eos_token_id)
            if bool(ended.all()) or t + 1 == max_new_tokens:
                break
            step_ids = token[:, None]
            positions = next_position
            next_position = next_position + 1
            attention_mask = torch.cat([attention_mask, torch.ones_like(step_ids)], dim=1)
            still = ~ended[rows]
            if int(still.sum()) <= rows.shape[0] // 2:  # drop finished rows from the batch
                keep = still.nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                rows, step_ids, attention_mask = rows[keep], step_ids[keep], attention_mask[keep]
                positions, next_position = positions[keep], next_position[keep]
    # A row's response runs up to and including its <eos>; every later slot is padding.
    tokens, logprobs = tokens[:, :length], logprobs[:, :length]
    is_eos = tokens == eos_token_id
    response_mask = (is_eos.long().cumsum(-1) - is_eos.long()) == 0
    return Samples(
        tokens,
        response_mask,
        logprobs,
        values[:, :length] if values is not None else None,
        ended,
    )
