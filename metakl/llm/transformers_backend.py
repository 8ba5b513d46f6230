"""`transformers` backend: an HF causal LM in-process (CPU here, GPU when there is one), batched with the chat template.

Requests that share their sampling settings are batched together (`concurrency` = batch size); each batch's results
are yielded as soon as it finishes. Sampling with a seed re-seeds torch before each batch, so a seeded run is
reproducible for the same requests and batch size; greedy decoding (temperature 0) is reproducible regardless in
float32 (in bfloat16, which `auto` picks on a CPU with native bf16, left padding in a batch can change a token).
JSON schemas are enforced with xgrammar's logits processor (installed with vLLM) when it is available.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from metakl.errors import UserError
from metakl.llm.base import Backend, require_packages
from metakl.llm.types import ChatRequest, Completion, Result


class TransformersBackend(Backend):
    """Options: `device` ("cpu", "cuda", ...; default cuda when available), `dtype` ("auto" (default), "float32",
    "bfloat16", "float16"; auto: bfloat16 on a GPU and on CPUs with native bfloat16, else float32, see
    `metakl.hardware`), `num_threads` (torch CPU threads while generating; default `metakl.hardware.torch_threads()`:
    the usable cores not already busy, or 1 while a local vLLM server on CPU runs; decided when the model loads)."""

    kind = "transformers"
    default_concurrency = 8

    def __init__(self, model: str, *, device: str | None = None, dtype: str | None = None,
                 num_threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        from metakl.hardware import check_dtype

        check_dtype(dtype)
        require_packages(self.kind, ("torch", "transformers"), "torch and transformers",
                         "pip install torch==2.13.0 transformers")
        self.device = device
        self.dtype = dtype
        self.num_threads = num_threads
        self._model = None
        self._tokenizer = None
        self._grammar_compiler = None
        self._threads: int | None = num_threads

    def _prepare(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from metakl.llm.models import check_model_name, resolve_chat_model

        check_model_name(self.model)
        path = resolve_chat_model(self.model)
        from metakl.hardware import torch_dtype, torch_threads

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Decided before loading (our own work would count as load afterwards); GPU: torch's default.
        self._threads = self.num_threads or (torch_threads() if device == "cpu" else None)
        dtype = torch_dtype(self.dtype, device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        except OSError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load model '{self.model}' with transformers: {first_line}") from None
        tokenizer.padding_side = "left"  # decoder-only batches are padded on the left
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        self._model, self._tokenizer, self._device = model, tokenizer, device

    # --- batching -------------------------------------------------------------------------------------------------
    @staticmethod
    def _group_key(req: ChatRequest) -> tuple:
        return (req.n, req.temperature, req.top_p, req.max_tokens, req.seed, req.stop, req.json_schema is not None)

    def _generate(self, items: list[tuple[int, ChatRequest]]) -> Iterator[Result]:
        groups: dict[tuple, list[tuple[int, ChatRequest]]] = {}
        for item in items:
            groups.setdefault(self._group_key(item[1]), []).append(item)
        for group in groups.values():
            for start in range(0, len(group), self.concurrency):
                batch = group[start : start + self.concurrency]
                try:
                    completions = self._run_batch([req for _, req in batch])
                except Exception as exc:  # one bad batch must not end the run
                    for index, req in batch:
                        result = Result(index=index, request=req, attempts=1, error=f"{type(exc).__name__}: {exc}")
                        self._finish(result)
                        yield result
                    continue
                for (index, req), completion in zip(batch, completions):
                    result = Result(index=index, request=req, completion=completion, attempts=1)
                    self._finish(result)
                    yield result

    def _grammar_processor(self, requests: list[ChatRequest]):
        try:
            import xgrammar as xgr
            from xgrammar.contrib.hf import LogitsProcessor
        except ImportError:
            raise RuntimeError("json_schema with the transformers backend needs xgrammar; run: pip install xgrammar")
        if self._grammar_compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self._model.config.vocab_size)
            self._grammar_compiler = xgr.GrammarCompiler(info)
        grammars = []
        for req in requests:
            compiled = self._grammar_compiler.compile_json_schema(json.dumps(req.json_schema))
            grammars.extend([compiled] * req.n)  # num_return_sequences repeats each row n times, in order
        return LogitsProcessor(grammars)

    def _run_batch(self, requests: list[ChatRequest]) -> list[Completion]:
        import torch

        tok, model = self._tokenizer, self._model
        first = requests[0]  # a batch shares its sampling settings
        prompts = [tok.apply_chat_template([dict(m) for m in r.messages], add_generation_prompt=True, tokenize=False)
                   for r in requests]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._device)
        kwargs: dict[str, Any] = dict(max_new_tokens=first.max_tokens, num_return_sequences=first.n,
                                      pad_token_id=tok.pad_token_id)
        if first.temperature > 0:
            kwargs.update(do_sample=True, temperature=first.temperature, top_p=first.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if first.stop:
            kwargs.update(stop_strings=list(first.stop), tokenizer=tok)
        if first.json_schema is not None:
            kwargs["logits_processor"] = [self._grammar_processor(requests)]
        if first.seed is not None:
            torch.manual_seed(first.seed)
        threads = torch.get_num_threads()
        if self._threads:
            torch.set_num_threads(self._threads)
        try:
            with torch.inference_mode():
                out = model.generate(**enc, **kwargs)
        finally:
            torch.set_num_threads(threads)
        prompt_len = enc["input_ids"].shape[1]
        generated = out[:, prompt_len:].tolist()
        eos_ids = _as_set(model.generation_config.eos_token_id) | _as_set(tok.eos_token_id)
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        completions = []
        for row, req in enumerate(requests):
            texts, reasons, used = [], [], 0
            for seq in generated[row * req.n : (row + 1) * req.n]:
                end = next((i for i, t in enumerate(seq) if t in eos_ids), None)
                tokens = seq if end is None else seq[:end]
                used += len(tokens) + (0 if end is None else 1)
                text = tok.decode(tokens, skip_special_tokens=True)
                reason = "stop" if end is not None else "length"
                cut = min((text.find(s) for s in req.stop if s in text), default=-1)
                if cut >= 0:  # like the OpenAI API: the stop string itself is not returned
                    text, reason = text[:cut], "stop"
                texts.append(text)
                reasons.append(reason)
            completions.append(Completion(texts=texts, finish_reasons=reasons, prompt_tokens=int(prompt_tokens[row]),
                                          completion_tokens=used, model=self.model))
        return completions

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
        super().close()


def _as_set(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (list, tuple, set)):
        return {int(v) for v in value}
    return {int(value)}
