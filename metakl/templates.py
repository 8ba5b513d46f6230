"""Prompt templates are data: Jinja2 files under annotations/templates/<task>/<name>.j2 (found by `metakl.resources`,
so a user's folder can override one template or add another).

The first line of a template may be a Jinja comment `{# version: X #}`; the version and the template name are
recorded with every stage output that used it. A template renders to a chat: a `system` block (optional) and the
`user` message, separated by a line `---user---`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from metakl import resources
from metakl.errors import UserError

_VERSION = re.compile(r"\{#\s*version:\s*([^\s#]+)\s*#\}")
_USER_SPLIT = "---user---"


@dataclass(frozen=True)
class Template:
    task: str
    name: str
    version: str
    source: str

    @property
    def ref(self) -> str:
        """`task/name@version`, the string stored with outputs."""
        return f"{self.task}/{self.name}@{self.version}"

    def render_messages(self, **variables) -> list[dict[str, str]]:
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
        try:
            text = env.from_string(self.source).render(**variables).strip()
        except jinja2.UndefinedError as exc:
            raise UserError(f"template {self.ref}: {exc}") from None
        if _USER_SPLIT in text:
            system, user = text.split(_USER_SPLIT, 1)
            msgs = [{"role": "system", "content": system.strip()}] if system.strip() else []
            return msgs + [{"role": "user", "content": user.strip()}]
        return [{"role": "user", "content": text}]


@lru_cache(maxsize=128)
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def load_template(task: str, name: str, templates_dir: str | Path | None = None) -> Template:
    """Load templates/<task>/<name>.j2: from `templates_dir` (a user's folder, layout <task>/<name>.j2) when it has
    that file, else from $METAKL_ANNOTATIONS folders, else the packaged one (see `metakl.resources`)."""
    path = resources.template(task, name, templates_dir)
    if path is None:
        kind = f"{resources.TEMPLATES}/{task}"
        first = Path(templates_dir) / task if templates_dir else None
        searched = ", ".join(str(d) for d in resources.search_path(kind, first))
        available = resources.names(kind, ".j2", first)
        raise UserError(f"no template {task}/{name} (searched {searched}); available: {', '.join(available) or 'none'}")
    source = _read(path)
    m = _VERSION.search(source.split("\n", 1)[0])
    return Template(task=task, name=name, version=m.group(1) if m else "0", source=source)
