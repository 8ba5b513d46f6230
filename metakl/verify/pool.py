"""Batch math checking in worker processes with a per-item timeout.

Each worker compares pairs with `check_pair` (its own interval timer stops most slow sympy work) and reports
every item as it finishes. The parent watches the time since each worker's last report: a worker stuck past the
hard deadline (a stall inside C code that no signal interrupts) is killed, its current item is marked `timeout`,
the rest of its chunk goes back to the queue and a fresh worker takes over. So one pathological expression costs
one timeout, never the batch.

Cheap pairs never reach the pool: the string/number fast path and a cache of earlier (gold, pred) verdicts answer
them in the parent.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Iterable, Sequence

from metakl.verify.mathcheck import ERROR, TIMEOUT, MathCheck, check_pair, fast_check, timer_available

_CACHE_LIMIT = 200_000


def default_workers() -> int:
    from metakl.hardware import usable_cores

    return usable_cores()


def _silence_math_verify() -> None:
    # We bound the time ourselves; math-verify would warn once per process that its own timeout is off.
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)


def _worker_main(conn, timeout: float | None, use_timer: bool) -> None:
    _silence_math_verify()
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        if chunk is None:
            conn.send(("cpu", time.process_time()))  # for the pool's accounting (benchmarks)
            return
        for i, gold, pred in chunk:
            r = check_pair(gold, pred, timeout if use_timer else None)
            conn.send((i, r.equal, r.status, r.detail))


class _Worker:
    def __init__(self, ctx, timeout: float | None, use_timer: bool):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, timeout, use_timer), daemon=True)
        self.proc.start()
        child.close()
        self.chunk: list[tuple[int, str, str]] = []
        self.done = 0
        self.last = time.monotonic()

    @property
    def busy(self) -> bool:
        return self.done < len(self.chunk)

    def give(self, chunk: list[tuple[int, str, str]]) -> None:
        self.chunk, self.done, self.last = chunk, 0, time.monotonic()
        self.conn.send(chunk)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def stop(self) -> float:
        """Stop the worker; returns the CPU seconds it used (0 when it could not tell)."""
        cpu = 0.0
        try:
            self.conn.send(None)
            if self.conn.poll(2):
                msg = self.conn.recv()
                cpu = float(msg[1]) if isinstance(msg, tuple) and msg[0] == "cpu" else 0.0
        except (OSError, EOFError):
            pass
        self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=2)
        self.conn.close()
        return cpu


class MathPool:
    """Compare many (gold, pred) answer pairs; every item gets a MathCheck, timeouts included.

    timeout: seconds per item. in_worker_timer: let workers stop slow items themselves (cheap); the parent's hard
    deadline (timeout plus a grace) catches what the timer cannot. Use as a context manager or call close().
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout: float = 5.0,
        chunk_size: int = 32,
        in_worker_timer: bool = True,
        cache: bool = True,
    ):
        self.workers = workers or default_workers()
        self.timeout = timeout
        self.chunk_size = max(1, chunk_size)
        self.in_worker_timer = in_worker_timer
        self.hard_timeout = timeout + max(1.0, 0.5 * timeout) if in_worker_timer else timeout
        self._cache: dict[tuple[str, str], MathCheck] | None = {} if cache else None
        self._pool: list[_Worker] = []
        self._ctx = _context()
        self._lock = threading.Lock()
        self.stats = {"items": 0, "fast_path": 0, "cache_hits": 0, "pool_items": 0, "timeouts": 0, "restarts": 0,
                      "worker_cpu_s": 0.0}

    def __enter__(self) -> "MathPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for w in self._pool:
            self.stats["worker_cpu_s"] += w.stop()
        self._pool = []

    def check(self, pairs: Iterable[tuple[str, str]], progress: bool = False) -> list[MathCheck]:
        """A MathCheck per pair, in order. progress: a tqdm bar over the pairs sent to the workers."""
        with self._lock:  # one batch at a time per pool
            return self._check(list(pairs), progress)

    def _check(self, pairs: list[tuple[str, str]], progress: bool = False) -> list[MathCheck]:
        out: list[MathCheck | None] = [None] * len(pairs)
        todo: dict[tuple[str, str], list[int]] = {}
        self.stats["items"] += len(pairs)
        for i, (gold, pred) in enumerate(pairs):
            gold, pred = gold or "", pred or ""
            fast = fast_check(gold, pred)
            if fast is not None:
                out[i] = fast
                self.stats["fast_path"] += 1
                continue
            key = (gold, pred)
            if self._cache is not None and key in self._cache:
                out[i] = self._cache[key]
                self.stats["cache_hits"] += 1
                continue
            todo.setdefault(key, []).append(i)
        if todo:
            keys = list(todo)
            self.stats["pool_items"] += len(keys)
            for key, result in zip(keys, self._run(keys, progress)):
                if self._cache is not None and result.status != ERROR:
                    if len(self._cache) >= _CACHE_LIMIT:
                        self._cache.clear()
                    self._cache[key] = result
                for i in todo[key]:
                    out[i] = result
        return out  # type: ignore[return-value]

    def _run(self, keys: Sequence[tuple[str, str]], progress: bool = False) -> list[MathCheck]:
        results: list[MathCheck | None] = [None] * len(keys)
        from metakl.progress import bar as progress_bar

        bar = progress_bar(len(keys), "math-verify", "pair", enabled=progress)
        items = [(i, g, p) for i, (g, p) in enumerate(keys)]
        # Small chunks when there are few items: slow items (matrices, intervals) then spread over the workers.
        size = max(1, min(self.chunk_size, -(-len(items) // (4 * self.workers))))
        queue = deque(items[k : k + size] for k in range(0, len(items), size))
        while len(self._pool) < min(self.workers, len(queue)):
            self._pool.append(_Worker(self._ctx, self.timeout, self.in_worker_timer))
        remaining = len(items)
        while remaining:
            for w in self._pool:
                if not w.busy and queue:
                    w.give(queue.popleft())
            busy = [w for w in self._pool if w.busy]
            now = time.monotonic()
            wait_s = max(0.0, min(w.last + self.hard_timeout - now for w in busy))
            ready = set(wait([w.conn for w in busy], timeout=wait_s))
            for idx, w in enumerate(self._pool):
                if not w.busy:
                    continue
                if w.conn in ready:
                    try:
                        while w.busy and w.conn.poll():
                            i, equal, status, detail = w.conn.recv()
                            results[i] = MathCheck(equal, status, detail)
                            w.done += 1
                            w.last = time.monotonic()
                            remaining -= 1
                            self.stats["timeouts"] += status == TIMEOUT
                            if bar is not None:
                                bar.update(1)
                        continue
                    except (EOFError, OSError):
                        failure = MathCheck(False, ERROR, "worker process died")
                elif time.monotonic() - w.last > self.hard_timeout:
                    failure = MathCheck(False, TIMEOUT, f"no answer within {self.hard_timeout:.1f}s; worker killed")
                    self.stats["timeouts"] += 1
                else:
                    continue
                # The item in progress fails; the rest of the chunk goes back to the queue.
                stuck = w.chunk[w.done]
                results[stuck[0]] = failure
                remaining -= 1
                rest = w.chunk[w.done + 1 :]
                if rest:
                    queue.appendleft(rest)
                w.kill()
                self._pool[idx] = _Worker(self._ctx, self.timeout, self.in_worker_timer)
                self.stats["restarts"] += 1
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return results  # type: ignore[return-value]


def _context():
    # forkserver: workers start from a clean, single-threaded server (the caller may hold threads, e.g. an HTTP
    # client), with sympy and math-verify imported once up front.
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["metakl.verify._warmup"])
        return ctx
    return mp.get_context("spawn")


_shared: MathPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> MathPool:
    """A process-wide pool, started on first use and closed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MathPool()
            atexit.register(_shared.close)
        return _shared


def check_math_batch(pairs: Iterable[tuple[str, str]], *, timeout: float = 5.0, workers: int | None = None) -> list[MathCheck]:
    """Compare (gold, pred) pairs in worker processes; see MathPool. A custom timeout/workers uses a fresh pool."""
    if timeout == 5.0 and workers is None:
        return shared_pool().check(pairs)
    with MathPool(workers=workers, timeout=timeout) as pool:
        return pool.check(pairs)


def math_equal(gold: str, pred: str, timeout: float = 5.0) -> bool:
    """True when `pred` is mathematically equivalent to `gold` (answer strings, e.g. "\\frac{1}{2}" and "0.5").

    On the main thread the check runs here under a timer; elsewhere (or while another timer runs) it goes to a
    worker process, since the timer only works on the main thread. A timeout or parse failure counts as not equal.
    """
    fast = fast_check(gold or "", pred or "")
    if fast is not None:
        return fast.equal
    if timer_available():
        _silence_math_verify()
        return check_pair(gold or "", pred or "", timeout).equal
    if timeout == 5.0:
        return shared_pool().check([(gold, pred)])[0].equal
    return check_math_batch([(gold, pred)], timeout=timeout)[0].equal


_PROCESS_POOLS: dict[tuple[int, float], MathPool] = {}


def process_pool(workers: int | None, timeout: float) -> MathPool:
    """This process's own MathPool, reused by every batch it runs (executor workers: reward, score). A worker holds
    one CPU, so one math process by default; starting a pool per batch would cost more than the checks."""
    key = (workers or 1, timeout)
    if key not in _PROCESS_POOLS:
        _PROCESS_POOLS[key] = MathPool(workers=key[0], timeout=timeout)
    return _PROCESS_POOLS[key]
