"""GRPO and RLOO on the tiny built-in model: smoke runs, resume, reward functions and their
errors, the settings' checks. The losses are tested in ``test_policy_losses.py``."""

import math

import pytest
import torch

from rlhf_fast.config import OptionValueError
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.metrics import read_jsonl
from rlhf_fast.models import RewardModel, load_causal_lm
from rlhf_fast.tokenizer import load_tokenizer
from rlhf_fast.trainers.grpo import GRPOConfig, GRPOTrainer
from rlhf_fast.trainers.rloo import RLOOConfig, RLOOTrainer
from rlhf_fast.trainers.rollout import RewardFunctionError, load_reward_function

QUIET = {"device": "cpu", "tensorboard": False, "progress": False}
PROMPTS = ["review the kettle :", "review the lamp :", "review the tent :"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    from rlhf_fast.metrics import MetricsLogger

    monkeypatch.setattr(MetricsLogger, "plot", lambda self, *args, **kwargs: None)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stage_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("group_stages")
    tok = load_tokenizer("demo-words")
    lm = load_causal_lm("tiny-gpt2", tok, seed=0)
    lm.save_pretrained(root / "sft")
    tok.save_pretrained(root / "sft")
    RewardModel.from_causal_lm(load_causal_lm("tiny-gpt2", tok, seed=1)).save_pretrained(
        root / "rm"
    )
    return root


def config(cls, stage_dirs, out, **overrides):
    kw = dict(
        output_dir=str(out),
        policy=str(stage_dirs / "sft"),
        reward_model=str(stage_dirs / "rm"),
        max_steps=2,
        prompts_per_step=2,
        group_size=4,
        minibatch_size=4,
        epochs=2,
        max_new_tokens=6,
        learning_rate=1e-3,
        save_every=1,
        **QUIET,
    )
    kw.update(overrides)
    return cls(**kw)


@pytest.mark.parametrize(("cls", "trainer"), [(GRPOConfig, GRPOTrainer), (RLOOConfig, RLOOTrainer)])
def test_smoke_run_logs_and_saves(tmp_path, stage_dirs, cls, trainer):
    cfg = config(cls, stage_dirs, tmp_path, reward_functions=["rlhf_fast.demo:gold_score"])
    result = trainer(cfg, prompts=PROMPTS).train()
    assert result["steps"] == 2 and (tmp_path / "policy" / "config.json").is_file()
    records = read_jsonl(tmp_path / "metrics" / f"{trainer.stage}.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for key in (
        "objective/scores",
        "objective/kl",
        "loss/policy_avg",
        "rewards/gold_score",
        "rewards/reward_model",
        "policy/clipfrac_avg",
    ):
        assert math.isfinite(records[-1][key]), key


def test_grpo_sequence_aggregation_and_dr_grpo_run(tmp_path, stage_dirs):
    cfg = config(
        GRPOConfig,
        stage_dirs,
        tmp_path,
        max_steps=1,
        loss_aggregation="sequence",
        normalize="none",
        kl_coef=0.0,
    )
    assert GRPOTrainer(cfg, prompts=PROMPTS).train()["steps"] == 1


def test_group_advantages_come_from_the_kernel(tmp_path, stage_dirs):

    trainer = GRPOTrainer(config(GRPOConfig, stage_dirs, tmp_path), prompts=PROMPTS)
    batch = trainer.worker.rollout(PROMPTS[:2], 4)
    assert batch.tokens.shape[0] == 8 and batch.prompts[:4] == [PROMPTS[0]] * 4
    g = batch.scores.view(2, 4)
    expected = ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-6)).reshape(-1)
    torch.testing.assert_close(trainer.advantages(batch), expected)
    rloo = RLOOTrainer(config(RLOOConfig, stage_dirs, tmp_path / "r", kl_coef=0.0), prompts=PROMPTS)
    loo = rloo.advantages(batch).view(2, 4)
    torch.testing.assert_close(loo, (g - (g.sum(1, keepdim=True) - g) / 3), rtol=1e-5, atol=1e-5)


def _policy_weights(tmp_path, stage_dirs, resume):
    out = tmp_path / ("resumed" if resume else "full")
    if resume:  # stop after 1 of 2 steps, then resume
        GRPOTrainer(config(GRPOConfig, stage_dirs, out, max_steps=1), prompts=PROMPTS).train()
    trainer = GRPOTrainer(config(GRPOConfig, stage_dirs, out, resume=resume), prompts=PROMPTS)
    trainer.train()
    return {k: v.clone() for k, v in trainer.policy.state_dict().items()}


def test_grpo_stop_and_resume_equals_uninterrupted(tmp_path, stage_dirs):
    full = _policy_weights(tmp_path, stage_dirs, resume=False)
    resumed = _policy_weights(tmp_path, stage_dirs, resume=True)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0)


# ------------------------------------------------------------------ reward functions
def raises_on_lamp(completions, prompts):
    if any("lamp" in p for p in prompts):
        raise ValueError("no lamps here")
    return [0.0] * len(completions)


def nan_for_second(completions, prompts):
    return [float("nan") if i == 1 else 1.0 for i in range(len(completions))]


def one_short(completions, prompts):
    return [1.0] * (len(completions) - 1)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "raises_on_lamp",
            r"test_group_trainers:raises_on_lamp raised ValueError: no lamps here "
            r"on prompt index 4 \('review the lamp :'\)",
        ),
        ("nan_for_second", r"nan_for_second returned nan for prompt index 1 \('review the kettle"),
        ("one_short", r"one_short returned 7 values for 8 completions"),
    ],
)
def test_bad_reward_functions_name_themselves_and_the_prompt(tmp_path, stage_dirs, name, message):
    cfg = config(
        GRPOConfig,
        stage_dirs,
        tmp_path,
        reward_model="",
        reward_functions=[f"test_group_trainers:{name}"],
    )
    trainer = GRPOTrainer(cfg, prompts=PROMPTS)
    with pytest.raises(RewardFunctionError, match=message):
        trainer.worker.rollout(PROMPTS[:2], 4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gold_score", "expected 'module:function'"),
        ("rlhf_fast.demo:nope", "cannot load"),
        ("no_such_module_xyz:f", "cannot load"),
        ("rlhf_fast.demo.task:PRODUCTS", "not callable"),
    ],
)
def test_reward_function_specs_are_checked(spec, message):
    with pytest.raises(InvalidArgumentError, match=f"reward_functions: .*{message}"):
        load_reward_function(spec)


def test_no_reward_at_all_is_an_error(tmp_path, stage_dirs):
    with pytest.raises(InvalidArgumentError, match="reward_model, reward_functions"):
        GRPOTrainer(config(GRPOConfig, stage_dirs, tmp_path, reward_model=""), prompts=PROMPTS)


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"group_size": 1}, "group_size"),
        ({"minibatch_size": 3}, "minibatch_size"),  # 2 prompts x 4 = 8 completions
        ({"kl_coef": -1.0}, "kl_coef"),
        ({"reward_functions": ["a:b"], "reward_weights": [1.0, 2.0]}, "reward_weights"),
    ],
)
def test_settings_are_checked(tmp_path, stage_dirs, overrides, option):
    with pytest.raises(OptionValueError, match=option):
        config(GRPOConfig, stage_dirs, tmp_path, **overrides)


def test_cli_runs_grpo_with_a_reward_function(tmp_path, stage_dirs, capsys):
    from rlhf_fast.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "{p}"}}\n' for p in PROMPTS))
    args = [
        "rloo",
        "--policy",
        str(stage_dirs / "sft"),
        "--prompts",
        str(prompts),
        "--reward-functions",
        "rlhf_fast.demo:gold_score",
        "--output-dir",
        str(tmp_path / "o"),
        "--max-steps",
        "1",
        "--prompts-per-step",
        "2",
        "--minibatch-size",
        "8",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
        "--no-tensorboard",
        "--no-progress",
    ]
    assert main(args) == 0
    assert '"stage": "rloo"' in capsys.readouterr().out
