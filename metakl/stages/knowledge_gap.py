"""Knowledge-gap selection (MetaGDPO appendix, Algorithm 1), incremental.

Prompts are integers 0..N-1, units integers 0..U-1. C[k] is the number of prompts in the pool with unit k, C_s[k]
the number selected so far, and `targets[k]` the number of prompts unit k should get (from the base model's
proficiency; see metakl.stages.proficiency.TargetRule). Unit k has a *gap* while C_s[k] < need[k] = min(targets[k],
C[k]), which is the paper's C_s[k] / C[k] < r_k with r_k = min(1, targets[k] / C[k]).

1. Every prompt with at least `r` units is kept first (most units first, then `rank`), as the paper does (r = 6:
   "more than 5"); `r = 0` turns this off.
2. Then repeatedly the prompt that fills the largest gap is added: the one with the most units currently in gap
   (its *gain*); ties go to the lower `rank` (harder prompts first, then a seeded shuffle; see `tie_ranks`).
3. Stop when no remaining prompt has a unit in gap ("no_gap") or the `budget` is spent ("budget").

A prompt whose domain has filled its quota is passed over (in both phases). Budget and quotas are checked when a
prompt would be added, so the result is the greedy choice under those limits.

Incremental form: gains only ever decrease (C_s grows, and a unit that leaves its gap never returns), so each prompt's
gain is kept as a counter, decremented for every prompt of a unit when that unit's gap closes (Σ_k C[k] decrements in
all), and the best prompt comes from a lazy max-heap keyed (gain, rank): an entry whose stored gain is stale is
pushed back with its current gain. Every stored gain is an upper bound of the true one, so the first fresh entry
popped is the exact arg-max of (gain, -rank): the selection equals the naive rescan (tests/test_filter_algorithm.py
checks that on random instances). Cost O(Σ_k C[k] · log N) instead of O(picks · Σ_k C[k]).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Sequence

NO_GAP = "no_gap"
BUDGET = "budget"
PHASE_R = "r"
PHASE_GAP = "gap"


@dataclass
class Selection:
    picked: list[int]  # prompt indices, in the order they were added
    phase: list[str]  # per pick: "r" (at least r units) or "gap"
    gain: list[int]  # per pick: the units in gap that the prompt filled when it was added
    selected: list[int]  # C_s per unit at the end
    pool: list[int]  # C per unit
    need: list[int]  # min(target, C) per unit
    stopped: str  # "no_gap" or "budget"
    quota_skipped: dict[str, int] = field(default_factory=dict)  # prompts passed over because their domain was full
    work: dict[str, int] = field(default_factory=dict)  # operation counts: heap pops, stale re-pushes, gain decrements


def tie_ranks(primary: Sequence[float | None], secondary: Sequence[float | None] | None = None,
              seed: int = 0, demoted: Sequence[bool] | None = None) -> list[int]:
    """A total order of prompts for breaking ties: prompts not `demoted` first (filter demotes groups without a correct
    response), then lower `primary` (the base model's accuracy: harder first), then lower `secondary` (the average
    over models), then a seeded shuffle. None (not scored) sorts after every value. Returns rank[p] (0 = first)."""
    import numpy as np

    n = len(primary)
    shuffle = np.random.default_rng(seed).permutation(n)

    def key(values: Sequence[float | None] | None) -> "np.ndarray":
        if values is None:
            return np.zeros(n)
        return np.array([2.0 if v is None else float(v) for v in values], dtype=float)

    first = np.zeros(n) if demoted is None else np.array([1.0 if d else 0.0 for d in demoted])
    order = np.lexsort((shuffle, key(secondary), key(primary), first))  # last key is the primary sort key
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank.tolist()


def _check(units: Sequence[Sequence[int]], targets: Sequence[int], rank: Sequence[int],
           domains: Sequence[str] | None, quotas: dict[str, int] | None, budget: int | None) -> None:
    n = len(units)
    if len(rank) != n or (domains is not None and len(domains) != n):
        raise ValueError("units, rank and domains must have one entry per prompt")
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if quotas and domains is None:
        raise ValueError("quotas need domains")
    for p, us in enumerate(units):
        if len(set(us)) != len(us):
            raise ValueError(f"prompt {p} lists a unit twice")
        for u in us:
            if not 0 <= u < len(targets):
                raise ValueError(f"prompt {p}: unit {u} out of range")


def select(units: Sequence[Sequence[int]], targets: Sequence[int], *, rank: Sequence[int], r: int = 6,
           budget: int | None = None, domains: Sequence[str] | None = None,
           quotas: dict[str, int] | None = None) -> Selection:
    """Algorithm 1 with targets, budget and per-domain quotas, incrementally (see the module docstring).

    units[p]: the distinct unit indices of prompt p; targets[k]: prompts wanted for unit k; rank[p]: tie order
    (a permutation, lower first); domains[p] with quotas {domain: max prompts}; budget: max prompts in all.

    Why long: Algorithm 1 in one loop: the heap, pools, counts and quotas are updated together at every pick.
    """
    _check(units, targets, rank, domains, quotas, budget)
    n, n_units = len(units), len(targets)
    quotas = dict(quotas or {})
    pool = [0] * n_units
    prompts_of: list[list[int]] = [[] for _ in range(n_units)]
    for p, us in enumerate(units):
        for u in us:
            pool[u] += 1
            prompts_of[u].append(p)
    need = [min(max(0, t), c) for t, c in zip(targets, pool)]
    selected = [0] * n_units
    gain = [sum(1 for u in us if need[u] > 0) for us in units]
    taken = [False] * n
    used: dict[str, int] = {}
    quota_skipped: dict[str, int] = {}
    work = {"heap_pops": 0, "repushes": 0, "decrements": 0}
    sel = Selection([], [], [], selected, pool, need, NO_GAP, quota_skipped, work)
    limit = budget if budget is not None else n

    passed_over = [False] * n

    def full(p: int) -> bool:
        """Whether p's domain quota is spent (then p is passed over, counted once per prompt)."""
        if not quotas:
            return False
        d = domains[p]  # type: ignore[index]
        if d in quotas and used.get(d, 0) >= quotas[d]:
            if not passed_over[p]:
                passed_over[p] = True
                quota_skipped[d] = quota_skipped.get(d, 0) + 1
            return True
        return False

    def add(p: int, phase: str) -> None:
        taken[p] = True
        sel.picked.append(p)
        sel.phase.append(phase)
        sel.gain.append(gain[p])
        if domains is not None:
            used[domains[p]] = used.get(domains[p], 0) + 1
        for u in units[p]:
            selected[u] += 1
            if selected[u] == need[u]:  # the unit's gap closes: every prompt with it gains one less
                work["decrements"] += len(prompts_of[u])
                for q in prompts_of[u]:
                    gain[q] -= 1

    def take(p: int, phase: str) -> bool:
        """Add p unless its domain is full; False when the budget is spent (the selection stops there)."""
        if full(p):
            return True
        if len(sel.picked) >= limit:
            sel.stopped = BUDGET
            return False
        add(p, phase)
        return True

    # Phase 1: every prompt with at least r units (most units first, then rank), within budget and quotas.
    if r > 0:
        first = sorted((p for p in range(n) if len(units[p]) >= r), key=lambda p: (-len(units[p]), rank[p]))
        for p in first:
            if not take(p, PHASE_R):
                return sel

    # Phase 2: the largest gap first, from a lazy max-heap of (gain, rank).
    heap = [(-gain[p], rank[p], p) for p in range(n) if not taken[p] and gain[p] > 0]
    heapq.heapify(heap)
    while heap:
        neg, rk, p = heapq.heappop(heap)
        work["heap_pops"] += 1
        g = gain[p]
        if g <= 0:
            continue
        if -neg != g:  # stale: its gain fell since it was pushed
            heapq.heappush(heap, (-g, rk, p))
            work["repushes"] += 1
            continue
        if not take(p, PHASE_GAP):
            return sel
    return sel
