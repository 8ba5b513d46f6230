"""Near-duplicate search on unit vectors: spherical k-means partition, exact cosine inside it, greedy keep rule.

Everything here works on a float32 matrix `x` of unit rows (cosine = dot product) and a priority `rank` (0 = kept
first); it knows nothing about datasets.

**Rule.** Items are visited in rank order; an item is a duplicate when its cosine to an item already *kept* is at
least `threshold` (= 1 − ε), and then `dup_of` names the highest-ranked such kept item. So with A ~ B and B ~ C but
not A ~ C (ranks A < B < C), B is removed as a twin of A and C is kept: C is not near anything that survives. The
kept set has no pair at or above the threshold, and every removed item has a kept twin at or above it, so
`duplicate_of` always points at a row that stays. (SemDeDup's code instead drops an item near *any* earlier item,
kept or not, which would also drop C and leave it without a surviving twin.)

**Search.** `exact` (small N): every pair, in blocks. `clustered`: a two-level spherical k-means (faiss) gives
`ceil(N / leaf_size)` leaf clusters, each point is compared exactly with the members of its `nprobe` nearest leaves
(its own included), so a pair split by a cluster border is still found when either point has the other's leaf among
its nearest. Cost O(N · nprobe · leaf_size · d) for the comparisons plus O(N · √k · d) for the assignment.

**Memory.** Only pairs at or above the threshold leave a block, and each item keeps at most `max_earlier` of its
higher-ranked neighbours (the highest-ranked ones); an item whose stored neighbours were all removed is checked again
exactly (`recheck`), so the result equals the greedy rule on the full candidate graph while memory stays
O(N · max_earlier) even when thousands of items are mutual duplicates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# Rows of a similarity block: BLOCK × (leaf or block) float32 values at a time.
BLOCK = 2048
COLUMNS = 8192
DEFAULT_LEAF_SIZE = 1000
DEFAULT_NPROBE = 3
DEFAULT_MAX_EARLIER = 8
SAMPLE_PER_CENTROID = 256  # k-means is fit on at most this many points per centroid
KMEANS_ITERATIONS = 20


# accept(a, b, s) -> bool mask: whether the pairs (a[t], b[t]) of cosine s[t], already at or above the search
# threshold, count as duplicates.
Accept = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Partition:
    """Leaf clusters of a point set and, for the clustered search, the leaves each point is compared with."""

    leaf: np.ndarray  # int64 [n]: the leaf (cluster) of each point
    n_leaves: int
    n_coarse: int  # first-level clusters (1 when there is one level)
    probes: np.ndarray | None = None  # int64 [n, nprobe]: leaves compared with each point (own leaf first)
    stats: dict = field(default_factory=dict)

    def compares(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Whether the clustered search compares the pairs (i[t], j[t]): one has the other's leaf among its probes
        (all pairs when there are no probes: the exact search)."""
        i, j = np.asarray(i), np.asarray(j)
        if self.probes is None:
            return np.ones(len(i), dtype=bool)
        return ((self.probes[i] == self.leaf[j][:, None]).any(axis=1)
                | (self.probes[j] == self.leaf[i][:, None]).any(axis=1))


@dataclass
class SearchResult:
    dup_of: np.ndarray  # int64 [n]: index of the kept twin, -1 for a kept item
    similarity: np.ndarray  # float32 [n]: cosine to that twin (nan for a kept item)
    stats: dict = field(default_factory=dict)


# ---------------------------------------------------------------- k-means


def _gpu_available() -> bool:
    try:
        import faiss

        return faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001  (a broken GPU runtime means: no GPU)
        return False


def spherical_kmeans(x: np.ndarray, k: int, seed: int, niter: int = KMEANS_ITERATIONS,
                     sample_per_centroid: int = SAMPLE_PER_CENTROID) -> np.ndarray:
    """Unit centroids [k, d] of `x` by spherical k-means (faiss), fit on a seeded sample of at most
    `sample_per_centroid` · k points. k is lowered to the number of distinct sample points when needed."""
    import faiss

    n, d = x.shape
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    m = min(n, max(k, sample_per_centroid * k))
    sample = x if m == n else x[np.sort(rng.choice(n, size=m, replace=False))]
    if k == 1:
        c = sample.mean(axis=0, keepdims=True)
        return _normalize(c if np.linalg.norm(c) > 0 else sample[:1].copy())
    gpu = _gpu_available()
    km = faiss.Kmeans(d, k, niter=niter, seed=int(seed % (2**31)), spherical=True, verbose=False,
                      max_points_per_centroid=sample_per_centroid, min_points_per_centroid=1, gpu=gpu)
    # The fits are small (at most sample_per_centroid * k points, k about sqrt(leaves)): one thread is fastest. With
    # OpenMP threads next to BLAS threads on a busy machine a fit took 20x longer (0.63 s instead of 0.034 s).
    threads = faiss.omp_get_max_threads()
    if not gpu:
        faiss.omp_set_num_threads(1)
    try:
        km.train(np.ascontiguousarray(sample, dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(threads)
    return _normalize(np.asarray(km.centroids, dtype=np.float32))


def _normalize(c: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (c / norms).astype(np.float32)


def _top(x: np.ndarray, centroids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar centroids of each row of x: (similarities, indices), best first, in blocks."""
    k = min(k, len(centroids))
    sims = np.empty((len(x), k), dtype=np.float32)
    idx = np.empty((len(x), k), dtype=np.int64)
    ct = np.ascontiguousarray(centroids.T)
    for start in range(0, len(x), 8 * BLOCK):
        s = x[start : start + 8 * BLOCK] @ ct
        if k < s.shape[1]:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(s.shape[1]), s.shape).copy()
        ps = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        sims[start : start + len(s)] = np.take_along_axis(ps, order, axis=1)
        idx[start : start + len(s)] = np.take_along_axis(part, order, axis=1)
    return sims, idx


def leaf_count(n: int, leaf_size: int = DEFAULT_LEAF_SIZE) -> int:
    """The default number of clusters for n points: one per `leaf_size` points (at least 1)."""
    return max(1, math.ceil(n / leaf_size))


def partition(x: np.ndarray, *, clusters: int | None = None, leaf_size: int = DEFAULT_LEAF_SIZE,
              nprobe: int = DEFAULT_NPROBE, seed: int = 0, probes: bool = True,
              sample_per_centroid: int = SAMPLE_PER_CENTROID, niter: int = KMEANS_ITERATIONS) -> Partition:
    """Two-level spherical k-means: ⌈√k⌉ coarse clusters, each split into leaves in proportion to its size, k leaves
    in all (`clusters`, default ⌈n / leaf_size⌉). With `probes`, also the `nprobe` nearest leaves of every point
    (its own first), searched among the leaves of its `nprobe` nearest coarse clusters.

    Why long: one algorithm (coarse k-means, leaves per cluster by largest remainder, the probe lists) whose steps
    share the same arrays; a few lines over the limit.
    """
    t0 = time.perf_counter()
    n = len(x)
    k = max(1, min(clusters if clusters is not None else leaf_count(n, leaf_size), n))
    k1 = max(1, min(k, math.ceil(math.sqrt(k))))
    coarse = spherical_kmeans(x, k1, seed, niter, sample_per_centroid)
    k1 = len(coarse)
    _, top_coarse = _top(x, coarse, max(1, nprobe) if probes else 1)
    assign1 = top_coarse[:, 0]
    sizes1 = np.bincount(assign1, minlength=k1)
    # Leaves per coarse cluster in proportion to its size (largest remainder), at least one for a non-empty one.
    share = k * sizes1 / max(1, n)
    per = np.where(sizes1 > 0, np.maximum(1, np.floor(share)), 0).astype(np.int64)
    extra = k - int(per.sum())
    if extra > 0:
        for c in np.argsort(-(share - np.floor(share)), kind="stable")[:extra]:
            if sizes1[c] > per[c]:
                per[c] += 1
    per = np.minimum(per, sizes1)
    leaf = np.empty(n, dtype=np.int64)
    leaf_centroids: list[np.ndarray] = []
    children: list[np.ndarray] = []  # leaf ids under each coarse cluster
    members1 = _groups(assign1, k1)
    next_leaf = 0
    for c in range(k1):
        rows = members1[c]
        if len(rows) == 0:
            children.append(np.empty(0, dtype=np.int64))
            continue
        xc = x[rows]
        if per[c] <= 1:
            cent = coarse[c : c + 1]
            local = np.zeros(len(rows), dtype=np.int64)
        else:
            cent = spherical_kmeans(xc, int(per[c]), seed + 1 + c, niter, sample_per_centroid)
            _, a = _top(xc, cent, 1)
            local = a[:, 0]
        # Renumber the non-empty leaves consecutively.
        used = np.unique(local)
        remap = np.full(len(cent), -1, dtype=np.int64)
        remap[used] = np.arange(len(used)) + next_leaf
        leaf[rows] = remap[local]
        leaf_centroids.append(cent[used])  # what the probes compare with
        children.append(np.arange(next_leaf, next_leaf + len(used), dtype=np.int64))
        next_leaf += len(used)
    n_leaves = next_leaf
    centroids = np.concatenate(leaf_centroids) if leaf_centroids else np.zeros((0, x.shape[1]), np.float32)
    part = Partition(leaf=leaf, n_leaves=n_leaves, n_coarse=k1)
    sizes = np.bincount(leaf, minlength=n_leaves)
    part.stats = {"clusters": n_leaves, "coarse_clusters": k1, "cluster_size_min": int(sizes.min()),
                  "cluster_size_median": int(np.median(sizes)), "cluster_size_max": int(sizes.max()),
                  "seconds_kmeans": round(time.perf_counter() - t0, 3)}
    if probes:
        t1 = time.perf_counter()
        part.probes = _probes(x, leaf, centroids, top_coarse, children, max(1, nprobe))
        part.stats["seconds_probes"] = round(time.perf_counter() - t1, 3)
    return part


def _groups(labels: np.ndarray, k: int) -> list[np.ndarray]:
    """Indices of each label 0..k-1 (ascending within a label)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(k)]


def _probes(x: np.ndarray, leaf: np.ndarray, centroids: np.ndarray, top_coarse: np.ndarray,
            children: list[np.ndarray], nprobe: int) -> np.ndarray:
    """[n, nprobe] leaves per point: its own leaf, then the nearest other leaves among the children of its
    nearest coarse clusters (padded with -1 when there are fewer)."""
    n = len(x)
    out = np.full((n, nprobe), -1, dtype=np.int64)
    out[:, 0] = leaf
    if nprobe == 1 or len(centroids) <= 1:
        return out
    b = top_coarse.shape[1]
    # Candidates: the nprobe nearest leaves under each of the point's b nearest coarse clusters.
    cand = np.full((n, b * nprobe), -1, dtype=np.int64)
    sims = np.full((n, b * nprobe), -np.inf, dtype=np.float32)
    for p in range(b):
        for c, rows in enumerate(_groups(top_coarse[:, p], len(children))):
            kids = children[c]
            if len(kids) == 0 or len(rows) == 0:
                continue
            s, i = _top(x[rows], centroids[kids], nprobe)
            cand[rows, p * nprobe : p * nprobe + s.shape[1]] = kids[i]
            sims[rows, p * nprobe : p * nprobe + s.shape[1]] = s
    sims[cand == leaf[:, None]] = -np.inf  # the own leaf is already first
    best = np.argsort(-sims, axis=1, kind="stable")[:, : nprobe - 1]
    picked = np.take_along_axis(cand, best, axis=1)
    out[:, 1:] = np.where(np.isfinite(np.take_along_axis(sims, best, axis=1)), picked, -1)
    return out


# ---------------------------------------------------------------- pairs above the threshold


class _Neighbours:
    """For each item, its higher-ranked neighbours at or above the threshold, at most `limit` (the highest-ranked),
    collected block by block and reduced as they come: memory stays O(n · limit) however dense the duplicates."""

    def __init__(self, rank: np.ndarray, limit: int, accept: Accept | None = None) -> None:
        self.rank = rank
        self.accept = accept  # when given, only the pairs it accepts count
        self.n = len(rank)
        self.limit = limit
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending = 0
        self.compacted = 0
        self.pairs = 0  # hits seen, before reduction (a pair found from both of its leaves counts twice)

    def add(self, a: np.ndarray, b: np.ndarray, s: np.ndarray) -> None:
        """Pairs (a[t], b[t]) with cosine s[t], in either rank order, a != b."""
        if self.accept is not None and len(a):
            ok = self.accept(a, b, s)
            a, b, s = a[ok], b[ok], s[ok]
        if len(a) == 0:
            return
        self.pairs += len(a)
        swap = self.rank[a] < self.rank[b]
        later = np.where(swap, b, a).astype(np.int32)
        earlier = np.where(swap, a, b).astype(np.int32)
        part = self._reduce(later, earlier, np.asarray(s, dtype=np.float32))
        self.parts.append(part)
        self.pending += len(part[0])
        if self.pending > 2 * self.compacted + 1_000_000:
            self._compact()

    def _reduce(self, later: np.ndarray, earlier: np.ndarray, s: np.ndarray):
        key = later.astype(np.int64) * self.n + self.rank[earlier]
        order = np.argsort(key, kind="stable")
        key, later, earlier, s = key[order], later[order], earlier[order], s[order]
        fresh = np.ones(len(key), dtype=bool)
        fresh[1:] = key[1:] != key[:-1]  # the same pair found twice (from both of its leaves)
        later, earlier, s = later[fresh], earlier[fresh], s[fresh]
        first = np.searchsorted(later, later, side="left")
        keep = (np.arange(len(later)) - first) < self.limit
        return later[keep], earlier[keep], s[keep]

    def _compact(self) -> None:
        if len(self.parts) > 1:
            a, b, s = (np.concatenate([p[k] for p in self.parts]) for k in range(3))
            self.parts = [self._reduce(a, b, s)]
        self.pending = self.compacted = len(self.parts[0][0]) if self.parts else 0

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(later, earlier, cosine), sorted by later item and then by the earlier item's rank."""
        if not self.parts:
            e = np.empty(0, dtype=np.int32)
            return e, e, np.empty(0, dtype=np.float32)
        self._compact()
        return self.parts[0]


def _hits(block: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, value) of the entries at or above the threshold; most rows have none, so only the rows
    whose maximum reaches it are scanned."""
    rows = np.flatnonzero(block.max(axis=1) >= threshold)
    if len(rows) == 0:
        e = np.empty(0, dtype=np.int64)
        return e, e, np.empty(0, dtype=np.float32)
    sub = block[rows]
    r, c = np.nonzero(sub >= threshold)
    return rows[r], c, sub[r, c]


def _pairs_within(x: np.ndarray, idx: np.ndarray | None, threshold: float, found: "_Neighbours") -> int:
    """Pairs at or above the threshold among the points `idx` (None: all), upper triangle, in 2-D blocks."""
    xi = x if idx is None else x[idx]
    m = len(xi)
    done = 0
    for rs in range(0, m, BLOCK):
        rows = xi[rs : rs + BLOCK]
        for cs in range(rs, m, COLUMNS):
            sims = rows @ xi[cs : cs + COLUMNS].T
            r, c, s = _hits(sims, threshold)
            keep = c + cs > r + rs
            a, b = r[keep] + rs, c[keep] + cs
            found.add(a if idx is None else idx[a], b if idx is None else idx[b], s[keep])
            done += sims.size
    return done


def _pairs_between(x: np.ndarray, q: np.ndarray, m: np.ndarray, xm: np.ndarray, threshold: float,
                   found: "_Neighbours") -> int:
    """Pairs at or above the threshold between the points `q` and the points `m` (rows `xm` of x)."""
    done = 0
    for rs in range(0, len(q), BLOCK):
        qb = q[rs : rs + BLOCK]
        rows = x[qb]
        for cs in range(0, len(m), COLUMNS):
            sims = rows @ xm[cs : cs + COLUMNS].T
            r, c, s = _hits(sims, threshold)
            found.add(qb[r], m[c + cs], s)
            done += sims.size
    return done


def exact_pairs(x: np.ndarray, threshold: float, found: "_Neighbours") -> dict:
    """Every pair at or above the threshold (brute force)."""
    return {"comparisons": _pairs_within(x, None, threshold, found)}


def clustered_pairs(x: np.ndarray, part: Partition, threshold: float, found: "_Neighbours",
                    tick: Callable[[int], None] | None = None) -> dict:
    """Pairs at or above the threshold between each point and the members of its probe leaves."""
    members = _groups(part.leaf, part.n_leaves)
    probers = _probers(part)
    compared = 0
    for lf in range(part.n_leaves):
        m = members[lf]
        if len(m) == 0:
            continue
        xm = x[m]
        compared += _pairs_within(xm, None, threshold, _Renamed(found, m))
        compared += _pairs_between(x, probers[lf], m, xm, threshold, found)
        if tick:
            tick(len(m))
    return {"comparisons": int(compared)}


class _Renamed:
    """`found` seen through local indices 0..len(names)-1 of the points `names`."""

    def __init__(self, found: "_Neighbours", names: np.ndarray) -> None:
        self.found, self.names = found, names

    def add(self, a: np.ndarray, b: np.ndarray, s: np.ndarray) -> None:
        self.found.add(self.names[a], self.names[b], s)


def _probers(part: Partition) -> list[np.ndarray]:
    """For each leaf, the points of other leaves whose probes include it."""
    if part.probes is None or part.probes.shape[1] < 2:
        return [np.empty(0, dtype=np.int64)] * part.n_leaves
    extra = part.probes[:, 1:]
    rows = np.repeat(np.arange(len(extra)), extra.shape[1])
    leaves = extra.ravel()
    ok = leaves >= 0
    return _groups_of(leaves[ok], rows[ok], part.n_leaves)


def _groups_of(labels: np.ndarray, values: np.ndarray, k: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    labels, values = labels[order], values[order]
    bounds = np.searchsorted(labels, np.arange(k + 1))
    return [values[bounds[i] : bounds[i + 1]] for i in range(k)]


# ---------------------------------------------------------------- the greedy rule


def greedy(x: np.ndarray, rank: np.ndarray, threshold: float, found: _Neighbours,
           candidates: Callable[[int], np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Apply the keep rule in rank order. `candidates(i)` gives every item i may be compared with (for the
    re-check of an item whose stored neighbours were all removed)."""
    n = len(rank)
    dup_of = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan, dtype=np.float32)
    later, earlier, s = found.result()
    if len(later) == 0:
        return dup_of, sim, 0
    # Items with neighbours, in rank order; their neighbour lists are sorted by the neighbour's rank.
    bounds = np.flatnonzero(np.r_[True, later[1:] != later[:-1], True])
    items = later[bounds[:-1]]
    order = np.argsort(rank[items], kind="stable")
    removed = np.zeros(n, dtype=bool)
    limit = found.limit
    rechecks = 0
    earlier_l = earlier.tolist()
    s_l = s.tolist()
    bounds_l = bounds.tolist()
    items_l = items.tolist()
    for g in order.tolist():
        i = items_l[g]
        lo, hi = bounds_l[g], bounds_l[g + 1]
        hit = -1
        for t in range(lo, hi):
            j = earlier_l[t]
            if not removed[j]:
                hit = t
                break
        if hit >= 0:
            removed[i] = True
            dup_of[i] = earlier_l[hit]
            sim[i] = s_l[hit]
        elif hi - lo >= limit:
            # The stored neighbours were all removed and there may be more: compare with every candidate.
            rechecks += 1
            cand = candidates(i)
            ok = (rank[cand] < rank[i]) & ~removed[cand]
            cand = cand[ok]
            if len(cand):
                cs = x[cand] @ x[i]
                hit = cs >= threshold
                if found.accept is not None and hit.any():
                    hit[hit] = found.accept(cand[hit], np.full(int(hit.sum()), i, dtype=np.int64), cs[hit])
                ok = np.nonzero(hit)[0]
                if len(ok):
                    best = ok[np.argmin(rank[cand[ok]])]
                    removed[i] = True
                    dup_of[i] = cand[best]
                    sim[i] = cs[best]
    return dup_of, sim, rechecks


def find_duplicates(x: np.ndarray, rank: np.ndarray, threshold: float, *, method: str = "auto",
                    exact_limit: int = 20_000, clusters: int | None = None, leaf_size: int = DEFAULT_LEAF_SIZE,
                    nprobe: int = DEFAULT_NPROBE, seed: int = 0, max_earlier: int = DEFAULT_MAX_EARLIER,
                    accept: Accept | None = None,
                    tick: Callable[[int], None] | None = None) -> tuple[SearchResult, Partition]:
    """Duplicates of `x` (unit rows) under the greedy rule at cosine ≥ `threshold`, and the leaf clusters.

    `method`: exact (all pairs), clustered (probe leaves), or auto (exact up to `exact_limit` points).
    `rank`: a permutation of 0..n-1, the keep priority (0 first). `accept(a, b, s)`: when given, a pair (a[t], b[t])
    at or above the threshold counts only where it returns True (the stage's guards: same numbers, endings alike,
    per-domain thresholds).
    """
    n = len(x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    rank = np.asarray(rank, dtype=np.int64)
    if method == "auto":
        method = "exact" if n <= exact_limit else "clustered"
    t0 = time.perf_counter()
    part = partition(x, clusters=clusters, leaf_size=leaf_size, nprobe=nprobe, seed=seed,
                     probes=method == "clustered")
    t1 = time.perf_counter()
    found = _Neighbours(rank, max_earlier, accept)
    stats: dict = {"method": method}
    if method == "exact":
        stats.update(exact_pairs(x, threshold, found))
        if tick:
            tick(n)

        def candidates(i: int) -> np.ndarray:
            return np.arange(n)
    else:
        stats.update(clustered_pairs(x, part, threshold, found, tick))
        members = _groups(part.leaf, part.n_leaves)
        probers = _probers(part)

        def candidates(i: int) -> np.ndarray:
            own = [members[lf] for lf in part.probes[i] if lf >= 0]
            cand = np.unique(np.concatenate(own + [probers[part.leaf[i]]]))
            return cand[cand != i]
    t2 = time.perf_counter()
    dup_of, sim, rechecks = greedy(x, rank, threshold, found, candidates)
    t3 = time.perf_counter()
    stats.update({"pair_hits": int(found.pairs), "rechecks": rechecks, "seconds_cluster": round(t1 - t0, 3),
                  "seconds_pairs": round(t2 - t1, 3), "seconds_greedy": round(t3 - t2, 3)})
    stats.update(part.stats)
    return SearchResult(dup_of, sim, stats), part
