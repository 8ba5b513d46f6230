"""The one way to reach the project's data files: prompt templates, ingest presets, response presets, taxonomies.

They live in `annotations/` at the top of the repository (data people read and edit) and ship inside the wheel as
the package `metakl.annotations` (in the source tree `metakl/annotations` is a link to `annotations/`), found with
`importlib.resources`, so a plain `pip install metakl-*.whl` has them as well as an editable install.

Layout (relative to the annotations root):
    templates/<task>/<name>.j2     prompt templates (`metakl.templates`)
    presets/<name>.yaml            ingest presets
    response-presets/<name>.yaml   import-responses presets
    taxonomies/<name>.json         knowledge-unit taxonomies
    demo/<domain>.jsonl            the demo's prompts (presets demo-*; `data_file`)

Your own files. Folders named in `$METAKL_ANNOTATIONS` (several joined by `:`), each with the layout above, are
searched before the packaged files: a file there overrides the packaged one of the same name, and a new name adds a
preset or template. A verb's `--templates-dir DIR` (layout `DIR/<task>/<name>.j2`) comes first of all for templates.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

PACKAGE = "metakl.annotations"
ENV_VAR = "METAKL_ANNOTATIONS"
TEMPLATES, PRESETS, RESPONSE_PRESETS, TAXONOMIES = "templates", "presets", "response-presets", "taxonomies"


def annotations_root() -> Path:
    """The packaged annotations folder (a real folder: metakl is installed as files, editable or from a wheel)."""
    root = importlib.resources.files(PACKAGE)
    if not isinstance(root, Path):  # e.g. imported from a zip archive: the files cannot be opened as paths
        raise RuntimeError(f"{PACKAGE} is not a folder ({root!r}); install metakl with pip (not as a zip)")
    return root


def user_dirs() -> list[Path]:
    """The folders of `$METAKL_ANNOTATIONS`, in order (missing ones are skipped)."""
    raw = os.environ.get(ENV_VAR, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip() and Path(p).expanduser().is_dir()]


def search_path(kind: str, first: str | Path | None = None) -> list[Path]:
    """The folders searched for files of `kind` (e.g. "presets", "templates/annotate"), first match wins.

    `first` is a folder searched before all others (a verb's --templates-dir, already at the `kind` level).
    """
    dirs = [Path(first).expanduser()] if first else []
    dirs += [d / kind for d in user_dirs()]
    dirs.append(annotations_root() / kind)
    return dirs


def find(kind: str, filename: str, first: str | Path | None = None) -> Path | None:
    """The first `filename` of `kind` on the search path, or None."""
    for folder in search_path(kind, first):
        path = folder / filename
        if path.is_file():
            return path
    return None


def names(kind: str, suffix: str, first: str | Path | None = None) -> list[str]:
    """The names (file stems) of every `*suffix` file of `kind` on the search path, sorted, without duplicates."""
    found = {p.stem for folder in search_path(kind, first) if folder.is_dir() for p in folder.glob(f"*{suffix}")}
    return sorted(found)


def template(task: str, name: str, templates_dir: str | Path | None = None) -> Path | None:
    """`templates/<task>/<name>.j2`; `templates_dir` (layout `<task>/<name>.j2`) is searched first."""
    first = Path(templates_dir) / task if templates_dir else None
    return find(f"{TEMPLATES}/{task}", f"{name}.j2", first)


def preset(name: str) -> Path | None:
    """The ingest preset `presets/<name>.yaml`, or None."""
    return find(PRESETS, f"{name}.yaml")


def preset_names() -> list[str]:
    return names(PRESETS, ".yaml")


def response_preset(name: str) -> Path | None:
    """The import-responses preset `response-presets/<name>.yaml`, or None."""
    return find(RESPONSE_PRESETS, f"{name}.yaml")


def response_preset_names() -> list[str]:
    return names(RESPONSE_PRESETS, ".yaml")


def taxonomy(name: str) -> Path | None:
    """The taxonomy `taxonomies/<name>.json`, or None."""
    return find(TAXONOMIES, f"{name}.json")


def data_file(relative: str | Path) -> Path | None:
    """Any file under the annotations root by its relative path (`demo/math.jsonl`; a leading `annotations/`, as a
    preset's `local:` writes it, is accepted), searched like the rest; None when absent."""
    parts = Path(relative).parts
    if parts and parts[0] == "annotations":
        parts = parts[1:]
    if not parts:
        return None
    return find(str(Path(*parts[:-1])) if len(parts) > 1 else ".", parts[-1])
