"""The common model options of CLI verbs: parsing, defaults, env vars, and the backend they build."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.testing import CliRunner

from metakl.commands._llm_options import (BackendOpt, BaseUrlOpt, CacheDirOpt, ConcurrencyOpt, ModelOpt, NoCacheOpt,
                                          build_backend, echo_stats, resolve_backend_kind)
from metakl.llm import ChatRequest


def make_app(seen: dict) -> typer.Typer:
    app = typer.Typer(add_completion=False)

    @app.command()
    def ask(
        question: Annotated[str, typer.Argument()],
        backend: BackendOpt = None,
        model: ModelOpt = "smollm2-135m-instruct",
        base_url: BaseUrlOpt = None,
        concurrency: ConcurrencyOpt = None,
        cache_dir: CacheDirOpt = None,
        no_cache: NoCacheOpt = False,
    ) -> None:
        with build_backend(backend, model, base_url, concurrency, cache_dir, no_cache) as llm:
            seen.update(kind=llm.kind, concurrency=llm.concurrency, cache=llm.cache.path if llm.cache else None)
            result = llm.generate_all([ChatRequest(messages=[{"role": "user", "content": question}], max_tokens=5)],
                                      progress=False)[0]
            typer.echo(result.completion.texts[0] if result.ok else result.error)
            echo_stats(llm.stats)

    @app.command()
    def other() -> None:  # a second command so that `ask` stays a named sub-command
        pass

    return app


def test_options_build_an_openai_backend_that_answers(vllm_server_url, tmp_path):
    seen: dict = {}
    result = CliRunner().invoke(make_app(seen), ["ask", "Hello!", "--base-url", vllm_server_url, "--concurrency", "3",
                                                 "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen == {"kind": "openai", "concurrency": 3, "cache": tmp_path / "requests.sqlite3"}
    assert "llm: 1 requests, 1 samples" in result.output and "0 failures" in result.output
    again = CliRunner().invoke(make_app(seen), ["ask", "Hello!", "--base-url", vllm_server_url, "--no-cache"])
    assert again.exit_code == 0 and seen["cache"] is None and "0 cache hits" in again.output


def test_env_vars_and_defaults(monkeypatch, tmp_path):
    assert resolve_backend_kind(None, None) == "transformers"
    assert resolve_backend_kind(None, "http://x/v1") == "openai"
    assert resolve_backend_kind("VLLM", None) == "vllm"
    seen: dict = {}
    monkeypatch.setenv("METAKL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("METAKL_BACKEND", "nonsense")
    result = CliRunner().invoke(make_app(seen), ["ask", "Hi"])
    assert result.exit_code == 2 and "expected one of transformers, vllm, openai" in result.output
    assert seen == {}
    help_text = CliRunner().invoke(make_app(seen), ["ask", "--help"]).output
    for option in ("--backend", "--model", "--base-url", "--concurrency", "--cache-dir", "--no-cache"):
        assert option in help_text
