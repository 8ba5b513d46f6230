"""Ingest sources: a SOURCE argument (file, folder or Hub id) -> (file, location, record) for each of its records.

Each reader yields (location, record) where record is a dict, or a Problem for an unreadable line.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metakl.errors import UserError
from metakl.schema import describe_problem
from metakl.stages.ingest.mapping import Mapping

LOCAL_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".txt": "jsonl", ".csv": "csv", ".parquet": "parquet"}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # HarmBench contexts and transcripts exceed the 128 KiB default


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
