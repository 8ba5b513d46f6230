"""The only way to reach a model: request/response types, backends, request cache, embedded models.

```python
from metakl.llm import ChatRequest, get_backend
with get_backend("openai", "smollm2-135m-instruct", base_url="http://127.0.0.1:8011/v1") as backend:
    for result in backend.generate([ChatRequest(messages=[{"role": "user", "content": "Hi"}], n=2)]):
        print(result.index, result.completion.texts if result.ok else result.error)
    print(backend.stats)
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metakl.errors import UserError
from metakl.llm.base import Backend
from metakl.llm.types import ChatRequest, Completion, Result, RunStats

BACKENDS = ("transformers", "vllm", "openai")

__all__ = ["BACKENDS", "Backend", "ChatRequest", "Completion", "Result", "RunStats", "get_backend"]


def get_backend(kind: str, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                concurrency: int | None = None, cache_dir: str | Path | None = None, use_cache: bool = True,
                **backend_options: Any) -> Backend:
    """A backend of `kind` ("transformers" | "vllm" | "openai") for `model`.

    `model`: for openai, the name the server serves; otherwise an embedded model name or an HF folder.
    `concurrency`: requests in flight (openai, default 64) or batch size (transformers 8, vllm 256).
    `cache_dir`: where the request cache lives (default: $METAKL_CACHE_DIR or the user cache); `use_cache=False`
    bypasses it. Other options go to the backend class (see its docstring).
    """
    common = dict(concurrency=concurrency, cache_dir=cache_dir, use_cache=use_cache)
    if kind == "openai":
        from metakl.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(model, base_url=base_url, api_key_env=api_key_env, **common, **backend_options)
    if kind == "transformers":
        from metakl.llm.transformers_backend import TransformersBackend

        return TransformersBackend(model, **common, **backend_options)
    if kind == "vllm":
        from metakl.llm.vllm_backend import VLLMBackend

        return VLLMBackend(model, **common, **backend_options)
    raise UserError(f"unknown backend '{kind}'; expected one of: {', '.join(BACKENDS)}")
