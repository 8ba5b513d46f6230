"""The non-LLM pipeline at the paper's scale: every prompt ../shared/data offers through one `metakl run`.

Chain (one config written here and run with `metakl run`, as a user runs it):
  ingest -> import-responses -> reward -> annotate (embedding tagger) -> merge -> score (imported answers) -> dedup
  -> decontaminate -> filter (the paper's budget 5,661 and quotas) -> publish (a local folder, no Hub)

Data (all from ../shared/data; nothing here asks a chat model):
- prompts: GSM8K train, MATH test without MATH-500, MMLU test (the half that is here), CommonsenseQA train, CSQA 2.0
  train, LogiQA 2.0 dev, MMLU-Pro math, AdvBench, HarmBench, XSTest, HH-RLHF harmless test, the refusal-direction
  harmful splits (~45K after ingest). Smaller sizes are ingest's stratified `sample`.
- teacher responses (import-responses, then reward): the MMLU-Pro rows get their REAL groups, the 8 models' answers in
  mmlu_pro_math_model_outputs. Every other row gets 4 STAND-INS, labelled by their model name: `standin-reference`
  (the reference solution, or the reference answer with a line of reasoning), `standin-wrong-answer` (the same with
  another final answer), `standin-truncated` (the reasoning cut, no answer) and `standin-answer-only` (the answer
  with no reasoning); safety rows get a refusal, a compliance, a refusal without reasoning and an empty reply.
- base-model answers (score with imported answers): the MMLU-Pro rows the 8 models' own extracted answers (`pred`,
  real); the other rows 3 STAND-IN base models (`standin-base-1..3`) right with a seeded probability that differs
  per source, so proficiency varies and filter has gaps to fill. Proficiency values outside MMLU-Pro are synthetic.
- decontaminate: `suite: none` (every task of the paper suite that runs here reads one of the sources above, so it
  would drop them all) and three real evaluation files the sources do not hold whole: LogiQA 2.0 OOD test, the MMLU
  dev split and HarmBench's test behaviours (a subset of `harmbench_behaviors_text_all.csv`: a real overlap found).

Measured per stage (the `metakl run` child process and all its descendants, sampled every 0.25 s): rows in/out,
wall seconds (from the run's stage-start lines; includes loading and saving), the stage's own seconds (its report),
peak RSS of the process tree, texts embedded (new rows in the run's embedding cache) and cache hits (from the
stage's report where it counts them). Cold caches: each size and executor runs with a new METAKL_CACHE_DIR under a
temporary folder, deleted afterwards (`--keep` keeps it). Per stage, the exponent of seconds vs rows (log-log least
squares over the sizes) checks "no faster than N log N" (N log N from 10K to 45K is an exponent of about 1.10).

After the largest local run, filter alone (in this process, on random subsets of that run's filter input: 5K, 10K,
20K and all of it, best of 3, math verdicts not remembered between calls) gives the filter's exponent over four
sizes, and `--floors` annotates the same input again at other embedding-tagger floors (the run's cached vectors)
and filters it (`--max-targets` also with other max_target values): untagged rows, selected prompts and quota fill
per domain.

    python benchmarks/pipeline_scale.py                          # 10K, 20K, 45K, local executor
    python benchmarks/pipeline_scale.py --sizes 45000 --floors 0.0,0.30,0.35,0.40 --max-targets 40,80
    python benchmarks/pipeline_scale.py --sizes 10000 --executor both   # local and Ray side by side at 10K
    python benchmarks/pipeline_scale.py --quick                  # 300 prompts, local: a smoke test

Targets (issue 26, 2 cores, cold caches): the whole chain <= 10 min and <= 4 GB peak at full size, each distinct
text embedded once (texts embedded <= distinct texts the stages ask for), exponent <= 1.10 + 0.15 (tolerance for
fixed start-up costs) per stage, Ray <= 1.3x local. The last line is one JSON object with the figures and "pass".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SHARED_DATA  # noqa: E402
DATA = SHARED_DATA

SOURCES = [("gsm8k", "gsm8k/train.jsonl"), ("math", "math/test_minus_math500.jsonl"), ("mmlu-csv", "mmlu/test"),
           ("commonsenseqa-raw", "commonsenseqa/train_rand_split.jsonl"), ("csqa2", "csqa2/CSQA2_train.json"),
           ("logiqa2", "logiqa2/dev.txt"),
           ("mmlu-pro", "mmlu_pro_math_model_outputs/model_outputs_Meta-Llama-3_1-70B-Instruct_5shots.math.json"),
           ("advbench-csv", "advbench/harmful_behaviors.csv"),
           ("harmbench-csv", "harmbench/harmbench_behaviors_text_all.csv"), ("xstest", "xstest/xstest_prompts.csv"),
           ("hh-rlhf", "hh_rlhf_harmless_base/test.jsonl"),
           ("refusal-harmful", "refusal_direction_splits/harmful_train.json"),
           ("refusal-harmful", "refusal_direction_splits/harmful_val.json"),
           ("refusal-harmful", "refusal_direction_splits/harmful_test.json")]
BENCHMARKS = [("logiqa2", "logiqa2/ood_test.jsonl"), ("mmlu-csv", "mmlu/dev"),
              ("harmbench-csv", "harmbench/harmbench_behaviors_text_test.csv")]
MMLU_PRO_OUTPUTS = "mmlu_pro_math_model_outputs"
STAGES = ["ingest", "import-responses", "reward", "annotate", "merge", "score", "dedup", "decontaminate", "filter",
          "publish"]
# stand-in base models: how often each is right, per source (seeded per row), so that units differ in proficiency
STANDIN_SKILL = {"gsm8k": 0.8, "math": 0.45, "mmlu": 0.65, "commonsenseqa": 0.75, "csqa2": 0.7, "logiqa2": 0.5,
                 "advbench": 0.9, "harmbench": 0.8, "xstest": 0.7, "hh-rlhf": 0.6, "refusal-harmful": 0.85}
TARGETS = {"chain_seconds": 600.0, "peak_gb": 4.0, "exponent": 1.10 + 0.15, "ray_over_local": 1.3}
REFUSAL = "I'm sorry, but I can't help with that request. It could cause harm."
COMPLY = "Sure. Here is a direct answer to your request, step by step."
LOAD = os.getloadavg


# ---------------------------------------------------------------- data: prompts, stand-in responses and answers


def source_specs(pairs) -> list[str]:
    return [f"{preset}={DATA / path}" for preset, path in pairs if (DATA / path).exists()]


def ingest_rows(size: int | None) -> list[dict]:
    """The rows `metakl run`'s ingest will produce (the same config: deterministic), to write answer files for."""
    from metakl.stages.ingest import IngestConfig, ingest

    return ingest(None, IngestConfig(sources=tuple(source_specs(SOURCES)), on_error="skip", sample=size,
                                     seed=0)).dataset.to_list()


def _meta(row: dict) -> dict:
    try:
        meta = json.loads(row.get("meta") or "{}")
    except json.JSONDecodeError:
        meta = {}
    return meta if isinstance(meta, dict) else {}


def _wrong(ref: str) -> str:
    """Another final answer: a number moved by one, a letter moved to the next option, yes<->no, else a suffix."""
    r = (ref or "").strip()
    if re.fullmatch(r"-?\d+", r):
        return str(int(r) + 1)
    if len(r) == 1 and r.isalpha():
        return "B" if r.upper() == "A" else "A"
    if r.lower() in ("yes", "no"):
        return "no" if r.lower() == "yes" else "yes"
    return f"{r}+1"


def standin_group(row: dict) -> list[tuple[str, str]]:
    """(model, text) for a row without real responses: the reference solution and perturbed copies (see module doc)."""
    ref = str(row.get("reference") or "")
    domain = row["domain"]
    if domain == "safety":
        right, wrong = (REFUSAL, COMPLY) if ref != "comply" else (COMPLY, REFUSAL)
        return [("standin-reference", f"<think>Weighing whether to help.</think>{right}"),
                ("standin-wrong-answer", f"<think>Weighing whether to help.</think>{wrong}"),
                ("standin-answer-only", right), ("standin-truncated", "")]
    meta = _meta(row)
    solution = str(meta.get("solution") or meta.get("answer") or "")
    solution = re.sub(r"<<[^>]*>>", "", solution.split("####")[0]).strip()  # GSM8K's calculator notes and answer line
    if domain == "math":
        reasoning = solution or f"Working through the problem leads to {ref}."
        answer, other = f"\\boxed{{{ref}}}", f"\\boxed{{{_wrong(ref)}}}"
    else:
        reasoning = "Comparing the options with what the question asks."
        shown = f"({ref})" if len(ref) == 1 else ref
        other_shown = f"({_wrong(ref)})" if len(ref) == 1 else _wrong(ref)
        answer, other = f"The answer is {shown}.", f"The answer is {other_shown}."
    half = reasoning[: max(1, len(reasoning) // 2)]
    return [("standin-reference", f"<think>{reasoning}</think>{answer}"),
            ("standin-wrong-answer", f"<think>{reasoning}</think>{other}"),
            ("standin-truncated", f"<think>{half}"), ("standin-answer-only", answer)]


def standin_answers(row: dict) -> list[tuple[str, str, str | None]]:
    """(model, text, answer) of the 3 stand-in base models: right with the source's seeded probability."""
    ref = str(row.get("reference") or "")
    p = STANDIN_SKILL.get(str(row.get("source")), 0.6)
    out = []
    for m in range(1, 4):
        seed = int(hashlib.sha256(f"{row['id']}:{m}".encode()).hexdigest()[:12], 16)
        right = random.Random(seed).random() < p - 0.1 * (m - 2)  # base-1 a little stronger, base-3 weaker
        if row["domain"] == "safety":
            text = (REFUSAL if ref != "comply" else COMPLY) if right else (COMPLY if ref != "comply" else REFUSAL)
            out.append((f"standin-base-{m}", text, None))
        else:
            answer = ref if right else _wrong(ref)
            out.append((f"standin-base-{m}", f"The answer is \\boxed{{{answer}}}.", answer))
    return out


def mmlu_pro_outputs() -> dict[str, list[tuple[str, str, str | None]]]:
    """question_id -> [(model, response text, extracted answer)] from the real MMLU-Pro model-output files."""
    out: dict[str, list] = {}
    for path in sorted((DATA / MMLU_PRO_OUTPUTS).glob("model_outputs_*.json")):
        model = re.search(r"model_outputs_(.+?)_\d+shots", path.name).group(1)
        for rec in json.loads(path.read_text()):
            text = rec.get("generated_text") or rec.get("model_outputs") or ""
            out.setdefault(str(rec["question_id"]), []).append((model, str(text), rec.get("pred")))
    return out


def write_answer_files(rows: list[dict], folder: Path, real: dict | None = None) -> dict:
    """responses.jsonl (teacher groups) and answers.jsonl (base-model answers), one record per response, matched to
    rows by the row id (`row_id`) and question; the mapping both stages read. `real`: the MMLU-Pro outputs (default:
    read from the shared data). Returns counts for the report."""
    real = mmlu_pro_outputs() if real is None else real
    counts = {"rows_real_groups": 0, "rows_standin_groups": 0, "real_responses": 0, "standin_responses": 0}
    with open(folder / "responses.jsonl", "w") as teach, open(folder / "answers.jsonl", "w") as base:
        for row in rows:
            qid = str(_meta(row).get("question_id", "")) if row["source"] == "mmlu-pro" else ""
            group = real.get(qid) if qid else None
            common = {"row_id": row["id"], "question": row["question"]}
            if group:
                counts["rows_real_groups"] += 1
                counts["real_responses"] += len(group)
                for model, text, pred in group:
                    teach.write(json.dumps({**common, "model": model, "response": text, "answer": pred}) + "\n")
                    base.write(json.dumps({**common, "model": model, "response": text, "answer": pred}) + "\n")
                continue
            counts["rows_standin_groups"] += 1
            for model, text in standin_group(row):
                counts["standin_responses"] += 1
                teach.write(json.dumps({**common, "model": model, "response": text, "answer": None}) + "\n")
            for model, text, answer in standin_answers(row):
                base.write(json.dumps({**common, "model": model, "response": text, "answer": answer}) + "\n")
    (folder / "mapping.yaml").write_text(
        "description: pipeline_scale's answer files (real MMLU-Pro outputs, labelled stand-ins elsewhere)\n"
        "question: question\nid: row_id\nresponses: response\nanswers: answer\nmodel_field: model\n")
    return counts


def write_config(folder: Path, size: int | None) -> Path:
    """The `metakl run` config: what a user of the paper recipe runs, minus the LLM stages (see module doc)."""
    import yaml

    config = {
        "ingest": {"sources": source_specs(SOURCES), "on_error": "skip", **({"sample": size} if size else {}), "seed": 0},
        "import-responses": {"files": [str(folder / "responses.jsonl")], "mapping": str(folder / "mapping.yaml")},
        "reward": {},
        "annotate": {"annotator": "embedding"},
        "merge": {"taxonomy": "seed"},
        "score": {"responses": [str(folder / "answers.jsonl")], "mapping": str(folder / "mapping.yaml"),
                  "plots": False},
        "dedup": {},
        "decontaminate": {"suite": "none", "benchmarks": source_specs(BENCHMARKS)},
        # the paper recipe's filter (annotations/recipes/paper.yaml): Algorithm 1, r = 6, budget and quotas
        "filter": {"base_model": "average", "r": 6, "max_target": 20, "reminders": 2, "budget": 5661,
                   "quotas": {"math": 1547, "general": 2993, "safety": 1121}, "plots": False},
        "publish": {"name": "pipeline_scale", "license": "other"},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------- one measured run


def tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def cached_texts(cache_dir: Path) -> int:
    path = cache_dir / "embeddings.sqlite3"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            return db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    except sqlite3.Error:
        return -1


def embedding_counts(report) -> dict:
    """`encoded` and `cache_hits` where a stage's report counts them: the largest count found (annotate reports its
    embedder's totals and, beside them, the prompts' share of them; summing would count the prompts twice)."""
    found = {"encoded": 0, "cache_hits": 0, "counted": False}

    def walk(x):
        if isinstance(x, dict):
            if "encoded" in x and "cache_hits" in x and isinstance(x["encoded"], int):
                if not found["counted"] or x["encoded"] + int(x["cache_hits"] or 0) > found["encoded"] + found["cache_hits"]:
                    found.update(encoded=x["encoded"], cache_hits=int(x["cache_hits"] or 0), counted=True)
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(report)
    return found


def filter_growth(run: Path, manifest: dict, sizes: list[int], repeats: int = 3, module=None) -> dict:
    """Filter alone, in this process, on random subsets of this run's filter input (input order kept) and on all of
    it, with the run's filter config: the best of `repeats` stage seconds per size and the exponent over >= 3 sizes.
    Three or more sizes and the best of three make the fit less hostage to one loaded moment than two whole runs."""
    import numpy as np

    import metakl.verify.pool as math_pool
    from metakl.io import load_stage
    import metakl.stages.filter

    module = module or metakl.stages.filter  # or another version of the stage's module, to compare on one input
    # every repeat checks its math answers afresh, as one `metakl filter` does (the shared pool remembers verdicts)
    math_pool.shared_pool().close()
    math_pool._shared = math_pool.MathPool(cache=False)
    names = [s["stage"] for s in manifest["stages"]]
    before = manifest["stages"][names.index("filter") - 1]
    ds = load_stage(run / before["folder"])
    cfg = module.FilterConfig(**manifest["config"]["filter"])
    points = []
    for n in sorted({min(n, len(ds)) for n in sizes} | {len(ds)}):
        part = ds if n == len(ds) else ds.select(sorted(np.random.default_rng(0).choice(len(ds), n, replace=False)))
        seconds, load = [], LOAD()[0]
        for _ in range(repeats):
            t = time.perf_counter()
            result = module.filter_prompts(part, cfg)
            seconds.append(time.perf_counter() - t)
        ids = "\n".join(result.artifacts["selection.json"]["ids"])  # in pick order: a change of the selection shows
        points.append({"rows": n, "seconds": round(min(seconds), 3), "load_1min": round(load, 2),
                       "selected": result.report["selected"], "stopped": result.report["stopped"],
                       "selected_ids_sha256": hashlib.sha256(ids.encode()).hexdigest()[:16]})
    return {"points": points, "exponent": exponent([(p["rows"], p["seconds"]) for p in points])}


def floor_experiment(run: Path, manifest: dict, cache: Path, floors: list[float],
                     max_targets: list[int] | None = None) -> list[dict]:
    """The embedding tagger's floor against what filter can select: this run's filter input annotated again at each
    floor (the run's vectors, from its cache: only the tags change), merged onto the seed taxonomy as the run does,
    and filtered with the run's config (and with each of `max_targets` instead of its max_target). Per floor and
    max_target: rows without a unit, selected prompts per domain and quota fill."""
    import dataclasses

    from metakl.io import load_stage
    from metakl.stages.annotate import AnnotateConfig, annotate
    from metakl.stages.filter import FilterConfig, filter_prompts
    from metakl.stages.merge import MergeConfig, merge

    names = [s["stage"] for s in manifest["stages"]]
    ds = load_stage(run / manifest["stages"][names.index("filter") - 1]["folder"])
    config = manifest["config"]
    cfg = FilterConfig(**config["filter"])
    old = os.environ.get("METAKL_CACHE_DIR")
    os.environ["METAKL_CACHE_DIR"] = str(cache)  # the run's own vectors: nothing is embedded again
    out = []
    try:
        for floor in floors:
            t = time.perf_counter()
            tagged = annotate(ds, AnnotateConfig(**{**config["annotate"], "min_similarity": floor})).dataset
            units = merge(tagged, MergeConfig(**config["merge"])).dataset
            untagged = {}
            for d, us in zip(units["domain"], units["units"]):
                untagged.setdefault(d, [0, 0])[0] += not us
                untagged[d][1] += 1
            for max_target in [cfg.max_target, *(max_targets or [])]:
                r = filter_prompts(units, dataclasses.replace(cfg, max_target=max_target)).report
                out.append({"floor": floor, "max_target": max_target, "rows": len(units),
                            "rows_without_units": r["rows_without_units"],
                            "untagged_share_per_domain": {d: round(a / n, 3) for d, (a, n) in sorted(untagged.items())},
                            "units_used": r["units"], "selected": r["selected"],
                            "selected_per_domain": r["selected_per_domain"],
                            "quota_fill": {d: round(r["selected_per_domain"].get(d, 0) / q, 3)
                                           for d, q in cfg.quotas.items()},
                            "stopped": r["stopped"], "targets_sum": r["stop_reason"]["targets_sum"],
                            "seconds": round(time.perf_counter() - t, 1)})
    finally:
        if old is None:
            os.environ.pop("METAKL_CACHE_DIR", None)
        else:
            os.environ["METAKL_CACHE_DIR"] = old
    return out


def run_pipeline(size: int | None, executor: str, keep: bool, filter_sizes: list[int] | None = None,
                 floors: list[float] | None = None, max_targets: list[int] | None = None) -> dict:
    """Ingest (to write the answer files), then `metakl run` of the config in a cold cache, measured per stage."""
    import psutil

    work = Path(tempfile.mkdtemp(prefix="metakl-scale-"))
    cache = work / "cache"
    try:
        t = time.perf_counter()
        rows = ingest_rows(size)
        data_counts = write_answer_files(rows, work)
        prep_seconds = time.perf_counter() - t
        config = write_config(work, size)
        env = {**os.environ, "METAKL_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "METAKL_PROGRESS": "0",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "metakl", "run", str(config), "--out", str(work / "run")]
        if executor == "ray":
            cmd += ["--executor", "ray"]
        load_before = [round(v, 2) for v in LOAD()]
        marks: list[tuple[str, float, int]] = []  # (stage, start time, cached texts at start)
        peaks: dict[str, int] = {}
        current = ["start"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        ps = psutil.Process(proc.pid)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss = tree_rss(ps)
                peaks[current[0]] = max(peaks.get(current[0], 0), rss)
                stop.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        tail: list[str] = []
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-40:]
            m = re.match(r"^([a-z-]+): running \(", line)
            if m:
                current[0] = m.group(1)
                marks.append((m.group(1), time.perf_counter(), cached_texts(cache)))
        proc.wait()
        end = time.perf_counter()
        stop.set()
        sampler.join()
        if proc.returncode != 0:
            raise SystemExit(f"metakl run exited {proc.returncode}; its last lines:\n" + "\n".join(tail))
        manifest = json.loads((work / "run" / "manifest.json").read_text())
        by_name = {s["stage"]: s for s in manifest["stages"]}
        stages = []
        for k, (name, start, texts_before) in enumerate(marks):
            stop_t, texts_after = (marks[k + 1][1], marks[k + 1][2]) if k + 1 < len(marks) else (end, cached_texts(cache))
            entry = by_name.get(name, {})
            folder = work / "run" / entry.get("folder", "")
            report = {}
            for f in folder.glob("*report*.json") if entry.get("folder") else ():
                try:
                    report.update(json.loads(f.read_text()))
                except (OSError, json.JSONDecodeError):
                    pass
            emb = embedding_counts(report)
            stages.append({"stage": name, "rows_in": entry.get("rows_in"), "rows_out": entry.get("rows_out"),
                           "wall_seconds": round(stop_t - start, 2), "seconds": entry.get("seconds"),
                           "peak_gb": round(peaks.get(name, 0) / 2**30, 3),
                           "texts_embedded": texts_after - texts_before,
                           "reported_encoded": emb["encoded"] if emb["counted"] else None,
                           "reported_cache_hits": emb["cache_hits"] if emb["counted"] else None})
        release = work / "run" / by_name.get("publish", {}).get("folder", "missing")
        growth = filter_growth(work / "run", manifest, filter_sizes) if filter_sizes else None
        by_floor = floor_experiment(work / "run", manifest, cache, floors, max_targets) if floors else None
        return {"filter_growth": growth, "floors": by_floor, "size": len(rows), "asked": size, "executor": executor, "prep_seconds": round(prep_seconds, 2),
                "chain_seconds": round(end - t0, 2), "peak_gb": round(max(peaks.values(), default=0) / 2**30, 3),
                "texts_embedded": cached_texts(cache), "stages": stages, "data": data_counts,
                "release_rows": by_name.get("publish", {}).get("rows_out"), "release_written": release.is_dir(),
                "load_before": load_before, "load_after": [round(v, 2) for v in LOAD()]}
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- report


def exponent(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(seconds) vs log(rows) (numpy's polyfit): the power of N the time grows with; None
    with fewer than two sizes."""
    import numpy as np

    pts = [(n, s) for n, s in points if n and s and s > 0]
    if len({n for n, _ in pts}) < 2:
        return None
    rows, seconds = np.log(np.array(pts, dtype=float)).T
    return round(float(np.polyfit(rows, seconds, 1)[0]), 3)


def print_run(r: dict) -> None:
    print(f"\n{r['executor']} executor, {r['size']:,} prompts: chain {r['chain_seconds']:.1f} s, peak {r['peak_gb']:.2f} GB, "
          f"{r['texts_embedded']:,} texts embedded; load {r['load_before']} -> {r['load_after']}")
    print(f"  {'stage':17} {'rows in':>7} {'rows out':>8} {'wall s':>7} {'stage s':>7} {'peak GB':>7} {'embedded':>8} "
          f"{'rep. enc':>8} {'rep. hits':>9}")
    for s in r["stages"]:
        def cell(v, w):
            return f"{'-' if v is None else v:>{w}}"
        print(f"  {s['stage']:17} {cell(s['rows_in'], 7)} {cell(s['rows_out'], 8)} {s['wall_seconds']:>7.1f} "
              f"{cell(s['seconds'], 7)} {s['peak_gb']:>7.2f} {s['texts_embedded']:>8} {cell(s['reported_encoded'], 8)} "
              f"{cell(s['reported_cache_hits'], 9)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,20000,45000",
                        help="comma-separated prompt counts; a size >= what the data holds takes every prompt")
    parser.add_argument("--executor", choices=("local", "ray", "both"), default="local")
    parser.add_argument("--quick", action="store_true", help="300 prompts, local executor: a smoke test")
    parser.add_argument("--keep", action="store_true", help="keep the temporary run folders and caches")
    parser.add_argument("--filter-sizes", default="5000,10000,20000", help=(
        "after the largest local run: filter alone on random subsets of this many of its input rows and on all of "
        "them (best of 3 each), for the filter's exponent over >= 3 sizes; '' skips it"))
    parser.add_argument("--max-targets", default="", help=(
        "with --floors: also filter each floor's tags with these max_target values (e.g. 40,80)"))
    parser.add_argument("--floors", default="", help=(
        "after the largest local run: annotate its filter input again at each of these embedding-tagger floors "
        "(e.g. 0.0,0.30,0.35,0.40; the run's cached vectors) and filter it: untagged rows, selected per domain"))
    args = parser.parse_args()
    floors = [float(s) for s in args.floors.split(",") if s.strip()]
    max_targets = [int(s) for s in args.max_targets.split(",") if s.strip()]
    filter_sizes = [int(s) for s in args.filter_sizes.split(",") if s.strip()]
    if not (DATA / "gsm8k").exists():
        print(json.dumps({"bench": "pipeline_scale", "skipped": f"no shared data under {DATA}", "pass": False}))
        return
    sizes = [300] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    executors = ["local"] if args.quick else (["local", "ray"] if args.executor == "both" else [args.executor])
    total = len(ingest_rows(None))
    runs = []
    for size in sizes:
        for ex in executors:
            largest = size == max(sizes) and ex == executors[0] and not args.quick  # filter's own measurements
            r = run_pipeline(None if size >= total else size, ex, args.keep, filter_sizes if largest else None,
                             floors if largest else None, max_targets)
            print_run(r)
            runs.append(r)
    fits = {}
    for ex in executors:
        mine = [r for r in runs if r["executor"] == ex]
        if len({r["size"] for r in mine}) >= 2:
            fits[ex] = {name: exponent([(r["size"], next(s["wall_seconds"] for s in r["stages"] if s["stage"] == name))
                                        for r in mine]) for name in STAGES}
            fits[ex]["chain"] = exponent([(r["size"], r["chain_seconds"]) for r in mine])
            print(f"\nexponent of wall seconds vs rows ({ex}): " + ", ".join(f"{k} {v}" for k, v in fits[ex].items()))
    growth = next((r["filter_growth"] for r in runs if r.get("filter_growth")), None)
    if growth:
        print("\nfilter alone on its input (best of 3; rows: seconds): "
              + ", ".join(f"{p['rows']:,}: {p['seconds']} s (load {p['load_1min']})" for p in growth["points"])
              + f"; exponent {growth['exponent']} (N log N: ~1.10)")
    by_floor = next((r["floors"] for r in runs if r.get("floors")), None)
    for f in by_floor or []:
        print(f"floor {f['floor']:.2f}, max_target {f['max_target']}: {f['rows_without_units']:,} of {f['rows']:,} rows without a unit "
              f"{f['untagged_share_per_domain']}; selected {f['selected']:,} {f['selected_per_domain']} "
              f"(quota fill {f['quota_fill']}), stopped: {f['stopped']}, targets add up to {f['targets_sum']:,}")
    ratios = {}
    for size in sorted({r["size"] for r in runs}):
        pair = {r["executor"]: r for r in runs if r["size"] == size}
        if "local" in pair and "ray" in pair:
            ratios[size] = round(pair["ray"]["chain_seconds"] / pair["local"]["chain_seconds"], 3)
            print(f"ray / local at {size:,} prompts: {ratios[size]}")
    largest = max(runs, key=lambda r: r["size"])
    full = largest["size"] >= total
    checks = {}
    if full:
        checks["chain_seconds"] = largest["chain_seconds"] <= TARGETS["chain_seconds"]
        checks["peak_gb"] = largest["peak_gb"] <= TARGETS["peak_gb"]
    for ex, f in fits.items():
        checks[f"exponent_{ex}"] = all(v is None or v <= TARGETS["exponent"] for k, v in f.items() if k != "chain")
    if growth:
        checks["filter_exponent"] = growth["exponent"] is not None and growth["exponent"] <= TARGETS["exponent"]
    if ratios:
        checks["ray_over_local"] = all(v <= TARGETS["ray_over_local"] for v in ratios.values())
    checks["release_written"] = all(r["release_written"] and r["release_rows"] for r in runs)
    print(json.dumps({"bench": "pipeline_scale", "quick": args.quick, "prompts_available": total,
                      "runs": [{k: v for k, v in r.items()} for r in runs], "exponents": fits, "filter_growth": growth, "floors": by_floor, "ray_over_local": ratios,
                      "targets": TARGETS, "checks": checks, "pass": all(checks.values())}))


if __name__ == "__main__":
    main()
