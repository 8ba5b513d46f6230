"""`openai` backend: any OpenAI-compatible endpoint (a vLLM server, OpenAI, others) through the official async client.

Requests run on an asyncio loop in a worker thread with at most `concurrency` in flight (fewer when the server's
rate-limit headers say so: metakl.llm.ratelimit); each result is committed to the cache and handed to the caller as
soon as it finishes. Bodies are built and read by metakl.llm.shape (the model's request shape; reasoning kept).
Transient failures (429, 5xx, timeouts, connection errors) are retried by the one policy of metakl.llm.retry; any
other 4xx ends that request only, as an error value. The API key is read from an environment variable and never logged or stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import random
import threading
from collections.abc import Iterator
from typing import Any

from metakl.errors import UserError
from metakl.llm.base import Backend, require_packages
from metakl.llm.ratelimit import RateGate
from metakl.llm.retry import TRANSIENT_ERRORS, describe_error, error_headers, retry_after_seconds, retry_policy
from metakl.llm.shape import RequestShape, make_shape, parse_completion, refusal_hint, refused_parameter, request_body
from metakl.llm.types import ChatRequest, Result

log = logging.getLogger(__name__)

JSON_MODES = ("auto", "structured_outputs", "response_format")
_DONE = object()


def _is_local(base_url: str) -> bool:
    from urllib.parse import urlparse

    host = (urlparse(base_url).hostname or "").lower()
    return host in ("127.0.0.1", "localhost", "0.0.0.0", "::1") or host.startswith("127.")


def _model_entries(response) -> list[dict]:
    try:
        return [m for m in response.json().get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError, TypeError):
        return []


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible server.

    Options: `timeout` (seconds per attempt), `max_attempts` (per request, first try included), `backoff_base`
    and `backoff_cap` (seconds), `json_mode` ("structured_outputs": vLLM's extra_body; "response_format": OpenAI's
    json_schema; "auto": response_format for api.openai.com, structured_outputs elsewhere), `check_server`
    (look the model up in /models before the first call, for a clear error when it is absent), `identity` (the
    model identity in cache keys), `shape` (metakl.llm.shape.RequestShape: token limit name, parameters left out,
    reasoning_effort, extra body fields). By default a server on this machine is identified by the model it serves (its
    name and, for vLLM, the weights it loaded: /models' `root`), not by its URL, so a server restarted on another
    port still hits the cache; a remote endpoint is identified by "<base_url>|<model>".
    """

    kind = "openai"
    default_concurrency = 64

    def __init__(self, model: str, *, base_url: str | list[str] | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_attempts: int = 6, backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 json_mode: str = "auto", check_server: bool = True, identity: str | None = None,
                 shape: RequestShape | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if json_mode not in JSON_MODES:
            raise UserError(f"json_mode must be one of {', '.join(JSON_MODES)}, got '{json_mode}'")
        require_packages(self.kind, ("openai",), "the 'openai' package", "pip install openai")
        from metakl.llm.balance import endpoint_list

        # Several endpoints serving the same model share the requests (least outstanding first, metakl.llm.balance).
        self.base_urls = endpoint_list(base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1")
        self.base_url = self.base_urls[0]
        self.balancer = None  # the LeastOutstanding of the latest run (tests and reports read `sent`)
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_attempts = max(1, int(max_attempts))
        self.backoff_base = float(backoff_base)
        self.backoff_cap = float(backoff_cap)
        if json_mode == "auto":
            json_mode = "response_format" if "api.openai.com" in self.base_url else "structured_outputs"
        self.json_mode = json_mode
        self.shape = shape or make_shape()
        self.gates: list[RateGate] = []  # one per endpoint, of the latest run (reports and tests read them)
        self.check_server = check_server
        self.identity = identity
        self._served_root: str | None = None
        self._models_response = None
        self._checked = False
        self._rng = random.Random()

    def model_identity(self) -> str:
        shape = self.shape.identity()  # leaving out temperature or asking for more effort changes the answers
        return f"{self._server_identity()}|{shape}" if shape else self._server_identity()

    def _server_identity(self) -> str:
        if self.identity:
            return self.identity
        if all(_is_local(u) for u in self.base_urls):
            return f"local|{self.model}|{self._root()}"
        if len(self.base_urls) > 1:  # endpoints of one pool answer alike: adding one must not empty the cache
            return f"pool|{self.model}|{self._root()}"
        return f"{self.base_url}|{self.model}"

    def _root(self) -> str:
        """What the local server says it loaded for our model (vLLM: the weights path); asked once."""
        if self._served_root is None:
            self._served_root = ""
            try:
                response = self._models()
            except Exception:  # unreachable: _prepare says so, clearly, before any request is sent
                return self._served_root
            if response.status_code == 200:
                for entry in _model_entries(response):
                    if entry.get("id") == self.model:
                        self._served_root = str(entry.get("root") or "")
        return self._served_root

    def _models(self, base_url: str | None = None):
        """GET /models once per endpoint (the identity look-up and the server check share the first one's)."""
        import httpx

        url = base_url or self.base_url
        if self._models_response is None:
            self._models_response = {}
        if url not in self._models_response:
            self._models_response[url] = httpx.get(f"{url}/models",
                                                   headers={"Authorization": f"Bearer {self._api_key()}"},
                                                   timeout=min(self.timeout, 15.0))
        return self._models_response[url]

    def _api_key(self) -> str:
        # Local servers need no key; the client insists on one, so send a placeholder.
        return os.environ.get(self.api_key_env) or "EMPTY"

    def _prepare(self) -> None:
        if self._checked or not self.check_server:
            return
        for url in self.base_urls:  # every endpoint, before any request: a wrong one is one clear error now
            self._check_endpoint(url)
        self._checked = True

    def _check_endpoint(self, url: str) -> None:
        import httpx

        try:
            r = self._models(url)
        except httpx.HTTPError as exc:
            raise UserError(
                f"cannot reach the OpenAI-compatible server at {url} ({type(exc).__name__}); "
                "start one with `metakl serve` or pass --base-url"
            ) from None
        if r.status_code in (401, 403):
            raise UserError(f"the server at {url} refused the API key from ${self.api_key_env} "
                            f"(HTTP {r.status_code}); set {self.api_key_env}")
        if r.status_code == 200:
            served = [str(m.get("id")) for m in _model_entries(r)]
            if served and self.model not in served:
                raise UserError(f"unknown model '{self.model}' at {url}; it serves: {', '.join(served)}")

    # --- one request ----------------------------------------------------------------------------------------------
    def request_body(self, req: ChatRequest) -> dict[str, Any]:
        """The JSON body this backend sends for `req` (metakl.llm.shape; a batch file holds the same)."""
        return request_body(self.model, req, self.shape, self.json_mode)

    async def _attempt(self, client: Any, index: int, req: ChatRequest, gate: RateGate | None) -> Result:
        """One try of `req` on one endpoint: its Result, or one of TRANSIENT_ERRORS raised for the retry policy."""
        import httpx
        import openai

        headers, retry_after = None, None
        if gate is not None:
            await gate.acquire()
        try:
            # The raw body, not the SDK's typed object: reasoning fields it does not model are kept.
            resp = await client.post("/chat/completions", body=self.request_body(req), cast_to=httpx.Response)
            headers = resp.headers
            return Result(index=index, request=req, completion=parse_completion(resp.json(), self.model))
        except TRANSIENT_ERRORS as exc:
            headers = error_headers(exc)
            retry_after = retry_after_seconds(headers)  # a 429 holds back the whole endpoint (RateGate)
            raise
        except openai.APIStatusError as exc:  # other 4xx: this request is wrong, retrying will not help
            refused = refused_parameter(exc.body, exc.message) if exc.status_code == 400 else None
            if refused:  # every request would be refused alike: stop here, saying what fixes it
                raise UserError(f"{self.base_url} model '{self.model}': {refusal_hint(refused, self.shape)}") from None
            return Result(index=index, request=req, error=describe_error(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a malformed answer must not end the batch
            return Result(index=index, request=req, error=f"{type(exc).__name__}: {exc}")
        finally:
            if gate is not None:
                await gate.release(headers, tokens_per_request=req.max_tokens * req.n, retry_after=retry_after)

    # --- many requests --------------------------------------------------------------------------------------------
    async def _run_all(self, items: list[tuple[int, ChatRequest]], out: "queue.Queue[Any]") -> None:
        from metakl.llm.balance import LeastOutstanding

        clients = self.clients()
        balancer = self.balancer = LeastOutstanding(len(clients))
        todo = iter(items)

        async def worker() -> None:
            for index, req in todo:  # the shared iterator hands each item to exactly one worker
                result = await self.one_balanced(clients, balancer, index, req)
                self._finish(result)
                out.put(result)

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(items)))))
        finally:
            for client in clients:
                await client.close()

    def clients(self) -> list[Any]:
        """One async client per endpoint (call inside the event loop that will use them)."""
        from openai import AsyncOpenAI

        # max_retries=0: the retry policy is metakl.llm.retry's (each attempt passes the RateGate again and may go
        # to another endpoint); each endpoint gets a RateGate that follows its rate-limit headers, capped at
        # `concurrency`.
        self.gates = [RateGate(self.concurrency) for _ in self.base_urls]
        return [AsyncOpenAI(base_url=url, api_key=self._api_key(), timeout=self.timeout, max_retries=0)
                for url in self.base_urls]

    async def one_balanced(self, clients: list[Any], balancer: Any, index: int, req: ChatRequest) -> Result:
        """One request under the retry policy (metakl.llm.retry); each attempt goes to the endpoint with the fewest
        in flight (a failing endpoint is left for another). Spent retries are an error value, not an exception."""
        policy = retry_policy(self.max_attempts, base=self.backoff_base, cap=self.backoff_cap, rng=self._rng,
                              honour_retry_after=len(clients) == 1)
        tries = 0
        try:
            async for attempt in policy:
                with attempt:
                    tries = attempt.retry_state.attempt_number
                    i = balancer.acquire()
                    try:
                        result = await self._attempt(clients[i], index, req, self.gates[i] if i < len(self.gates) else None)
                    finally:
                        balancer.release(i)
                    result.attempts = tries
                    return result
        except TRANSIENT_ERRORS as exc:
            return Result(index=index, request=req, attempts=tries,
                          error=f"gave up after {tries} attempts: {describe_error(exc)}")
        raise AssertionError("unreachable: the policy either returns a result or raises")

    def _generate(self, items: list[tuple[int, ChatRequest]]) -> Iterator[Result]:
        out: queue.Queue[Any] = queue.Queue()
        loop = asyncio.new_event_loop()
        task_box: list[asyncio.Task] = []
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            task = loop.create_task(self._run_all(items, out))
            task_box.append(task)
            try:
                loop.run_until_complete(task)
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # surfaced in the caller's thread
                failure.append(exc)
            finally:
                loop.close()
                out.put(_DONE)

        thread = threading.Thread(target=run, name="metakl-openai", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is _DONE:
                    break
                yield item
            if failure:
                raise failure[0]
        finally:
            if thread.is_alive():  # the caller stopped early: cancel what is in flight
                if task_box:
                    try:
                        loop.call_soon_threadsafe(task_box[0].cancel)
                    except RuntimeError:  # the loop closed in the meantime
                        pass
                thread.join(timeout=30)

