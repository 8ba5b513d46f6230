"""Asking a chat model for every row, retrying invalid answers with the validation error fed back (guided and
open-set annotation)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from metakl.llm import ChatRequest
from metakl.stages.annotate.base import BACKEND_ERROR, AnnotateConfig, Failure, Labels
from metakl.stages.knowledge_parse import KnowledgeError

Messages = list[dict[str, str]]


@dataclass
class Asked:
    """The answers: the valid knowledge per row, the rows still failing after every attempt, attempts per row, the
    kinds of first-attempt failures, and the seconds spent waiting for the model."""

    knowledge: dict[int, list[dict[str, str]]] = field(default_factory=dict)
    failure: dict[int, Failure] = field(default_factory=dict)
    attempts: Counter = field(default_factory=Counter)
    first_failures: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def ask(backend: Any, config: AnnotateConfig, base: dict[int, Messages], ids: list[str], *,
        schema_of: Callable[[int], dict | None], check: Callable[[int, str], list[dict[str, str]]],
        feedback: Callable[[str], Messages], progress: bool = False) -> Asked:
    """Ask for every row of `base` (its chat messages). `check(i, text)` parses an answer or raises KnowledgeError;
    `feedback(message)` is the retry turn that shows the model its error."""
    out = Asked()
    conversation = dict(base)
    pending = sorted(base)
    for attempt in range(1 + config.retries):
        if not pending:
            break
        temperature = config.temperature if attempt == 0 or config.retry_temperature is None else config.retry_temperature
        requests = [
            ChatRequest(messages=conversation[i], n=1, temperature=temperature, max_tokens=config.max_tokens,
                        seed=config.seed, json_schema=schema_of(i), tag=ids[i])
            for i in pending
        ]
        t0 = time.perf_counter()
        results = backend.generate_all(requests, progress=progress)
        out.seconds += time.perf_counter() - t0
        retry: list[int] = []
        for i, result in zip(pending, results):
            out.attempts[i] += 1
            if not result.ok:
                out.failure[i] = (BACKEND_ERROR, str(result.error))
                retry.append(i)  # same conversation again
                continue
            text = result.completion.texts[0] if result.completion.texts else ""
            cut = result.completion.finish_reasons[0] == "length" if result.completion.finish_reasons else False
            try:
                out.knowledge[i] = check(i, text)
                out.failure.pop(i, None)
            except KnowledgeError as exc:
                message = exc.message + (f" (the answer was cut off at {config.max_tokens} tokens; be brief)" if cut else "")
                out.failure[i] = (exc.kind, message)
                if attempt == 0:
                    out.first_failures[exc.kind] += 1
                conversation[i] = base[i] + [{"role": "assistant", "content": text}] + feedback(message)
                retry.append(i)
        pending = retry
    return out


def labels_of(asked: Asked, n: int, report: dict) -> Labels:
    """The answers as the stage's `Labels` for `n` input rows."""
    knowledge: list[list[dict[str, str]]] = [asked.knowledge.get(i, []) for i in range(n)]
    return Labels(knowledge, asked.failure, [asked.attempts[i] for i in range(n)], report, asked.seconds)
