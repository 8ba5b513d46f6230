"""GDPO / listwise / DPO / SFT losses against hand-computed values (pure tensors, no model)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from gdpo.losses import dpo_group_loss, dpo_loss, gdpo_loss, group_pairs, listwise_loss, sft_loss, sort_order, summarize

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
    logged = summarize(metrics)
    assert metrics["counted_pairs"] == len(margins) and metrics["counted_groups"] == 2
    assert metrics["zero_std_groups"] == 1 and logged["frac_reward_zero_std"] == pytest.approx(1 / 3)
    assert logged["rewards/margins"] == pytest.approx(sum(margins) / len(margins), rel=1e-9)
    assert logged["rewards/accuracies"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))
    # chosen / rejected: the best and worst response of each counted group (ties: the first / last in column order).
    assert logged["rewards/chosen"] == pytest.approx(BETA * (TIES_ELL[0] + G3_ELL[1]) / 2, rel=1e-9)
    assert logged["rewards/rejected"] == pytest.approx(BETA * (TIES_ELL[3] + G3_ELL[0]) / 2, rel=1e-9)
    assert logged["logps/chosen"] == pytest.approx((-5 + TIES_ELL[0] - 3 + G3_ELL[1]) / 2, rel=1e-9)


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
        assert summarize(metrics)["rewards/accuracies"] == float(margin > 0)


def test_all_equal_rewards_give_zero_loss_and_no_gradient():
    policy = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    loss, metrics = gdpo_loss(policy, torch.zeros(1, 3), torch.ones(1, 3), beta=0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(policy.grad, torch.zeros(1, 3))
    assert metrics["zero_std_groups"] == 1 and metrics["counted_pairs"] == 0
    # Nothing to average: the logged means are left out rather than reported as 0.
    assert summarize(metrics) == {"frac_reward_zero_std": 1.0}
    # A single real response is skipped too.
    _, metrics = gdpo_loss(policy.detach(), torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]]), beta=0.1, mask=torch.tensor([[True, False, False]]))
    assert metrics["zero_std_groups"] == 1
    # The threshold is the reward stage's (metakl.schema.ZERO_VARIANCE_EPS = 1e-6 on the population std).
    _, metrics = gdpo_loss(policy.detach(), torch.zeros(1, 3), torch.tensor([[0.5, 0.5 + 2e-6, 0.5]], dtype=torch.float64), beta=0.1)
    assert metrics["zero_std_groups"] == 1  # std 9.4e-7
    _, metrics = gdpo_loss(policy.detach(), torch.zeros(1, 3), torch.tensor([[0.5, 0.5 + 4e-6, 0.5]], dtype=torch.float64), beta=0.1)
    assert metrics["zero_std_groups"] == 0  # std 1.9e-6


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
    assert summarize(metrics) == pytest.approx(summarize(dpo_metrics), rel=1e-12)
    # Hand value for the first pair.
    first, _ = dpo_loss(pc[:1], pr[:1], rc[:1], rr[:1], beta=0.1)
    margin = 0.1 * ((pc[0] - rc[0]) - (pr[0] - rr[0])).item()
    assert first.item() == pytest.approx(-math.log(sig(margin)), rel=1e-9)


def test_dpo_group_picks_best_and_worst():
    policy = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0, -4.5], [-1.0, -1.0, -1.0, -1.0]])
    rewards = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    loss, metrics = dpo_group_loss(policy, ref, rewards, beta=0.5)
    # Without tie keys: best = index 1 (first of the tie), worst = index 3 (last of the tie); second group skipped.
    margin = 0.5 * ((-2.0 + 2.0) - (-4.0 + 4.5))
    assert loss.item() == pytest.approx(-math.log(sig(margin)), rel=1e-6)
    assert metrics["zero_std_groups"] == 1 and metrics["counted_pairs"] == 1
    # Tie keys decide instead of the columns: among the reward-1 responses key -1 (index 2) comes first, among the
    # reward-0 ones key 5 (index 0) comes last.
    keys = torch.tensor([[5, 0, -1, 1], [0, 0, 0, 0]])
    loss, _ = dpo_group_loss(policy, ref, rewards, beta=0.5, tie_keys=keys)
    margin = 0.5 * ((-3.0 + 2.0) - (-1.0 + 1.5))
    assert loss.item() == pytest.approx(-math.log(sig(margin)), rel=1e-6)


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


def test_sft_ties_follow_tie_keys_and_num_tokens_normalizes():
    logps = torch.tensor([[-10.0, -4.0, -6.0]])
    tokens = torch.tensor([[5, 2, 3]])
    rewards = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _ = sft_loss(logps, tokens, rewards)
    assert loss.item() == pytest.approx(10.0 / 5)  # first column among the tie
    loss, m = sft_loss(logps, tokens, rewards, tie_keys=torch.tensor([[3, 1, 0]]))
    assert loss.item() == pytest.approx(4.0 / 2)  # the smaller key wins the tie
    loss, _ = sft_loss(logps, tokens, rewards, tie_keys=torch.tensor([[3, 1, 0]]), num_tokens=8)
    assert loss.item() == pytest.approx(4.0 / 8) and m["loss_sum"] == pytest.approx(4.0)


# ---- tie order independent of storage ------------------------------------------------------------------------------


def test_sort_order_uses_tie_keys_then_columns():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.5]])
    mask = torch.tensor([[True, True, True, True, False]])
    assert sort_order(rewards, mask).tolist() == [[0, 2, 1, 3, 4]]
    assert sort_order(rewards, mask, torch.tensor([[7, 1, 3, 0, 0]])).tolist() == [[2, 0, 3, 1, 4]]
    assert group_pairs([1.0, 0.0, 1.0, 0.0], "adjacent", tie_keys=[7, 1, 3, 0]) == [(0, 3)]
    assert group_pairs([1.0, 0.0, 1.0, 0.0], "block", tie_keys=[7, 1, 3, 0]) == [(2, 3), (0, 1)]


@pytest.mark.parametrize("loss_name", ["adjacent", "block", "all", "listwise", "dpo"])
def test_storage_order_does_not_change_the_update(loss_name):
    """The same responses stored in another order (with their tie keys) get the same loss and the same gradients."""
    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.5, 1.0]], dtype=torch.float64)
    ell = torch.tensor([[0.3, -0.2, 0.1, 0.5, -0.4, 0.2]], dtype=torch.float64)
    keys = torch.tensor([[11, 4, 9, 2, 7, 5]])
    perm = torch.tensor([5, 3, 0, 4, 2, 1])

    def run(r, e, k):
        policy = (e - 3.0).clone().requires_grad_(True)
        ref = torch.full_like(e, -3.0)
        if loss_name == "listwise":
            loss, _ = listwise_loss(policy, ref, r, beta=0.5, tie_keys=k)
        elif loss_name == "dpo":
            loss, _ = dpo_group_loss(policy, ref, r, beta=0.5, tie_keys=k)
        else:
            loss, _ = gdpo_loss(policy, ref, r, beta=0.5, pairing=loss_name, tie_keys=k)
        loss.backward()
        return loss.item(), policy.grad

    loss_a, grad_a = run(rewards, ell, keys)
    loss_b, grad_b = run(rewards[:, perm], ell[:, perm], keys[:, perm])
    assert loss_b == pytest.approx(loss_a, rel=1e-12)
    torch.testing.assert_close(grad_b, grad_a[:, perm], rtol=1e-12, atol=0)
    # Without tie keys the storage order decides which tied responses pair up: the gradients differ. (Here `block`
    # pairs every member of each block with the lone middle response, so its pairs do not depend on the order.)
    if loss_name in ("adjacent", "dpo"):
        _, grad_c = run(rewards, ell, None)
        _, grad_d = run(rewards[:, perm], ell[:, perm], None)
        assert not torch.allclose(grad_d, grad_c[:, perm])


# ---- normalization by a count fixed for the optimizer step --------------------------------------------------------


def test_num_groups_divides_the_sum_of_group_losses():
    rewards = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.2, 0.2], [0.0, 1.0, 1.0]])
    policy = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [-2.0, -0.5, -1.0]])
    ref = torch.full_like(policy, -1.5)
    per_group = [gdpo_loss(policy[g : g + 1], ref[g : g + 1], rewards[g : g + 1], beta=0.3)[0].item() for g in (0, 2)]
    mean, m = gdpo_loss(policy, ref, rewards, beta=0.3)
    assert mean.item() == pytest.approx(sum(per_group) / 2, rel=1e-6)  # default: the counted groups here
    fixed, _ = gdpo_loss(policy, ref, rewards, beta=0.3, num_groups=5)
    assert fixed.item() == pytest.approx(sum(per_group) / 5, rel=1e-6)
    assert m["loss_sum"] == pytest.approx(sum(per_group), rel=1e-6)
    # Splitting the batch and dividing each part by the whole count adds up to the whole.
    parts = sum(gdpo_loss(policy[s], ref[s], rewards[s], beta=0.3, num_groups=2)[0].item() for s in (slice(0, 1), slice(1, 3)))
    assert parts == pytest.approx(mean.item(), rel=1e-6)


# ---- what the math does: telescoping at initialisation, sigmoid saturation --------------------------------------


@pytest.mark.parametrize("weighting", ["none", "minmax"])
@pytest.mark.parametrize("link", ["sigmoid", "logsigmoid"])
def test_adjacent_chain_telescopes_at_init(weighting, link):
    """Policy = reference: every margin is 0, so each response's gradient is w_i·σ'(0)·(pairs where it is the better
    − pairs where it is the worse); along the chain interior responses are both once and get exactly 0, and the step
    equals best-vs-worst DPO scaled by 1/(G−1)."""
    rewards = torch.tensor([[0.2, 0.9, 0.5, 0.7, 0.0]], dtype=torch.float64)
    policy = torch.full((1, 5), -20.0, dtype=torch.float64, requires_grad=True)
    loss, _ = gdpo_loss(policy, policy.detach().clone(), rewards, beta=0.1, pairing="adjacent", weighting=weighting, link=link)
    loss.backward()
    slope = 0.25 if link == "sigmoid" else 0.5  # σ'(0), and d(−log σ)/dΔ at 0 (negated)
    w = minmax_weights(rewards[0].tolist()) if weighting == "minmax" else [1.0] * 5
    expected = [0.0] * 5
    expected[1] = -0.1 * w[1] * slope / 4  # best (reward 0.9)
    expected[4] = 0.1 * w[4] * slope / 4  # worst (reward 0.0)
    torch.testing.assert_close(policy.grad[0], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    # With weighting none and the logsigmoid link this is exactly DPO on (best, worst), divided by G − 1.
    if weighting == "none" and link == "logsigmoid":
        p = policy.detach().clone().requires_grad_(True)
        dpo, _ = dpo_loss(p[:, 1], p[:, 4], p.detach()[:, 1], p.detach()[:, 4], beta=0.1)
        dpo.backward()
        torch.testing.assert_close(policy.grad[0], p.grad[0] / 4, rtol=1e-12, atol=1e-15)
    # `block` telescopes between blocks of equal size: with blocks {1, 2} > {3, 4} > {0, 5} only the ends move.
    ties = torch.tensor([[0.0, 1.0, 1.0, 0.5, 0.5, 0.0]], dtype=torch.float64)
    p6 = torch.full((1, 6), -20.0, dtype=torch.float64, requires_grad=True)
    loss, _ = gdpo_loss(p6, p6.detach().clone(), ties, beta=0.1, pairing="block", weighting="none", link=link)
    loss.backward()
    assert (p6.grad[0, [3, 4]] == 0).all() and (p6.grad[0, [1, 2]] < 0).all() and (p6.grad[0, [0, 5]] > 0).all()
    # `all` does not telescope: interior responses move in proportion to their rank.
    policy.grad = None
    loss, _ = gdpo_loss(policy, policy.detach().clone(), rewards, beta=0.1, pairing="all", weighting="none", link=link)
    loss.backward()
    # rank (best first) 1:0.9, 3:0.7, 2:0.5, 0:0.2, 4:0.0 -> (#worse − #better) = 4, 2, 0, −2, −4 over 10 pairs
    expected = [-(0.1 * slope / 10) * c for c in (-2, 4, 0, 2, -4)]
    torch.testing.assert_close(policy.grad[0], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-15)


def test_sigmoid_link_saturates_after_a_few_nats():
    """minmax weights (eps 0.1: the worst response's w = 10) and β = 0.1: a 5-nat drop of the worst response's
    log-ratio makes Δ = 0.1·10·5 = 5 and cuts σ'(Δ) from 0.25 to 0.00665 (37.6×); −log σ keeps pushing a wrongly
    ordered pair (its gradient grows to σ(5) = 0.993 at Δ = −5) where −σ gives up just as fast."""
    rewards = torch.tensor([[1.0, 0.0]], dtype=torch.float64)

    def worst_grad(ell_worst: float, link: str, sign: float = 1.0) -> float:
        policy = torch.tensor([[0.0, sign * ell_worst]], dtype=torch.float64, requires_grad=True)
        loss, _ = gdpo_loss(policy, torch.zeros(1, 2, dtype=torch.float64), rewards, beta=0.1, weighting="minmax", eps=0.1, link=link)
        loss.backward()
        return policy.grad[0, 1].item()

    at_init, after_drop = worst_grad(0.0, "sigmoid"), worst_grad(-5.0, "sigmoid")
    assert at_init == pytest.approx(0.1 * 10 * 0.25, rel=1e-12)
    assert after_drop == pytest.approx(0.1 * 10 * sig(5) * (1 - sig(5)), rel=1e-12)
    assert at_init / after_drop == pytest.approx(37.6, abs=0.05)
    # A wrongly ordered pair (the worst response 5 nats UP): sigmoid's gradient is just as small, logsigmoid's is not.
    assert worst_grad(5.0, "sigmoid") == pytest.approx(after_drop, rel=1e-12)
    assert worst_grad(5.0, "logsigmoid") == pytest.approx(0.1 * 10 * sig(5), rel=1e-12)


# ---- listwise (Plackett–Luce) ---------------------------------------------------------------------------------------


def lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def test_listwise_g2_equals_dpo():
    torch.manual_seed(1)
    pc, pr, rc, rr = (torch.randn(4, dtype=torch.float64) * 5 for _ in range(4))
    dpo, _ = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # Stored worse-first, to check the sort as well.
    lw, metrics = listwise_loss(torch.stack([pr, pc], 1), torch.stack([rr, rc], 1), torch.tensor([[0.0, 1.0]] * 4, dtype=torch.float64), beta=0.1, weighting="none")
    assert lw.item() == pytest.approx(dpo.item(), rel=1e-6)
    assert metrics["counted_groups"] == 4 and metrics["counted_pairs"] == 4


@pytest.mark.parametrize("weighting", ["none", "minmax"])
def test_listwise_hand_computed_g3_and_g4_with_ties(weighting):
    beta = 0.5
    # G=3, distinct rewards: order 1 > 2 > 0.
    w3 = minmax_weights(G3_REWARDS) if weighting == "minmax" else [1.0] * 3
    s = [beta * w * e for w, e in zip(w3, G3_ELL)]
    exp3 = -((s[1] - lse([s[1], s[2], s[0]])) + (s[2] - lse([s[2], s[0]]))) / 2
    # G=4, binary ties {0, 2} over {1, 3}: each tied winner competes with the losers only; the losers' block adds nothing.
    w4 = TIES_WEIGHTS[weighting]
    t = [beta * w * e for w, e in zip(w4, TIES_ELL)]
    exp4 = -((t[0] - lse([t[0], t[1], t[3]])) + (t[2] - lse([t[2], t[1], t[3]]))) / 2
    # G=4, a tie in the middle: 0 > {1, 2} > 3.
    mid_rewards, mid_ell = [1.0, 0.5, 0.5, 0.0], [0.2, -0.1, 0.4, -0.3]
    wm = minmax_weights(mid_rewards) if weighting == "minmax" else [1.0] * 4
    u = [beta * w * e for w, e in zip(wm, mid_ell)]
    expm = -((u[0] - lse(u)) + (u[1] - lse([u[1], u[3]])) + (u[2] - lse([u[2], u[3]]))) / 3

    ell = torch.tensor([G3_ELL + [7.0], TIES_ELL, mid_ell, [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    rewards = torch.tensor([G3_REWARDS + [99.0], TIES_REWARDS, mid_rewards, [0.3] * 4], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    ref = torch.full_like(ell, -4.0)
    policy = (ref + ell).requires_grad_(True)
    loss, metrics = listwise_loss(policy, ref, rewards, beta=beta, weighting=weighting, mask=mask, eps=EPS)
    assert loss.item() == pytest.approx((exp3 + exp4 + expm) / 3, rel=1e-6)
    assert metrics["zero_std_groups"] == 1 and metrics["counted_groups"] == 3
    loss.backward()
    assert torch.isfinite(policy.grad).all()
    assert (policy.grad[3] == 0).all() and policy.grad[0, 3] == 0  # skipped group and padding get no gradient
    # The tied losers {1, 3} of the binary group are pushed down, the tied winners {0, 2} up.
    assert (policy.grad[1, [0, 2]] < 0).all() and (policy.grad[1, [1, 3]] > 0).all()


def test_listwise_ties_exert_no_pressure_between_tied_responses():
    """Two tied responses with different log-ratios and nothing below them: no term, no gradient."""
    policy = torch.tensor([[-1.0, -2.0, -9.0]], dtype=torch.float64, requires_grad=True)
    loss, _ = listwise_loss(policy, torch.full((1, 3), -3.0, dtype=torch.float64), torch.tensor([[1.0, 0.0, 0.0]]), beta=1.0, weighting="none")
    loss.backward()
    # Only the winner's term: s0 − log(e^{s0} + e^{s1} + e^{s2}).
    s = [2.0, 1.0, -6.0]
    assert loss.item() == pytest.approx(-(s[0] - lse(s)), rel=1e-9)
    soft = [math.exp(x - lse(s)) for x in s]
    torch.testing.assert_close(policy.grad[0], torch.tensor([-(1 - soft[0]), soft[1], soft[2]], dtype=torch.float64), rtol=1e-9, atol=0)


def test_listwise_moves_every_response_at_init():
    """At init (all s = 0) Plackett–Luce does not telescope: −∂L/∂s_j ∝ 1 − Σ_{k ≤ j} 1/(G − k + 1) (the last response:
    −Σ_{k < G} 1/(G − k + 1)), decreasing with rank; for G = 4: 0.75, 0.4167, −0.0833, −1.0833, over G − 1 = 3 terms."""
    policy = torch.full((1, 4), -7.0, dtype=torch.float64, requires_grad=True)
    loss, _ = listwise_loss(policy, policy.detach().clone(), torch.tensor([[0.9, 0.1, 0.5, 0.7]], dtype=torch.float64), beta=0.1, weighting="none")
    loss.backward()
    by_rank = [0.75, 1 - 1 / 4 - 1 / 3, 1 - 1 / 4 - 1 / 3 - 1 / 2, -(1 / 4 + 1 / 3 + 1 / 2)]
    expected = torch.tensor([by_rank[0], by_rank[3], by_rank[2], by_rank[1]], dtype=torch.float64) * -0.1 / 3
    torch.testing.assert_close(policy.grad[0], expected, rtol=1e-12, atol=1e-15)


def test_best_response_nll_by_hand():
    """rpo_alpha's term: token-mean NLL of each preference group's best response, over the groups with a preference."""
    from gdpo.losses import best_response_nll

    policy = torch.tensor([[-4.0, -9.0, -3.0], [-2.0, -2.0, -2.0], [-6.0, -1.0, -8.0]], requires_grad=True)
    counts = torch.tensor([[2, 3, 1], [1, 1, 1], [4, 5, 3]])
    rewards = torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    keys = torch.tensor([[0, 1, 2], [0, 1, 2], [7, 3, 9]])  # group 3: a tie between columns 0 and 1, key 3 wins
    loss, metrics = best_response_nll(policy, counts, rewards, tie_keys=keys)
    # group 1: best = column 0, 4/2 = 2 nats/token; group 2: no preference; group 3: best = column 1, 1/5 = 0.2
    assert loss.item() == pytest.approx((2.0 + 0.2) / 2)
    assert metrics["nll_sum"] == pytest.approx(2.2)
    loss.backward()
    expected = torch.zeros(3, 3)
    expected[0, 0], expected[2, 1] = -1 / 2 / 2, -1 / 5 / 2  # d/dlogp of -logp/count, over the 2 counted groups
    assert torch.allclose(policy.grad, expected)
    # The step's normalizer, and log-probs already averaged over tokens
    assert best_response_nll(policy, counts, rewards, tie_keys=keys, num_groups=4)[0].item() == pytest.approx(2.2 / 4)
    averaged = policy.detach() / counts
    assert best_response_nll(averaged, counts, rewards, tie_keys=keys, average=True)[0].item() == pytest.approx(1.1)
    # no group with a preference: zero, still a graph
    flat = best_response_nll(policy[1:2], counts[1:2], rewards[1:2])[0]
    assert flat.item() == 0.0 and flat.requires_grad


# ---- issue 21 defect 4: pairs are built with tensor ops, the same pairs as the readable group_pairs -------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gdpo.losses import MetricSums, informative_groups, pair_slots  # noqa: E402

# Few distinct reward values so that ties and blocks of every size come up; up to 3 groups of up to 7 responses.
_groups = st.lists(st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.integers(0, 5)), min_size=1, max_size=7), min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(_groups, st.sampled_from(["block", "adjacent", "all"]))
def test_tensor_pairs_equal_group_pairs(groups, pairing):
    G = max(len(g) for g in groups)
    rewards = torch.zeros(len(groups), G, dtype=torch.float64)
    keys = torch.zeros(len(groups), G, dtype=torch.long)
    mask = torch.zeros(len(groups), G, dtype=torch.bool)
    for b, g in enumerate(groups):
        for c, (r, k) in enumerate(g):
            rewards[b, c], keys[b, c], mask[b, c] = r, k, True
    better, worse, valid = pair_slots(rewards, mask, informative_groups(rewards, mask), pairing, keys)
    for b, g in enumerate(groups):
        got = sorted((int(i), int(j)) for i, j, ok in zip(better[b], worse[b], valid[b]) if ok)
        expected = [] if len({r for r, _ in g}) < 2 else sorted(group_pairs([r for r, _ in g], pairing, [k for _, k in g]))
        assert got == expected, (g, pairing)


def test_metrics_stay_on_the_loss_device_until_read():
    """The sums are one tensor the trainer can add up without a host copy; reading one key copies them once."""
    policy = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    _, metrics = gdpo_loss(policy, torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.5]]), beta=0.5)
    assert isinstance(metrics, MetricSums) and metrics.tensor.shape == (len(metrics),) and metrics.tensor.dtype == torch.float64
    assert not metrics.tensor.requires_grad
    assert metrics["counted_pairs"] == 2 and dict(metrics)["counted_groups"] == 1
