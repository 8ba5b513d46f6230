"""Decontamination speed and recall: 40K prompts against 25K benchmark items on 2 cores.

Benchmark items: real evaluation items from ../shared/data (MATH test, MMLU test, CommonsenseQA train, LogiQA 2.0
dev, AdvBench, HarmBench, XSTest), up to `items`. Prompts: real prompts from the other sources there (GSM8K train,
CSQA 2.0 train, HH-RLHF harmless test, the refusal-direction splits), repeated with a numbered lead-in
("Exercise 12: ...") when the sources hold fewer than `prompts` rows, plus planted benchmark items:

- `verbatim`: an item copied as it is (options included);
- `reworded`: an item perturbed so that few 13-grams survive: a lead-in, a few synonym swaps ("what is" -> "tell
  me", "how many" -> "what number of", "find" -> "determine", ...), every 9th word dropped (numbers kept), and its
  options in reverse order (a mechanical stand-in for a paraphrase: it measures that the semantic
  pass finds items the n-gram pass cannot; `recall_reworded_ngram_pass` says how many the n-grams alone find).

Recall = planted items found / planted; false removals = unplanted prompts matched (printed with examples to read:
the prompts are real and may really overlap a benchmark, e.g. CSQA 2.0 vs CommonsenseQA concepts).
Two passes run in one process with 2 threads: `ngram` (n-gram + answer checks, no embeddings) and `full` (with
embeddings; the cache is warmed first, so the figure is the cached one the target names). Peak memory is the
process's high-water mark.

    python benchmarks/decontaminate_speed.py            # 40K prompts vs 25K items
    python benchmarks/decontaminate_speed.py --quick    # 8K prompts vs 5K items
    python benchmarks/decontaminate_speed.py --ngram-only   # 40K vs 25K, the n-gram pass alone (no embedding)
    python benchmarks/decontaminate_speed.py --real OUT.jsonl   # the issue's real pairs, every match written to read
    python benchmarks/decontaminate_speed.py --read-thresholds OUT.jsonl   # candidate thresholds, from one cached pass
    python benchmarks/decontaminate_speed.py --matched OUT.json  # also write the decisions, to compare two versions

`--real` runs the full stage (n-grams, answers, embeddings) on the real pairs issue 24 names: GSM8K train vs MATH
test (minus MATH-500), MMLU test vs CommonsenseQA train, MMLU test vs MMLU-Pro math; it prints the counts per kind
and writes every matched row with its item (texts, kind, score) to OUT.jsonl, semantic-only matches first, for
reading by hand (docs/results/decontamination.md holds what was read). It runs the semantic pass at cosine FLOOR
(0.80) and counts the rows matched at each of CANDIDATES; what a threshold below the default would add is written too.

`--read-thresholds` (full size, embeddings cached): one pass at FLOOR, reworded recall and unplanted matches per
domain at each candidate, and to OUT.jsonl each planted rewording missed at the defaults (its cosine to its own item
and why it is missed: the threshold, a guard, a text cut at 128 tokens) and each unplanted row a lower threshold adds.
Thresholds do not change the vectors, so this needs no new embedding.

Memory: the process's resident memory is sampled every 50 ms with the innermost metakl function running, and
printed per phase (build, n-gram pass, first full pass, cached full pass): where the peak is reached.

Targets: n-gram pass <= 30 s, full pass (cached embeddings) <= 90 s, peak <= 2 GB, recall of verbatim items 1.0, of
reworded items >= 0.9. The last line is one JSON object with the figures, the targets and "pass".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SHARED_DATA  # noqa: E402
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED = SHARED_DATA
ITEM_SOURCES = [("math", "math/test_minus_math500.jsonl"), ("mmlu-csv", "mmlu/test"),
                ("commonsenseqa-raw", "commonsenseqa/train_rand_split.jsonl"), ("logiqa2", "logiqa2/dev.txt"),
                ("advbench-csv", "advbench/harmful_behaviors.csv"),
                ("harmbench-csv", "harmbench/harmbench_behaviors_text_all.csv"), ("xstest", "xstest/xstest_prompts.csv")]
PROMPT_SOURCES = [("gsm8k", "gsm8k/train.jsonl"), ("csqa2", "csqa2/CSQA2_train.json"),
                  ("hh-rlhf", "hh_rlhf_harmless_base/test.jsonl"),
                  ("refusal-harmful", "refusal_direction_splits/harmful_train.json"),
                  ("refusal-harmful", "refusal_direction_splits/harmless_train.json")]
SYNONYMS = [("what is", "tell me"), ("how many", "what number of"), ("find", "determine"), ("which of", "which one of"),
            ("calculate", "compute"), ("the following", "these"), ("there are", "we have")]
THREADS = 2


class MemorySampler:
    """The process's resident memory sampled every `every` s on a thread, with the innermost metakl/benchmark
    function the main thread was in: `peaks()` is the highest RSS seen per (phase, function), to say where the
    high-water mark is reached."""

    def __init__(self, every: float = 0.05) -> None:
        import threading

        self.phase, self.every, self.seen = "start", every, {}
        self._main, self._stop = threading.main_thread().ident, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss_gb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    def _where(self) -> str:
        frame = sys._current_frames().get(self._main)
        while frame is not None:
            path = frame.f_code.co_filename
            if "/metakl/" in path or "/benchmarks/" in path:
                return f"{Path(path).stem}.{frame.f_code.co_name}"
            frame = frame.f_back
        return "?"

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            key, gb = (self.phase, self._where()), self.rss_gb()
            first, top = self.seen.get(key, (gb, gb))
            self.seen[key] = (first, max(top, gb))

    def peaks(self, top: int = 12) -> list[tuple[str, str, float, float]]:
        """(phase, function, RSS when first seen there, highest RSS there), highest first."""
        self._stop.set()
        self._thread.join()
        return [(p, w, round(a, 3), round(b, 3)) for (p, w), (a, b) in
                sorted(self.seen.items(), key=lambda kv: -kv[1][1])[:top]]

    def phases(self) -> dict[str, tuple[float, float]]:
        """Each phase's RSS when it began and its highest, GB."""
        out: dict[str, tuple[float, float]] = {}
        for (p, _), (a, b) in self.seen.items():
            first, top = out.get(p, (a, b))
            out[p] = (min(first, a), max(top, b))  # RSS at the start: the lowest first sample of the phase
        return {p: (round(a, 3), round(b, 3)) for p, (a, b) in out.items()}


def read(sources, limit: int | None = None):
    from metakl.stages.ingest import IngestConfig, SourceSpec, ingest, load_preset

    specs = [SourceSpec(str(SHARED / path), load_preset(preset)) for preset, path in sources if (SHARED / path).exists()]
    if not specs:
        sys.exit(f"no data under {SHARED} (set METAKL_SHARED_DATA)")
    return ingest(specs, IngestConfig(on_error="skip", limit=limit)).dataset


def reword(text: str, lead: str = "Here is a problem for you. ") -> str:
    out = text
    for a, b in SYNONYMS:
        out = re.sub(rf"\b{a}\b", b, out, flags=re.IGNORECASE)
    words = out.split(" ")
    kept = [w for i, w in enumerate(words) if i % 9 != 8 or re.search(r"\d", w)]  # keep numbers: the guard needs them
    return lead + " ".join(kept)


def reword_row(row: dict) -> dict:
    """The question reworded, and the options in reverse order (the reference letter moved with its option), so that
    the options block does not keep the item's n-grams either."""
    row = dict(row, question=reword(row["question"]))
    choices = row.get("choices") or []
    if choices:
        row["choices"] = list(reversed(choices))  # the same texts: the answer guard compares the answer's text
        ref = row.get("reference") or ""
        if len(ref) == 1 and ref.isalpha() and ord(ref.upper()) - 65 < len(choices):
            row["reference"] = chr(65 + len(choices) - 1 - (ord(ref.upper()) - 65))
    return row


def build(n_prompts: int, n_items: int, planted: int, seed: int = 0):
    from datasets import Dataset, concatenate_datasets

    from metakl.stages.decontaminate import Benchmark

    items = read(ITEM_SOURCES)
    items = items.shuffle(seed=seed).select(range(min(n_items, len(items))))
    base = read(PROMPT_SOURCES)
    rows = base.select_columns(["id", "domain", "question", "choices", "reference", "source"]).to_list()
    rng = random.Random(seed)
    prompts = []
    for k in range(n_prompts - 2 * planted):
        r = dict(rows[k % len(rows)])
        if k >= len(rows):
            r["question"] = f"Exercise {k // len(rows)}: {r['question']}"
            r["id"] = f"{r['id']}-{k // len(rows)}"
        prompts.append(r)
    picks = rng.sample(range(len(items)), 2 * planted)
    cols = ["id", "domain", "question", "choices", "reference", "source"]
    item_rows = items.select_columns(cols).select(picks).to_list()
    for i, r in enumerate(item_rows):
        r = dict(r)
        kind = "verbatim" if i < planted else "reworded"
        if kind == "reworded":
            r = reword_row(r)
        r["id"] = f"planted-{kind}-{i}"
        prompts.append(r)
    ds = Dataset.from_list(prompts)
    return ds, [Benchmark("items", items, "benchmark items")]


def run(ds, benchmarks, semantic: bool, **settings):
    import faiss
    import torch

    from metakl.stages.decontaminate import DecontaminateConfig, decontaminate

    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(THREADS)
    t, cpu = time.perf_counter(), time.process_time()
    result = decontaminate(ds, DecontaminateConfig(suite=None, semantic=semantic, mark_only=True, **settings),
                           benchmarks=benchmarks)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu  # CPU: all threads; on a shared machine wall >> CPU/2
    matched = {r["id"]: sorted((e["benchmark"], e["item_id"], e["kind"]) for e in r["contamination"])
               for r in result.dataset.select_columns(["id", "contamination"]) if r["contamination"]}
    found = set(matched)
    verbatim = [i for i in ds["id"] if i.startswith("planted-verbatim")]
    reworded = [i for i in ds["id"] if i.startswith("planted-reworded")]
    false = sorted(i for i in found if not i.startswith("planted-"))
    rows = {r["id"]: r for r in result.dataset.select_columns(["id", "question", "contamination"])
            if r["id"] in set(false[:: max(1, len(false) // 8)][:8])}
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "recall_verbatim": round(sum(i in found for i in verbatim) / len(verbatim), 4),
            "recall_reworded": round(sum(i in found for i in reworded) / len(reworded), 4),
            "false_removals": len(false), "false_share": round(len(false) / (len(ds) - len(verbatim) - len(reworded)), 5),
            "examples": [{"question": rows[i]["question"][:160], "match": rows[i]["contamination"][0]} for i in rows],
            "embedding": result.report.get("embedding"), "matched": matched}


REAL_PAIRS = [("gsm8k-train vs math-test", ("gsm8k", "gsm8k/train.jsonl"), ("math", "math/test_minus_math500.jsonl")),
              ("mmlu-test vs commonsenseqa-train", ("mmlu-csv", "mmlu/test"),
               ("commonsenseqa-raw", "commonsenseqa/train_rand_split.jsonl")),
              ("mmlu-test vs mmlu-pro-math", ("mmlu-csv", "mmlu/test"),
               ("mmlu-pro", "mmlu_pro_math_model_outputs/model_outputs_Meta-Llama-3_1-70B-Instruct_5shots.math.json"))]


def real_pairs(out: Path) -> None:
    """The real pairs with every check on; each matched row and its items to `out` (semantic-only matches first)."""
    import faiss
    import torch

    from metakl.stages.decontaminate import Benchmark, DecontaminateConfig, _texts, decontaminate

    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(THREADS)
    summary = {}
    with open(out, "w") as f:
        for name, prompts_src, items_src in REAL_PAIRS:
            prompts, items = read([prompts_src]), read([items_src])
            t = time.perf_counter()
            # one pass at FLOOR: the rows matched at the defaults, and those a lower candidate would add
            result = decontaminate(prompts, DecontaminateConfig(suite=None, mark_only=True, examples=0,
                                                                threshold=FLOOR),
                                   benchmarks=[Benchmark(items_src[0], items, name)])
            seconds = time.perf_counter() - t
            item_text = dict(zip((str(i) for i in items["id"]), _texts(items)))
            row_text = _texts(prompts)
            default = DecontaminateConfig(suite=None)
            domains = result.dataset["domain"]
            floor = [(i, c) for i, c in enumerate(result.dataset["contamination"]) if c]
            at = {t: sum(matched_at(c, t) for _, c in floor) for t in CANDIDATES}
            added = [(i, c) for i, c in floor if not matched_at(c, default.threshold_of(domains[i]))
                     and matched_at(c, min(CANDIDATES))]
            matched = [(i, c) for i, c in floor if matched_at(c, default.threshold_of(domains[i]))]
            only_semantic = [(i, c) for i, c in matched if {e["kind"] for e in c} == {"semantic"}]
            kinds = [{e["kind"] for e in c if matched_at([e], default.threshold_of(domains[i]))} for i, c in matched]
            summary[name] = {"rows": len(prompts), "items": len(items), "seconds": round(seconds, 1),
                             "rows_matched": len(matched),
                             "by_kind": {k: sum(k in ks for ks in kinds) for k in ("ngram", "semantic", "answer")},
                             "semantic_only": len(only_semantic),
                             "refused_by_guards": result.report["semantic_pairs_refused_by_guards"],
                             "embedding": result.report["embedding"], "rows_matched_at": at,
                             "added_below_default": len(added)}
            print(f"{name}: {len(prompts):,} rows vs {len(items):,} items, {seconds:.1f} s: {len(matched)} rows matched "
                  f"at the defaults, {len(only_semantic)} by the semantic pass alone; rows matched per threshold "
                  f"{at}; {len(added)} added at >= {min(CANDIDATES)}; {summary[name]['refused_by_guards']} pairs "
                  f"refused by the guards at >= {FLOOR}")
            for i, c in added:
                f.write(json.dumps({"pair": name, "added_below_default": max(e["score"] for e in c),
                                    "row": row_text[i],
                                    "matches": [{**e, "item": item_text.get(e["item_id"])} for e in c]}) + "\n")
            alone = {i for i, _ in only_semantic}
            for i, c in only_semantic + [(i, c) for i, c in matched if i not in alone]:
                f.write(json.dumps({"pair": name, "semantic_only": i in alone, "row": row_text[i],
                                    "matches": [{**e, "item": item_text.get(e["item_id"])} for e in c]}) + "\n")
    print(json.dumps({"bench": "decontaminate_real", "pairs": summary, "out": str(out)}))


CANDIDATES = (0.88, 0.87, 0.86, 0.85, 0.84)
FLOOR = 0.80  # the semantic pass is run once at this cosine; a higher threshold keeps the pairs scoring at or above it


def matched_at(contamination: list[dict], threshold: float) -> bool:
    """Whether a row marked at FLOOR is matched at `threshold`: an n-gram or answer match, or a semantic one at or
    above it (each row's nearest items and the guards do not depend on the threshold)."""
    return any(e["kind"] != "semantic" or e["score"] >= threshold - 5e-5 for e in contamination)  # scores: 4 decimals


def read_thresholds(ds, benchmarks, out: Path) -> None:
    """Recall and unplanted matches per domain at each candidate threshold (cached embeddings, one pass at FLOOR);
    to `out`: each planted reworded item missed at the defaults (its cosine to its own item, its domain, why it is
    missed) and each unplanted row that a candidate below the default adds, with the item, for reading by hand."""
    import faiss
    import torch

    from metakl.embed import DEFAULT_EMBEDDING_DTYPE, PROMPT_MAX_SEQ_LENGTH, load_embedder
    from metakl.stages.decontaminate import (DEFAULT_EMBEDDING_MODEL, DecontaminateConfig, _embedded_texts, _texts,
                                             decontaminate)
    from metakl.stages.dedup.stage import answer_key, number_key

    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(THREADS)
    default = DecontaminateConfig(suite=None)
    result = decontaminate(ds, DecontaminateConfig(suite=None, mark_only=True, threshold=FLOOR, examples=0),
                           benchmarks=benchmarks)
    rows = result.dataset.select_columns(["id", "domain", "contamination"]).to_list()
    planted = sum(r["id"].startswith("planted-reworded") for r in rows)
    table = []
    for t in CANDIDATES:
        line = {"threshold": t}
        for d in ("math", "general", "safety"):
            mine = [r for r in rows if r["domain"] == d]
            rew = [r for r in mine if r["id"].startswith("planted-reworded")]
            line[d] = {"reworded": f"{sum(matched_at(r['contamination'], t) for r in rew)}/{len(rew)}",
                       "unplanted": sum(matched_at(r["contamination"], t) for r in mine
                                        if not r["id"].startswith("planted-"))}
        table.append(line)
        print(json.dumps(line))
    # the planted reworded items and their own items (build() drew them with this seed; reworded are the second half)
    items = benchmarks[0].rows
    picks = random.Random(0).sample(range(len(items)), 2 * planted)[planted:]
    embed = load_embedder(DEFAULT_EMBEDDING_MODEL, PROMPT_MAX_SEQ_LENGTH, 64, DEFAULT_EMBEDDING_DTYPE, None)
    tok = embed.model.tokenizer
    reworded_ix = [i for i, r in enumerate(rows) if r["id"].startswith("planted-reworded")]
    sub = ds.select(reworded_ix)
    own = items.select(picks)
    rv, iv = embed(_embedded_texts(sub)), embed(_embedded_texts(own))
    cos = (rv * iv).sum(axis=1)
    misses = []
    for k, i in enumerate(reworded_ix):
        r, row, item = rows[i], sub[k], own[k]
        if matched_at(r["contamination"], default.threshold_of(r["domain"])):
            continue
        ptext, itext = _embedded_texts(sub.select([k]))[0], _embedded_texts(own.select([k]))[0]
        near = [e for e in r["contamination"] if e["item_id"] == str(item["id"])]
        why = []
        if cos[k] < default.threshold_of(r["domain"]):
            why.append(f"cosine {cos[k]:.4f} < {default.threshold_of(r['domain'])}")
        if number_key(row["question"]) != number_key(item["question"]):
            why.append("numbers differ (guard)")
        if answer_key(row["reference"], row["choices"]) != answer_key(item["reference"], item["choices"]):
            why.append("answers differ (guard)")
        if cos[k] >= FLOOR and not near:
            why.append("own item not among the 5 nearest, or refused")
        lengths = [len(tok(x, add_special_tokens=True)["input_ids"]) for x in (ptext, itext)]
        if max(lengths) > PROMPT_MAX_SEQ_LENGTH:
            why.append(f"text cut at {PROMPT_MAX_SEQ_LENGTH} tokens (row {lengths[0]}, item {lengths[1]})")
        misses.append({"kind": "missed-reworded", "id": r["id"], "domain": r["domain"], "source": item["source"],
                       "cosine_own_item": round(float(cos[k]), 4), "why": why, "tokens": lengths,
                       "row": _texts(sub.select([k]))[0], "item": _texts(own.select([k]))[0]})
    # unplanted rows a candidate below the default adds
    item_text = dict(zip((str(x) for x in items["id"]), _texts(items)))
    row_text = _texts(ds)
    added = []
    for i, r in enumerate(rows):
        if r["id"].startswith("planted-") or matched_at(r["contamination"], default.threshold_of(r["domain"])):
            continue
        if matched_at(r["contamination"], min(CANDIDATES)):
            best = max(r["contamination"], key=lambda e: e["score"])
            added.append({"kind": "added-unplanted", "id": r["id"], "domain": r["domain"], "score": best["score"],
                          "row": row_text[i], "item_id": best["item_id"], "item": item_text[best["item_id"]]})
    added.sort(key=lambda a: -a["score"])
    with open(out, "w") as f:
        for rec in misses + added:
            f.write(json.dumps(rec) + "\n")
    print(f"{len(misses)} reworded items missed at the defaults, {len(added)} unplanted rows added at "
          f">= {min(CANDIDATES)}: {out}")
    print(json.dumps({"bench": "decontaminate_thresholds", "floor": FLOOR, "table": table,
                      "missed_reworded": len(misses), "added_unplanted": len(added)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, metavar="OUT.jsonl", help="the issue's real pairs; matches to OUT.jsonl")
    parser.add_argument("--quick", action="store_true", help="8K prompts vs 5K items")
    parser.add_argument("--ngram-only", action="store_true", help="only the n-gram pass (no embeddings)")
    parser.add_argument("--matched", type=Path, metavar="OUT.json",
                        help="write the full pass's matched rows (id -> matches) to compare two versions' decisions")
    parser.add_argument("--read-thresholds", type=Path, metavar="OUT.jsonl", help=(
        "cached: recall and unplanted matches at candidate thresholds; the missed reworded items and the pairs "
        "only a lower threshold adds to OUT.jsonl, for reading"))
    args = parser.parse_args()
    if args.real:
        real_pairs(args.real)
        return
    n_prompts, n_items, planted = (8000, 5000, 100) if args.quick else (40000, 25000, 200)
    load = [round(v, 2) for v in os.getloadavg()]
    memory = MemorySampler()
    memory.phase = "build"
    ds, benchmarks = build(n_prompts, n_items, planted)
    n_items = len(benchmarks[0].rows)
    if args.read_thresholds:
        read_thresholds(ds, benchmarks, args.read_thresholds)
        return
    memory.phase = "ngram"
    ngram = run(ds, benchmarks, semantic=False)
    if args.ngram_only:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        checks = {"ngram_seconds": ngram["seconds"] <= 30.0, "peak_gb": peak_gb <= 2.0,
                  "recall_verbatim": ngram["recall_verbatim"] >= 1.0}
        print(f"ngram pass: {len(ds):,} prompts vs {n_items:,} items in {ngram['seconds']} s, peak {peak_gb:.2f} GB, "
              f"recall verbatim {ngram['recall_verbatim']}, reworded {ngram['recall_reworded']}, "
              f"{ngram['false_removals']} unplanted matched; load average before {load}")
        for e in ngram["examples"]:
            print(f"  matched, not planted: {e['question']!r} -> {e['match']}")
        print(json.dumps({"bench": "decontaminate_speed", "quick": args.quick, "ngram_only": True, "prompts": len(ds),
                          "items": n_items, "ngram_seconds": ngram["seconds"], "peak_gb": round(peak_gb, 3),
                          "recall_verbatim": ngram["recall_verbatim"], "false_removals": ngram["false_removals"],
                          "load_avg": load, "checks": checks, "pass": all(checks.values())}))
        return
    from metakl.embed import load_embedder
    from metakl.stages.decontaminate import DEFAULT_EMBEDDING_MODEL

    t = time.perf_counter()
    memory.phase = "first full"
    warm = run(ds, benchmarks, semantic=True)  # fills the embedding cache (cold unless it ran before)
    cold_seconds = time.perf_counter() - t
    memory.phase = "full cached"
    full = run(ds, benchmarks, semantic=True)
    load_embedder.cache_clear()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peaks, phases = memory.peaks(), memory.phases()
    print("resident memory per phase (GB, at its start -> highest): "
          + "; ".join(f"{p} {a:.2f} -> {b:.2f}" for p, (a, b) in phases.items()))
    print("resident memory per (phase, innermost metakl function), GB when first there -> highest there:")
    for phase, where, first, gb in peaks:
        print(f"  {first:6.3f} -> {gb:6.3f}  {phase:12} {where}")
    if args.matched:  # to compare the decisions of two versions of the stage
        args.matched.write_text(json.dumps(full["matched"], indent=0))
    print(f"{'pass':6}  {'prompts':>7}  {'items':>6}  {'seconds':>7}  {'CPU s':>6}  {'verbatim':>8}  {'reworded':>8}  "
          f"{'false':>6}")
    for name, r in (("ngram", ngram), ("full", full)):
        print(f"{name:6}  {len(ds):>7,}  {n_items:>6,}  {r['seconds']:>7.1f}  {r['cpu_seconds']:>6.1f}  "
              f"{r['recall_verbatim']:>8.3f}  "
              f"{r['recall_reworded']:>8.3f}  {r['false_removals']:>6}")
    print(f"first full pass (embedding cache as found: {warm['embedding']}): {cold_seconds:.1f} s; "
          f"peak {peak_gb:.2f} GB; load average before {load}; model {DEFAULT_EMBEDDING_MODEL}")
    for e in full["examples"]:
        print(f"  matched, not planted: {e['question']!r} -> {e['match']}")
    targets = {"ngram_seconds": 30.0, "full_seconds": 90.0, "peak_gb": 2.0, "recall_verbatim": 1.0,
               "recall_reworded": 0.9}
    checks = {"ngram_seconds": ngram["seconds"] <= 30.0, "full_seconds": full["seconds"] <= 90.0,
              "peak_gb": peak_gb <= 2.0,
              "recall_verbatim": min(ngram["recall_verbatim"], full["recall_verbatim"]) >= 1.0,
              "recall_reworded": full["recall_reworded"] >= 0.9}
    print(json.dumps({
        "bench": "decontaminate_speed", "quick": args.quick, "prompts": len(ds), "items": n_items,
        "ngram_seconds": ngram["seconds"], "full_seconds": full["seconds"], "ngram_cpu_seconds": ngram["cpu_seconds"],
        "full_cpu_seconds": full["cpu_seconds"], "load_avg_after": [round(v, 2) for v in os.getloadavg()],
        "first_full_seconds": round(cold_seconds, 2),
        "peak_gb": round(peak_gb, 3), "recall_verbatim": full["recall_verbatim"],
        "recall_verbatim_ngram_pass": ngram["recall_verbatim"], "recall_reworded": full["recall_reworded"],
        "recall_reworded_ngram_pass": ngram["recall_reworded"], "false_removals": full["false_removals"],
        "false_share": full["false_share"], "load_avg": load, "targets": targets, "checks": checks,
        "rss_by_phase": phases, "pass": all(checks.values()),
    }))


if __name__ == "__main__":
    main()
