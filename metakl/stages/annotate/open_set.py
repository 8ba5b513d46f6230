"""Open-set annotation (the paper's): `{skill_name: reason}` with names the model invents, for a strong teacher
building a taxonomy (`merge` then turns the skills into units). One domain-aware template per domain."""

from __future__ import annotations

from typing import Any

from metakl.errors import UserError
from metakl.stages.annotate.ask import ask, labels_of
from metakl.stages.annotate.base import AnnotateConfig, Labels, Rows, supports_schema
from metakl.stages.knowledge_parse import check_not_copied, example_pairs, knowledge_json_schema, parse_knowledge
from metakl.templates import load_template


class OpenSet:
    uses_taxonomy = False
    candidates = 0

    def __init__(self, config: AnnotateConfig, backend: Any):
        if backend is None:
            raise UserError("annotate (open-set) needs a model backend")
        self.config, self.backend = config, backend
        self.templates = {d: load_template("annotate", name, config.templates_dir) for d, name in config.templates.items()}
        self.retry_template = load_template("annotate", config.retry_template, config.templates_dir)
        self.domains = self.templates
        self.schema = (knowledge_json_schema(config.max_units, config.min_skills)
                       if config.structured and supports_schema(backend) else None)

    def label(self, rows: Rows, todo: list[int], found: Any, progress: bool) -> Labels:
        k, templates = self.config.max_units, self.templates
        # The templates show an example answer; an answer that merely repeats it is rejected.
        examples = {d: example_pairs(t.source) for d, t in templates.items()}
        base = {i: templates[rows.domains[i]].render_messages(question=rows.questions[i], choices=rows.choices[i],
                                                              max_skills=k)
                for i in todo}

        def check(i: int, text: str) -> list[dict[str, str]]:
            parsed = parse_knowledge(text, max_skills=k, min_skills=self.config.min_skills)
            check_not_copied(parsed, examples[rows.domains[i]])
            return parsed

        def feedback(message: str) -> list[dict[str, str]]:
            return self.retry_template.render_messages(error=message, max_skills=k)

        asked = ask(self.backend, self.config, base, rows.ids, schema_of=lambda i: self.schema, check=check,
                    feedback=feedback, progress=progress)
        return labels_of(asked, len(rows), {
            "first_attempt_failures": dict(asked.first_failures.most_common()),
            "templates": {d: t.ref for d, t in templates.items()} | {"retry": self.retry_template.ref},
            "structured_output": self.schema is not None,
        })
