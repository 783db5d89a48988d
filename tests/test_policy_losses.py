"""GRPO and DPO-family losses against plain per-element loops (``math`` only) on random
cases, plus hand-computed values and their argument checks."""

import math
import random

import pytest
import torch

from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.trainers.losses import clipped_surrogate_loss, dpo_loss, grpo_loss


def grpo_reference(logprobs, old, ref, adv, mask, eps, beta, aggregation):
    """GRPO's objective written out token by token (Shao et al. 2024, eq. 3, negated)."""
    rows, total, count = [], 0.0, 0
    for b in range(len(logprobs)):
        row_sum, row_n = 0.0, 0
        for t in range(len(logprobs[b])):
            if not mask[b][t]:
                continue
            ratio = math.exp(logprobs[b][t] - old[b][t])
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            term = max(-adv[b] * ratio, -adv[b] * clipped)
            q = ref[b][t] - logprobs[b][t]
            term += beta * (math.exp(q) - q - 1)
            row_sum, row_n = row_sum + term, row_n + 1
        rows.append(row_sum / max(row_n, 1))
        total, count = total + row_sum, count + row_n
    return total / max(count, 1) if aggregation == "token" else sum(rows) / len(rows)


def dpo_reference(pc, pr, rc, rr, beta, loss_type):
    out = []
    for a, b, c, d in zip(pc, pr, rc, rr):
        h = (a - c) - (b - d)
        if loss_type == "sigmoid":
            out.append(math.log1p(math.exp(-beta * h)))
        elif loss_type == "ipo":
            out.append((h - 1 / (2 * beta)) ** 2)
        else:
            out.append(max(0.0, 1 - beta * h))
    return sum(out) / len(out)


@pytest.mark.parametrize("seed", range(40))
def test_grpo_loss_matches_the_token_loop(seed):
    rng = random.Random(seed)
    b, t = rng.randint(1, 5), rng.randint(1, 7)
    rand = lambda: [[rng.gauss(0, 0.5) for _ in range(t)] for _ in range(b)]  # noqa: E731
    logprobs, old, ref = rand(), rand(), rand()
    adv = [rng.gauss(0, 1) for _ in range(b)]
    mask = [[rng.random() < 0.7 for _ in range(t)] for _ in range(b)]
    mask[0][0] = True
    eps, beta = rng.choice([0.1, 0.2, 0.3]), rng.choice([0.0, 0.04, 0.5])
    for aggregation in ("token", "sequence"):
        loss, _, _ = grpo_loss(
            torch.tensor(logprobs, dtype=torch.float64),
            torch.tensor(old, dtype=torch.float64),
            torch.tensor(adv, dtype=torch.float64),
            torch.tensor(mask),
            eps,
            ref_logprobs=torch.tensor(ref, dtype=torch.float64),
            kl_coef=beta,
            aggregation=aggregation,
        )
        expected = grpo_reference(logprobs, old, ref, adv, mask, eps, beta, aggregation)
        assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_grpo_loss_by_hand():
    # one row, ratios 1.5 and 0.5, A = 1, eps = 0.2: max(-1.5, -1.2) = -1.2, max(-0.5, -0.8) = -0.5
    logprobs = torch.tensor([[math.log(1.5), math.log(0.5)]])
    loss, clipfrac, kl = grpo_loss(
        logprobs, torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2), 0.2
    )
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    assert kl.item() == 0.0  # no reference given


def test_grpo_loss_token_aggregation_equals_ppo_surrogate_without_kl():
    g = torch.Generator().manual_seed(0)
    logprobs, old = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    adv, mask = torch.randn(4, generator=g), torch.rand(4, 6, generator=g) < 0.6
    ours, _, _ = grpo_loss(logprobs, old, adv, mask, 0.2)
    ppo, _, _ = clipped_surrogate_loss(logprobs, old, adv[:, None].expand(4, 6), mask, 0.2)
    torch.testing.assert_close(ours, ppo)


def test_grpo_loss_checks_its_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(InvalidArgumentError, match="advantages"):
        grpo_loss(x, x, torch.zeros(3), x, 0.2)
    with pytest.raises(InvalidArgumentError, match="aggregation"):
        grpo_loss(x, x, torch.zeros(2), x, 0.2, aggregation="row")
    with pytest.raises(InvalidArgumentError, match="clip_range"):
        grpo_loss(x, x, torch.zeros(2), x, 0.0)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("seed", range(20))
def test_dpo_losses_match_the_pair_loop(loss_type, seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    vals = [[rng.gauss(-10, 4) for _ in range(n)] for _ in range(4)]
    beta = rng.choice([0.05, 0.1, 0.5, 2.0])
    loss, r_chosen, r_rejected = dpo_loss(
        *(torch.tensor(v, dtype=torch.float64) for v in vals), beta=beta, loss_type=loss_type
    )
    assert loss.item() == pytest.approx(dpo_reference(*vals, beta, loss_type), rel=1e-10)
    expected_chosen = [beta * (a - c) for a, c in zip(vals[0], vals[2])]
    assert r_chosen.tolist() == pytest.approx(expected_chosen)
    assert r_rejected.tolist() == pytest.approx([beta * (b - d) for b, d in zip(vals[1], vals[3])])


def test_dpo_loss_by_hand():
    # h = (-1 - -2) - (-3 - -2) = 2; beta 0.5: -log sigmoid(1) = 0.3132617
    args = [torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.0)]
    assert dpo_loss(*args, beta=0.5)[0].item() == pytest.approx(0.3132617, abs=1e-6)
    assert dpo_loss(*args, beta=0.5, loss_type="ipo")[0].item() == pytest.approx(1.0)  # (2 - 1)^2
    assert dpo_loss(*args, beta=0.25, loss_type="hinge")[0].item() == pytest.approx(0.5)


def test_dpo_loss_checks_its_arguments():
    x = torch.zeros(3)
    with pytest.raises(InvalidArgumentError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(InvalidArgumentError, match="loss_type"):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="kto")
    with pytest.raises(InvalidArgumentError, match="ref_rejected_logprobs"):
        dpo_loss(x, x, x, torch.zeros(2), beta=0.1)
