"""The common model options of CLI verbs: parsing, defaults, env vars, the config file's `llm:` section, and the
backend they build."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from metakl.commands._llm_options import LLMGiven, echo_stats, explicit, llm_options, verb
from metakl.errors import UserError
from metakl.llm import ChatRequest
from metakl.llm.options import LLMOptions, build_backend, resolve_backend_kind


def make_app(seen: dict, section: dict | None = None) -> typer.Typer:
    app = typer.Typer(add_completion=False)

    @app.command()
    @verb
    @llm_options()
    def ask(question: Annotated[str, typer.Argument()], *, llm: LLMGiven) -> None:
        options = llm.resolve(section)
        seen["given"] = dict(llm.values)
        with options.build() as backend:
            seen.update(kind=backend.kind, concurrency=backend.concurrency,
                        cache=backend.cache.path if backend.cache else None)
            result = backend.generate_all([ChatRequest(messages=[{"role": "user", "content": question}],
                                                       max_tokens=5)], progress=False)[0]
            typer.echo(result.completion.texts[0] if result.ok else result.error)
            echo_stats(backend.stats)

    @app.command()
    def other() -> None:  # a second command so that `ask` stays a named sub-command
        pass

    return app


def test_options_build_an_openai_backend_that_answers(vllm_server_url, tmp_path):
    seen: dict = {}
    result = CliRunner().invoke(make_app(seen), ["ask", "Hello!", "--base-url", vllm_server_url, "--concurrency", "3",
                                                 "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {k: seen[k] for k in ("kind", "concurrency", "cache")} == {
        "kind": "openai", "concurrency": 3, "cache": tmp_path / "requests.sqlite3"}
    assert seen["given"] == {"base_url": vllm_server_url, "concurrency": 3, "cache_dir": str(tmp_path)}
    assert "llm: 1 requests, 1 samples" in result.output and "0 failures" in result.output
    again = CliRunner().invoke(make_app(seen), ["ask", "Hello!", "--base-url", vllm_server_url, "--no-cache"])
    assert again.exit_code == 0 and seen["cache"] is None and "0 cache hits" in again.output


def test_config_section_fills_what_the_command_line_leaves_out(vllm_server_url, tmp_path, monkeypatch):
    monkeypatch.setenv("METAKL_CACHE_DIR", str(tmp_path / "from-env"))  # env vars are below the config file
    seen: dict = {}
    section = {"base_url": vllm_server_url, "concurrency": 5, "cache_dir": str(tmp_path)}
    result = CliRunner().invoke(make_app(seen, section), ["ask", "Hi", "--concurrency", "2"])
    assert result.exit_code == 0, result.output
    assert seen["kind"] == "openai" and seen["concurrency"] == 2 and seen["cache"] == tmp_path / "requests.sqlite3"


def test_env_vars_and_defaults(monkeypatch, tmp_path):
    assert resolve_backend_kind(None, None) == "transformers"
    assert resolve_backend_kind(None, "http://x/v1") == "openai"
    assert resolve_backend_kind("VLLM", None) == "vllm"
    assert explicit("anything")  # outside a verb every value counts as given
    seen: dict = {}
    monkeypatch.setenv("METAKL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("METAKL_BACKEND", "nonsense")
    result = CliRunner().invoke(make_app(seen), ["ask", "Hi"])
    assert result.exit_code == 2 and "nonsense" in result.output and "transformers" in result.output
    assert seen == {}
    help_text = CliRunner().invoke(make_app(seen), ["ask", "--help"]).output
    for option in ("--backend", "--model", "--base-url", "--concurrency", "--cache-dir", "--no-cache", "--dtype"):
        assert option in help_text
    for choice in ("transformers", "vllm", "openai", "bfloat16"):  # choices are listed
        assert choice in help_text


def test_an_unknown_backend_is_a_user_error_not_a_cli_exception():
    # Library code (the pipeline, score's base models, the demo) resolves backends below the CLI: a bad kind is a
    # UserError (one line, exit 2 from any CLI), not typer.BadParameter, which only a typer command would show well.
    with pytest.raises(UserError, match="--backend: expected one of transformers, vllm, openai, got 'tgi'"):
        resolve_backend_kind("tgi", None)
    with pytest.raises(UserError, match="got 'tgi'"):
        build_backend("tgi", "smollm2-135m-instruct")


def test_bad_llm_section_is_one_clear_error():
    with pytest.raises(UserError, match="run.yaml: llm: unknown setting\\(s\\) 'modle'"):
        LLMGiven({}).resolve({"modle": "x"}, where="run.yaml: llm")
    with pytest.raises(UserError, match="'backend': expected one of transformers, vllm, openai"):
        LLMGiven({}).resolve({"backend": "tgi"})
    assert LLMGiven({"model": "m"}).resolve({"model": "n", "concurrency": 4}) == LLMOptions(model="m", concurrency=4)
