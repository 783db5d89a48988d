"""Reward model: Bradley-Terry loss on preference pairs, accuracy on held-out pairs.

    rlhf-fast train-reward --model runs/sft/model --data prefs.jsonl --output-dir runs/rm
    torchrun --nproc-per-node 2 -m rlhf_fast.cli train-reward ...   # DDP, batch_size split by rank

Loss per pair: ``-log sigmoid(r(x, y_chosen) - r(x, y_rejected) - margin)``. The trunk
starts from ``model`` (usually the SFT model), the scalar head is new and reads the
last token (the ``<eos>`` appended to every response, as the policy writes it). Held-out
pairs come from ``eval_data`` or, when that is empty, the last ``eval_fraction`` of ``data``.
At the end the mean and std of the scores on held-out responses are stored with the model
so PPO can normalise them. Writes ``output_dir/model``, metrics and checkpoints.
On several ranks each one evaluates the whole held-out split (the weights are the same).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from tqdm.auto import tqdm

from rlhf_fast.config import RunConfig, SupervisedSettings, option, redefault
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import RewardModel, load_causal_lm
from rlhf_fast.tokenizer import load_tokenizer
from rlhf_fast.trainers import distributed as dist
from rlhf_fast.trainers.loop import CheckpointState, restore_latest, save_if_due, seeded_batch
from rlhf_fast.trainers.losses import bradley_terry_loss
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
from rlhf_fast.trainers.sft import lr_lambda


@dataclass
class RewardSettings(SupervisedSettings):
    """Reward-model settings of their own (``pipeline`` and ``demo`` take them as ``--reward.*``)."""

    eval_data: str = option("", "Held-out pairs; empty: split eval_fraction off data.")
    eval_fraction: float = option(0.1, "Share of data held out when eval_data is empty.")
    identical_pairs: Literal["skip", "error"] = option(
        "skip",
        "Pairs whose chosen and rejected texts are the same teach nothing: skip them "
        "(counted in n_skipped_records) or stop with an error naming the file and line.",
    )
    max_steps: int = option(300, "Reward-model training steps.")
    batch_size: int = option(32, "Pairs per optimizer step (over all ranks).")
    learning_rate: float = redefault(SupervisedSettings, "learning_rate", 5e-4)
    margin: float = option(0.0, "Margin m in -log sigmoid(r_w - r_l - m).")
    max_length: int = option(
        96, "Longest prompt + response in tokens (longer ones keep their end)."
    )
    eval_every: int = option(
        100, "Evaluate held-out accuracy every this many steps (and at the end)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("eval_fraction", 0 <= self.eval_fraction < 1, "a number in [0, 1)")
        self._require("max_steps", self.max_steps >= 1, "an integer >= 1")
        self._require("batch_size", self.batch_size >= 1, "an integer >= 1")
        self._require("max_length", self.max_length >= 2, "an integer >= 2")
        self._require("eval_every", self.eval_every >= 1, "an integer >= 1")


@dataclass
class RewardConfig(RewardSettings, RunConfig):
    """Bradley-Terry reward model training on preference pairs."""

    output_dir: str = redefault(RunConfig, "output_dir", "runs/reward")
    model: str = option(
        "tiny-gpt2",
        "Trunk to start from: a local causal-LM directory (e.g. the SFT model) or a built-in name.",
    )
    data: str = option(
        "",
        "Preference pairs: JSONL or Parquet, {prompt, chosen, rejected} or "
        "{prompt, candidate_0, candidate_1, choice}.",
    )


class RewardTrainer:
    """Owns the reward model, optimizer and pairs of one run; ``train()`` runs it."""

    def __init__(
        self,
        config: RewardConfig,
        pairs: Optional[list[Any]] = None,
        eval_pairs: Optional[list[Any]] = None,
    ) -> None:
        if config.max_steps < 1 or config.batch_size < 1:
            raise InvalidArgumentError(
                f"max_steps, batch_size: expected >= 1, got {config.max_steps}, {config.batch_size}"
            )
        self.config = config
        self.device = dist.init_distributed(resolve_device(config.device))
        dist.per_rank("batch_size", config.batch_size)
        seed_everything(config.seed)
        self.tokenizer = load_tokenizer(config.tokenizer or default_tokenizer_spec(config.model))
        lm = load_causal_lm(config.model, self.tokenizer, seed=config.seed)
        self.model = RewardModel.from_causal_lm(lm).to(self.device)
        # for the update steps (DDP or FSDP)
        self.ddp_model = dist.wrap_trained(self.model, self.device, fsdp=config.fsdp)
        if pairs is None:
            from rlhf_fast.data import load_preference_pairs

            if not config.data:
                raise InvalidArgumentError("data: expected a path to preference pairs, got ''")
            load = dict(skip_invalid=config.skip_invalid, identical=config.identical_pairs)
            pairs = load_preference_pairs(config.data, **load)
            if config.eval_data:
                eval_pairs = load_preference_pairs(config.eval_data, **load)
        self.n_skipped = skipped_count(pairs, eval_pairs)
        if eval_pairs is None:
            n_eval = int(round(len(pairs) * config.eval_fraction))
            pairs, eval_pairs = pairs[: len(pairs) - n_eval], pairs[len(pairs) - n_eval :]
        if len(pairs) == 0:
            raise InvalidArgumentError("data: expected at least one training pair, got none")
        self.train_rows = [self._encode(p) for p in pairs]  # (chosen ids, rejected ids)
        self.eval_rows = [self._encode(p) for p in eval_pairs]
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.learning_rate * config.lr_multiplier,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config.warmup_steps, config.max_steps)
        )
        self.step = 0

    def _encode(self, pair: Any) -> tuple[list[int], list[int]]:
        prompt = encode_text(self.tokenizer, with_instruction(pair.prompt, self.config.instruction))

        def row(response: str) -> list[int]:
            ids = prompt + encode_text(self.tokenizer, response, add_eos=True, continuation=True)
            return ids[-self.config.max_length :]

        return row(pair.chosen), row(pair.rejected)

    def scores_of(
        self, rows: list[list[int]], model: Optional[torch.nn.Module] = None
    ) -> torch.Tensor:
        """Reward-model scores ``[N]`` of token rows (right-padded into one batch) by ``model``,
        by default the plain reward model."""
        ids, mask = pad_rows(rows, self.tokenizer.pad_token_id)
        with autocast(self.device, self.config.bf16_autocast):
            return (model or self.model)(ids.to(self.device), mask.to(self.device))

    @torch.no_grad()
    def evaluate(self, batch_size: int = 256) -> dict[str, float]:
        """Held-out pairwise accuracy (ties count half), loss, and score mean/std."""
        if not self.eval_rows:
            return {}
        self.model.eval()
        chosen, rejected = [], []
        for i in range(0, len(self.eval_rows), batch_size):
            chunk = self.eval_rows[i : i + batch_size]
            scores = self.scores_of([c for c, _ in chunk] + [r for _, r in chunk])
            chosen.append(scores[: len(chunk)])
            rejected.append(scores[len(chunk) :])
        self.model.train()
        c, r = torch.cat(chosen), torch.cat(rejected)
        both = torch.cat([c, r])
        return {
            "eval/accuracy": ((c > r).float() + 0.5 * (c == r).float()).mean().item(),
            "eval/loss": bradley_terry_loss(c, r).item(),
            "eval/score_mean": both.mean().item(),
            "eval/score_std": both.std().item(),
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
            "reward",
            tensorboard=cfg.tensorboard,
            resume_step=self.step if cfg.resume else None,
            enabled=dist.is_main_process(),
        )
        self.model.train()
        eval_stats: dict[str, float] = {}
        t0 = time.perf_counter()
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc="reward",
            disable=not cfg.progress or not dist.is_main_process(),
        )
        while self.step < cfg.max_steps:
            order = seeded_batch(len(self.train_rows), cfg.batch_size, self.step, cfg.seed)
            batch = [self.train_rows[i] for i in dist.shard(order)]
            scores = self.scores_of(
                [c for c, _ in batch] + [r for _, r in batch], self.ddp_model
            )  # (2B,)
            chosen, rejected = scores[: len(batch)], scores[len(batch) :]
            loss = bradley_terry_loss(chosen, rejected, cfg.margin or None)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            bar.update(1)
            metrics: dict[str, float] = {}
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                metrics.update(
                    {
                        "train/loss": loss.item(),
                        "train/accuracy": (chosen > rejected).float().mean().item(),
                        "train/margin": (chosen - rejected).mean().item(),
                        "train/learning_rate": self.scheduler.get_last_lr()[0],
                        "perf/pairs_per_second": self.step
                        * cfg.batch_size
                        / (time.perf_counter() - t0),
                    }
                )
            if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                eval_stats = self.evaluate()
                metrics.update(eval_stats)
                bar.set_postfix(acc=f"{eval_stats.get('eval/accuracy', float('nan')):.3f}")
            if metrics:
                logger.log(self.step, dist.all_reduce_mean(metrics))
            save_if_due(cfg, self.step, self.checkpoint_state)
        bar.close()
        logger.close()
        if not eval_stats:
            eval_stats = self.evaluate()
        self.model.score_mean = eval_stats.get("eval/score_mean", 0.0)
        self.model.score_std = max(eval_stats.get("eval/score_std", 1.0), 1e-6)
        model_dir = out / "model"
        model = dist.full_model(self.model)  # FSDP: gathered from every rank onto rank 0
        if dist.is_main_process():
            model.save_pretrained(model_dir)
            self.tokenizer.save_pretrained(model_dir)
        dist.barrier()  # the next stage may read the model
        return {
            "stage": "reward",
            "n_skipped_records": self.n_skipped,
            "steps": self.step,
            "eval_accuracy": eval_stats.get("eval/accuracy", float("nan")),
            "eval_loss": eval_stats.get("eval/loss", float("nan")),
            "n_train_pairs": len(self.train_rows),
            "n_eval_pairs": len(self.eval_rows),
            "model_dir": str(model_dir),
        }


def run_reward(config: RewardConfig) -> dict[str, Any]:
    """The CLI entry point of ``rlhf-fast train-reward``: train and return a summary dict."""
    return RewardTrainer(config).train()
