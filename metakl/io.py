"""Stage outputs on disk: a folder with the dataset as parquet plus a JSON report, written atomically.

Every stage's CLI saves with `save_stage` and the next one reads with `load_stage`, so a run can resume and be
inspected, and an interrupted write never leaves a half-written folder behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from datasets import Dataset

from metakl.errors import UserError

DATA_FILE = "data.parquet"


def read_yaml_mapping(path: str | Path, what: str = "settings") -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is `{}`); every problem is one UserError naming the file (and line)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such {what} file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read the {what} file ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p} line {mark.line + 1}" if mark else str(p)
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a YAML mapping of {what}, got {type(data).__name__}")
    return data


def open_sqlite(path: str | Path):
    """A SQLite connection shared safely by threads and processes: WAL, a busy timeout, autocommit.

    NORMAL synchronous is durable across process kills under WAL (only an OS crash can lose the last commits).
    Callers guard the connection with their own lock (it is used from worker threads).
    """
    import sqlite3

    conn = sqlite3.connect(path, timeout=60.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def report_file(stage_name: str) -> str:
    """The report's file name in a stage folder: `<stage>_report.json`."""
    return f"{stage_name.replace('-', '_')}_report.json"


def save_result(result, out_dir: str | Path, extra_files: dict[str, Any] | None = None) -> Path:
    """Write a StageResult to `out_dir`: data.parquet, `<stage>_report.json`, its artifacts and `extra_files`."""
    files = {report_file(result.report["stage"]): result.report, **result.artifacts, **(extra_files or {})}
    return save_stage(result.dataset, out_dir, files=files)


def save_stage(ds: Dataset, out_dir: str | Path, report: dict[str, Any] | None = None, report_name: str = "report.json",
               *, files: dict[str, Any] | None = None) -> Path:
    """Write `ds` as data.parquet, its `report` and the `files` to `out_dir` (see `write_folder`)."""
    files = dict(files or {})
    if report is not None:
        files[report_name] = report
    return write_folder(out_dir, {DATA_FILE: ds, **files})


def write_folder(out_dir: str | Path, files: dict[str, Any]) -> Path:
    """Write `files` ({relative name: Dataset → parquet, bytes, str → text, other → JSON}) to `out_dir`, replacing
    any previous content only once the new one is complete (a temporary folder beside it, then two renames)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, obj in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(obj, Dataset):
                obj.to_parquet(str(target))
            elif isinstance(obj, bytes):  # a binary artifact (a plot)
                target.write_bytes(obj)
            elif isinstance(obj, str) and not name.endswith(".json"):  # a text artifact (markdown)
                target.write_text(obj, encoding="utf-8")
            else:
                target.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a stage folder is an ordinary folder
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_stage(path: str | Path) -> Dataset:
    """Read a stage output folder (or a parquet file) back as a Dataset; a missing or damaged file is a UserError."""
    p = Path(path)
    if p.is_dir():
        p = p / DATA_FILE
    if not p.exists():
        raise UserError(f"{path}: no stage output here (expected {DATA_FILE}); run the previous stage with --out {path}")
    try:
        import pyarrow.parquet as pq

        pq.read_metadata(p)  # a truncated file fails here, before `datasets` logs its own warning about it
        return Dataset.from_parquet(str(p))
    except Exception as exc:  # pyarrow raises several types for truncated/corrupt files; all mean the same here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{p}: not a readable stage file ({first}); re-run the stage that wrote it") from None
