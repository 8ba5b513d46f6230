"""What every stage declares (the columns it requires and provides, the models it needs), and the one check built on
it: a plan is checked whole before any model loads, a verb's input in one message shape (issue 22)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from metakl.io import load_stage, save_stage
from metakl.schema import CORE_FEATURES, features
from metakl.stages import STAGES, get_stage

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "annotations" / "demo" / "pipeline.yaml"


def _metakl(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """`metakl ARGV` as the console script runs it, in this process (so that patches hold): code, stdout, stderr."""
    import datasets

    import metakl.signals
    from metakl.cli import _register_commands, app
    from metakl.errors import run_cli

    if not any(c.name == "run" for c in app.registered_commands):
        _register_commands()
    datasets.disable_progress_bars()
    monkeypatch.setattr(sys, "argv", ["metakl", *argv])
    monkeypatch.setattr(metakl.signals, "stop_on_signals", lambda *a: [])  # keep pytest's own signal handlers
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(app)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


# Where a chat backend, a server or an embedder is built: patched to fail in `no_models`.
MODEL_FACTORIES = [("metakl.llm", "get_backend"), ("metakl.llm.options", "LLMOptions.build"),
                   ("metakl.llm.options", "build_backend"), ("metakl.llm.serve", "VLLMServer.__init__"),
                   ("metakl.embed.embedder", "Embedder.__init__")]


@pytest.fixture
def no_models(monkeypatch):
    """Any attempt to start a server, build a chat backend or load an embedder fails the test."""
    import importlib

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded or asked before the plan was checked")

    for module, attr in MODEL_FACTORIES:
        try:
            owner = importlib.import_module(module)
        except ImportError:  # an older layout (the test also runs against the code before issue 22)
            continue
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        monkeypatch.setattr(owner, name, refuse)


def _defaults(name: str):
    fn = get_stage(name)
    return fn, fn.config_cls()


def test_every_stage_declares_what_it_requires_and_provides():
    provided = set()
    for name in STAGES:
        fn, config = _defaults(name)
        requires, provides = fn.requires(config), fn.provides(config)
        assert isinstance(requires, dict) and isinstance(provides, tuple), name
        assert all(isinstance(c, str) and isinstance(why, str) and why.strip() for c, why in requires.items()), name
        assert name == "ingest" or requires, f"{name} declares no input column"
        # with default settings, each column a stage reads is added by an earlier stage
        assert set(requires) <= provided, (name, set(requires) - provided)
        provided |= set(provides)
        for flag in ("needs_backend", "needs_embedder", "needs_base_models"):
            assert isinstance(getattr(fn, flag)(config), bool), (name, flag)
    assert get_stage("ingest").provides(None) == tuple(CORE_FEATURES)
    # settings change what a stage reads, adds and uses
    annotate, cfg = _defaults("annotate")
    open_set = type(cfg)(annotator="open")
    assert "units" in annotate.provides(cfg) and "units" not in annotate.provides(open_set)
    assert annotate.needs_embedder(cfg) and not annotate.needs_embedder(open_set)
    dedup, cfg = _defaults("dedup")
    assert "units" in dedup.requires(type(cfg)(keep="units")) and "units" not in dedup.requires(cfg)
    score, cfg = _defaults("score")
    assert score.needs_base_models(type(cfg)(base_models=["m"])) and not score.needs_base_models(cfg)


def test_the_demo_plan_passes_the_check(tmp_path):
    from metakl.pipeline import check_plan_columns, load_plan

    plan = load_plan(DEMO, run_dir=tmp_path / "run")
    check_plan_columns(plan)  # raises on a stage whose columns no earlier stage provides
    assert [s.name for s in plan.stages][-2:] == ["filter", "publish"]


def _without_merge(tmp_path: Path) -> Path:
    """The demo config with merge left out and open-set annotation (which adds no units): filter has no units."""
    config = yaml.safe_load(DEMO.read_text())
    del config["merge"]
    config["annotate"] = {"annotator": "open", "max_tokens": 96}
    path = tmp_path / "no-merge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_plan_without_units_upstream_of_filter_fails_before_any_model(tmp_path, capsys, monkeypatch, no_models,
                                                                       dry_run):
    config = _without_merge(tmp_path)
    run = tmp_path / "run"
    t0 = time.perf_counter()
    code, out, err = _metakl(["run", str(config), "--out", str(run), *(["--dry-run"] if dry_run else [])],
                             capsys, monkeypatch)
    seconds = time.perf_counter() - t0
    assert code == 2, (out, err)
    assert err.strip().splitlines() == [
        f"error: {config}: stage filter: input has no column 'units' (needed for the knowledge units to fill; "
        f"written by: annotate, merge)"]
    # nothing written; a dry run still prints the plan as far as it reads (stdout), the problem is the one stderr line
    assert (out.startswith("stage ") if dry_run else out == "") and not run.exists()
    assert seconds < 10, seconds


def _folder(tmp_path: Path, name: str, rows: list[dict], extra: tuple[str, ...] = ()) -> Path:
    folder = tmp_path / name
    save_stage(Dataset.from_list(rows, features=features(*extra)), folder)
    return folder


ROW = {"id": "a1", "source": "s", "domain": "math", "question": "What is 2 + 2?", "reference": "4", "choices": [],
       "meta": "{}", "errors": []}


@pytest.mark.parametrize("verb, args, extra, column, message", [
    ("filter", ["--base-model", "m"], ("proficiency",), "units",
     "stage filter: input has no column 'units' (needed for the knowledge units to fill; written by: annotate, merge)"),
    ("reward", [], (), "responses",
     "stage reward: input has no column 'responses' (needed for the responses to reward; written by: generate, "
     "import-responses)"),
    ("merge", [], (), "knowledge",
     "stage merge: input has no column 'knowledge' (needed for the skills to merge into units; written by: annotate)"),
    ("dedup", ["--keep", "reward"], (), "responses",
     "stage dedup: input has no column 'responses' (needed for keep=reward; written by: generate, import-responses)"),
])
def test_a_verb_on_an_input_without_a_column_is_one_line(tmp_path, capsys, monkeypatch, no_models, verb, args, extra,
                                                        column, message):
    rows = [{**ROW, **({"proficiency": [{"model": "m", "accuracy": 0.5, "samples": 2}]} if extra else {})}]
    src = _folder(tmp_path, "in", rows, extra)
    assert column not in load_stage(src).column_names
    out = tmp_path / "out"
    code, stdout, err = _metakl([verb, str(src), "--out", str(out), *args], capsys, monkeypatch)
    assert code == 2, (stdout, err)
    assert err.strip().splitlines() == [f"error: {src}: {message}"]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_a_library_call_gets_the_same_message(tmp_path):
    from metakl.errors import UserError

    filter_prompts = get_stage("filter")
    ds = Dataset.from_list([ROW], features=features())
    with pytest.raises(UserError) as exc:
        filter_prompts(ds, get_stage("filter").config_cls(base_model="m"))
    assert str(exc.value) == ("stage filter: input has no column 'units' (needed for the knowledge units to fill; "
                              "written by: annotate, merge)")


# keep_zero_variance: with n 2 and 32 tokens SmolLM2's two answers often get equal rewards (on some CPUs all six groups
# did), and filter would then empty the run before publish; this test is about columns, not selection
SMALL_RUN = """\
llm: {{base_url: {url}, model: smollm2-135m-instruct, concurrency: 8}}
ingest: {{sources: [demo-math, demo-general, demo-safety], limit: 2}}
generate: {{n: 2, max_tokens: 32, temperature: 0.8, seed: 0}}
reward: {{}}
annotate: {{annotator: guided, max_tokens: 64}}
merge: {{taxonomy: seed}}
score: {{base_models: [smollm2-135m-instruct], k: 1, max_tokens: 32, seed: 0}}
dedup: {{}}
decontaminate: {{suite: none, benchmarks: [demo-benchmark]}}
filter: {{base_model: smollm2-135m-instruct, min_support: 1, budget: 4, keep_zero_variance: true}}
publish: {{name: declarations test}}
max_error_rate: 1
"""


def test_declared_provides_are_what_each_stage_adds_on_a_real_run(vllm_server_url, tmp_path):
    """Every stage of a small real run (SmolLM2 on the shared vLLM server, MiniLM): its folder's columns are its
    input's plus what it declares it provides, no more and no fewer."""
    from metakl.pipeline import load_plan

    config = tmp_path / "small.yaml"
    config.write_text(SMALL_RUN.format(url=vllm_server_url))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METAKL_CACHE_DIR": str(tmp_path / "cache"), "METAKL_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "metakl", "run", str(config), "--out", str(run)], capture_output=True,
                          text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert [(s["stage"], s["status"]) for s in manifest["stages"]] == [(n, "ran") for n in STAGES
                                                                       if n != "import-responses"]
    columns: set[str] = set()
    for s in load_plan(config, run_dir=run).stages:
        fn = get_stage(s.name)
        out = set(load_stage(s.folder).column_names)
        assert out == columns | set(fn.provides(s.config)), (s.name, out ^ (columns | set(fn.provides(s.config))))
        columns = out


def test_a_plan_from_an_input_folder_starts_from_that_folders_columns(tmp_path):
    from metakl.errors import UserError
    from metakl.pipeline import check_plan_columns, load_plan

    annotated = _folder(tmp_path, "05-annotate", [{**ROW, "knowledge": [{"skill": "adding", "reason": "2 + 2"}]}],
                        ("knowledge",))
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({"run_dir": "run", "input": str(annotated), "merge": {},
                                      "filter": {"base_model": "m"}}))
    with pytest.raises(UserError) as exc:
        check_plan_columns(load_plan(config))
    assert str(exc.value) == (f"{config}: stage filter: input has no column 'proficiency' (needed for the base model's "
                              f"knowledge gaps; written by: score)")
    config.write_text(yaml.safe_dump({"run_dir": "run", "input": str(annotated), "merge": {}, "score": {},
                                      "filter": {"base_model": "m"}}))
    check_plan_columns(load_plan(config))  # merge adds units, score proficiency: the plan fits together
