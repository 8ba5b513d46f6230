"""The interface every backend shares: cache look-up, progress, accounting; subclasses only generate.

A subclass implements `_generate(items)`, yielding one `Result` per `(index, request)` it was given, in any order;
`model_identity()` goes into the cache key (the default suits in-process models; a server-backed backend overrides
it). `generate` does the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from metakl.errors import UserError
from metakl.llm.cache import RequestCache
from metakl.llm.types import ChatRequest, Result, RunStats


def _merge(total: RunStats, run: RunStats) -> None:
    for name in ("requests", "samples", "prompt_tokens", "completion_tokens", "reasoning_tokens", "cache_hits", "backend_calls",
                 "retries", "failures", "seconds", "cached_prompt_tokens"):
        setattr(total, name, getattr(total, name) + getattr(run, name))
    if run.cost_usd is not None:  # None + None stays None: no price, no cost
        total.cost_usd = (total.cost_usd or 0.0) + run.cost_usd
    for name, value in run.extra.items():
        total.extra[name] = total.extra.get(name, 0) + value


def require_packages(kind: str, modules: tuple[str, ...], what: str, install: str) -> None:
    """A backend's optional packages, imported to check they work: one UserError saying what to install if not."""
    import importlib

    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        raise UserError(f"the {kind} backend needs {what}; run: {install}") from None


class Backend:
    """Takes many chat requests, yields results as they finish; cached ones first, without calling the model.

    `stats` holds the totals over this backend's life, `last_run` those of the latest `generate` call.
    """

    kind = "base"
    default_concurrency = 1

    def __init__(self, model: str, *, concurrency: int | None = None, cache_dir: str | Path | None = None,
                 use_cache: bool = True) -> None:
        self.model = model
        self.concurrency = int(concurrency or self.default_concurrency)
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        self.cache: RequestCache | None = None
        if use_cache:
            if cache_dir is None:
                from metakl.llm.models import cache_root

                cache_dir = cache_root()
            self.cache = RequestCache(cache_dir)
        self.stats = RunStats()
        self.last_run = RunStats()
        self.meter = None  # metakl.llm.cost.Meter: the model's price and the stage's budget (set by LLMOptions.build)
        self._lock = threading.Lock()

    # --- for subclasses -------------------------------------------------------------------------------------------
    def model_identity(self) -> str:
        """The model in cache keys: a local folder by its resolved path (the same weights under another relative path
        share the cache), an embedded model or a Hub id by its name. The openai backend has its own (what the server
        serves)."""
        from metakl.hardware import resolve_dtype
        from metakl.llm.models import EMBEDDED_CHAT_MODELS

        path = Path(self.model).expanduser()
        name = str(path.resolve()) if self.model not in EMBEDDED_CHAT_MODELS and path.exists() else self.model
        if not hasattr(self, "dtype"):
            return name
        # In-process weights: their dtype changes the answers (bf16 and float32 greedy decoding differ).
        return f"{name}|{resolve_dtype(self.dtype, getattr(self, 'device', None), announce=False)}"

    def _generate(self, items: list[tuple[int, ChatRequest]]) -> Iterator[Result]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Called once before the first uncached request (load a model, check a server)."""

    def _finish(self, result: Result) -> None:
        """Commit one fresh result to the cache and the run totals. Producers in worker threads call this too."""
        if result.ok and self.cache is not None:
            self.cache.put(result.request.key(self.kind, self.model_identity()), result.completion)
        usd = self.meter.charge(result.completion) if result.ok and self.meter is not None else None
        with self._lock:
            self.last_run.add(result)
            if usd is not None:
                self.last_run.cost_usd = (self.last_run.cost_usd or 0.0) + usd

    # --- public ---------------------------------------------------------------------------------------------------
    def generate(self, requests: Iterable[ChatRequest], progress: bool = True) -> Iterator[Result]:
        """Yield a `Result` for every request (any order; `result.index` is its position in the input)."""
        requests = list(requests)
        run = self.last_run = RunStats()
        if self.meter is not None and self.meter.price is not None:
            run.cost_usd = 0.0  # priced: cache hits cost nothing
        start = time.perf_counter()
        bar = _progress_bar(len(requests), f"{self.kind}:{self.model}", enabled=progress)
        try:
            pending: list[tuple[int, ChatRequest]] = []
            if self.cache is not None and requests:
                identity = self.model_identity()
                keys = [r.key(self.kind, identity) for r in requests]
                cached = self.cache.get_many(keys)
                for i, (req, key) in enumerate(zip(requests, keys)):
                    if key not in cached:
                        pending.append((i, req))
                        continue
                    result = Result(index=i, request=req, completion=cached[key])
                    run.add(result)
                    bar.update(1)
                    yield result
            else:
                pending = list(enumerate(requests))
            if pending:
                if self.meter is not None:
                    self.meter.check()  # another backend of this stage may have spent the budget
                prepare_start = time.perf_counter()
                self._prepare()
                # Loading a model or checking a server is not generation: keep it apart for tokens/s.
                run.extra["prepare_seconds"] = time.perf_counter() - prepare_start
                with self._lock:
                    run.backend_calls += len(pending)
                cached_tokens, fresh_start = run.completion_tokens, time.perf_counter()
                for result in self._generate(pending):
                    bar.update(1)
                    fresh_tokens = run.completion_tokens - cached_tokens
                    if fresh_tokens:  # generation speed, not counting what came from the cache
                        bar.set_postfix_str(f"{fresh_tokens / max(1e-9, time.perf_counter() - fresh_start):.0f} tok/s",
                                            refresh=False)
                    yield result
                    if self.meter is not None:
                        self.meter.check()  # over the budget: stop here (closing _generate cancels what is in flight)
        finally:
            bar.close()
            run.seconds = time.perf_counter() - start
            _merge(self.stats, run)

    def generate_all(self, requests: Iterable[ChatRequest], progress: bool = True) -> list[Result]:
        """All results, in input order."""
        requests = list(requests)
        out: list[Result | None] = [None] * len(requests)
        for result in self.generate(requests, progress=progress):
            out[result.index] = result
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _progress_bar(total: int, desc: str, *, enabled: bool):
    from metakl.progress import bar

    return bar(total, desc, "req", enabled=enabled)  # a bar, or progress lines in a log (metakl.progress)
