r"""The three stages in a row: SFT -> reward model -> PPO.

    rlhf-fast pipeline --sft-data sft.jsonl --preference-data prefs.jsonl \
        --prompts prompts.jsonl --output-dir runs/pipeline

Stage outputs land in ``output_dir/{sft,reward,ppo}``; the reward model and the PPO
policy (and reference) start from the SFT model. The shared fields below override the
same-named fields of the nested stage configs; everything else is set per stage
(``--sft.max-steps``, ``--ppo.kl-coef``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlhf_fast.trainers.ppo import PPOConfig, run_ppo
from rlhf_fast.trainers.reward import RewardConfig, run_reward
from rlhf_fast.trainers.runtime import option
from rlhf_fast.trainers.sft import SFTConfig, run_sft


@dataclass
class PipelineConfig:
    """SFT, then a Bradley-Terry reward model, then PPO, each stage starting from the last."""

    output_dir: str = option(
        "runs/pipeline", "Root directory; stages write into sft/, reward/ and ppo/ below it."
    )
    seed: int = option(0, "Random seed of every stage.")
    resume: bool = option(
        False, "Skip finished stages and continue the running one from its last checkpoint."
    )
    model: str = option("tiny-gpt2", "Base model: a built-in name or a local causal-LM directory.")
    tokenizer: str = option(
        "", "'bytes', 'demo-words' or a local directory; empty: the model directory's, or 'bytes'."
    )
    sft_data: str = option(
        "", "SFT examples {prompt, response} (JSONL/Parquet); empty: skip SFT and use model as is."
    )
    preference_data: str = option("", "Preference pairs for the reward model (JSONL/Parquet).")
    prompts: str = option("", "Prompts for PPO (JSONL/Parquet).")
    instruction: str = option("", "Text prepended to every prompt in every stage.")
    device: str = option("auto", "'auto' (CUDA when available), 'cpu' or 'cuda[:N]'.")
    bf16_autocast: bool = option(False, "Run forward passes under bf16 autocast.")
    sft: SFTConfig = field(default_factory=SFTConfig, metadata={"help": "SFT stage settings."})
    reward: RewardConfig = field(
        default_factory=RewardConfig, metadata={"help": "Reward-model stage settings."}
    )
    ppo: PPOConfig = field(default_factory=PPOConfig, metadata={"help": "PPO stage settings."})


def stage_configs(config: PipelineConfig) -> tuple[SFTConfig, RewardConfig, PPOConfig]:
    """The three stage configs with the shared fields and the stage-to-stage paths filled in."""
    root = Path(config.output_dir)
    shared = {
        "seed": config.seed,
        "resume": config.resume,
        "instruction": config.instruction,
        "device": config.device,
        "bf16_autocast": config.bf16_autocast,
    }
    sft = replace(
        config.sft,
        output_dir=str(root / "sft"),
        model=config.model,
        tokenizer=config.tokenizer,
        data=config.sft_data,
        **shared,
    )
    base = str(root / "sft" / "model") if config.sft_data else config.model
    tokenizer = "" if config.sft_data else config.tokenizer
    reward = replace(
        config.reward,
        output_dir=str(root / "reward"),
        model=base,
        tokenizer=tokenizer,
        data=config.preference_data,
        **shared,
    )
    ppo = replace(
        config.ppo,
        output_dir=str(root / "ppo"),
        policy=base,
        tokenizer=tokenizer,
        reward_model=str(root / "reward" / "model"),
        prompts=config.prompts,
        **shared,
    )
    return sft, reward, ppo


def _finished(stage_dir: str, artefact: str) -> bool:
    return (Path(stage_dir) / artefact).is_dir()


def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """The CLI entry point of ``rlhf-fast pipeline``: run the stages, return their summaries."""
    sft, reward, ppo = stage_configs(config)
    results: dict[str, Any] = {}
    if config.sft_data:
        if config.resume and _finished(sft.output_dir, "model"):
            results["sft"] = {"stage": "sft", "skipped": "finished earlier"}
        else:
            results["sft"] = run_sft(sft)
    if config.resume and _finished(reward.output_dir, "model"):
        results["reward"] = {"stage": "reward", "skipped": "finished earlier"}
    else:
        results["reward"] = run_reward(reward)
    results["ppo"] = run_ppo(ppo)
    return results
