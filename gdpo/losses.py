"""GDPO, DPO and SFT losses as pure tensor functions over groups of responses.

Every input has shape [groups, G]: one row per prompt, one column per response; `mask` marks the real responses of
groups smaller than G. `policy_logps` and `ref_logps` are sequence log-probs (summed, or averaged, over response
tokens), so ℓ = policy_logps − ref_logps is each response's implicit reward before β.

GDPO (arXiv 2511.12113): advantages A_i = (r_i − mean r) / std r (population std over the group's real responses),
responses ordered by advantage, and for a pair (i better than j) the margin Δ_ij = β·(w_i·ℓ_i − w_j·ℓ_j).

Decisions on the points the paper leaves open (see README "GDPO training"):
- Weights w_i (the paper's 1/A_i). `minmax` (default) scales the group's advantages into [eps, 1] and uses
  w = 1/scaled: every weight is positive and finite and decreases with advantage, which is the paper's stated intent
  (high-advantage responses get smaller updates). `none` is the paper's GDPO−A ablation (w = 1). `raw` is the literal
  w = 1/A_i with |A_i| clamped to at least eps (A = 0 counts as +eps); it is UNSAFE: for A_i < 0 the term's sign flips
  and minimising the loss pushes the likelihood of the worst responses up. Kept only to reproduce the formula.
- Groups whose rewards are all equal (or with fewer than two real responses) carry no preference: they are skipped
  and counted in `skipped_groups`; they contribute no loss and no gradient.
- Pairs between equal rewards never count, whatever the pairing. `adjacent` is the paper's O(G) chain over responses
  sorted by advantage (with binary rewards only one informative pair per group survives); `all` is the O(G²) form;
  `block` (tie-aware O(G)) splits the group into blocks of equal reward, sorted from best to worst, and pairs the
  members of each block with the members of the next lower block, cycling through the smaller block, so every
  response takes part in at least one pair.
- Normalisation: the mean over a group's counted pairs (the paper's 1/(G−1) and 2/(G(G−1)) when nothing is tied),
  then the mean over the groups that have at least one counted pair.
- link `sigmoid` is the paper's −σ(Δ) (bounded, its gradient vanishes for large |Δ|); `logsigmoid` is DPO's −log σ(Δ).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Pairing = Literal["adjacent", "all", "block"]
Weighting = Literal["minmax", "none", "raw"]
Link = Literal["sigmoid", "logsigmoid"]

PAIRINGS = ("adjacent", "all", "block")
WEIGHTINGS = ("minmax", "none", "raw")
LINKS = ("sigmoid", "logsigmoid")

# Below this reward spread a group counts as having zero variance.
ZERO_STD = 1e-8


def _check(policy_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if policy_logps.dim() != 2:
        raise ValueError(f"policy_logps must have shape [groups, G], got {tuple(policy_logps.shape)}")
    for name, t in (("ref_logps", ref_logps), ("rewards", rewards)):
        if t.shape != policy_logps.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(policy_logps.shape)} like policy_logps")
    if mask is None:
        return torch.ones_like(rewards, dtype=torch.bool)
    if mask.shape != policy_logps.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(policy_logps.shape)}")
    return mask.to(torch.bool)


def group_advantages(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, informative): standardized advantages over each group's real responses (0 where masked or skipped), and
    a [groups] bool that is False for groups with fewer than two real responses or all-equal rewards."""
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    r = rewards.double()
    m = mask.double()
    n = m.sum(dim=1)
    mean = (r * m).sum(dim=1) / n.clamp(min=1)
    var = (((r - mean[:, None]) ** 2) * m).sum(dim=1) / n.clamp(min=1)
    std = var.sqrt()
    informative = (n >= 2) & (std > ZERO_STD)
    adv = torch.where(mask & informative[:, None], (r - mean[:, None]) / std.clamp(min=ZERO_STD)[:, None], 0.0)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32), informative


def response_weights(adv: torch.Tensor, mask: torch.Tensor, weighting: Weighting, eps: float) -> torch.Tensor:
    """The per-response factor w_i in Δ_ij = β(w_i ℓ_i − w_j ℓ_j); 1 where masked."""
    if weighting == "none":
        return torch.ones_like(adv)
    if weighting == "raw":
        # Literal β/A_i: |A| guarded by eps, A = 0 treated as +eps. Negative A keeps its (unsafe) sign.
        guarded = torch.where(adv >= 0, adv.clamp(min=eps), adv.clamp(max=-eps))
        return torch.where(mask, 1.0 / guarded, torch.ones_like(adv))
    if weighting == "minmax":
        big = torch.finfo(adv.dtype).max
        lo = torch.where(mask, adv, torch.full_like(adv, big)).min(dim=1, keepdim=True).values
        hi = torch.where(mask, adv, torch.full_like(adv, -big)).max(dim=1, keepdim=True).values
        span = (hi - lo).clamp(min=ZERO_STD)
        scaled = eps + (1.0 - eps) * (adv - lo) / span  # in [eps, 1], 1 for the best response
        return torch.where(mask, 1.0 / scaled, torch.ones_like(adv))
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")


def group_pairs(rewards: list[float], pairing: Pairing) -> list[tuple[int, int]]:
    """Pairs (better, worse) of indices into `rewards` for one group; pairs of equal rewards are never produced.

    Responses are ordered by reward, descending (ties keep their original order), which is the advantage order.
    """
    order = sorted(range(len(rewards)), key=lambda i: -rewards[i])
    if pairing == "adjacent":
        return [(a, b) for a, b in zip(order, order[1:]) if rewards[a] > rewards[b]]
    if pairing == "all":
        return [(a, b) for k, a in enumerate(order) for b in order[k + 1 :] if rewards[a] > rewards[b]]
    if pairing == "block":
        blocks: list[list[int]] = []
        for i in order:
            if blocks and rewards[blocks[-1][0]] == rewards[i]:
                blocks[-1].append(i)
            else:
                blocks.append([i])
        pairs = []
        for upper, lower in zip(blocks, blocks[1:]):
            for t in range(max(len(upper), len(lower))):
                pairs.append((upper[t % len(upper)], lower[t % len(lower)]))
        return pairs
    raise ValueError(f"unknown pairing {pairing!r}; expected one of {', '.join(PAIRINGS)}")


def _pair_index(rewards: torch.Tensor, mask: torch.Tensor, informative: torch.Tensor, pairing: Pairing):
    if pairing == "all":  # every strictly ordered pair, as one tensor op (O(G²) memory, no Python loop)
        valid = (mask & informative[:, None])
        ordered = (rewards[:, :, None] > rewards[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        return ordered.nonzero(as_tuple=True)
    groups, better, worse = [], [], []
    r = rewards.detach().double().cpu().tolist()
    m = mask.cpu().tolist()
    keep = informative.cpu().tolist()
    for g, (row, row_mask) in enumerate(zip(r, m)):
        if not keep[g]:
            continue
        real = [i for i, ok in enumerate(row_mask) if ok]
        for a, b in group_pairs([row[i] for i in real], pairing):
            groups.append(g)
            better.append(real[a])
            worse.append(real[b])
    device = rewards.device
    as_index = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return as_index(groups), as_index(better), as_index(worse)


def gdpo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor,
    *,
    beta: float,
    pairing: Pairing = "adjacent",
    weighting: Weighting = "minmax",
    link: Link = "sigmoid",
    mask: torch.Tensor | None = None,
    eps: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GDPO loss over [groups, G] sequence log-probs and rewards; returns (scalar loss, metrics).

    Metrics: `pair_accuracy` (share of counted pairs with Δ > 0), `margin` (mean Δ over counted pairs),
    `counted_pairs`, `groups`, `skipped_groups` (zero-variance or single-response groups), `logratio_best` and
    `logratio_worst` (mean ℓ of each counted group's best and worst response).
    With no counted pair at all the loss is a zero that still depends on the inputs (zero gradient, no error).
    """
    if link not in LINKS:
        raise ValueError(f"unknown link {link!r}; expected one of {', '.join(LINKS)}")
    mask = _check(policy_logps, ref_logps, rewards, mask)
    logratios = policy_logps - ref_logps
    adv, informative = group_advantages(rewards, mask)
    weights = response_weights(adv.to(logratios.dtype), mask, weighting, eps)
    g, i, j = _pair_index(rewards, mask, informative, pairing)
    metrics = {
        "groups": float(rewards.shape[0]),
        "skipped_groups": float((~informative).sum().item()),
        "counted_pairs": float(g.numel()),
    }
    if g.numel() == 0:
        metrics.update(pair_accuracy=0.0, margin=0.0, logratio_best=0.0, logratio_worst=0.0)
        return (logratios * 0.0).sum(), metrics

    scaled = beta * weights * logratios
    margins = scaled[g, i] - scaled[g, j]
    per_pair = -torch.sigmoid(margins) if link == "sigmoid" else -F.logsigmoid(margins)
    n_groups = rewards.shape[0]
    pair_counts = torch.zeros(n_groups, dtype=per_pair.dtype, device=per_pair.device).index_add_(0, g, torch.ones_like(per_pair))
    group_sums = torch.zeros(n_groups, dtype=per_pair.dtype, device=per_pair.device).index_add_(0, g, per_pair)
    counted = pair_counts > 0
    loss = (group_sums[counted] / pair_counts[counted]).mean()

    with torch.no_grad():
        big = torch.finfo(rewards.dtype).max if rewards.is_floating_point() else 1e30
        r = rewards.double()
        best = torch.where(mask, r, torch.full_like(r, -big)).argmax(dim=1)
        worst = torch.where(mask, r, torch.full_like(r, big)).argmin(dim=1)
        rows = torch.arange(n_groups, device=rewards.device)[counted]
        metrics.update(
            pair_accuracy=(margins > 0).float().mean().item(),
            margin=margins.mean().item(),
            logratio_best=logratios[rows, best[counted]].mean().item(),
            logratio_worst=logratios[rows, worst[counted]].mean().item(),
        )
    return loss, metrics


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO's sigmoid loss −log σ(β((π_c − ref_c) − (π_r − ref_r))), averaged over pairs (TRL's `sigmoid`)."""
    margins = beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
    loss = -F.logsigmoid(margins).mean()
    with torch.no_grad():
        metrics = {
            "pair_accuracy": (margins > 0).float().mean().item() if margins.numel() else 0.0,
            "margin": margins.mean().item() if margins.numel() else 0.0,
            "counted_pairs": float(margins.numel()),
        }
    return loss, metrics


def dpo_group_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor,
    *,
    beta: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO on groups: chosen = the best response (first among ties), rejected = the worst (last among ties).

    Zero-variance groups are skipped and counted like in `gdpo_loss`.
    """
    mask = _check(policy_logps, ref_logps, rewards, mask)
    _, informative = group_advantages(rewards, mask)
    n_groups, G = rewards.shape
    r = rewards.double()
    big = 1e300
    best = torch.where(mask, r, torch.full_like(r, -big)).argmax(dim=1)
    # Last among ties: argmax over the reversed columns.
    worst_rev = torch.where(mask, -r, torch.full_like(r, -big)).flip(1).argmax(dim=1)
    worst = G - 1 - worst_rev
    rows = torch.arange(n_groups, device=rewards.device)[informative]
    b, w = best[informative], worst[informative]
    metrics_base = {"groups": float(n_groups), "skipped_groups": float((~informative).sum().item())}
    if rows.numel() == 0:
        return ((policy_logps - ref_logps) * 0.0).sum(), {**metrics_base, "pair_accuracy": 0.0, "margin": 0.0, "counted_pairs": 0.0}
    loss, metrics = dpo_loss(policy_logps[rows, b], policy_logps[rows, w], ref_logps[rows, b], ref_logps[rows, w], beta=beta)
    return loss, {**metrics_base, **metrics}


def sft_loss(
    policy_logps: torch.Tensor,
    token_counts: torch.Tensor,
    rewards: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    threshold: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean negative log-likelihood of the selected responses.

    `policy_logps` must be summed (not averaged) over response tokens and `token_counts` holds each response's number
    of response tokens. threshold None: the best response of each group (first among ties); otherwise every response
    whose reward is >= threshold (-inf selects all of them).
    """
    mask = _check(policy_logps, token_counts.to(policy_logps.dtype), rewards, mask)
    if threshold is None:
        r = rewards.double()
        best = torch.where(mask, r, torch.full_like(r, -1e300)).argmax(dim=1)
        selected = torch.zeros_like(mask)
        selected[torch.arange(rewards.shape[0], device=rewards.device), best] = True
        selected &= mask
    else:
        selected = mask & (rewards >= threshold)
    tokens = (token_counts * selected).sum()
    nll = -(policy_logps * selected).sum() / tokens.clamp(min=1)
    return nll, {"selected_responses": float(selected.sum().item()), "selected_tokens": float(tokens.item())}
