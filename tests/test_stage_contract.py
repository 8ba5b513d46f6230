"""The stage contract (metakl.stage) and the one verb path (metakl.commands._runner) that every stage goes through."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from conftest import run_cli
from metakl.config import from_dict, load_config
from metakl.errors import UserError
from metakl.io import load_stage, save_stage
from metakl.schema import features
from metakl.stage import ENVELOPE, StageResult, replace_stage_errors, stage
from metakl.stages import STAGES, get_stage

ROOT = Path(__file__).resolve().parents[1]


def _row(q: str, responses: list[dict] | None = None, errors: list[dict] | None = None) -> dict:
    return {"id": q, "source": "t", "domain": "math", "question": q, "reference": "4", "choices": [], "meta": "{}",
            "errors": errors or [], "responses": responses or []}


def _ds(rows: list[dict]) -> Dataset:
    return Dataset.from_list(rows, features=features("responses"))


def test_every_stage_is_wrapped_with_a_config_dataclass():
    for name in STAGES:
        fn = get_stage(name)
        assert fn.stage_name == name
        assert dataclasses.is_dataclass(fn.config_cls), name
        params = inspect.signature(fn).parameters
        assert list(params)[1] == "config" and "backend" in params and "progress" in params, name


def test_verb_defaults_are_the_config_defaults(cli):
    """A verb's option default must equal its stage's config default, or `--help` lies about what runs."""
    import typer.main

    from metakl.cli import app

    for name in ("generate", "reward", "annotate", "merge", "ingest", "import-responses"):
        command = typer.main.get_command(app).commands[name]
        cls = get_stage(name).config_cls
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        checked = 0
        for param in command.params:
            if param.name in defaults and param.default is not None:
                value = param.default.value if hasattr(param.default, "value") else param.default
                expected = defaults[param.name]
                expected = expected.value if hasattr(expected, "value") else expected
                assert value == expected, f"{name} --{param.name}: {value!r} != {expected!r}"
                checked += 1
        assert checked or name == "import-responses", name


def test_envelope_and_errors_replaced_on_rerun():
    from metakl.stages.reward import reward

    ds = _ds([_row("2+2?"), _row("3+1?", [{"text": "\\boxed{4}", "reasoning": None, "answer": None, "reward": None,
                                            "advantage": None, "model": "m", "finish_reason": "stop"}],
                                     errors=[{"stage": "generate", "kind": "llm_error", "message": "x"}])])
    first = reward(ds)
    assert isinstance(first, StageResult)
    assert list(first.report)[: len(ENVELOPE)] == list(ENVELOPE)
    assert first.report["rows_in"] == first.report["rows_out"] == 2
    assert first.report["errors"] == {"no_responses": 1} and first.report["llm"] == {}
    assert first.report["config"]["judge"] == "rules"
    again = reward(first.dataset)
    errors = again.dataset["errors"]
    assert [e["kind"] for e in errors[0]] == ["no_responses"]  # replaced, not appended
    assert [e["stage"] for e in errors[1]] == ["generate"]  # other stages' entries kept


def test_replace_stage_errors_keeps_other_stages():
    ds = _ds([_row("a", errors=[{"stage": "x", "kind": "k", "message": "m"}, {"stage": "y", "kind": "k", "message": "m"}])])
    out = replace_stage_errors(ds, "x", {0: [{"stage": "x", "kind": "new", "message": "n"}]})
    assert [(e["stage"], e["kind"]) for e in out[0]["errors"]] == [("y", "k"), ("x", "new")]


def test_stage_must_return_a_stage_result():
    @stage("bad")
    def bad(data, config, *, backend=None, progress=False):
        return data, {}

    with pytest.raises(TypeError, match="expected StageResult"):
        bad(_ds([_row("a")]))


def test_config_types_and_unknown_keys_are_clear(tmp_path):
    from metakl.stages.generate import GenerateConfig

    with pytest.raises(UserError, match="g.yaml: 'n': expected an integer, got str 'four'"):
        from_dict(GenerateConfig, {"n": "four"}, "g.yaml")
    assert from_dict(GenerateConfig, {"temperature": 1, "solution_keys": ["a"]}, "g").temperature == 1.0
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"generate": {"n": 3, "llm": {"model": "m"}}, "reward": {"judge": "llm"}}))
    cfg, extras = load_config(GenerateConfig, f, {"max_tokens": 9}, section="generate", extra_keys=("llm",))
    assert (cfg.n, cfg.max_tokens, extras) == (3, 9, {"llm": {"model": "m"}})
    with pytest.raises(UserError, match="unknown setting\\(s\\) 'judge'"):
        load_config(GenerateConfig, f, section="reward")


def test_damaged_stage_file_is_one_error_line(tmp_path):
    save_stage(_ds([_row("2+2?")]), tmp_path / "in")
    data = tmp_path / "in" / "data.parquet"
    data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    proc = run_cli("reward", str(tmp_path / "in"), "--out", str(tmp_path / "out"), in_process=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {data}: not a readable stage file"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="not a readable stage file"):
        load_stage(tmp_path / "in")


def test_choice_options_are_enums_listed_in_help(cli, tmp_path):
    save_stage(_ds([_row("2+2?")]), tmp_path / "in")
    proc = run_cli("reward", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--judge", "gpt", in_process=True)
    assert proc.returncode == 2 and "gpt" in proc.stderr and "rules" in proc.stderr and "llm" in proc.stderr
    from metakl.cli import app

    for verb, choices in (("reward", ("rules", "llm")), ("ingest", ("fail", "skip")),
                          ("merge", ("float32", "bfloat16")), ("generate", ("transformers", "openai"))):
        text = cli.invoke(app, [verb, "--help"], terminal_width=200).output
        assert all(c in text for c in choices), (verb, text)
    assert "--hub-config" in cli.invoke(app, ["ingest", "--help"], terminal_width=200).output


def test_config_file_drives_ingest_and_reward(tmp_path):
    src = ROOT / "tests" / "fixtures" / "ingest" / "local"
    gsm = next(p for p in sorted(src.iterdir()) if p.name.startswith("gsm8k"))
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(yaml.safe_dump({"ingest": {"sources": [f"gsm8k={gsm}"], "limit": 2},
                                   "reward": {"length_budget": 10, "correctness_weight": 0.5}}))
    proc = run_cli("ingest", "--config", str(cfg), "--out", str(tmp_path / "ing"), in_process=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "ing" / "ingest_report.json").read_text())
    assert report["rows_out"] == 2 and report["config"]["limit"] == 2 and report["config"]["sources"] == [f"gsm8k={gsm}"]
    assert "ingest: " in proc.stdout and "rows in → 2 out" in proc.stdout


def test_command_line_overrides_the_config_file(tmp_path):
    save_stage(_ds([_row("2+2?")]), tmp_path / "in")
    cfg = tmp_path / "reward.yaml"
    # max_error_rate: the row has no responses, so reward marks it `no_responses` (a verb exits 3 above the limit)
    cfg.write_text(yaml.safe_dump({"reward": {"length_budget": 10, "correctness_weight": 0.5, "max_error_rate": 1.0}}))
    proc = run_cli("reward", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--config", str(cfg),
                "--correctness-weight", "0.7", in_process=True)
    assert proc.returncode == 0, proc.stderr
    used = json.loads((tmp_path / "out" / "reward_report.json").read_text())["config"]
    assert used["length_budget"] == 10 and used["correctness_weight"] == 0.7 and used["format_weight"] == 0.1


def test_llm_accounting_is_this_stage_alone(vllm_server_url, tmp_path):
    """One backend serving two stage calls: each report counts only its own requests."""
    from metakl.llm import get_backend
    from metakl.stages.generate import GenerateConfig, generate

    ds = Dataset.from_list([_row("What is 2+2?"), _row("What is 3+3?")], features=features("responses"))
    with get_backend("openai", "smollm2-135m-instruct", base_url=vllm_server_url, cache_dir=tmp_path) as backend:
        one = generate(ds, GenerateConfig(n=1, max_tokens=8), backend=backend)
        two = generate(ds.select([0]), GenerateConfig(n=2, max_tokens=8, seed=5), backend=backend)
    assert one.report["llm"]["requests"] == 2 and one.report["llm"]["samples"] == 2
    assert two.report["llm"]["requests"] == 1 and two.report["llm"]["samples"] == 2
    assert two.report["templates"] == ["generate/math@1"] or two.report["templates"][0].startswith("generate/math@")


def test_generate_verb_reads_llm_section_from_config(vllm_server_url, tmp_path):
    save_stage(_ds([_row("What is 2+2?")]), tmp_path / "in")
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump({"generate": {"n": 1, "max_tokens": 6, "llm": {"base_url": vllm_server_url,
                                                                                  "cache_dir": str(tmp_path / "c")}}}))
    proc = run_cli("generate", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--config", str(cfg), "-n", "2",
                   in_process=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "generate_report.json").read_text())
    assert report["config"]["n"] == 2 and report["config"]["max_tokens"] == 6
    assert report["llm"]["requests"] == 1 and report["llm"]["samples"] == 2
    assert report["llm"]["model"] == "smollm2-135m-instruct (openai)"
    assert (tmp_path / "c" / "requests.sqlite3").exists()


@pytest.mark.parametrize("preloaded", [False, True])
def test_quiet_library_progress_hides_transformers_bars_without_importing_it(preloaded):
    """`metakl run` hides the libraries' bars; transformers is not imported for it (seconds at every start), and
    picks the setting up when a stage imports it later."""
    code = ("import sys\n"
            + ("import transformers\n" if preloaded else "")
            + "from metakl.progress import quiet_library_progress\n"
              "quiet_library_progress()\n"
              "imported = 'transformers' in sys.modules\n"
              "import transformers, datasets, huggingface_hub.utils as h\n"
              "print(imported, transformers.utils.logging.is_progress_bar_enabled(),"
              " datasets.is_progress_bar_enabled(), h.are_progress_bars_disabled())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(preloaded), "False", "False", "True"]
