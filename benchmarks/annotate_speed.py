"""How fast is each annotator, and where does the time go?

Side by side on the same ~1K real prompts (a third each of math: GSM8K + MATH, general: MMLU + CommonsenseQA,
safety: HH-RLHF + AdvBench + HarmBench + XSTest, from ../shared/data; there are ~3.7K safety prompts in all, so the
20K below are mostly math and general): the embedding tagger, guided annotation and open-set annotation with SmolLM2
behind an OpenAI-compatible server. Every variant starts cold (fresh request cache, fresh embedding cache); loading
the embedding model is timed apart. For the taxonomy modes the time is split into
retrieval (embedding the taxonomy's unit texts and the prompts, then the top-M search) and generation.
Then the embedding tagger alone on ~20K prompts, cold and warm (the prompts' vectors cached on disk), and the top-M
search of those 20K prompts against a 10K-unit taxonomy (random unit vectors: the search cost does not depend on
what the units say).

    python benchmarks/annotate_speed.py [--quick] [--base-url http://127.0.0.1:8011/v1]   # no --base-url: starts vLLM

The last line is a JSON object; "pass" when the embedding tagger (cold, on the 20K) is at least 10 times as fast
as guided annotation (side by side), the 10K-unit search of 20K prompts takes under 30 s, and retrieval is under a
quarter of guided annotation's time. Other processes on the machine change the absolute figures (the load average
is printed); compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SHARED_DATA, llm_server  # noqa: E402
DATA = SHARED_DATA

SOURCES = [  # (preset, path under ../shared/data)
    ("gsm8k", "gsm8k/train.jsonl"), ("math", "math/test_minus_math500.jsonl"),
    ("mmlu-csv", "mmlu/test"), ("commonsenseqa-raw", "commonsenseqa/train_rand_split.jsonl"),
    ("hh-rlhf", "hh_rlhf_harmless_base/test.jsonl"), ("advbench-csv", "advbench/harmful_behaviors.csv"),
    ("harmbench-csv", "harmbench/harmbench_behaviors_text_all.csv"), ("xstest", "xstest/xstest_prompts.csv"),
]


def real_prompts():
    """Every prompt of the sources above, ingested (deduplicated) into the row schema."""
    from metakl.stages import get_stage

    ingest = get_stage("ingest")
    sources = tuple(f"{p}={DATA / rel}" for p, rel in SOURCES if (DATA / rel).exists())
    if not sources:
        sys.exit(f"no data under {DATA}")
    return ingest(None, ingest.config_cls(sources=sources, on_error="skip")).dataset


def stratified(ds, n: int, seed: int = 0):
    """n prompts, a third per domain where the data allows (safety has ~3.7K in all), in a shuffled order."""
    rng = random.Random(seed)
    by_domain: dict[str, list[int]] = {}
    for i, d in enumerate(ds["domain"]):
        by_domain.setdefault(d, []).append(i)
    for rows in by_domain.values():
        rng.shuffle(rows)
    picked = {d: rows[: n // len(by_domain)] for d, rows in by_domain.items()}
    short = n - sum(len(v) for v in picked.values())
    for d, rows in sorted(by_domain.items(), key=lambda kv: -len(kv[1])):  # fill from the larger domains
        extra = rows[len(picked[d]): len(picked[d]) + short]
        picked[d] += extra
        short -= len(extra)
    order = [i for rows in picked.values() for i in rows]
    rng.shuffle(order)
    return ds.select(order)


def timed_annotate(ds, annotator: str, args, embedder_cache: str, llm_cache: str) -> dict:
    from metakl.embed import Embedder
    from metakl.llm import get_backend
    from metakl.stages import annotate as A
    from metakl.stages.annotate import AnnotateConfig, annotate

    A._INDEXES.clear()
    t0 = time.perf_counter()
    embedder = Embedder(max_seq_length=128, cache_dir=embedder_cache) if annotator != "open" else None
    load = time.perf_counter() - t0
    cfg = AnnotateConfig(annotator=annotator, max_tokens=args.max_tokens, retries=args.retries,
                         **({"max_skills": args.open_max_skills} if annotator == "open" else {}))
    backend = None
    if annotator != "embedding":
        backend = get_backend("openai", args.model, base_url=args.base_url, cache_dir=llm_cache,
                              concurrency=args.concurrency)
    try:
        t0 = time.perf_counter()
        result = annotate(ds, cfg, backend=backend, embedder=embedder, progress=args.progress)
        seconds = time.perf_counter() - t0
    finally:
        if backend is not None:
            backend.close()
    r = result.report
    retrieval = sum(r.get("retrieval", {}).get(k, 0.0) for k in ("unit_texts_seconds", "prompt_embedding_seconds",
                                                                 "search_seconds"))
    generation = r.get("generation_seconds", seconds if annotator == "open" else 0.0)
    llm = r.get("llm") or {}
    return {
        "annotator": annotator, "prompts": len(ds), "seconds": round(seconds, 2), "load_seconds": round(load, 2),
        "prompts_per_s": round(len(ds) / seconds, 2), "annotated": r["annotated"],
        "retrieval_seconds": round(retrieval, 2), "generation_seconds": round(generation, 2),
        "retrieval_share": round(retrieval / seconds, 3) if seconds else 0.0,
        "generation_share": round(generation / seconds, 3) if seconds else 0.0,
        "completion_tokens": llm.get("completion_tokens", 0), "prompt_tokens": llm.get("prompt_tokens", 0),
    }


def search_10k(prompt_vectors, n_units: int = 10_000) -> dict:
    import numpy as np

    from metakl.stages.unit_index import UnitIndex

    rng = np.random.default_rng(0)
    dim = prompt_vectors.shape[1]
    units = rng.standard_normal((n_units, dim)).astype(np.float32)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    domains = ["math", "general", "safety"]
    index = UnitIndex(names=[f"u{i}" for i in range(n_units)], texts=[""] * n_units, descriptions=[None] * n_units,
                      domains=[domains[i % 3] for i in range(n_units)], areas=[None] * n_units, vectors=units,
                      digest="bench")
    row_domains = [domains[i % 3] for i in range(len(prompt_vectors))]
    t0 = time.perf_counter()
    idx, _ = index.search(prompt_vectors, row_domains, 10)
    seconds = time.perf_counter() - t0
    assert (idx >= 0).all()
    return {"units": n_units, "prompts": len(prompt_vectors), "M": 10, "seconds": round(seconds, 2)}


def needs_llm(args) -> bool:
    """An LLM annotator is asked for. Without --base-url, llm_server then starts a local vLLM server."""
    return bool({"guided", "open"} & {a.strip() for a in args.annotators.split(",")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default=os.environ.get("METAKL_BASE_URL"),
                    help="an OpenAI-compatible server serving --model (default: start a local vLLM server)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="200 prompts for the LLM modes, 2K for the embedding tagger")
    ap.add_argument("--prompts", type=int, default=None, help="prompts for the side-by-side run (default 1000)")
    ap.add_argument("--embedding-prompts", type=int, default=None, help="prompts for the embedding tagger alone (20000)")
    ap.add_argument("--annotators", default="embedding,guided,open")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--open-max-skills", type=int, default=4)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    with llm_server(args, needed=needs_llm(args)):
        run(args)


def run(args) -> None:
    n = args.prompts or (200 if args.quick else 1000)
    n_embed = args.embedding_prompts or (2000 if args.quick else 20000)

    import torch

    torch.set_num_threads(int(os.environ.get("METAKL_TORCH_THREADS", "1")))
    load_before = os.getloadavg()[0]
    everything = real_prompts()
    small = stratified(everything, n)
    big = stratified(everything, n_embed, seed=1)
    tmp = Path(tempfile.mkdtemp(prefix="annotate-speed-"))

    rows = []
    for name in [a.strip() for a in args.annotators.split(",") if a.strip()]:
        rows.append(timed_annotate(small, name, args, str(tmp / f"embed-{name}"), str(tmp / f"llm-{name}")))
        print(f"[{name}] {rows[-1]}", file=sys.stderr)

    from metakl.embed import Embedder
    from metakl.stages.unit_index import prompt_text

    cold = timed_annotate(big.select(range(n_embed)), "embedding", args, str(tmp / "embed-big"), str(tmp / "x"))
    warm = timed_annotate(big.select(range(n_embed)), "embedding", args, str(tmp / "embed-big"), str(tmp / "x"))
    embedder = Embedder(max_seq_length=128, cache_dir=str(tmp / "embed-big"))
    vectors = embedder([prompt_text(q, c) for q, c in zip(big["question"][:n_embed], big["choices"][:n_embed])])
    search = search_10k(vectors)
    load_after = os.getloadavg()[0]

    print(f"\nannotators side by side on {n} real prompts ({dict(sorted(Counter(small['domain']).items()))}); "
          f"SmolLM2 at {args.base_url}, concurrency {args.concurrency}")
    print(f"{'annotator':<10} {'prompts/s':>9} {'seconds':>8} {'annotated':>9} {'retrieval':>9} {'generation':>10} "
          f"{'tokens out':>10}")
    for r in rows:
        print(f"{r['annotator']:<10} {r['prompts_per_s']:9.2f} {r['seconds']:8.1f} {r['annotated']:9d} "
              f"{r['retrieval_share']:9.1%} {r['generation_share']:10.1%} {r['completion_tokens']:10d}")
    print(f"embedding tagger alone on {n_embed} prompts: cold {cold['prompts_per_s']:.0f} prompts/s "
          f"({cold['seconds']:.1f} s), warm cache {warm['prompts_per_s']:.0f} prompts/s ({warm['seconds']:.1f} s); "
          f"model load {cold['load_seconds']:.1f} s")
    print(f"top-10 search of {search['prompts']} prompts in a {search['units']}-unit taxonomy: {search['seconds']:.2f} s")
    print(f"load average: {load_before:.1f} before, {load_after:.1f} after (2 cores; 1 torch thread)")

    guided = next((r for r in rows if r["annotator"] == "guided"), None)
    checks = {"search_10k_lt_30s": search["seconds"] < 30}
    if guided:
        checks["embedding_over_guided_ge_10"] = cold["prompts_per_s"] / guided["prompts_per_s"] >= 10
        checks["guided_retrieval_share_lt_25pct"] = guided["retrieval_share"] < 0.25
    out = {"bench": "annotate_speed", "prompts": n, **{f"{r['annotator']}_prompts_per_s": r["prompts_per_s"] for r in rows},
           **{f"{r['annotator']}_retrieval_share": r["retrieval_share"] for r in rows if r["annotator"] != "open"},
           "embedding_prompts": n_embed, "embedding_cold_prompts_per_s": cold["prompts_per_s"],
           "embedding_warm_prompts_per_s": warm["prompts_per_s"], "search_10k_units_seconds": search["seconds"],
           **({"embedding_over_guided": round(cold["prompts_per_s"] / guided["prompts_per_s"], 1)} if guided else {}),
           "targets": {"embedding_over_guided": 10, "search_10k_seconds": 30, "guided_retrieval_share": 0.25},
           **checks, "load_average": round(max(load_before, load_after), 2), "pass": all(checks.values())}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
