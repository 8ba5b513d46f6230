"""Common options for every verb that calls a model, and the helper that builds its backend.

Use in a command:

```python
from metakl.commands._llm_options import (BackendOpt, BaseUrlOpt, CacheDirOpt, ConcurrencyOpt, ModelOpt,
                                          NoCacheOpt, build_backend, echo_stats)

def generate(..., backend: BackendOpt = None, model: ModelOpt = DEFAULT_MODEL, base_url: BaseUrlOpt = None,
             concurrency: ConcurrencyOpt = None, cache_dir: CacheDirOpt = None, no_cache: NoCacheOpt = False):
    with build_backend(backend, model, base_url, concurrency, cache_dir, no_cache) as llm:
        ...
        echo_stats(llm.stats)
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from metakl.llm import BACKENDS, Backend, RunStats, get_backend

DEFAULT_MODEL = "smollm2-135m-instruct"
_PANEL = "Model options"

BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", envvar="METAKL_BACKEND", rich_help_panel=_PANEL,
    help="transformers (in-process), vllm (offline engine) or openai (any OpenAI-compatible server). "
         "Default: openai when --base-url is given, else transformers.")]
ModelOpt = Annotated[str, typer.Option(
    "--model", envvar="METAKL_MODEL", rich_help_panel=_PANEL,
    help="Embedded model name (smollm2-135m-instruct), HF folder, or the name an openai server serves.")]
BaseUrlOpt = Annotated[Optional[str], typer.Option(
    "--base-url", envvar="METAKL_BASE_URL", rich_help_panel=_PANEL,
    help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (see `metakl serve`). "
         "API key from $OPENAI_API_KEY.")]
ConcurrencyOpt = Annotated[Optional[int], typer.Option(
    "--concurrency", min=1, rich_help_panel=_PANEL,
    help="Requests in flight (openai, default 64) or batch size (transformers 8, vllm 256).")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", envvar="METAKL_CACHE_DIR", rich_help_panel=_PANEL,
    help="Folder of the request cache (default: the user cache). A re-run of the same requests calls no model.")]
NoCacheOpt = Annotated[bool, typer.Option(
    "--no-cache", rich_help_panel=_PANEL, help="Neither read nor write the request cache.")]


def resolve_backend_kind(backend: str | None, base_url: str | None) -> str:
    if backend is None:
        return "openai" if base_url else "transformers"
    backend = backend.lower()
    if backend not in BACKENDS:
        raise typer.BadParameter(f"expected one of {', '.join(BACKENDS)}, got '{backend}'", param_hint="--backend")
    return backend


def build_backend(backend: str | None, model: str = DEFAULT_MODEL, base_url: str | None = None,
                  concurrency: int | None = None, cache_dir: Path | str | None = None, no_cache: bool = False,
                  **backend_options: Any) -> Backend:
    """The backend the common options ask for (raises UserError with one clear line when it cannot be built)."""
    kind = resolve_backend_kind(backend, base_url)
    if kind != "openai":
        from metakl.llm.models import check_model_name

        check_model_name(model)
    return get_backend(kind, model, base_url=base_url, concurrency=concurrency, cache_dir=cache_dir,
                       use_cache=not no_cache, **backend_options)


def format_stats(stats: RunStats) -> str:
    """One line of run totals; tokens/s counts generation time only (not loading the model)."""
    prepare = stats.extra.get("prepare_seconds", 0.0)
    generating = stats.seconds - prepare
    tok_s = stats.completion_tokens / generating if generating > 0 else 0.0
    load = f", {prepare:.1f} s loading" if prepare >= 0.1 else ""
    return (f"{stats.requests} requests, {stats.samples} samples, {stats.prompt_tokens} prompt + "
            f"{stats.completion_tokens} completion tokens, {stats.cache_hits} cache hits, {stats.retries} retries, "
            f"{stats.failures} failures, {stats.seconds:.1f} s{load} ({tok_s:.1f} tok/s)")


def echo_stats(stats: RunStats, label: str = "llm") -> None:
    """Print the run totals as one line on stderr."""
    typer.echo(f"{label}: {format_stats(stats)}", err=True)
