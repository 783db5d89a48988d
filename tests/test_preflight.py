"""Stage inputs are loaded and checked against the model before anything trains."""

from __future__ import annotations

import json

import pytest

from rlhf_fast.config import ConfigError, OptionValueError
from rlhf_fast.data import DataValidationError
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.pipeline import PipelineConfig, run_pipeline
from rlhf_fast.preflight import context_length, ppo_prompts, preference_pairs, sft_examples
from rlhf_fast.trainers.ppo import PPOConfig
from rlhf_fast.trainers.reward import RewardConfig
from rlhf_fast.trainers.sft import SFTConfig


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_context_length_of_builtin_and_directory_models(tmp_path):
    assert context_length("tiny-gpt2") == 128
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    assert context_length(str(tmp_path)) == 2048
    with pytest.raises(InvalidArgumentError, match="model: expected one of"):
        context_length(str(tmp_path / "missing"))


def test_a_prompt_longer_than_the_policy_context_names_file_line_and_limit(tmp_path):
    # bytes tokenizer: one token per byte; tiny-gpt2 sees 128 tokens, 32 kept for the response
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": "x" * 97}])
    cfg = PPOConfig(policy="tiny-gpt2", tokenizer="bytes", prompts=prompts, max_new_tokens=32)
    with pytest.raises(
        DataValidationError,
        match=r"p.jsonl: line 2: field 'prompt': 97 tokens, more than the 96 the policy's "
        r"context of 128 tokens leaves beside max_new_tokens=32",
    ):
        ppo_prompts(cfg)
    cfg.skip_invalid = True
    kept = ppo_prompts(cfg)
    assert kept == ["ok"] and kept.report.skipped == {"too long": 1}
    cfg.skip_invalid, cfg.instruction = False, "y" * 95  # the instruction counts too
    with pytest.raises(DataValidationError, match="line 1: field 'prompt': 98 tokens"):
        ppo_prompts(cfg)
    cfg.max_new_tokens = 128
    with pytest.raises(OptionValueError, match=r"--max-new-tokens \(max_new_tokens\): expected "):
        ppo_prompts(cfg)


def test_max_length_must_fit_the_model_context(tmp_path):
    data = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(OptionValueError, match=r"sft.max_length\): expected at most .* 128"):
        sft_examples(SFTConfig(data=data, max_length=129), prefix="sft.")
    assert len(sft_examples(SFTConfig(data=data, max_length=128))) == 1
    pairs = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(OptionValueError, match="max_length"):
        preference_pairs(RewardConfig(data=pairs, max_length=500))


def test_pipeline_checks_every_input_before_it_trains(tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "response": "r"}])
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "fine"}, {"prompt": "z" * 200}])
    cfg = PipelineConfig(
        output_dir=str(tmp_path / "run"),
        tokenizer="bytes",
        device="cpu",
        sft_data=sft,
        preference_data=prefs,
        prompts=prompts,
    )
    with pytest.raises(DataValidationError, match=r"prompts.jsonl: line 2: field 'prompt': 200"):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    (tmp_path / "prefs.jsonl").write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(DataValidationError, match=r"prefs.jsonl: line 1: invalid UTF-8"):
        run_pipeline(cfg)


def test_pipeline_stage_settings_hold_no_shared_option():
    cfg = PipelineConfig()
    with pytest.raises(AttributeError, match="PPOSettings has no option 'seed': it is shared"):
        cfg.ppo.seed = 5
    with pytest.raises(ConfigError, match="ppo: expected PPOSettings .* got PPOConfig"):
        run_pipeline(PipelineConfig(ppo=PPOConfig(seed=5)))
