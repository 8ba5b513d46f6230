"""Ingest: prompts from Hub datasets and local files into the MetaKL row schema (metakl.schema).

A *mapping* (a preset from annotations/presets/*.yaml, or the user's own YAML file) says which fields hold the
question (with an optional passage), the choices, the gold answer and the metadata to keep, and how to turn the
answer into a `reference` (GSM8K `#### n`, MATH's last `\\boxed{}`, choice index -> letter, yes/no, safety
behaviour). Each source is read record by record, mapped, validated and deduplicated; the kept rows are built as
columns and turned into one Dataset at the end, which keeps the per-row Python work small.

Problems are reported with their place: `file line N` (1-based) for text files, `file row N` (0-based, as `ds[N]`)
for parquet files and JSON arrays, `hub-id [split] row N` for Hub datasets.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

from metakl import resources
from metakl.errors import UserError
from metakl.io import read_yaml_mapping
from metakl.schema import (
    DOMAINS,
    choice_letter,
    describe_problem,
    features,
    id_from_normalized,
    normalize_text,
    validate_row,
)

EXTRACTORS = ("text", "gsm8k", "boxed", "index_letter", "letter", "yes_no", "map", "constant")
QUESTION_TRANSFORMS = ("none", "first_human_turn", "alert_instruction")
LOCAL_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".txt": "jsonl", ".csv": "csv", ".parquet": "parquet"}
MAX_REPORTED_PROBLEMS = 20

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # HarmBench contexts and transcripts exceed the 128 KiB default


# ----------------------------------------------------------------------------------------------------------------
# Mappings


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
    """Check a mapping's YAML content and build the Mapping; `where` names the file in messages."""
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


# ----------------------------------------------------------------------------------------------------------------
# Reading records. Each reader yields (location, record) where record is a dict, or a Problem for an unreadable line.


@dataclass(frozen=True)
class Problem:
    location: str
    field: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return describe_problem(self.location, self.field, self.expected, self.actual)

    def as_dict(self) -> dict[str, str]:
        return {"location": self.location, "field": self.field, "expected": self.expected, "actual": self.actual}


def _decode_position(data: bytes, exc: UnicodeDecodeError) -> tuple[str, str]:
    line = data.count(b"\n", 0, exc.start) + 1
    col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return f"line {line}", f"byte 0x{data[exc.start]:02x} at column {col}"


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data.strip():
        raise UserError(f"{path}: empty file (expected at least one record)")
    return data


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """JSON lines, streamed line by line (memory stays flat on big files); blank lines are skipped."""
    name = str(path)
    empty = True
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            empty = False
            where = f"{name} line {lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, Problem(where, "<line>", "UTF-8 text", f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1}")
                continue
            if lineno == 1 and text.startswith("\ufeff"):  # a UTF-8 byte-order mark
                text = text[1:]
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                hint = "" if text.rstrip().endswith(("}", "]")) else "; the line looks truncated"
                yield where, Problem(where, "<line>", "one complete JSON object per line", f"{exc.msg} (column {exc.colno}){hint}")
                continue
            yield where, record
    if empty:
        raise UserError(f"{path}: empty file (expected at least one record)")


def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    """A .json file holding one JSON array of objects, or JSON lines despite the suffix (CSQA2)."""
    data = _read_bytes(path)
    if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] != b"[":
        del data
        yield from _read_jsonl(path)
        return
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, actual = _decode_position(data, exc)
        raise UserError(describe_problem(f"{path} {line}", "<file>", "UTF-8 text", actual)) from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(describe_problem(f"{path} line {exc.lineno}", "<file>", "a complete JSON array",
                                         f"{exc.msg} (column {exc.colno})")) from None
    for i, item in enumerate(items):
        yield f"{path} row {i}", item


def _read_csv(path: Path, mapping: Mapping) -> Iterator[tuple[str, Any]]:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, actual = _decode_position(data, exc)
        raise UserError(describe_problem(f"{path} {line}", "<file>", "UTF-8 text", actual)) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as exc:
        raise UserError(f"{path} line 1: not a CSV header ({exc})") from None
    _check_columns(f"{path} line 1 (header)", header, mapping)
    width = len(header)
    prev = reader.line_num
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            where = f"{path} line {prev + 1}"
            yield where, Problem(where, "<line>", "a well-formed CSV record", str(exc))
            prev = reader.line_num
            continue
        where = f"{path} line {prev + 1}"
        prev = reader.line_num
        if not values:
            continue
        if len(values) != width:
            yield where, Problem(where, "<line>", f"{width} fields as in the header", f"{len(values)} fields")
            continue
        yield where, dict(zip(header, values))


def _check_columns(where: str, columns: list[str], mapping: Mapping) -> None:
    missing = [c for c in mapping.required_columns() if c not in columns]
    if missing:
        raise UserError(
            f"{where}: missing column(s) {', '.join(repr(c) for c in missing)} needed by mapping '{mapping.name}'; "
            f"columns present: {', '.join(columns) or '(none)'}"
        )


def _rows_of_table(table, prefix: str) -> Iterator[tuple[str, Any]]:
    i = 0
    for batch in table.to_batches(max_chunksize=4096):
        for record in batch.to_pylist():
            yield f"{prefix} row {i}", record
            i += 1


def _read_parquet(path: Path, mapping: Mapping) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (expected at least one record)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc})") from None
    _check_columns(str(path), table.column_names, mapping)
    if table.num_rows == 0:
        raise UserError(f"{path}: empty file (expected at least one record)")
    yield from _rows_of_table(table, str(path))


def _hub_layout(folder: Path) -> bool:
    return (folder / "README.md").is_file() or (folder / "data").is_dir() or any(folder.glob("*.parquet"))


def _read_hub(spec: str, mapping: Mapping, config: str | None, split: str | None) -> Iterator[tuple[str, Any]]:
    """A Hub dataset id (or a local folder in Hub layout) through datasets.load_dataset, split by split."""
    import datasets

    hub = mapping.hub
    config = config if config is not None else hub.get("config")
    split = split if split is not None else hub.get("split")
    split = None if split == "all" else split
    kwargs = dict(hub.get("options") or {})
    if hub.get("data_dir"):
        kwargs.setdefault("data_dir", hub["data_dir"])
    what = f"{spec}" + (f" (config {config})" if config else "")
    try:
        loaded = datasets.load_dataset(spec, config, split=split, **kwargs)
    except Exception as exc:  # the Hub client raises many kinds (offline, not found, bad split/config)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what}: cannot load with datasets.load_dataset (split {split or 'all'}): {msg}") from None
    splits = {split: loaded} if split else dict(loaded)
    for name, ds in splits.items():
        _check_columns(f"{what} [{name}]", ds.column_names, mapping)
        i = 0
        for batch in ds.iter(batch_size=4096):
            keys = list(batch)
            for values in zip(*batch.values()):
                yield f"{spec} [{name}] row {i}", dict(zip(keys, values))
                i += 1


def _local_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no data files here (expected {', '.join(sorted(LOCAL_SUFFIXES))})")
    return files


def _read_file(path: Path, mapping: Mapping) -> Iterator[tuple[str, Any]]:
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if kind == "jsonl":
        return _read_jsonl(path)
    if kind == "json":
        return _read_json(path)
    if kind == "csv":
        return _read_csv(path, mapping)
    if kind == "parquet":
        return _read_parquet(path, mapping)
    raise UserError(f"{path}: unsupported file type '{path.suffix}' (expected {', '.join(sorted(LOCAL_SUFFIXES))})")


_HUB_ID = re.compile(r"^(hf:|hub:)?[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class SourceSpec:
    """One SOURCE argument: a local file/folder or a Hub id, with its mapping and Hub config/split overrides.

    `split` None takes the mapping's Hub split (every split when it has none); "all" reads every split.
    """

    spec: str
    mapping: Mapping
    config: str | None = None
    split: str | None = None


def read_source(src: SourceSpec) -> Iterator[tuple[Path | None, str, Any]]:
    """(file, location, record-or-Problem) for every record of a source, file by file."""
    spec = src.spec
    path = Path(spec)
    if not spec.startswith(("hf:", "hub:")) and path.exists():
        if path.is_file():
            for where, rec in _read_file(path, src.mapping):
                yield path, where, rec
            return
        if _hub_layout(path):
            for where, rec in _read_hub(str(path), src.mapping, src.config, src.split):
                yield None, where, rec
            return
        for f in _local_files(path):
            for where, rec in _read_file(f, src.mapping):
                yield f, where, rec
        return
    if _HUB_ID.match(spec) and path.suffix.lower() not in LOCAL_SUFFIXES:
        hub_id = spec.split(":", 1)[1] if spec.startswith(("hf:", "hub:")) else spec
        for where, rec in _read_hub(hub_id, src.mapping, src.config, src.split):
            yield None, where, rec
        return
    raise UserError(f"{spec}: no such file or folder, and not a Hub dataset id (owner/name)")


# ----------------------------------------------------------------------------------------------------------------
# Mapping one record: pure functions, raising _RowError(field, expected, actual).


class _RowError(Exception):
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
        raise _RowError(path, "the field to be present", f"no such field (fields: {keys})")
    return value


def _string(record: dict, path: str) -> str:
    value = _require(record, path)
    if not isinstance(value, str):
        raise _RowError(path, "a string", f"{_type_name(value)} {_short(value)}")
    return value


_HUMAN_TURN = re.compile(r"\n\nHuman:(.*?)(?=\n\nAssistant:|\Z)", re.S)
_ALERT = re.compile(r"###\s*Instruction:\s*(.*?)\s*(?:###\s*Response:.*)?\Z", re.S)


def _transform_question(text: str, transform: str) -> str:
    if transform == "first_human_turn":
        # hh-rlhf transcripts: "\n\nHuman: ...\n\nAssistant: ..."; the prompt is the first Human turn.
        m = _HUMAN_TURN.search(text if text.startswith("\n\n") else "\n\n" + text)
        if not m:
            raise _RowError("question", "a transcript with a '\\n\\nHuman:' turn", _short(text))
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
        raise _RowError("|".join(mapping.question), "a non-empty string in one of these fields", "none")
    parts = []
    for path in mapping.passage:  # optional: absent, null or empty passages are left out
        value = _get(record, path)
        if value is _MISSING or value is None:
            continue
        if not isinstance(value, str):
            raise _RowError(path, "a string", f"{_type_name(value)} {_short(value)}")
        parts.append(value)
    parts += [_string(record, path) for path in mapping.question]
    text = "\n\n".join(p.strip() for p in parts if p.strip()) if len(parts) > 1 else parts[0]
    return _transform_question(text, mapping.question_transform)


def _choice_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise _RowError(where, "an option text", f"{_type_name(value)} {_short(value)}")
    if isinstance(value, (int, float)):
        return str(value)  # numeric options from CSV/parquet (MMLU "8", "24")
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]  # [{label, text}] (CommonsenseQA raw)
    raise _RowError(where, "an option text (string, number or {label, text})", f"{_type_name(value)} {_short(value)}")


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
        raise _RowError(path, "a list of options", f"{_type_name(value)} {_short(value)}")
    return [_choice_text(v, path) for v in value]


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in `text`, nested braces included; None when there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if i < len(text) and text[i] == " ":  # "\boxed 5": the token up to whitespace or '$'
        m = re.match(r"\s+([^\s$]+)", text[i:])
        return m.group(1) if m else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced braces


def after_hashes(text: str) -> str | None:
    """GSM8K: the final answer follows the last '####'; thousands separators dropped."""
    pos = text.rfind("####")
    if pos < 0:
        return None
    answer = text[pos + 4 :].strip().replace(",", "")
    return answer or None


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
            raise _RowError(path, "a 0-based choice index", f"{_type_name(value)} {_short(value)}")
        if not 0 <= value < max(n_choices, 1):
            raise _RowError(path, f"a choice index in 0..{n_choices - 1}", str(value))
        return choice_letter(value)
    if extract == "yes_no":
        key = str(value).strip().lower() if isinstance(value, (str, bool)) else None
        if key not in _YES:
            raise _RowError(path, "yes or no", f"{_type_name(value)} {_short(value)}")
        return _YES[key]
    if extract == "map":
        key = str(value).lower() if isinstance(value, bool) else str(value).strip()
        if key not in ref["map"]:
            raise _RowError(path, f"one of {', '.join(ref['map'])}", _short(value))
        return ref["map"][key]
    if not isinstance(value, str):
        raise _RowError(path, "a string", f"{_type_name(value)} {_short(value)}")
    if extract == "gsm8k":
        answer = after_hashes(value)
        if answer is None:
            raise _RowError(path, "a solution ending in '#### <answer>'", _short(value[-60:]))
        return answer
    if extract == "boxed":
        answer = last_boxed(value)
        if answer is None or not answer.strip():
            raise _RowError(path, "a solution with a final \\boxed{...}", _short(value[-60:]))
        return answer.strip()
    if extract == "letter":
        letter = value.strip().upper()
        if len(letter) != 1 or not "A" <= letter <= "Z":
            raise _RowError(path, "a choice letter", _short(value))
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
    """One source record -> the core columns (without id/errors); raises _RowError on a problem."""
    if not isinstance(record, dict):
        raise _RowError("<record>", "a JSON object", f"{_type_name(record)} {_short(record)}")
    question = question_of(record, mapping)
    choices = choices_of(record, mapping)
    reference = reference_of(record, mapping, len(choices))
    row = {"source": mapping.source, "domain": mapping.domain, "question": question, "reference": reference,
           "choices": choices}
    problems = validate_row(row)
    if problems:
        raise _RowError(*problems[0])
    row["meta"] = _meta_of(record, mapping, file_meta or {})
    return row


# ----------------------------------------------------------------------------------------------------------------
# The stage


@dataclass
class IngestOptions:
    on_error: str = "fail"  # "fail": raise with the first problems, write nothing; "skip": drop and report
    limit: int | None = None  # at most this many kept rows per source (reading stops there)
    sample: int | None = None  # keep this many rows in all, stratified by source
    seed: int = 0
    domains: tuple[str, ...] = ()  # keep only these domains (empty: all)


@dataclass
class _SourceStats:
    source: str
    input: str
    mapping: str
    records: int = 0
    kept: int = 0
    duplicates_within: int = 0
    duplicates_across: int = 0
    duplicates_conflicting: int = 0  # duplicates whose reference differs from the kept row's
    errors: int = 0
    other_domain: int = 0
    sampled_out: int = 0
    domains: dict[str, int] = field(default_factory=dict)


def _file_meta(path: Path | None, mapping: Mapping) -> dict[str, str]:
    meta = {}
    if path is not None:
        for key, pattern in mapping.file_meta.items():
            m = re.search(pattern, path.name)
            if m:
                meta[key] = m.group(1) if m.groups() else m.group(0)
    return meta


def _stratified(counts: list[int], n: int) -> list[int]:
    """Split n over sources in proportion to their sizes (largest remainder), never more than a source has."""
    total = sum(counts)
    if n >= total:
        return list(counts)
    quotas = [n * c / total for c in counts]
    take = [int(q) for q in quotas]
    order = sorted(range(len(counts)), key=lambda i: (-(quotas[i] - take[i]), i))
    for i in order[: n - sum(take)]:
        take[i] += 1
    return take


def ingest(
    sources: list[SourceSpec], options: IngestOptions | None = None, progress: bool = False
) -> tuple[Dataset, dict[str, Any]]:
    """Read, map, validate and deduplicate every source; return the dataset and the report.

    Raises UserError with the first problems when `on_error` is "fail" and any record fails.
    `progress` shows a tqdm bar per source on stderr.
    """
    from tqdm.auto import tqdm

    opts = options or IngestOptions()
    if opts.on_error not in ("fail", "skip"):
        raise UserError(f"--on-error: expected 'fail' or 'skip', got {opts.on_error!r}")
    unknown = [d for d in opts.domains if d not in DOMAINS]
    if unknown:
        raise UserError(f"--domain: expected one of {', '.join(DOMAINS)}, got {', '.join(unknown)}")
    cols: dict[str, list] = {k: [] for k in ("id", "source", "domain", "question", "reference", "choices", "meta")}
    row_source: list[int] = []
    seen: dict[bytes, int] = {}  # dedup key digest -> index of the kept row
    problems: list[Problem] = []
    n_problems = 0
    stats: list[_SourceStats] = []
    for s_index, src in enumerate(sources):
        mapping = src.mapping
        st = _SourceStats(source=mapping.source, input=src.spec, mapping=mapping.name)
        stats.append(st)
        current_file: Path | None = None
        fmeta: dict[str, str] = {}
        records = tqdm(read_source(src), desc=mapping.source, unit=" rows", disable=not progress, mininterval=0.5)
        for path, where, record in records:
            st.records += 1
            if path is not current_file:
                current_file, fmeta = path, _file_meta(path, mapping)
            if isinstance(record, Problem):
                problem = record
            else:
                try:
                    row = map_record(record, mapping, fmeta)
                    problem = None
                except _RowError as exc:
                    problem = Problem(where, exc.field, exc.expected, exc.actual)
            if problem is not None:
                st.errors += 1
                n_problems += 1
                if len(problems) < MAX_REPORTED_PROBLEMS:
                    problems.append(problem)
                continue
            if opts.domains and row["domain"] not in opts.domains:
                st.other_domain += 1
                continue
            norm_q = normalize_text(row["question"])
            norm_c = "\x1e".join(normalize_text(c) for c in row["choices"]) if row["choices"] else ""
            key = hashlib.blake2b(f"{norm_q}\x1f{norm_c}".encode("utf-8"), digest_size=16).digest()
            first = seen.get(key)
            if first is not None:
                if row_source[first] == s_index:
                    st.duplicates_within += 1
                else:
                    st.duplicates_across += 1
                if cols["reference"][first] != row["reference"]:
                    st.duplicates_conflicting += 1  # same prompt, another answer: the first one is kept
                continue
            seen[key] = len(row_source)
            cols["id"].append(id_from_normalized(norm_q, row["source"], norm_c))
            for k in ("source", "domain", "question", "reference", "choices", "meta"):
                cols[k].append(row[k])
            row_source.append(s_index)
            st.kept += 1
            st.domains[row["domain"]] = st.domains.get(row["domain"], 0) + 1
            if opts.limit is not None and st.kept >= opts.limit:
                break
        if st.records == 0:
            raise UserError(f"{src.spec}: no records (empty source)")
    seen.clear()
    if n_problems and opts.on_error == "fail":
        shown = "\n".join(f"  {p}" for p in problems[:5])
        raise UserError(
            f"{n_problems} record(s) failed; nothing was written. First problems:\n{shown}\n"
            "Fix the input or the mapping, or pass --on-error skip to drop these records."
        )
    if opts.sample is not None:
        keep = _sample_indices(row_source, len(sources), opts.sample, opts.seed)
        for i, st in enumerate(stats):
            before = st.kept
            st.domains = {}
            st.kept = 0
            for j in keep:
                if row_source[j] == i:
                    st.kept += 1
                    d = cols["domain"][j]
                    st.domains[d] = st.domains.get(d, 0) + 1
            st.sampled_out = before - st.kept
        cols = {k: [v[j] for j in keep] for k, v in cols.items()}
    n = len(cols["id"])
    cols["errors"] = [[]] * n
    ds = _to_dataset(cols)
    report = _report(stats, problems, n_problems, opts, n)
    return ds, report


def _to_dataset(cols: dict[str, list]) -> Dataset:
    """One Arrow table from the column lists (no per-value Python encoding), typed by the schema's Features."""
    import pyarrow as pa
    from datasets import DatasetInfo
    from datasets.table import InMemoryTable

    feats = features()
    table = pa.Table.from_pydict(cols, schema=feats.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=feats))


def _sample_indices(row_source: list[int], n_sources: int, n: int, seed: int) -> list[int]:
    by_source: list[list[int]] = [[] for _ in range(n_sources)]
    for j, s in enumerate(row_source):
        by_source[s].append(j)
    take = _stratified([len(b) for b in by_source], n)
    rng = random.Random(seed)
    keep: list[int] = []
    for rows, k in zip(by_source, take):
        keep.extend(sorted(rng.sample(rows, k)))
    return sorted(keep)


def _report(stats: list[_SourceStats], problems: list[Problem], n_problems: int, opts: IngestOptions, n: int) -> dict:
    domains: dict[str, int] = {}
    for st in stats:
        for d, c in st.domains.items():
            domains[d] = domains.get(d, 0) + c
    return {
        "stage": "ingest",
        "rows": n,
        "domains": domains,
        "sources": [st.__dict__ for st in stats],
        "totals": {
            "records": sum(st.records for st in stats),
            "kept": n,
            "duplicates_within": sum(st.duplicates_within for st in stats),
            "duplicates_across": sum(st.duplicates_across for st in stats),
            "duplicates_conflicting": sum(st.duplicates_conflicting for st in stats),
            "errors": n_problems,
            "other_domain": sum(st.other_domain for st in stats),
            "sampled_out": sum(st.sampled_out for st in stats),
        },
        "error_samples": [p.as_dict() for p in problems],
        "options": {"on_error": opts.on_error, "limit": opts.limit, "sample": opts.sample, "seed": opts.seed,
                    "domains": list(opts.domains)},
    }
