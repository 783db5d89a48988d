"""Supervised fine-tuning: next-token loss on the response tokens only.

    rlhf-fast sft --model tiny-gpt2 --tokenizer demo-words --data sft.jsonl --output-dir runs/sft
    torchrun --nproc-per-node 2 -m rlhf_fast.cli sft ...   # DDP, batch_size split by rank

Each example ``{prompt, response}`` becomes ``prompt + response + <eos>``; the loss is the
mean negative log-likelihood of the response tokens (and the ``<eos>``), prompt tokens are
context only. Writes ``output_dir/model`` (a ``transformers`` directory with the tokenizer),
metrics under ``output_dir/metrics``, and checkpoints under ``output_dir/checkpoints``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from rlhf_fast.config import RunConfig, SupervisedSettings, option, redefault
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import load_causal_lm, token_logprobs
from rlhf_fast.tokenizer import load_tokenizer
from rlhf_fast.trainers import distributed as dist
from rlhf_fast.trainers.loop import CheckpointState, restore_latest, save_if_due, seeded_batch
from rlhf_fast.trainers.runtime import (
    autocast,
    default_tokenizer_spec,
    encode_text,
    pad_rows,
    resolve_device,
    seed_everything,
    skipped_count,
    with_instruction,
)


@dataclass
class SFTSettings(SupervisedSettings):
    """SFT settings of their own (``pipeline`` and ``demo`` take them as ``--sft.*``)."""

    max_steps: int = option(400, "Optimizer steps.")
    batch_size: int = option(32, "Examples per optimizer step (over all ranks).")
    max_length: int = option(
        96, "Longest prompt + response in tokens (longer ones keep their start)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("max_steps", self.max_steps >= 1, "an integer >= 1")
        self._require("batch_size", self.batch_size >= 1, "an integer >= 1")
        self._require("max_length", self.max_length >= 2, "an integer >= 2")


@dataclass
class SFTConfig(SFTSettings, RunConfig):
    """Supervised fine-tuning of a causal LM on ``{prompt, response}`` examples."""

    output_dir: str = redefault(RunConfig, "output_dir", "runs/sft")
    model: str = option(
        "tiny-gpt2",
        "Built-in model name (tiny-gpt2, tiny-gpt2-wide, small-gpt2) or a local model directory.",
    )
    data: str = option("", "SFT examples: a JSONL or Parquet file of {prompt, response} records.")


def lr_lambda(warmup_steps: int, max_steps: int):
    """Linear warm-up to 1, then cosine decay to 0.1 at ``max_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class SFTTrainer:
    """Owns the model, optimizer and data of one SFT run; ``train()`` runs it."""

    def __init__(self, config: SFTConfig, examples: Optional[list[Any]] = None) -> None:
        if config.max_steps < 1 or config.batch_size < 1:
            raise InvalidArgumentError(
                f"max_steps, batch_size: expected >= 1, got {config.max_steps}, {config.batch_size}"
            )
        self.config = config
        self.device = dist.init_distributed(resolve_device(config.device))
        dist.per_rank("batch_size", config.batch_size)
        seed_everything(config.seed)
        self.tokenizer = load_tokenizer(config.tokenizer or default_tokenizer_spec(config.model))
        self.model = load_causal_lm(config.model, self.tokenizer, seed=config.seed).to(self.device)
        # for the update steps (DDP or FSDP)
        self.ddp_model = dist.wrap_trained(self.model, self.device, fsdp=config.fsdp)
        if examples is None:
            from rlhf_fast.data import load_sft_examples

            if not config.data:
                raise InvalidArgumentError("data: expected a path to SFT examples, got ''")
            examples = load_sft_examples(config.data, skip_invalid=config.skip_invalid)
        self.n_skipped = skipped_count(examples)
        if len(examples) == 0:
            raise InvalidArgumentError("data: expected at least one SFT example, got none")
        self.rows = [self._encode(ex) for ex in examples]  # (ids, first response index)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.learning_rate * config.lr_multiplier,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config.warmup_steps, config.max_steps)
        )
        self.step = 0

    def _encode(self, example: Any) -> tuple[list[int], int]:
        prompt = with_instruction(example.prompt, self.config.instruction)
        prompt_ids = encode_text(self.tokenizer, prompt)
        response_ids = encode_text(
            self.tokenizer, example.response, add_eos=True, continuation=True
        )
        ids = (prompt_ids + response_ids)[: self.config.max_length]
        return ids, min(len(prompt_ids), len(ids))

    def loss_on(
        self, indices: list[int], model: Optional[torch.nn.Module] = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean response-token NLL of the rows ``indices`` and token accuracy (``model``:
        the module to run, by default the plain model)."""
        rows = [self.rows[i] for i in indices]
        ids, mask = pad_rows([r[0] for r in rows], self.tokenizer.pad_token_id)  # (B, T)
        target_mask = mask.clone()
        for b, (_, start) in enumerate(rows):
            target_mask[b, :start] = 0  # prompt tokens are context, not targets
        ids, mask, target_mask = (
            ids.to(self.device),
            mask.to(self.device),
            target_mask.to(self.device),
        )
        with autocast(self.device, self.config.bf16_autocast):
            logits = (model or self.model)(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        logp = token_logprobs(logits[:, :-1], ids[:, 1:])  # (B, T-1): log p(token t+1 | <= t)
        weights = target_mask[:, 1:].float()
        n_tokens = weights.sum().clamp(min=1.0)
        loss = -(logp * weights).sum() / n_tokens
        with torch.no_grad():
            correct = (logits[:, :-1].argmax(-1) == ids[:, 1:]).float()
            accuracy = (correct * weights).sum() / n_tokens
        return loss, {
            "loss": loss.item(),
            "token_accuracy": accuracy.item(),
            "tokens": n_tokens.item(),
        }

    def checkpoint_state(self) -> CheckpointState:
        """What a checkpoint holds: weights, optimizer, LR schedule (and the run's config)."""
        return CheckpointState(
            modules={"model": self.model},
            optimizers={"optimizer": self.optimizer},
            schedulers={"scheduler": self.scheduler},
            extra={"config": asdict(self.config)},
        )

    def train(self) -> dict[str, Any]:
        from rlhf_fast.metrics import MetricsLogger

        cfg, out = self.config, Path(self.config.output_dir)
        if (resumed := restore_latest(cfg, self.checkpoint_state())) is not None:
            self.step = resumed
        logger = MetricsLogger(
            out,
            "sft",
            tensorboard=cfg.tensorboard,
            resume_step=self.step if cfg.resume else None,
            enabled=dist.is_main_process(),
        )
        self.model.train()
        logged: dict[str, float] = {}
        t0, tokens = time.perf_counter(), 0.0
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc="sft",
            disable=not cfg.progress or not dist.is_main_process(),
        )
        while self.step < cfg.max_steps:
            order = seeded_batch(len(self.rows), cfg.batch_size, self.step, cfg.seed)
            loss, stats = self.loss_on(dist.shard(order), self.ddp_model)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).item()
                if cfg.grad_clip > 0
                else 0.0
            )
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            tokens += stats["tokens"]
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                elapsed = time.perf_counter() - t0
                logged = dist.all_reduce_mean(
                    {
                        "train/loss": stats["loss"],
                        "train/token_accuracy": stats["token_accuracy"],
                        "train/grad_norm": grad_norm,
                        "train/learning_rate": self.scheduler.get_last_lr()[0],
                        "perf/tokens_per_second": tokens / max(elapsed, 1e-9),
                    }
                )
                logger.log(self.step, logged)
                bar.set_postfix(loss=f"{logged['train/loss']:.3f}")
            save_if_due(cfg, self.step, self.checkpoint_state)
        bar.close()
        logger.close()
        model_dir = out / "model"
        model = dist.full_model(self.model)  # FSDP: gathered from every rank onto rank 0
        if dist.is_main_process():
            model.save_pretrained(model_dir)
            self.tokenizer.save_pretrained(model_dir)
        dist.barrier()  # the next stage may read the model
        return {
            "stage": "sft",
            "n_skipped_records": self.n_skipped,
            "steps": self.step,
            "final_loss": logged.get("train/loss", float("nan")),
            "token_accuracy": logged.get("train/token_accuracy", float("nan")),
            "model_dir": str(model_dir),
        }


def run_sft(config: SFTConfig) -> dict[str, Any]:
    """The CLI entry point of ``rlhf-fast sft``: train and return a summary dict."""
    return SFTTrainer(config).train()
