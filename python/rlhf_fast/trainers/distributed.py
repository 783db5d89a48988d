"""Data-parallel training with ``torch.distributed`` (DDP or FSDP), for runs under ``torchrun``.

    torchrun --nproc-per-node 2 -m rlhf_fast.cli sft --config sft.toml
    torchrun --nproc-per-node 2 -m rlhf_fast.cli train-reward --config reward.toml
    torchrun --nproc-per-node 2 -m rlhf_fast.cli ppo --config ppo.toml

Strictly opt-in: when ``WORLD_SIZE`` is unset or 1 every function here is a no-op (one
rank, rank 0; ``--fsdp`` aside, see below) and the trainers behave exactly as in a single
process. With
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
- with ``--fsdp`` (:func:`wrap_trained`) it is sharded instead (FSDP2's ``fully_shard``:
  each transformer block, then the whole module), so each rank holds ``1/world_size`` of
  its weights, gradients and optimizer state. Forward passes through the module gather
  the weights block by block; generation and evaluation, which call its parts (trunk, LM
  head, value head) directly, run inside :func:`full_params`. Checkpoints and saved models
  are gathered onto rank 0 (:func:`gather_for_checkpoint`, :func:`full_model`) and have
  the same files as without FSDP, so either kind of run resumes from the other's. In a
  single process ``--fsdp`` joins a group of one and shards nothing away (the same code
  path, for trying a setup out);
- logged metrics are means over ranks (:func:`all_reduce_mean`); rank 0 alone writes
  checkpoints, metrics, plots and models, the others wait at a :func:`barrier`. Every
  rank reads the same checkpoint on ``--resume`` (the output directory must be shared).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import os
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional, TypeVar

import torch
import torch.distributed as dist

from rlhf_fast.errors import InvalidArgumentError

__all__ = [
    "all_reduce_mean",
    "barrier",
    "full_model",
    "full_params",
    "gather_for_checkpoint",
    "init_distributed",
    "is_sharded",
    "load_full_optimizer_state",
    "load_full_state",
    "is_main_process",
    "per_rank",
    "rank",
    "rank_seed",
    "shard",
    "transformer_blocks",
    "world_size",
    "wrap_ddp",
    "wrap_trained",
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


# --------------------------------------------------------------------------- FSDP
# A sharded module -> a copy of it whose parameters live on the meta device (no memory):
# the skeleton that full_model() fills with the gathered weights, so that a checkpoint or
# saved model is written by the module's own (non-FSDP) code.
_SKELETONS: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = (
    weakref.WeakKeyDictionary()
)


class _FullForward(torch.nn.Module):
    """The trained module as ``wrap_trained`` hands it out under FSDP: every call goes
    through the sharded module's own forward, where FSDP gathers the weights and hooks the
    gradient reduction. Like the DDP wrapper it hides the module's parts (``causal_lm_parts``
    sees no LM head), so callers cannot reach past the root's forward by accident."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            # FSDP warns that an in-place op on an output that is a view (a slice of the
            # logits or hidden states) would skip its backward hook; the trainers only read
            # their outputs.
            warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* view tensor")
            return self.module(*args, **kwargs)


def transformer_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost repeated blocks of ``module``: FSDP's unit of sharding.

    Blocks are the modules whose class a ``transformers`` model lists in
    ``_no_split_modules`` (``GPT2Block``, ``LlamaDecoderLayer``, ...), else the entries of
    a ``ModuleList`` named ``layers``, ``h`` or ``blocks`` (``model.layers``,
    ``transformer.h``, ``gpt_neox.layers``). Empty when there are none.
    """
    block_names: set[str] = set()
    for m in module.modules():
        block_names.update(getattr(m, "_no_split_modules", None) or ())
    blocks: list[torch.nn.Module] = []
    inside: set[int] = set()  # ids of the modules within a block already taken
    for name, m in module.named_modules():
        if id(m) in inside:
            continue
        if block_names:
            is_block = type(m).__name__ in block_names
        else:  # entry "<...>.layers.3": its parent is a ModuleList with one of those names
            *_, list_name, index = ["", *name.split(".")]
            parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else None
            is_block = (
                isinstance(parent, torch.nn.ModuleList)
                and index.isdigit()
                and list_name in ("layers", "h", "blocks")
            )
        if is_block:
            blocks.append(m)
            inside.update(id(sub) for sub in m.modules())
    return blocks


def wrap_trained(module: torch.nn.Module, device: torch.device, *, fsdp: bool) -> torch.nn.Module:
    """The module to run forward passes followed by ``backward()`` with: ``module`` itself in
    a single process, ``module`` wrapped in DDP (:func:`wrap_ddp`) on several ranks, and with
    ``fsdp`` ``module`` sharded in place by FSDP2 (each transformer block, then the rest)
    behind a thin wrapper. Call it after every copy of ``module`` (the reference) is made.

    Under FSDP, ``module``'s own parameters are shards from then on: run its parts inside
    :func:`full_params`, save it with :func:`full_model` and checkpoints through
    :func:`gather_for_checkpoint`; a plain forward of ``module`` itself works as usual.
    """
    if not fsdp:
        return wrap_ddp(module, device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():  # one process: a group of one, the same code path
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        atexit.register(_destroy)
    # Parameters map to meta tensors in the copy: a skeleton without the weights' memory.
    memo = {
        id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
        for p in module.parameters()
    }
    _SKELETONS[module] = copy.deepcopy(module, memo)
    mesh = init_device_mesh(device.type, (world_size(),))
    for block in transformer_blocks(module):
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return _FullForward(module)


def is_sharded(module: torch.nn.Module) -> bool:
    """True for a module that :func:`wrap_trained` sharded with FSDP."""
    return module in _SKELETONS


def _fsdp_units(module: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_params(*modules: torch.nn.Module) -> Iterator[None]:
    """Inside, every sharded one of ``modules`` holds its full weights, so its parts can be
    called directly: sampling with the KV cache (trunk and LM head), the value head,
    evaluation. One all-gather per block on entry, not one per generated token; the shards
    are back on exit. A no-op for modules that are not sharded. Every rank must enter it.
    """
    roots = [m for m in modules if is_sharded(m)]
    units = [unit for root in roots for unit in _fsdp_units(root)]
    if not units:
        yield
        return
    for root in roots:
        # FSDP takes the first module that runs forward for the root; called part by part
        # the module would make a block the root. No public call does this first step.
        root._get_fsdp_state()._lazy_init()
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            # FSDP's defaults: the root keeps its weights after forward (backward needs
            # them at once), the blocks free theirs.
            unit.set_reshard_after_forward(unit not in roots, recurse=False)


def _state_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Full (unsharded) tensors, gathered onto rank 0's CPU: the others get empty dicts.
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _plain_copy(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """A module without FSDP holding ``state``: the skeleton filled in (tied weights stay
    tied), with the scalar attributes the sharded module has now (a reward model's score
    statistics)."""
    skeleton = _SKELETONS[module]
    names = dict(skeleton.named_parameters())
    memo = {
        id(p): torch.nn.Parameter(_own_storage(state[name]), p.requires_grad)
        for name, p in names.items()  # the first name of a tied weight
    }
    plain = copy.deepcopy(skeleton, memo)
    plain.load_state_dict(state, strict=True)
    for source, target in zip(module.modules(), plain.modules()):
        for key, value in vars(source).items():
            if not key.startswith("_") and isinstance(value, (bool, int, float, str)):
                setattr(target, key, value)
    return plain


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    # A weight smaller than the ranks' padded shards comes back as a view of the padding;
    # safetensors refuses to save a tensor that covers part of its storage.
    if tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size():
        return tensor
    return tensor.clone()


def full_model(module: torch.nn.Module) -> Optional[torch.nn.Module]:
    """``module`` with its full weights, to save: ``module`` itself unless it is sharded;
    then a plain copy on rank 0's CPU (``None`` on the other ranks), gathered from every
    rank, so every rank must call it."""
    if not is_sharded(module):
        return module
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(module, options=_state_options())
    return _plain_copy(module, state) if is_main_process() else None


def _owner(optimizer: torch.optim.Optimizer, modules: Sequence[torch.nn.Module]) -> Any:
    """The sharded module among ``modules`` whose parameters ``optimizer`` steps, or None."""
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in modules:
        if is_sharded(module) and any(id(p) in params for p in module.parameters()):
            return module
    return None


def _by_position(state: Mapping[str, Any], order: list[str]) -> dict[str, Any]:
    """torch's own optimizer ``state_dict`` layout from FSDP's (keyed by parameter name):
    parameters numbered in the order of the param groups, as ``Optimizer.state_dict()``."""
    index = {name: i for i, name in enumerate(order)}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def _param_order(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of ``optimizer``'s parameters in its own order (a tied one under its first)."""
    names: dict[int, str] = {}
    for name, p in module.named_parameters():
        names.setdefault(id(p), name)
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather_for_checkpoint(
    modules: Mapping[str, torch.nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What rank 0 hands to ``save_checkpoint``: sharded modules as plain copies
    (:func:`full_model`), their optimizers as full ``state_dict()`` s in torch's own layout;
    everything else as it is. A collective under FSDP: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    out_modules = {name: full_model(m) for name, m in modules.items()}
    out_optimizers: dict[str, Any] = {}
    for name, optimizer in optimizers.items():
        owner = _owner(optimizer, list(modules.values()))
        if owner is None:
            out_optimizers[name] = optimizer
            continue
        state = get_optimizer_state_dict(owner, optimizer, options=_state_options())
        if is_main_process():  # the others got nothing
            out_optimizers[name] = _by_position(state, _param_order(owner, optimizer))
    return out_modules, out_optimizers


def load_full_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full tensors (as ``save_checkpoint`` writes them, each tied weight once) into a
    sharded module; every rank passes the same ``state`` and keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    first: dict[int, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name and name not in state:
            state[name] = state[first[id(p)]]  # a tied weight's other name
    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(
    modules: Sequence[torch.nn.Module], optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> bool:
    """Load a ``state_dict()`` in torch's own layout into the optimizer of a sharded module
    among ``modules``; False (nothing done) when ``optimizer`` steps none."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    owner = _owner(optimizer, modules)
    if owner is None:
        return False
    order = _param_order(owner, optimizer)
    by_name = {
        "state": {order[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [order[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        owner, optimizer, by_name, options=StateDictOptions(full_state_dict=True)
    )
    return True
