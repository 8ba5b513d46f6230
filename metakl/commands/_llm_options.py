"""The model options every verb that calls a model shares, as command-line flags (the options themselves and the
backend they build: metakl.llm.options).

A verb declares them with one decorator and receives what the user gave explicitly; the runner overlays that on
the `llm:` section of the verb's `--config` file and on the defaults:

```python
@llm_options(model_flags=("--teacher", "--model"))
def generate(input: Path = ..., *, llm: LLMGiven) -> None:
    run_verb("generate", ..., llm=llm)
```
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from metakl.llm import RunStats
# The options themselves live in the model layer (library code builds backends without the CLI); re-exported here
# for the verbs.
from metakl.llm.options import (DEFAULT_MODEL, BackendKind, Dtype, LLMOptions, build_backend,  # noqa: F401
                                format_stats, resolve_backend_kind)

PANEL = "Model options"


@dataclass
class LLMGiven:
    """The model options the user set: on the command line (`values`) or through env vars (`env`); defaults left out.

    Precedence: command line > the config file's `llm:` section > env vars (METAKL_MODEL, METAKL_BASE_URL, ...) >
    defaults. Env vars set a machine's defaults; a config file says what one run needs.
    """

    values: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)

    def resolve(self, section: dict[str, Any] | None = None, where: str = "llm settings") -> LLMOptions:
        from metakl.config import from_dict

        return from_dict(LLMOptions, {**self.env, **(section or {}), **self.values}, where)


def _option_params(model_flags: tuple[str, ...], model_help: str) -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY

    def param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(name, kw, default=default, annotation=annotation)

    return [
        param("backend", Annotated[Optional[BackendKind], typer.Option(
            "--backend", envvar="METAKL_BACKEND", case_sensitive=False, rich_help_panel=PANEL,
            help="transformers (in-process), vllm (offline engine) or openai (any OpenAI-compatible server). "
                 "Default: openai when --base-url is given, else transformers.")], None),
        param("model", Annotated[str, typer.Option(
            *model_flags, envvar="METAKL_MODEL", rich_help_panel=PANEL, help=model_help)], DEFAULT_MODEL),
        param("base_url", Annotated[Optional[str], typer.Option(
            "--base-url", envvar="METAKL_BASE_URL", rich_help_panel=PANEL,
            help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (see `metakl serve`); several "
                 "endpoints of the same model separated by commas share the requests. API key from $OPENAI_API_KEY.")], None),
        param("concurrency", Annotated[Optional[int], typer.Option(
            "--concurrency", min=1, rich_help_panel=PANEL,
            help="Requests in flight (openai, default 64) or batch size (transformers 8, vllm 256).")], None),
        param("cache_dir", Annotated[Optional[Path], typer.Option(
            "--cache-dir", envvar="METAKL_CACHE_DIR", rich_help_panel=PANEL,
            help="Folder of the request cache (default: the user cache). A re-run of the same requests calls no "
                 "model.")], None),
        param("no_cache", Annotated[bool, typer.Option(
            "--no-cache", rich_help_panel=PANEL, help="Neither read nor write the request cache.")], False),
        param("dtype", Annotated[Dtype, typer.Option(
            "--dtype", case_sensitive=False, rich_help_panel=PANEL,
            help="Weights of an in-process model (transformers, vllm). auto: bfloat16 on GPUs and on CPUs with "
                 "native bf16 (AVX512-BF16/AMX), float32 elsewhere.")], Dtype.auto),
        param("request_preset", Annotated[Optional[str], typer.Option(
            "--request-preset", envvar="METAKL_REQUEST_PRESET", rich_help_panel=PANEL,
            help="Request shape for an openai server: default, vllm, openai-reasoning (max_completion_tokens, no "
                 "sampling parameters) or deepseek (sampling parameters left out).")], None),
        param("batch", Annotated[bool, typer.Option(
            "--batch", rich_help_panel=PANEL,
            help="Send the requests as batch files (OpenAI Batch API shape: /files, /batches at --base-url; with "
                 "--backend vllm, vLLM's offline run_batch); the batch ids are kept in --out, so a killed run "
                 "resumes polling them.")], False),
        param("batch_size", Annotated[Optional[int], typer.Option(
            "--batch-size", min=1, rich_help_panel=PANEL, help="Requests per batch file with --batch (default 1000).")],
              None),
        param("budget", Annotated[Optional[float], typer.Option(
            "--budget", rich_help_panel=PANEL,
            help="Stop this stage cleanly once its fresh answers cost this many USD (needs prices); the same command "
                 "with a larger budget goes on from the request cache.")], None),
        param("prices", Annotated[Optional[Path], typer.Option(
            "--prices", envvar="METAKL_PRICES", rich_help_panel=PANEL,
            help="YAML file of token prices per model (USD per million tokens: input, cached_input, output, "
                 "batch_discount); none ship with metakl. Also `llm: prices:` in --config.")], None),
        param("reasoning_effort", Annotated[Optional[str], typer.Option(
            "--reasoning-effort", rich_help_panel=PANEL,
            help="reasoning_effort sent to an openai server (OpenAI reasoning models: low, medium, high).")], None),
    ]


# The parameter names the model options take in a verb (a stage setting of the same name gets another: _runner).
OPTION_NAMES = frozenset(p.name for p in _option_params(("--model",), ""))

MODEL_HELP = "Embedded model name (smollm2-135m-instruct), HF folder, or the name an openai server serves."


_current: contextvars.ContextVar = contextvars.ContextVar("metakl_verb_context", default=None)


def verb(fn):
    """Make `fn` a verb whose parameters can be asked whether the user set them (`explicit`): typer passes the
    command's context in a hidden `ctx` parameter, kept for the duration of the call."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def command(ctx: typer.Context, *args: Any, **kwargs: Any) -> Any:
        token = _current.set(ctx)
        try:
            return fn(*args, **kwargs)
        finally:
            _current.reset(token)

    ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    command.__signature__ = sig.replace(parameters=[ctx_param, *sig.parameters.values()])
    return command


def source(name: str) -> str:
    """Where the current verb's parameter `name` came from: "commandline", "environment" or "default".
    Outside a verb (library use) every value counts as given on the command line."""
    ctx = _current.get()
    if ctx is None:
        return "commandline"
    found = ctx.get_parameter_source(name)
    if found is None or found.name in ("DEFAULT", "DEFAULT_MAP"):
        return "default"
    return "environment" if found.name == "ENVIRONMENT" else "commandline"


def explicit(name: str) -> bool:
    """Whether the current verb's parameter `name` was given (command line or env var), not defaulted."""
    return source(name) != "default"


def llm_options(model_flags: tuple[str, ...] = ("--model",), model_help: str = MODEL_HELP, model: bool = True):
    """Add the model options to a verb; it receives them as `llm: LLMGiven` (only the ones the user set).
    Put `@verb` above it. `model=False` leaves out the model option (a verb that names its models itself, like
    `score --base-model M ...`)."""

    def wrap(fn):
        sig = inspect.signature(fn)
        own = [p for name, p in sig.parameters.items() if name != "llm"]
        params = [p for p in _option_params(model_flags, model_help) if model or p.name != "model"]

        @functools.wraps(fn)
        def verb(*args: Any, **kwargs: Any) -> Any:
            given: dict[str, dict[str, Any]] = {"commandline": {}, "environment": {}, "default": {}}
            for name in (p.name for p in params):
                value = kwargs.pop(name)
                given[source(name)][name] = str(value) if isinstance(value, Path) else value
            return fn(*args, llm=LLMGiven(given["commandline"], given["environment"]), **kwargs)

        verb.__signature__ = sig.replace(parameters=own + params)
        return verb

    return wrap


def echo_stats(stats: RunStats | dict[str, Any], label: str = "llm") -> None:
    """Print the run totals as one line on stderr."""
    typer.echo(f"{label}: {format_stats(stats)}", err=True)
