"""What `--executor ray` costs where it cannot help: the same reward + dedup-like work, local vs Ray, on this machine.

Workload: ~20K rows (GSM8K train + MATH test from ../shared/data, questions repeated with a variant number to reach
the count; without the data, generated arithmetic questions stand in), 4 responses each: the gold answer boxed, an
equivalent rewrite, a near miss and the gold again in other words. Work: (1) the reward stage (math-verify in a
process pool), (2) dedup's per-row part, embedding every question with all-MiniLM-L6-v2 (empty embedding caches),
then its driver part, a faiss nearest-neighbour search (the same code under both executors).
Variants, one after the other in this run:
  local   the local executor (one batch per stage, as `metakl run` without --executor)
  ray     a local Ray started here with the usable cores (as `metakl run --executor ray`); its time is split into
          Ray start, worker warm-up (first small batch: imports, math process), reward, embedding, a no-op map over
          the same rows (Arrow blocks out and back: the serialization cost) and shutdown.
The ratio is ray (all of it, start included) over local; target <= 1.3 on 2 cores.

Usage: python benchmarks/executor_overhead.py [--quick] [--rows N]; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks._common import SHARED_DATA  # noqa: E402

TARGET = 1.3
DATA = SHARED_DATA


def questions_and_answers() -> tuple[list[tuple[str, str]], str]:
    from metakl.verify import last_boxed

    pairs: list[tuple[str, str]] = []
    sources = []
    gsm8k = DATA / "gsm8k" / "train.jsonl"
    if gsm8k.exists():
        for line in gsm8k.open():
            r = json.loads(line)
            pairs.append((r["question"], r["answer"].split("####")[-1].strip().replace(",", "")))
        sources.append("GSM8K train")
    for f in sorted((DATA / "math").glob("test*.jsonl")) if (DATA / "math").exists() else []:
        for line in f.open():
            r = json.loads(line)
            ans = last_boxed(r["solution"])
            if ans and len(ans) <= 40:
                pairs.append((r["problem"], ans))
        sources.append(f"MATH {f.stem}")
    if not pairs:
        rng = random.Random(0)
        for i in range(2000):
            a, b = rng.randint(2, 999), rng.randint(2, 999)
            pairs.append((f"A crate holds {a} apples and another {b}. How many apples are there in all?", str(a + b)))
        sources.append("generated arithmetic (no ../shared/data)")
    return pairs, " + ".join(sources)


def build_rows(n: int) -> tuple[list[dict], str]:
    from reward_speed import near_miss, rewrite

    pairs, source = questions_and_answers()
    golds = [a for _, a in pairs]
    rng = random.Random(0)
    rows = []
    for i in range(n):
        question, gold = pairs[i % len(pairs)]
        if i >= len(pairs):  # every text distinct: the embedding cache must not answer repeats
            question = f"{question} (variant {i // len(pairs)})"
        answers = [gold, rewrite(gold, rng), near_miss(gold, golds, rng), gold]
        texts = [f"<think>Work it out step by step.</think> The answer is \\boxed{{{a}}}." for a in answers[:3]]
        texts.append(f"<think>Check: {gold}.</think> So the result is $\\boxed{{{gold}}}$")
        rows.append({"id": f"q{i:06d}", "source": "bench", "domain": "math", "question": question,
                     "reference": gold, "choices": [], "meta": "{}", "errors": [],
                     "responses": [{"text": t, "reasoning": None, "answer": None, "reward": None, "advantage": None,
                                    "model": "bench", "finish_reason": "stop"} for t in texts]})
    return rows, source


def identity_batch(rows, progress=False):
    return rows, {}


def nearest_neighbours(vectors):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, found = index.search(vectors, 2)
    return found


def run_variant(name: str, ds, texts: list[str], cache_dir: Path) -> dict:
    from metakl.executors import LocalExecutor, RayExecutor
    from metakl.stages.reward import reward

    os.environ["METAKL_CACHE_DIR"] = str(cache_dir)  # empty: every text is encoded (Ray workers inherit it)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    executor = LocalExecutor() if name == "local" else RayExecutor()
    times["start"] = time.perf_counter() - t0
    try:
        if name == "ray":
            t = time.perf_counter()
            reward(ds.select(range(min(64, len(ds)))), executor=executor)
            times["warm-up"] = time.perf_counter() - t
        t = time.perf_counter()
        result = reward(ds, executor=executor)
        times["reward"] = time.perf_counter() - t
        t = time.perf_counter()
        vectors, counts = executor.embed(texts, model="all-minilm-l6-v2", max_seq_length=128)
        assert counts.get("encoded") == len(texts), counts  # an empty cache: every text encoded
        times["embed"] = time.perf_counter() - t
        t = time.perf_counter()
        found = nearest_neighbours(vectors)
        times["faiss (driver)"] = time.perf_counter() - t
        if name == "ray":
            t = time.perf_counter()
            executor.map_batches(ds, identity_batch, ds.features)
            times["no-op map (serialization)"] = time.perf_counter() - t
    finally:
        t = time.perf_counter()
        executor.close()
        times["shutdown"] = time.perf_counter() - t
    noop = times.pop("no-op map (serialization)", None)  # a probe, not part of the work
    total = sum(times.values())
    if noop is not None:
        times["no-op map (serialization)"] = noop
    return {"times": times, "total": total, "rows": result.dataset, "vectors": vectors, "found": found,
            "report": result.report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 rows instead of 20,000")
    ap.add_argument("--rows", type=int, default=None)
    args = ap.parse_args()
    n = args.rows or (2000 if args.quick else 20000)
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray is not installed: pip install 'metakl[ray]'")
        print(json.dumps({"bench": "executor_overhead", "skipped": "ray not installed", "pass": None}))
        return
    import numpy as np
    from datasets import Dataset

    from metakl.hardware import cpu_model
    from metakl.schema import features

    rows, source = build_rows(n)
    ds = Dataset.from_list(rows, features=features("responses"))
    texts = [r["question"] for r in rows]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{n} rows x 4 responses ({source}); {cpus} usable cores, {cpu_model()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="metakl-bench-") as tmp:
        local = run_variant("local", ds, texts, Path(tmp) / "local")
        ray_run = run_variant("ray", ds, texts, Path(tmp) / "ray")
    same_rows = local["rows"].to_list() == ray_run["rows"].to_list()
    same_vectors = bool(np.allclose(local["vectors"], ray_run["vectors"], atol=1e-5))
    print(f"\n{'step':28} {'local s':>9} {'ray s':>9}")
    for step in ray_run["times"]:
        lt = local["times"].get(step)
        print(f"{step:28} {lt if lt is not None else float('nan'):9.2f} {ray_run['times'][step]:9.2f}")
    print(f"{'total (no-op probe aside)':28} {local['total']:9.2f} {ray_run['total']:9.2f}")
    ratio = ray_run["total"] / local["total"]
    steady = (ray_run["times"]["reward"] + ray_run["times"]["embed"]) / (local["times"]["reward"] + local["times"]["embed"])
    print(f"\nray / local: {ratio:.2f} (target <= {TARGET}); reward + embed alone (Ray running and warm): {steady:.2f}")
    print(f"same rewards: {same_rows}; same vectors (1e-5): {same_vectors}; "
          f"load average now {os.getloadavg()[0]:.1f}")
    print(json.dumps({"bench": "executor_overhead", "rows": n, "cpus": cpus, "cpu": cpu_model(),
                      "python": platform.python_version(),
                      "local_s": round(local["total"], 2), "ray_s": round(ray_run["total"], 2),
                      "ray_steps_s": {k: round(v, 2) for k, v in ray_run["times"].items()},
                      "local_steps_s": {k: round(v, 2) for k, v in local["times"].items()},
                      "ray_over_local": round(ratio, 3), "warm_ray_over_local": round(steady, 3),
                      "same_results": same_rows and same_vectors, "target": TARGET,
                      "pass": ratio <= TARGET and same_rows and same_vectors}))


if __name__ == "__main__":
    main()
