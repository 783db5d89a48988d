"""DPO on the tiny built-in model: it learns separable pairs, caches the reference once,
reads both preference formats, refuses identical pairs, resumes exactly."""

import json
import math
import shutil

import pytest
import torch

from rlhf_fast.checkpoint import latest_checkpoint
from rlhf_fast.data import PreferencePair
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import load_causal_lm
from rlhf_fast.tokenizer import load_tokenizer
from rlhf_fast.trainers import dpo
from rlhf_fast.trainers.dpo import DPOConfig, DPOTrainer

QUIET = {"device": "cpu", "tensorboard": False, "progress": False}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    from rlhf_fast.metrics import MetricsLogger

    monkeypatch.setattr(MetricsLogger, "plot", lambda self, *args, **kwargs: None)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_policy")
    tok = load_tokenizer("demo-words")
    load_causal_lm("tiny-gpt2", tok, seed=0).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def pairs(n):
    products, good, bad = ["kettle", "lamp", "tent"], ["great", "lovely"], ["awful", "broken"]
    return [
        PreferencePair(
            f"review the {products[i % 3]} :",
            f"it is {good[i % 2]} .",
            f"it is {bad[(i // 2) % 2]} .",
        )
        for i in range(n)
    ]


def config(policy_dir, out, **overrides):
    kw = dict(
        output_dir=str(out),
        policy=str(policy_dir),
        max_steps=20,
        batch_size=8,
        learning_rate=3e-3,
        warmup_steps=0,
        eval_every=20,
        save_every=10,
        **QUIET,
    )
    kw.update(overrides)
    return DPOConfig(**kw)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_learns_separable_pairs(tmp_path, policy_dir, loss_type):
    trainer = DPOTrainer(config(policy_dir, tmp_path, loss_type=loss_type), pairs(40), pairs(12))
    before = trainer.evaluate()
    result = trainer.train()
    assert result["eval/rewards/accuracies"] == 1.0 > before["eval/rewards/accuracies"] - 1
    assert result["eval/rewards/margins"] > 0.5
    assert before["eval/rewards/margins"] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    assert (tmp_path / "policy" / "config.json").is_file()


def test_reference_logprobs_are_cached_once(tmp_path, policy_dir):
    trainer = DPOTrainer(config(policy_dir, tmp_path), pairs(10), pairs(4))
    assert trainer.ref_train.shape == (10, 2) and trainer.ref_eval.shape == (4, 2)
    # the cache holds the starting policy's summed response logprobs
    row_c, row_r = trainer.train_rows[3]
    with torch.no_grad():
        direct = trainer.sequence_logprobs(trainer.policy, [row_c, row_r])
    torch.testing.assert_close(trainer.ref_train[3], direct)
    ids, start = row_c
    with torch.no_grad():
        logits = trainer.policy(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    by_hand = sum(logits[s - 1, ids[s]].item() for s in range(start, len(ids)))
    assert trainer.ref_train[3, 0].item() == pytest.approx(by_hand, abs=1e-4)


def test_both_preference_formats_and_identical_pairs_from_files(tmp_path, policy_dir):
    data = tmp_path / "prefs.jsonl"
    records = [
        {"prompt": "review the lamp :", "chosen": "it is great .", "rejected": "it is awful ."},
        {
            "prompt": "review the tent :",
            "candidate_0": "it is broken .",
            "candidate_1": "it is lovely .",
            "choice": 1,
        },
        {"prompt": "review the tent :", "chosen": "it is fine .", "rejected": "it is fine ."},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    from rlhf_fast.trainers.dpo import run_dpo

    result = run_dpo(
        config(
            policy_dir, tmp_path / "o", data=str(data), eval_fraction=0.0, max_steps=2, batch_size=2
        )
    )
    assert result["n_train_pairs"] == 2 and result["n_skipped_records"] == 1
    with pytest.raises(InvalidArgumentError, match="line 3.*same text"):
        run_dpo(config(policy_dir, tmp_path / "e", data=str(data), identical_pairs="error"))


def test_identical_pair_given_in_code_is_an_error(tmp_path, policy_dir):
    bad = [*pairs(3), PreferencePair("review the lamp :", "it is okay .", "it is okay .")]
    with pytest.raises(InvalidArgumentError, match="pair 3 has the same chosen and rejected"):
        DPOTrainer(config(policy_dir, tmp_path), bad, [])


def test_dpo_stop_and_resume_equals_uninterrupted(tmp_path, policy_dir):
    def weights(resume):
        trainer = DPOTrainer(config(policy_dir, tmp_path, resume=resume), pairs(24), pairs(4))
        trainer.train()
        return {k: v.clone() for k, v in trainer.policy.state_dict().items()}

    full = weights(False)
    shutil.rmtree(latest_checkpoint(tmp_path / "checkpoints"))  # as if stopped after step 10
    resumed = weights(True)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0)


def test_dpo_settings_are_checked(tmp_path, policy_dir):
    from rlhf_fast.config import OptionValueError

    with pytest.raises(OptionValueError, match="beta"):
        config(policy_dir, tmp_path, beta=0.0)
    assert math.isfinite(config(policy_dir, tmp_path).beta)


def test_sequence_logprobs_equal_a_plain_forward_with_their_gradients(tmp_path, policy_dir):
    """Shared prompts, length buckets and the reference's length-sorted chunks give the sums
    (and gradients) of one plain forward per row."""
    from rlhf_fast.models import next_token_logprobs
    from rlhf_fast.trainers.runtime import pad_rows

    words = ["it", "is", "great", "awful", "lovely", "broken", "."]
    ragged = [  # responses of 1 to 12 words, so the rows fall in two length buckets
        PreferencePair(
            f"review the {['kettle', 'lamp', 'tent'][i % 3]} {i} :",
            " ".join(words[(i + k) % 7] for k in range(1 + i % 12)),
            " ".join(words[(i + k + 3) % 7] for k in range(1 + (i * 5) % 12)),
        )
        for i in range(24)
    ]
    trainer = DPOTrainer(config(policy_dir, tmp_path, max_length=40), pairs=ragged, eval_pairs=[])
    rows = [row for pair in trainer.train_rows for row in pair]
    groups: dict = {}
    for i, (ids, start) in enumerate(rows):
        groups.setdefault(tuple(ids[:start]), []).append(i)
    by_length = sorted(
        groups.items(), key=lambda g: max(len(rows[i][0]) - rows[i][1] for i in g[1])
    )
    assert dpo._padding_saved(rows, by_length) >= 0.1  # the two-bucket path runs

    def plain(model):
        ids, mask = pad_rows([r for r, _ in rows], trainer.tokenizer.pad_token_id)
        start = torch.tensor([s for _, s in rows])[:, None]
        scored = (torch.arange(1, ids.shape[1])[None] >= start) & mask[:, 1:].bool()
        return next_token_logprobs(model, ids, mask, scored)[0].sum(-1)

    weights = torch.linspace(0.5, 1.5, len(rows))
    grads = []
    for fn in (lambda m: trainer.sequence_logprobs(m, rows), plain):
        trainer.policy.zero_grad(set_to_none=True)
        sums = fn(trainer.policy)
        (sums * weights).sum().backward()
        grads.append((sums.detach(), [p.grad.clone() for p in trainer.policy.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    cached = trainer.ref_train  # (N, 2), computed before any update
    with torch.no_grad():
        torch.testing.assert_close(cached.reshape(-1), plain(trainer.policy), rtol=1e-5, atol=1e-5)
