"""Batch mode: requests go out as JSONL files on the OpenAI Batch API shape instead of one HTTP call each.

The Batch API (https://platform.openai.com/docs/guides/batch, API reference /docs/api-reference/batch): upload a
JSONL file of requests to `POST /v1/files` (purpose "batch"), `POST /v1/batches` with its id, poll
`GET /v1/batches/{id}` until the batch is completed (or failed, expired, cancelled), then download the output file
and the errors file (`GET /v1/files/{id}/content`). One line of the input file:

    {"custom_id": "<cache key>", "method": "POST", "url": "/v1/chat/completions", "body": {<chat request body>}}

The same file is what vLLM's own `python -m vllm.entrypoints.openai.run_batch -i in.jsonl -o out.jsonl` reads, so a
local model runs it offline (`LocalRunBatch`, `--backend vllm --batch`).

Promises (`BatchBackend`):
- requests go out in batch files of `batch_size`; `custom_id` is the request's cache key, so an answer finds its
  request whatever order the output file has;
- before a batch is created its input file id and keys are written to `.metakl-batches.json` in the stage folder,
  and its batch id as soon as the server gives it (atomic writes); a run killed after submitting finds them there and
  polls the same batches; a request a batch holds is never put in another batch while that batch may still answer it
  (a batch whose id was never stored is found by its input file in `GET /v1/batches`);
- answers go into the same request cache the online path uses (same key), so a re-run is all cache hits, and a
  re-run with `--batch` off reuses them too;
- a row of the errors file with a transient error (429, 5xx, an expired window) is sent again in a new batch, up to
  `max_rounds` batches per request; other rows, and rows still failing, are reported as that request's error.
A batch folder holds the state only while the stage runs: the stage's finished output replaces the folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metakl.errors import UserError
from metakl.llm.openai_backend import OpenAIBackend
from metakl.llm.shape import parse_completion
from metakl.llm.types import ChatRequest, Result

STATE_FILE = ".metakl-batches.json"
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
# Row errors worth another batch: the provider's transient statuses and codes (the Batch API guide's expired rows).
RETRIABLE_STATUS = (408, 429, 500, 502, 503, 504)
RETRIABLE_CODES = ("batch_expired", "batch_cancelled", "rate_limit_exceeded", "server_error", "missing")

def current_folder() -> Path | None:
    from metakl.llm.scope import current_scope

    scope = current_scope()
    return scope.folder if scope is not None else None


# --- the file format -------------------------------------------------------------------------------------------------
def input_line(custom_id: str, body: dict[str, Any]) -> str:
    """One line of a batch input file (OpenAI Batch API; vLLM run_batch)."""
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body},
                      ensure_ascii=False, separators=(",", ":"))


def read_output_line(row: dict[str, Any], model: str) -> tuple[str, Any, str | None, bool]:
    """One line of an output or errors file: (custom_id, Completion or None, error or None, retriable)."""
    custom_id = str(row.get("custom_id"))
    response = row.get("response") or {}
    status = response.get("status_code")
    body = response.get("body")
    if status == 200 and isinstance(body, dict) and body.get("choices") is not None:
        return custom_id, parse_completion(body, model), None, False
    error = row.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
    if isinstance(error.get("error"), dict):  # vLLM nests it: {"error": {"error": {...}}}
        error = error["error"]
    code = error.get("code")
    message = error.get("message") or "no answer"
    retriable = status in RETRIABLE_STATUS or code in RETRIABLE_CODES or code in RETRIABLE_STATUS
    where = f"HTTP {status}" if status else f"{code or 'error'}"
    return custom_id, None, f"batch row {where}: {message}", retriable


def batch_errors(batch: dict[str, Any]) -> str | None:
    """Why the provider failed a whole batch (its `errors.data`: validation of the input file), or None."""
    data = (batch.get("errors") or {}).get("data") or []
    if not data:
        return None
    first = data[0]
    line = f" (line {first['line']})" if first.get("line") is not None else ""
    more = f" and {len(data) - 1} more" if len(data) > 1 else ""
    return f"{first.get('code') or 'error'}: {first.get('message') or 'no message'}{line}{more}"


# --- where batches run -----------------------------------------------------------------------------------------------
class HttpBatches:
    """The provider's endpoints: /files and /batches under `base_url` (e.g. https://api.openai.com/v1)."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 120.0, max_attempts: int = 6) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, timeout=timeout,
                                   headers={"Authorization": f"Bearer {api_key}"})
        self.max_attempts = max_attempts

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; transient failures (connection, 429, 5xx) tried again with backoff, others one UserError."""
        import httpx

        for attempt in range(1, self.max_attempts + 1):
            try:
                r = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}"
            else:
                if r.status_code < 400:
                    return r
                problem = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code not in RETRIABLE_STATUS:
                    raise UserError(f"batch {method} {self.base_url}{path}: {problem}")
            if attempt < self.max_attempts:
                time.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
        raise UserError(f"batch {method} {self.base_url}{path}: gave up after {self.max_attempts} attempts ({problem})")

    def upload(self, name: str, data: bytes) -> str:
        r = self._call("POST", "/files", files={"file": (name, data, "application/jsonl")}, data={"purpose": "batch"})
        return r.json()["id"]

    def create(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        return self._call("POST", "/batches", json={"input_file_id": input_file_id, "endpoint": ENDPOINT,
                                                    "completion_window": "24h", "metadata": metadata}).json()

    def get(self, batch_id: str) -> dict[str, Any]:
        return self._call("GET", f"/batches/{batch_id}").json()

    def find(self, input_file_id: str) -> dict[str, Any] | None:
        """A batch already made from `input_file_id` (a run killed between creating it and storing its id)."""
        after = None
        for _ in range(20):  # the newest 2000 batches
            params = {"limit": 100, **({"after": after} if after else {})}
            page = self._call("GET", "/batches", params=params).json()
            for batch in page.get("data") or []:
                if batch.get("input_file_id") == input_file_id:
                    return batch
            if not page.get("has_more") or not page.get("data"):
                return None
            after = page["data"][-1]["id"]
        return None

    def content(self, file_id: str) -> str:
        return self._call("GET", f"/files/{file_id}/content").text

    def close(self) -> None:
        self.client.close()


class LocalRunBatch:
    """vLLM's offline batch runner on this machine: a batch runs to its end when created (no server)."""

    def __init__(self, model: str, served_name: str, folder: Path, dtype: str = "auto", max_model_len: int = 2048
                 ) -> None:
        from metakl import hardware
        from metakl.llm.models import resolve_chat_model
        from metakl.llm.serve import _on_cpu, cpu_scheduler_args

        self.model_path = resolve_chat_model(model)
        self.served_name = served_name
        self.folder = folder
        self.cpu = _on_cpu()
        self.args = ["--model", self.model_path, "--served-model-name", served_name,
                     "--dtype", hardware.resolve_dtype(dtype, "cpu" if self.cpu else "cuda"),
                     "--max-model-len", str(max_model_len)]
        if self.cpu:  # the same CPU settings as `metakl serve` (metakl.llm.serve)
            self.args += ["--gpu-memory-utilization", "0.3", "--enforce-eager", *cpu_scheduler_args(max_model_len)]

    def _path(self, file_id: str) -> Path:
        return self.folder / f".metakl-batch-{file_id}.jsonl"

    def upload(self, name: str, data: bytes) -> str:
        import hashlib

        file_id = hashlib.sha256(data).hexdigest()[:16]
        from metakl.io import write_atomic

        write_atomic(self._path(file_id), data)
        return file_id

    def create(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        out = self._path(f"{input_file_id}-out")
        env = dict(os.environ)
        if self.cpu:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(self._path(input_file_id)),
               "-o", str(out), *self.args]
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0 or not out.exists():
            tail = "\n".join(done.stdout.strip().splitlines()[-5:])
            raise UserError(f"vLLM run_batch exited with code {done.returncode}; last lines:\n{tail}")
        return self.get(input_file_id)

    def get(self, batch_id: str) -> dict[str, Any]:
        out = self._path(f"{batch_id}-out")
        if out.exists():
            return {"id": batch_id, "status": "completed", "output_file_id": f"{batch_id}-out", "error_file_id": None}
        return {"id": batch_id, "status": "failed", "output_file_id": None, "error_file_id": None}

    def find(self, input_file_id: str) -> dict[str, Any] | None:
        return None  # create runs the whole batch: nothing can have been created without its id stored

    def content(self, file_id: str) -> str:
        return self._path(file_id).read_text(encoding="utf-8")

    def close(self) -> None:
        for path in self.folder.glob(".metakl-batch-*.jsonl"):  # its answers are in the cache now
            path.unlink(missing_ok=True)


# --- the state in the stage folder -----------------------------------------------------------------------------------
class BatchState:
    """`.metakl-batches.json`: the batches of this stage not yet read back, each {input_file_id, id, keys}."""

    _lock = threading.Lock()

    def __init__(self, folder: Path) -> None:
        self.path = folder / STATE_FILE

    def load(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.path}: unreadable batch state ({exc}); remove it to submit the requests again")
        return list(data.get("batches") or [])

    def update(self, change) -> None:
        """Read, change (a function of the list), write atomically: a kill leaves the old or the new file."""
        from metakl.io import write_json_atomic

        with self._lock:
            batches = self.load()
            change(batches)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, {"batches": batches}, indent=None)


# --- the backend ---------------------------------------------------------------------------------------------------
class BatchBackend(OpenAIBackend):
    """The openai backend with requests sent as batches (same request bodies, same cache keys).

    Options beyond OpenAIBackend's: `folder` (the stage folder for the batch ids; required), `batch_size` (requests
    per batch file), `poll_seconds` (between status checks), `max_rounds` (batches a request may go in: the first and
    the retries of its transient row errors), `runner` (a HttpBatches or LocalRunBatch; default: the provider at
    base_url).
    """

    def __init__(self, model: str, *, folder: str | Path | None = None, batch_size: int = 1000,
                 poll_seconds: float = 30.0, max_rounds: int = 3, runner: Any = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        folder = folder if folder is not None else current_folder()
        if folder is None:
            raise UserError("--batch keeps its batch ids in the stage folder: run it through a stage (--out)")
        if batch_size < 1:
            raise UserError(f"batch_size: expected an integer >= 1, got {batch_size}")
        self.folder = Path(folder)
        self.state = BatchState(self.folder)
        self.batch_size = int(batch_size)
        self.poll_seconds = float(poll_seconds)
        self.max_rounds = max(1, int(max_rounds))
        self.runner = runner
        self.batches_created = 0

    def _prepare(self) -> None:
        if self.runner is None:
            super()._prepare()  # the provider knows the model and the key: one clear error before any upload
            self.runner = HttpBatches(self.base_url, self._api_key(), self.timeout, self.max_attempts)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        super().close()

    # --- many requests as batches ---------------------------------------------------------------------------------
    def _generate(self, items: list[tuple[int, ChatRequest]]) -> Iterator[Result]:
        identity = self.model_identity()
        waiting: dict[str, list[tuple[int, ChatRequest]]] = {}  # key → the items asking it (a repeated request once)
        for index, req in items:
            waiting.setdefault(req.key(self.kind, identity), []).append((index, req))
        rounds = dict.fromkeys(waiting, 0)  # batches each request has been put in
        errors: dict[str, str] = {}
        # Batches an earlier run submitted for these requests: polled, never submitted again.
        active = [b for b in self.state.load() if any(k in waiting for k in b["keys"])]
        for key in (k for b in active for k in b["keys"] if k in rounds):
            rounds[key] += 1
        held = {k for b in active for k in b["keys"]}
        active += self._submit([k for k in waiting if k not in held], waiting, rounds)
        while active:
            still = []
            for record in active:
                batch = self._status(record)
                if batch.get("status") not in TERMINAL:
                    still.append(record)
                    continue
                again: list[str] = []
                yield from self._read_back(record, batch, waiting, errors, again, rounds)
                self._forget(record)
                still += self._submit(again, waiting, rounds)
            active = still
            if active:
                time.sleep(self.poll_seconds)
        for key, asking in waiting.items():  # spent rounds or a non-transient row error: reported per request
            for index, req in asking:
                result = Result(index=index, request=req, attempts=rounds[key],
                                error=errors.get(key, "batch gave no answer for this request"))
                self._finish(result)
                yield result

    def _submit(self, keys: list[str], waiting: dict[str, list[tuple[int, ChatRequest]]],
                rounds: dict[str, int]) -> list[dict[str, Any]]:
        """New batches for `keys`, each stored (input file and keys, then its id) before anyone polls it."""
        made = []
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start : start + self.batch_size]
            data = "".join(input_line(k, self.request_body(waiting[k][0][1])) + "\n" for k in chunk).encode("utf-8")
            record = {"input_file_id": self.runner.upload(f"metakl-{chunk[0][:12]}.jsonl", data), "id": None,
                      "keys": chunk}
            self.state.update(lambda batches, r=dict(record): batches.append(r))
            self._create(record)
            for key in chunk:
                rounds[key] += 1
            made.append(record)
        return made

    def _create(self, record: dict[str, Any]) -> None:
        batch = self.runner.create(record["input_file_id"], {"metakl": "1"})
        self.batches_created += 1
        record["batch"] = batch  # the first status: a local runner's batch is done already
        self._store_id(record, batch["id"])

    def _store_id(self, record: dict[str, Any], batch_id: str) -> None:
        record["id"] = batch_id

        def change(batches: list[dict[str, Any]]) -> None:
            for b in batches:
                if b["input_file_id"] == record["input_file_id"]:
                    b["id"] = batch_id

        self.state.update(change)

    def _forget(self, record: dict[str, Any]) -> None:
        """A batch read back: its answers are in the cache, its failed rows in new batches or reported."""
        def change(batches: list[dict[str, Any]]) -> None:
            batches[:] = [b for b in batches if b["input_file_id"] != record["input_file_id"]]

        self.state.update(change)

    def _status(self, record: dict[str, Any]) -> dict[str, Any]:
        if record.get("id") is None:  # killed between creating it and storing its id: look it up, else create it
            found = self.runner.find(record["input_file_id"])
            if found is None:
                self._create(record)
                return record.pop("batch")
            self._store_id(record, found["id"])
            return found
        fresh = record.pop("batch", None)  # the answer to create: a local runner's batch is already done
        if fresh is not None and fresh.get("status") in TERMINAL:
            return fresh
        return self.runner.get(record["id"])

    def _read_back(self, record: dict[str, Any], batch: dict[str, Any], waiting: dict, errors: dict[str, str],
                   again: list[str], rounds: dict[str, int]) -> Iterator[Result]:
        """The answers of a finished batch into the cache (yielded as results); its failed rows into `again` (to be
        sent once more) or `errors` (to be reported)."""
        seen = set()
        for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
            if not file_id:
                continue
            for line in self.runner.content(file_id).splitlines():
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a torn line: that request counts as missing and goes again
                key, completion, error, retriable = read_output_line(row, self.model)
                if key not in waiting or key in seen:
                    continue
                seen.add(key)
                if completion is not None:
                    for index, req in waiting.pop(key):
                        result = Result(index=index, request=req, completion=completion, attempts=rounds[key])
                        self._finish(result)
                        yield result
                else:
                    errors[key] = error
                    if retriable and rounds[key] < self.max_rounds:
                        again.append(key)
        refused = batch_errors(batch) if batch.get("status") == "failed" else None
        for key in record["keys"]:  # rows the batch never answered (failed or expired before reaching them)
            if key in waiting and key not in seen:
                if refused:  # the provider refused the file itself (validation): sending it again would fail alike
                    errors[key] = f"batch {record.get('id')} failed: {refused}"
                    continue
                errors[key] = f"batch {record.get('id')} ended '{batch.get('status')}' without answering this request"
                if rounds[key] < self.max_rounds:
                    again.append(key)


def batch_backend(options: Any, kind: str, **backend_options: Any) -> BatchBackend:
    """The batch backend for model options `options` (LLMOptions with `batch` set): the provider's batch endpoints
    at base_url (openai), or vLLM's run_batch on this machine (vllm). Answers share the online path's cache keys: a
    local model's are those of `metakl serve` serving it under its name."""
    if kind == "transformers":
        raise UserError("--batch needs batch endpoints (an openai server: --base-url) or vLLM's offline runner "
                        "(--backend vllm); the transformers backend has neither")
    folder = current_folder()
    if folder is None:
        raise UserError("--batch keeps its batch ids in the stage folder: it runs in a stage with --out, under the "
                        "local executor")
    common = dict(concurrency=options.concurrency, cache_dir=options.cache_dir, use_cache=not options.no_cache,
                  shape=options.shape(), folder=folder, batch_size=options.batch_size,
                  poll_seconds=options.batch_poll)
    if kind == "vllm":
        from metakl.llm.models import check_model_name

        check_model_name(options.model)
        runner = LocalRunBatch(options.model, options.model, folder, dtype=getattr(options.dtype, "value", options.dtype))
        return BatchBackend(options.model, base_url="http://127.0.0.1/v1", check_server=False, runner=runner,
                            identity=f"local|{options.model}|{runner.model_path}", json_mode="structured_outputs",
                            **common, **backend_options)
    return BatchBackend(options.model, base_url=options.base_url, **common, **backend_options)
