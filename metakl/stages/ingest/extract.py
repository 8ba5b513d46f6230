"""Mapping one source record to the row's core columns: pure functions, raising RowError(field, expected, actual).

The answer becomes a `reference` by the mapping's `extract` rule (GSM8K `#### n`, MATH's last `\\boxed{}`, choice
index -> letter, yes/no, a value map, a constant safety behaviour).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from metakl.schema import choice_letter, validate_row
from metakl.stages.ingest.mapping import Mapping
from metakl.verify.extract import after_hashes, last_boxed  # the one copy of answer extraction

class RowError(Exception):
    def __init__(self, field: str, expected: str, actual: str):
        super().__init__(field)
        self.field, self.expected, self.actual = field, expected, actual


_MISSING = object()


def _get(record: dict, path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _require(record: dict, path: str) -> Any:
    value = _get(record, path)
    if value is _MISSING:
        keys = ", ".join(record) if isinstance(record, dict) else ""
        raise RowError(path, "the field to be present", f"no such field (fields: {keys})")
    return value


def _string(record: dict, path: str) -> str:
    value = _require(record, path)
    if not isinstance(value, str):
        raise RowError(path, "a string", f"{_type_name(value)} {_short(value)}")
    return value


_HUMAN_TURN = re.compile(r"\n\nHuman:(.*?)(?=\n\nAssistant:|\Z)", re.S)
_ALERT = re.compile(r"###\s*Instruction:\s*(.*?)\s*(?:###\s*Response:.*)?\Z", re.S)


def _transform_question(text: str, transform: str) -> str:
    if transform == "first_human_turn":
        # hh-rlhf transcripts: "\n\nHuman: ...\n\nAssistant: ..."; the prompt is the first Human turn.
        m = _HUMAN_TURN.search(text if text.startswith("\n\n") else "\n\n" + text)
        if not m:
            raise RowError("question", "a transcript with a '\\n\\nHuman:' turn", _short(text))
        return m.group(1).strip()
    if transform == "alert_instruction":
        m = _ALERT.search(text)
        return m.group(1).strip() if m else text.strip()
    return text


def question_of(record: dict, mapping: Mapping) -> str:
    if mapping.question_mode == "first":
        for path in mapping.question:
            value = _get(record, path)
            if isinstance(value, str) and value.strip():
                return _transform_question(value, mapping.question_transform)
        raise RowError("|".join(mapping.question), "a non-empty string in one of these fields", "none")
    parts = []
    for path in mapping.passage:  # optional: absent, null or empty passages are left out
        value = _get(record, path)
        if value is _MISSING or value is None:
            continue
        if not isinstance(value, str):
            raise RowError(path, "a string", f"{_type_name(value)} {_short(value)}")
        parts.append(value)
    parts += [_string(record, path) for path in mapping.question]
    text = "\n\n".join(p.strip() for p in parts if p.strip()) if len(parts) > 1 else parts[0]
    return _transform_question(text, mapping.question_transform)


def _choice_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise RowError(where, "an option text", f"{_type_name(value)} {_short(value)}")
    if isinstance(value, (int, float)):
        return str(value)  # numeric options from CSV/parquet (MMLU "8", "24")
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]  # [{label, text}] (CommonsenseQA raw)
    raise RowError(where, "an option text (string, number or {label, text})", f"{_type_name(value)} {_short(value)}")


def choices_of(record: dict, mapping: Mapping) -> list[str]:
    if not mapping.choices:
        return []
    if len(mapping.choices) > 1:  # one field per option (MMLU csv: choice0..choice3)
        return [_choice_text(_require(record, p), p) for p in mapping.choices]
    path = mapping.choices[0]
    value = _require(record, path)
    if isinstance(value, dict) and isinstance(value.get("text"), list):
        value = value["text"]  # {label: [...], text: [...]} (CommonsenseQA on the Hub)
    if not isinstance(value, (list, tuple)):
        raise RowError(path, "a list of options", f"{_type_name(value)} {_short(value)}")
    return [_choice_text(v, path) for v in value]


_YES = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}


def reference_of(record: dict, mapping: Mapping, n_choices: int) -> str:
    ref = mapping.reference
    extract = ref["extract"]
    if extract == "constant":
        return ref["value"]
    path = ref["field"]
    value = _require(record, path)
    if extract == "index_letter":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RowError(path, "a 0-based choice index", f"{_type_name(value)} {_short(value)}")
        if not 0 <= value < max(n_choices, 1):
            raise RowError(path, f"a choice index in 0..{n_choices - 1}", str(value))
        return choice_letter(value)
    if extract == "yes_no":
        key = str(value).strip().lower() if isinstance(value, (str, bool)) else None
        if key not in _YES:
            raise RowError(path, "yes or no", f"{_type_name(value)} {_short(value)}")
        return _YES[key]
    if extract == "map":
        key = str(value).lower() if isinstance(value, bool) else str(value).strip()
        if key not in ref["map"]:
            raise RowError(path, f"one of {', '.join(ref['map'])}", _short(value))
        return ref["map"][key]
    if extract == "text" and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(int(value)) if float(value).is_integer() else str(value)  # AMC23 on the Hub: 27.0 for 27
    if extract == "text" and isinstance(value, list) and len(value) == 1:
        value = value[0]  # OlympiadBench: final_answer is a list holding the one answer
    if not isinstance(value, str):
        raise RowError(path, "a string", f"{_type_name(value)} {_short(value)}")
    if extract == "gsm8k":
        answer = after_hashes(value)
        if answer is None:
            raise RowError(path, "a solution ending in '#### <answer>'", _short(value[-60:]))
        return answer
    if extract == "boxed":
        answer = last_boxed(value)
        if answer is None or not answer.strip():
            raise RowError(path, "a solution with a final \\boxed{...}", _short(value[-60:]))
        return answer.strip()
    if extract == "letter":
        letter = value.strip().upper()
        if len(letter) != 1 or not "A" <= letter <= "Z":
            raise RowError(path, "a choice letter", _short(value))
        return letter
    return value.strip()


def _meta_of(record: dict, mapping: Mapping, file_meta: dict[str, str]) -> str:
    if not mapping.meta and not file_meta:
        return "{}"
    meta = dict(file_meta)
    for path in mapping.meta:
        value = _get(record, path)
        if value is not _MISSING:
            meta[path.rsplit(".", 1)[-1]] = value  # "question.question_concept" -> "question_concept"
    return json.dumps(meta, ensure_ascii=False, default=str)


def map_record(record: Any, mapping: Mapping, file_meta: dict[str, str] | None = None) -> dict[str, Any]:
    """One source record -> the core columns (without id/errors); raises RowError on a problem."""
    if not isinstance(record, dict):
        raise RowError("<record>", "a JSON object", f"{_type_name(record)} {_short(record)}")
    question = question_of(record, mapping)
    choices = choices_of(record, mapping)
    reference = reference_of(record, mapping, len(choices))
    row = {"source": mapping.source, "domain": mapping.domain, "question": question, "reference": reference,
           "choices": choices}
    problems = validate_row(row)
    if problems:
        raise RowError(*problems[0])
    row["meta"] = _meta_of(record, mapping, file_meta or {})
    return row


def meta_from_file_name(path: Path | None, mapping: Mapping) -> dict[str, str]:
    """The mapping's `file_meta` values taken from the file name (MMLU's subject in `anatomy_test.csv`)."""
    meta = {}
    if path is not None:
        for key, pattern in mapping.file_meta.items():
            m = re.search(pattern, path.name)
            if m:
                meta[key] = m.group(1) if m.groups() else m.group(0)
    return meta
