r"""The three stages in a row: SFT -> reward model -> PPO.

    rlhf-fast pipeline --sft-data sft.jsonl --preference-data prefs.jsonl \
        --prompts prompts.jsonl --output-dir runs/pipeline

Stage outputs land in ``output_dir/{sft,reward,ppo}``; the reward model and the PPO
policy (and reference) start from the SFT model. The options shared by every stage
(seed, resume, device, tokenizer, instruction, ...) are set once, at the top level; each
stage's own settings are nested (``--sft.max-steps``, ``--ppo.kl-coef``). A stage option
the pipeline sets itself (``--ppo.seed``, ``--ppo.policy``) is an error that says where
it is set. Every input file is loaded and checked before the first stage trains, and
each stage's ``config.toml`` records the exact settings it ran with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from rlhf_fast import preflight
from rlhf_fast.config import (
    OptionValueError,
    RunConfig,
    dump_config,
    option,
    redefault,
    run_settings,
    settings_of,
)
from rlhf_fast.trainers.ppo import PPOConfig, PPOSettings, PPOTrainer
from rlhf_fast.trainers.reward import RewardConfig, RewardSettings, RewardTrainer
from rlhf_fast.trainers.sft import SFTConfig, SFTSettings, SFTTrainer


@dataclass
class PipelineConfig(RunConfig):
    """SFT, then a Bradley-Terry reward model, then PPO, each stage starting from the last."""

    # Stage fields the pipeline fills itself; setting them is an error saying so.
    WIRED: ClassVar[dict[str, str]] = {
        "sft.model": "model",
        "sft.data": "sft_data",
        "reward.model": "the SFT model (model when sft_data is empty)",
        "reward.data": "preference_data",
        "ppo.policy": "the SFT model (model when sft_data is empty)",
        "ppo.reward_model": "the reward stage's model",
        "ppo.prompts": "prompts",
    }

    output_dir: str = redefault(RunConfig, "output_dir", "runs/pipeline")
    model: str = option("tiny-gpt2", "Base model: a built-in name or a local causal-LM directory.")
    sft_data: str = option(
        "", "SFT examples {prompt, response} (JSONL/Parquet); empty: skip SFT and use model as is."
    )
    preference_data: str = option("", "Preference pairs for the reward model (JSONL/Parquet).")
    prompts: str = option("", "Prompts for PPO (JSONL/Parquet).")
    sft: SFTSettings = field(default_factory=SFTSettings, metadata={"help": "SFT stage settings."})
    reward: RewardSettings = field(
        default_factory=RewardSettings, metadata={"help": "Reward-model stage settings."}
    )
    ppo: PPOSettings = field(default_factory=PPOSettings, metadata={"help": "PPO stage settings."})


def stage_configs(config: PipelineConfig) -> tuple[SFTConfig, RewardConfig, PPOConfig]:
    """The three stage configs: the shared options, each stage's own, and the paths between."""
    root = Path(config.output_dir)
    shared = run_settings(config)
    base = str(root / "sft" / "model") if config.sft_data else config.model
    # After SFT the tokenizer is the one saved with the SFT model.
    later_tokenizer = "" if config.sft_data else config.tokenizer
    sft = _stage(
        "sft",
        SFTSettings,
        lambda: SFTConfig(
            **{**shared, "output_dir": str(root / "sft")},
            **settings_of(config.sft, SFTSettings, "sft"),
            model=config.model,
            data=config.sft_data,
        ),
    )
    later = {**shared, "tokenizer": later_tokenizer}
    reward = _stage(
        "reward",
        RewardSettings,
        lambda: RewardConfig(
            **{**later, "output_dir": str(root / "reward")},
            **settings_of(config.reward, RewardSettings, "reward"),
            model=base,
            data=config.preference_data,
        ),
    )
    ppo = _stage(
        "ppo",
        PPOSettings,
        lambda: PPOConfig(
            **{**later, "output_dir": str(root / "ppo")},
            **settings_of(config.ppo, PPOSettings, "ppo"),
            policy=base,
            reward_model=str(root / "reward" / "model"),
            prompts=config.prompts,
        ),
    )
    return sft, reward, ppo


Stage = TypeVar("Stage")


def _stage(name: str, settings: type, build: Callable[[], Stage]) -> Stage:
    """``build()``; a check between options that fails on one of the stage's own settings
    names it as the pipeline takes it (``--ppo.lora-r``, not ``--lora-r``)."""
    try:
        return build()
    except OptionValueError as exc:
        if exc.option in {f.name for f in fields(settings)}:
            raise OptionValueError(f"{name}.{exc.option}", exc.reason) from None
        raise


def _finished(stage_dir: str, artefact: str) -> bool:
    return (Path(stage_dir) / artefact).is_dir()


def _record(stage: Any) -> None:
    """Write the stage's resolved config into its directory (rank 0 only under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        dump_config(stage, Path(stage.output_dir) / "config.toml")


def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """The CLI entry point of ``rlhf-fast pipeline``: run the stages, return their summaries."""
    sft, reward, ppo = stage_configs(config)
    # Every input is loaded and checked before the first step; the stages train on these.
    # Until SFT has run, the base model stands in for the reward trunk and the policy (the
    # same architecture and tokenizer).
    examples = preflight.sft_examples(sft, prefix="sft.") if config.sft_data else None
    pairs, eval_pairs = preflight.preference_pairs(reward, model=config.model, prefix="reward.")
    prompts = preflight.ppo_prompts(
        ppo, policy=config.model, tokenizer=config.tokenizer, prefix="ppo."
    )
    results: dict[str, Any] = {}
    if examples is not None:
        if config.resume and _finished(sft.output_dir, "model"):
            results["sft"] = {"stage": "sft", "skipped": "finished earlier"}
        else:
            _record(sft)
            results["sft"] = SFTTrainer(sft, examples=examples).train()
    if config.resume and _finished(reward.output_dir, "model"):
        results["reward"] = {"stage": "reward", "skipped": "finished earlier"}
    else:
        _record(reward)
        results["reward"] = RewardTrainer(reward, pairs=pairs, eval_pairs=eval_pairs).train()
    _record(ppo)
    results["ppo"] = PPOTrainer(ppo, prompts=prompts).train()
    return results
