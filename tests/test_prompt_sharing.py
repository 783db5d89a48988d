"""prompt_sharing: each distinct prompt runs once, and every number equals the full forward's."""

from __future__ import annotations

import pytest
import torch
from conftest import DECODER_FAMILIES, tiny_decoder
from conftest import DECODER_VOCAB as VOCAB
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import RewardModel, next_token_logprobs, scored_positions
from rlhf_fast.prompt_sharing import full_rows, response_logprobs, reward_scores
from rlhf_fast.sampling import sample_responses


def _model(arch: str, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    return tiny_decoder(arch, dtype)


def _rows(
    seed: int, n_prompts: int, n_rows: int, prompt_len: int, response_len: int
) -> tuple[torch.Tensor, ...]:
    """Left-padded prompts of ragged length, rows in any order with ragged responses (one of
    length 1 when there is room), pad tokens under the masks set to junk ids."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(1, VOCAB, (n_prompts, prompt_len), generator=g)
    lengths = torch.randint(1, prompt_len + 1, (n_prompts,), generator=g)
    prompt_mask = (torch.arange(prompt_len) >= prompt_len - lengths[:, None]).long()
    prompt_of = torch.randint(0, n_prompts, (n_rows,), generator=g)
    responses = torch.randint(1, VOCAB, (n_rows, response_len), generator=g)
    kept = torch.randint(1, response_len + 1, (n_rows,), generator=g)
    kept[0] = 1
    response_mask = torch.arange(response_len) < kept[:, None]
    return prompt_ids, prompt_mask, prompt_of, responses, response_mask


def _full_logprobs(model, rows, temperature=1.0):
    ids, mask = full_rows(*rows)
    n_prompt = rows[0].shape[1]
    scored = scored_positions(mask, start=n_prompt)
    logprobs, _, _ = next_token_logprobs(model, ids, mask, scored, temperature=temperature)
    return logprobs[:, n_prompt - 1 :]


@pytest.mark.parametrize("arch", DECODER_FAMILIES)
def test_logprobs_and_gradients_equal_the_full_forward(arch):
    model = _model(arch)
    rows = _rows(seed=1, n_prompts=3, n_rows=7, prompt_len=6, response_len=5)
    shared = response_logprobs(model, *rows, temperature=0.7)
    full = _full_logprobs(model, rows, temperature=0.7)
    torch.testing.assert_close(shared, full, rtol=1e-7, atol=1e-7)
    assert (shared[~rows[-1]] == 0).all()

    def grads(fn):
        model.zero_grad(set_to_none=True)
        (
            fn(model, rows) * torch.linspace(0.5, 1.5, rows[3].numel()).view_as(rows[3])
        ).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(lambda m, r: response_logprobs(m, *r)), grads(_full_logprobs)):
        # Llama-style rotary tables are computed in float32 even in a float64 model: the
        # two paths build them for different shapes, which moves gradients by ~1e-8.
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_prompts=st.integers(1, 4),
    n_rows=st.integers(1, 9),
    prompt_len=st.integers(1, 6),
    response_len=st.integers(1, 6),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_random_layouts_match_the_full_forward(
    seed, n_prompts, n_rows, prompt_len, response_len, dtype
):
    model = _model("gpt2", dtype)
    rows = _rows(seed, n_prompts, n_rows, prompt_len, response_len)
    with torch.no_grad():
        shared = response_logprobs(model, *rows)
        full = _full_logprobs(model, rows)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(shared, full, rtol=tol, atol=tol)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_scores_equal_the_full_forward(arch):
    reward_model = RewardModel.from_causal_lm(_model(arch)).double().eval()
    rows = _rows(seed=3, n_prompts=2, n_rows=6, prompt_len=5, response_len=4)
    with torch.no_grad():
        shared = reward_scores(reward_model, *rows)
        full = reward_model(*full_rows(*rows))
    torch.testing.assert_close(shared, full, rtol=1e-7, atol=1e-7)


def test_a_data_parallel_wrapper_takes_the_full_forward():
    model = _model("gpt2")
    rows = _rows(seed=4, n_prompts=2, n_rows=5, prompt_len=4, response_len=3)
    with torch.no_grad():
        wrapped = response_logprobs(torch.nn.DataParallel(model), *rows)
        plain = response_logprobs(model, *rows)
    torch.testing.assert_close(wrapped, plain, rtol=1e-9, atol=1e-9)


def test_bad_layouts_name_the_argument():
    model = _model("gpt2")
    prompt_ids, prompt_mask, prompt_of, responses, response_mask = _rows(5, 2, 4, 4, 3)
    with pytest.raises(InvalidArgumentError, match="prompt_of"):
        response_logprobs(model, prompt_ids, prompt_mask, prompt_of[:3], responses, response_mask)
    right_padded = prompt_mask.flip(-1)
    right_padded[:, -1] = 0
    with pytest.raises(InvalidArgumentError, match="left-padded"):
        response_logprobs(model, prompt_ids, right_padded, prompt_of, responses, response_mask)
    with pytest.raises(InvalidArgumentError, match="responses, response_mask"):
        response_logprobs(
            model, prompt_ids, prompt_mask, prompt_of, responses, response_mask[:, :2]
        )


def test_sampling_several_per_prompt_equals_sampling_repeated_rows():
    model = _model("gpt2")
    prompt_ids, prompt_mask, *_ = _rows(seed=6, n_prompts=3, n_rows=1, prompt_len=5, response_len=1)
    kwargs = dict(max_new_tokens=6, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(7)
    grouped = sample_responses(model, prompt_ids, prompt_mask, num_samples=4, **kwargs)
    torch.manual_seed(7)
    repeated = sample_responses(
        model, prompt_ids.repeat_interleave(4, 0), prompt_mask.repeat_interleave(4, 0), **kwargs
    )
    assert torch.equal(grouped.tokens, repeated.tokens)
    assert torch.equal(grouped.response_mask, repeated.response_mask)
    torch.testing.assert_close(grouped.logprobs, repeated.logprobs, rtol=1e-9, atol=1e-9)
    with pytest.raises(InvalidArgumentError, match="num_samples"):
        sample_responses(model, prompt_ids, prompt_mask, num_samples=0, **kwargs)
