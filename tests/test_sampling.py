"""sample_responses: what the sampling pass records equals a fresh forward over its output."""

import pytest
import torch

from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import (
    PolicyWithValueHead,
    frozen_copy,
    load_causal_lm,
    next_token_logprobs,
    scored_positions,
)
from rlhf_fast.sampling import filter_logits, sample_responses
from rlhf_fast.tokenizer import load_tokenizer
from rlhf_fast.trainers.runtime import encode_text, pad_rows

PROMPTS = ["review the lamp :", "review the kettle : it is", "tent :"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("demo-words")


@pytest.fixture(scope="module")
def lm(tok):
    return load_causal_lm("tiny-gpt2", tok, seed=0).eval()


def _query(tok, prompts=PROMPTS):
    return pad_rows([encode_text(tok, p) for p in prompts], tok.pad_token_id, side="left")


def _sample(lm, tok, **kwargs):
    query, query_mask = _query(tok)
    options = dict(max_new_tokens=6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    options.update(kwargs)
    return query, query_mask, sample_responses(lm, query, query_mask, **options)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logprobs_and_values_equal_a_forward_over_the_samples(tok, lm, temperature):
    model = PolicyWithValueHead(frozen_copy(lm)).eval()
    torch.nn.init.normal_(model.value_head.weight)  # a non-zero value head
    torch.manual_seed(1)
    query, query_mask, s = _sample(
        model.policy, tok, temperature=temperature, value_fn=model.values_from_hidden
    )
    ids = torch.cat([query, s.tokens], 1)
    mask = torch.cat([query_mask, s.response_mask.long()], 1)
    n_prompt = query.shape[1]
    with torch.no_grad():
        logprobs, values, _ = model(
            ids, mask, scored_positions(mask, start=n_prompt), temperature=temperature
        )
    torch.testing.assert_close(s.logprobs, logprobs[:, n_prompt - 1 :], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        s.values, values[:, n_prompt - 1 :] * s.response_mask, atol=1e-4, rtol=1e-4
    )
    assert s.logprobs.dtype == torch.float32 and (s.logprobs <= 0).all()


def test_rows_stop_at_eos_and_the_loop_stops_when_all_have(tok, lm):
    # Near-greedy sampling; declare as <eos> the token row 0 picks second, so row 0 ends there.
    torch.manual_seed(0)
    _, _, greedy = _sample(lm, tok, temperature=1e-4, max_new_tokens=4)
    eos = int(greedy.tokens[0, 1])
    torch.manual_seed(0)
    _, _, s = _sample(lm, tok, temperature=1e-4, max_new_tokens=4, eos_token_id=eos)
    first_eos = (s.tokens[0] == eos).nonzero()[0, 0].item()
    assert first_eos <= 1 and s.ended[0]
    assert (
        s.response_mask[0, : first_eos + 1].all() and not s.response_mask[0, first_eos + 1 :].any()
    )
    assert (s.tokens[0, first_eos + 1 :] == tok.pad_token_id).all()
    assert (s.logprobs[~s.response_mask] == 0).all()
    # every row ends on its first token: the loop stops after one step
    _, _, one = _sample(lm, tok, temperature=1e-4, eos_token_id=int(greedy.tokens[0, 0]))
    if one.ended.all():
        assert one.tokens.shape[1] == 1


def test_top_k_one_is_greedy_and_logprobs_stay_unfiltered(tok, lm):
    torch.manual_seed(3)
    query, query_mask, s = _sample(lm, tok, top_k=1)
    ids = torch.cat([query, s.tokens], 1)
    mask = torch.cat([query_mask, s.response_mask.long()], 1)
    with torch.no_grad():
        logits = lm(
            ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        ).logits
    n = query.shape[1]
    greedy = logits[:, n - 1 : -1].argmax(-1)
    assert (greedy[s.response_mask] == s.tokens[s.response_mask]).all()
    assert (s.logprobs[s.response_mask] < 0).all()  # the full distribution's, not the top-1's


def test_same_seed_same_samples(tok, lm):
    torch.manual_seed(7)
    a = _sample(lm, tok, top_p=0.9)[2]
    torch.manual_seed(7)
    b = _sample(lm, tok, top_p=0.9)[2]
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)


def test_filter_logits_matches_a_plain_reference():
    torch.manual_seed(0)
    logits = torch.randn(5, 11)
    for top_k in (0, 1, 3, 11, 20):
        for top_p in (1.0, 0.9, 0.5, 0.01):
            out = filter_logits(logits, top_k, top_p)
            for row, kept_row in zip(logits, out):
                keep = torch.ones(11, dtype=torch.bool)
                if 0 < top_k < 11:
                    keep &= row >= row.topk(top_k).values[-1]
                if top_p < 1.0:  # smallest most likely set reaching top_p of what top-k left
                    probs = row.masked_fill(~keep, float("-inf")).softmax(-1)
                    order = probs.argsort(descending=True)
                    before = probs[order].cumsum(0) - probs[order]
                    nucleus = torch.zeros(11, dtype=torch.bool)
                    nucleus[order[before < top_p]] = True
                    keep &= nucleus
                assert torch.equal(torch.isfinite(kept_row), keep), (top_k, top_p)
                assert torch.equal(kept_row[keep], row[keep])


def test_bad_arguments_name_themselves(tok, lm):
    query, query_mask = _query(tok)
    common = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with pytest.raises(InvalidArgumentError, match="temperature"):
        sample_responses(lm, query, query_mask, max_new_tokens=3, temperature=0.0, **common)
    with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
        sample_responses(lm, query, query_mask, max_new_tokens=0, **common)
    with pytest.raises(InvalidArgumentError, match="query"):
        sample_responses(lm, query[0], query_mask[0], max_new_tokens=3, **common)


def test_lora_policy_samples_and_scores_with_and_without_adapters(tok, lm):
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(
        frozen_copy(lm), LoraConfig(r=4, lora_alpha=8, fan_in_fan_out=True, init_lora_weights=False)
    ).eval()
    torch.manual_seed(2)
    query, query_mask, s = _sample(policy, tok)
    ids = torch.cat([query, s.tokens], 1)
    mask = torch.cat([query_mask, s.response_mask.long()], 1)
    scored = scored_positions(mask, start=query.shape[1])
    with torch.no_grad():
        with_adapters, _, _ = next_token_logprobs(policy, ids, mask, scored)
        with policy.disable_adapter():
            without, _, _ = next_token_logprobs(policy, ids, mask, scored)
        base, _, _ = next_token_logprobs(lm, ids, mask, scored)
    n = query.shape[1]
    torch.testing.assert_close(s.logprobs, with_adapters[:, n - 1 :], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(without, base)
    assert not torch.allclose(with_adapters, base)


def test_finished_rows_leave_the_decode_batch_without_changing_the_others(tok, lm):
    # Eight copies of one prompt answer alike under near-greedy sampling; naming their second
    # token <eos> ends them together, leaving one row that decodes on alone.
    prompts = ["review the lamp :"] * 8 + ["tent : it is"]
    query, query_mask = _query(tok, prompts)
    common = dict(max_new_tokens=8, pad_token_id=tok.pad_token_id, temperature=1e-4)
    torch.manual_seed(0)
    greedy = sample_responses(lm, query, query_mask, eos_token_id=-1, **common)
    eos = int(greedy.tokens[0, 1])
    assert eos not in greedy.tokens[8, :].tolist()  # the last row never says it
    torch.manual_seed(0)
    s = sample_responses(lm, query, query_mask, eos_token_id=eos, **common)
    assert s.ended[:8].all() and not s.ended[8] and s.tokens.shape[1] == 8
    assert (s.tokens[:8, 2:] == tok.pad_token_id).all() and (s.logprobs[:8, 2:] == 0).all()
    assert torch.equal(s.tokens[8], greedy.tokens[8])
    ids = torch.cat([query, s.tokens], 1)
    mask = torch.cat([query_mask, s.response_mask.long()], 1)
    n = query.shape[1]
    with torch.no_grad():
        expected, _, _ = next_token_logprobs(
            lm, ids, mask, scored_positions(mask, start=n), temperature=1e-4
        )
    torch.testing.assert_close(s.logprobs, expected[:, n - 1 :], atol=1e-3, rtol=1e-4)
