"""Semantic dedup speed: seconds, peak memory and pair recall of the clustered search at 100K, 300K and 1M vectors.

The vectors are real all-MiniLM-L6-v2 embeddings (dimension 384) of ~5K prompts from ../shared/data, tiled with noise:
copy i is normalize(base[i mod B] + s_i * g_i) with g_i Gaussian and s_i drawn in [0.03, 0.06], so copies of one prompt
are related prompts on its topic (cosine 0.4 to 0.75 to each other), not duplicates; then 3% of the rows are replaced
by near-copies of other rows (noise 0.003 to 0.02: cosine 0.93 to 0.998), so the share of duplicates is the same at
every N, as in real data. Each size runs in its own process
(peak memory = that process's high-water mark, vectors included) with 2 threads, and compares side by side:

- `clustered`: the default search (⌈N/1000⌉ clusters, each point compared with its 3 nearest clusters)
- `semdedup`: the same clusters, each point compared within its own cluster only (nprobe 1, SemDeDup's search)

Recall = share of the pairs at cosine >= 1 - ε (ε = 0.08, the math and general default) that the clustered search
compares, among the pairs exact search finds from a sample of 2,000 rows drawn from the near-copies (uniform rows
would hold too few duplicate pairs to measure 0.99: 3% of 1,000 rows is 30 pairs). The scaling exponent is the slope of log(seconds) against log(N), next to the slope
N log N would have over the same sizes. Also: embedding throughput (texts/s) of prompts with an empty cache and a
warm one.

    python benchmarks/dedup_speed.py            # 100K, 300K, 1M
    python benchmarks/dedup_speed.py --quick    # 20K, 50K, 100K

Targets (2 cores, embeddings given): 1M in <= 120 s and <= 4 GB, recall >= 0.99, exponent <= 1.25 (N log N: ~1.08;
N^1.5 would be 1.5). The last line is one JSON object with the figures, the targets and "pass".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SHARED_DATA  # noqa: E402

SHARED = SHARED_DATA
SOURCES = [  # (preset, path under SHARED): short prompts, cheap to embed; tests/test_dedup.py's real-data test reads them too
    ("advbench-csv", "advbench/harmful_behaviors.csv"),
    ("harmbench-csv", "harmbench/harmbench_behaviors_text_all.csv"),
    ("refusal-harmful", "refusal_direction_splits/harmful_train.json"),
    ("refusal-harmful", "refusal_direction_splits/harmful_val.json"),
    ("refusal-harmful", "refusal_direction_splits/harmful_test.json"),
    ("xstest", "xstest/xstest_prompts.csv"),
    ("hh-rlhf", "hh_rlhf_harmless_base/test.jsonl"),
    ("mmlu-csv", "mmlu/dev"),
    ("csqa2", "csqa2/CSQA2_train.json"),
]
NOISE = (0.03, 0.06)  # copies of one base prompt: related, not duplicates
DUP_SHARE = 0.03  # rows replaced by near-copies of other rows
DUP_NOISE = (0.003, 0.02)
THREADS = 2
RECALL_QUERIES = 2000


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def prompts() -> list[str]:
    from metakl.stages.dedup.stage import embedding_texts
    from metakl.stages.ingest import IngestConfig, SourceSpec, ingest, load_preset

    specs = [SourceSpec(str(SHARED / path), load_preset(preset)) for preset, path in SOURCES if (SHARED / path).exists()]
    ds = ingest(specs, IngestConfig(limit=1200)).dataset
    return embedding_texts(ds["question"], ds["choices"])


def embed_base(texts: list[str], sample: int, work: Path) -> tuple[Path, dict]:
    """The base vectors (user cache: warm after the first run) and the cold/warm throughput on `sample` texts."""
    import numpy as np
    import torch

    from metakl.embed import Embedder

    torch.set_num_threads(THREADS)
    emb = Embedder()
    texts = emb.shorten(texts)
    t = time.perf_counter()
    base = emb(texts, progress=sys.stderr.isatty())
    base_seconds = time.perf_counter() - t
    path = work / "base.npy"
    np.save(path, base)
    # Throughput: an empty cache folder, then the same texts again through a new embedder on that folder.
    cache = work / "cache"
    cold = Embedder(cache_dir=cache)
    some = texts[:sample]
    t = time.perf_counter()
    cold(some)
    cold_s = time.perf_counter() - t
    warm = Embedder(cache_dir=cache)
    t = time.perf_counter()
    warm(some)
    warm_s = time.perf_counter() - t
    assert cold.stats.encoded == len(set(some)) and warm.stats.encoded == 0
    return path, {"base_vectors": len(base), "base_embed_seconds": round(base_seconds, 2),
                  "base_encoded": emb.stats.encoded, "throughput_texts": len(some),
                  "embed_cold_texts_s": round(len(some) / cold_s, 1), "embed_warm_texts_s": round(len(some) / warm_s, 1),
                  "load_avg": load_avg()}


def tiled(base, n: int, seed: int):
    """n unit vectors: base rows repeated, each copy with its own noise level (in chunks: no big temporaries), then
    DUP_SHARE of them replaced by near-copies of other rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b, d = base.shape
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        rows = base[np.arange(start, stop) % b]
        scale = rng.uniform(*NOISE, size=(stop - start, 1)).astype(np.float32)
        chunk = rows + scale * rng.standard_normal((stop - start, d), dtype=np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        x[start:stop] = chunk
    dups = rng.choice(n, size=int(DUP_SHARE * n), replace=False)
    for start in range(0, len(dups), 65536):
        rows = dups[start : start + 65536]
        scale = rng.uniform(*DUP_NOISE, size=(len(rows), 1)).astype(np.float32)
        chunk = x[rng.integers(0, n, size=len(rows))] + scale * rng.standard_normal((len(rows), d), dtype=np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        x[rows] = chunk
    return x, dups


def child(spec: dict) -> dict:
    """One size, one variant, in this process: time the search, then measure recall on a sample."""
    import resource

    import faiss
    import numpy as np

    from metakl.stages.dedup.stage import OTHER_EPSILON
    from metakl.stages.dedup.search import find_duplicates

    faiss.omp_set_num_threads(THREADS)
    load_before = load_avg()
    base = np.load(spec["base"])
    n = spec["n"]
    x, dups = tiled(base, n, seed=n)
    del base
    rank = np.random.default_rng(0).permutation(n)
    threshold = 1 - OTHER_EPSILON  # the math/general default (0.92); safety's 0.86 finds more pairs
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = time.process_time()
    t = time.perf_counter()
    res, part = find_duplicates(x, rank, threshold, method="clustered", nprobe=spec["nprobe"], seed=0)
    seconds = time.perf_counter() - t
    cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    # Recall: exact neighbours of sampled points, in blocks of columns.
    rng = np.random.default_rng(1)
    queries = rng.choice(dups, size=min(RECALL_QUERIES, len(dups)), replace=False)
    qi, qj = [], []
    xq = x[queries]
    for start in range(0, n, 50_000):
        sims = xq @ x[start : start + 50_000].T
        r, c = np.nonzero(sims >= threshold)
        c = c + start
        ok = c != queries[r]
        qi.append(queries[r[ok]])
        qj.append(c[ok])
    qi, qj = np.concatenate(qi), np.concatenate(qj)
    recall = float(part.compares(qi, qj).mean()) if len(qi) else 1.0
    return {"n": n, "variant": spec["variant"], "nprobe": spec["nprobe"], "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "peak_gb": round(peak / 2**20, 3), "vectors_gb": round(x.nbytes / 2**30, 3),
            "rss_before_search_gb": round(rss_before / 2**20, 3), "recall": round(recall, 4),
            "sample_pairs": int(len(qi)), "removed_share": round(float((res.dup_of >= 0).mean()), 4),
            "clusters": part.n_leaves, "comparisons": res.stats.get("comparisons"), "rechecks": res.stats["rechecks"],
            "seconds_kmeans": res.stats.get("seconds_kmeans"), "seconds_probes": res.stats.get("seconds_probes"),
            "seconds_pairs": res.stats["seconds_pairs"], "seconds_greedy": res.stats["seconds_greedy"],
            "load_avg_before": load_before, "load_avg_after": load_avg()}


def run_child(spec: dict) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(THREADS), "OMP_NUM_THREADS": str(THREADS),
           "MKL_NUM_THREADS": str(THREADS), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slope(ns: list[int], values: list[float]) -> float:
    import numpy as np

    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20K, 50K, 100K vectors and a smaller throughput sample")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not SHARED.exists():
        print(json.dumps({"bench": "dedup_speed", "skipped": f"no shared data at {SHARED}", "pass": None}))
        return
    sizes = [20_000, 50_000, 100_000] if args.quick else [100_000, 300_000, 1_000_000]
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as tmp:
        work = Path(tmp)
        base_path, embed = embed_base(prompts(), 200 if args.quick else 1000, work)
        print(f"base: {embed['base_vectors']} real prompts embedded ({embed['base_encoded']} encoded now, "
              f"{embed['base_embed_seconds']} s); throughput on {embed['throughput_texts']} prompts: cold cache "
              f"{embed['embed_cold_texts_s']} texts/s, warm {embed['embed_warm_texts_s']} texts/s "
              f"(load {embed['load_avg']})", flush=True)
        rows = []
        print(f"{'N':>9}  {'variant':9}  {'seconds':>7}  {'CPU s':>7}  {'peak GB':>7}  {'recall':>6}  {'removed':>7}  {'clusters':>8}  "
              f"kmeans/probes/pairs/greedy s  load avg", flush=True)
        for n in sizes:
            for variant, nprobe in (("clustered", 3), ("semdedup", 1)):
                r = run_child({"n": n, "variant": variant, "nprobe": nprobe, "base": str(base_path)})
                rows.append(r)
                print(f"{n:>9,}  {variant:9}  {r['seconds']:>7.1f}  {r['cpu_seconds']:>7.1f}  {r['peak_gb']:>7.2f}  {r['recall']:>6.4f}  "
                      f"{r['removed_share']:>7.2%}  {r['clusters']:>8}  {r['seconds_kmeans']}/{r['seconds_probes']}/"
                      f"{r['seconds_pairs']}/{r['seconds_greedy']}  {r['load_avg_before']}", flush=True)
    main_rows = [r for r in rows if r["variant"] == "clustered"]
    ns = [r["n"] for r in main_rows]
    exponent = slope(ns, [r["seconds"] for r in main_rows])
    nlogn = slope(ns, [n * math.log(n) for n in ns])
    top = main_rows[-1]
    targets = {"seconds": 120.0, "peak_gb": 4.0, "recall": 0.99, "exponent": 1.25}
    checks = {"seconds": top["seconds"] <= targets["seconds"], "peak_gb": top["peak_gb"] <= targets["peak_gb"],
              "recall": min(r["recall"] for r in main_rows) >= targets["recall"],
              "exponent": exponent <= targets["exponent"]}
    semdedup = {r["n"]: r for r in rows if r["variant"] == "semdedup"}
    print(f"scaling exponent {exponent:.3f} (N log N over these sizes: {nlogn:.3f}); at {top['n']:,}: "
          f"{top['seconds']} s, {top['peak_gb']} GB peak ({top['vectors_gb']} GB of vectors), recall {top['recall']}; "
          f"within-cluster only: recall {semdedup[top['n']]['recall']} in {semdedup[top['n']]['seconds']} s")
    print(json.dumps({
        "bench": "dedup_speed", "quick": args.quick, "sizes": ns,
        "seconds": [r["seconds"] for r in main_rows], "cpu_seconds": [r["cpu_seconds"] for r in main_rows],
        "cpu_exponent": round(slope(ns, [r["cpu_seconds"] for r in main_rows]), 3), "peak_gb": [r["peak_gb"] for r in main_rows],
        "recall": [r["recall"] for r in main_rows], "exponent": round(exponent, 3), "nlogn_exponent": round(nlogn, 3),
        "semdedup_seconds": [semdedup[n]["seconds"] for n in ns], "semdedup_recall": [semdedup[n]["recall"] for n in ns],
        "embed_cold_texts_s": embed["embed_cold_texts_s"], "embed_warm_texts_s": embed["embed_warm_texts_s"],
        "load_avg": [r["load_avg_before"] for r in main_rows], "targets": targets, "checks": checks,
        "pass": all(checks.values()),
    }))


if __name__ == "__main__":
    main()
