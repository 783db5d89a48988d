"""Data-parallel training with ``torch.distributed`` (DDP), for runs launched by ``torchrun``.

    torchrun --nproc-per-node 2 -m rlhf_fast.cli sft --config sft.toml
    torchrun --nproc-per-node 2 -m rlhf_fast.cli train-reward --config reward.toml
    torchrun --nproc-per-node 2 -m rlhf_fast.cli ppo --config ppo.toml

Strictly opt-in: when ``WORLD_SIZE`` is unset or 1 every function here is a no-op (one
rank, rank 0) and the trainers behave exactly as in a single process. With
``WORLD_SIZE > 1`` the first trainer of the process joins the process group (``nccl``,
each rank on ``cuda:LOCAL_RANK``, when the device is CUDA; ``gloo`` on the CPU); the
group lives until the process exits, so ``rlhf-fast pipeline`` runs its three stages in
one group. How the trainers use it:

- batch sizes stay global: each step's batch (SFT examples, preference pairs, prompts) is
  drawn as in a single process and split by rank with :func:`shard`, so SFT and the
  reward model take the same steps on the same data as one process (up to float
  rounding, and per-rank token means in SFT);
- every rank builds its models from the same seed (and DDP broadcasts rank 0's weights);
  PPO reseeds each rollout with :func:`rank_seed`, so ranks sample different responses
  and a resumed run samples what the uninterrupted one did; advantages are whitened per
  rank;
- the trained module is wrapped in ``DistributedDataParallel`` for the update steps only;
  generation, the reference model and evaluation run on the unwrapped module;
- logged metrics are means over ranks (:func:`all_reduce_mean`); rank 0 alone writes
  checkpoints, metrics, plots and models, the others wait at a :func:`barrier`. Every
  rank reads the same checkpoint on ``--resume`` (the output directory must be shared).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from rlhf_fast.errors import InvalidArgumentError

__all__ = [
    "all_reduce_mean",
    "barrier",
    "init_distributed",
    "is_main_process",
    "per_rank",
    "rank",
    "rank_seed",
    "shard",
    "world_size",
    "wrap_ddp",
]

T = TypeVar("T")


def _launched_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InvalidArgumentError(
            f"WORLD_SIZE: expected an integer (set by torchrun), got {os.environ['WORLD_SIZE']!r}"
        ) from None


def init_distributed(device: torch.device) -> torch.device:
    """Join the ``torchrun`` process group (once per process); the device this rank uses.

    Single process (``WORLD_SIZE`` unset or 1): returns ``device`` and does nothing else.
    Otherwise a CUDA ``device`` becomes ``cuda:LOCAL_RANK`` (backend ``nccl``), a CPU one
    stays (backend ``gloo``); ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` come from the
    environment. The group is destroyed when the process exits.
    """
    if _launched_world_size() <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        atexit.register(_destroy)
    return device


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0: the process that writes files and shows progress bars."""
    return rank() == 0


def per_rank(name: str, total: int) -> int:
    """``total // world_size()``; raises when a global batch size does not split evenly."""
    n = world_size()
    if total % n:
        raise InvalidArgumentError(
            f"{name}: expected a multiple of the number of ranks ({n}) so that every rank "
            f"gets the same share, got {total}"
        )
    return total // n


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size()``-th one, from index ``rank()``.

    Deterministic and disjoint: the shards of all ranks together are ``items``.
    Equivalent to ``list(items[rank()::world_size()])``.
    """
    return list(items[rank() :: world_size()])


def all_reduce_mean(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The mean over ranks of each value (numbers or one-element tensors); every rank must
    pass the same keys.

    One collective for the whole dict (keys sorted so all ranks agree on the order).
    Single process: a plain copy.
    """
    if world_size() == 1:
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= world_size()
    return dict(zip(keys, values.tolist()))


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size() > 1:
        dist.barrier()


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` (rank 0's weights broadcast to all);
    ``module`` itself in a single process. Use the wrapper for the forward passes that are
    followed by ``backward()``, the module itself for everything else."""
    if world_size() == 1:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def _nccl() -> bool:
    return dist.get_backend() == "nccl"


def rank_seed(seed: int, step: int) -> int:
    """A seed for random sampling at ``step`` that differs between ranks (and steps)."""
    return seed * 7919 + step + 1_000_003 * rank()
