"""Request and result types shared by every backend.

A batch never dies because one request failed: errors are values on that request's `Result`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChatRequest:
    """One chat request asking for `n` samples.

    `tag` is the caller's own label (e.g. a row id); it is not part of the cache key.
    `json_schema`, when set, asks the backend for structured output that validates against it.
    """

    messages: tuple[dict[str, str], ...]
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None
    tag: str | None = None

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the object hashable and canonical.
        object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def canonical(self) -> dict[str, Any]:
        """The request as a canonical JSON-able dict: everything that changes the answer, nothing else."""
        d = asdict(self)
        d.pop("tag")
        d["messages"] = [dict(m) for m in self.messages]
        d["stop"] = list(self.stop)
        return d

    def key(self, backend: str, model_identity: str) -> str:
        """Cache key: hash of backend kind, model identity and the canonical request."""
        payload = json.dumps(
            {"backend": backend, "model": model_identity, "request": self.canonical()},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class Completion:
    """What came back for one request: n texts with their finish reasons and token counts.

    `reasoning[k]` is the reasoning the server returned beside text k in its own field (None for a choice without
    one; an empty list when no choice had one); `reasoning_tokens` the part of `completion_tokens` the usage block
    reports as reasoning (0 when it does not).
    """

    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int
    model: str
    reasoning: list[str | None] = field(default_factory=list)
    reasoning_tokens: int = 0
    cached_prompt_tokens: int = 0  # part of prompt_tokens the provider served from its prompt cache (priced apart)
    cached: bool = False

    def reasoning_of(self, k: int) -> str | None:
        return self.reasoning[k] if k < len(self.reasoning) else None

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("cached")
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str, *, cached: bool) -> "Completion":
        return cls(**json.loads(s), cached=cached)


@dataclass
class Result:
    """The outcome of one request: a completion, or an error message. `index` is its position in the input."""

    index: int
    request: ChatRequest
    completion: Completion | None = None
    error: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.completion is not None and self.error is None


@dataclass
class RunStats:
    """Per-run totals, returned to the caller and shown by the CLIs."""

    requests: int = 0
    samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # part of completion_tokens, where the server reports it
    cache_hits: int = 0
    backend_calls: int = 0
    retries: int = 0
    failures: int = 0
    seconds: float = 0.0
    cached_prompt_tokens: int = 0  # part of prompt_tokens, where the provider reports its prompt cache
    cost_usd: float | None = None  # fresh answers at the model's price (metakl.llm.cost); None: no price given
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, result: Result) -> None:
        self.requests += 1
        self.retries += max(0, result.attempts - 1)
        if not result.ok:
            self.failures += 1
            return
        c = result.completion
        assert c is not None
        self.samples += len(c.texts)
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        self.reasoning_tokens += c.reasoning_tokens
        self.cached_prompt_tokens += c.cached_prompt_tokens
        if c.cached:
            self.cache_hits += 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
