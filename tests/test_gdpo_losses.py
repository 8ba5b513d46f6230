"""GDPO/DPO/SFT losses against hand-computed values (pure tensors, no model)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from gdpo.losses import dpo_group_loss, dpo_loss, gdpo_loss, group_pairs, sft_loss

BETA = 0.5
EPS = 0.1


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def link_value(link: str, margin: float) -> float:
    return -sig(margin) if link == "sigmoid" else -math.log(sig(margin))


def expected_group_loss(ell, weights, pairs, link):
    margins = [BETA * (weights[i] * ell[i] - weights[j] * ell[j]) for i, j in pairs]
    return sum(link_value(link, m) for m in margins) / len(margins), margins


def raw_weights(rewards):
    mean = statistics.fmean(rewards)
    std = statistics.pstdev(rewards)
    adv = [(r - mean) / std for r in rewards]
    return [1.0 / (a if abs(a) >= EPS else (EPS if a >= 0 else -EPS)) for a in adv]


def minmax_weights(rewards):
    lo, hi = min(rewards), max(rewards)
    return [1.0 / (EPS + (1 - EPS) * (r - lo) / (hi - lo)) for r in rewards]


# Group G=4 with binary ties: responses 0 and 2 are right (reward 1), 1 and 3 wrong (reward 0).
TIES_REWARDS = [1.0, 0.0, 1.0, 0.0]
TIES_ELL = [0.3, -0.2, 0.1, 0.5]
TIES_PAIRS = {
    "adjacent": [(2, 1)],  # chain 0-2-1-3: only 2>1 is not a tie
    "all": [(0, 1), (0, 3), (2, 1), (2, 3)],
    "block": [(0, 1), (2, 3)],  # block {0,2} over block {1,3}, member by member
}
TIES_WEIGHTS = {"none": [1, 1, 1, 1], "minmax": [1, 10, 1, 10], "raw": [1, -1, 1, -1]}  # A = [1, -1, 1, -1]

# Group G=3, distinct rewards: order by reward is 1 > 2 > 0.
G3_REWARDS = [0.2, 0.9, 0.5]
G3_ELL = [0.4, -0.3, 0.2]
G3_PAIRS = {"adjacent": [(1, 2), (2, 0)], "all": [(1, 2), (1, 0), (2, 0)], "block": [(1, 2), (2, 0)]}


@pytest.mark.parametrize("pairing", ["adjacent", "all", "block"])
@pytest.mark.parametrize("weighting", ["none", "minmax", "raw"])
@pytest.mark.parametrize("link", ["sigmoid", "logsigmoid"])
def test_hand_computed_g4_ties_and_g3(pairing, weighting, link):
    assert group_pairs(TIES_REWARDS, pairing) == TIES_PAIRS[pairing]
    assert group_pairs(G3_REWARDS, pairing) == G3_PAIRS[pairing]
    g3_weights = {"none": [1, 1, 1], "minmax": minmax_weights(G3_REWARDS), "raw": raw_weights(G3_REWARDS)}[weighting]
    exp4, m4 = expected_group_loss(TIES_ELL, TIES_WEIGHTS[weighting], TIES_PAIRS[pairing], link)
    exp3, m3 = expected_group_loss(G3_ELL, g3_weights, G3_PAIRS[pairing], link)

    # Two groups padded to G=4 (the G=3 group masked), plus one all-equal group that must be skipped.
    ref = torch.tensor([[-5.0, -6.0, -7.0, -8.0], [-2.0, -3.0, -4.0, 0.0], [-1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    ell = torch.tensor([TIES_ELL, G3_ELL + [123.0], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    rewards = torch.tensor([TIES_REWARDS, G3_REWARDS + [99.0], [0.7, 0.7, 0.7, 0.7]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    loss, metrics = gdpo_loss(ref + ell, ref, rewards, beta=BETA, pairing=pairing, weighting=weighting, link=link, mask=mask, eps=EPS)

    assert loss.item() == pytest.approx((exp4 + exp3) / 2, rel=1e-9)
    margins = m4 + m3
    assert metrics["counted_pairs"] == len(margins)
    assert metrics["skipped_groups"] == 1
    assert metrics["margin"] == pytest.approx(sum(margins) / len(margins), rel=1e-9)
    assert metrics["pair_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))


@pytest.mark.parametrize("link", ["sigmoid", "logsigmoid"])
def test_g2_each_weighting(link):
    # rewards [0, 1]: response 1 is better. A = [-1, 1]; minmax weights [1/eps, 1]; raw [-1, 1].
    ell = [0.2, 0.5]
    for weighting, w in {"none": [1, 1], "minmax": [10, 1], "raw": [-1, 1]}.items():
        margin = BETA * (w[1] * ell[1] - w[0] * ell[0])
        loss, metrics = gdpo_loss(
            torch.tensor([ell]), torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]), beta=BETA, weighting=weighting, link=link, eps=EPS
        )
        assert loss.item() == pytest.approx(link_value(link, margin), rel=1e-6), weighting
        assert metrics["counted_pairs"] == 1
        assert metrics["pair_accuracy"] == float(margin > 0)


def test_all_equal_rewards_give_zero_loss_and_no_gradient():
    policy = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    loss, metrics = gdpo_loss(policy, torch.zeros(1, 3), torch.ones(1, 3), beta=0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(policy.grad, torch.zeros(1, 3))
    assert metrics["skipped_groups"] == 1 and metrics["counted_pairs"] == 0
    # A single real response is skipped too.
    _, metrics = gdpo_loss(policy.detach(), torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]]), beta=0.1, mask=torch.tensor([[True, False, False]]))
    assert metrics["skipped_groups"] == 1


def test_zero_advantage_raw_weight_is_guarded():
    # Rewards [1, 0.5, 0]: the middle one has A = 0 exactly; raw uses 1/eps instead of infinity.
    loss, _ = gdpo_loss(torch.tensor([[0.1, 0.2, 0.3]]), torch.zeros(1, 3), torch.tensor([[1.0, 0.5, 0.0]]), beta=BETA, weighting="raw", eps=EPS)
    assert math.isfinite(loss.item())
    w = raw_weights([1.0, 0.5, 0.0])
    assert w[1] == pytest.approx(1 / EPS)
    exp, _ = expected_group_loss([0.1, 0.2, 0.3], w, [(0, 1), (1, 2)], "sigmoid")
    assert loss.item() == pytest.approx(exp, rel=1e-6)


def test_minmax_weights_positive_and_decreasing_with_advantage():
    from gdpo.losses import group_advantages, response_weights

    rewards = torch.tensor([[0.1, 0.9, 0.4, 0.6, 0.0]])
    adv, _ = group_advantages(rewards)
    w = response_weights(adv, torch.ones_like(rewards, dtype=torch.bool), "minmax", EPS)[0]
    order = rewards[0].argsort(descending=True)
    assert (w > 0).all() and torch.isfinite(w).all()
    assert (w[order].diff() > 0).all()  # weight grows as advantage falls
    assert w[order[0]].item() == pytest.approx(1.0) and w[order[-1]].item() == pytest.approx(1 / EPS)


@pytest.mark.parametrize("pairing", ["adjacent", "all", "block"])
@pytest.mark.parametrize("weighting", ["none", "minmax"])
@pytest.mark.parametrize("link", ["sigmoid", "logsigmoid"])
def test_gradient_step_raises_best_and_lowers_worst(pairing, weighting, link):
    rewards = torch.tensor([[0.0, 1.0, 0.5, 1.0], [0.3, 0.9, 0.1, 0.6]])
    policy = torch.full((2, 4), -10.0, requires_grad=True)
    loss, _ = gdpo_loss(policy, torch.full((2, 4), -10.0), rewards, beta=0.1, pairing=pairing, weighting=weighting, link=link)
    loss.backward()
    step = -policy.grad  # one gradient-descent step's direction
    for g in range(2):
        best = rewards[g] == rewards[g].max()
        worst = rewards[g] == rewards[g].min()
        assert (step[g][best] >= 0).all() and (step[g][best] > 0).any(), (g, step)
        assert (step[g][worst] <= 0).all() and (step[g][worst] < 0).any(), (g, step)
        if pairing != "adjacent":  # tie-aware pairings move every member of the best and worst blocks
            assert (step[g][best] > 0).all() and (step[g][worst] < 0).all(), (g, step)


def test_raw_weighting_can_push_worst_up():
    # The documented hazard: with A < 0, the literal β/A flips the worst response's term.
    policy = torch.zeros(1, 2, requires_grad=True)
    loss, _ = gdpo_loss(policy, torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), beta=0.1, weighting="raw")
    loss.backward()
    assert -policy.grad[0, 1] > 0  # descent raises the worst response's log-ratio


def test_g2_none_logsigmoid_equals_dpo():
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, dtype=torch.float64) * 3 for _ in range(4))
    dpo, dpo_metrics = dpo_loss(pc, pr, rc, rr, beta=0.1)
    policy = torch.stack([pc, pr], dim=1)
    ref = torch.stack([rc, rr], dim=1)
    rewards = torch.tensor([[1.0, 0.0]] * 5, dtype=torch.float64)
    gdpo, metrics = gdpo_loss(policy, ref, rewards, beta=0.1, weighting="none", link="logsigmoid")
    assert gdpo.item() == pytest.approx(dpo.item(), rel=1e-12)
    assert metrics["pair_accuracy"] == dpo_metrics["pair_accuracy"]
    # Hand value for the first pair.
    first, _ = dpo_loss(pc[:1], pr[:1], rc[:1], rr[:1], beta=0.1)
    margin = 0.1 * ((pc[0] - rc[0]) - (pr[0] - rr[0])).item()
    assert first.item() == pytest.approx(-math.log(sig(margin)), rel=1e-9)


def test_dpo_group_picks_best_and_worst():
    policy = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0, -4.5], [-1.0, -1.0, -1.0, -1.0]])
    rewards = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    loss, metrics = dpo_group_loss(policy, ref, rewards, beta=0.5)
    # best = index 1 (first of the tie), worst = index 3 (last of the tie); second group skipped.
    margin = 0.5 * ((-2.0 + 2.0) - (-4.0 + 4.5))
    assert loss.item() == pytest.approx(-math.log(sig(margin)), rel=1e-6)
    assert metrics["skipped_groups"] == 1 and metrics["counted_pairs"] == 1


def test_sft_best_and_threshold():
    logps = torch.tensor([[-10.0, -4.0, -6.0], [-3.0, -9.0, -1.0]])
    tokens = torch.tensor([[5, 2, 3], [1, 3, 1]])
    rewards = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.2, 0.9]])
    loss, m = sft_loss(logps, tokens, rewards)
    assert loss.item() == pytest.approx((4.0 + 3.0) / (2 + 1))
    assert m["selected_responses"] == 2
    loss, m = sft_loss(logps, tokens, rewards, threshold=0.5)
    assert loss.item() == pytest.approx((4.0 + 6.0 + 3.0 + 1.0) / (2 + 3 + 1 + 1))
    loss, m = sft_loss(logps, tokens, rewards, threshold=float("-inf"), mask=torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool))
    assert loss.item() == pytest.approx((10 + 4 + 6 + 3 + 9) / (5 + 2 + 3 + 1 + 3))
