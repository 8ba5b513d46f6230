"""Which model answers and how: the model options of a stage (`LLMOptions`, the `llm:` section of a config, or the
model flags of a verb) and the backend they build.

The library's side of the model options: the pipeline, the stages and the demo resolve and build backends from
here; `metakl.commands._llm_options` only turns the same options into command-line flags. A bad value is a
`UserError` (one line, exit code 2 from any CLI), never a CLI framework's exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

from metakl.errors import UserError
from metakl.llm import BACKENDS, Backend, RunStats, get_backend

DEFAULT_MODEL = "smollm2-135m-instruct"

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
    # Batch mode (metakl.llm.batch): requests as batch files on the OpenAI Batch API shape (an openai server's
    # /files and /batches), or through vLLM's offline run_batch (backend vllm); the ids kept in the stage folder.
    batch: bool = False
    batch_size: int = 1000  # requests per batch file
    batch_poll: float = 30.0  # seconds between status checks
    # Cost (metakl.llm.cost): USD per million tokens per model name, or a YAML file of that mapping; a stage budget.
    prices: Optional[Union[str, dict[str, Any]]] = None
    budget: Optional[float] = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_poll < 0:
            raise UserError(f"llm: batch_size must be >= 1 and batch_poll >= 0, got {self.batch_size} and "
                            f"{self.batch_poll}")
        from metakl.llm.cost import check_budget

        self.price_table()
        check_budget(self.budget)
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

    def price_table(self) -> dict[str, Any]:
        """{model: Price} from `prices` (a mapping, or the path of a YAML file holding one)."""
        from metakl.llm.cost import parse_prices

        if isinstance(self.prices, str):
            from metakl.io import read_yaml_mapping

            return parse_prices(read_yaml_mapping(self.prices, "model prices"), f"{self.prices}")
        return parse_prices(self.prices)

    def shape(self):
        from metakl.llm.shape import make_shape

        return make_shape(self.request_preset, token_param=self.token_param, reasoning_effort=self.reasoning_effort,
                          omit=self.omit, extra_body=self.extra_body)

    def build(self, **backend_options: Any) -> Backend:
        """The backend these options ask for (UserError with one clear line when it cannot be built)."""
        if self.teachers:
            return self._build_teachers(**backend_options)
        from metakl.llm.cost import Meter

        backend = self._build_one(**backend_options)
        # Its price (none: no cost, never a guess) and the stage's budget; the batch discount applies in batch mode.
        backend.meter = Meter(self.model, self.price_table().get(self.model), self.budget, batch=self.batch)
        return backend

    def _build_one(self, **backend_options: Any) -> Backend:
        kind = resolve_backend_kind(self.backend.value if self.backend else None, self.base_url)
        if self.batch:
            from metakl.llm.batch import batch_backend

            return batch_backend(self, kind, **backend_options)
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


SHAPE_OPTIONS = ("request_preset", "token_param", "reasoning_effort", "omit", "extra_body")  # openai backend only


def resolve_backend_kind(backend: str | None, base_url: str | None) -> str:
    if backend is None:
        return "openai" if base_url else "transformers"
    backend = backend.lower()
    if backend not in BACKENDS:
        raise UserError(f"--backend: expected one of {', '.join(BACKENDS)}, got '{backend}'")
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
    cost = f", ${s['cost_usd']:.4f}" if s.get("cost_usd") is not None else ""
    reasoning = f" (of which {s['reasoning_tokens']} reasoning)" if s.get("reasoning_tokens") else ""
    return (f"{s.get('requests', 0)} requests, {s.get('samples', 0)} samples, {s.get('prompt_tokens', 0)} prompt + "
            f"{s.get('completion_tokens', 0)} completion tokens{reasoning}, {s.get('cache_hits', 0)} cache hits, "
            f"{s.get('retries', 0)} retries, {s.get('failures', 0)} failures{cost}, {s.get('seconds', 0.0):.1f} s{load} "
            f"({tok_s:.1f} tok/s)")
