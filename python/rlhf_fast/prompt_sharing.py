"""Forward passes over responses that share prompts: each distinct prompt runs once.

GRPO and RLOO sample ``G`` responses per prompt, and DPO scores two responses per prompt.
A plain forward over ``prompt + response`` rows computes every prompt ``G`` times. Here the
distinct prompts go through the trunk once, with a KV cache, and each row's response then
runs against its prompt's cached keys and values. That is the sampling loop's own prefill +
decode, done for all response tokens at once and with gradients.

The numbers are those of the full forward to float rounding (``tests/test_prompt_sharing.py``
checks logprobs, rewards and gradients on GPT-2, Llama, Qwen2 and GPT-NeoX shapes). The cost
drops by the prompt's share of the tokens times ``1 - 1/G``: on the demo's shapes (30-token
prompts, 45-token responses, G = 8) a training forward + backward takes about 35 % less.

Inputs, shared by every function here:

- ``prompt_ids``, ``prompt_mask``: ``[P, Lq]`` distinct prompts, **left**-padded (each must
  end with a real token: the last column is read as the state before the first response
  token);
- ``prompt_of``: ``[B]`` int64, the prompt of each response row (any order, repeats allowed);
- ``responses``, ``response_mask``: ``[B, T]`` response tokens, right-padded; the mask marks
  the attended ones.

Models whose logits are post-processed (``models.causal_lm_parts`` is None) and modules
wrapped for data-parallel training (DDP's forward must run exactly once per backward) take
the full forward over the concatenated rows instead; the results are the same.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import (
    RewardModel,
    causal_lm_parts,
    last_token_index,
    next_token_logprobs,
    position_ids_from_mask,
    scored_positions,
    token_logprobs,
)

__all__ = [
    "cache_argument",
    "full_rows",
    "response_logprobs",
    "reward_scores",
    "shared_prompt_hidden",
]


def cache_argument(trunk: nn.Module) -> str:
    """The keyword a trunk takes its KV cache by (``cache`` in transformers >= 5.x)."""
    return "cache" if "cache" in inspect.signature(trunk.forward).parameters else "past_key_values"


def _check(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_of: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
) -> None:
    if prompt_ids.ndim != 2 or prompt_ids.shape != prompt_mask.shape:
        raise InvalidArgumentError(
            f"prompt_ids, prompt_mask: expected two [P, Lq] tensors, got "
            f"{tuple(prompt_ids.shape)} and {tuple(prompt_mask.shape)}"
        )
    if responses.ndim != 2 or responses.shape != response_mask.shape:
        raise InvalidArgumentError(
            f"responses, response_mask: expected two [B, T] tensors, got "
            f"{tuple(responses.shape)} and {tuple(response_mask.shape)}"
        )
    if prompt_of.shape != (responses.shape[0],):
        raise InvalidArgumentError(
            f"prompt_of: expected [B] = [{responses.shape[0]}] prompt indices, got "
            f"{tuple(prompt_of.shape)}"
        )
    if prompt_ids.shape[1] == 0 or not bool(prompt_mask[:, -1].all()):
        raise InvalidArgumentError(
            "prompt_ids: expected left-padded prompts that end with a real token "
            "(prompt_mask[:, -1] all 1)"
        )


def full_rows(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_of: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, ``[B, Lq + T]``: each row's prompt, then its response."""
    ids = torch.cat([prompt_ids[prompt_of], responses], dim=1)
    return ids, _row_mask(prompt_mask, prompt_of, response_mask)


def _row_mask(
    prompt_mask: torch.Tensor, prompt_of: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """The attention mask of ``full_rows``, ``[B, Lq + T]`` int64, without building the ids."""
    return torch.cat([prompt_mask[prompt_of].long(), response_mask.long()], dim=1)


def shared_prompt_hidden(
    trunk: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_of: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk's last hidden states, ``(prompt [B, Lq, H], response [B, T, H])``.

    Equivalent to ``trunk(*full_rows(...)).last_hidden_state`` split at ``Lq``, with each
    distinct prompt of ``prompt_of`` run once (its rows share its KV cache).
    """
    from transformers import DynamicCache

    _check(prompt_ids, prompt_mask, prompt_of, responses, response_mask)
    used, row_prompt = torch.unique(prompt_of, return_inverse=True)  # (U,), (B,)
    mask = prompt_mask[used].long()
    cache, cache_arg = DynamicCache(), cache_argument(trunk)
    prompt_hidden = trunk(
        input_ids=prompt_ids[used],
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        use_cache=True,
        **{cache_arg: cache},
    ).last_hidden_state  # (U, Lq, H)
    cache.batch_select_indices(row_prompt)  # each row gets its prompt's keys and values
    full_mask = _row_mask(prompt_mask, prompt_of, response_mask)
    n_prompt = prompt_ids.shape[1]
    response_hidden = trunk(
        input_ids=responses,
        attention_mask=full_mask,
        position_ids=position_ids_from_mask(full_mask)[:, n_prompt:],
        use_cache=True,
        **{cache_arg: cache},
    ).last_hidden_state  # (B, T, H)
    return prompt_hidden[row_prompt], response_hidden


def _shareable(model: nn.Module) -> bool:
    # DDP (and DataParallel) hide the model behind .module and must run their own forward.
    return not hasattr(model, "module")


def response_logprobs(
    causal_lm: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_of: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``[B, T]`` float32: each attended response token's logprob under
    ``softmax(logits / temperature)`` given its prompt and the response before it; 0 elsewhere.

    Equivalent to ``next_token_logprobs(causal_lm, *full_rows(...), scored)[0][:, Lq - 1:]``
    with ``scored`` the response positions; the LM head runs on attended response tokens only.
    """
    parts = causal_lm_parts(causal_lm) if _shareable(causal_lm) else None
    mask = response_mask.bool()
    if parts is None:
        ids, full_mask = full_rows(prompt_ids, prompt_mask, prompt_of, responses, response_mask)
        n_prompt = prompt_ids.shape[1]
        scored = scored_positions(full_mask, start=n_prompt)
        logprobs, _, _ = next_token_logprobs(
            causal_lm, ids, full_mask, scored, temperature=temperature
        )
        return logprobs[:, n_prompt - 1 :]
    trunk, head = parts
    prompt_hidden, response_hidden = shared_prompt_hidden(
        trunk, prompt_ids, prompt_mask, prompt_of, responses, response_mask
    )
    # The state before response token t: the prompt's last one for t = 0, else token t - 1's.
    before = torch.cat([prompt_hidden[:, -1:], response_hidden[:, :-1]], dim=1)  # (B, T, H)
    logits = head(before[mask]).float() / temperature  # (N, V)
    picked = token_logprobs(logits, responses[mask])  # (N,)
    return torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(
        mask, picked
    )


def reward_scores(
    reward_model: RewardModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_of: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """``[B]`` float32: ``reward_model(*full_rows(...))``, each distinct prompt run once."""
    if not _shareable(reward_model):
        return reward_model(
            *full_rows(prompt_ids, prompt_mask, prompt_of, responses, response_mask)
        )
    prompt_hidden, response_hidden = shared_prompt_hidden(
        reward_model.backbone, prompt_ids, prompt_mask, prompt_of, responses, response_mask
    )
    hidden = torch.cat([prompt_hidden, response_hidden], dim=1)  # (B, Lq + T, H)
    last = last_token_index(_row_mask(prompt_mask, prompt_of, response_mask))
    return reward_model.head_on(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
