"""The three trainers on the tiny built-in model: learning, PPO smoke run, stop-and-resume."""

import math
import shutil

import pytest
import torch

from rlhf_fast.checkpoint import latest_checkpoint
from rlhf_fast.data import PreferencePair, SFTExample
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import RewardModel, load_causal_lm
from rlhf_fast.tokenizer import load_tokenizer
from rlhf_fast.trainers.ppo import PPOConfig, PPOTrainer
from rlhf_fast.trainers.reward import RewardConfig, RewardTrainer
from rlhf_fast.trainers.sft import SFTConfig, SFTTrainer

QUIET = {"device": "cpu", "tensorboard": False, "progress": False}


@pytest.fixture(autouse=True)
def _no_png_curves(monkeypatch):
    """The PNG curves are the metrics module's business (tested there) and cost seconds here."""
    from rlhf_fast.metrics import MetricsLogger

    monkeypatch.setattr(MetricsLogger, "plot", lambda self, *args, **kwargs: None)
    torch.set_num_threads(1)


PRODUCTS = ["kettle", "lamp", "tent", "toaster"]
GOOD = ["great", "lovely", "sturdy", "perfect"]
BAD = ["awful", "broken", "flimsy", "useless"]


def separable_pairs(n: int, seed: int) -> list[PreferencePair]:
    """Chosen reviews use a positive adjective, rejected ones a negative one."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    pairs = []
    for _ in range(n):
        product = pick(PRODUCTS)
        template = pick(["the {p} is {a} .", "i think it is {a} .", "this {p} feels {a} ."])
        pairs.append(
            PreferencePair(
                f"review the {product} :",
                template.format(p=product, a=pick(GOOD)),
                template.format(p=product, a=pick(BAD)),
            )
        )
    return pairs


@pytest.fixture(scope="module")
def stage_dirs(tmp_path_factory):
    """A random tiny SFT-model directory and a reward model on top of it (no training)."""
    root = tmp_path_factory.mktemp("stages")
    tok = load_tokenizer("demo-words")
    lm = load_causal_lm("tiny-gpt2", tok, seed=0)
    lm.save_pretrained(root / "sft")
    tok.save_pretrained(root / "sft")
    RewardModel.from_causal_lm(load_causal_lm("tiny-gpt2", tok, seed=1)).save_pretrained(
        root / "rm"
    )
    tok.save_pretrained(root / "rm")
    return root


def ppo_config(stage_dirs, out, **overrides) -> PPOConfig:
    kw = dict(
        output_dir=str(out),
        policy=str(stage_dirs / "sft"),
        reward_model=str(stage_dirs / "rm"),
        max_steps=2,
        rollout_batch_size=8,
        minibatch_size=4,
        ppo_epochs=2,
        max_new_tokens=6,
        learning_rate=1e-3,
        save_every=1,
        **QUIET,
    )
    kw.update(overrides)
    return PPOConfig(**kw)


PROMPTS = [f"review the {p} :" for p in PRODUCTS]


def test_reward_model_separates_toy_preferences(tmp_path):
    torch.set_num_threads(1)
    cfg = RewardConfig(
        output_dir=str(tmp_path),
        model="tiny-gpt2",
        tokenizer="demo-words",
        max_steps=80,
        batch_size=16,
        learning_rate=3e-3,
        warmup_steps=10,
        eval_every=40,
        save_every=1000,
        **QUIET,
    )
    result = RewardTrainer(
        cfg, pairs=separable_pairs(400, 0), eval_pairs=separable_pairs(200, 1)
    ).train()
    assert result["eval_accuracy"] > 0.95
    rm = RewardModel.from_pretrained(result["model_dir"])
    assert rm.score_std > 0


def test_sft_loss_falls_and_model_is_saved(tmp_path):
    examples = [SFTExample(p.prompt, p.chosen) for p in separable_pairs(200, 0)]
    cfg = SFTConfig(
        output_dir=str(tmp_path),
        model="tiny-gpt2",
        tokenizer="demo-words",
        max_steps=40,
        batch_size=16,
        learning_rate=3e-3,
        warmup_steps=5,
        log_every=5,
        save_every=1000,
        **QUIET,
    )
    trainer = SFTTrainer(cfg, examples=examples)
    first, _ = trainer.loss_on(list(range(16)))
    result = trainer.train()
    assert result["final_loss"] < 0.6 * first.item()
    assert (tmp_path / "model" / "config.json").is_file()
    assert (tmp_path / "metrics" / "sft.jsonl").is_file()


def test_sft_loss_ignores_prompt_tokens(tmp_path):
    cfg = SFTConfig(output_dir=str(tmp_path), model="tiny-gpt2", tokenizer="demo-words", **QUIET)
    a = SFTTrainer(cfg, examples=[SFTExample("review the lamp :", "great .")])
    b = SFTTrainer(cfg, examples=[SFTExample("review the lamp : it is", "great .")])
    # "it is" moved from response to prompt: fewer target tokens in b
    assert a.loss_on([0])[1]["tokens"] == b.loss_on([0])[1]["tokens"] == 3  # great . <eos>


def test_ppo_smoke_run(tmp_path, stage_dirs):
    torch.set_num_threads(1)
    trainer = PPOTrainer(ppo_config(stage_dirs, tmp_path), prompts=PROMPTS)
    batch = trainer.rollout(PROMPTS * 2)
    b, t = batch.response_mask.shape
    assert b == 8 and 1 <= t <= 6
    for name in ("logprobs", "ref_logprobs", "values"):
        assert getattr(batch, name).shape == (b, t)
    assert batch.scores.shape == (b,)
    # before any update the policy is the reference: KL exactly 0
    metrics = trainer.train_step(batch)
    assert metrics["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    for key in (
        "loss/policy_avg",
        "loss/value_avg",
        "policy/approxkl_avg",
        "val/explained_variance",
    ):
        assert math.isfinite(metrics[key]), key
    result = trainer.train()
    assert result["steps"] == 2
    assert (tmp_path / "policy" / "config.json").is_file()
    assert (tmp_path / "metrics" / "ppo.jsonl").is_file()
    assert load_causal_lm(result["policy_dir"], trainer.tokenizer) is not None


def test_ppo_separate_critic_linear_head_and_adaptive_kl(tmp_path, stage_dirs):
    cfg = ppo_config(
        stage_dirs,
        tmp_path,
        shared_value_trunk=False,
        value_head_hidden=0,
        group_by_length=False,
        target_kl=1.0,
        max_steps=2,
    )
    trainer = PPOTrainer(cfg, prompts=PROMPTS)
    assert not trainer.model.shared_trunk
    assert isinstance(trainer.model.value_head, torch.nn.Linear)
    result = trainer.train()
    assert result["objective/kl_coef"] != cfg.kl_coef  # the controller moved
    assert math.isfinite(result["val/explained_variance"])


def test_ppo_defaults_share_the_trunk_with_an_mlp_value_head(tmp_path, stage_dirs):
    trainer = PPOTrainer(ppo_config(stage_dirs, tmp_path, max_steps=1), prompts=PROMPTS)
    assert trainer.model.shared_trunk and trainer.config.group_by_length
    assert isinstance(trainer.model.value_head, torch.nn.Sequential)
    kinds = {type(m).__name__ for m in trainer.model.modules()}
    assert "NewGELUActivation" not in kinds  # fused GELUs
    with pytest.raises(InvalidArgumentError, match="value_head_hidden"):
        PPOTrainer(ppo_config(stage_dirs, tmp_path, value_head_hidden=-1), prompts=PROMPTS)


def _sft_weights(tmp_path, resume):
    examples = [SFTExample(p.prompt, p.chosen) for p in separable_pairs(64, 0)]
    cfg = SFTConfig(
        output_dir=str(tmp_path),
        model="tiny-gpt2",
        tokenizer="demo-words",
        max_steps=6,
        batch_size=8,
        save_every=3,
        resume=resume,
        **QUIET,
    )
    trainer = SFTTrainer(cfg, examples=examples)
    trainer.train()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_sft_stop_and_resume_equals_uninterrupted(tmp_path):
    full = _sft_weights(tmp_path, resume=False)
    shutil.rmtree(latest_checkpoint(tmp_path / "checkpoints"))  # as if stopped after step 3
    resumed = _sft_weights(tmp_path, resume=True)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0)


def test_ppo_stop_and_resume_equals_uninterrupted(tmp_path, stage_dirs):
    full = PPOTrainer(ppo_config(stage_dirs, tmp_path), prompts=PROMPTS)
    full.train()
    shutil.rmtree(latest_checkpoint(tmp_path / "checkpoints"))  # as if stopped after iteration 1
    resumed = PPOTrainer(ppo_config(stage_dirs, tmp_path, resume=True), prompts=PROMPTS)
    resumed.train()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_trainers_reject_bad_configs(tmp_path, stage_dirs):
    with pytest.raises(InvalidArgumentError, match="max_steps"):
        SFTTrainer(
            SFTConfig(output_dir=str(tmp_path), max_steps=0, **QUIET),
            examples=[SFTExample("a", "b")],
        )
    with pytest.raises(InvalidArgumentError, match="data"):
        SFTTrainer(SFTConfig(output_dir=str(tmp_path), **QUIET))
    with pytest.raises(InvalidArgumentError, match="reward_model"):
        PPOTrainer(ppo_config(stage_dirs, tmp_path, reward_model=str(tmp_path)), prompts=PROMPTS)


def test_ppo_with_lora_uses_the_adapter_free_model_as_reference(tmp_path, stage_dirs):
    pytest.importorskip("peft")
    trainer = PPOTrainer(ppo_config(stage_dirs, tmp_path, lora_r=4, max_steps=1), prompts=PROMPTS)
    assert trainer.reference is None  # no second copy of the weights
    n_trainable = sum(p.numel() for p in trainer.model.policy.parameters() if p.requires_grad)
    assert 0 < n_trainable < sum(p.numel() for p in trainer.model.policy.parameters()) / 4
    batch = trainer.rollout(PROMPTS)
    torch.testing.assert_close(batch.logprobs, batch.ref_logprobs)  # LoRA B starts at zero
    result = trainer.train()
    assert math.isfinite(result["objective/kl"])
    assert (
        load_causal_lm(result["policy_dir"], trainer.tokenizer) is not None
    )  # merged, plain model


def test_ppo_step_under_bf16_autocast(tmp_path, stage_dirs):
    trainer = PPOTrainer(ppo_config(stage_dirs, tmp_path, bf16_autocast=True), prompts=PROMPTS)
    metrics = trainer.train_step(trainer.rollout(PROMPTS))
    assert math.isfinite(metrics["loss/policy_avg"]) and math.isfinite(metrics["loss/value_avg"])


def test_pipeline_runs_the_three_stages_from_files(tmp_path):
    import json

    from rlhf_fast.pipeline import PipelineConfig, run_pipeline

    pairs = separable_pairs(40, 0)
    files = {
        "sft.jsonl": [{"prompt": p.prompt, "response": p.chosen} for p in pairs],
        "prefs.jsonl": [
            {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs
        ],
        "prompts.jsonl": [{"prompt": p} for p in PROMPTS],
    }
    for name, records in files.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = PipelineConfig(
        output_dir=str(tmp_path / "run"),
        tokenizer="demo-words",
        device="cpu",
        sft_data=str(tmp_path / "sft.jsonl"),
        preference_data=str(tmp_path / "prefs.jsonl"),
        prompts=str(tmp_path / "prompts.jsonl"),
        instruction="write a short review .",
        tensorboard=False,
        progress=False,
    )
    for stage in (cfg.sft, cfg.reward, cfg.ppo):
        stage.max_steps = 2
    cfg.sft.batch_size = cfg.reward.batch_size = 8
    cfg.ppo.rollout_batch_size, cfg.ppo.minibatch_size, cfg.ppo.max_new_tokens = 4, 2, 4
    cfg.seed = 7
    results = run_pipeline(cfg)
    assert [results[s]["steps"] for s in ("sft", "reward", "ppo")] == [2, 2, 2]
    # Each stage records what it ran with: the shared seed, its own settings, its paths.
    from rlhf_fast.config import load_config
    from rlhf_fast.trainers.ppo import PPOConfig as PPO

    ran = load_config(PPO, tmp_path / "run" / "ppo" / "config.toml")
    assert (ran.seed, ran.max_steps, ran.instruction) == (7, 2, "write a short review .")
    assert ran.policy == str(tmp_path / "run" / "sft" / "model")
    assert results["reward"]["n_eval_pairs"] == 4  # eval_fraction 0.1 of 40
    assert (tmp_path / "run" / "ppo" / "policy" / "config.json").is_file()
    cfg.resume = True  # finished stages are skipped
    assert run_pipeline(cfg)["sft"]["skipped"] == "finished earlier"


def test_sft_stops_on_a_bad_record_unless_asked_to_skip_it(tmp_path):
    from rlhf_fast.data import DataValidationError

    data = tmp_path / "sft.jsonl"
    data.write_text(
        '{"prompt": "review the lamp :", "response": "great ."}\n{"prompt": "x", "response": ""}\n'
    )
    cfg = SFTConfig(
        output_dir=str(tmp_path),
        tokenizer="demo-words",
        data=str(data),
        max_steps=1,
        batch_size=1,
        **QUIET,
    )
    with pytest.raises(DataValidationError, match="line 2"):
        SFTTrainer(cfg)
    cfg.skip_invalid = True
    assert SFTTrainer(cfg).train()["n_skipped_records"] == 1
