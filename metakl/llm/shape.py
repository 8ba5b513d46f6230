"""What a chat request looks like on the wire for one model, and what one answer body holds: pure functions.

Servers differ in the request they accept (the documents followed, as of 2026):
- OpenAI reasoning models (o-series, gpt-5 family; platform.openai.com/docs/guides/reasoning and the Chat Completions
  API reference): `max_completion_tokens` (they refuse `max_tokens`), no `temperature`/`top_p`/`presence_penalty`/
  `frequency_penalty` other than the defaults, `reasoning_effort` allowed.
- DeepSeek's reasoner (api-docs.deepseek.com/guides/reasoning_model): `max_tokens`; temperature, top_p and the
  penalties are ignored, so they are left out; the reasoning comes back in `message.reasoning_content`.
- vLLM (docs.vllm.ai, OpenAI-compatible server): `max_tokens`, sampling parameters honoured, structured outputs in
  extra body fields; with `--reasoning-parser` the reasoning comes back in `message.reasoning_content` (older
  releases) or `message.reasoning` (0.10+), which is also OpenRouter's spelling.

`request_body` builds the JSON body of one request and `parse_completion` reads one response body, so that any
transport (the async client, a batch file) shares them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from metakl.errors import UserError
from metakl.llm.types import ChatRequest, Completion

TOKEN_PARAMS = ("max_tokens", "max_completion_tokens")
OMITTABLE = ("temperature", "top_p", "seed", "stop", "n", "presence_penalty", "frequency_penalty")
SAMPLING = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
REASONING_FIELDS = ("reasoning_content", "reasoning")  # DeepSeek / vLLM < 0.10; vLLM >= 0.10 / OpenRouter


@dataclass(frozen=True)
class RequestShape:
    """How one model wants its requests: which token limit it takes, what to leave out, what to add."""

    token_param: str = "max_tokens"
    reasoning_effort: str | None = None
    omit: tuple[str, ...] = ()
    extra_body: dict[str, Any] = field(default_factory=dict)
    preset: str = "default"

    def __post_init__(self) -> None:
        if self.token_param not in TOKEN_PARAMS:
            raise UserError(f"llm.token_param: expected one of {', '.join(TOKEN_PARAMS)}, got '{self.token_param}'")
        bad = [p for p in self.omit if p not in OMITTABLE]
        if bad:
            raise UserError(f"llm.omit: cannot leave out '{bad[0]}'; expected some of {', '.join(OMITTABLE)}")
        object.__setattr__(self, "omit", tuple(self.omit))

    def identity(self) -> str:
        """What of the shape changes the answers, for the cache key ('' for the default shape: old caches hold)."""
        d = {"omit": sorted(self.omit), "reasoning_effort": self.reasoning_effort, "extra_body": self.extra_body}
        if not self.omit and self.reasoning_effort is None and not self.extra_body:
            return ""
        return json.dumps(d, sort_keys=True, separators=(",", ":"))


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "vllm": {"token_param": "max_tokens"},
    "openai-reasoning": {"token_param": "max_completion_tokens", "omit": SAMPLING},
    "deepseek": {"token_param": "max_tokens", "omit": SAMPLING},
}


def make_shape(preset: str | None = None, *, token_param: str | None = None, reasoning_effort: str | None = None,
               omit: list[str] | tuple[str, ...] | None = None, extra_body: dict[str, Any] | None = None) -> RequestShape:
    """A preset's shape with the options given on top of it (an option given wins over the preset)."""
    name = preset or "default"
    if name not in PRESETS:
        raise UserError(f"llm.request_preset: expected one of {', '.join(PRESETS)}, got '{name}'")
    base = dict(PRESETS[name])
    if token_param is not None:
        base["token_param"] = token_param
    if omit is not None:
        base["omit"] = tuple(omit)
    if extra_body:
        base["extra_body"] = dict(extra_body)
    return RequestShape(reasoning_effort=reasoning_effort, preset=name, **base)


def request_body(model: str, req: ChatRequest, shape: RequestShape, json_mode: str = "structured_outputs"
                 ) -> dict[str, Any]:
    """The JSON body of one chat completions request for `model`."""
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in req.messages], "n": req.n,
                            "temperature": req.temperature, "top_p": req.top_p, shape.token_param: req.max_tokens}
    if req.seed is not None:
        body["seed"] = req.seed
    if req.stop:
        body["stop"] = list(req.stop)
    for name in shape.omit:
        body.pop(name, None)
    if shape.reasoning_effort is not None:
        body["reasoning_effort"] = shape.reasoning_effort
    if req.json_schema is not None:
        if json_mode == "structured_outputs":  # vLLM's extra body field
            body["structured_outputs"] = {"json": req.json_schema}
        else:  # OpenAI's
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": req.json_schema}}
    body.update(shape.extra_body)
    return body


def message_reasoning(message: dict[str, Any]) -> str | None:
    """The reasoning a server returned beside the content, in either spelling; None when it sent none."""
    for name in REASONING_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def parse_completion(body: dict[str, Any], model: str) -> Completion:
    """One chat completions response body as a Completion: every choice's content and reasoning, in index order."""
    choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
    usage = body.get("usage") or {}
    details = usage.get("completion_tokens_details") or {}
    messages = [c.get("message") or {} for c in choices]
    reasoning = [message_reasoning(m) for m in messages]
    return Completion(
        texts=[m.get("content") or "" for m in messages],
        finish_reasons=[c.get("finish_reason") or "" for c in choices],
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        model=body.get("model") or model,
        reasoning=reasoning if any(r is not None for r in reasoning) else [],
        reasoning_tokens=int(details.get("reasoning_tokens") or 0),
        cached_prompt_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
    )


_PARAM_IN_MESSAGE = re.compile(r"(?:unsupported (?:parameter|value)|not supported|unrecognized|unknown)"
                               r"[^'\"`]*['\"`]([a-z_]+)['\"`]", re.IGNORECASE)


def refused_parameter(body: Any, message: str) -> str | None:
    """The request parameter an HTTP 400 says the server does not take, or None when it names none.

    OpenAI answers `{"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model.
    Use 'max_completion_tokens' instead.", "param": "max_tokens", "code": "unsupported_parameter"}}`.
    """
    error = body.get("error", body) if isinstance(body, dict) else {}
    if isinstance(error, dict) and error.get("code") in ("unsupported_parameter", "unsupported_value"):
        if error.get("param"):
            return str(error["param"])
    m = _PARAM_IN_MESSAGE.search(message or "")
    return m.group(1) if m else None


def refusal_hint(param: str, shape: RequestShape) -> str:
    """What to set so that the server stops refusing `param`."""
    if param == "max_tokens":
        fix = "set llm.request_preset: openai-reasoning (or llm.token_param: max_completion_tokens)"
    elif param == "max_completion_tokens":
        fix = "set llm.token_param: max_tokens (preset vllm, deepseek or default)"
    elif param in SAMPLING:
        fix = f"set llm.request_preset: openai-reasoning (or add {param} to llm.omit)"
    elif param == "reasoning_effort":
        fix = "remove llm.reasoning_effort"
    elif param in OMITTABLE:
        fix = f"add {param} to llm.omit"
    else:
        fix = f"remove {param} from llm.extra_body"
    return f"the server refused the request parameter '{param}' (request preset '{shape.preset}'); {fix}"
