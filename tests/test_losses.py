"""Hand-computed values for the Bradley-Terry loss, the clipped surrogate and the clipped value loss."""

import math

import pytest
import torch

from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.trainers.losses import bradley_terry_loss, clipped_surrogate_loss, clipped_value_loss


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    # -log sigmoid(1) = log(1 + e^-1) = 0.3132617, -log sigmoid(0) = log 2 = 0.6931472
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(
        (0.3132617 + 0.6931472) / 2, abs=1e-6
    )
    # margin 0.5: -log sigmoid(0.5) = 0.4740770, -log sigmoid(-0.5) = 0.9740770
    assert bradley_terry_loss(chosen, rejected, 0.5).item() == pytest.approx(
        (0.4740770 + 0.9740770) / 2, abs=1e-6
    )


def test_bradley_terry_loss_gradient_pushes_chosen_up():
    chosen = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(chosen, torch.tensor([0.0])).backward()
    assert chosen.grad.item() == pytest.approx(-0.5)  # d/dx -log sigmoid(x) at 0


def test_bradley_terry_loss_rejects_mismatched_shapes():
    with pytest.raises(InvalidArgumentError, match="rejected_scores"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))


def test_clipped_surrogate_by_hand():
    # ratios 1.5, 0.5, 1.1 (and a masked-out 4th token that must not count)
    logprobs = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1), 5.0]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -2.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipfrac, approx_kl = clipped_surrogate_loss(logprobs, old, adv, mask, clip_range=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped); token 2: max(-0.5, -0.8) = -0.5; token 3: max(2.2, 2.2) = 2.2
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 3, abs=1e-6)
    expected_kl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3
    assert approx_kl.item() == pytest.approx(expected_kl, abs=1e-6)


def test_clipped_surrogate_is_zero_gradient_when_clipped():
    logprobs = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, _, _ = clipped_surrogate_loss(
        logprobs, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2
    )
    loss.backward()
    assert logprobs.grad.item() == 0.0


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.9, 7.0]])
    old = torch.tensor([[0.5, 0.5, 0.0]])
    returns = torch.tensor([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipfrac = clipped_value_loss(values, old, returns, mask, clip_range=0.2)
    # token 1: unclipped (1-0)^2 = 1, clipped (0.7-0)^2 = 0.49 -> 1
    # token 2: unclipped (0.9-1)^2 = 0.01, clipped (0.7-1)^2 = 0.09 -> 0.09 (clipped)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.09) / 2, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)


@pytest.mark.parametrize("fn", [clipped_surrogate_loss, clipped_value_loss])
def test_losses_reject_non_positive_clip(fn):
    x = torch.zeros(1, 2)
    with pytest.raises(InvalidArgumentError, match="clip_range"):
        fn(x, x, x, torch.ones(1, 2), 0.0)
