"""Training metrics: one JSON line per step, TensorBoard scalars, PNG curves.

A run directory holds, per stage (``sft``, ``reward``, ``ppo``, ...)::

    metrics/<stage>.jsonl        {"step": 12, "time": 1732350000.1, "objective/kl": 0.03, ...}
    tensorboard/<stage>/         event files (``tensorboard --logdir <run_dir>/tensorboard``)
    plots/<stage>.png            one subplot per metric, written by ``close()``

Metric names may hold ``/`` (TRL style: ``objective/kl``, ``loss/policy_avg``).
Non-finite values are written as ``null`` in JSON (strict JSON has no NaN) and are
skipped in plots; TensorBoard receives them as they are.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhf_fast.errors import InvalidArgumentError

__all__ = ["MetricsLogger", "plot_curves", "read_jsonl"]

_RESERVED = ("step", "time")


def read_jsonl(
    path: str | os.PathLike[str], *, allow_partial_last_line: bool = False
) -> list[dict]:
    """Read a JSON-lines file into a list of dicts (blank lines skipped).

    With ``allow_partial_last_line`` a final line that does not end in a newline and is
    not valid JSON (a process killed mid-write) is dropped instead of raising.
    """
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            is_last_unterminated = number == len(lines) and not text.endswith("\n")
            if allow_partial_last_line and is_last_unterminated:
                break
            raise InvalidArgumentError(f"{path}: line {number}: invalid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise InvalidArgumentError(
                f"{path}: line {number}: expected a JSON object, got {type(record).__name__}"
            )
        records.append(record)
    return records


def _as_float(name: str, value: Any) -> float:
    if hasattr(value, "item"):  # torch tensors and numpy scalars holding one element
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            raise InvalidArgumentError(
                f"metrics[{name!r}]: expected a number or a one-element tensor, "
                f"got shape {tuple(getattr(value, 'shape', ()))}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(
            f"metrics[{name!r}]: expected a number, got {value!r} ({type(value).__name__})"
        )
    return float(value)


def plot_curves(
    records: Sequence[Mapping[str, Any]],
    keys: Iterable[str] | None,
    path: str | os.PathLike[str],
    *,
    x_key: str = "step",
    title: str | None = None,
) -> Path | None:
    """Plot ``record[key]`` against ``record[x_key]``, one subplot per key, into a PNG.

    Args:
        records: dicts such as the lines of a metrics JSONL file.
        keys: the metrics to plot; ``None`` plots every numeric key except ``step``,
            ``time`` and ``x_key``. Records lacking a key (or holding ``null``) are
            skipped for that subplot.
        path: the PNG to write (parent directories are created).
        x_key: the horizontal axis, e.g. ``"step"`` or ``"objective/kl"`` to plot
            scores against KL.
        title: the figure title.

    Returns:
        ``path``, or ``None`` when there was nothing to plot (no file written).
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    if keys is None:
        keys = sorted(
            {
                k
                for r in records
                for k, v in r.items()
                if k not in _RESERVED and k != x_key and isinstance(v, (int, float))
            }
        )
    keys = list(keys)
    series = []
    for key in keys:
        points = [
            (r[x_key], r[key])
            for r in records
            if isinstance(r.get(x_key), (int, float)) and isinstance(r.get(key), (int, float))
        ]
        if points:
            series.append((key, points))
    if not series:
        return None
    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    # Fixed spacing rather than a constrained layout: the solver took most of the
    # time of a 20-panel figure (seconds, on a busy CPU).
    height = 3.0 * rows + (0.5 if title else 0.0)  # inches
    figure = Figure(figsize=(4.2 * columns, height))
    axes = figure.subplots(rows, columns, squeeze=False)
    figure.subplots_adjust(
        left=0.08,
        right=0.98,
        bottom=0.55 / height,
        top=1.0 - (0.85 if title else 0.35) / height,
        hspace=0.55,
        wspace=0.3,
    )
    for ax, (key, points) in zip(axes.flat, series):
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None, linewidth=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series) :]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title, y=1.0 - 0.2 / height, va="top")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out


class MetricsLogger:
    """Per-step metrics of one training stage to JSONL, TensorBoard and a PNG.

    Args:
        run_dir: the run's output directory.
        stage: a short name (``"sft"``, ``"reward"``, ``"ppo"``); names the files.
        tensorboard: also write TensorBoard event files.
        resume_step: when resuming from a checkpoint taken at this step, lines with a
            larger step are dropped from the existing JSONL first (they were logged after
            the checkpoint and will be logged again), and TensorBoard purges them too.
            ``None`` starts the stage's JSONL afresh.
        enabled: ``False`` makes every call a no-op (non-zero ranks of a distributed run).

    Use as a context manager, or call :meth:`close` at the end (it writes the plot).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        stage: str,
        *,
        tensorboard: bool = True,
        resume_step: int | None = None,
        enabled: bool = True,
    ) -> None:
        if not stage or "/" in stage or stage.startswith("."):
            raise InvalidArgumentError(f"stage: expected a plain name such as 'ppo', got {stage!r}")
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.enabled = enabled
        self.jsonl_path = self.run_dir / "metrics" / f"{stage}.jsonl"
        self.plot_path = self.run_dir / "plots" / f"{stage}.png"
        self.tensorboard_dir = self.run_dir / "tensorboard" / stage
        self._records: list[dict[str, Any]] = []
        self._writer = None
        self._file = None
        if not enabled:
            return
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.jsonl_path.exists():
            kept = [
                r
                for r in read_jsonl(self.jsonl_path, allow_partial_last_line=True)
                if r.get("step", -1) <= resume_step
            ]
            self._rewrite(kept)
            self._records = kept
            self._file = self.jsonl_path.open("a", encoding="utf-8")
        else:
            self._file = self.jsonl_path.open("w", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=purge)

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        tmp = self.jsonl_path.with_name(self.jsonl_path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.jsonl_path)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record of this stage so far (kept lines of a resumed run included)."""
        return list(self._records)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append ``{"step": step, "time": ..., **metrics}`` to the JSONL and TensorBoard.

        Values may be Python numbers, numpy scalars or one-element tensors.
        """
        if not self.enabled:
            return
        if self._file is None:
            raise InvalidArgumentError(f"MetricsLogger({self.stage!r}) is closed")
        if isinstance(step, bool) or not isinstance(step, int):
            raise InvalidArgumentError(f"step: expected an int, got {step!r}")
        values = {}
        for name, value in metrics.items():
            if name in _RESERVED:
                raise InvalidArgumentError(f"metrics: {name!r} is reserved, rename the metric")
            values[name] = _as_float(name, value)
        record: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
        record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._records.append(record)
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, global_step=step)

    def plot(self, keys: Iterable[str] | None = None, path: str | os.PathLike[str] | None = None):
        """Write the training curves of this stage (every metric unless ``keys`` is given)."""
        if not self.enabled:
            return None
        title = (
            self.stage if self.run_dir.name == self.stage else f"{self.stage} ({self.run_dir.name})"
        )
        return plot_curves(self._records, keys, path or self.plot_path, title=title)

    def close(self) -> None:
        """Flush and close the files and write ``plots/<stage>.png``. Idempotent."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.plot()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
