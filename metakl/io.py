"""Stage outputs on disk: a folder with the dataset as parquet plus a JSON report, written atomically.

Every stage's CLI saves with `save_stage` and the next one reads with `load_stage`, so a run can resume and be
inspected, and an interrupted write never leaves a half-written folder behind.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from datasets import Dataset, Sequence

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


def report_file(stage_name: str) -> str:
    """The report's file name in a stage folder: `<stage>_report.json`."""
    return f"{stage_name.replace('-', '_')}_report.json"


def save_result(result, out_dir: str | Path, extra_files: dict[str, Any] | None = None, *,
                overwrite: bool = False) -> Path:
    """Write a StageResult to `out_dir`: data.parquet, `<stage>_report.json`, its artifacts and `extra_files`."""
    files = {report_file(result.report["stage"]): result.report, **result.artifacts, **(extra_files or {})}
    return save_stage(result.dataset, out_dir, files=files, overwrite=overwrite)


def save_stage(ds: Dataset, out_dir: str | Path, report: dict[str, Any] | None = None, report_name: str = "report.json",
               *, files: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write `ds` as data.parquet, its `report` and the `files` to `out_dir` (see `write_folder`)."""
    files = dict(files or {})
    if report is not None:
        files[report_name] = report
    return write_folder(out_dir, {DATA_FILE: ds, **files}, overwrite=overwrite)


def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Write one file whole or not at all: a temporary file beside it, then a rename over it. A problem of the disk
    (read-only, full, a folder or file in the way) is one UserError naming the file; the previous content stays and
    no temporary file is left behind."""
    p = Path(path)
    tmp: str | None = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.tmp-{os.getpid()}-", dir=p.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the file is an ordinary one
        os.replace(tmp, p)
        tmp = None
    except OSError as exc:
        raise UserError(f"{p}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return p


def write_json_atomic(path: str | Path, obj: Any, *, indent: int = 2, default: Any = str) -> Path:
    """`obj` as JSON (UTF-8, one trailing newline) in `path`, through `write_atomic`."""
    return write_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=default) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# What --out may replace

# Written into every folder `write_folder` writes: what it wrote, so that a later write replaces only that.
MARKER = ".metakl-output.json"
# Folders written before the marker existed: recognised by their files alone (a report is required).
_LEGACY_FILES = re.compile(r"(data\.parquet|.*report\.json|\.fingerprint|taxonomy\.json|.*\.png|README\.md|"
                           r"metakl_build\.json)")
_LEGACY_RELEASE_DIRS = ("data", "plots")  # a publish release folder's own sub-folders


def _foreign_entries(folder: Path) -> list[str]:
    """The entries of `folder` that metakl did not write (all of them when it is not a metakl output folder).

    A folder with a marker: every entry the marker does not list. Without one (written by an older version): a folder
    holding a report and nothing but the files a stage or a release writes counts as ours."""
    entries = sorted(p.name for p in folder.iterdir())
    try:
        written = json.loads((folder / MARKER).read_text(encoding="utf-8"))["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        written = None
    # A stage's batch state (metakl.llm.batch), written while it runs: the stage's own, replaced with the folder.
    entries = [e for e in entries if not e.startswith(".metakl-batch")]
    if written is not None:
        return [e for e in entries if e != MARKER and e not in written]
    has_report = any(e.endswith("report.json") for e in entries)
    release = "publish_report.json" in entries
    foreign = [e for e in entries if not (_LEGACY_FILES.fullmatch(e) and (folder / e).is_file()
                                          or release and e in _LEGACY_RELEASE_DIRS and (folder / e).is_dir())]
    return foreign if has_report else entries


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out(out: str | Path, *, inputs: Any = (), overwrite: bool = False, flag: str = "--out") -> None:
    """Refuse (one UserError) an output folder whose replacement would lose data: a file; the current folder or one
    holding it; an input of the same command or a folder holding one (even with `overwrite`); an existing folder
    holding anything metakl did not write (unless `overwrite`). An empty folder or metakl's own output is fine."""
    out = Path(out)
    where = f"{flag} {out}"
    if out.is_symlink() and not out.is_dir() or out.exists() and not out.is_dir():
        raise UserError(f"{where}: is a file, not a folder; name a folder for the output")
    above = next((p for p in out.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"{where}: {above} is a file, not a folder; name a folder for the output")
    target = out.resolve()
    if _inside(Path.cwd().resolve(), target):
        raise UserError(f"{where}: is the current folder or holds it; name a folder of its own for the output")
    for given in inputs or ():
        if given is None or str(given) == "":
            continue
        source = Path(given).expanduser().resolve()
        if _inside(source, target):
            what = "is" if source == target else "holds"
            raise UserError(f"{where}: {what} the input {given}; replacing it would delete it, so name another "
                            f"folder for the output")
    if out.is_dir() and not overwrite:
        foreign = _foreign_entries(out)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UserError(f"{where}: the folder exists and holds files metakl did not write ({shown}); name another "
                            f"folder, or add --overwrite to replace it with everything in it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's)
    return True


STALE_SECONDS = 3600  # a writer on another machine (a shared disk) has a pid this one cannot see: wait an hour


def _remove_stale(out: Path) -> None:
    """Temporary and old copies of `out` left by a process that was killed between its renames (its pid is gone and
    the copy is over an hour old)."""
    import time

    for p in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        m = re.fullmatch(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)(?:-.*)?", p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))) and \
                time.time() - p.lstat().st_mtime > STALE_SECONDS:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def write_folder(out_dir: str | Path, files: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Write `files` ({relative name: Dataset → parquet, bytes, str → text, other → JSON}) to `out_dir`, replacing
    any previous content only once the new one is complete (a temporary folder beside it, then two renames).

    An existing `out_dir` is replaced only when metakl wrote it (see `check_out`; `overwrite` replaces any folder).
    A problem of the disk (read-only, full, a file in the way) is one UserError; the previous content stays."""
    out = Path(out_dir)
    check_out(out, overwrite=overwrite)
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
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
        from metakl import __version__

        entries = sorted({Path(name).parts[0] for name in files})
        (tmp / MARKER).write_text(json.dumps({"written_by": f"metakl {__version__}", "entries": entries}) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a stage folder is an ordinary folder
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(old, out)  # put the previous output back
                raise
            shutil.rmtree(old, ignore_errors=True)
            if old.exists():
                raise UserError(f"--out {out}: written, but its previous copy {old} could not be removed; remove it")
        else:
            os.rename(tmp, out)
    except OSError as exc:
        # A full or read-only disk, a file where a folder should be: one line, the old output intact.
        raise UserError(f"--out {out}: cannot write there ({exc.strerror or exc}); nothing was replaced") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_stage(path: str | Path) -> Dataset:
    """Read a stage output folder (or a parquet file) back as a Dataset; a missing or damaged file, a file of 0 rows or
    a known column of the wrong type is one UserError naming the file. The loader guard of every verb's input."""
    p = Path(path)
    if p.is_dir():
        p = p / DATA_FILE
    if not p.exists():
        raise UserError(f"{path}: no stage output here (expected {DATA_FILE}); run the previous stage with --out {path}")
    if not p.is_file():
        raise UserError(f"{p}: not a file; give a stage folder or its {DATA_FILE}")
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(p)  # a truncated file fails here, before `datasets` logs its own warning about it
        schema = pq.read_schema(p)
    except Exception as exc:  # pyarrow raises several types for truncated/corrupt files; all mean the same here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{p}: not a readable stage file ({first}); re-run the stage that wrote it") from None
    if meta.num_rows == 0:
        raise UserError(f"{p}: the stage output has 0 rows{_emptied_by(p.parent)}; nothing to work on")
    _check_column_types(p, schema)
    try:
        return Dataset.from_parquet(str(p))
    except Exception as exc:  # a file whose pages are damaged past its footer
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{p}: not a readable stage file ({first}); re-run the stage that wrote it") from None


def load_table(path: str | Path) -> Dataset:
    """`load_stage` for a stage folder or a parquet file, and the same guard for a JSON / JSON-lines file of rows
    (metakl.readers: a broken line is one UserError naming the file and line; rows whose fields disagree in type, no
    rows, or a known column of the wrong type likewise). For readers of releases and row files (gdpo)."""
    from metakl.readers import Problem, file_kind, read_file

    p = Path(path)
    if p.is_dir() or file_kind(p) not in ("jsonl", "json"):
        return load_stage(p)
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    rows = []
    for where, record in read_file(p):
        if isinstance(record, Problem):
            raise UserError(str(record))
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object (one row), got {type(record).__name__}")
        rows.append(record)
    if not rows:
        raise UserError(f"{p}: no rows; nothing to work on")
    try:
        ds = Dataset.from_list(rows)
    except Exception as exc:  # pyarrow: a field holding a number in one row and a string in another, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{p}: rows whose fields do not share one type ({first})") from None
    _check_column_types(p, ds.data.schema)
    return ds


def _emptied_by(folder: Path) -> str:
    """`(emptied by filter: 40 rows in → 0 out)`, from the stage report in `folder`, or "" when there is none."""
    for report in sorted(folder.glob("*report.json")):
        try:
            r = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and r.get("stage"):
            if r.get("rows_in"):
                return f" (emptied by {r['stage']}: {r['rows_in']} rows in → 0 out, see {report.name})"
            return f" (written by {r['stage']} from an empty input, see {report.name})"
    return ""


def _check_column_types(path: Path, schema) -> None:
    """The schema's columns (metakl.schema) present in the file must have their types: a `question` of numbers is one
    line here, not a traceback deep in a stage."""
    import pyarrow as pa

    from metakl.schema import CORE_FEATURES, STAGE_FEATURES

    expected = {**CORE_FEATURES, **STAGE_FEATURES}
    for name in schema.names:
        if name not in expected:
            continue
        want, got = expected[name], schema.field(name).type
        if pa.types.is_null(got):
            continue  # a column of nulls only
        if isinstance(want, (list, Sequence)):
            ok, what = pa.types.is_list(got) or pa.types.is_large_list(got), "a list"
        else:
            kind = want.dtype
            ok, what = {
                "string": (pa.types.is_string(got) or pa.types.is_large_string(got), "strings"),
                "bool": (pa.types.is_boolean(got), "true/false"),
                "int64": (pa.types.is_integer(got), "integers"),
                "float64": (pa.types.is_floating(got) or pa.types.is_integer(got), "numbers"),
            }.get(kind, (True, kind))
        if not ok:
            raise UserError(f"{path}: column '{name}': expected {what}, got {got}; not a metakl stage output")
