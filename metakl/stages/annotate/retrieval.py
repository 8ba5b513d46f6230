"""The taxonomy annotators' shared first step: the taxonomy, and each prompt's nearest units by embedding
similarity (metakl.stages.unit_index); and the taxonomy artifact with this run's counts."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from metakl.errors import UserError
from metakl.stages.annotate.base import AnnotateConfig, Candidates, Rows


def load_annotation_taxonomy(value: str | None) -> tuple[dict[str, Any], str]:
    """The taxonomy for guided/embedding annotation and its path (one UserError when it cannot be used)."""
    from metakl.stages.merge import load_taxonomy
    from metakl.stages.unit_index import resolve_taxonomy

    path = resolve_taxonomy(value)
    tax = load_taxonomy(path)
    if not tax["units"]:
        raise UserError(f"{path}: the taxonomy has no units to choose from")
    return tax, str(path)


def taxonomy_for(config: AnnotateConfig, taxonomy: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """`taxonomy` (an object, checked) or the one `config.taxonomy` names, and its path (None for an object)."""
    if taxonomy is None:
        return load_annotation_taxonomy(config.taxonomy)
    from metakl.stages.merge import validate_taxonomy

    problems = validate_taxonomy(taxonomy)
    if problems:
        raise UserError(f"taxonomy: {problems[0]}")
    return taxonomy, None


_INDEXES: dict[tuple[str, str], Any] = {}  # (taxonomy digest, embedder identity) -> UnitIndex, for this process


def unit_index_for(tax: dict[str, Any], embedder: Any, progress: bool = False):
    """The retrieval index of a taxonomy (unit texts embedded through the on-disk cache; kept in memory)."""
    from metakl.stages.unit_index import UnitIndex, taxonomy_digest

    key = (taxonomy_digest(tax), str(getattr(embedder, "identity", id(embedder))))
    if key not in _INDEXES:
        if len(_INDEXES) >= 4:
            _INDEXES.pop(next(iter(_INDEXES)))
        _INDEXES[key] = UnitIndex.build(tax, embedder, progress=progress)
    return _INDEXES[key]


def retrieve(rows: Rows, todo: list[int], tax: dict[str, Any], config: AnnotateConfig, m: int, *,
             embedder: Any = None, executor: Any = None, progress: bool = False) -> Candidates:
    """Embed the prompts of `todo` (on `executor`, in batches) and find their `m` nearest units of `tax`."""
    from metakl.executors import LOCAL
    from metakl.stages.unit_index import prompt_text, retrieval_domain

    t_load = time.perf_counter()
    given = embedder
    if embedder is None:
        from metakl.embed import load_embedder

        embedder = load_embedder(config.embedding_model, config.embedding_max_seq_length)
    t0 = time.perf_counter()
    index = unit_index_for(tax, embedder, progress=progress)
    t_units = time.perf_counter()
    vectors, prompt_counts = (executor or LOCAL).embed(
        [prompt_text(rows.questions[i], rows.choices[i]) for i in todo], model=config.embedding_model,
        max_seq_length=config.embedding_max_seq_length, embedder=given, progress=progress)
    t_prompts = time.perf_counter()
    idx, sim = index.search(vectors, [retrieval_domain(rows.domains[i], rows.questions[i]) for i in todo], m)
    t_search = time.perf_counter()
    top1 = sim[:, 0][np.isfinite(sim[:, 0])] if len(todo) else np.array([])
    estats = getattr(embedder, "stats", None)
    return Candidates(index, idx, sim, {
        "candidates": m,
        "embedding_model": config.embedding_model,
        "load_seconds": round(t0 - t_load, 3),  # loading the embedding model (once per process)
        "unit_texts_seconds": round(t_units - t0, 3),  # embedding the taxonomy's unit texts (cached on disk)
        "prompt_embedding_seconds": round(t_prompts - t_units, 3),
        "search_seconds": round(t_search - t_prompts, 3),
        "top1_similarity_mean": round(float(top1.mean()), 4) if len(top1) else None,
        "embedder": estats.as_dict() if hasattr(estats, "as_dict") else None,
        "prompt_embeddings": prompt_counts,  # encoded / from the cache, wherever the batches ran
    })


def taxonomy_with_counts(tax: dict[str, Any], ids: list[str], units_col: list[list[str]],
                         examples_per_unit: int = 3) -> dict[str, Any]:
    """`tax` with each unit's `count` (rows tagged with it here) and `examples` (their first ids); units by count."""
    count: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for row_id, units in zip(ids, units_col):
        for u in units:
            count[u] += 1
            ex = examples.setdefault(u, [])
            if len(ex) < examples_per_unit:
                ex.append(row_id)
    units = {}
    for name in sorted(tax["units"], key=lambda u: -count[u]):  # stable: ties keep the taxonomy's order
        entry = dict(tax["units"][name])
        entry["count"] = count[name]
        entry["examples"] = examples.get(name, [])
        entry["members"] = {m: {**(info if isinstance(info, dict) else {}),
                                "count": count[name] if m == name else 0}
                            for m, info in entry["members"].items()}
        units[name] = entry
    return {**{k: v for k, v in tax.items() if k != "units"}, "units": units}
