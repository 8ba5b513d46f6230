"""The model options every verb that calls a model shares, as one object, and the backend they build.

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
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import typer

from metakl.errors import UserError
from metakl.llm import BACKENDS, Backend, RunStats, get_backend

DEFAULT_MODEL = "smollm2-135m-instruct"
PANEL = "Model options"

BackendKind = Enum("BackendKind", {k: k for k in BACKENDS}, type=str)
BackendKind.__doc__ = "Where requests go: transformers (in-process), vllm (offline engine), openai (HTTP server)."


class Dtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class LLMOptions:
    """Which model answers and how: the `llm:` section of a verb's config, or the model options on its command line."""

    backend: Optional[BackendKind] = None  # None: openai when base_url is given, else transformers
    model: str = DEFAULT_MODEL
    base_url: Optional[Union[str, list[str]]] = None  # several endpoints of one model: a list (or "url1,url2")
    concurrency: Optional[int] = None
    cache_dir: Optional[str] = None
    no_cache: bool = False
    dtype: Dtype = Dtype.auto
    # The request's shape on the wire (openai backend; metakl.llm.shape): a preset and options on top of it.
    request_preset: Optional[str] = None  # default | vllm | openai-reasoning | deepseek
    token_param: Optional[str] = None  # max_tokens | max_completion_tokens
    reasoning_effort: Optional[str] = None  # e.g. low | medium | high (OpenAI reasoning models)
    omit: Optional[list[str]] = None  # request parameters to leave out, e.g. [temperature, top_p]
    extra_body: Optional[dict[str, Any]] = None  # more fields for the request body
    # Several teachers (generate only): each a mapping of the options above plus `n` (its responses per prompt;
    # default the stage's n); what an entry leaves out comes from this section.
    teachers: Optional[list[dict[str, Any]]] = None

    def __post_init__(self) -> None:
        self.shape()  # a wrong preset or option is one clear error now, not at the first request
        for i, entry in enumerate(self.teachers or []):
            if not isinstance(entry, dict) or "model" not in entry:
                raise UserError(f"teachers[{i}]: expected a mapping with at least 'model', got {entry!r}")
            n = entry.get("n")
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise UserError(f"teachers[{i}]: 'n': expected an integer >= 1, got {n!r}")
            if "teachers" in entry:
                raise UserError(f"teachers[{i}]: a teacher cannot have teachers")
            from metakl.config import from_dict

            from_dict(LLMOptions, {k: v for k, v in entry.items() if k != "n"}, f"teachers[{i}]")  # its settings

    def shape(self):
        from metakl.llm.shape import make_shape

        return make_shape(self.request_preset, token_param=self.token_param, reasoning_effort=self.reasoning_effort,
                          omit=self.omit, extra_body=self.extra_body)

    def build(self, **backend_options: Any) -> Backend:
        """The backend these options ask for (UserError with one clear line when it cannot be built)."""
        if self.teachers:
            return self._build_teachers(**backend_options)
        kind = resolve_backend_kind(self.backend.value if self.backend else None, self.base_url)
        if kind != "openai":
            from metakl.hardware import resolve_dtype

            backend_options.setdefault("dtype", resolve_dtype(self.dtype.value))
            if any(getattr(self, k) is not None for k in SHAPE_OPTIONS):
                raise UserError(f"llm: request_preset, token_param, reasoning_effort, omit and extra_body shape HTTP "
                                f"requests; the {kind} backend sends none (use --base-url for an openai server)")
        else:
            backend_options.setdefault("shape", self.shape())
        return build_backend(kind, self.model, self.base_url, self.concurrency, self.cache_dir, self.no_cache,
                             **backend_options)

    def _build_teachers(self, **backend_options: Any) -> Any:
        from dataclasses import asdict

        from metakl.config import from_dict
        from metakl.llm.teachers import Teacher, Teachers

        shared = {k: v for k, v in asdict(self).items() if k not in ("teachers", "model")}
        members = []
        try:
            for i, entry in enumerate(self.teachers or []):
                entry = dict(entry)
                n = entry.pop("n", None)
                options = from_dict(LLMOptions, {**shared, **entry}, f"teachers[{i}]")
                members.append(Teacher(options.model, options.build(**backend_options), n))
        except BaseException:
            for member in members:
                member.backend.close()
            raise
        return Teachers(members)

    @property
    def identity(self) -> str:
        """Who answered, for reports: `model` and where it ran."""
        if self.teachers:
            return " + ".join(f"{t.get('model')}" for t in self.teachers) + " (teachers)"
        kind = resolve_backend_kind(self.backend.value if self.backend else None, self.base_url)
        return f"{self.model} ({kind})"


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
        param("reasoning_effort", Annotated[Optional[str], typer.Option(
            "--reasoning-effort", rich_help_panel=PANEL,
            help="reasoning_effort sent to an openai server (OpenAI reasoning models: low, medium, high).")], None),
    ]


SHAPE_OPTIONS = ("request_preset", "token_param", "reasoning_effort", "omit", "extra_body")
LLM_PARAMS = ("backend", "model", "base_url", "concurrency", "cache_dir", "no_cache", "dtype", "request_preset",
              "reasoning_effort")
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
    """A backend from plain values (UserError with one clear line when it cannot be built)."""
    kind = resolve_backend_kind(backend, base_url)
    if kind != "openai":
        from metakl.llm.models import check_model_name

        check_model_name(model)
    return get_backend(kind, model, base_url=base_url, concurrency=concurrency, cache_dir=cache_dir,
                       use_cache=not no_cache, **backend_options)


def format_stats(stats: RunStats | dict[str, Any]) -> str:
    """One line of run totals; tokens/s counts generation time only (not loading the model)."""
    s = stats if isinstance(stats, dict) else stats.as_dict()
    prepare = (s.get("extra") or {}).get("prepare_seconds", 0.0)
    generating = s.get("seconds", 0.0) - prepare
    tok_s = s.get("completion_tokens", 0) / generating if generating > 0 else 0.0
    load = f", {prepare:.1f} s loading" if prepare >= 0.1 else ""
    reasoning = f" (of which {s['reasoning_tokens']} reasoning)" if s.get("reasoning_tokens") else ""
    return (f"{s.get('requests', 0)} requests, {s.get('samples', 0)} samples, {s.get('prompt_tokens', 0)} prompt + "
            f"{s.get('completion_tokens', 0)} completion tokens{reasoning}, {s.get('cache_hits', 0)} cache hits, "
            f"{s.get('retries', 0)} retries, {s.get('failures', 0)} failures, {s.get('seconds', 0.0):.1f} s{load} "
            f"({tok_s:.1f} tok/s)")


def echo_stats(stats: RunStats | dict[str, Any], label: str = "llm") -> None:
    """Print the run totals as one line on stderr."""
    typer.echo(f"{label}: {format_stats(stats)}", err=True)
