r"""DPO: the policy learns from preference pairs directly, no reward model, no sampling
(Rafailov et al. 2023); IPO (Azar et al. 2023) and hinge (SLiC, Zhao et al. 2023) losses too.

    rlhf-fast dpo --policy runs/sft/model --data prefs.jsonl --output-dir runs/dpo --beta 0.1
    torchrun --nproc-per-node 2 -m rlhf_fast.cli dpo ...   # DDP, batch_size split by rank

  1. Pairs in either form (``chosen``/``rejected`` or ``candidate_0``/``candidate_1`` +
     ``choice``); a pair with the same text twice is skipped and counted (or an error).
  2. The reference (the starting policy, frozen) scores every pair once, before training:
     the sum of its logprobs over each response's tokens is cached and the reference is
     dropped, so a step costs one forward and backward of the policy.
  3. Each step: chosen and rejected responses of ``batch_size`` pairs in one forward
     (``models.next_token_logprobs``, LM head on response positions only), then
     ``losses.dpo_loss``: with ``h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))``,
     ``-log sigmoid(beta h)``, ``(h - 1/(2 beta))^2`` or ``max(0, 1 - beta h)``.
  4. Metrics under TRL's names (``rewards/chosen``, ``rewards/rejected``,
     ``rewards/margins``, ``rewards/accuracies`` with the implicit reward
     ``beta (log pi - log ref)``), held-out ones every ``eval_every`` steps; checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import torch

from rlhf_fast.config import RunConfig, SupervisedSettings, option, redefault
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.models import (
    disable_dropout,
    frozen_copy,
    fuse_activations,
    load_causal_lm,
)
from rlhf_fast.prompt_sharing import response_logprobs
from rlhf_fast.tokenizer import load_tokenizer
from rlhf_fast.trainers import distributed as dist
from rlhf_fast.trainers.loop import CheckpointState, run_loop, seeded_batch
from rlhf_fast.trainers.losses import dpo_loss
from rlhf_fast.trainers.ppo_settings import PPOConfig
from rlhf_fast.trainers.reward import RewardConfig, RewardSettings
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

Row = tuple[list[int], int]  # (prompt + response ids, index of the first response token)


@dataclass
class DPOSettings(SupervisedSettings):
    """DPO settings of their own (``demo`` takes them as ``--dpo.*``)."""

    beta: float = option(0.1, "beta: strength of the pull towards the reference.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = option(
        "sigmoid", "'sigmoid' (DPO), 'ipo' (IPO) or 'hinge' (SLiC)."
    )
    max_steps: int = option(200, "DPO training steps.")
    batch_size: int = option(32, "Pairs per optimizer step (over all ranks).")
    learning_rate: float = redefault(SupervisedSettings, "learning_rate", 1e-5)
    warmup_steps: int = redefault(SupervisedSettings, "warmup_steps", 10)
    eval_data: str = redefault(RewardSettings, "eval_data", "")
    eval_fraction: float = redefault(RewardSettings, "eval_fraction", 0.1)
    identical_pairs: Literal["skip", "error"] = redefault(RewardSettings, "identical_pairs", "skip")
    max_length: int = redefault(RewardSettings, "max_length", 96)
    eval_every: int = redefault(RewardSettings, "eval_every", 50)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("beta", self.beta > 0, "a number > 0")
        self._require("max_steps", self.max_steps >= 1, "an integer >= 1")
        self._require("batch_size", self.batch_size >= 1, "an integer >= 1")
        self._require("eval_fraction", 0 <= self.eval_fraction < 1, "a number in [0, 1)")
        self._require("max_length", self.max_length >= 2, "an integer >= 2")
        self._require("eval_every", self.eval_every >= 1, "an integer >= 1")


@dataclass
class DPOConfig(DPOSettings, RunConfig):
    """Direct preference optimisation of a policy on preference pairs."""

    output_dir: str = redefault(RunConfig, "output_dir", "runs/dpo")
    policy: str = redefault(PPOConfig, "policy", "runs/sft/model")
    data: str = redefault(RewardConfig, "data", "")


class DPOTrainer:
    """Owns the policy, the cached reference logprobs, the optimizer and the pairs."""

    stage = "dpo"

    def __init__(
        self,
        config: DPOConfig,
        pairs: Optional[Sequence[Any]] = None,
        eval_pairs: Optional[Sequence[Any]] = None,
    ) -> None:
        cfg = self.config = config
        self.device = dist.init_distributed(resolve_device(cfg.device))
        self.batch_size = dist.per_rank("batch_size", cfg.batch_size)
        seed_everything(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.tokenizer or default_tokenizer_spec(cfg.policy))
        self.policy = fuse_activations(load_causal_lm(cfg.policy, self.tokenizer, seed=cfg.seed))
        disable_dropout(self.policy)
        self.policy.to(self.device)
        if pairs is None:
            from rlhf_fast.data import load_preference_pairs

            if not cfg.data:
                raise InvalidArgumentError("data: expected a path to preference pairs, got ''")
            load = dict(skip_invalid=cfg.skip_invalid, identical=cfg.identical_pairs)
            pairs = load_preference_pairs(cfg.data, **load)
            if cfg.eval_data:
                eval_pairs = load_preference_pairs(cfg.eval_data, **load)
        self.n_skipped = skipped_count(pairs, eval_pairs)
        if eval_pairs is None:
            n_eval = int(round(len(pairs) * cfg.eval_fraction))
            pairs, eval_pairs = pairs[: len(pairs) - n_eval], pairs[len(pairs) - n_eval :]
        if len(pairs) == 0:
            raise InvalidArgumentError("data: expected at least one training pair, got none")
        for i, pair in enumerate([*pairs, *eval_pairs]):
            if pair.chosen == pair.rejected:  # pairs given in code skip the loader's check
                raise InvalidArgumentError(
                    f"pairs: pair {i} has the same chosen and rejected text {pair.chosen!r}; "
                    "it teaches nothing (remove it)"
                )
        self.train_rows = [self._encode(p) for p in pairs]  # (chosen row, rejected row)
        self.eval_rows = [self._encode(p) for p in eval_pairs]
        # The reference scores every pair once; then it is no longer needed.
        reference = frozen_copy(self.policy)
        self.ref_train = self._cached(reference, self.train_rows)  # (N, 2): chosen, rejected
        self.ref_eval = self._cached(reference, self.eval_rows)
        del reference
        # for the update steps (DDP or FSDP), after the reference was copied from the policy
        self.ddp_policy = dist.wrap_trained(self.policy, self.device, fsdp=cfg.fsdp)
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(),
            lr=cfg.learning_rate * cfg.lr_multiplier,
            weight_decay=cfg.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.warmup_steps, cfg.max_steps)
        )
        self.step = 0

    # ------------------------------------------------------------------ data
    def _encode(self, pair: Any) -> tuple[Row, Row]:
        prompt = encode_text(self.tokenizer, with_instruction(pair.prompt, self.config.instruction))

        def row(response: str) -> Row:
            ids = prompt + encode_text(self.tokenizer, response, add_eos=True, continuation=True)
            cut = max(0, len(ids) - self.config.max_length)  # keep the end: the response
            return ids[cut:], max(len(prompt) - cut, 1)

        return row(pair.chosen), row(pair.rejected)

    def sequence_logprobs(self, model: torch.nn.Module, rows: Sequence[Row]) -> torch.Tensor:
        """Sum of ``model``'s logprobs over each row's response tokens, ``[N]`` float32.

        Rows with the same prompt (a pair's chosen and rejected) share one forward of it
        (``prompt_sharing``). When the responses' lengths differ enough, the prompts go in two
        forwards, short responses apart from long ones, so that less of the batch is padding
        (the sums, and their gradients, are those of one forward)."""
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for i, (ids, start) in enumerate(rows):
            by_prompt.setdefault(tuple(ids[:start]), []).append(i)
        groups = sorted(
            by_prompt.items(), key=lambda g: max(len(rows[i][0]) - rows[i][1] for i in g[1])
        )
        parts = [groups]
        # One forward per backward under DDP / FSDP: their hooks expect that.
        if dist.world_size() == 1 and len(groups) >= 4 and _padding_saved(rows, groups) >= 0.1:
            parts = [groups[: len(groups) // 2], groups[len(groups) // 2 :]]
        out = torch.zeros(len(rows), device=self.device)
        for part in parts:
            index = [i for _, members in part for i in members]
            out = out.index_put(
                (torch.tensor(index, device=self.device),), self._summed(model, rows, part)
            )
        return out

    def _summed(
        self,
        model: torch.nn.Module,
        rows: Sequence[Row],
        groups: Sequence[tuple[tuple[int, ...], list[int]]],
    ) -> torch.Tensor:
        """Logprob sums of the rows of ``groups`` (prompt, row numbers), in that order."""
        pad = self.tokenizer.pad_token_id
        prompts, prompt_mask = pad_rows([list(p) for p, _ in groups], pad, side="left")  # (P, Lq)
        prompt_of = torch.tensor([g for g, (_, members) in enumerate(groups) for _ in members])
        responses, response_mask = pad_rows(
            [rows[i][0][rows[i][1] :] for _, members in groups for i in members], pad
        )  # (N, T)
        inputs = (prompts, prompt_mask, prompt_of, responses, response_mask)
        with autocast(self.device, self.config.bf16_autocast):
            logprobs = response_logprobs(model, *(x.to(self.device) for x in inputs))
        return logprobs.sum(-1)

    @torch.no_grad()
    def _cached(self, model: torch.nn.Module, pairs: Sequence[tuple[Row, Row]]) -> torch.Tensor:
        """``(N, 2)`` sums of ``model``'s logprobs, chosen and rejected; 128 pairs at a time,
        in length order so that each chunk pads little."""
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0][0]) + len(pairs[i][1][0]))
        out = torch.zeros((len(pairs), 2), device=self.device)
        for i in range(0, len(order), 128):
            index = order[i : i + 128]
            chunk = [pairs[j] for j in index]
            logps = self.sequence_logprobs(model, [c for c, _ in chunk] + [r for _, r in chunk])
            out[torch.tensor(index, device=self.device)] = logps.view(2, -1).T
        return out

    # ------------------------------------------------------------------ loss and step
    def loss_on(
        self, model: torch.nn.Module, rows: Sequence[tuple[Row, Row]], ref: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of pairs ``rows`` (chosen and rejected in one forward) and their metrics."""
        logps = self.sequence_logprobs(model, [c for c, _ in rows] + [r for _, r in rows])
        chosen, rejected = logps[: len(rows)], logps[len(rows) :]  # (B,) each
        loss, r_chosen, r_rejected = dpo_loss(
            chosen, rejected, ref[:, 0], ref[:, 1], self.config.beta, self.config.loss_type
        )
        return loss, {
            "loss": loss.item(),
            "rewards/chosen": r_chosen.mean().item(),
            "rewards/rejected": r_rejected.mean().item(),
            "rewards/margins": (r_chosen - r_rejected).mean().item(),
            "rewards/accuracies": (r_chosen > r_rejected).float().mean().item(),
            "logps/chosen": chosen.mean().item(),
            "logps/rejected": rejected.mean().item(),
        }

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        indices = dist.shard(
            seeded_batch(len(self.train_rows), cfg.batch_size, self.step, cfg.seed)
        )
        self.policy.train()
        loss, stats = self.loss_on(
            self.ddp_policy, [self.train_rows[i] for i in indices], self.ref_train[indices]
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        metrics = {f"train/{k}": v for k, v in stats.items()}
        metrics["train/learning_rate"] = self.scheduler.get_last_lr()[0]
        if (self.step + 1) % cfg.eval_every == 0 or self.step + 1 == cfg.max_steps:
            metrics.update(self.evaluate())
        return metrics

    @torch.no_grad()
    def evaluate(self, batch_size: int = 128) -> dict[str, float]:
        """Held-out loss, implicit-reward accuracy and margin (means over the pairs)."""
        if not self.eval_rows:
            return {}
        self.policy.eval()
        totals: dict[str, float] = {}
        with dist.full_params(self.policy):  # FSDP: the logprobs call the policy's parts
            for i in range(0, len(self.eval_rows), batch_size):
                rows = self.eval_rows[i : i + batch_size]
                _, stats = self.loss_on(self.policy, rows, self.ref_eval[i : i + batch_size])
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v * len(rows)
        return {f"eval/{k}": v / len(self.eval_rows) for k, v in totals.items()}

    # ------------------------------------------------------------------ the loop
    def checkpoint_state(self) -> CheckpointState:
        return CheckpointState(
            {"policy": self.policy}, {"optimizer": self.optimizer}, {"scheduler": self.scheduler}
        )

    def train(
        self, hooks: Sequence[Callable[[Any], dict[str, float]]] = (), hook_every: int = 0
    ) -> dict[str, Any]:
        """Run up to ``max_steps`` (resuming when asked), save the policy; a summary dict."""
        metrics = run_loop(
            self, self.stage, hooks=hooks, hook_every=hook_every, postfix=("train/loss",)
        )
        policy_dir = Path(self.config.output_dir) / "policy"
        policy = dist.full_model(self.policy)  # FSDP: gathered from every rank onto rank 0
        if dist.is_main_process():
            policy.save_pretrained(policy_dir)
            self.tokenizer.save_pretrained(policy_dir)
        dist.barrier()
        return {
            "stage": self.stage,
            "n_skipped_records": self.n_skipped,
            "steps": self.step,
            "n_train_pairs": len(self.train_rows),
            "n_eval_pairs": len(self.eval_rows),
            "policy_dir": str(policy_dir),
            **{k: v for k, v in metrics.items() if k.startswith("eval/")},
        }


def run_dpo(config: DPOConfig) -> dict[str, Any]:
    """The CLI entry point of ``rlhf-fast dpo``: train and return a summary dict."""
    from rlhf_fast.preflight import preference_pairs

    pairs, eval_pairs = preference_pairs(config, model=config.policy)
    return DPOTrainer(config, pairs=pairs, eval_pairs=eval_pairs).train()


def _padding_saved(
    rows: Sequence[Row], groups: Sequence[tuple[tuple[int, ...], list[int]]]
) -> float:
    """Share of padded response slots that two forwards (``groups`` sorted by length, split in
    half) save over one."""

    def slots(part: Sequence[tuple[tuple[int, ...], list[int]]]) -> int:
        lengths = [len(rows[i][0]) - rows[i][1] for _, members in part for i in members]
        return max(lengths) * len(lengths)

    half = len(groups) // 2
    whole = slots(groups)
    return (whole - slots(groups[:half]) - slots(groups[half:])) / whole
