"""Stage folders on disk and YAML settings files: atomic writes, one clear error per bad file."""

import errno
import json
import os
import tempfile
import time
from pathlib import Path

import pytest
from datasets import Dataset

from metakl.errors import UserError
from metakl.io import MARKER, check_out, load_stage, read_yaml_mapping, save_stage


def test_read_yaml_mapping_errors_name_file_and_line(tmp_path):
    with pytest.raises(UserError, match=r"missing.yaml: no such config file"):
        read_yaml_mapping(tmp_path / "missing.yaml", "config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml line \d+: not valid YAML"):
        read_yaml_mapping(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match=r"list.yaml: expected a YAML mapping of settings, got list"):
        read_yaml_mapping(lst)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml_mapping(empty) == {}
    ok = tmp_path / "ok.yaml"
    ok.write_text("beta: 0.1\npairing: block\n")
    assert read_yaml_mapping(ok) == {"beta": 0.1, "pairing": "block"}


def test_save_stage_replaces_only_when_complete(tmp_path, monkeypatch):
    out = tmp_path / "stage"
    save_stage(Dataset.from_dict({"x": [1, 2]}), out, {"rows": 2}, "r.json")
    assert load_stage(out)["x"] == [1, 2]

    def broken(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Dataset, "to_parquet", broken)
    with pytest.raises(RuntimeError):
        save_stage(Dataset.from_dict({"x": [3]}), out, {"rows": 1}, "r.json")
    monkeypatch.undo()
    assert load_stage(out)["x"] == [1, 2]  # the old output is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]  # no temp folder left behind
    with pytest.raises(UserError, match="no stage output here"):
        load_stage(tmp_path / "nothing")


# ---------------------------------------------------------------- what --out may replace (issue 20, item 1)


def _siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir())


def test_out_refuses_a_folder_metakl_did_not_write(tmp_path):
    out = tmp_path / "P"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match=r"--out .*P: the folder exists and holds files metakl did not write "
                                        r"\(notes.txt\).*--overwrite"):
        save_stage(Dataset.from_dict({"x": [1]}), out, {"rows": 1}, "r_report.json")
    assert (out / "notes.txt").read_text() == "keep" and _siblings(out) == ["P"]
    save_stage(Dataset.from_dict({"x": [1]}), out, {"rows": 1}, "r_report.json", overwrite=True)  # asked for
    assert load_stage(out)["x"] == [1] and not (out / "notes.txt").exists() and _siblings(out) == ["P"]


def test_out_replaces_its_own_output_but_not_a_file_added_to_it(tmp_path):
    out = tmp_path / "stage"
    save_stage(Dataset.from_dict({"x": [1]}), out, {"rows": 1}, "r_report.json")
    assert json.loads((out / MARKER).read_text())["entries"] == ["data.parquet", "r_report.json"]
    save_stage(Dataset.from_dict({"x": [2]}), out, {"rows": 1}, "r_report.json")  # its own output: replaced
    assert load_stage(out)["x"] == [2]
    (out / "my_analysis.ipynb").write_text("{}")
    with pytest.raises(UserError, match=r"did not write \(my_analysis.ipynb\)"):
        save_stage(Dataset.from_dict({"x": [3]}), out, {"rows": 1}, "r_report.json")
    assert load_stage(out)["x"] == [2] and (out / "my_analysis.ipynb").exists()


def test_stage_folders_of_older_versions_are_recognised_by_their_files(tmp_path):
    """Without the marker (written before it existed): a report and only a stage's own files count as metakl's."""
    old = tmp_path / "04-merge"
    old.mkdir()
    Dataset.from_dict({"x": [1]}).to_parquet(str(old / "data.parquet"))
    for name in ("merge_report.json", "taxonomy.json", ".fingerprint"):
        (old / name).write_text("{}")
    check_out(old)  # replaceable
    release = tmp_path / "release"
    (release / "data" / "all").mkdir(parents=True)
    (release / "plots").mkdir()
    for name in ("publish_report.json", "README.md", "metakl_build.json"):
        (release / name).write_text("{}")
    check_out(release)
    (old / "notes.txt").write_text("mine")
    no_report = tmp_path / "parquet_only"
    no_report.mkdir()
    Dataset.from_dict({"x": [1]}).to_parquet(str(no_report / "data.parquet"))  # someone's data, no report
    for folder, name in ((old, "notes.txt"), (no_report, "data.parquet")):
        with pytest.raises(UserError, match=rf"did not write \({name}\)"):
            check_out(folder)


def test_out_that_is_a_file_is_refused_and_left_as_it_was(tmp_path):
    target = tmp_path / "F"
    target.write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(UserError, match=r"--out .*F: is a file, not a folder"):
            save_stage(Dataset.from_dict({"x": [1]}), target, overwrite=overwrite)
    assert target.read_text() == "precious" and _siblings(target) == ["F"]  # no .F.old-PID beside it


def test_out_is_never_an_input_nor_a_folder_holding_one(tmp_path):
    q = tmp_path / "Q"
    save_stage(Dataset.from_dict({"x": [1]}), q / "in")
    for out in (q, q / "in"):
        for overwrite in (False, True):
            with pytest.raises(UserError, match=r"(holds|is) the input .*replacing it would delete it"):
                check_out(out, inputs=[q / "in"], overwrite=overwrite)
    with pytest.raises(UserError, match="is the current folder or holds it"):
        check_out(Path.cwd().parent, overwrite=True)
    check_out(q / "out", inputs=[q / "in"])  # a sibling is fine


def test_copies_left_by_a_killed_writer_are_removed(tmp_path):
    out = tmp_path / "stage"
    save_stage(Dataset.from_dict({"x": [1]}), out)
    dead = 2**22 + 12345  # above the kernel's default pid_max (4194304): no such process
    two_hours_ago = time.time() - 7200
    for name in (f".stage.old-{dead}", f".stage.tmp-{dead}-abc", f".stage.tmp-{os.getppid()}-live",
                 f".stage.tmp-{dead}-recent"):
        (tmp_path / name).mkdir()
        if not name.endswith("recent"):
            os.utime(tmp_path / name, (two_hours_ago, two_hours_ago))
    save_stage(Dataset.from_dict({"x": [2]}), out)
    # A live writer's copy stays, and a recent one (its writer may be on another machine sharing the disk).
    # (compared as sorted lists: the names sort by the pids' digits, so their order depends on the parent's pid)
    assert _siblings(out) == sorted([f".stage.tmp-{os.getppid()}-live", f".stage.tmp-{dead}-recent", "stage"])


# ---------------------------------------------------------------- a disk that refuses, an empty input (item 6)


def test_full_or_read_only_disk_is_one_line_and_the_old_output_stays(tmp_path, monkeypatch):
    """ENOSPC and EROFS are simulated at the write calls (the tests run as root, for whom chmod forbids nothing)."""
    out = tmp_path / "stage"
    save_stage(Dataset.from_dict({"x": [1]}), out)

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(a[0]))

    monkeypatch.setattr(Dataset, "to_parquet", full)
    with pytest.raises(UserError, match=r"--out .*stage: cannot write there \(No space left on device\); nothing was "
                                        r"replaced") as info:
        save_stage(Dataset.from_dict({"x": [2]}), out)
    assert "\n" not in str(info.value)
    monkeypatch.undo()

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(k.get("dir")))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(UserError, match=r"cannot write there \(Read-only file system\)"):
        save_stage(Dataset.from_dict({"x": [2]}), out)
    monkeypatch.undo()
    assert load_stage(out)["x"] == [1] and _siblings(out) == ["stage"]
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(UserError, match=r"--out .*blocker/sub: .*blocker is a file, not a folder"):
        save_stage(Dataset.from_dict({"x": [2]}), blocker / "sub")


def test_a_zero_row_input_says_so_and_names_the_stage_that_emptied_it(tmp_path):
    from metakl.io import save_result
    from metakl.stage import StageResult

    empty = Dataset.from_dict({"x": [1]}).select([])
    save_result(StageResult(empty, {"stage": "filter", "rows_in": 40, "rows_out": 0}), tmp_path / "filter")
    with pytest.raises(UserError) as info:
        load_stage(tmp_path / "filter")
    assert str(info.value) == (f"{tmp_path / 'filter' / 'data.parquet'}: the stage output has 0 rows (emptied by "
                               f"filter: 40 rows in → 0 out, see filter_report.json); nothing to work on")
    save_stage(empty, tmp_path / "bare")  # no report to ask
    with pytest.raises(UserError, match=r"bare/data.parquet: the stage output has 0 rows; nothing to work on"):
        load_stage(tmp_path / "bare")


def test_a_known_column_of_the_wrong_type_is_one_line(tmp_path):
    save_stage(Dataset.from_dict({"id": ["a"], "question": [7]}), tmp_path / "s")
    with pytest.raises(UserError, match=r"s/data.parquet: column 'question': expected strings, got int64"):
        load_stage(tmp_path / "s")


def test_load_table_guards_json_lines_as_load_stage_guards_parquet(tmp_path):
    """The loader guard other readers share (gdpo's release loader): one UserError naming the file and line."""
    from metakl.io import load_table

    good = tmp_path / "rows.jsonl"
    good.write_text('{"question": "Q1", "responses": []}\n{"question": "Q2", "responses": []}\n')
    assert load_table(good)["question"] == ["Q1", "Q2"]
    save_stage(Dataset.from_dict({"question": ["Q"]}), tmp_path / "stage")
    assert load_table(tmp_path / "stage")["question"] == ["Q"]
    cases = {
        '{"question": "Q1"}\n{"question": "Q2"\n': r"bad.jsonl line 2: field '<line>'",
        '{"question": "Q1"}\n[1, 2]\n': r"bad.jsonl line 2: expected a JSON object \(one row\), got list",
        '{"question": "Q1"}\n{"question": {"a": 1}}\n': r"bad.jsonl: rows whose fields do not share one type",
        '{"question": 5}\n': r"bad.jsonl: column 'question': expected strings, got int64",
        "\n": r"bad.jsonl: empty file",
    }
    for text, message in cases.items():
        (tmp_path / "bad.jsonl").write_text(text)
        with pytest.raises(UserError, match=message) as info:
            load_table(tmp_path / "bad.jsonl")
        assert "\n" not in str(info.value), text
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match=r"bad.parquet: not a readable stage file"):
        load_table(tmp_path / "bad.parquet")


# ---------------------------------------------------------------------------------------------------------------
# The one atomic file writer (write_atomic / write_json_atomic): the manifest, the taxonomy and gdpo eval's results


def test_write_json_atomic_replaces_whole_files_and_leaves_nothing_beside_them(tmp_path):
    from metakl.io import write_json_atomic

    p = write_json_atomic(tmp_path / "sub" / "a.json", {"ü": 1, "p": Path("x")}, indent=1)
    assert p.read_text(encoding="utf-8") == '{\n "ü": 1,\n "p": "x"\n}\n'  # UTF-8, default=str, one newline
    write_json_atomic(p, [1, 2])
    assert json.loads(p.read_text()) == [1, 2] and sorted(x.name for x in p.parent.iterdir()) == ["a.json"]
    assert oct(p.stat().st_mode & 0o777) == oct(0o644)


def test_a_write_that_fails_is_one_user_error_and_leaves_no_temporary_file(tmp_path):
    """A folder where the file should go: one UserError naming it (the taxonomy's writer raised an OSError with a
    traceback, and its and the manifest's writers left `.NAME.tmp` behind)."""
    from metakl.stages.merge import save_taxonomy

    (tmp_path / "taxonomy.json").mkdir()
    with pytest.raises(UserError, match=r"taxonomy\.json: cannot write"):
        save_taxonomy({"units": {}}, tmp_path / "taxonomy.json")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["taxonomy.json"]
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(UserError, match=r"file/taxonomy\.json: cannot write"):
        save_taxonomy({"units": {}}, tmp_path / "file" / "taxonomy.json")
