"""Math answers verified per second: the process pool (fast paths, cache) against plain loops.

Workload: "typical short answers": (gold, prediction) pairs from the Qwen2.5-Math example (800 real responses,
answers extracted by metakl.verify) and from MATH test answers paired with an equivalent rewrite, the same string
or another problem's answer. Without ../shared/data a built-in list stands in. Variants, side by side:
  naive loop      math-verify parse + verify per pair, in one process (its own signal timeouts)
  fast-path loop  metakl.verify.check_pair per pair (string/number fast path first), in one process
  pool, cold      MathPool with all cores, empty cache (fast path in the parent, sympy in workers)
  pool, warm      the same pool again on the same pairs (the cache answers repeats)
Each loop runs in a fresh process so that math-verify's own caches start empty.

Usage: python benchmarks/reward_speed.py [--quick]; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SHARED_DATA  # noqa: E402

TARGET = 2000.0  # answers per second
DATA = SHARED_DATA
FALLBACK = ["12", "\\frac{1}{2}", "3\\sqrt{2}", "x^2+1", "(1,2)", "-4", "\\pi", "0.25", "\\frac{\\sqrt{3}}{2}", "7",
            "2x-3", "[0,1)", "10", "\\dfrac{5}{6}", "48^\\circ", "1000", "\\{1,2,3\\}", "e^2", "\\infty", "y=2x+1"]


def rewrite(ans: str, rng: random.Random) -> str:
    """An equivalent way to write an answer (what a model might print)."""
    options = [
        ans.replace("\\frac", "\\dfrac"),
        ans.replace(" ", ""),
        f"${ans}$",
        re.sub(r"\\frac\{(\d+)\}\{(\d+)\}", r"\1/\2", ans),
        ans + " ",
    ]
    return rng.choice(options)


def near_miss(ans: str, golds: list[str], rng: random.Random) -> str:
    """A wrong answer of the same shape, as models make them: a nearby number, else another problem's answer."""
    m = re.fullmatch(r"-?\d+", ans.strip())
    if m:
        return str(int(ans) + rng.choice([-2, -1, 1, 2, 10]))
    m = re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", ans.strip())
    if m:
        return f"\\frac{{{int(m.group(1)) + 1}}}{{{m.group(2)}}}"
    return rng.choice(golds)


def workload(n: int, seed: int = 0, hard: bool = False) -> tuple[list[tuple[str, str]], str]:
    """hard=False: typical (real responses; wrong answers near the right one). hard=True: every wrong answer is a
    random other problem's answer (intervals against numbers, ...), which sends far more pairs to sympy."""
    from metakl.verify import extract_answer, last_boxed

    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    src = []
    qwen = DATA / "qwen25math_rm_maj_example" / "math_cot_100.jsonl"
    if qwen.exists():
        for line in qwen.open():
            r = json.loads(line)
            pairs += [(r["answer"], extract_answer(t, "math") or "") for t in r["response"]]
        src.append("qwen25math 800")
    golds = []
    for f in sorted((DATA / "math").glob("test*.jsonl")) if (DATA / "math").exists() else []:
        for line in f.open():
            ans = last_boxed(json.loads(line)["solution"])
            if ans and len(ans) <= 40:
                golds.append(ans)
    if golds:
        src.append("MATH test answers")
    else:
        golds = FALLBACK * 50
        src.append("built-in answers")
    while len(pairs) < n:
        g = rng.choice(golds)
        kind = rng.random()
        wrong = rng.choice(golds) if hard else near_miss(g, golds, rng)
        pred = g if kind < 0.3 else rewrite(g, rng) if kind < 0.7 else wrong
        pairs.append((g, pred))
    rng.shuffle(pairs)
    return pairs[:n], " + ".join(src)


def _naive(pairs, q):
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from math_verify import parse, verify

    t = time.perf_counter()
    out = []
    for g, p in pairs:
        wrap = lambda s: s if "\\boxed" in s else "\\boxed{" + s + "}"  # noqa: E731
        out.append(bool(verify(parse(wrap(g)), parse(wrap(p)))))
    q.put((time.perf_counter() - t, out))


def _fast_loop(pairs, q):
    from metakl.verify.mathcheck import check_pair
    from metakl.verify.pool import _silence_math_verify

    _silence_math_verify()
    t = time.perf_counter()
    out = [check_pair(g, p, 5.0).equal for g, p in pairs]
    q.put((time.perf_counter() - t, out))


def in_fresh_process(fn, pairs):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=fn, args=(pairs, q))
    proc.start()
    seconds, out = q.get()
    proc.join()
    return seconds, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer pairs")
    ap.add_argument("--pairs", type=int, default=None)
    args = ap.parse_args()
    n = args.pairs or (1500 if args.quick else 6000)
    pairs, source = workload(n)

    from metakl.verify import MathPool
    from metakl.verify.pool import default_workers

    rows = []
    naive_s, naive_out = in_fresh_process(_naive, pairs)
    rows.append(("naive loop (math-verify)", naive_s))
    fast_s, fast_out = in_fresh_process(_fast_loop, pairs)
    rows.append(("fast-path loop", fast_s))
    workers = default_workers()
    start_t = time.perf_counter()
    pool = MathPool(workers=workers, timeout=5.0)
    pool.check([(f"x+{k}", f"{k}+x") for k in range(workers)])  # start the workers (reported separately)
    startup = time.perf_counter() - start_t
    pool._cache.clear()
    stats0 = dict(pool.stats)
    t, c = time.perf_counter(), time.process_time()
    cold = pool.check(pairs)
    cold_s, parent_cpu = time.perf_counter() - t, time.process_time() - c
    stats = {k: pool.stats[k] - stats0[k] for k in pool.stats}
    t = time.perf_counter()
    warm = pool.check(pairs)
    warm_s = time.perf_counter() - t
    pool.close()
    worker_cpu = pool.stats["worker_cpu_s"]
    # The machine is shared: wall time depends on what else runs. CPU time does not: the cold pass needs
    # parent_cpu (fast path, dispatch) plus worker_cpu spread over the workers, so on idle cores it would take about
    projected_s = parent_cpu + worker_cpu / workers
    hard_pairs, _ = workload(n, seed=1, hard=True)
    with MathPool(workers=workers, timeout=5.0) as hard_pool:
        hard_pool.check([(f"x+{k}", f"{k}+x") for k in range(workers)])
        t = time.perf_counter()
        hard_pool.check(hard_pairs)
        hard_s = time.perf_counter() - t
        hard_sympy = hard_pool.stats["pool_items"] - workers
    rows.append((f"pool, cold ({workers} workers)", cold_s))
    rows.append(("pool, warm (cache)", warm_s))
    rows.append(("pool, cold, hard mix", hard_s))

    agree_naive = sum(a == b.equal for a, b in zip(naive_out, cold)) / n
    agree_fast = sum(a == b.equal for a, b in zip(fast_out, cold)) / n
    assert [c.equal for c in cold] == [w.equal for w in warm]
    print(f"workload: {n} pairs from {source}; {workers} cores; pool start-up {startup:.2f} s (not counted)")
    print(f"{'variant':32} {'seconds':>8} {'answers/s':>10} {'vs naive':>8}")
    for name, s in rows:
        print(f"{name:32} {s:8.3f} {n / s:10.0f} {naive_s / s:8.1f}x")
    print(f"cold pass: {stats['fast_path']} fast path, {stats['cache_hits']} cache hits (repeats in the batch), "
          f"{stats['pool_items']} sent to workers, {stats['timeouts']} timeouts")
    print(f"cold pass CPU: parent {parent_cpu:.2f} s (fast path for {stats['fast_path']} pairs, dispatch), workers "
          f"{worker_cpu:.2f} s (sympy for {stats['pool_items']} pairs, {1000 * worker_cpu / max(1, stats['pool_items']):.0f} ms each); "
          f"on {workers} idle cores: ~{projected_s:.2f} s = {n / projected_s:.0f} answers/s")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (others share this machine)")
    print(f"hard mix (random wrong answers): {hard_sympy} of {n} pairs needed sympy")
    print(f"verdicts: pool agrees with the naive loop on {agree_naive:.4f}, with the fast-path loop on {agree_fast:.4f}")
    cold_rate = n / cold_s
    print(json.dumps({
        "bench": "reward_speed", "pairs": n, "workers": workers,
        "naive_loop_per_s": round(n / naive_s), "fast_loop_per_s": round(n / fast_s),
        "pool_cold_per_s": round(cold_rate), "pool_warm_per_s": round(n / warm_s),
        "pool_cold_cpu_projection_per_s": round(n / projected_s), "load_average": round(os.getloadavg()[0], 1),
        "pool_over_naive": round(naive_s / cold_s, 2), "hard_mix_per_s": round(n / hard_s), "sent_to_workers": stats["pool_items"],
        "agreement_with_naive": round(agree_naive, 4), "target_per_s": TARGET, "pass": cold_rate >= TARGET, "pass_cpu_projection": n / projected_s >= TARGET,
    }))


if __name__ == "__main__":
    main()
