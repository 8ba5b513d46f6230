"""Group Direct Preference Optimization (MetaGDPO, arXiv 2511.12113), its listwise variant, and the DPO / SFT
baselines, as pure tensor functions over groups of responses.

Every input has shape [groups, G]: one row per prompt, one column per response; `mask` marks the real responses of
groups smaller than G. `policy_logps` and `ref_logps` are sequence log-probs (summed, or averaged, over response
tokens), so ℓ = policy_logps − ref_logps is each response's implicit reward before β.

GDPO: advantages A_i = (r_i − mean r) / std r (population std over the group's real responses), responses ordered by
reward, and for a pair (i better than j) the margin Δ_ij = β·(w_i·ℓ_i − w_j·ℓ_j).

Decisions on the points the paper leaves open (see README "GDPO training"):
- Weights w_i (the paper's 1/A_i). `none` (default since the forgetting experiment, docs/results/forgetting.md: it
  drifted least and lowered the teachers' solutions' likelihood least of the weightings) is the paper's GDPO−A ablation
  (w = 1). `minmax` (this project's safe form of 1/A) scales the group's advantages into [eps, 1] and uses
  w = 1/scaled: every weight is positive and finite and decreases with advantage, which is the paper's stated intent
  (high-advantage responses get smaller updates). `raw` is the literal w = 1/A_i with |A_i| clamped to at least eps (A = 0 counts as +eps); it is
  UNSAFE: for A_i < 0 the term's sign flips and minimising the loss pushes the likelihood of the worst responses up.
- Groups whose rewards are all equal (population std <= metakl.schema.ZERO_VARIANCE_EPS, the reward stage's
  threshold) or with fewer than two real responses carry no preference: no loss, no gradient, counted.
- Ties are broken by `tie_keys` (the trainer passes a seeded hash of each response's tokens, so the order does not
  depend on how the responses were stored), then by column. Pairs of equal rewards never count, whatever the pairing.
  `block` (default, tie-aware O(G)) splits the group into blocks of equal reward, best first, and pairs each member of
  a block with a member of the next lower block, cycling through the smaller block, so every response takes part; with
  distinct rewards it is exactly `adjacent`, the paper's O(G) chain (with binary rewards the chain keeps a single
  informative pair per group). `all` is the paper's O(G²) form.
- Normalisation (`group_normalization`): `pairs` divides a group's summed pair losses by its counted pairs (the mean
  over informative pairs); `paper` divides by the paper's pair count for the group's G real responses, G−1 for the
  O(G) pairings and G(G−1)/2 for `all`, whether or not pairs are tied. They agree when nothing is tied; with binary
  rewards and `adjacent` (one informative pair) `pairs` weighs a group (G−1)× what the paper gives it. The batch loss is the sum of the group losses divided by `num_groups` — by default the number of groups
  with a counted pair in this batch; the trainer passes the count of the whole optimizer step (all micro-batches and
  ranks), so how a step is split does not change the update.
- link `sigmoid` is the paper's −σ(Δ) (bounded: its gradient vanishes for large |Δ| on both sides); `logsigmoid` is
  DPO's −log σ(Δ).

`listwise_loss` is a Plackett–Luce likelihood of the reward order over the same scores s_i = β·w_i·ℓ_i (every
response of the group, O(G) with a suffix log-sum-exp); see its docstring for the tie rule.

Metrics are returned as sums (see SUM_METRICS, a `MetricSums`: one float64 tensor on the loss's device, readable as
floats) so that micro-batches, logging intervals and ranks can be pooled exactly; `summarize` turns pooled sums into
the logged means (TRL names: rewards/accuracies, rewards/margins, ...). Nothing in a loss call copies to the host or
depends on data-dependent shapes: pairs are fixed-size slots with a validity mask (`pair_slots`), so a GPU step
queues its kernels without waiting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F

from metakl.schema import ZERO_VARIANCE_EPS

Pairing = Literal["block", "adjacent", "all"]
Weighting = Literal["minmax", "none", "raw"]
Link = Literal["sigmoid", "logsigmoid"]

PAIRINGS = ("block", "adjacent", "all")
WEIGHTINGS = ("minmax", "none", "raw")
LINKS = ("sigmoid", "logsigmoid")
GROUP_NORMALIZATIONS = ("pairs", "paper")

# Sums returned by every loss (0 where they do not apply), pooled by the trainer and turned into means by `summarize`.
SUM_METRICS = (
    "groups",  # groups in the batch
    "zero_std_groups",  # groups without a preference (all rewards equal, or one response): skipped
    "counted_groups",  # groups that contribute to the loss
    "counted_pairs",  # (better, worse) pairs in the loss (listwise: the `block` pairs, for the metrics only)
    "correct_pairs",  # counted pairs with margin Δ > 0
    "margin_sum",  # Σ Δ over counted pairs
    "chosen_reward_sum",  # Σ β·ℓ of each counted group's best response
    "rejected_reward_sum",  # Σ β·ℓ of each counted group's worst response
    "chosen_logps_sum",  # Σ policy log-prob of each counted group's best response
    "rejected_logps_sum",  # Σ policy log-prob of each counted group's worst response
    "loss_sum",  # Σ of the group losses (sft: Σ token NLL)
    "selected_responses",  # sft
    "selected_tokens",  # sft
    "nll_sum",  # best_response_nll (rpo_alpha): Σ over counted groups of the best response's token-mean NLL
)

_NEG = -1e30  # finite "minus infinity" for padded scores (keeps log-sum-exp gradients free of NaN)


def _check(policy_logps, ref_logps, rewards, mask, tie_keys) -> torch.Tensor:
    if policy_logps.dim() != 2:
        raise ValueError(f"policy_logps must have shape [groups, G], got {tuple(policy_logps.shape)}")
    for name, t in (("ref_logps", ref_logps), ("rewards", rewards), ("tie_keys", tie_keys)):
        if t is not None and t.shape != policy_logps.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(policy_logps.shape)} like policy_logps")
    if mask is None:
        return torch.ones(rewards.shape, dtype=torch.bool, device=rewards.device)
    if mask.shape != policy_logps.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(policy_logps.shape)}")
    return mask.to(torch.bool)


def group_advantages(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, informative): standardized advantages over each group's real responses (0 where masked or skipped), and
    a [groups] bool that is False for groups with fewer than two real responses or all-equal rewards
    (population std <= ZERO_VARIANCE_EPS, the threshold the reward stage uses)."""
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    r = rewards.double()
    m = mask.double()
    n = m.sum(dim=1)
    mean = (r * m).sum(dim=1) / n.clamp(min=1)
    var = (((r - mean[:, None]) ** 2) * m).sum(dim=1) / n.clamp(min=1)
    std = var.sqrt()
    informative = (n >= 2) & (std > ZERO_VARIANCE_EPS)
    adv = torch.where(mask & informative[:, None], (r - mean[:, None]) / std.clamp(min=ZERO_VARIANCE_EPS)[:, None], 0.0)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32), informative


def informative_groups(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[groups] bool: the groups that carry a preference (at least two real responses with different rewards)."""
    return group_advantages(rewards, mask)[1]


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
        span = (hi - lo).clamp(min=ZERO_VARIANCE_EPS)
        scaled = eps + (1.0 - eps) * (adv - lo) / span  # in [eps, 1], 1 for the best response
        return torch.where(mask, 1.0 / scaled, torch.ones_like(adv))
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")


def sort_order(rewards: torch.Tensor, mask: torch.Tensor | None = None, tie_keys: torch.Tensor | None = None) -> torch.Tensor:
    """[groups, G] column indices from the best response to the worst: reward descending, ties by `tie_keys`
    ascending (then by column), padded cells last."""
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    keys = tie_keys if tie_keys is not None else torch.arange(rewards.shape[1], device=rewards.device).expand_as(rewards)
    primary = torch.where(mask, -rewards.double(), torch.full_like(rewards, float("inf"), dtype=torch.float64))
    by_key = keys.argsort(dim=1, stable=True)
    by_reward = primary.gather(1, by_key).argsort(dim=1, stable=True)
    return by_key.gather(1, by_reward)


def _first_and_last(rewards, mask, tie_keys) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns of each group's best (first in sort order) and worst (last real in sort order) response."""
    order = sort_order(rewards, mask, tie_keys)
    n_real = mask.sum(dim=1).clamp(min=1)
    return order[:, 0], order.gather(1, (n_real - 1)[:, None]).squeeze(1)


def group_pairs(rewards: list[float], pairing: Pairing, tie_keys: list[int] | None = None) -> list[tuple[int, int]]:
    """Pairs (better, worse) of indices into `rewards` for one group; pairs of equal rewards are never produced.

    Responses are ordered by reward, descending; ties by `tie_keys` ascending, then by index.
    """
    keys = tie_keys if tie_keys is not None else [0] * len(rewards)
    order = sorted(range(len(rewards)), key=lambda i: (-rewards[i], keys[i], i))
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


def pair_slots(rewards, mask, informative, pairing: Pairing, tie_keys=None):
    """(better, worse, valid): [groups, K] column indices of each group's (better, worse) pairs and which slots hold a
    counted pair, built with tensor ops on the rewards' device (no host round trip, fixed shapes, so a GPU never waits
    for the pair list). The same pairs as `group_pairs` (the readable definition); slots may come in another order.
    K: G − 1 (adjacent), G² (all), 2G (block: each response owns at most a pair with the next lower block and one with
    the next higher block)."""
    order = sort_order(rewards, mask, tie_keys)
    valid = (mask & informative[:, None]).gather(1, order)  # a prefix of each row: padded cells sort last
    r = rewards.double().gather(1, order)
    n_groups, G = rewards.shape
    if pairing == "adjacent":
        return order[:, :-1], order[:, 1:], valid[:, 1:] & (r[:, :-1] > r[:, 1:])
    if pairing == "all":
        ok = valid[:, :, None] & valid[:, None, :] & (r[:, :, None] > r[:, None, :])
        return order[:, :, None].expand(-1, -1, G).reshape(n_groups, -1), order[:, None, :].expand(-1, G, -1).reshape(n_groups, -1), ok.reshape(n_groups, -1)
    if pairing != "block":
        raise ValueError(f"unknown pairing {pairing!r}; expected one of {', '.join(PAIRINGS)}")
    # Blocks of equal reward in sorted order; block k pairs member t of the larger of (k, k+1) with member
    # t mod size of the other (upper block on equal sizes), like group_pairs.
    pos = torch.arange(G, device=rewards.device).expand(n_groups, G)
    starts = valid.clone()
    starts[:, 1:] &= r[:, 1:] != r[:, :-1]
    block = (starts.long().cumsum(dim=1) - 1).clamp(min=0)
    t = pos - torch.where(starts, pos, 0).cummax(dim=1).values  # index within its block
    spare = G + 1  # where cells that start no block / are not real land; slot G stays an empty "block after the last"
    size = torch.zeros(n_groups, G + 2, dtype=torch.long, device=rewards.device).scatter_add_(1, torch.where(valid, block, spare), valid.long())
    first = torch.zeros(n_groups, G + 2, dtype=torch.long, device=rewards.device).scatter_(1, torch.where(starts, block, spare), pos)
    own = size.gather(1, block)
    nxt, prv = block + 1, (block - 1).clamp(min=0)
    size_next, size_prev = size.gather(1, nxt), size.gather(1, prv)
    down_ok = valid & (size_next > 0) & (own >= size_next)
    up_ok = valid & (block > 0) & (own > size_prev)
    down_partner = first.gather(1, nxt) + t % size_next.clamp(min=1)
    up_partner = first.gather(1, prv) + t % size_prev.clamp(min=1)
    col = lambda p: order.gather(1, p.clamp(max=G - 1))  # noqa: E731
    better = torch.cat([order, col(up_partner)], dim=1)
    worse = torch.cat([col(down_partner), order], dim=1)
    return better, worse, torch.cat([down_ok, up_ok], dim=1)


def _normalize(loss_sum: torch.Tensor, count, default: torch.Tensor) -> torch.Tensor:
    if count is None:
        denominator = default
    elif torch.is_tensor(count):
        denominator = count.to(loss_sum.device)
    else:
        denominator = torch.full((), float(count), device=loss_sum.device)  # a fill: no host-to-device copy
    return loss_sum / denominator.to(loss_sum.dtype).clamp(min=1)


class MetricSums(Mapping):
    """The SUM_METRICS of one loss call as one float64 tensor on the loss's device (`.tensor`, which the trainer adds
    up without leaving the device); read as a mapping of floats, copied to the host once on first read."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self._floats: dict[str, float] | None = None

    def __getitem__(self, key: str) -> float:
        if self._floats is None:
            self._floats = dict(zip(SUM_METRICS, self.tensor.tolist()))
        return self._floats[key]

    def __iter__(self):
        return iter(SUM_METRICS)

    def __len__(self) -> int:
        return len(SUM_METRICS)

    def __repr__(self) -> str:
        return f"MetricSums({dict(self)})"


def _metric_sums(device, **values) -> MetricSums:
    """All sums stacked in one device tensor (SUM_METRICS order, 0 for the absent ones): no host transfer here."""
    def as_tensor(v) -> torch.Tensor:
        if torch.is_tensor(v):
            return v.detach().to(torch.float64).reshape(())
        return torch.full((), float(v), dtype=torch.float64, device=device)  # a fill, not a host-to-device copy

    zero = torch.zeros((), dtype=torch.float64, device=device)
    return MetricSums(torch.stack([as_tensor(values[k]) if k in values else zero for k in SUM_METRICS]))


@torch.no_grad()
def _pair_metric_sums(loss_sum, policy_logps, logratios, rewards, mask, informative, counted, margins, valid, tie_keys,
                      beta) -> MetricSums:
    """The loss sum with the pair and best/worst sums; margins and valid are [groups, K] (invalid slots ignored),
    counted is [groups]. The group losses' one epilogue."""
    best, worst = _first_and_last(rewards, mask, tie_keys)
    pick = lambda x, cols: torch.where(counted, x.gather(1, cols[:, None]).squeeze(1), 0.0).sum()  # noqa: E731
    return _metric_sums(
        loss_sum.device,
        loss_sum=loss_sum,
        groups=rewards.shape[0],
        zero_std_groups=(~informative).sum(),
        counted_groups=counted.sum(),
        counted_pairs=valid.sum(),
        correct_pairs=(valid & (margins > 0)).sum(),
        margin_sum=torch.where(valid, margins, 0.0).sum(),
        chosen_reward_sum=beta * pick(logratios, best),
        rejected_reward_sum=beta * pick(logratios, worst),
        chosen_logps_sum=pick(policy_logps, best),
        rejected_logps_sum=pick(policy_logps, worst),
    )


def gdpo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor,
    *,
    beta: float,
    pairing: Pairing = "block",
    weighting: Weighting = "none",
    link: Link = "sigmoid",
    mask: torch.Tensor | None = None,
    eps: float = 0.1,
    tie_keys: torch.Tensor | None = None,
    num_groups: float | torch.Tensor | None = None,
    group_normalization: str = "pairs",
) -> tuple[torch.Tensor, MetricSums]:
    """GDPO loss over [groups, G] sequence log-probs and rewards; returns (scalar loss, metric sums).

    loss = Σ_groups (Σ_{counted pairs} link(Δ) / d_group) / num_groups (default: the groups with a counted pair here);
    d_group = the group's counted pairs (`pairs`) or the paper's G−1 / G(G−1)/2 for its G real responses (`paper`).
    With no counted pair at all the loss is a zero that still depends on the inputs (zero gradient, no error).
    """
    if link not in LINKS:
        raise ValueError(f"unknown link {link!r}; expected one of {', '.join(LINKS)}")
    if group_normalization not in GROUP_NORMALIZATIONS:
        raise ValueError(f"unknown group_normalization {group_normalization!r}; expected one of {', '.join(GROUP_NORMALIZATIONS)}")
    mask = _check(policy_logps, ref_logps, rewards, mask, tie_keys)
    logratios = policy_logps - ref_logps
    adv, informative = group_advantages(rewards, mask)
    weights = response_weights(adv.to(logratios.dtype), mask, weighting, eps)
    better, worse, valid = pair_slots(rewards, mask, informative, pairing, tie_keys)
    scaled = beta * weights * logratios
    margins = scaled.gather(1, better) - scaled.gather(1, worse)
    per_pair = -torch.sigmoid(margins) if link == "sigmoid" else -F.logsigmoid(margins)
    pair_counts = valid.sum(dim=1)
    counted = pair_counts > 0
    if group_normalization == "paper":  # the paper's 1/(G−1) or 2/(G(G−1)): tied pairs count in the denominator
        n_real = mask.sum(dim=1).to(per_pair.dtype)
        divisor = n_real * (n_real - 1) / 2 if pairing == "all" else n_real - 1
    else:
        divisor = pair_counts.to(per_pair.dtype)
    group_losses = torch.where(valid, per_pair, 0.0).sum(dim=1) / divisor.clamp(min=1)
    loss_sum = torch.where(counted, group_losses, 0.0).sum() + (logratios * 0.0).sum()
    loss = _normalize(loss_sum, num_groups, counted.sum())
    return loss, _pair_metric_sums(loss_sum, policy_logps, logratios, rewards, mask, informative, counted, margins, valid,
                                   tie_keys, beta)


def listwise_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor,
    *,
    beta: float,
    weighting: Weighting = "none",
    mask: torch.Tensor | None = None,
    eps: float = 0.1,
    tie_keys: torch.Tensor | None = None,
    num_groups: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, MetricSums]:
    """Plackett–Luce negative log-likelihood of each group's reward order over the scores s_i = β·w_i·ℓ_i.

    Responses sorted by reward (best first) are drawn one by one without replacement with probability
    ∝ exp(s): term_k = s_k − log Σ_{m ≥ k} exp(s_m); the group loss is −mean_k term_k over every response but those
    of the last (worst) block, computed in O(G) with a suffix log-sum-exp. Ties: a member i of a block of equal
    rewards competes only with the strictly worse responses, term_i = s_i − log(exp(s_i) + Σ_{r_m < r_i} exp(s_m)),
    and never with its ties (no pressure between responses without a preference); without ties this is the plain
    Plackett–Luce term. G = 2 with weighting `none` is DPO's −log σ(β(ℓ_1 − ℓ_2)). Metrics use the `block` pairs.
    """
    mask = _check(policy_logps, ref_logps, rewards, mask, tie_keys)
    logratios = policy_logps - ref_logps
    adv, informative = group_advantages(rewards, mask)
    weights = response_weights(adv.to(logratios.dtype), mask, weighting, eps)
    scores = (beta * weights * logratios).to(torch.promote_types(logratios.dtype, torch.float32))
    n_groups, G = rewards.shape
    order = sort_order(rewards, mask, tie_keys)
    valid = (mask & informative[:, None]).gather(1, order)
    s = torch.where(valid, scores.gather(1, order), torch.full_like(scores, _NEG))
    r = torch.where(valid, rewards.double().gather(1, order), torch.full_like(rewards, float("-inf"), dtype=torch.float64))
    # Suffix log-sum-exp (index G: nothing left) and, for each position, where its block ends.
    suffix = torch.cat([torch.logcumsumexp(s.flip(1), dim=1).flip(1), torch.full_like(s[:, :1], _NEG)], dim=1)
    starts = torch.ones_like(valid)
    starts[:, 1:] = r[:, 1:] != r[:, :-1]
    block = starts.long().cumsum(dim=1) - 1  # block id of each position
    n_valid = valid.sum(dim=1, keepdim=True)
    block_end = n_valid.expand(n_groups, G + 1).clone()  # end of block b = start of block b + 1
    positions = torch.arange(G, device=rewards.device).expand(n_groups, G)
    later_starts = starts & (block > 0) & valid
    block_end.scatter_(1, torch.where(later_starts, block - 1, G), torch.where(later_starts, positions, n_valid.expand(n_groups, G)))
    end = block_end.gather(1, block)
    lower = suffix.gather(1, end)  # log Σ exp(s) over strictly worse responses
    counted_terms = valid & (end < n_valid)
    terms = s - torch.logaddexp(s, lower)
    per_group = -(torch.where(counted_terms, terms, torch.zeros_like(terms))).sum(dim=1)
    n_terms = counted_terms.sum(dim=1)
    counted = n_terms > 0
    loss_sum = torch.where(counted, per_group / n_terms.clamp(min=1), 0.0).sum() + (logratios * 0.0).sum()
    loss = _normalize(loss_sum, num_groups, counted.sum())
    with torch.no_grad():
        better, worse, valid = pair_slots(rewards, mask, informative, "block", tie_keys)
        margins = scores.gather(1, better) - scores.gather(1, worse)
    return loss, _pair_metric_sums(loss_sum, policy_logps, logratios, rewards, mask, informative, counted, margins, valid,
                                   tie_keys, beta)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, MetricSums]:
    """DPO's sigmoid loss −log σ(β((π_c − ref_c) − (π_r − ref_r))), averaged over pairs (TRL's `sigmoid`)."""
    margins = beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
    loss = -F.logsigmoid(margins).mean() if margins.numel() else margins.sum()
    with torch.no_grad():
        metrics = _metric_sums(
            loss.device, groups=margins.numel(), counted_groups=margins.numel(), counted_pairs=margins.numel(), correct_pairs=(margins > 0).sum(),
            margin_sum=margins.sum(), chosen_reward_sum=beta * (policy_chosen_logps - ref_chosen_logps).sum(),
            rejected_reward_sum=beta * (policy_rejected_logps - ref_rejected_logps).sum(),
            chosen_logps_sum=policy_chosen_logps.sum(), rejected_logps_sum=policy_rejected_logps.sum(), loss_sum=loss * margins.numel(),
        )
    return loss, metrics


def dpo_group_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor,
    *,
    beta: float,
    mask: torch.Tensor | None = None,
    tie_keys: torch.Tensor | None = None,
    num_groups: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, MetricSums]:
    """DPO on groups: chosen = the best response, rejected = the worst (ties broken by `tie_keys`, see sort_order).

    Zero-variance groups are skipped and counted like in `gdpo_loss`; the sum over groups is divided by `num_groups`.
    """
    mask = _check(policy_logps, ref_logps, rewards, mask, tie_keys)
    _, informative = group_advantages(rewards, mask)
    best, worst = _first_and_last(rewards, mask, tie_keys)
    logratios = policy_logps - ref_logps
    margins = beta * (logratios.gather(1, best[:, None]) - logratios.gather(1, worst[:, None]))  # [groups, 1]
    valid = informative[:, None]
    loss_sum = torch.where(valid, -F.logsigmoid(margins), 0.0).sum() + (logratios * 0.0).sum()
    loss = _normalize(loss_sum, num_groups, informative.sum())
    return loss, _pair_metric_sums(loss_sum, policy_logps, logratios, rewards, mask, informative, informative, margins, valid,
                                   tie_keys, beta)


def sft_selection(rewards: torch.Tensor, mask: torch.Tensor | None = None, threshold: float | None = None, tie_keys: torch.Tensor | None = None) -> torch.Tensor:
    """[groups, G] bool: the responses SFT trains on — the best of each group (ties broken by `tie_keys`) when
    threshold is None, else every real response with reward >= threshold (-inf selects all of them)."""
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    if threshold is None:
        best, _ = _first_and_last(rewards, mask, tie_keys)
        selected = torch.zeros_like(mask)
        selected[torch.arange(rewards.shape[0], device=rewards.device), best] = True
        return selected & mask
    return mask & (rewards >= threshold)


def sft_loss(
    policy_logps: torch.Tensor,
    token_counts: torch.Tensor,
    rewards: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    threshold: float | None = None,
    tie_keys: torch.Tensor | None = None,
    num_tokens: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, MetricSums]:
    """Token-mean negative log-likelihood of the selected responses (see `sft_selection`).

    `policy_logps` must be summed (not averaged) over response tokens and `token_counts` holds each response's number
    of response tokens. The NLL sum is divided by `num_tokens` (default: the selected tokens of this batch).
    """
    mask = _check(policy_logps, token_counts.to(policy_logps.dtype), rewards, mask, tie_keys)
    selected = sft_selection(rewards, mask, threshold, tie_keys)
    tokens = (token_counts * selected).sum()
    nll_sum = -(policy_logps * selected).sum()
    loss = _normalize(nll_sum, num_tokens, tokens)
    with torch.no_grad():
        metrics = _metric_sums(
            loss.device, groups=rewards.shape[0], selected_responses=selected.sum(), selected_tokens=tokens, loss_sum=nll_sum
        )
    return loss, metrics


def best_response_nll(
    policy_logps: torch.Tensor,
    token_counts: torch.Tensor,
    rewards: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    tie_keys: torch.Tensor | None = None,
    num_groups: float | torch.Tensor | None = None,
    average: bool = False,
) -> tuple[torch.Tensor, MetricSums]:
    """The NLL term that `rpo_alpha` adds to a preference loss (TRL's name, from RPO, arXiv 2404.19733): for each
    group with a preference, the token-mean negative log-likelihood of its best response (ties by `tie_keys`); summed
    over those groups and divided by `num_groups` (default: their count), the preference losses' normalizer, so the
    two terms scale alike however a step is split. Groups without a preference add nothing.

    `policy_logps` summed over response tokens (or averaged, `average=True`); `token_counts`: response tokens.
    Why: preference losses lower the likelihood of the chosen responses along with the rejected ones (likelihood
    displacement); anchoring the best response keeps the skill being distilled likely.
    """
    mask = _check(policy_logps, token_counts.to(policy_logps.dtype), rewards, mask, tie_keys)
    _, informative = group_advantages(rewards, mask)
    best, _ = _first_and_last(rewards, mask, tie_keys)
    logps = policy_logps.gather(1, best[:, None]).squeeze(1)
    per_token = logps if average else logps / token_counts.gather(1, best[:, None]).squeeze(1).to(policy_logps.dtype).clamp(min=1)
    nll_sum = -torch.where(informative, per_token, 0.0).sum() + (policy_logps * 0.0).sum()
    loss = _normalize(nll_sum, num_groups, informative.sum())
    with torch.no_grad():
        metrics = _metric_sums(loss.device, nll_sum=nll_sum)
    return loss, metrics


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Logged metrics from pooled sums (TRL's names where one exists); a mean whose count is 0 is left out.

    rewards/accuracies: share of counted pairs with Δ > 0; rewards/margins: mean Δ (the link's argument, weights
    included); rewards/chosen, rewards/rejected: mean β·ℓ of each counted group's best / worst response;
    logps/chosen, logps/rejected: their mean policy log-probs; frac_reward_zero_std: share of groups skipped for having
    no preference; counted_pairs, counted_groups: totals.
    """
    out: dict[str, float] = {}
    if sums.get("groups", 0) and not sums.get("selected_tokens", 0):
        out["frac_reward_zero_std"] = sums["zero_std_groups"] / sums["groups"]
    if sums.get("counted_pairs", 0):
        out["rewards/accuracies"] = sums["correct_pairs"] / sums["counted_pairs"]
        out["rewards/margins"] = sums["margin_sum"] / sums["counted_pairs"]
        out["counted_pairs"] = sums["counted_pairs"]
    if sums.get("counted_groups", 0):
        n = sums["counted_groups"]
        out.update({
            "rewards/chosen": sums["chosen_reward_sum"] / n,
            "rewards/rejected": sums["rejected_reward_sum"] / n,
            "logps/chosen": sums["chosen_logps_sum"] / n,
            "logps/rejected": sums["rejected_logps_sum"] / n,
            "counted_groups": n,
        })
    if sums.get("nll_sum", 0) and sums.get("counted_groups", 0):
        out["nll_loss"] = sums["nll_sum"] / sums["counted_groups"]  # TRL's name for the rpo_alpha term
    if sums.get("selected_responses", 0):
        out["selected_responses"] = sums["selected_responses"]
        out["selected_tokens"] = sums["selected_tokens"]
    return out
