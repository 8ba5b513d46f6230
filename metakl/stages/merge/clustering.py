"""Merge steps 1 and 2: skills by normalized name, stem-signature groups, and average-linkage clusters of their
embeddings (bounded by a nearest-neighbour graph, so memory stays O(n*k))."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

import numpy as np

from metakl.stages.knowledge_parse import check_skill_name, normalize_skill_name

# Short on purpose: words that never distinguish two skills. ("not", "no" are kept: they change the meaning.)
STOP_WORDS = frozenset(
    """a an the of to in on at by for from with without into onto over under about as and or
    its it their this that these those is are be being been was were using use via based
    skill skills knowledge understanding concept concepts basic basics ability""".split()
)


# ---------------------------------------------------------------- step 1: stem signatures


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.snowball import SnowballStemmer

    return SnowballStemmer("english")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    s = _stemmer().stem(word)
    # Snowball gives adding -> "ad" but add -> "add": undouble a final consonant so the two agree.
    if len(s) > 2 and s[-1] == s[-2] and s[-1] not in "aeiou":
        s = s[:-1]
    return s


def skill_signature(name: str) -> str:
    """Stem signature of a normalized name: sorted unique stems of its non-stop words."""
    words = [w for w in name.split("_") if w]
    content = [w for w in words if w not in STOP_WORDS] or words
    return "_".join(sorted({_stem(w) for w in content}))


# ---------------------------------------------------------------- skills and groups


@dataclass
class Skill:
    """One normalized skill name with its mentions: count, reasons seen (first ones), prompt ids."""

    name: str
    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        # most_common keeps insertion order among ties: deterministic for a fixed input order.
        return self.reasons.most_common(1)[0][0] if self.reasons else ""


def collect_skills(rows: Iterable[tuple[str, list[dict]]], examples_per_unit: int = 3) -> dict[str, Skill]:
    """(prompt id, knowledge) pairs -> skills by normalized name, in order of first mention."""
    skills: dict[str, Skill] = {}
    for prompt_id, knowledge in rows:
        for item in knowledge or []:
            name = normalize_skill_name(item.get("skill") or "")
            if check_skill_name(name):
                continue
            s = skills.get(name)
            if s is None:
                s = skills[name] = Skill(name)
            s.count += 1
            reason = (item.get("reason") or "").strip()
            if reason and (reason in s.reasons or len(s.reasons) < 5):
                s.reasons[reason] += 1
            if len(s.examples) < examples_per_unit and prompt_id not in s.examples:
                s.examples.append(prompt_id)
    return skills


@dataclass
class Group:
    """Names sharing a stem signature (step 1)."""

    signature: str
    names: list[str]
    count: int
    label: str  # its most frequent name
    reason: str  # the label's most frequent reason


def group_skills(skills: dict[str, Skill]) -> list[Group]:
    by_sig: dict[str, list[str]] = {}
    for name in skills:
        by_sig.setdefault(skill_signature(name), []).append(name)
    groups = []
    for sig, names in by_sig.items():
        label = most_frequent(names, skills)
        groups.append(Group(sig, names, sum(skills[n].count for n in names), label, skills[label].reason))
    return groups


def most_frequent(names: list[str], skills: dict[str, Skill]) -> str:
    # Ties go to the shorter, then alphabetically first name, so the choice does not depend on input order.
    return min(names, key=lambda n: (-skills[n].count, len(n), n))


# ---------------------------------------------------------------- step 2: embeddings and clusters


def embed_skills(names: list[str], reasons: list[str], embedder, reason_weight: float = 0.0) -> np.ndarray:
    """Unit vectors for skills: the name's words, mixed with the reason's embedding when `reason_weight` > 0."""
    emb = embedder([n.replace("_", " ") for n in names])
    if reason_weight > 0 and len(names):
        r = embedder([reason or n.replace("_", " ") for n, reason in zip(names, reasons)])
        emb = (1.0 - reason_weight) * emb + reason_weight * r
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32)


def _neighbour_graph(emb: np.ndarray, k: int, max_distance: float, block: int = 1024):
    """Sparse symmetric graph of each point's k nearest neighbours closer than `max_distance` (cosine)."""
    from scipy.sparse import coo_matrix

    n = emb.shape[0]
    k = min(k, n - 1)
    rows, cols = [], []
    if k > 0:
        for start in range(0, n, block):
            sims = emb[start : start + block] @ emb.T
            idx = np.arange(start, min(start + block, n))
            sims[np.arange(len(idx)), idx] = -np.inf  # no self edges
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n - 1 else np.tile(np.arange(n), (len(idx), 1))
            top_sims = np.take_along_axis(sims, top, axis=1)
            keep = top_sims >= 1.0 - max_distance
            rows.append(np.repeat(idx, keep.sum(1)))
            cols.append(top[keep])
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    g = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n)).tocsr()
    return (g + g.T).tocsr()


def cluster_embeddings(emb: np.ndarray, threshold: float, neighbors: int = 30, exact_limit: int = 5000) -> np.ndarray:
    """Average-linkage clusters (cosine distance <= threshold); labels numbered by first appearance."""
    from scipy.sparse.csgraph import connected_components

    n = emb.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return labels
    graph = _neighbour_graph(emb, neighbors, threshold)
    n_comp, comp = connected_components(graph, directed=False)
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(comp):
        members[c].append(i)
    sub_labels = np.zeros(n, dtype=np.int64)
    for c, idx in members.items():
        if len(idx) == 1:
            continue
        if len(idx) <= exact_limit:
            sub_labels[idx] = _average_linkage(emb[idx], threshold)
        else:
            sub_labels[idx] = _graph_linkage(emb[idx], graph[idx][:, idx], threshold)
    # Relabel (component, sub-cluster) by first appearance so labels follow input order.
    seen: dict[tuple[int, int], int] = {}
    for i in range(n):
        labels[i] = seen.setdefault((int(comp[i]), int(sub_labels[i])), len(seen))
    return labels


def _average_linkage(emb: np.ndarray, threshold: float) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    dist = np.clip(pdist(emb.astype(np.float64), metric="cosine"), 0.0, 2.0)
    tree = linkage(dist, method="average")
    return fcluster(tree, t=threshold, criterion="distance")


def _graph_linkage(emb: np.ndarray, connectivity, threshold: float) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", connectivity=connectivity, distance_threshold=threshold
    )
    return model.fit_predict(emb)
