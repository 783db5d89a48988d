"""The training loop GRPO, RLOO and DPO share: seeded batch order, resume, metrics, checkpoints.

A trainer hands ``run_loop`` itself; the loop reads

- ``config``: a stage config (``max_steps``, ``log_every``, ``save_every``, ``output_dir``,
  ``resume``, ``tensorboard``, ``progress``);
- ``step``: optimizer steps done so far (the loop advances it);
- ``train_step() -> dict``: one step, its metrics;
- ``checkpoint_state() -> CheckpointState``: what a checkpoint holds and restores.

and calls ``hooks`` (``f(trainer) -> dict``, e.g. an evaluation of the policy) every
``hook_every`` steps and at the end, their metrics logged with the step's. Rank 0 alone
writes; every rank takes the same steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from rlhf_fast.trainers import distributed as dist

__all__ = ["CheckpointState", "run_loop", "seeded_batch"]


def seeded_batch(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of batch ``step`` out of ``n`` items: consecutive slices of one seeded
    permutation per epoch, so a resumed run sees the same batches as an unbroken one.

    Equivalent to concatenating ``randperm(n, seed * 7919 + epoch)`` for epochs 0, 1, ...
    and taking items ``[step * batch_size, (step + 1) * batch_size)``.
    """
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(step * batch_size + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return out


@dataclass
class CheckpointState:
    """The objects a checkpoint saves and a resumed run restores, by name."""

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # JSON values saved in state.json
    restore_extra: Optional[Callable[[dict[str, Any]], None]] = None


def run_loop(
    trainer: Any,
    stage: str,
    *,
    hooks: Sequence[Callable[[Any], dict[str, float]]] = (),
    hook_every: int = 0,
    postfix: Sequence[str] = (),
) -> dict[str, float]:
    """Train ``trainer`` up to ``config.max_steps``; returns the last logged metrics."""
    from rlhf_fast.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from rlhf_fast.metrics import MetricsLogger

    cfg = trainer.config
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    state = trainer.checkpoint_state()
    dist.barrier()  # every rank sees the same checkpoints
    if cfg.resume and (path := latest_checkpoint(ckpt_dir)) is not None:
        loaded = load_checkpoint(
            path, modules=state.modules, optimizers=state.optimizers, schedulers=state.schedulers
        )
        trainer.step = loaded["step"]
        if state.restore_extra is not None:
            state.restore_extra(loaded["extra"])
    logger = MetricsLogger(
        out,
        stage,
        tensorboard=cfg.tensorboard,
        resume_step=trainer.step if cfg.resume else None,
        enabled=dist.is_main_process(),
    )
    bar = tqdm(
        total=cfg.max_steps,
        initial=trainer.step,
        desc=stage,
        disable=not cfg.progress or not dist.is_main_process(),
    )
    logged: dict[str, float] = {}
    train_seconds = 0.0  # in train steps only, hooks not counted
    while trainer.step < cfg.max_steps:
        t0 = time.perf_counter()
        metrics = trainer.train_step()
        trainer.step += 1
        metrics["perf/seconds_per_step"] = time.perf_counter() - t0
        train_seconds += metrics["perf/seconds_per_step"]
        metrics["perf/train_seconds"] = train_seconds
        last = trainer.step == cfg.max_steps
        if hooks and (last or (hook_every and trainer.step % hook_every == 0)):
            for hook in hooks:
                metrics.update(hook(trainer))
        metrics = dist.all_reduce_mean(metrics)
        if trainer.step % cfg.log_every == 0 or last:
            logger.log(trainer.step, metrics)
            logged = metrics
        bar.update(1)
        if postfix:
            bar.set_postfix({k.rsplit("/", 1)[-1]: f"{metrics[k]:.3f}" for k in postfix})
        if trainer.step % cfg.save_every == 0 or last:
            state = trainer.checkpoint_state()
            if dist.is_main_process():
                save_checkpoint(
                    ckpt_dir,
                    step=trainer.step,
                    modules=state.modules,
                    optimizers=state.optimizers,
                    schedulers=state.schedulers,
                    extra=state.extra,
                )
            dist.barrier()
    bar.close()
    logger.close()
    return logged
