"""Prompt templates are data: Jinja2 files under annotations/templates/<task>/<name>.j2 (found by `metakl.resources`,
so a user's folder can override one template or add another).

The first line of a template may be a Jinja comment `{# version: X #}`; the version and the template name are
recorded with every stage output that used it. A template renders to a chat: a `system` block (optional) and the
`user` message, separated in the template's source by a line `---user---`. The two messages are rendered as two
parts of one Jinja template (what the system part sets, the user part sees), never by splitting the rendered text:
a prompt that contains `---user---`, role names or Jinja syntax stays data inside its own message.
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
_USER_MARKER = "---user---"  # a line of the template source (not of the rendered text): where the user message starts
# The user part is captured in a Jinja block assignment, exported by the rendered template module.
_USER_VARIABLE = "metakl_user_message"


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
        """The chat messages: `[system?, user]`, each part rendered on its own (see the module docstring)."""
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
        try:
            module = env.from_string(_structured_source(self.source)).make_module(variables)
        except jinja2.UndefinedError as exc:
            raise UserError(f"template {self.ref}: {exc}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise UserError(f"template {self.ref}: line {exc.lineno}: {exc.message} (the line {_USER_MARKER} must "
                            "stand outside any {% if %} or {% for %} block)") from None
        user = getattr(module, _USER_VARIABLE, None)
        if user is None:  # no marker: the whole template is the user message
            return [{"role": "user", "content": str(module).strip()}]
        system = str(module).strip()
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user.strip()}]


def _structured_source(source: str) -> str:
    """The template with its user part (after the line `---user---`) wrapped in a block assignment: rendering it
    gives the system part as the template's output and the user part as an exported variable."""
    lines = source.split("\n")
    try:
        i = next(k for k, line in enumerate(lines) if line.strip() == _USER_MARKER)
    except StopIteration:
        return source
    head, body = "\n".join(lines[:i]), "\n".join(lines[i + 1:])
    return f"{head}\n{{% set {_USER_VARIABLE} %}}{body}{{% endset %}}"


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
