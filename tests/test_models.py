"""Tokenizer and models: padding invariance, shapes, save/load round trips."""

import pytest
import torch

from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import (
    PolicyWithValueHead,
    RewardModel,
    backbone_of,
    causal_lm_parts,
    frozen_copy,
    fuse_activations,
    generate_responses,
    last_token_index,
    load_causal_lm,
    next_token_logprobs,
    position_ids_from_mask,
    scored_positions,
    token_logprobs,
)
from rlhf_fast.tokenizer import Tokenizer, load_tokenizer
from rlhf_fast.trainers.runtime import encode_text, pad_rows


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("demo-words")


@pytest.fixture(scope="module")
def lm(tok):
    torch.manual_seed(0)
    return load_causal_lm("tiny-gpt2", tok, seed=0).eval()


# ---------------------------------------------------------------- tokenizer
def test_byte_tokenizer_round_trips_any_text():
    t = Tokenizer()
    text = "Héllo,  wörld!\n\ttabs ✓"
    assert t.decode(t.encode(text)) == text
    assert len(t) == 4 + 256


def test_word_tokenizer_uses_words_and_spells_unknown_ones(tok):
    ids = tok.encode("review the kettle : zorp is great .")
    assert tok.decode(ids) == "review the kettle : zorp is great ."
    assert len(ids) == 7 + len(b" zorp")  # known words are one token each
    assert tok.encode("great", add_eos=True)[-1] == tok.eos_token_id


def test_tokenizer_pads_left_and_right(tok):
    left = tok(["great .", "the kettle is great ."], padding_side="left")
    right = tok(["great .", "the kettle is great ."], padding_side="right")
    assert left["input_ids"].shape == right["input_ids"].shape == (2, 5)
    assert left["attention_mask"][0].tolist() == [0, 0, 0, 1, 1]
    assert right["attention_mask"][0].tolist() == [1, 1, 0, 0, 0]
    assert left["input_ids"][0, 0].item() == tok.pad_token_id
    assert tok.batch_decode(left["input_ids"]) == ["great .", "the kettle is great ."]


def test_tokenizer_save_and_load(tmp_path, tok):
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    assert again.words == tok.words
    with pytest.raises(InvalidArgumentError, match="tokenizer"):
        load_tokenizer(str(tmp_path / "missing"))


def test_tokenizer_rejects_bad_words():
    with pytest.raises(InvalidArgumentError, match="words"):
        Tokenizer(words=["two words"])
    with pytest.raises(InvalidArgumentError, match="duplicates"):
        Tokenizer(words=["a", "a"])


# ---------------------------------------------------------------- models
def test_builtin_model_matches_tokenizer(tok, lm):
    assert lm.get_input_embeddings().num_embeddings == len(tok)
    assert lm.config.eos_token_id == tok.eos_token_id
    with pytest.raises(InvalidArgumentError, match="model"):
        load_causal_lm("no-such-model", tok)


def test_token_logprobs_equals_log_softmax_gather():
    logits = torch.randn(2, 3, 7)
    tokens = torch.randint(0, 7, (2, 3))
    expected = logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(token_logprobs(logits, tokens), expected)


def test_last_token_index_left_and_right():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [1, 3, 3]


def _both_paddings(tok, texts):
    rows = [encode_text(tok, t) for t in texts]
    return pad_rows(rows, tok.pad_token_id, side="right"), pad_rows(
        rows, tok.pad_token_id, side="left"
    )


def test_reward_model_score_does_not_depend_on_padding(tok, lm, tmp_path):
    rm = RewardModel.from_causal_lm(frozen_copy(lm)).eval()
    (r_ids, r_mask), (l_ids, l_mask) = _both_paddings(
        tok, ["review the lamp : great .", "one star . it is broken ."]
    )
    with torch.no_grad():
        right, left = rm(r_ids, r_mask), rm(l_ids, l_mask)
    assert right.shape == (2,)
    torch.testing.assert_close(right, left, atol=1e-5, rtol=1e-5)
    rm.score_mean, rm.score_std = 0.5, 2.0
    rm.save_pretrained(tmp_path)
    again = RewardModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(r_ids, r_mask), right)
    assert (again.score_mean, again.score_std) == (0.5, 2.0)


@pytest.mark.parametrize("shared", [True, False])
def test_policy_with_value_head_shapes_and_padding(tok, lm, shared):
    critic = None if shared else backbone_of(frozen_copy(lm))
    model = PolicyWithValueHead(frozen_copy(lm), critic).eval()
    (r_ids, r_mask), (l_ids, l_mask) = _both_paddings(tok, ["review the lamp : great .", "great ."])
    with torch.no_grad():
        logprobs, values, entropy = model(r_ids, r_mask, entropy=True)
        l_logprobs, l_values, _ = model(l_ids, l_mask)
    t = r_ids.shape[1]
    assert logprobs.shape == values.shape == entropy.shape == (2, t - 1)
    # row 1 ("great .", 2 tokens): right padding puts it at 0..1, left padding at T-2..T-1;
    # its one scored next token sits at position 0 and T-2 respectively.
    torch.testing.assert_close(logprobs[1, :1], l_logprobs[1, t - 2 :], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(values[1, :1], l_values[1, t - 2 : t - 1], atol=1e-5, rtol=1e-5)
    assert logprobs[1, 1:].eq(0).all() and entropy[1, 1:].eq(0).all()  # padding: not scored
    assert model.shared_trunk is shared


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_next_token_logprobs_equal_the_full_logits(tok, lm, temperature):
    (ids, mask), _ = _both_paddings(tok, ["review the lamp : great .", "great . i love it"])
    scored = scored_positions(mask, start=3)
    with torch.no_grad():
        logprobs, entropy, hidden = next_token_logprobs(
            lm, ids, mask, scored, temperature=temperature, entropy=True
        )
        logits = lm(ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logits = logits[:, :-1] / temperature
    expected = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0] * scored
    torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=1e-5)
    probs = logits.softmax(-1)
    expected_entropy = -(probs * probs.log()).sum(-1) * scored
    torch.testing.assert_close(entropy, expected_entropy, atol=1e-5, rtol=1e-5)
    assert hidden.shape[:2] == ids.shape
    assert not scored[:, :2].any()  # positions predicting tokens before `start`


def test_next_token_logprobs_falls_back_to_full_logits_for_post_processed_heads(tok, lm):
    capped = frozen_copy(lm)
    capped.config.final_logit_softcapping = 30.0  # the head is no longer a plain projection
    assert causal_lm_parts(capped) is None and causal_lm_parts(lm) is not None
    (ids, mask), _ = _both_paddings(tok, ["review the lamp : great ."])
    scored = scored_positions(mask)
    with torch.no_grad():
        a, _, _ = next_token_logprobs(lm, ids, mask, scored)
        b, _, _ = next_token_logprobs(capped, ids, mask, scored)  # GPT-2 ignores the field
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fuse_activations_keeps_the_function(tok):
    model = load_causal_lm("tiny-gpt2", tok, seed=3).eval()
    fused = fuse_activations(frozen_copy(model))
    kinds = {type(m).__name__ for m in fused.modules()}
    assert "NewGELUActivation" not in kinds
    ids = torch.tensor([tok.encode("review the lamp : great .")])
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_frozen_copy_has_no_gradients(lm):
    ref = frozen_copy(lm)
    assert not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in lm.parameters())


def test_generate_responses_batches_and_stops(tok, lm):
    torch.manual_seed(0)
    texts = generate_responses(lm, tok, ["review the lamp :"] * 5, max_new_tokens=6, batch_size=2)
    assert len(texts) == 5 and all(isinstance(t, str) for t in texts)


def test_generation_with_left_padding_matches_unpadded(tok, lm):
    def step_scores(prompts):
        ids, mask = pad_rows([encode_text(tok, p) for p in prompts], tok.pad_token_id, side="left")
        out = lm.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=5,
            output_scores=True,
            return_dict_in_generate=True,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        return torch.stack(out.scores, 1)  # (B, steps, V)

    alone = step_scores(["review the lamp :"])
    padded = step_scores(["review the lamp :", "write a short positive review of the lamp : it is"])
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)


def test_mlp_value_head_starts_at_zero_and_saves(tmp_path, tok, lm):
    model = PolicyWithValueHead(frozen_copy(lm), value_hidden=16).eval()
    (ids, mask), _ = _both_paddings(tok, ["review the lamp : great ."])
    with torch.no_grad():
        _, values, _ = model(ids, mask)
    assert values.abs().max() == 0  # no made-up baseline before training
    assert sum(p.numel() for p in model.value_head.parameters()) == 64 * 16 + 16 + 16 + 1
    model.save_pretrained(tmp_path)
    assert (tmp_path / "value_head.safetensors").is_file()


def test_models_and_tokenizer_import_no_trainer_or_demo_code():
    """The layers import downwards only: models -> tokenizer, never trainers or the demo."""
    import subprocess
    import sys

    code = (
        "import sys, rlhf_fast.models, rlhf_fast.tokenizer; "
        "print(sorted(m for m in sys.modules if m.startswith(('rlhf_fast.trainers', 'rlhf_fast.demo'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
