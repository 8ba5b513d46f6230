"""Metacognitive knowledge: which knowledge each prompt needs, as `[{skill, reason}]`, in three ways, one module each
behind one interface (`base.Strategy`):

- `guided` (default, guided.py): taxonomy-guided. The prompt's top-M candidate units are retrieved by embedding
  similarity (retrieval.py, metakl.stages.unit_index; the seed taxonomy unless another is given); the model picks
  1..K of them with a reason each, through structured output whose names are an enum of the candidates, so every
  answer names real units. The `units` column is written directly (merge is optional on this path).
- `embedding` (embedding.py): no model. The nearest units whose similarity clears a calibrated floor (and lies
  within a margin of the best), the unit's description as the reason. Fast and deterministic; the baseline the LLM
  modes must beat.
- `open` (open_set.py): the paper's open-set tagging, `{skill_name: reason}` with names the model invents (for a
  strong teacher building a taxonomy; `merge` then turns the skills into units). One domain-aware template per domain.

Every answer goes through the tolerant parser and validator anyway. An invalid answer is retried up to `retries`
times, each time with the model's previous answer and the validation error in the conversation (ask.py). A row that
still fails keeps its place with an empty `knowledge` list and an `errors` entry.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from datasets import Dataset

from metakl.schema import STAGE_FEATURES, error
from metakl.stage import StageResult, replace_stage_errors, stage
from metakl.stages.annotate.base import (
    BACKEND_ERROR,
    BAD_DOMAIN,
    EMPTY_QUESTION,
    MIN_SIMILARITY,
    SIMILARITY_MARGIN,
    STAGE,
    TAXONOMY_FILE,
    UNKNOWN_UNIT,
    AnnotateConfig,
    Annotator,
    Failure,
    Labels,
    Rows,
    Strategy,
)
from metakl.stages.annotate.embedding import Embedding
from metakl.stages.annotate.guided import Guided, guided_json_schema, parse_guided
from metakl.stages.annotate.open_set import OpenSet
from metakl.stages.annotate.retrieval import (
    _INDEXES,
    Candidates,
    load_annotation_taxonomy,
    retrieve,
    taxonomy_for,
    taxonomy_with_counts,
    unit_index_for,
)

__all__ = [
    "BACKEND_ERROR", "BAD_DOMAIN", "EMPTY_QUESTION", "MIN_SIMILARITY", "SIMILARITY_MARGIN", "STAGE",
    "TAXONOMY_FILE", "UNKNOWN_UNIT", "AnnotateConfig", "Annotator", "STRATEGIES", "Strategy", "annotate",
    "guided_json_schema", "load_annotation_taxonomy", "parse_guided", "summarize", "taxonomy_with_counts",
    "unit_index_for", "_INDEXES",
]

STRATEGIES: dict[Annotator, type] = {Annotator.guided: Guided, Annotator.embedding: Embedding, Annotator.open: OpenSet}


@stage(STAGE, AnnotateConfig, needs_backend=lambda cfg: cfg.annotator != Annotator.embedding, batched=True,
       requires={"id": "the request cache key", "domain": "the domain's units", "question": "the prompt"},
       # guided and embedding pick units of a taxonomy; open-set skills get theirs from merge
       provides=lambda cfg: ("knowledge", "units") if STRATEGIES[cfg.annotator].uses_taxonomy else ("knowledge",),
       needs_embedder=lambda cfg: STRATEGIES[cfg.annotator].uses_taxonomy)
def annotate(ds: Dataset, config: AnnotateConfig, *, backend: Any, progress: bool = False,
             taxonomy: dict[str, Any] | None = None, embedder: Any = None, executor: Any = None) -> StageResult:
    """Add a `knowledge` column ([{skill, reason}]) and per-row errors; guided and embedding also add `units`.

    `taxonomy` (an object) replaces `config.taxonomy`; `embedder` replaces loading `config.embedding_model`.
    `executor` (metakl.executors) embeds the prompts in batches (under Ray, on the cluster); the taxonomy's unit
    texts (a few hundred) and the nearest-unit search stay here.
    """
    tax: tuple[dict[str, Any], str | None] | None = None
    if config.annotator != Annotator.open:
        # The taxonomy and the templates first: a bad file is one clear error before any model is loaded or asked.
        tax = taxonomy_for(config, taxonomy)
    strategy: Strategy = STRATEGIES[config.annotator](config, backend)
    rows = Rows.of(ds)
    unusable = rows.check(strategy.domains)
    todo = [i for i in range(len(rows)) if i not in unusable]
    found = None
    if strategy.uses_taxonomy:
        found = retrieve(rows, todo, tax[0], config, strategy.candidates, embedder=embedder, executor=executor,
                         progress=progress)
    labels = strategy.label(rows, todo, found, progress)
    return _result(ds, config, rows, labels, {**unusable, **labels.failure}, tax, found)


def _result(ds: Dataset, config: AnnotateConfig, rows: Rows, labels: Labels, failure: dict[int, Failure],
            tax: tuple[dict[str, Any], str | None] | None, found: Candidates | None) -> StageResult:
    """The output: the new columns and errors, the report, and (taxonomy annotators) the taxonomy with counts."""
    for name in ("knowledge", "units"):  # units of an earlier annotation no longer match the new knowledge
        if name in ds.column_names:
            ds = ds.remove_columns(name)
    ds = ds.add_column("knowledge", labels.knowledge, feature=STAGE_FEATURES["knowledge"])
    units_col = [[item["skill"] for item in kn] for kn in labels.knowledge]
    if found is not None:
        ds = ds.add_column("units", units_col, feature=STAGE_FEATURES["units"])
    ds = replace_stage_errors(ds, STAGE, _error_entries(failure, labels.attempts))
    summary: dict[str, Any] = {"annotator": config.annotator.value, "max_units": config.max_units}
    if found is not None:
        summary["taxonomy"] = {"name": tax[0].get("name"), "path": tax[1], "units": len(found.index),
                               "digest": found.index.digest}
    summary.update(summarize(labels.knowledge, failure, labels.attempts, rows.domains))
    if found is None:
        summary.update(labels.report)
        return StageResult(ds, summary)
    summary["retrieval"] = found.report
    summary["generation_seconds"] = round(labels.seconds, 3)
    summary.update(labels.report)
    # The taxonomy these units belong to, with this run's counts, as merge writes it (publish reads the
    # descriptions from it; merge is optional on this path).
    return StageResult(ds, summary, artifacts={TAXONOMY_FILE: taxonomy_with_counts(tax[0], rows.ids, units_col)})


def _error_entries(failure: dict[int, Failure], attempts: list[int]) -> dict[int, list[dict]]:
    out = {}
    for i, (kind, message) in failure.items():
        tries = f"after {attempts[i]} attempt(s): " if attempts[i] else ""
        out[i] = [error(STAGE, kind, tries + message)]
    return out


def summarize(knowledge: list[list[dict]], failure: dict[int, Failure], attempts: list[int], domains: list[str],
              top: int = 20) -> dict[str, Any]:
    """Skills per prompt (histogram), most frequent skills, failure rate overall, by kind and by domain."""
    n = len(knowledge)
    per_prompt = Counter(len(k) for i, k in enumerate(knowledge) if i not in failure)
    skills = Counter(item["skill"] for k in knowledge for item in k)
    by_kind = Counter(kind for kind, _ in failure.values())
    by_domain: dict[str, list[int]] = {}
    for i, d in enumerate(domains):
        c = by_domain.setdefault(str(d), [0, 0])
        c[0] += 1
        c[1] += i in failure
    return {
        "annotated": n - len(failure),
        "failed": len(failure),
        "failure_rate": round(len(failure) / n, 4) if n else 0.0,
        "failures_by_kind": {k: {"rows": v, "rate": round(v / n, 4)} for k, v in by_kind.most_common()},
        "failure_rate_by_domain": {d: round(f / t, 4) for d, (t, f) in sorted(by_domain.items())},
        "skills_per_prompt": {str(k): v for k, v in sorted(per_prompt.items())},
        "distinct_skills": len(skills),
        "top_skills": [[s, c] for s, c in skills.most_common(top)],
        "attempts": {str(k): v for k, v in sorted(Counter(a for a in attempts if a).items())},
    }
