"""metakl.resources: packaged templates and presets through importlib.resources, and a user's folders on top."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

from metakl import resources
from metakl.errors import UserError
from metakl.stages.import_responses import list_response_presets, load_response_mapping
from metakl.stages.ingest import list_presets, load_preset
from metakl.templates import load_template

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_user_dirs(monkeypatch):
    monkeypatch.delenv(resources.ENV_VAR, raising=False)


def test_packaged_root_is_the_annotations_package():
    root = resources.annotations_root()
    assert root == Path(importlib.resources.files("metakl.annotations"))
    # Every data file of the repository's annotations/ is reachable through the package.
    data = sorted(p.relative_to(REPO / "annotations").as_posix() for p in (REPO / "annotations").rglob("*")
                  if p.is_file() and p.suffix in (".j2", ".yaml", ".json", ".jsonl"))
    packaged = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and p.suffix in (".j2", ".yaml", ".json", ".jsonl"))
    assert data == packaged and len(data) >= 39


def test_every_setuptools_glob_covers_the_data_files():
    """pyproject's package-data globs must ship every kind of file in annotations/ (else the wheel lacks it)."""
    import tomllib

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    suffixes = {g.rsplit(".", 1)[-1] for g in globs["metakl.annotations"]}
    found = {p.suffix.lstrip(".") for p in (REPO / "annotations").rglob("*") if p.is_file() and p.suffix != ".py"}
    assert found <= suffixes, found - suffixes


def test_packaged_presets_and_templates():
    assert "gsm8k" in list_presets() and len(list_presets()) >= 25
    assert load_preset("gsm8k").domain == "math"
    assert set(list_response_presets()) >= {"qwen25math", "mmlu-pro", "xstest", "generic"}
    assert load_template("generate", "math").ref.startswith("generate/math@")
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        load_preset("nope")
    with pytest.raises(UserError, match=r"no template generate/nope .*available: general, math, reconstruct, safety"):
        load_template("generate", "nope")


def test_data_files_by_relative_path(tmp_path, monkeypatch):
    packaged = resources.data_file("annotations/demo/math.jsonl")  # as a preset's `local:` names it
    assert packaged == resources.annotations_root() / "demo" / "math.jsonl" and packaged.is_file()
    assert resources.data_file("demo/math.jsonl") == packaged
    assert resources.data_file("demo/nope.jsonl") is None
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "math.jsonl").write_text("{}\n")
    monkeypatch.setenv(resources.ENV_VAR, str(tmp_path))
    assert resources.data_file("demo/math.jsonl") == tmp_path / "demo" / "math.jsonl"


def test_templates_dir_overrides_one_template_and_falls_back_for_the_rest(tmp_path):
    (tmp_path / "generate").mkdir()
    (tmp_path / "generate" / "math.j2").write_text("{# version: mine-1 #}\nSolve: {{ question }}\n")
    mine = load_template("generate", "math", tmp_path)
    assert mine.ref == "generate/math@mine-1"
    assert mine.render_messages(question="1+1") == [{"role": "user", "content": "Solve: 1+1"}]
    packaged = load_template("generate", "safety", tmp_path)  # not in the user folder: the packaged one
    assert packaged.source == (resources.annotations_root() / "templates" / "generate" / "safety.j2").read_text()


def test_user_annotations_folders_add_and_override(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "presets").mkdir(parents=True)
    (second / "presets").mkdir(parents=True)
    (second / "response-presets").mkdir(parents=True)
    (second / "templates" / "annotate").mkdir(parents=True)
    (first / "presets" / "my-set.yaml").write_text("domain: general\nquestion: q\nreference: a\n")
    (second / "presets" / "my-set.yaml").write_text("domain: safety\nquestion: q\nreference: a\n")  # shadowed
    (second / "presets" / "gsm8k.yaml").write_text("domain: general\nquestion: prompt\nreference: a\n")
    (second / "response-presets" / "mine.yaml").write_text("question: q\nresponses: r\n")
    (second / "templates" / "annotate" / "math.j2").write_text("{# version: x #}\nSkills for {{ question }}\n")
    monkeypatch.setenv(resources.ENV_VAR, f"{first}:{tmp_path / 'missing'}:{second}")

    assert "my-set" in list_presets() and "xstest" in list_presets()
    assert load_preset("my-set").domain == "general"  # the first folder wins
    assert load_preset("gsm8k").domain == "general"  # a user file overrides a packaged preset
    assert "mine" in list_response_presets() and load_response_mapping("mine").responses == "r"
    assert load_template("annotate", "math").ref == "annotate/math@x"
    assert load_template("annotate", "general").ref.startswith("annotate/general@")  # packaged


def test_no_source_file_reads_annotations_through_its_own_path():
    """One lookup: code reaches annotations/ only through metakl.resources."""
    offenders = []
    for path in (REPO / "metakl").rglob("*.py"):
        if path.is_symlink() or "annotations" in path.relative_to(REPO / "metakl").parts:
            continue
        for line in path.read_text().splitlines():
            if any(p in line for p in ('/ "annotations"', '"annotations" /', "/ 'annotations'", "'annotations' /")):
                offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert offenders == []
