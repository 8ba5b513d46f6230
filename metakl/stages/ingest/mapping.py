"""Ingest mappings: which source fields hold the question, choices, answer and metadata (presets or your YAML).

A mapping is a preset (annotations/presets/<name>.yaml) or the user's own YAML file; `parse_mapping` checks it and
every problem names the file and the key. See the README section "Ingest" for the format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metakl import resources
from metakl.errors import UserError
from metakl.io import read_yaml_mapping
from metakl.schema import DOMAINS

EXTRACTORS = ("text", "gsm8k", "boxed", "index_letter", "letter", "yes_no", "map", "constant")
QUESTION_TRANSFORMS = ("none", "first_human_turn", "alert_instruction")


@dataclass(frozen=True)
class Mapping:
    """What maps to what for one source layout (see the README section "Ingest" for the YAML format)."""

    name: str
    source: str
    domain: str
    question: tuple[str, ...]
    question_mode: str = "join"  # "join": all fields joined by a blank line; "first": the first non-empty one
    passage: tuple[str, ...] = ()  # optional fields put before the question (LogiQA's text, HarmBench's context)
    question_transform: str = "none"
    choices: tuple[str, ...] = ()  # one field holding a list, or several fields holding one option each
    reference: dict[str, Any] = field(default_factory=dict)
    meta: tuple[str, ...] = ()
    file_meta: dict[str, str] = field(default_factory=dict)  # meta key -> regex on the file name (group 1)
    hub: dict[str, Any] = field(default_factory=dict)  # id, config, split, data_dir, options (load_dataset kwargs)
    local: str = ""
    description: str = ""

    def required_columns(self) -> list[str]:
        """Top-level columns every record must have (for header/schema checks of csv, parquet and Hub data)."""
        cols = [] if self.question_mode == "first" else [q.split(".")[0] for q in self.question]
        cols += [c.split(".")[0] for c in self.choices]
        if self.reference.get("field"):
            cols.append(self.reference["field"].split(".")[0])
        return list(dict.fromkeys(cols))


_MAPPING_KEYS = {
    "source", "domain", "question", "question_mode", "question_transform", "passage", "choices", "reference",
    "meta", "file_meta", "hub", "local", "description",
}
_REFERENCE_KEYS = {"field", "extract", "value", "map"}


def _as_tuple(value: Any, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UserError(f"{where}: key '{key}': expected a field name or a list of field names, got {value!r}")


def parse_mapping(data: Any, name: str, where: str) -> Mapping:
    """Check a mapping's YAML content and build the Mapping; `where` names the file in messages.

    Why long: the mapping file's keys checked one after the other, each with its own message.
    """
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a YAML mapping of keys (source, domain, question, ...), got {type(data).__name__}")
    unknown = sorted(set(data) - _MAPPING_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(_MAPPING_KEYS))}")
    domain = data.get("domain")
    if domain not in DOMAINS:
        raise UserError(f"{where}: key 'domain': expected one of {', '.join(DOMAINS)}, got {domain!r}")
    question = _as_tuple(data.get("question"), where, "question")
    if not question:
        raise UserError(f"{where}: key 'question': expected the field(s) holding the question, got nothing")
    passage = _as_tuple(data.get("passage"), where, "passage")
    mode = data.get("question_mode", "join")
    if mode not in ("join", "first"):
        raise UserError(f"{where}: key 'question_mode': expected 'join' or 'first', got {mode!r}")
    transform = data.get("question_transform", "none")
    if transform not in QUESTION_TRANSFORMS:
        raise UserError(f"{where}: key 'question_transform': expected one of {', '.join(QUESTION_TRANSFORMS)}, got {transform!r}")
    ref = data.get("reference") or {}
    if isinstance(ref, str):
        ref = {"field": ref, "extract": "text"}
    if not isinstance(ref, dict) or set(ref) - _REFERENCE_KEYS:
        raise UserError(f"{where}: key 'reference': expected keys among {', '.join(sorted(_REFERENCE_KEYS))}, got {ref!r}")
    extract = ref.setdefault("extract", "constant" if "value" in ref else "text")
    if extract not in EXTRACTORS:
        raise UserError(f"{where}: key 'reference.extract': expected one of {', '.join(EXTRACTORS)}, got {extract!r}")
    if extract == "constant" and not isinstance(ref.get("value"), str):
        raise UserError(f"{where}: key 'reference.value': expected the constant reference (e.g. refuse), got {ref.get('value')!r}")
    if extract != "constant" and not isinstance(ref.get("field"), str):
        raise UserError(f"{where}: key 'reference.field': expected the field holding the answer for extract '{extract}'")
    if extract == "map":
        if not isinstance(ref.get("map"), dict):
            raise UserError(f"{where}: key 'reference.map': expected a mapping of field values to references")
        ref["map"] = {str(k).lower() if isinstance(k, bool) else str(k): v for k, v in ref["map"].items()}
    file_meta = data.get("file_meta") or {}
    if not isinstance(file_meta, dict):
        raise UserError(f"{where}: key 'file_meta': expected a mapping of meta key -> regex on the file name")
    for key, pattern in file_meta.items():
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise UserError(f"{where}: key 'file_meta.{key}': expected a regular expression, got {pattern!r} ({exc})") from None
    hub = data.get("hub") or {}
    if not isinstance(hub, dict):
        raise UserError(f"{where}: key 'hub': expected a mapping with id, config, split")
    return Mapping(
        name=name,
        source=str(data.get("source") or name),
        domain=domain,
        question=question,
        passage=passage,
        question_mode=mode,
        question_transform=transform,
        choices=_as_tuple(data.get("choices"), where, "choices"),
        reference=ref,
        meta=_as_tuple(data.get("meta"), where, "meta"),
        file_meta=dict(file_meta),
        hub=dict(hub),
        local=str(data.get("local") or ""),
        description=str(data.get("description") or ""),
    )


def load_mapping(path: str | Path) -> Mapping:
    """A user's mapping YAML file; its stem names it (and is the default `source`)."""
    p = Path(path)
    return parse_mapping(read_yaml_mapping(p, "mapping"), p.stem, str(p))


def list_presets() -> list[str]:
    return resources.preset_names()


def load_preset(name: str) -> Mapping:
    path = resources.preset(name)
    if path is None:
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(list_presets())}")
    return parse_mapping(read_yaml_mapping(path, "mapping"), name, f"preset {name}")
