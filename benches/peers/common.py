"""What every benchmarked implementation provides, and the agreement check run before timing."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Optional

import numpy as np


@dataclass
class Implementation:
    """One way to compute a kernel.

    ``prepare(case)`` does the set-up a user would already have done (building torch views of
    the same memory, a compiled function) and returns the zero-argument callable that is timed;
    everything a user must do per call (format conversions, copies) belongs inside it.
    ``check(output, case)`` raises ``AssertionError`` unless the output agrees with rlhf_fast's
    on the elements where both conventions define a result.
    """

    name: str
    package: Optional[str]  # distribution whose version is reported; None for inline code
    prepare: Callable[[Any], Callable[[], Any]]
    check: Callable[[Any, Any], None]
    supports: Callable[[Any], bool] = lambda case: True
    ours: bool = False
    note: str = ""
    variant: str = ""  # e.g. "out= buffers", "fresh outputs", "1 thread"
    tags: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.variant})" if self.variant else self.name

    @property
    def version(self) -> str:
        return package_version(self.package) if self.package else "inline"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_close_on(
    got: Any,
    want: Any,
    where: Optional[np.ndarray],
    what: str,
    rtol: float = 2e-3,
    atol: float = 2e-3,
) -> None:
    """``got`` equals ``want`` (to float32 accuracy) where ``where`` is True (everywhere if None)."""
    got = to_numpy(got).astype(np.float64)
    want = to_numpy(want).astype(np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape} != {want.shape}")
    if where is not None:
        got, want = got[where], want[where]
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        worst = np.max(np.abs(got - want))
        raise AssertionError(f"{what}: max abs difference {worst:.3g} (rtol={rtol}, atol={atol})")
