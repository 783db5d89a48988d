"""The training loop PPO, GRPO, RLOO and DPO share: seeded batch order, resume, metrics,
checkpoints.

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

__all__ = ["CheckpointState", "restore_latest", "run_loop", "save_if_due", "seeded_batch"]


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


def restore_latest(cfg: Any, state: CheckpointState) -> Optional[int]:
    """With ``cfg.resume``, load the latest checkpoint under ``output_dir/checkpoints`` into
    ``state`` and return its step; ``None`` when not resuming or there is none yet."""
    from rlhf_fast.checkpoint import latest_checkpoint, load_checkpoint

    dist.barrier()  # every rank sees the same checkpoints
    path = latest_checkpoint(Path(cfg.output_dir) / "checkpoints") if cfg.resume else None
    if path is None:
        return None
    loaded = load_checkpoint(
        path, modules=state.modules, optimizers=state.optimizers, schedulers=state.schedulers
    )
    if state.restore_extra is not None:
        state.restore_extra(loaded["extra"])
    return int(loaded["step"])


def save_if_due(cfg: Any, step: int, checkpoint_state: Callable[[], CheckpointState]) -> None:
    """Checkpoint every ``cfg.save_every`` steps and at ``cfg.max_steps``; rank 0 writes."""
    from rlhf_fast.checkpoint import save_checkpoint

    if step % cfg.save_every != 0 and step != cfg.max_steps:
        return
    state = checkpoint_state()
    # FSDP: gathered from every rank onto rank 0; otherwise the objects themselves
    modules, optimizers = dist.gather_for_checkpoint(state.modules, state.optimizers)
    if dist.is_main_process():
        save_checkpoint(
            Path(cfg.output_dir) / "checkpoints",
            step=step,
            modules=modules,
            optimizers=optimizers,
            schedulers=state.schedulers,
            extra=state.extra,
        )
    dist.barrier()


def run_loop(
    trainer: Any,
    stage: str,
    *,
    hooks: Sequence[Callable[[Any], dict[str, float]]] = (),
    hook_every: int = 0,
    postfix: Sequence[str] = (),
) -> dict[str, float]:
    """Train ``trainer`` up to ``config.max_steps``; returns the last logged metrics."""
    from rlhf_fast.metrics import MetricsLogger

    cfg = trainer.config
    if (resumed := restore_latest(cfg, trainer.checkpoint_state())) is not None:
        trainer.step = resumed
    logger = MetricsLogger(
        Path(cfg.output_dir),
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
            # FSDP: evaluations call the trained modules' parts (sampling), so full weights
            with dist.full_params(*trainer.checkpoint_state().modules.values()):
                for hook in hooks:
                    metrics.update(hook(trainer))
        metrics = dist.all_reduce_mean(metrics)
        if trainer.step % cfg.log_every == 0 or last:
            logger.log(trainer.step, metrics)
            logged = metrics
        bar.update(1)
        if postfix:
            bar.set_postfix({k.rsplit("/", 1)[-1]: f"{metrics[k]:.3f}" for k in postfix})
        save_if_due(cfg, trainer.step, trainer.checkpoint_state)
    bar.close()
    logger.close()
    return logged
