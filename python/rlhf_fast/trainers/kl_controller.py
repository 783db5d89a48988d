"""KL coefficient controllers for the per-token KL penalty.

``FixedKLController`` keeps ``value`` constant. ``AdaptiveKLController`` is the
proportional controller of Ziegler et al. (2019), "Fine-Tuning Language Models from
Human Preferences", eq. (2)::

    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)
    beta_{t+1} = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

where ``KL_t`` is the mean per-sequence KL of the batch just seen and ``n_steps`` the
number of sequences in it.
"""

from __future__ import annotations

import math
from typing import Union

from rlhf_fast.errors import InvalidArgumentError


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        expected = ">= 0" if allow_zero else "> 0"
        raise InvalidArgumentError(f"{name}: expected a finite number {expected}, got {value}")
    return value


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float) -> None:
        self.value = _check_positive("kl_coef", kl_coef, allow_zero=True)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No change; returns the coefficient."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al.'s proportional controller steering the KL towards ``target``."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = _check_positive("init_kl_coef", init_kl_coef)
        self.target = _check_positive("target", target)
        if int(horizon) < 1:
            raise InvalidArgumentError(f"horizon: expected an int >= 1, got {horizon}")
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update the coefficient from the batch's mean KL; returns the new coefficient."""
        if not math.isfinite(current_kl):
            raise InvalidArgumentError(f"current_kl: expected a finite number, got {current_kl}")
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


KLController = Union[FixedKLController, AdaptiveKLController]


def make_kl_controller(kl_coef: float, target_kl: float | None, horizon: int) -> KLController:
    """Adaptive when ``target_kl`` is given, fixed otherwise."""
    if target_kl is None:
        return FixedKLController(kl_coef)
    return AdaptiveKLController(kl_coef, target_kl, horizon)
