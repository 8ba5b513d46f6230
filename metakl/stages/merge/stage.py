"""The merge stage: the three steps in order (`merge_skills`), and the `units` column + taxonomy."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any, Callable

import numpy as np
from datasets import Dataset

from metakl.embed import load_embedder
from metakl.errors import UserError
from metakl.stage import StageResult, stage
from metakl.stages.knowledge_parse import normalize_skill_name
from metakl.stages.merge.clustering import Skill, cluster_embeddings, collect_skills, embed_skills, group_skills, most_frequent
from metakl.stages.merge.config import MergeConfig
from metakl.stages.merge.llm_merge import LLMMerge, apply_llm_merge, llm_merger
from metakl.stages.merge.taxonomy import TAXONOMY_FILE, build_taxonomy, load_taxonomy, map_onto_taxonomy

STAGE = "merge"


def merge_skills(
    skills: dict[str, Skill],
    config: MergeConfig,
    embedder: Callable[[list[str]], np.ndarray],
    taxonomy: dict[str, Any] | None = None,
    llm_merge: LLMMerge | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Skill name -> unit name, plus statistics. Deterministic for a fixed input order."""
    stats: dict[str, Any] = {"skills": len(skills), "mentions": sum(s.count for s in skills.values())}
    t0 = time.perf_counter()
    groups = group_skills(skills)
    stats["step1_groups"] = len(groups)
    stats["seconds_step1"] = round(time.perf_counter() - t0, 3)

    unit_of: dict[str, str] = {}
    pending = groups
    if taxonomy is not None:
        pending, mapped = map_onto_taxonomy(groups, taxonomy, config, embedder, stats)
        for g, unit in mapped:
            for n in g.names:
                unit_of[n] = unit

    t1 = time.perf_counter()
    emb = embed_skills([g.label for g in pending], [g.reason for g in pending], embedder, config.reason_weight)
    stats["seconds_embed"] = round(time.perf_counter() - t1, 3)
    t2 = time.perf_counter()
    labels = cluster_embeddings(emb, config.threshold, config.neighbors, config.exact_limit)
    clusters: dict[int, list[str]] = defaultdict(list)
    for g, lab in zip(pending, labels):
        clusters[int(lab)].extend(g.names)
    stats["seconds_cluster"] = round(time.perf_counter() - t2, 3)

    cluster_list = [clusters[k] for k in sorted(clusters)]
    named = [(most_frequent(names, skills), names) for names in cluster_list]
    if llm_merge is not None:
        t3 = time.perf_counter()
        named = apply_llm_merge(cluster_list, skills, groups, llm_merge, config, stats)
        stats["llm_merge"]["template"] = getattr(llm_merge, "template", None)
        stats["seconds_llm_merge"] = round(time.perf_counter() - t3, 3)

    taken = set(taxonomy["units"]) if taxonomy else set()
    for unit, names in named:
        if unit in taken:
            unit = _fresh_name(unit, taken)
        taken.add(unit)
        for n in names:
            unit_of[n] = unit
    stats["new_units"] = len(named)
    return unit_of, stats


def _fresh_name(unit: str, taken: set[str]) -> str:
    i = 2
    while f"{unit}_{i}" in taken:
        i += 1
    return f"{unit}_{i}"


def _summary(tax: dict[str, Any], units_col: list[list[str]], stats: dict[str, Any],
             embedding_counts: list[dict[str, int]], llm_merge: Any, config: MergeConfig) -> dict[str, Any]:
    """The stage report: units, their sizes, units per prompt, the merge's own statistics and settings."""
    sizes = Counter(len(e["members"]) for e in tax["units"].values())
    counts = Counter(len(u) for u in units_col)
    summary = {
        "rows_without_units": counts.get(0, 0),
        **stats,
        "units": len(tax["units"]),
        "singleton_units": sizes.get(1, 0),
        "largest_units": [[u, e["count"], len(e["members"])] for u, e in list(tax["units"].items())[:10]],
        "members_per_unit": {str(k): v for k, v in sorted(sizes.items())},
        "units_per_prompt": {str(k): v for k, v in sorted(counts.items())},
        "settings": tax["settings"],
    }
    if embedding_counts:  # under Ray: what the workers embedded and found in the embedding cache
        from metakl.executors import merge_stats

        summary["embedding"] = merge_stats(embedding_counts)
    if getattr(llm_merge, "template", None):
        summary["templates"] = [llm_merge.template]
    if config.taxonomy:
        summary["taxonomy_in"] = config.taxonomy
    return summary


def _embedder_for(config: MergeConfig, executor: Any, counts_out: list[dict[str, int]],
                  progress: bool) -> Callable[[list[str]], np.ndarray]:
    """The configured embedding model: loaded here, or reached through `executor`'s blocks (not local), each
    block's counts appended to `counts_out`."""
    if executor is None or executor.kind == "local":
        return load_embedder(config.embedding_model, config.max_seq_length, config.batch_size, config.embedding_dtype)

    def embedder(texts: list[str]) -> np.ndarray:  # the executor's blocks, the same model and settings
        vectors, counts = executor.embed(list(texts), model=config.embedding_model,
                                         max_seq_length=config.max_seq_length, batch_size=config.batch_size,
                                         dtype=config.embedding_dtype, progress=progress)
        counts_out.append(counts)
        return vectors

    return embedder


@stage(STAGE, MergeConfig, needs_backend=lambda cfg: cfg.llm_merge, batched=True,
       requires={"knowledge": "the skills to merge into units"}, provides=("units",), needs_embedder=True)
def merge(
    ds: Dataset,
    config: MergeConfig,
    *,
    backend: Any = None,
    progress: bool = False,
    taxonomy: dict[str, Any] | None = None,
    embedder: Callable[[list[str]], np.ndarray] | None = None,
    llm_merge: LLMMerge | None = None,
    executor: Any = None,
) -> StageResult:
    """Add a `units` column (the units of each row's skills, in order); the taxonomy is the `taxonomy.json` artifact.

    `taxonomy` (an object) or `config.taxonomy` (a file) is an existing taxonomy to map skills onto. With
    `config.llm_merge`, step 3 asks `backend`; `embedder` and `llm_merge` replace the defaults (tests, benchmarks).
    `executor` (metakl.executors) embeds the skills in batches (under Ray, on the cluster); grouping, clustering and
    naming are whole-dataset steps and run here.
    """
    if taxonomy is None and config.taxonomy:
        taxonomy = load_taxonomy(config.taxonomy)
    if llm_merge is None and config.llm_merge:
        if backend is None:
            raise UserError("merge: llm_merge needs a model backend (--base-url/--model)")
        llm_merge = llm_merger(backend, config, config.templates_dir, progress=progress)
    embedding_counts: list[dict[str, int]] = []  # under Ray: what each of the executor's blocks embedded
    if embedder is None:
        embedder = _embedder_for(config, executor, embedding_counts, progress)
    ids = ds["id"] if "id" in ds.column_names else [str(i) for i in range(len(ds))]
    knowledge = ds["knowledge"]
    skills = collect_skills(zip(ids, knowledge), config.examples_per_unit)
    unit_of, stats = merge_skills(skills, config, embedder, taxonomy=taxonomy, llm_merge=llm_merge)

    units_col = []
    for k in knowledge:
        names = [normalize_skill_name(item.get("skill") or "") for item in k or []]
        units_col.append(list(dict.fromkeys(unit_of[n] for n in names if n in unit_of)))
    if "units" in ds.column_names:
        ds = ds.remove_columns("units")
    from metakl.schema import STAGE_FEATURES

    ds = ds.add_column("units", units_col, feature=STAGE_FEATURES["units"])
    tax = build_taxonomy(unit_of, skills, config, config.name, previous=taxonomy)

    summary = _summary(tax, units_col, stats, embedding_counts, llm_merge, config)
    return StageResult(ds, summary, artifacts={TAXONOMY_FILE: tax})
