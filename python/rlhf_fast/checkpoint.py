"""Atomic training checkpoints: safetensors weights, optimizer/scheduler state, RNG, step.

Layout of one checkpoint (``directory/step_00000120/``)::

    state.json                 {"format": 1, "step": 120, "extra": {...}, "modules": [...], ...}
    model.<name>.safetensors   one per module (tied/shared tensors stored once)
    optimizer.<name>.pt        torch.save of optimizer.state_dict()
    scheduler.<name>.pt        torch.save of scheduler.state_dict()
    rng.pt                     python ``random``, numpy, torch CPU and CUDA generator states

A checkpoint is written into a hidden temporary directory next to its final place
(``directory/.tmp-step_00000120-XXXX``), every file is fsynced, and the directory is
then renamed into place with ``os.replace`` and the parent fsynced. A crash mid-save
therefore leaves only a hidden temporary directory, which :func:`latest_checkpoint`
ignores and the next save removes.

Everything except the weights is read back with ``torch.load(weights_only=True)``:
only tensors and plain containers are unpickled. In distributed runs call
:func:`save_checkpoint` on rank 0 only (pass ``model.module`` or the unwrapped model;
a ``DistributedDataParallel`` wrapper is unwrapped automatically). Modules sharded with
FSDP are first gathered on every rank (``trainers.distributed.gather_for_checkpoint``),
which gives rank 0 the same files; :func:`load_checkpoint`, called on every rank, loads
them into sharded modules and their optimizers as well.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_model

from rlhf_fast.errors import InvalidArgumentError

__all__ = [
    "CheckpointError",
    "list_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 1
STATE_FILE = "state.json"
RNG_FILE = "rng.pt"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class CheckpointError(InvalidArgumentError):
    """A checkpoint is missing, incomplete, or does not match what is being loaded."""


# --------------------------------------------------------------------- helpers
def _step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _check_names(kind: str, objects: Mapping[str, Any]) -> None:
    for name in objects:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidArgumentError(
                f"{kind}: names must match [A-Za-z0-9_-]+ (they become file names), got {name!r}"
            )


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    # DDP prefixes every key with "module."; the checkpoint stores the plain model.
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return module.module
    return module


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_state() -> dict[str, Any]:
    """Every global generator's state, as tensors and plain containers only."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002 (the global state is what we save)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            warnings.warn(
                f"checkpoint holds CUDA RNG states for {len(cuda_states)} devices but "
                f"{torch.cuda.device_count()} are visible; CUDA generators not restored",
                RuntimeWarning,
                stacklevel=3,
            )


def _torch_load(path: Path, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing") from None
    except Exception as exc:  # UnpicklingError and friends: report which file
        raise CheckpointError(
            f"cannot read {str(path)!r} with torch.load(weights_only=True): {exc}"
        ) from exc


# ------------------------------------------------------------------- listing
def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest step first (``[]`` if none)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir() and (entry / STATE_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint with the highest step under ``directory``, or ``None``.

    Hidden temporary directories left by an interrupted save are ignored.
    """
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


# ---------------------------------------------------------------------- save
def save_checkpoint(
    directory: str | os.PathLike[str],
    *,
    step: int,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer | Mapping[str, Any]] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = 2,
) -> Path:
    """Write ``directory/step_{step:08d}/`` atomically and prune older checkpoints.

    Args:
        directory: the run's checkpoint directory (created if needed).
        step: the number of optimizer steps done (``>= 0``); resuming starts after it.
        modules: ``{name: nn.Module}``; weights go to safetensors, shared tensors once.
        optimizers: ``{name: Optimizer}``; their ``state_dict()`` is saved (or ``{name:
            state_dict}``, as FSDP's gathered state comes).
        schedulers: ``{name: scheduler}`` (anything with ``state_dict()``).
        extra: JSON-serialisable values stored in ``state.json`` (e.g. a KL controller's
            coefficient, a data cursor).
        keep_last: how many checkpoints to keep, this one included; ``None`` keeps all.

    Returns:
        The path of the new checkpoint directory.
    """
    optimizers = optimizers or {}
    schedulers = schedulers or {}
    extra = dict(extra or {})
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidArgumentError(f"step: expected an int >= 0, got {step!r}")
    if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
        raise InvalidArgumentError(f"keep_last: expected an int >= 1 or None, got {keep_last!r}")
    if not modules:
        raise InvalidArgumentError("modules: expected at least one {name: nn.Module}, got none")
    for kind, objects in (
        ("modules", modules),
        ("optimizers", optimizers),
        ("schedulers", schedulers),
    ):
        _check_names(kind, objects)
    try:
        extra_json = json.dumps(extra, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"extra: must be JSON-serialisable, {exc}") from None

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    final = root / _step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=root))
    try:
        for name, module in modules.items():
            save_model(_unwrap(module), str(tmp / f"model.{name}.safetensors"))
        for name, optimizer in optimizers.items():
            state_dict = optimizer if isinstance(optimizer, Mapping) else optimizer.state_dict()
            torch.save(state_dict, tmp / f"optimizer.{name}.pt")
        for name, scheduler in schedulers.items():
            torch.save(scheduler.state_dict(), tmp / f"scheduler.{name}.pt")
        torch.save(_rng_state(), tmp / RNG_FILE)
        state = {
            "format": FORMAT_VERSION,
            "step": step,
            "modules": sorted(modules),
            "optimizers": sorted(optimizers),
            "schedulers": sorted(schedulers),
            "extra": json.loads(extra_json),
        }
        # state.json last: a directory without it is never taken for a checkpoint.
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            _fsync_file(path)
        _fsync_dir(tmp)
        _move_into_place(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        _prune(root, keep=keep_last, protect=final)
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.replace(tmp, final)
        return
    # Re-saving a step (e.g. after a resume): rename the old one away first, since
    # os.replace cannot replace a non-empty directory.
    old = final.with_name(f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}")
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_temporaries(root: Path) -> None:
    for entry in root.iterdir():
        if entry.name.startswith(_TMP_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _prune(root: Path, *, keep: int, protect: Path) -> None:
    checkpoints = list_checkpoints(root)
    for path in checkpoints[: max(0, len(checkpoints) - keep)]:
        if path != protect:
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------- load
def _resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint directory, or a run directory whose latest checkpoint is taken."""
    candidate = Path(path)
    if (candidate / STATE_FILE).is_file():
        return candidate
    latest = latest_checkpoint(candidate)
    if latest is not None:
        return latest
    if not candidate.exists():
        raise CheckpointError(f"checkpoint {str(candidate)!r} does not exist")
    raise CheckpointError(
        f"{str(candidate)!r} is neither a complete checkpoint (no {STATE_FILE}) nor a "
        "directory holding step_* checkpoints"
    )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    map_location: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore modules, optimizers, schedulers and RNG states in place.

    Args:
        path: a checkpoint directory, or a directory of checkpoints (its latest is used).
        modules, optimizers, schedulers: the objects to restore, under the names used
            when saving. Names missing from the checkpoint raise :class:`CheckpointError`;
            objects saved but not asked for are left alone (e.g. a frozen reference).
        map_location: device for optimizer/scheduler tensors (``torch.load`` semantics);
            weights are copied into the existing parameters wherever they live.
        restore_rng: also restore the python, numpy, torch and CUDA generators.

    Returns:
        ``{"step": int, "extra": dict, "path": Path}``.
    """
    optimizers = optimizers or {}
    schedulers = schedulers or {}
    checkpoint = _resolve(path)
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{str(checkpoint / STATE_FILE)!r} is not valid JSON: {exc}"
        ) from None
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(checkpoint)!r}: checkpoint format {state.get('format')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    for kind, wanted in (
        ("modules", modules),
        ("optimizers", optimizers),
        ("schedulers", schedulers),
    ):
        missing = sorted(set(wanted) - set(state[kind]))
        if missing:
            raise CheckpointError(
                f"{str(checkpoint)!r} has no {kind} named {missing}; it holds {state[kind]}"
            )

    from rlhf_fast.trainers import distributed as dist

    for name, module in modules.items():
        file = checkpoint / f"model.{name}.safetensors"
        try:
            if dist.is_sharded(module):  # FSDP: every rank reads the file, keeps its shard
                dist.load_full_state(module, load_file(str(file)))
            else:
                load_model(_unwrap(module), str(file), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"cannot load {str(file)!r} into module {name!r}: {exc}") from exc
    for name, optimizer in optimizers.items():
        file = checkpoint / f"optimizer.{name}.pt"
        state_dict = _torch_load(file, map_location)
        if not dist.load_full_optimizer_state(list(modules.values()), optimizer, state_dict):
            optimizer.load_state_dict(state_dict)
    for name, scheduler in schedulers.items():
        file = checkpoint / f"scheduler.{name}.pt"
        scheduler.load_state_dict(_torch_load(file, map_location))
    if restore_rng:
        _set_rng_state(_torch_load(checkpoint / RNG_FILE, "cpu"))
    return {"step": int(state["step"]), "extra": state["extra"], "path": checkpoint}
