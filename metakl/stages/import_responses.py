"""Import responses: attach existing response groups from files to ingested prompts.

A *response mapping* (a preset from annotations/response-presets/*.yaml, or the user's own YAML file) names the
record fields: `question` (the prompt text), optionally `id` (the prompt's id in its source; matched against the
row's `meta[meta_id]`, default the same key, or against the row id), `responses` (one text or a list of texts;
`a|b` takes the first field present), optionally `answers` (answers already extracted, one or a list), and where
the model name comes from: `model_name` (a constant), `model_field` (a record field) or `model_from_file` (a regex
on the file name, group 1), and optionally `source`: the rows' `source` the file answers (only those rows are
candidates; an input without that source is refused).

Matching. A record's candidates are the rows with its id (when the mapping names one) and the rows with its
normalized question; with both, the rows that have both (a row carrying another id is another question, whatever
its text: MMLU-Pro repeats a few texts under several ids). Candidates of one source all get the record (the same
question asked twice in one source); candidates of several sources are *ambiguous*: nothing is attached, and they
are counted and sampled in the report like unmatched records (the same text in MMLU and MMLU-Pro has two gold
answers). Every response is stored with its reasoning split off and its answer extracted (unless the file gives
one); rewards come later (`metakl reward`). Nothing is guessed.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from datasets import Dataset, Features

from metakl import resources
from metakl.config import check_settings, setting
from metakl.errors import UserError
from metakl.io import read_yaml_mapping
from metakl.readers import Problem, data_files, file_kind, read_file
from metakl.schema import STAGE_FEATURES, normalize_text
from metakl.stage import StageResult, stage
from metakl.verify import answer_kind, extract_answer, split_reasoning

STAGE = "import-responses"
SUFFIXES = (".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class ResponseMapping:
    name: str = "custom"
    question: str = "question"
    responses: str = "response"
    id: str | None = None
    meta_id: str | None = None
    id_pattern: str | None = None  # regex on the record's id; group 1 is the id to match ("v2-(\\d+)")
    answers: str | None = None
    model_name: str | None = None
    model_field: str | None = None
    model_from_file: str | None = None
    source: str | None = None  # the rows' source these answers belong to (None: any source, ambiguity refused)
    description: str = ""

    def model_for(self, record: dict, path: Path, where: str) -> str:
        if self.model_field:
            return str(_get(record, self.model_field, where))
        if self.model_from_file:
            m = re.search(self.model_from_file, path.name)
            if m:
                return m.group(1) if m.groups() else m.group(0)
            raise UserError(f"{where}: file name {path.name!r} does not match model_from_file {self.model_from_file!r}")
        return self.model_name or path.stem


def load_response_mapping(name_or_path: str) -> ResponseMapping:
    """A preset name (see `list_response_presets`) or the path of a YAML file with the same keys."""
    path = Path(name_or_path)
    if not path.suffix:
        path = resources.response_preset(name_or_path) or path
    if not path.exists():
        raise UserError(f"no response mapping {name_or_path!r}: not a file, and the presets are {', '.join(list_response_presets())}")
    data = read_yaml_mapping(path, "response mapping")
    known = {f.name for f in fields(ResponseMapping)} - {"name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    for key, value in data.items():
        if value is not None and not isinstance(value, str):
            raise UserError(f"{path}: key {key!r}: expected a string, got {type(value).__name__}")
    return ResponseMapping(name=path.stem, **data)


def list_response_presets() -> list[str]:
    return resources.response_preset_names()


def _get(record: dict, path: str, where: str) -> Any:
    """A (dotted) field; `a|b` gives the first alternative present."""
    for alternative in path.split("|"):
        value: Any = record
        for part in alternative.split("."):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            return value
    fields_ = ", ".join(list(record)[:20]) if isinstance(record, dict) else type(record).__name__
    raise UserError(f"{where}: no field {path!r} (the record has: {fields_})")


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, record) of a response file through metakl.readers; the first unreadable record stops the import
    with its file and line. A file with another suffix is read as JSON lines."""
    for where, record in read_file(path, kind=file_kind(path) or "jsonl"):
        if isinstance(record, Problem):
            raise UserError(str(record))
        yield where, record


def response_files(paths: list[str | Path]) -> list[Path]:
    """The files to read: each path, or the .jsonl/.json/.csv files of a folder (sorted, not recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(data_files(p, SUFFIXES, recursive=False))
        elif p.exists():
            out.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return out


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class ImportConfig:
    """What `metakl import-responses` arguments and flags and a config's `import-responses:` section set (one
    declaration: metakl.config.setting)."""

    files: tuple[str, ...] = setting((), argument=True, path=True, help=(
        "Response files (.jsonl, .json, .csv) or folders of them."))
    preset: str | None = setting(None, flags=("--preset", "-p"), help=(
        "Response mapping preset (see --list-presets)."))
    mapping: str | None = setting(None, flags=("--mapping", "-m"), path=True, help=(
        "Your own response mapping YAML (see README)."))
    replace: bool = setting(False, flags=("--replace",), help=(
        "Drop the responses rows already have (default: append; re-importing a file adds nothing)."))

    def __post_init__(self) -> None:
        self.files = tuple(str(f) for f in self.files)
        check_settings(self, STAGE)


@stage(STAGE, ImportConfig,
       requires={"id": "matching answers by id", "domain": "the rows answered", "question": "matching answers by question"},
       provides=("responses",))
def import_responses(ds: Dataset, config: ImportConfig, *, backend: Any = None, progress: bool = False) -> StageResult:
    """Attach the responses in `config.files` (read with the preset or mapping) to the rows of `ds`."""
    if not config.files:
        raise UserError("import-responses: no response files given")
    if bool(config.preset) == bool(config.mapping):
        raise UserError("import-responses: give exactly one of a preset (--preset NAME) or a mapping (--mapping FILE.yaml)")
    mapping = load_response_mapping(config.mapping or config.preset)
    out, report = attach_responses(ds, list(config.files), mapping, replace=config.replace)
    return StageResult(out, report)


def _row_index(rows: list[dict], mapping: ResponseMapping) -> tuple[dict[str, list[int]], dict[str, list[int]], dict[int, str]]:
    """(rows by normalized question, rows by id, each row's own id in the answer files' terms): every row of
    `mapping.source` (of any source when unset), found by its id and by `meta[meta_id]`."""
    by_question: dict[str, list[int]] = defaultdict(list)
    by_id: dict[str, list[int]] = defaultdict(list)
    own_id: dict[int, str] = {}
    meta_key = mapping.meta_id or mapping.id
    for i, row in enumerate(rows):
        if mapping.source is not None and row.get("source") != mapping.source:
            continue
        by_question[normalize_text(row["question"])].append(i)
        by_id[str(row["id"])].append(i)
        if meta_key:
            try:
                meta = json.loads(row.get("meta") or "{}")
            except json.JSONDecodeError:
                meta = {}
            if isinstance(meta, dict) and meta.get(meta_key) is not None and str(meta[meta_key]) != str(row["id"]):
                own_id[i] = str(meta[meta_key])
                by_id[own_id[i]].append(i)
    return by_question, by_id, own_id


def _record_id(record: dict, mapping: ResponseMapping, where: str) -> str | None:
    """The record's id as the rows know it (None: the mapping names no id, or this record lacks it)."""
    if not mapping.id:
        return None
    try:
        record_id = str(_get(record, mapping.id, where))
    except UserError:  # a record without an id is matched by its question alone
        return None
    if mapping.id_pattern:
        m = re.search(mapping.id_pattern, record_id)
        record_id = (m.group(1) if m.groups() else m.group(0)) if m else record_id
    return record_id


def attach_responses(
    ds: Dataset,
    paths: list[str | Path],
    mapping: ResponseMapping,
    *,
    replace: bool = False,
) -> tuple[Dataset, dict[str, Any]]:
    """Attach the responses in `paths` to the rows of `ds` (matched as the module docstring says); returns
    (dataset, report).

    Why long: one pass over the records; the matching rules (by id, by text, ambiguous, unmatched) read and update
    the same report counters.
    """
    rows = ds.to_list()
    sources = sorted({str(r.get("source")) for r in rows})
    if mapping.source is not None and rows and mapping.source not in sources:
        raise UserError(f"response mapping {mapping.name}: its answers belong to source {mapping.source!r}, and the "
                        f"input has no row of it (its sources: {', '.join(sources[:10])}); ingest them with that "
                        f"source name or use a mapping with another `source`")
    by_question, by_id, own_id = _row_index(rows, mapping)
    for row in rows:
        if replace or row.get("responses") is None:
            row["responses"] = []
    # Re-importing a file must not double its responses, yet equal samples within a group are real: a response
    # counts as already present only up to the number of equal ones the row had before this import.
    before = Counter((i, r["model"], r["text"]) for i, row in enumerate(rows) for r in row["responses"])
    incoming: Counter = Counter()

    files = response_files(paths)
    report: dict[str, Any] = {
        "mapping": mapping.name, "source": mapping.source, "files": [p.name for p in files], "records": 0,
        "matched": 0, "matched_by_id": 0, "attached_to_several": 0, "unmatched": 0, "unmatched_examples": [],
        "ambiguous": 0, "ambiguous_examples": [], "duplicates_skipped": 0, "responses_per_model": {},
    }
    for path in files:
        for where, record in _records(path):
            if not isinstance(record, dict):
                raise UserError(f"{where}: expected a JSON object / CSV record, got {type(record).__name__}")
            report["records"] += 1
            place = where.replace(str(path), path.name, 1)  # reports name the file, not the machine's folders
            question = _get(record, mapping.question, where)
            record_id = _record_id(record, mapping, where)
            with_id = by_id.get(record_id, []) if record_id is not None else []
            # A row that carries another id is another question, whatever its text (MMLU-Pro repeats some texts).
            with_text = [i for i in by_question.get(normalize_text(str(question or "")), [])
                         if record_id is None or own_id.get(i, record_id) == record_id]
            targets = [i for i in with_id if i in with_text] if with_id and with_text else with_id or with_text
            target_sources = sorted({str(rows[i].get("source")) for i in targets})
            if len(target_sources) > 1 or (with_id and with_text and not targets):
                report["ambiguous"] += 1
                if len(report["ambiguous_examples"]) < 5:
                    why = (f"rows of sources {', '.join(target_sources)}" if targets
                           else f"its id {record_id!r} and its question name different rows")
                    report["ambiguous_examples"].append(f"{place}: {str(question)[:80]!r} ({why})")
                continue
            if not targets:
                report["unmatched"] += 1
                if len(report["unmatched_examples"]) < 5:
                    report["unmatched_examples"].append(f"{place}: {str(question)[:80]!r}")
                continue
            report["matched"] += 1
            report["matched_by_id"] += not with_text
            report["attached_to_several"] += len(targets) > 1
            for ri in targets:
                _attach(rows[ri], ri, record, path, where, mapping, before, incoming, report)
    report["rows_with_responses"] = sum(1 for r in rows if r["responses"])
    sizes = [len(r["responses"]) for r in rows if r["responses"]]
    report["responses"] = sum(sizes)
    report["group_size"] = {"min": min(sizes), "max": max(sizes)} if sizes else None
    out = Dataset.from_list(rows, features=Features({**ds.features, "responses": STAGE_FEATURES["responses"]}))
    return out, report


def _attach(row: dict, ri: int, record: dict, path: Path, where: str, mapping: ResponseMapping, before: Counter,
            incoming: Counter, report: dict[str, Any]) -> None:
    """Append the record's responses to row `ri` (a response already there before this import is not added again)."""
    model = mapping.model_for(record, path, where)
    texts = _as_list(_get(record, mapping.responses, where))
    answers = _as_list(_get(record, mapping.answers, where)) if mapping.answers else []
    kind = answer_kind(row["domain"], row.get("reference"), row.get("choices"))
    n_choices = len(row.get("choices") or []) or None
    for k, text in enumerate(texts):
        text = "" if text is None else str(text)
        key = (ri, model, text)
        incoming[key] += 1
        if incoming[key] <= before[key]:
            report["duplicates_skipped"] += 1
            continue
        given = answers[k] if k < len(answers) else None
        answer = str(given) if given not in (None, "") else (extract_answer(text, kind, n_choices=n_choices) if kind else None)
        row["responses"].append({
            "text": text, "reasoning": split_reasoning(text)[0], "answer": answer,
            "reward": None, "advantage": None, "model": model, "finish_reason": None,
        })
        report["responses_per_model"][model] = report["responses_per_model"].get(model, 0) + 1
