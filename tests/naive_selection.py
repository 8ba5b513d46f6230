"""The naive reference of knowledge-gap selection (Algorithm 1 as written in the paper): at every step, rescan every
remaining prompt and count its units still below their target. Used by tests/test_filter_algorithm.py and
benchmarks/select_speed.py to check that metakl.stages.knowledge_gap.select picks exactly the same prompts."""

from __future__ import annotations


def naive_select(units, targets, *, rank, r=6, budget=None, domains=None, quotas=None, work=None):
    """Returns (picked, phase, gain, stopped) like metakl.stages.knowledge_gap.select; `work` (a dict), when
    given, receives the number of (prompt, unit) checks of the rescans."""
    checks = 0
    n_units = len(targets)
    pool = [0] * n_units
    for us in units:
        for u in us:
            pool[u] += 1
    need = [min(max(0, t), c) for t, c in zip(targets, pool)]
    chosen = [0] * n_units
    picked, phase, gains = [], [], []
    taken: set[int] = set()
    used: dict = {}
    quotas = quotas or {}
    limit = len(units) if budget is None else budget

    def gain(p):
        return sum(1 for u in units[p] if chosen[u] < need[u])

    def full(p):
        d = domains[p] if domains is not None else None
        return d in quotas and used.get(d, 0) >= quotas[d]

    def take(p, ph):
        picked.append(p)
        phase.append(ph)
        gains.append(gain(p))
        taken.add(p)
        if domains is not None:
            used[domains[p]] = used.get(domains[p], 0) + 1
        for u in units[p]:
            chosen[u] += 1

    if r > 0:
        for p in sorted((p for p in range(len(units)) if len(units[p]) >= r), key=lambda p: (-len(units[p]), rank[p])):
            if full(p):
                continue
            if len(picked) >= limit:
                return picked, phase, gains, "budget"
            take(p, "r")
    while True:
        best, best_key = None, None
        for p in range(len(units)):  # the rescan: every remaining prompt, every step
            if p in taken or full(p):
                continue
            g = gain(p)
            checks += len(units[p])
            if g > 0 and (best_key is None or (-g, rank[p]) < best_key):
                best, best_key = p, (-g, rank[p])
        if work is not None:
            work["unit_checks"] = checks
        if best is None:
            return picked, phase, gains, "no_gap"
        if len(picked) >= limit:
            return picked, phase, gains, "budget"
        take(best, "gap")
