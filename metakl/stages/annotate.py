"""Metacognitive knowledge: ask a model which skills each prompt needs, as `{skill_name: reason}`.

One domain-aware template per domain (annotations/templates/annotate/<domain>.j2). Structured output (a JSON schema)
is requested when the backend supports it; every answer goes through the tolerant parser and validator anyway. An
invalid answer is retried up to `retries` times, each time with the model's previous answer and the validation error
in the conversation. A row that still fails keeps its place with an empty `knowledge` list and an `errors` entry.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from metakl.errors import UserError
from metakl.llm import ChatRequest
from metakl.schema import DOMAINS, STAGE_FEATURES, error
from metakl.stage import StageResult, replace_stage_errors, stage
from metakl.stages.knowledge_parse import (
    KnowledgeError,
    check_not_copied,
    example_pairs,
    knowledge_json_schema,
    parse_knowledge,
)
from metakl.templates import load_template

STAGE = "annotate"
BACKEND_ERROR = "backend_error"
BAD_DOMAIN = "bad_domain"
EMPTY_QUESTION = "empty_question"


@dataclass
class AnnotateConfig:
    max_skills: int = 8
    min_skills: int = 1
    retries: int = 2  # extra attempts after the first, with the validation error fed back
    max_tokens: int = 256
    temperature: float = 0.0
    # Retries see the error in the conversation, so they differ even at temperature 0.
    retry_temperature: float | None = None  # None: the first attempt's temperature
    seed: int = 0
    structured: bool = True  # ask for JSON-schema structured output when the backend supports it
    templates: dict[str, str] = field(default_factory=lambda: {d: d for d in DOMAINS})
    retry_template: str = "retry"
    templates_dir: str | None = None

    def __post_init__(self) -> None:
        if self.retries < 0 or self.min_skills < 1 or self.max_skills < self.min_skills:
            raise UserError(f"annotate: need retries >= 0 and 1 <= min_skills <= max_skills, got retries "
                            f"{self.retries}, min_skills {self.min_skills}, max_skills {self.max_skills}")


def _supports_schema(backend: Any) -> bool:
    # Backends say so with `supports_json_schema`; the ones that do not say are asked anyway (the parser copes).
    return bool(getattr(backend, "supports_json_schema", True))


@stage(STAGE, AnnotateConfig, needs_backend=True)
def annotate(ds: Dataset, config: AnnotateConfig, *, backend: Any, progress: bool = False) -> StageResult:
    """Add a `knowledge` column ([{skill, reason}]) and per-row errors."""
    if backend is None:
        raise UserError("annotate needs a model backend")
    templates = {d: load_template("annotate", name, config.templates_dir) for d, name in config.templates.items()}
    retry_template = load_template("annotate", config.retry_template, config.templates_dir)
    schema = knowledge_json_schema(config.max_skills, config.min_skills) if config.structured and _supports_schema(backend) else None

    n = len(ds)
    ids = ds["id"]
    domains = ds["domain"]
    questions = ds["question"]
    choices = ds["choices"] if "choices" in ds.column_names else [[] for _ in range(n)]
    knowledge: list[list[dict[str, str]]] = [[] for _ in range(n)]
    failure: dict[int, tuple[str, str]] = {}
    attempts = [0] * n
    first_failures: Counter = Counter()

    base: dict[int, list[dict[str, str]]] = {}
    # The templates show an example answer; an answer that merely repeats it is rejected.
    examples = {d: example_pairs(t.source) for d, t in templates.items()}
    for i in range(n):
        if domains[i] not in templates:
            failure[i] = (BAD_DOMAIN, f"domain {domains[i]!r} has no template; expected one of {', '.join(sorted(templates))}")
        elif not (questions[i] or "").strip():
            failure[i] = (EMPTY_QUESTION, "the question is empty")
        else:
            base[i] = templates[domains[i]].render_messages(
                question=questions[i], choices=list(choices[i] or []), max_skills=config.max_skills
            )
    conversation = dict(base)
    pending = sorted(base)
    for attempt in range(1 + config.retries):
        if not pending:
            break
        requests = [
            ChatRequest(
                messages=conversation[i],
                n=1,
                temperature=config.temperature if attempt == 0 or config.retry_temperature is None else config.retry_temperature,
                max_tokens=config.max_tokens,
                seed=config.seed,
                json_schema=schema,
                tag=ids[i],
            )
            for i in pending
        ]
        results = backend.generate_all(requests, progress=progress)
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
                parsed = parse_knowledge(text, max_skills=config.max_skills, min_skills=config.min_skills)
                check_not_copied(parsed, examples[domains[i]])
                knowledge[i] = parsed
                failure.pop(i, None)
            except KnowledgeError as exc:
                message = exc.message + (f" (the answer was cut off at {config.max_tokens} tokens; be brief)" if cut else "")
                failure[i] = (exc.kind, message)
                if attempt == 0:
                    first_failures[exc.kind] += 1
                feedback = retry_template.render_messages(error=message, max_skills=config.max_skills)
                conversation[i] = base[i] + [{"role": "assistant", "content": text}] + feedback
                retry.append(i)
        pending = retry

    new_errors = {}
    for i, (kind, message) in failure.items():
        tries = f"after {attempts[i]} attempt(s): " if attempts[i] else ""
        new_errors[i] = [error(STAGE, kind, tries + message)]
    if "knowledge" in ds.column_names:
        ds = ds.remove_columns("knowledge")
    ds = ds.add_column("knowledge", knowledge, feature=STAGE_FEATURES["knowledge"])
    ds = replace_stage_errors(ds, STAGE, new_errors)
    summary = summarize(knowledge, failure, attempts, domains)
    summary.update(
        first_attempt_failures=dict(first_failures.most_common()),
        templates={d: t.ref for d, t in templates.items()} | {"retry": retry_template.ref},
        structured_output=schema is not None,
    )
    return StageResult(ds, summary)


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
