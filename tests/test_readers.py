"""metakl.readers, the one reader stack (ingest and import-responses test it through their own messages too)."""

from __future__ import annotations

import pytest

from metakl.errors import UserError
from metakl.readers import Problem, check_columns, data_files, read_file


def test_unreadable_lines_come_as_problems_in_place(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"a": \n{"a": 3}\n')
    got = list(read_file(p))
    assert [w for w, _ in got] == [f"{p} line 1", f"{p} line 3", f"{p} line 4"]  # blank line 2 skipped, still counted
    assert got[0][1] == {"a": 1} and got[2][1] == {"a": 3}
    problem = got[1][1]
    assert isinstance(problem, Problem) and problem.field == "<line>" and "looks truncated" in problem.actual
    assert str(problem).startswith(f"{p} line 3: field '<line>': expected one complete JSON object per line, got ")


def test_locations_by_format(tmp_path):
    arr = tmp_path / "a.json"
    arr.write_text('[{"a": 1}, {"a": 2}]')
    lines = tmp_path / "l.json"  # JSON lines despite the suffix
    lines.write_text('{"a": 1}\n{"a": 2}\n')
    table = tmp_path / "t.csv"
    table.write_text('a,b\n"x\ny",1\nz,2\n')
    assert [w for w, _ in read_file(arr)] == [f"{arr} row 0", f"{arr} row 1"]
    assert [w for w, _ in read_file(lines)] == [f"{lines} line 1", f"{lines} line 2"]
    assert list(read_file(table)) == [(f"{table} line 2", {"a": "x\ny", "b": "1"}), (f"{table} line 4", {"a": "z", "b": "2"})]


def test_kind_override_and_unknown_suffix(tmp_path):
    p = tmp_path / "x.out"
    p.write_text('{"a": 1}\n')
    assert list(read_file(p, kind="jsonl")) == [(f"{p} line 1", {"a": 1})]
    with pytest.raises(UserError, match=r"x.out: unsupported file type '.out'"):
        list(read_file(p))


def test_required_columns(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(UserError) as exc:
        list(read_file(p, ["a", "c"], "mapping 'm'"))
    assert str(exc.value) == f"{p} line 1 (header): missing column(s) 'c' needed by mapping 'm'; columns present: a, b"
    with pytest.raises(UserError, match=r"^here: missing column\(s\) 'c'; columns present: a$"):
        check_columns("here", ["a"], ["c"])


def test_data_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.csv").write_text("a\n1\n")
    (tmp_path / "sub" / "a.JSONL").write_text('{"a": 1}\n')
    (tmp_path / "notes.md").write_text("-")
    assert data_files(tmp_path) == [tmp_path / "b.csv", tmp_path / "sub" / "a.JSONL"]
    assert data_files(tmp_path, recursive=False) == [tmp_path / "b.csv"]
    with pytest.raises(UserError, match=r"no data files here \(expected \.jsonl\)"):
        data_files(tmp_path, [".jsonl"], recursive=False)
