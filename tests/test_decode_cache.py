"""decode_cache: sampling with each prompt's keys stored once gives the plain cache's numbers."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import DECODER_FAMILIES, decoder_config, tiny_decoder
from conftest import DECODER_VOCAB as VOCAB
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_fast import decode_cache
from rlhf_fast.decode_cache import SharedPrefixCache
from rlhf_fast.sampling import sample_responses

EOS, PAD = 1, 0


def _model(arch: str, dtype: torch.dtype) -> torch.nn.Module:
    return tiny_decoder(arch, dtype)  # pad id 0, eos 1


def _prompts(seed: int, n_prompts: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of ragged lengths (junk ids under the padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n_prompts, length), generator=g)
    lengths = torch.randint(1, length + 1, (n_prompts,), generator=g)
    mask = (torch.arange(length) >= length - lengths[:, None]).long()
    return ids, mask


def _sample(model, ids, mask, shared: bool, monkeypatch, **options):
    with monkeypatch.context() as patch:
        if not shared:
            patch.setattr(decode_cache, "supported", lambda trunk: False)
        torch.manual_seed(7)
        return sample_responses(model, ids, mask, eos_token_id=EOS, pad_token_id=PAD, **options)


@pytest.mark.parametrize("arch", DECODER_FAMILIES)
def test_every_family_samples_what_the_plain_cache_samples(arch, monkeypatch):
    model = _model(arch, torch.float64)
    assert decode_cache.supported(model.base_model)
    ids, mask = _prompts(seed=3, n_prompts=3, length=7)
    options = dict(max_new_tokens=12, num_samples=4, temperature=0.8)
    plain = _sample(model, ids, mask, False, monkeypatch, **options)
    shared = _sample(model, ids, mask, True, monkeypatch, **options)
    assert torch.equal(shared.tokens, plain.tokens)
    assert torch.equal(shared.response_mask, plain.response_mask)
    # logprobs are kept in float32: equal to its rounding
    torch.testing.assert_close(shared.logprobs, plain.logprobs, rtol=1e-6, atol=1e-6)
    assert model.config._attn_implementation != decode_cache.ATTENTION_NAME  # restored


@settings(max_examples=25, deadline=None)
@given(
    arch=st.sampled_from(DECODER_FAMILIES),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 10_000),
    n_prompts=st.integers(1, 4),
    group=st.integers(1, 4),
    length=st.integers(1, 6),
    max_new_tokens=st.integers(1, 10),
)
def test_random_layouts_match_the_plain_cache(
    arch, dtype, seed, n_prompts, group, length, max_new_tokens
):
    # Rows finish at <eos> at random and leave the decode batch: the row bookkeeping is tested.
    model = _model(arch, dtype)
    with torch.no_grad():  # make <eos> likely, so rows finish early and leave
        model.get_output_embeddings().weight[EOS] *= 4
    ids, mask = _prompts(seed, n_prompts, length)
    options = dict(max_new_tokens=max_new_tokens, num_samples=group)
    with pytest.MonkeyPatch.context() as patch:
        plain = _sample(model, ids, mask, False, patch, **options)
        shared = _sample(model, ids, mask, True, patch, **options)
    tol = 1e-6 if dtype == torch.float64 else 2e-5  # logprobs are kept in float32
    if torch.equal(shared.tokens, plain.tokens):
        torch.testing.assert_close(shared.logprobs, plain.logprobs, rtol=tol, atol=tol)
    else:  # float32 rounding may flip a draw; then up to the first different token
        assert dtype == torch.float32
        first = (shared.tokens != plain.tokens).any(0).nonzero()[0, 0]
        torch.testing.assert_close(
            shared.logprobs[:, :first], plain.logprobs[:, :first], rtol=tol, atol=tol
        )


def _reference_attention(query, prefix_keys, prefix_values, prompt_mask, keys, values, prompt_of):
    """Plain attention of one-token queries over [their prompt's keys, their own keys]."""
    heads_q, heads_kv = query.shape[1], keys.shape[1]
    full_keys = torch.cat([prefix_keys[prompt_of], keys], dim=2)
    full_values = torch.cat([prefix_values[prompt_of], values], dim=2)
    full_keys = full_keys.repeat_interleave(heads_q // heads_kv, dim=1)
    full_values = full_values.repeat_interleave(heads_q // heads_kv, dim=1)
    allowed = torch.cat(
        [prompt_mask[prompt_of].bool(), torch.ones(keys.shape[0], keys.shape[2], dtype=bool)], 1
    )
    scores = query @ full_keys.transpose(-1, -2) * query.shape[-1] ** -0.5  # (b, Hq, 1, L)
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ full_values).transpose(1, 2)  # (b, 1, Hq, D)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    prompts=st.integers(1, 4),
    group=st.integers(1, 4),
    n_prompt=st.integers(1, 5),
    steps=st.integers(1, 6),
    heads=st.sampled_from([(4, 4), (4, 2), (4, 1)]),
    drop=st.booleans(),
)
def test_attention_equals_a_plain_reference(seed, prompts, group, n_prompt, steps, heads, drop):
    g = torch.Generator().manual_seed(seed)
    heads_q, heads_kv = heads
    dim, rows = 8, prompts * group

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    lengths = torch.randint(1, n_prompt + 1, (prompts,), generator=g)
    prompt_mask = (torch.arange(n_prompt) >= n_prompt - lengths[:, None]).long()
    cache = SharedPrefixCache(prompt_mask, max_new_tokens=steps)
    prefix = [(randn(prompts, heads_kv, n_prompt, dim), randn(prompts, heads_kv, n_prompt, dim))]
    cache.prefix, cache.group = prefix, group  # as after a prefill and repeat_interleave
    slots = torch.arange(rows)
    for _ in range(steps):
        cache.update(randn(len(slots), heads_kv, 1, dim), randn(len(slots), heads_kv, 1, dim), 0)
        if drop and len(slots) > 1:  # a random subset of rows leaves
            keep = torch.randperm(len(slots), generator=g)[: len(slots) - 1].sort().values
            cache.batch_select_indices(keep)
            slots = slots[keep]
    assert cache.get_seq_length() == n_prompt + steps
    keys, values = (buffer[:, :, :steps] for buffer in cache.buffers[0])
    query = randn(len(slots), heads_q, 1, dim)
    out = cache.attend(0, query, keys, values, None)
    expected = _reference_attention(
        query, *prefix[0], prompt_mask, keys, values, prompt_of=slots // group
    )
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_unsupported_models_keep_the_plain_cache():
    model = _model("gpt2", torch.float32)
    assert decode_cache.supported(model.base_model)
    model.config._attn_implementation = "flash_attention_2"
    assert not decode_cache.supported(model.base_model)
    mistral = decoder_config("mistral", sliding_window=4)
    assert not decode_cache.supported(transformers.MistralModel(mistral))
    assert not decode_cache.supported(torch.nn.Linear(2, 2))


def test_the_attention_is_restored_when_sampling_fails(monkeypatch):
    model = _model("llama", torch.float32)
    ids, mask = _prompts(seed=0, n_prompts=2, length=4)
    calls = {"n": 0}
    original = SharedPrefixCache.attend

    def failing(self, *args: object) -> None:
        calls["n"] += 1
        raise ValueError("boom")

    monkeypatch.setattr(SharedPrefixCache, "attend", failing)
    with pytest.raises(ValueError, match="boom"):
        sample_responses(model, ids, mask, max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD)
    assert calls["n"] == 1
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(SharedPrefixCache, "attend", original)
    shared = _sample(model, ids, mask, True, monkeypatch, max_new_tokens=3)
    plain = _sample(model, ids, mask, False, monkeypatch, max_new_tokens=3)
    assert torch.equal(shared.tokens, plain.tokens)


def test_the_attention_outside_sampling_is_an_error():
    model = _model("gpt2", torch.float32)
    decode_cache._register()
    model.config._attn_implementation = decode_cache.ATTENTION_NAME
    with pytest.raises(RuntimeError, match="outside"):
        model(torch.ones(1, 3, dtype=torch.long))


def test_bf16_autocast_samples_like_the_plain_cache(monkeypatch):
    model = _model("llama", torch.float32)
    ids, mask = _prompts(seed=5, n_prompts=2, length=5)
    options = dict(max_new_tokens=8, num_samples=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _sample(model, ids, mask, False, monkeypatch, **options)
        shared = _sample(model, ids, mask, True, monkeypatch, **options)
    same = (shared.tokens == plain.tokens).all(0)
    first = int((~same).nonzero()[0, 0]) if not bool(same.all()) else same.shape[0]
    assert first >= 1  # bf16 rounding differs between the two attentions; the draws agree at first
    torch.testing.assert_close(
        shared.logprobs[:, :first], plain.logprobs[:, :first], rtol=0.05, atol=0.05
    )
