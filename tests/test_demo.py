"""The built-in demo task: gold score, annotators, corpus, and a tiny end-to-end run."""

import json
import statistics

import pytest

from rlhf_fast.demo import (
    BradleyTerryAnnotators,
    DemoConfig,
    ceiling_accuracy,
    gold_score,
    make_prompts,
    make_sft_corpus,
    run_demo,
)
from rlhf_fast.demo.task import VOCABULARY, split_text
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.tokenizer import DEMO_WORDS


def test_gold_score_by_hand():
    prompts = ["review the kettle :"] * 4
    responses = [
        "the kettle is great . five stars .",  # +2 words, +2 names the product
        "the lamp is awful .",  # -1, -2 names another product
        "it is great . it is great . it is great . it is great .",  # +4, 16 words: -0.5 * 4
        "",
    ]
    assert gold_score(responses, prompts) == [4.0, -3.0, 2.0, 0.0]
    # full texts give the same scores
    assert gold_score([f"{p} {r}" for p, r in zip(prompts, responses)]) == [4.0, -3.0, 2.0, 0.0]


def test_gold_score_checks_lengths():
    with pytest.raises(ValueError, match="prompts"):
        gold_score(["a"], ["b", "c"])


def test_split_text():
    assert split_text("review the lamp : it is great .") == ("review the lamp :", "it is great .")


def test_corpus_is_a_mix_of_good_and_bad_reviews():
    corpus = make_sft_corpus(500, seed=0)
    gold = gold_score([r["response"] for r in corpus], [r["prompt"] for r in corpus])
    assert statistics.stdev(gold) > 1.5
    assert min(gold) < -2 and max(gold) > 3
    words = {w for r in corpus for w in (r["prompt"] + " " + r["response"]).split()}
    assert words <= set(VOCABULARY)
    # the tokenizer keeps its own copy (it imports nothing from the demo); ids follow order
    assert DEMO_WORDS == VOCABULARY
    assert make_sft_corpus(20, seed=1) == make_sft_corpus(20, seed=1)
    assert len(set(make_prompts(200, seed=0))) == 8


def test_sharp_annotators_follow_the_gold_score():
    judges = BradleyTerryAnnotators([50.0], seed=0)
    assert judges.label([3.0, 0.0], [0.0, 3.0]) == [0, 1]


def test_annotator_noise_matches_bradley_terry():
    judges = BradleyTerryAnnotators([1.0], seed=0)
    labels = judges.label([1.0] * 4000, [0.0] * 4000)
    # P(first preferred) = sigmoid(1) = 0.731
    assert labels.count(0) / 4000 == pytest.approx(0.731, abs=0.025)


def test_ceiling_accuracy_counts_ties_half():
    assert ceiling_accuracy([2.0, 1.0, 0.0, 1.0], [1.0, 2.0, 0.0, 0.0]) == pytest.approx(2.5 / 4)


def test_annotators_reject_bad_betas():
    with pytest.raises(InvalidArgumentError, match="betas"):
        BradleyTerryAnnotators([0.0], seed=0)
    with pytest.raises(InvalidArgumentError, match="betas"):
        BradleyTerryAnnotators([], seed=0)


def test_tiny_demo_end_to_end(tmp_path, monkeypatch):
    from rlhf_fast.metrics import MetricsLogger

    monkeypatch.setattr(
        MetricsLogger, "plot", lambda self, *a, **k: None
    )  # stage PNGs: metrics' tests
    cfg = DemoConfig(
        output_dir=str(tmp_path),
        n_sft_examples=200,
        n_preference_pairs=48,
        n_eval_pairs=16,
        n_prompts=32,
        n_eval_samples=16,
        progress=False,
        tensorboard=False,
        device="cpu",
    )
    cfg.sft.max_steps, cfg.sft.batch_size = 10, 16
    cfg.reward.max_steps, cfg.reward.batch_size = 6, 8
    cfg.ppo.max_steps, cfg.ppo.rollout_batch_size, cfg.ppo.minibatch_size = 2, 8, 4
    cfg.ppo.max_new_tokens = 10
    summary = run_demo(cfg)
    for key in (
        "rm_accuracy",
        "rm_accuracy_ceiling",
        "gold_sft_mean",
        "gold_sft_std",
        "gold_ppo_mean",
        "gold_ppo_std",
        "kl_ppo",
        "proxy_sft_mean",
        "proxy_ppo_mean",
        "n_samples",
        "seed",
        "wall_seconds",
    ):
        assert key in summary, key
    assert summary["n_samples"] == 16 and summary["kl_sft"] == pytest.approx(0.0, abs=1e-5)
    assert json.loads((tmp_path / "summary.json").read_text())["seed"] == 0
    for name in (
        "report.md",
        "samples_sft.jsonl",
        "samples_ppo.jsonl",
        "plots/gold_proxy_vs_kl.png",
        "plots/ppo_curves.png",
        "ppo/metrics/ppo.jsonl",
        "data/preferences_train.jsonl",
    ):
        assert (tmp_path / name).is_file(), name
    cfg.resume = True  # every stage finds its final checkpoint: the same report again
    again = run_demo(cfg)
    for key in ("rm_accuracy", "gold_sft_mean", "gold_ppo_mean", "kl_ppo"):
        assert again[key] == summary[key], key
    samples = [
        json.loads(line) for line in (tmp_path / "samples_ppo.jsonl").read_text().splitlines()
    ]
    assert [s["gold"] for s in samples] == gold_score(
        [s["response"] for s in samples], [s["prompt"] for s in samples]
    )
