"""Metacognitive knowledge: which knowledge each prompt needs, as `[{skill, reason}]`, in three ways.

- `guided` (default): taxonomy-guided. The prompt's top-M candidate units are retrieved by embedding similarity
  (metakl.stages.unit_index, the seed taxonomy unless another is given); the model picks 1..K of them with a reason
  each, through structured output whose names are an enum of the candidates, so every answer names real units.
  The `units` column is written directly (merge is optional on this path).
- `embedding`: no model. The nearest units whose similarity clears a calibrated floor (and lies within a margin of
  the best), the unit's description as the reason. Fast and deterministic; the baseline the LLM modes must beat.
- `open`: the paper's open-set tagging, `{skill_name: reason}` with names the model invents (for a strong teacher
  building a taxonomy; `merge` then turns the skills into units). One domain-aware template per domain.

Every answer goes through the tolerant parser and validator anyway. An invalid answer is retried up to `retries`
times, each time with the model's previous answer and the validation error in the conversation. A row that still
fails keeps its place with an empty `knowledge` list and an `errors` entry.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from datasets import Dataset

from metakl.errors import UserError
from metakl.llm import ChatRequest
from metakl.llm.json_repair import JSONRepairError, extract_json
from metakl.schema import DOMAINS, STAGE_FEATURES, domain_mapping, error
from metakl.stage import StageResult, replace_stage_errors, stage
from metakl.stages.knowledge_parse import (
    KnowledgeError,
    check_not_copied,
    example_pairs,
    knowledge_json_schema,
    parse_knowledge,
    validate_knowledge,
)
from metakl.templates import load_template

STAGE = "annotate"
TAXONOMY_FILE = "taxonomy.json"  # the artifact of guided / embedding annotation (merge's file name and format)
BACKEND_ERROR = "backend_error"
BAD_DOMAIN = "bad_domain"
EMPTY_QUESTION = "empty_question"
UNKNOWN_UNIT = "unknown_unit"  # guided: the answer names no unit of the taxonomy
NO_CLOSE_UNIT = "no_close_unit"  # embedding: no unit is similar enough

# Calibrated on the dev split of tests/fixtures/annotate/checkset.jsonl (48 prompts, disjoint from the 60 the
# README reports on) with all-MiniLM-L6-v2 and the seed taxonomy: the grid point with the best micro F1
# (`python benchmarks/annotate_quality.py --calibrate`). Other taxonomies or embedding models may want other values.
MIN_SIMILARITY = 0.20
SIMILARITY_MARGIN = 0.01


class Annotator(str, Enum):
    guided = "guided"
    embedding = "embedding"
    open = "open"


@dataclass
class AnnotateConfig:
    annotator: Annotator = Annotator.guided
    # guided / embedding: a taxonomy file, or the name of one in annotations/taxonomies/ (None: the seed taxonomy)
    taxonomy: str | None = None
    max_skills: int | None = None  # K: at most this many skills/units per prompt; None: 8 open-set, 3 otherwise
    min_skills: int = 1
    candidates: int = 5  # M: units retrieved per prompt and offered to the model (guided)
    min_similarity: float = MIN_SIMILARITY  # embedding: a unit's cosine similarity to the prompt must reach this
    similarity_margin: float = SIMILARITY_MARGIN  # embedding: ... and lie within this of the prompt's best unit
    embedding_model: str = "all-minilm-l6-v2"
    embedding_max_seq_length: int = 128  # tokens of a prompt that retrieval reads (the topic is in its start)
    retries: int = 2  # extra attempts after the first, with the validation error fed back
    max_tokens: int = 256
    temperature: float = 0.0
    # Retries see the error in the conversation, so they differ even at temperature 0.
    retry_temperature: float | None = None  # None: the first attempt's temperature
    seed: int = 0
    structured: bool = True  # ask for JSON-schema structured output when the backend supports it
    templates: dict[str, str] = field(default_factory=lambda: {d: d for d in DOMAINS})
    retry_template: str = "retry"
    guided_template: str = "guided"
    guided_retry_template: str = "guided_retry"
    templates_dir: str | None = None

    def __post_init__(self) -> None:
        try:
            self.annotator = Annotator(self.annotator.value if isinstance(self.annotator, Enum) else self.annotator)
        except ValueError:
            raise UserError(f"annotate: annotator must be one of {', '.join(a.value for a in Annotator)}, "
                            f"got {self.annotator!r}") from None
        k = self.max_units
        if self.retries < 0 or self.min_skills < 1 or k < self.min_skills:
            raise UserError(f"annotate: need retries >= 0 and 1 <= min_skills <= max_skills, got retries "
                            f"{self.retries}, min_skills {self.min_skills}, max_skills {k}")
        if self.candidates < 1:
            raise UserError(f"annotate: candidates must be >= 1, got {self.candidates}")
        self.templates = domain_mapping(self.templates, "annotate: templates")
        if not -1.0 <= self.min_similarity <= 1.0 or self.similarity_margin < 0:
            raise UserError(f"annotate: need -1 <= min_similarity <= 1 and similarity_margin >= 0, got "
                            f"{self.min_similarity}, {self.similarity_margin}")

    @property
    def max_units(self) -> int:
        """K, with the annotator's default when `max_skills` is not set."""
        if self.max_skills is not None:
            return self.max_skills
        return 8 if self.annotator == Annotator.open else 3


def _supports_schema(backend: Any) -> bool:
    # Backends say so with `supports_json_schema`; the ones that do not say are asked anyway (the parser copes).
    return bool(getattr(backend, "supports_json_schema", True))


@stage(STAGE, AnnotateConfig, needs_backend=lambda cfg: cfg.annotator != Annotator.embedding, batched=True)
def annotate(ds: Dataset, config: AnnotateConfig, *, backend: Any, progress: bool = False,
             taxonomy: dict[str, Any] | None = None, embedder: Any = None, executor: Any = None) -> StageResult:
    """Add a `knowledge` column ([{skill, reason}]) and per-row errors; guided and embedding also add `units`.

    `taxonomy` (an object) replaces `config.taxonomy`; `embedder` replaces loading `config.embedding_model`.
    `executor` (metakl.executors) embeds the prompts in batches (under Ray, on the cluster); the taxonomy's unit
    texts (a few hundred) and the nearest-unit search stay here.
    """
    if config.annotator == Annotator.open:
        return _annotate_open(ds, config, backend, progress)
    return _annotate_with_taxonomy(ds, config, backend, progress, taxonomy, embedder, executor)


def _check_rows(domains: list[str], questions: list[str], known_domains) -> dict[int, tuple[str, str]]:
    failure: dict[int, tuple[str, str]] = {}
    for i, (d, q) in enumerate(zip(domains, questions)):
        if d not in known_domains:
            failure[i] = (BAD_DOMAIN, f"domain {d!r} has no template; expected one of {', '.join(sorted(known_domains))}")
        elif not (q or "").strip():
            failure[i] = (EMPTY_QUESTION, "the question is empty")
    return failure


def _choices(ds: Dataset) -> list[list[str]]:
    return [list(c or []) for c in ds["choices"]] if "choices" in ds.column_names else [[] for _ in range(len(ds))]


# ---------------------------------------------------------------- open-set


def _annotate_open(ds: Dataset, config: AnnotateConfig, backend: Any, progress: bool) -> StageResult:
    if backend is None:
        raise UserError("annotate (open-set) needs a model backend")
    k = config.max_units
    templates = {d: load_template("annotate", name, config.templates_dir) for d, name in config.templates.items()}
    retry_template = load_template("annotate", config.retry_template, config.templates_dir)
    schema = knowledge_json_schema(k, config.min_skills) if config.structured and _supports_schema(backend) else None

    n = len(ds)
    ids = ds["id"]
    domains = ds["domain"]
    questions = ds["question"]
    choices = _choices(ds)
    knowledge: list[list[dict[str, str]]] = [[] for _ in range(n)]
    attempts = [0] * n
    first_failures: Counter = Counter()

    # The templates show an example answer; an answer that merely repeats it is rejected.
    examples = {d: example_pairs(t.source) for d, t in templates.items()}
    failure = _check_rows(domains, questions, templates)
    base: dict[int, list[dict[str, str]]] = {
        i: templates[domains[i]].render_messages(question=questions[i], choices=choices[i], max_skills=k)
        for i in range(n) if i not in failure
    }

    def check(i: int, text: str) -> list[dict[str, str]]:
        parsed = parse_knowledge(text, max_skills=k, min_skills=config.min_skills)
        check_not_copied(parsed, examples[domains[i]])
        return parsed

    def feedback(message: str) -> list[dict[str, str]]:
        return retry_template.render_messages(error=message, max_skills=k)

    _ask(backend, config, base, lambda i: schema, check, feedback, ids, knowledge, failure, attempts, first_failures,
         progress)

    new_errors = _error_entries(failure, attempts)
    if "knowledge" in ds.column_names:
        ds = ds.remove_columns("knowledge")
    ds = ds.add_column("knowledge", knowledge, feature=STAGE_FEATURES["knowledge"])
    if "units" in ds.column_names:  # units of an earlier annotation no longer match the new skills
        ds = ds.remove_columns("units")
    ds = replace_stage_errors(ds, STAGE, new_errors)
    summary = {"annotator": Annotator.open.value, "max_units": k}
    summary.update(summarize(knowledge, failure, attempts, domains))
    summary.update(
        first_attempt_failures=dict(first_failures.most_common()),
        templates={d: t.ref for d, t in templates.items()} | {"retry": retry_template.ref},
        structured_output=schema is not None,
    )
    return StageResult(ds, summary)


def _ask(backend, config: AnnotateConfig, base: dict[int, list[dict]], schema_of, check, feedback, ids,
         knowledge: list, failure: dict, attempts: list[int], first_failures: Counter, progress: bool) -> float:
    """Ask for every row of `base`, retrying invalid answers with the error fed back. Returns the seconds spent."""
    conversation = dict(base)
    pending = sorted(base)
    seconds = 0.0
    for attempt in range(1 + config.retries):
        if not pending:
            break
        temperature = config.temperature if attempt == 0 or config.retry_temperature is None else config.retry_temperature
        requests = [
            ChatRequest(messages=conversation[i], n=1, temperature=temperature, max_tokens=config.max_tokens,
                        seed=config.seed, json_schema=schema_of(i), tag=ids[i])
            for i in pending
        ]
        t0 = time.perf_counter()
        results = backend.generate_all(requests, progress=progress)
        seconds += time.perf_counter() - t0
        retry: list[int] = []
        for i, result in zip(pending, results):
            attempts[i] += 1
            if not result.ok:
                failure[i] = (BACKEND_ERROR, str(result.error))
                retry.append(i)  # same conversation again
                continue
            text = result.completion.texts[0] if result.completion.texts else ""
            cut = result.completion.finish_reasons[0] == "length" if result.completion.finish_reasons else False
            try:
                knowledge[i] = check(i, text)
                failure.pop(i, None)
            except KnowledgeError as exc:
                message = exc.message + (f" (the answer was cut off at {config.max_tokens} tokens; be brief)" if cut else "")
                failure[i] = (exc.kind, message)
                if attempt == 0:
                    first_failures[exc.kind] += 1
                conversation[i] = base[i] + [{"role": "assistant", "content": text}] + feedback(message)
                retry.append(i)
        pending = retry
    return seconds


def _error_entries(failure: dict[int, tuple[str, str]], attempts: list[int]) -> dict[int, list[dict]]:
    out = {}
    for i, (kind, message) in failure.items():
        tries = f"after {attempts[i]} attempt(s): " if attempts[i] else ""
        out[i] = [error(STAGE, kind, tries + message)]
    return out


# ---------------------------------------------------------------- guided and embedding


def load_annotation_taxonomy(value: str | None) -> tuple[dict[str, Any], str]:
    """The taxonomy for guided/embedding annotation and its path (one UserError when it cannot be used)."""
    from metakl.stages.merge import load_taxonomy
    from metakl.stages.unit_index import resolve_taxonomy

    path = resolve_taxonomy(value)
    tax = load_taxonomy(path)
    if not tax["units"]:
        raise UserError(f"{path}: the taxonomy has no units to choose from")
    return tax, str(path)


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


def guided_json_schema(names: list[str], max_units: int, min_units: int = 1, reason_max: int = 160) -> dict[str, Any]:
    """Structured output for guided annotation: 1..K records whose `name` is one of this prompt's candidates."""
    return {
        "type": "object",
        "properties": {
            "units": {
                "type": "array",
                "minItems": min_units,
                "maxItems": max_units,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "enum": list(names)},
                        "reason": {"type": "string", "minLength": 3, "maxLength": reason_max},
                    },
                    "required": ["name", "reason"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["units"],
        "additionalProperties": False,
    }


_GUIDED_EXAMPLE = '{"units": [{"name": "<unit>", "reason": "<why>"}]}'


def parse_guided(text: str, known: set[str] | dict, offered: list[str], max_units: int,
                 min_units: int = 1) -> tuple[list[dict[str, str]], list[str]]:
    """A guided answer -> ([{skill: unit, reason}], names dropped because no such unit exists).

    Units of the taxonomy count even when they were not among the offered candidates; more than `max_units` keeps
    the first ones (the model lists the most important first). Raises KnowledgeError when no valid unit remains.
    """
    first_error: KnowledgeError | None = None
    try:
        values = extract_json(text, example=_GUIDED_EXAMPLE)
    except JSONRepairError as exc:
        raise KnowledgeError(exc.kind, exc.message) from None
    for value in values:
        try:
            items = validate_knowledge(value, max_skills=10**6, min_skills=min_units)
        except KnowledgeError as exc:
            first_error = first_error or exc
            continue
        valid = [k for k in items if k["skill"] in known]
        dropped = [k["skill"] for k in items if k["skill"] not in known]
        if len(valid) >= min_units:
            return valid[:max_units], dropped
        first_error = first_error or KnowledgeError(
            UNKNOWN_UNIT, f"{', '.join(repr(d) for d in dropped[:3])} {'is' if len(dropped) == 1 else 'are'} not in the "
                          f"list; choose only from: {', '.join(offered)}")
    assert first_error is not None
    raise first_error


def _annotate_with_taxonomy(ds: Dataset, config: AnnotateConfig, backend: Any, progress: bool,
                            taxonomy: dict[str, Any] | None, embedder: Any, executor: Any = None) -> StageResult:
    from metakl.executors import LOCAL
    from metakl.stages.unit_index import prompt_text, select_by_similarity

    guided = config.annotator == Annotator.guided
    # The taxonomy and the templates first: a bad file is one clear error before any model is loaded or asked.
    if taxonomy is not None:
        from metakl.stages.merge import validate_taxonomy

        problems = validate_taxonomy(taxonomy)
        if problems:
            raise UserError(f"taxonomy: {problems[0]}")
        tax, tax_path = taxonomy, None
    else:
        tax, tax_path = load_annotation_taxonomy(config.taxonomy)
    if guided:
        if backend is None:
            raise UserError("annotate --annotator guided needs a model backend (or use --annotator embedding)")
        template = load_template("annotate", config.guided_template, config.templates_dir)
        retry_template = load_template("annotate", config.guided_retry_template, config.templates_dir)
    k = config.max_units
    n = len(ds)
    ids = ds["id"]
    domains = ds["domain"]
    questions = ds["question"]
    choices = _choices(ds)
    failure = _check_rows(domains, questions, DOMAINS)
    todo = [i for i in range(n) if i not in failure]

    t_load = time.perf_counter()
    given = embedder
    if embedder is None:
        from metakl.embed import load_embedder

        embedder = load_embedder(config.embedding_model, config.embedding_max_seq_length)
    t0 = time.perf_counter()
    index = unit_index_for(tax, embedder, progress=progress)
    t_units = time.perf_counter()
    vectors, prompt_counts = (executor or LOCAL).embed(
        [prompt_text(questions[i], choices[i]) for i in todo], model=config.embedding_model,
        max_seq_length=config.embedding_max_seq_length, embedder=given, progress=progress)
    t_prompts = time.perf_counter()
    m = max(config.candidates, k) if guided else k
    cand_idx, cand_sim = index.search(vectors, [domains[i] for i in todo], m)
    t_search = time.perf_counter()

    knowledge: list[list[dict[str, str]]] = [[] for _ in range(n)]
    attempts = [0] * n
    first_failures: Counter = Counter()
    extra: dict[str, Any] = {}
    generation_seconds = 0.0
    if guided:
        offered: dict[int, list[str]] = {}
        base: dict[int, list[dict[str, str]]] = {}
        for row, i in enumerate(todo):
            picks = [int(j) for j in cand_idx[row] if j >= 0]
            offered[i] = [index.names[j] for j in picks]
            units = [{"name": index.names[j], "description": index.descriptions[j] or index.texts[j]} for j in picks]
            base[i] = template.render_messages(question=questions[i], choices=choices[i], candidates=units,
                                               max_units=k, domain=domains[i])
        known = set(index.names)
        structured = config.structured and _supports_schema(backend)
        dropped: Counter = Counter()

        def check(i: int, text: str) -> list[dict[str, str]]:
            parsed, gone = parse_guided(text, known, offered[i], k, config.min_skills)
            dropped.update(gone)
            return parsed

        def feedback(message: str) -> list[dict[str, str]]:
            return retry_template.render_messages(error=message, max_units=k)

        generation_seconds = _ask(
            backend, config, base,
            lambda i: guided_json_schema(offered[i], k, config.min_skills) if structured else None,
            check, feedback, ids, knowledge, failure, attempts, first_failures, progress)
        ranks: Counter = Counter()
        for i in todo:
            for item in knowledge[i]:
                ranks[offered[i].index(item["skill"]) + 1 if item["skill"] in offered[i] else 0] += 1
        extra = {
            "structured_output": structured,
            # How often the model picked the r-th most similar candidate ("0": a unit it was not offered).
            "picked_candidate_rank": {str(r): c for r, c in sorted(ranks.items())},
            "dropped_unknown_names": sum(dropped.values()),
            "first_attempt_failures": dict(first_failures.most_common()),
            "templates": {"guided": template.ref, "retry": retry_template.ref},
        }
    else:
        chosen = select_by_similarity(cand_idx, cand_sim, k, config.min_similarity, config.similarity_margin)
        for row, i in enumerate(todo):
            if not chosen[row]:
                best = int(cand_idx[row, 0])
                near = f"; the nearest is '{index.names[best]}' at {float(cand_sim[row, 0]):.2f}" if best >= 0 else ""
                failure[i] = (NO_CLOSE_UNIT, f"no unit has similarity >= {config.min_similarity}{near}")
                continue
            # The chosen units are the row's first candidates, in order, so their similarities line up.
            knowledge[i] = [
                {"skill": index.names[j],
                 "reason": index.descriptions[j] or f"closest unit to the prompt (similarity {float(s):.2f})"}
                for j, s in zip(chosen[row], cand_sim[row][: len(chosen[row])])
            ]

    units_col = [[item["skill"] for item in kn] for kn in knowledge]
    new_errors = _error_entries(failure, attempts)
    for name in ("knowledge", "units"):
        if name in ds.column_names:
            ds = ds.remove_columns(name)
    ds = ds.add_column("knowledge", knowledge, feature=STAGE_FEATURES["knowledge"])
    ds = ds.add_column("units", units_col, feature=STAGE_FEATURES["units"])
    ds = replace_stage_errors(ds, STAGE, new_errors)

    top1 = cand_sim[:, 0][np.isfinite(cand_sim[:, 0])] if len(todo) else np.array([])
    estats = getattr(embedder, "stats", None)
    summary: dict[str, Any] = {
        "annotator": config.annotator.value,
        "max_units": k,
        "taxonomy": {"name": tax.get("name"), "path": tax_path, "units": len(index), "digest": index.digest},
    }
    summary.update(summarize(knowledge, failure, attempts, domains))
    summary["retrieval"] = {
        "candidates": m,
        "embedding_model": config.embedding_model,
        "load_seconds": round(t0 - t_load, 3),  # loading the embedding model (once per process)
        "unit_texts_seconds": round(t_units - t0, 3),  # embedding the taxonomy's unit texts (cached on disk)
        "prompt_embedding_seconds": round(t_prompts - t_units, 3),
        "search_seconds": round(t_search - t_prompts, 3),
        "top1_similarity_mean": round(float(top1.mean()), 4) if len(top1) else None,
        "embedder": estats.as_dict() if hasattr(estats, "as_dict") else None,
        "prompt_embeddings": prompt_counts,  # encoded / from the cache, wherever the batches ran
    }
    summary["generation_seconds"] = round(generation_seconds, 3)
    summary.update(extra)
    # The taxonomy these units belong to, with this run's counts, as merge writes it (publish reads the
    # descriptions from it; merge is optional on this path).
    return StageResult(ds, summary, artifacts={TAXONOMY_FILE: taxonomy_with_counts(tax, ids, units_col)})


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


def summarize(knowledge: list[list[dict]], failure: dict[int, tuple[str, str]], attempts: list[int], domains: list[str], top: int = 20) -> dict[str, Any]:
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
