"""metakl.stages.dedup.search on vectors: the greedy keep rule, exactness against a brute-force reference, memory
bounds on dense duplicate sets, determinism. No model: fast."""

from __future__ import annotations

import numpy as np
import pytest

from metakl.stages.dedup import search
from metakl.stages.dedup.search import find_duplicates, partition


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference(x: np.ndarray, rank: np.ndarray, threshold: float) -> np.ndarray:
    """The rule written plainly: visit items by rank; an item within the threshold of a kept one is a duplicate of
    the highest-ranked such kept item."""
    sims = x @ x.T
    dup = np.full(len(x), -1)
    kept = np.zeros(len(x), dtype=bool)
    for i in np.argsort(rank):
        twins = np.flatnonzero(kept & (sims[i] >= threshold))
        if len(twins):
            dup[i] = twins[np.argmin(rank[twins])]
        else:
            kept[i] = True
    return dup


def chain() -> np.ndarray:
    """A ~ B and B ~ C (cosine 0.95) but not A ~ C (cosine 0.805)."""
    angle = np.arccos(0.95)
    return unit([[np.cos(a), np.sin(a), 0.0] for a in (0.0, angle, 2 * angle)])


@pytest.mark.parametrize("method", ["exact", "clustered"])
def test_transitive_chain_keeps_what_no_kept_item_covers(method):
    x = chain()
    assert float(x[0] @ x[2]) < 0.9 < float(x[0] @ x[1])
    # A first: B goes as A's twin; C is near B only, and B is gone, so C stays.
    res, _ = find_duplicates(x, np.array([0, 1, 2]), 0.9, method=method, clusters=1)
    assert res.dup_of.tolist() == [-1, 0, -1]
    assert res.similarity[1] == pytest.approx(0.95, abs=1e-5) and np.isnan(res.similarity[[0, 2]]).all()
    # B first: A and C both go as B's twins.
    res, _ = find_duplicates(x, np.array([1, 0, 2]), 0.9, method=method, clusters=1)
    assert res.dup_of.tolist() == [1, -1, 1]
    # C first: B goes, A stays (A is not near C).
    res, _ = find_duplicates(x, np.array([2, 1, 0]), 0.9, method=method, clusters=1)
    assert res.dup_of.tolist() == [-1, 2, -1]


def planted(n_base: int = 1500, d: int = 48, seed: int = 0) -> np.ndarray:
    """Base points plus noisy copies at several distances: some pairs above 0.95, some just around it."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_base, d))
    copies = [base[: n_base // 2] + s * rng.standard_normal((n_base // 2, d)) for s in (0.12, 0.2, 0.3)]
    return unit(np.concatenate([base, *copies]))


def test_exact_equals_the_reference_and_removals_point_at_kept_rows():
    x = planted()
    rank = np.random.default_rng(1).permutation(len(x))
    want = reference(x, rank, 0.95)
    res, _ = find_duplicates(x, rank, 0.95, method="exact")
    assert (want >= 0).sum() > 300  # the test has duplicates to find
    assert np.array_equal(res.dup_of, want)
    twins = res.dup_of[res.dup_of >= 0]
    assert (res.dup_of[twins] == -1).all()  # every twin is itself kept
    assert (rank[twins] < rank[res.dup_of >= 0]).all()


def test_clustered_with_every_cluster_probed_is_exact_even_with_one_stored_neighbour():
    # nprobe >= clusters makes the candidate graph complete; max_earlier=1 forces the re-check path.
    x = planted(seed=2)
    rank = np.random.default_rng(3).permutation(len(x))
    want = reference(x, rank, 0.95)
    res, part = find_duplicates(x, rank, 0.95, method="clustered", clusters=12, nprobe=12, max_earlier=1)
    assert part.n_leaves == 12
    assert res.stats["rechecks"] > 0
    assert np.array_equal(res.dup_of, want)


def test_clustered_recall_and_no_removal_the_reference_would_not_make():
    x = planted(n_base=3000, seed=4)
    rank = np.random.default_rng(5).permutation(len(x))
    want = reference(x, rank, 0.95)
    res, part = find_duplicates(x, rank, 0.95, method="clustered", clusters=40)
    assert part.n_leaves == 40 and part.probes.shape == (len(x), search.DEFAULT_NPROBE)
    assert (part.probes[:, 0] == part.leaf).all()
    got = res.dup_of >= 0
    assert not (got & (want < 0)).any()
    assert got.sum() >= 0.99 * (want >= 0).sum()
    # Within-cluster only (SemDeDup's search) misses more.
    res1, _ = find_duplicates(x, rank, 0.95, method="clustered", clusters=40, nprobe=1)
    assert (res1.dup_of >= 0).sum() < got.sum()


def test_a_dense_set_of_mutual_duplicates_keeps_one_and_bounded_memory():
    rng = np.random.default_rng(6)
    centre = rng.standard_normal(32)
    x = unit(centre + 0.01 * rng.standard_normal((1500, 32)))  # 1500 points, every pair above 0.99
    rank = rng.permutation(len(x))
    found = search._Neighbours(rank, 4)
    search._pairs_within(x, None, 0.99, found)
    later, _, _ = found.result()
    assert found.pairs == 1500 * 1499 // 2 and len(later) <= 4 * len(x)
    res, _ = find_duplicates(x, rank, 0.99, method="clustered", clusters=3, max_earlier=4)
    leader = int(np.argmin(rank))
    assert (res.dup_of == -1).sum() == 1 and res.dup_of[leader] == -1
    assert (res.dup_of[np.arange(len(x)) != leader] == leader).all()


def test_partition_sizes_and_determinism():
    x = planted(n_base=4000, seed=7)
    a = partition(x, leaf_size=500, seed=3)
    b = partition(x, leaf_size=500, seed=3)
    assert a.n_leaves == b.n_leaves and np.array_equal(a.leaf, b.leaf) and np.array_equal(a.probes, b.probes)
    assert abs(a.n_leaves - search.leaf_count(len(x), 500)) <= 2
    assert a.n_coarse == int(np.ceil(np.sqrt(search.leaf_count(len(x), 500))))
    sizes = np.bincount(a.leaf)
    assert sizes.min() > 0 and sizes.max() < 5 * 500
    rank = np.arange(len(x))
    r1, _ = find_duplicates(x, rank, 0.95, method="clustered", leaf_size=500, seed=3)
    r2, _ = find_duplicates(x, rank, 0.95, method="clustered", leaf_size=500, seed=3)
    assert np.array_equal(r1.dup_of, r2.dup_of)


def test_tiny_inputs():
    x = unit(np.eye(3, 8))
    for method in ("exact", "clustered"):
        res, part = find_duplicates(x[:1], np.array([0]), 0.9, method=method)
        assert res.dup_of.tolist() == [-1] and part.leaf.tolist() == [0]
        res, part = find_duplicates(np.repeat(x[:1], 2, axis=0), np.array([1, 0]), 0.9, method=method)
        assert res.dup_of.tolist() == [1, -1]
