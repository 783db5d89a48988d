"""The fixed and adaptive KL controllers against hand-computed updates."""

import pytest

from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.trainers.kl_controller import (
    AdaptiveKLController,
    FixedKLController,
    make_kl_controller,
)


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, 64) == 0.05
    assert ctl.value == 0.05


def test_adaptive_controller_by_hand():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    # KL 9 is 50 % above target; the error is clipped to +0.2: 0.1 * (1 + 0.2 * 256 / 10000)
    assert ctl.update(9.0, 256) == pytest.approx(0.1 * 1.00512)
    # KL 5.4 is 10 % below target: * (1 - 0.1 * 256 / 10000)
    assert ctl.update(5.4, 256) == pytest.approx(0.1 * 1.00512 * 0.99744)
    # on target: unchanged
    before = ctl.value
    assert ctl.update(6.0, 256) == pytest.approx(before)


def test_adaptive_controller_error_is_clipped_below():
    ctl = AdaptiveKLController(1.0, target=1.0, horizon=100)
    assert ctl.update(0.0, 10) == pytest.approx(1.0 * (1 - 0.2 * 10 / 100))


def test_state_round_trip():
    a = AdaptiveKLController(0.2, target=3.0, horizon=50)
    a.update(10.0, 5)
    b = AdaptiveKLController(0.2, target=3.0, horizon=50)
    b.load_state_dict(a.state_dict())
    assert b.value == a.value


def test_make_kl_controller_picks_kind():
    assert isinstance(make_kl_controller(0.1, None, 10), FixedKLController)
    assert isinstance(make_kl_controller(0.1, 4.0, 10), AdaptiveKLController)


@pytest.mark.parametrize(
    ("args", "name"),
    [((0.0, 1.0, 10), "init_kl_coef"), ((0.1, -1.0, 10), "target"), ((0.1, 1.0, 0), "horizon")],
)
def test_adaptive_controller_rejects_bad_arguments(args, name):
    with pytest.raises(InvalidArgumentError, match=name):
        AdaptiveKLController(*args)


def test_adaptive_controller_rejects_non_finite_kl():
    with pytest.raises(InvalidArgumentError, match="current_kl"):
        AdaptiveKLController(0.1, 1.0, 10).update(float("nan"), 1)
