"""Stage folders on disk and YAML settings files: atomic writes, one clear error per bad file."""

import pytest
from datasets import Dataset

from metakl.errors import UserError
from metakl.io import load_stage, read_yaml_mapping, save_stage


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
