"""One execution path (issue 22): `metakl VERB` is a one-stage plan run by the same `run_stage` as each stage of
`metakl run`; what differs between stages is declared by the stage, never named by the runner; `load_plan` checks
the whole plan (columns, declared embedders) before any model loads."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from metakl.errors import UserError
from metakl.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "tests" / "fixtures" / "ingest" / "local"
# The code that runs a stage, for a verb and for a plan alike.
RUNNER = {ROOT / "metakl" / "commands" / "_runner.py": None,
          ROOT / "metakl" / "pipeline.py": ("run_plan", "run_stage", "_execute", "one_stage_plan", "lazy_executor")}


def _strings(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_the_runner_names_no_stage():
    """No stage name (as a string) in the verb runner or in the functions that run a plan's stages: publish's
    folders, score's per-model backends and ingest's missing input are declared by the stages (`takes`, `save`,
    `needs_base_models`), not special-cased by name (before: `if s.name == "publish"` in run_plan, and score's
    factory patched onto the stage function as an attribute)."""
    for path, functions in RUNNER.items():
        tree = ast.parse(path.read_text())
        parts = [tree] if functions is None else [n for n in tree.body if isinstance(n, ast.FunctionDef)
                                                  and n.name in functions]
        assert functions is None or {p.name for p in parts} == set(functions), path
        named = set().union(*(_strings(p) for p in parts)) & set(STAGES)
        assert not named, (path.name, named)
    from metakl.stages.score import score

    assert not hasattr(score, "backend_factory")  # the runner builds one backend per model from `needs_base_models`


def test_a_verb_is_a_one_stage_plan_through_run_stage(tmp_path, cli, monkeypatch):
    """`metakl ingest` goes through pipeline.run_stage with a one-stage plan, and writes what the same stage of
    `metakl run` writes (the run adds only its `.fingerprint`)."""
    import metakl.pipeline
    from metakl.cli import app

    calls = []
    real = metakl.pipeline.run_stage

    def recording(plan, s, data_path, **kw):
        calls.append((plan.verb, [x.name for x in plan.stages], s.folder, data_path))
        return real(plan, s, data_path, **kw)

    monkeypatch.setattr(metakl.pipeline, "run_stage", recording)
    source = f"math={LOCAL / 'math_test.jsonl'}"
    out = tmp_path / "verb"
    result = cli.invoke(app, ["ingest", source, "--out", str(out)], env={"METAKL_PROGRESS": "0"})
    assert result.exit_code == 0, result.output
    assert calls == [(True, ["ingest"], out, None)]

    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "ingest": {"sources": [source]}}))
    result = cli.invoke(app, ["run", str(config)], env={"METAKL_PROGRESS": "0"})
    assert result.exit_code == 0, result.output
    assert [c[:2] for c in calls[1:]] == [(False, ["ingest"])]
    staged = tmp_path / "run" / "01-ingest"
    assert pq.read_table(out / "data.parquet").equals(pq.read_table(staged / "data.parquet"))
    ours = {p.name for p in out.iterdir()}
    assert {p.name for p in staged.iterdir()} == ours | {".fingerprint"}, ours


def _plan(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "run", "ingest": {"sources": [f"math={LOCAL / 'math_test.jsonl'}"]},
                                    **sections}, sort_keys=False))
    return path


def test_load_plan_checks_the_columns_of_the_whole_plan(tmp_path):
    """Every caller of load_plan (not only `metakl run` and `--dry-run`) gets a plan whose stages fit together: a
    filter with no units upstream is one line naming the stage and the column (before: load_plan returned it)."""
    from metakl.pipeline import load_plan

    config = _plan(tmp_path, filter={"base_model": "m"})
    with pytest.raises(UserError) as exc:
        load_plan(config)
    assert str(exc.value) == (f"{config}: stage filter: input has no column 'units' (needed for the knowledge units "
                              f"to fill; written by: annotate, merge)")
    assert not (tmp_path / "run").exists()


def test_load_plan_checks_the_embedding_model_a_stage_declares(tmp_path, monkeypatch):
    """`needs_embedder`: a misspelt embedding model of dedup fails when the plan loads, not after the model stages
    before it (before: the plan loaded and dedup refused the model only when it ran)."""
    from metakl.pipeline import load_plan

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _plan(tmp_path, dedup={"embedding_model": "no/such-model"})
    with pytest.raises(UserError, match=r"p\.yaml: dedup: embedding_model: unknown model 'no/such-model'"):
        load_plan(config)
    config = _plan(tmp_path, dedup={})
    assert [s.name for s in load_plan(config).stages] == ["ingest", "dedup"]  # the embedded MiniLM is known
