"""Model requests of a Ray run: one gateway actor owns the request cache, the endpoints and the requests in flight.

Why one actor rather than a backend in every Ray worker: the promises of the request cache (no request sent twice, a
finished request never lost) must survive a worker dying mid-batch. Ray re-runs that worker's batch elsewhere; its
requests come back to the gateway, which still holds them: finished ones are in the cache (committed as each answer
arrives), and ones still in flight are joined (one future per cache key), not sent again. The actor is the cache's
only writer, so the SQLite file needs no sharing between processes or machines, and it sees every request in flight,
which least-outstanding balancing over several endpoints (metakl.llm.balance) needs. Its work is waiting on HTTP,
so one asyncio actor pinned to the driver's node (where the cache folder is) keeps up with many workers.

Accounting counts a batch's requests once: a retried batch asks again for exactly the requests of the batch that
died (the same cache keys in the same order), and that repeated call is counted under `extra` (`repeated_calls`,
`repeated_requests`) instead of again in requests and tokens, so the closing table reads as under the local executor.

Killing the gateway itself loses the requests it had in flight (Ray restarts it; those are sent again).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from typing import Any

from metakl.llm.types import ChatRequest, Result, RunStats


class Gateway:
    """The actor's class (made a Ray actor by `start_gateway`): `complete(requests)` → results in the same order."""

    def __init__(self, llm: Any) -> None:
        self.backend = llm.build()  # its cache, retries and endpoint checks; the gateway sends through it
        if getattr(self.backend, "members", None) is not None:
            from metakl.errors import UserError

            self.backend.close()
            raise UserError("llm.teachers: several teachers run under the local executor only (not yet through "
                            "the Ray gateway)")
        self.kind = self.backend.kind
        self.identity: str | None = None
        self.inflight: dict[str, asyncio.Future] = {}
        self.totals = RunStats()
        self._clients: list[Any] | None = None
        self._balancer: Any = None
        self._slots: asyncio.Semaphore | None = None
        self._sync_lock = threading.Lock()  # an in-process model answers one batch at a time
        self._active = 0
        self._busy_since = 0.0
        self._counted_calls: set[str] = set()  # digests of the calls already in the totals

    def _key(self, req: ChatRequest) -> str:
        if self.identity is None:
            self.identity = self.backend.model_identity()
        return req.key(self.kind, self.identity)

    async def complete(self, requests: list[ChatRequest]) -> list[Result]:
        if self._active == 0:
            self._busy_since = time.perf_counter()
        self._active += 1
        try:
            return await self._complete(requests)
        finally:
            self._active -= 1
            if self._active == 0:  # busy time, not the sum of overlapping calls
                self.totals.seconds += time.perf_counter() - self._busy_since

    async def _complete(self, requests: list[ChatRequest]) -> list[Result]:
        loop = asyncio.get_running_loop()
        keys = [self._key(r) for r in requests]
        cache = self.backend.cache
        cached = cache.get_many(keys) if cache is not None else {}
        results: list[Result | None] = [None] * len(requests)
        waiting: list[tuple[int, asyncio.Future]] = []
        mine: list[tuple[int, ChatRequest, str, asyncio.Future]] = []
        for i, (req, key) in enumerate(zip(requests, keys)):
            if key in cached:
                results[i] = Result(index=i, request=req, completion=cached[key])
            elif key in self.inflight:  # asked by another batch (a retried one) and not answered yet: join it
                waiting.append((i, self.inflight[key]))
            else:
                future = loop.create_future()
                self.inflight[key] = future
                mine.append((i, req, key, future))
        if mine:
            try:
                await asyncio.to_thread(self.backend._prepare)  # checks the endpoints once (blocking HTTP)
                if self.kind == "openai":
                    await asyncio.gather(*(self._send(i, req, key, fut) for i, req, key, fut in mine))
                else:
                    await asyncio.to_thread(self._generate_here, mine, loop)
            except BaseException as exc:
                for _, _, key, fut in mine:
                    self.inflight.pop(key, None)
                    if not fut.done():
                        fut.set_exception(exc)
                raise
            self.totals.backend_calls += len(mine)
            for i, _, _, fut in mine:
                results[i] = fut.result()
        for i, fut in waiting:
            got = await asyncio.shield(fut)
            results[i] = Result(index=i, request=requests[i], completion=got.completion, error=got.error)
        extra = self.totals.extra
        extra["joined_in_flight"] = extra.get("joined_in_flight", 0) + len(waiting)
        call = hashlib.sha256("\n".join(keys).encode()).hexdigest()
        if call in self._counted_calls:  # a retried batch: its requests are in the totals already
            extra["repeated_calls"] = extra.get("repeated_calls", 0) + 1
            extra["repeated_requests"] = extra.get("repeated_requests", 0) + len(requests)
        else:
            self._counted_calls.add(call)
            for result in results:
                self.totals.add(result)
        return results  # type: ignore[return-value]

    async def _send(self, index: int, req: ChatRequest, key: str, future: asyncio.Future) -> None:
        from metakl.llm.balance import LeastOutstanding

        if self._clients is None:
            self._clients = self.backend.clients()
            self._balancer = self.backend.balancer = LeastOutstanding(len(self._clients))
            self._slots = asyncio.Semaphore(self.backend.concurrency)
        async with self._slots:
            result = await self.backend.one_balanced(self._clients, self._balancer, index, req)
        self._commit(key, result, future)

    def _generate_here(self, mine: list[tuple[int, ChatRequest, str, asyncio.Future]], loop: Any) -> None:
        """An in-process model (transformers, vllm) in the gateway: its own batching, one call at a time."""
        by_index = {i: (key, future) for i, _, key, future in mine}
        with self._sync_lock:
            for result in self.backend._generate([(i, req) for i, req, _, _ in mine]):
                key, future = by_index[result.index]
                loop.call_soon_threadsafe(self._commit, key, result, future)

    def _commit(self, key: str, result: Result, future: asyncio.Future) -> None:
        # Into the cache as soon as it arrives: a batch retried later, or a re-run, finds it there.
        if result.ok and self.backend.cache is not None:
            self.backend.cache.put(key, result.completion)
        self.inflight.pop(key, None)
        if not future.done():
            future.set_result(result)

    def prepare(self) -> str | None:
        """Check the endpoints now, on the driver's schedule: a UserError's message (one line), or None."""
        from metakl.errors import UserError

        try:
            self.backend._prepare()
        except UserError as exc:
            return str(exc)
        return None

    def stats(self) -> dict[str, Any]:
        totals = self.totals.as_dict()
        if self._active:  # a call in progress counts up to now
            totals["seconds"] += time.perf_counter() - self._busy_since
        if self._balancer is not None:
            totals["extra"] = {**totals["extra"], **{f"endpoint_{i}_requests": n
                                                     for i, n in enumerate(self._balancer.sent)}}
        return totals

    def close(self) -> None:
        self.backend.close()


class GatewayClient:
    """What a stage receives as `backend` under Ray: `generate_all`/`generate` and `stats`, like a local backend.

    It travels to Ray workers with the actor's handle; only the driver's copy (`owner`) ends the actor on close().
    """

    def __init__(self, actor: Any, kind: str, model: str, owner: bool = True) -> None:
        self.actor = actor
        self.kind = kind
        self.model = model
        self.owner = owner

    def __reduce__(self):
        return GatewayClient, (self.actor, self.kind, self.model, False)

    def generate_all(self, requests: Any, progress: bool = False) -> list[Result]:
        import ray

        from metakl.errors import UserError

        try:
            return ray.get(self.actor.complete.remote(list(requests)))
        except ray.exceptions.RayTaskError as exc:  # e.g. a parameter the server refuses: its one line, not Ray's
            cause = getattr(exc, "cause", None)
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from None
            raise

    def generate(self, requests: Any, progress: bool = False):
        yield from self.generate_all(requests, progress)

    @property
    def stats(self) -> RunStats:
        import ray

        return RunStats(**ray.get(self.actor.stats.remote()))

    def close(self) -> None:
        if not self.owner:
            return
        import ray

        try:
            ray.get(self.actor.close.remote(), timeout=30)
        finally:
            ray.kill(self.actor)

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def start_gateway(llm: Any) -> GatewayClient:
    """A gateway actor for the model options `llm` (LLMOptions), on this driver's node, and its client."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    # num_cpus=0: it waits on HTTP and must not take a CPU from the batches; restarted if it dies (the cache stays).
    actor = ray.remote(Gateway).options(num_cpus=0, max_concurrency=1000, scheduling_strategy=here,
                                        max_restarts=-1, max_task_retries=-1).remote(llm)
    from metakl.errors import UserError

    try:
        problem = ray.get(actor.prepare.remote())
    except ray.exceptions.RayError as exc:  # the backend could not be built in the actor
        cause = getattr(exc, "cause", None) or exc
        raise UserError(f"llm gateway: {str(cause).strip().splitlines()[-1]}") from None
    if problem:
        ray.kill(actor)
        raise UserError(problem)
    kind = getattr(getattr(llm, "backend", None), "value", None) or ("openai" if llm.base_url else "transformers")
    return GatewayClient(actor, kind, llm.model)
