"""Taxonomy-guided annotation (the default): the model picks 1..K of the prompt's top-M candidate units with a reason
each, through structured output whose names are an enum of the candidates, so every answer names real units."""

from __future__ import annotations

from collections import Counter
from typing import Any

from metakl.errors import UserError
from metakl.llm.json_repair import JSONRepairError, extract_json
from metakl.schema import DOMAINS
from metakl.stages.annotate.ask import ask, labels_of
from metakl.stages.annotate.base import UNKNOWN_UNIT, AnnotateConfig, Labels, Rows, supports_schema
from metakl.stages.annotate.retrieval import Candidates
from metakl.stages.knowledge_parse import KnowledgeError, validate_knowledge
from metakl.templates import load_template


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


class Guided:
    uses_taxonomy = True
    domains = DOMAINS

    def __init__(self, config: AnnotateConfig, backend: Any):
        if backend is None:
            raise UserError("annotate --annotator guided needs a model backend (or use --annotator embedding)")
        self.config, self.backend = config, backend
        self.template = load_template("annotate", config.guided_template, config.templates_dir)
        self.retry_template = load_template("annotate", config.guided_retry_template, config.templates_dir)
        self.candidates = max(config.candidates, config.max_units)

    def label(self, rows: Rows, todo: list[int], found: Candidates, progress: bool) -> Labels:
        k, min_units, index = self.config.max_units, self.config.min_skills, found.index
        offered: dict[int, list[str]] = {}
        base: dict[int, list[dict[str, str]]] = {}
        for row, i in enumerate(todo):
            picks = [int(j) for j in found.idx[row] if j >= 0]
            offered[i] = [index.names[j] for j in picks]
            units = [{"name": index.names[j], "description": index.descriptions[j] or index.texts[j]} for j in picks]
            base[i] = self.template.render_messages(question=rows.questions[i], choices=rows.choices[i],
                                                    candidates=units, max_units=k, domain=rows.domains[i])
        known = set(index.names)
        structured = self.config.structured and supports_schema(self.backend)
        dropped: Counter = Counter()

        def check(i: int, text: str) -> list[dict[str, str]]:
            parsed, gone = parse_guided(text, known, offered[i], k, min_units)
            dropped.update(gone)
            return parsed

        def feedback(message: str) -> list[dict[str, str]]:
            return self.retry_template.render_messages(error=message, max_units=k)

        asked = ask(self.backend, self.config, base, rows.ids,
                    schema_of=lambda i: guided_json_schema(offered[i], k, min_units) if structured else None,
                    check=check, feedback=feedback, progress=progress)
        ranks: Counter = Counter()
        for i in todo:
            for item in asked.knowledge.get(i, []):
                ranks[offered[i].index(item["skill"]) + 1 if item["skill"] in offered[i] else 0] += 1
        return labels_of(asked, len(rows), {
            "structured_output": structured,
            # How often the model picked the r-th most similar candidate ("0": a unit it was not offered).
            "picked_candidate_rank": {str(r): c for r, c in sorted(ranks.items())},
            "dropped_unknown_names": sum(dropped.values()),
            "first_attempt_failures": dict(asked.first_failures.most_common()),
            "templates": {"guided": self.template.ref, "retry": self.retry_template.ref},
        })
