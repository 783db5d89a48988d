"""Each stage's input files, loaded and checked against its model before anything trains.

A bad record should stop a run in its first second, not after an hour of SFT: the
``rlhf-fast`` commands and ``pipeline`` load every data file here first, with the
loaders' file:line errors, and check what only the model can tell:

- SFT and reward ``max_length`` must fit the model's context;
- a PPO prompt (with the instruction) must leave ``max_new_tokens`` of the policy's
  context free. A longer one is an error naming its file, line and the limit, or with
  ``skip_invalid`` it is dropped and counted with the other skipped records. Prompts are
  never cut: a cut prompt asks another question than the one in the file.

The checked records are handed to the trainers as they are, so nothing is read twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from rlhf_fast.config import OptionValueError
from rlhf_fast.data import (
    LoadedRecords,
    PreferencePair,
    SFTExample,
    drop_too_long,
    load_preference_pairs,
    load_prompts,
    load_sft_examples,
)
from rlhf_fast.errors import InvalidArgumentError

__all__ = [
    "context_length",
    "ppo_prompts",
    "preference_pairs",
    "run_ppo",
    "run_reward",
    "run_sft",
    "sft_examples",
]

# Where transformers configs keep the context length, by model family.
_CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def context_length(model: str) -> Optional[int]:
    """Tokens ``model`` (a built-in name or a local directory) can attend to; ``None`` when
    its config does not say. A name that is neither is an error naming ``model``."""
    from rlhf_fast.models import BUILTIN_MODELS

    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model]["n_positions"]
    config = Path(model) / "config.json"
    if not config.is_file():
        raise InvalidArgumentError(
            f"model: expected one of {sorted(BUILTIN_MODELS)} or a local model directory "
            f"with a config.json, got {model!r}"
        )
    values = json.loads(config.read_text(encoding="utf-8"))
    return next((int(values[k]) for k in _CONTEXT_KEYS if isinstance(values.get(k), int)), None)


def _tokenizer(spec: str, model: str) -> Any:
    from rlhf_fast.tokenizer import load_tokenizer
    from rlhf_fast.trainers.runtime import default_tokenizer_spec

    return load_tokenizer(spec or default_tokenizer_spec(model))


def _check_max_length(cfg: Any, model: str, prefix: str) -> None:
    context = context_length(model)
    if context is not None and cfg.max_length > context:
        raise OptionValueError(
            prefix + "max_length",
            f"expected at most the model's context of {context} tokens, got {cfg.max_length}",
        )


def sft_examples(cfg: Any, *, model: str = "", prefix: str = "") -> LoadedRecords[SFTExample]:
    """``cfg.data`` loaded and checked (``model``: the one SFT starts from, default ``cfg.model``)."""
    _check_max_length(cfg, model or cfg.model, prefix)
    if not cfg.data:
        raise InvalidArgumentError(f"{prefix}data: expected a path to SFT examples, got ''")
    return load_sft_examples(cfg.data, skip_invalid=cfg.skip_invalid)


def preference_pairs(
    cfg: Any, *, model: str = "", prefix: str = ""
) -> tuple[LoadedRecords[PreferencePair], Optional[LoadedRecords[PreferencePair]]]:
    """``(cfg.data, cfg.eval_data or None)`` loaded and checked."""
    _check_max_length(cfg, model or cfg.model, prefix)
    if not cfg.data:
        raise InvalidArgumentError(f"{prefix}data: expected a path to preference pairs, got ''")
    load = dict(skip_invalid=cfg.skip_invalid, identical=cfg.identical_pairs)
    pairs = load_preference_pairs(cfg.data, **load)
    return pairs, load_preference_pairs(cfg.eval_data, **load) if cfg.eval_data else None


def ppo_prompts(
    cfg: Any, *, policy: str = "", tokenizer: Optional[str] = None, prefix: str = ""
) -> LoadedRecords[str]:
    """``cfg.prompts`` loaded; each prompt (with the instruction) must leave
    ``max_new_tokens`` of the policy's context free (see the module docstring).

    ``policy``/``tokenizer``: the model the prompts will meet, by default ``cfg.policy`` and
    ``cfg.tokenizer`` (a pipeline checks against the base model before SFT has run).
    """
    from rlhf_fast.trainers.runtime import encode_text, with_instruction

    policy = policy or cfg.policy
    context = context_length(policy)
    if not cfg.prompts:
        raise InvalidArgumentError(f"{prefix}prompts: expected a path to a prompts file, got ''")
    prompts = load_prompts(cfg.prompts, field=cfg.prompt_field, skip_invalid=cfg.skip_invalid)
    if context is None:
        return prompts
    if cfg.max_new_tokens >= context:
        raise OptionValueError(
            prefix + "max_new_tokens",
            f"expected fewer than the policy's context of {context} tokens, "
            f"got {cfg.max_new_tokens}",
        )
    tok = _tokenizer(cfg.tokenizer if tokenizer is None else tokenizer, policy)
    lengths = [len(encode_text(tok, with_instruction(p, cfg.instruction))) for p in prompts]
    return drop_too_long(
        prompts,
        lengths,
        context - cfg.max_new_tokens,
        field=cfg.prompt_field,
        why=(
            f"the policy's context of {context} tokens leaves beside max_new_tokens="
            f"{cfg.max_new_tokens} (shorten it, lower max_new_tokens, or skip_invalid to drop it)"
        ),
        skip_invalid=cfg.skip_invalid,
    )


# The ``rlhf-fast sft / train-reward / ppo`` entry points: check the inputs, then train.
def run_sft(config: Any) -> dict[str, Any]:
    from rlhf_fast.trainers.sft import SFTTrainer

    return SFTTrainer(config, examples=sft_examples(config)).train()


def run_reward(config: Any) -> dict[str, Any]:
    from rlhf_fast.trainers.reward import RewardTrainer

    pairs, eval_pairs = preference_pairs(config)
    return RewardTrainer(config, pairs=pairs, eval_pairs=eval_pairs).train()


def run_ppo(config: Any) -> dict[str, Any]:
    from rlhf_fast.trainers.ppo import PPOTrainer

    return PPOTrainer(config, prompts=ppo_prompts(config)).train()
