"""Records from local files: the one reader stack of every stage that reads files (ingest, import-responses).

`read_file(path)` yields `(location, record)` for each record of a JSON-lines file (.jsonl, .txt), a .json file (one
JSON array, or JSON lines despite the suffix), a .csv file with a header, or a .parquet file. Locations are
`FILE line N` (1-based) for text records, `FILE row N` (0-based, as `ds[N]`) for JSON arrays and parquet rows.

A record that cannot be read (a line that is not UTF-8 or not JSON, a CSV record of the wrong width) comes as a
`Problem` in place of the record, so a caller can skip and count it or stop at it; a file that cannot be read at all
(missing, empty, not UTF-8 as a whole, a broken JSON array, a missing column) is a UserError naming it, with its line
when there is one.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metakl.errors import UserError
from metakl.schema import describe_problem

SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".txt": "jsonl", ".csv": "csv", ".parquet": "parquet"}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # HarmBench contexts and transcripts exceed the 128 KiB default


@dataclass(frozen=True)
class Problem:
    """A record that cannot be read or mapped: where, which field, what was expected, what was found."""

    location: str
    field: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return describe_problem(self.location, self.field, self.expected, self.actual)

    def as_dict(self) -> dict[str, str]:
        return {"location": self.location, "field": self.field, "expected": self.expected, "actual": self.actual}


def _decode(path: Path, data: bytes) -> str:
    """A whole file as UTF-8 text (a byte-order mark dropped); else a UserError naming the line and column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(describe_problem(f"{path} line {line}", "<file>", "UTF-8 text",
                                         f"byte 0x{data[exc.start]:02x} at column {col}")) from None


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data.strip():
        raise UserError(f"{path}: empty file (expected at least one record)")
    return data


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
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


def read_json(path: Path) -> Iterator[tuple[str, Any]]:
    """A .json file holding one JSON array of objects, or JSON lines despite the suffix (CSQA2)."""
    data = _read_bytes(path)
    if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] != b"[":
        del data
        yield from read_jsonl(path)
        return
    text = _decode(path, data)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(describe_problem(f"{path} line {exc.lineno}", "<file>", "a complete JSON array",
                                         f"{exc.msg} (column {exc.colno})")) from None
    for i, item in enumerate(items):
        yield f"{path} row {i}", item


def read_csv(path: Path, required: Sequence[str] = (), needed_by: str = "") -> Iterator[tuple[str, Any]]:
    """A CSV file with a header line; a record may span lines (quoted newlines): its location is the line it starts on."""
    data = _read_bytes(path)
    text = _decode(path, data)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as exc:
        raise UserError(f"{path} line 1: not a CSV header ({exc})") from None
    check_columns(f"{path} line 1 (header)", header, required, needed_by)
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


def check_columns(where: str, columns: list[str], required: Sequence[str], needed_by: str = "") -> None:
    """UserError naming `where` when a column in `required` is absent (`needed_by` says who needs it)."""
    missing = [c for c in required if c not in columns]
    if missing:
        who = f" needed by {needed_by}" if needed_by else ""
        raise UserError(f"{where}: missing column(s) {', '.join(repr(c) for c in missing)}{who}; "
                        f"columns present: {', '.join(columns) or '(none)'}")


def _rows_of_table(table, prefix: str) -> Iterator[tuple[str, Any]]:
    i = 0
    for batch in table.to_batches(max_chunksize=4096):
        for record in batch.to_pylist():
            yield f"{prefix} row {i}", record
            i += 1


def read_parquet(path: Path, required: Sequence[str] = (), needed_by: str = "") -> Iterator[tuple[str, Any]]:
    """A parquet file, streamed in batches; rows numbered from 0 (as `ds[N]`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (expected at least one record)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc})") from None
    check_columns(str(path), table.column_names, required, needed_by)
    if table.num_rows == 0:
        raise UserError(f"{path}: empty file (expected at least one record)")
    yield from _rows_of_table(table, str(path))


def data_files(folder: Path, suffixes: Iterable[str] = SUFFIXES, recursive: bool = True) -> list[Path]:
    """The files in `folder` (and below it, when `recursive`) with one of `suffixes`, sorted; UserError if none."""
    suffixes = set(suffixes)
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise UserError(f"{folder}: no data files here (expected {', '.join(sorted(suffixes))})")
    return files


def file_kind(path: Path) -> str | None:
    """jsonl, json, csv or parquet by the file's suffix; None for another suffix."""
    return SUFFIXES.get(path.suffix.lower())


def read_file(path: Path, required: Sequence[str] = (), needed_by: str = "", kind: str | None = None
              ) -> Iterator[tuple[str, Any]]:
    """(location, record or Problem) for each record of a local file; `kind` overrides the one its suffix gives.

    `required` columns are checked against a CSV header or a parquet schema before any record is read.
    """
    kind = kind or file_kind(path)
    if kind == "jsonl":
        return read_jsonl(path)
    if kind == "json":
        return read_json(path)
    if kind == "csv":
        return read_csv(path, required, needed_by)
    if kind == "parquet":
        return read_parquet(path, required, needed_by)
    raise UserError(f"{path}: unsupported file type '{path.suffix}' (expected {', '.join(sorted(SUFFIXES))})")
