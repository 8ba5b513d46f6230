"""How much does the openai backend (cache, retries, accounting, threads) cost over a bare AsyncOpenAI loop?

The same requests against the same vLLM server: (a) through metakl's openai backend with a fresh cache, (b) through
a bare AsyncOpenAI loop with the same concurrency, (c) through the backend again with the cache warm.
(a) and (b) alternate a-b-b-a in each round, so that drift in the server's speed cancels; (a)/(b) is the median
of the rounds' ratios.
Targets: (a)/(b) <= 1.10 and (c)/(a) <= 0.03.

The batch path (--batch): submit + poll + download + parse of --batch-requests (10K) requests through metakl's batch
backend against a local fake batch server (tests/batch_server.py: OpenAI Batch API shapes, in this process), batch
files of 1000, polling without waits; client overhead per request is the client thread's CPU time (the server runs
in other threads) and, as an upper bound, the wall time including the fake server. Target: <= 2 ms per request.

    python benchmarks/llm_overhead.py                      # starts its own server (embedded SmolLM2)
    python benchmarks/llm_overhead.py --base-url http://127.0.0.1:8011/v1 --quick
    python benchmarks/llm_overhead.py --batch-only          # only the batch path (no vLLM server needed)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metakl.llm import ChatRequest, get_backend  # noqa: E402

MODEL = "smollm2-135m-instruct"
TOPICS = ["rivers", "bread", "stars", "chess", "rain", "bridges", "owls", "glass", "maps", "tea", "clocks", "salt",
          "wind", "paper", "honey", "iron"]


def make_requests(count: int, max_tokens: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"Tell me fact number {i} about {TOPICS[i % len(TOPICS)]}."}],
                        max_tokens=max_tokens, temperature=0.0) for i in range(count)]


def run_backend(url: str, requests: list[ChatRequest], concurrency: int, cache_dir: str) -> tuple[float, int]:
    start = time.perf_counter()
    with get_backend("openai", MODEL, base_url=url, concurrency=concurrency, cache_dir=cache_dir) as llm:
        results = llm.generate_all(requests, progress=False)
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return elapsed, sum(r.completion.completion_tokens for r in results)


def run_raw(url: str, requests: list[ChatRequest], concurrency: int) -> tuple[float, int]:
    from openai import AsyncOpenAI

    async def main() -> int:
        client = AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0)
        gate = asyncio.Semaphore(concurrency)

        async def one(req: ChatRequest) -> int:
            async with gate:
                resp = await client.chat.completions.create(
                    model=MODEL, messages=list(req.messages), n=req.n, temperature=req.temperature, top_p=req.top_p,
                    max_tokens=req.max_tokens)
                return resp.usage.completion_tokens

        try:
            return sum(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await client.close()

    start = time.perf_counter()
    tokens = asyncio.run(main())
    return time.perf_counter() - start, tokens


def measure(url: str, args: argparse.Namespace) -> dict:
    requests = make_requests(args.requests, args.max_tokens)
    run_raw(url, make_requests(8, 4), 8)  # warm-up: first connections, server-side compilation of shapes
    backend_s = raw_s = 0.0
    ratios = []
    # Client CPU time (this process: all threads) is steadier than wall time on a shared machine.
    cpu = {"backend": 0.0, "raw": 0.0}
    last_cache = ""
    for round_no in range(args.rounds):
        # a-b-b-a: a drift in the server's speed during the round hits both variants alike.
        times = {"backend": 0.0, "raw": 0.0}
        for variant in ("backend", "raw", "raw", "backend"):
            cpu_start = time.process_time()
            if variant == "backend":
                last_cache = tempfile.mkdtemp(prefix="metakl-bench-cache-")
                s, t = run_backend(url, requests, args.concurrency, last_cache)
            else:
                s, t = run_raw(url, requests, args.concurrency)
            times[variant] += s
            cpu[variant] += time.process_time() - cpu_start
            print(f"  round {round_no + 1} {variant:8s} {s:7.2f} s  {t / s:7.0f} tok/s", file=sys.stderr)
        ratios.append(times["backend"] / times["raw"])
        backend_s += times["backend"]
        raw_s += times["raw"]
    cached_s, _ = run_backend(url, requests, args.concurrency, last_cache)
    runs = 2 * args.rounds
    a, b, c = backend_s / runs, raw_s / runs, cached_s
    # The median of the per-round ratios resists a round spoiled by other work on the machine.
    over = statistics.median(ratios)
    return {"bench": "llm_overhead", "requests": len(requests), "concurrency": args.concurrency,
            "max_tokens": args.max_tokens, "rounds": args.rounds, "backend_s": round(a, 3), "raw_s": round(b, 3),
            "cached_s": round(c, 4), "round_ratios": [round(r, 3) for r in ratios],
            "client_cpu_ms_per_request": {k: round(1000 * v / (runs * len(requests)), 3) for k, v in cpu.items()},
            "backend_over_raw": round(over, 3), "cached_over_backend": round(c / a, 4),
            "targets": {"backend_over_raw": 1.10, "cached_over_backend": 0.03},
            "pass": over <= 1.10 and c / a <= 0.03}


def measure_batch(count: int, batch_size: int = 1000) -> dict:
    """The batch path's client overhead: `count` requests through submit, poll, download, parse and cache writes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from batch_server import FakeBatchServer

    import metakl.io  # noqa: F401  (the batch state's atomic writes; a stage has it loaded already)
    from metakl.llm.options import LLMOptions
    from metakl.llm.scope import stage_scope

    requests = make_requests(count, 16)
    with FakeBatchServer("bench-model", polls=1) as server, tempfile.TemporaryDirectory() as tmp:
        options = LLMOptions(model="bench-model", base_url=server.url, cache_dir=str(Path(tmp) / "cache"), batch=True,
                             batch_size=batch_size, batch_poll=0.0)
        with stage_scope(Path(tmp) / "stage"):
            backend = options.build()
        with backend:
            wall, cpu = time.perf_counter(), time.thread_time()
            results = backend.generate_all(requests, progress=False)
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        assert all(r.ok for r in results) and server.created == -(-count // batch_size)
        assert sorted(set(server.sent.values())) == [1]
    per_request = 1000 * cpu / count
    return {"bench": "llm_overhead_batch", "requests": count, "batch_size": batch_size, "batches": server.created,
            "status_checks": server.status_checks, "wall_s": round(wall, 3), "client_cpu_s": round(cpu, 3),
            "client_ms_per_request": round(per_request, 4), "wall_ms_per_request": round(1000 * wall / count, 4),
            "target_ms_per_request": 2.0, "pass": per_request <= 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("METAKL_BENCH_VLLM_URL"),
                        help="An OpenAI-compatible server serving smollm2-135m-instruct (default: start one).")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="a-b-b-a rounds (each runs both variants twice)")
    parser.add_argument("--quick", action="store_true", help="32 requests of 16 tokens")
    parser.add_argument("--batch-requests", type=int, default=10000, help="requests of the batch path (0: skip it)")
    parser.add_argument("--batch-only", action="store_true", help="only the batch path (no vLLM server)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.max_tokens, args.rounds = 32, 16, 1
    batch = measure_batch(args.batch_requests) if args.batch_requests else None
    if args.batch_only:
        print_batch(batch)
        return
    if args.base_url:
        result = measure(args.base_url, args)
    else:
        from metakl.llm.serve import VLLMServer

        print("starting a vLLM server ...", file=sys.stderr)
        with VLLMServer(MODEL) as server:
            result = measure(server.url, args)
    print(f"{'variant':34s} {'seconds':>9s}")
    print(f"{'(a) metakl openai backend':34s} {result['backend_s']:9.3f}")
    print(f"{'(b) bare AsyncOpenAI loop':34s} {result['raw_s']:9.3f}")
    print(f"{'(c) backend, warm cache':34s} {result['cached_s']:9.4f}")
    cpu_ms = result["client_cpu_ms_per_request"]
    print(f"client CPU per request: backend {cpu_ms['backend']:.2f} ms, bare loop {cpu_ms['raw']:.2f} ms")
    print(f"(a)/(b) = {result['backend_over_raw']:.3f} (median of rounds {result['round_ratios']}; target <= 1.10)   "
          f"(c)/(a) = {result['cached_over_backend']:.4f} (target <= 0.03)")
    print(json.dumps(result))
    print_batch(batch)


def print_batch(batch: dict | None) -> None:
    if batch is None:
        return
    print(f"{'(d) batch path, ' + str(batch['requests']) + ' requests':34s} {batch['wall_s']:9.3f}   "
          f"({batch['batches']} batches, {batch['status_checks']} status checks)")
    print(f"batch client overhead: {batch['client_ms_per_request']:.3f} ms per request (client thread CPU; target "
          f"<= 2 ms), {batch['wall_ms_per_request']:.3f} ms wall including the fake server")
    print(json.dumps(batch))


if __name__ == "__main__":
    main()
