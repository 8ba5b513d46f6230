"""Prompt templates are data: Jinja2 files under annotations/templates/<task>/<name>.j2.

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

from metakl.errors import UserError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "annotations" / "templates"
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


def template_dir(templates_dir: str | Path | None = None) -> Path:
    return Path(templates_dir) if templates_dir else TEMPLATES_DIR


@lru_cache(maxsize=128)
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def load_template(task: str, name: str, templates_dir: str | Path | None = None) -> Template:
    """Load annotations/templates/<task>/<name>.j2 (or from `templates_dir`, a user's own folder)."""
    path = template_dir(templates_dir) / task / f"{name}.j2"
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.j2")) if path.parent.exists() else []
        raise UserError(f"no template {task}/{name} at {path}; available: {', '.join(available) or 'none'}")
    source = _read(path)
    m = _VERSION.search(source.split("\n", 1)[0])
    return Template(task=task, name=name, version=m.group(1) if m else "0", source=source)
