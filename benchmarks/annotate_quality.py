"""How good are the knowledge tags of each annotator: open-set SmolLM2, guided SmolLM2, and the embedding tagger?

1. The labelled check set (tests/fixtures/annotate/checkset.jsonl, written by the team: 60 test prompts over math,
   general reasoning and safety, each with the seed-taxonomy units a careful person would assign; 24 more form a
   dev split used only to calibrate the embedding tagger). Per annotator: the share of prompts with at least one
   valid unit, and micro precision / recall / F1 of the units against the labels.
   Open-set answers are free skill names; they become units the way the pipeline does it: `merge --taxonomy seed`
   (a skill that is a unit, shares its stems, or lies within the merge threshold of one maps to it; the rest form
   new units, which count as invalid). "open+nearest" is a lenient variant: every open skill goes to its nearest
   seed unit whatever the distance.
2. Proxies on real data (../shared/data): MATH problems carry a subject (`type`), MMLU questions a subject (the file
   name), XSTest prompts a label (safe / unsafe). A prompt counts as right when its first unit lies in an area that
   fits the subject (SUBJECT_AREAS below; for XSTest: a benign look-alike unit for safe prompts, a harm or jailbreak
   unit for unsafe ones).

3. `--tags`: the labelled real prompts (benchmarks/data/tag_labels.jsonl: 312 prompts over the 10 sources of
   ../shared/data, references and labels only, the texts read from ../shared/data). Per source, dev and test split
   apart: coverage (share of prompts tagged; abstaining counts against it, not against precision) and the
   precision of the first unit (right when the labeller listed it for the prompt). The test split is the reported
   number; thresholds and taxonomy edits were tuned on the dev split only.

`--calibrate` only sweeps the embedding tagger's (min_similarity, similarity_margin) on the dev split and prints the
best grid point by micro F1 (no model needed).

    python benchmarks/annotate_quality.py [--quick] [--base-url http://127.0.0.1:8011/v1]   # no --base-url: starts vLLM
    python benchmarks/annotate_quality.py --calibrate
    python benchmarks/annotate_quality.py --tags [--annotators embedding,guided] [--taxonomy FILE]

Figures are printed as a table; the last line is a JSON object with "pass": guided SmolLM2 gives >= 1 valid unit for
>= 95% of the test prompts, and guided or embedding beats open-set SmolLM2 on F1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SHARED_DATA, llm_server  # noqa: E402

CHECKSET = ROOT / "tests" / "fixtures" / "annotate" / "checkset.jsonl"
# Team-written labels of real prompts: references into ../shared/data (never the texts), drawn by tag_sample.py.
TAG_LABELS = ROOT / "benchmarks" / "data" / "tag_labels.jsonl"
DATA = SHARED_DATA

# Areas of the seed taxonomy that fit each subject. MATH's Algebra and Intermediate Algebra overlap (quadratics,
# functions), as do Prealgebra and Algebra; problem-solving techniques fit every math subject.
_TECH = {"problem_solving"}
MATH_AREAS = {
    "Algebra": {"algebra", "intermediate_algebra"} | _TECH,
    "Intermediate Algebra": {"intermediate_algebra", "algebra"} | _TECH,
    "Prealgebra": {"arithmetic", "algebra", "statistics"} | _TECH,
    "Precalculus": {"precalculus", "intermediate_algebra"} | _TECH,
    "Number Theory": {"number_theory"} | _TECH,
    "Geometry": {"geometry"} | _TECH,
    "Counting & Probability": {"counting_probability"} | _TECH,
}
_MATHS = {"arithmetic", "algebra", "intermediate_algebra", "number_theory", "geometry", "counting_probability",
          "precalculus", "calculus", "statistics", "problem_solving", "advanced_math"}
MMLU_AREAS = {
    "abstract_algebra": {"advanced_math", "number_theory"}, "anatomy": {"biology", "medicine"},
    "astronomy": {"earth_space", "physics"}, "business_ethics": {"business", "philosophy"},
    "clinical_knowledge": {"medicine", "biology"}, "college_biology": {"biology"}, "college_chemistry": {"chemistry"},
    "college_computer_science": {"computer_science", "advanced_math"}, "college_mathematics": _MATHS,
    "college_medicine": {"medicine", "biology"}, "college_physics": {"physics"},
    "computer_security": {"computer_science"}, "conceptual_physics": {"physics"},
    "econometrics": {"economics", "statistics"}, "electrical_engineering": {"physics", "computer_science"},
    "elementary_mathematics": _MATHS, "formal_logic": {"logic"}, "high_school_biology": {"biology"},
    "high_school_chemistry": {"chemistry"}, "high_school_computer_science": {"computer_science"},
    "high_school_european_history": {"history"}, "high_school_geography": {"geography", "earth_space"},
    "high_school_government_and_politics": {"politics", "law"}, "high_school_macroeconomics": {"economics"},
    "high_school_mathematics": _MATHS, "high_school_microeconomics": {"economics"},
    "high_school_physics": {"physics"}, "high_school_psychology": {"psychology"},
    "high_school_statistics": {"statistics", "counting_probability"}, "high_school_us_history": {"history"},
    "high_school_world_history": {"history"}, "human_aging": {"medicine", "biology", "psychology"},
    "human_sexuality": {"medicine", "biology", "psychology", "sociology"}, "international_law": {"law", "politics"},
    "jurisprudence": {"law", "philosophy"}, "logical_fallacies": {"logic"},
    "machine_learning": {"computer_science", "statistics"}, "management": {"business"}, "marketing": {"business"},
    "medical_genetics": {"biology", "medicine"}, "moral_disputes": {"philosophy"},
    "moral_scenarios": {"philosophy", "commonsense"}, "nutrition": {"medicine", "biology"},
    "philosophy": {"philosophy"}, "prehistory": {"history"}, "professional_accounting": {"business"},
    "professional_law": {"law"}, "professional_medicine": {"medicine", "biology"},
    "professional_psychology": {"psychology"}, "public_relations": {"business", "sociology"},
    "security_studies": {"politics"}, "sociology": {"sociology"}, "us_foreign_policy": {"politics", "history"},
    "virology": {"biology", "medicine"}, "world_religions": {"religion"},
    # miscellaneous and global_facts have no single subject: left out of the proxy.
}
XSTEST_AREAS = {"safe": {"benign"}, "unsafe": {"harmful", "jailbreak"}}


# ---------------------------------------------------------------- data


def checkset(split: str | None) -> list[dict]:
    rows = [json.loads(line) for line in CHECKSET.read_text().splitlines() if line.strip()]
    return [r for r in rows if split in (None, "all", r["split"])]


def as_dataset(rows: list[dict], source: str = "checkset"):
    from datasets import Dataset

    from metakl.schema import features, make_id

    return Dataset.from_list([
        {"id": make_id(r["question"], f"{source}-{r['domain']}", r.get("choices")), "source": source,
         "domain": r["domain"], "question": r["question"], "reference": "", "choices": list(r.get("choices") or []),
         "meta": json.dumps(r.get("meta") or {}), "errors": []}
        for r in rows
    ], features=features())


def proxy_rows(per_math_type: int, per_mmlu_subject: int, per_xstest_type: int, seed: int = 0) -> list[dict]:
    """Real prompts with a subject: MATH by type, MMLU by subject, XSTest by type (label as the subject)."""
    from metakl.stages import get_stage

    ingest = get_stage("ingest")
    sources = []
    for preset, rel in (("math", "math/test_minus_math500.jsonl"), ("mmlu-csv", "mmlu/test"),
                        ("xstest", "xstest/xstest_prompts.csv")):
        if (DATA / rel).exists():
            sources.append(f"{preset}={DATA / rel}")
    if not sources:
        return []
    ds = ingest(None, ingest.config_cls(sources=tuple(sources), on_error="skip")).dataset
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in ds:
        meta = json.loads(row["meta"] or "{}")
        if row["source"] == "math":
            key, subject, quota = ("math", meta.get("type")), meta.get("type"), per_math_type
        elif row["source"] == "mmlu":
            key, subject, quota = ("mmlu", meta.get("subject")), meta.get("subject"), per_mmlu_subject
            if subject not in MMLU_AREAS:
                continue
        else:
            label = "safe" if row["reference"] == "comply" else "unsafe"
            key, subject, quota = ("xstest", meta.get("type")), label, per_xstest_type
        groups[key].append({"domain": row["domain"], "question": row["question"], "choices": row["choices"],
                            "meta": {"proxy": key[0], "subject": subject}, "quota": quota})
    rng = random.Random(seed)
    out = []
    for key in sorted(groups):
        items = groups[key]
        rng.shuffle(items)
        out.extend(items[: items[0]["quota"]])
    return out


def tag_sample(split: str | None = None) -> tuple[list[dict], int]:
    """The labelled tag sample with its prompt texts read from ../shared/data (rows whose file or id is not there
    are left out and counted)."""
    from metakl.stages import get_stage

    labels = [json.loads(line) for line in TAG_LABELS.read_text().splitlines() if line.strip()]
    labels = [r for r in labels if split in (None, "all", r["split"])]
    ingest = get_stage("ingest")
    rows_by_id: dict[str, dict] = {}
    for preset, rel in sorted({(r["preset"], r["file"]) for r in labels}):
        if (DATA / rel).exists():
            ds = ingest(None, ingest.config_cls(sources=(f"{preset}={DATA / rel}",), on_error="skip")).dataset
            rows_by_id.update((row["id"], row) for row in ds)
    out = []
    for r in labels:
        row = rows_by_id.get(r["id"])
        if row is not None:
            out.append({**r, "domain": row["domain"], "question": row["question"], "choices": row["choices"],
                        "reference": row["reference"]})
    return out, len(labels) - len(out)


def first_unit_scores(pred: list[list[str]], rows: list[dict]) -> dict[str, dict]:
    """Per source and overall: prompts, tagged (coverage), and the precision of the first unit (right when the
    labeller accepted it for the prompt; any tag on a prompt labelled "no unit fits" is wrong)."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for p, r in zip(pred, rows):
        for key in (r["source"], "all"):
            acc[key][0] += 1
            if p:
                acc[key][1] += 1
                acc[key][2] += p[0] in r["units"]
    return {k: {"n": n, "tagged": t, "coverage": round(t / n, 3), "precision": round(ok / t, 3) if t else None}
            for k, (n, t, ok) in sorted(acc.items(), key=lambda kv: (kv[0] == "all", kv[0]))}


def print_first_unit_table(results: dict[str, dict[str, dict]]) -> None:
    """`results`: label (annotator/split) -> first_unit_scores."""
    sources = list(next(iter(results.values())))
    def cell(r: dict | None) -> str:
        if r is None:
            return f"{'':>14}"
        precision = r["precision"] if r["precision"] is not None else float("nan")
        return f"{precision:>7.2f} ({r['coverage']:.2f})"

    print(f"{'first unit':<22}" + "".join(f"{s[:13]:>14}" for s in sources))
    for label, res in results.items():
        print(f"{label:<22}" + "".join(cell(res.get(s)) for s in sources))
    print("(precision of the first unit, coverage = share of prompts tagged, in brackets)")


# ---------------------------------------------------------------- annotators


def run_annotator(name: str, ds, args, embedder, seed_tax) -> tuple[list[list[str]], dict]:
    """Units per row (seed-taxonomy names; anything else counts as invalid) and the stage report."""
    from metakl.stages.annotate import AnnotateConfig, annotate

    if name == "embedding":
        cfg = AnnotateConfig(annotator="embedding", min_similarity=args.min_similarity,
                             similarity_margin=args.similarity_margin)
        r = annotate(ds, cfg, embedder=embedder, taxonomy=seed_tax)
        return r.dataset["units"], r.report
    backend = llm_backend(args)
    if name == "guided":
        cfg = AnnotateConfig(annotator="guided", max_tokens=args.max_tokens, retries=args.retries)
        r = annotate(ds, cfg, backend=backend, embedder=embedder, taxonomy=seed_tax)
        return r.dataset["units"], r.report
    cfg = AnnotateConfig(annotator="open", max_skills=args.open_max_skills, max_tokens=args.max_tokens,
                         retries=args.retries)
    r = annotate(ds, cfg, backend=backend)
    return open_to_units(r.dataset, embedder, seed_tax), r.report


def open_to_units(ds, embedder, seed_tax) -> dict[str, list[list[str]]]:
    """Open-set skills -> seed units: through merge onto the taxonomy, and by nearest unit (lenient)."""
    import numpy as np

    from metakl.stages.merge import MergeConfig, merge
    from metakl.stages.unit_index import UnitIndex

    merged = merge(ds, MergeConfig(), taxonomy=seed_tax, embedder=embedder).dataset["units"]
    strict = [[u for u in units if u in seed_tax["units"]] for units in merged]
    index = UnitIndex.build(seed_tax, embedder)
    nearest = []
    for row in ds:
        names = [k["skill"] for k in row["knowledge"]]
        if not names:
            nearest.append([])
            continue
        vecs = embedder([n.replace("_", " ") for n in names])
        cols = index.eligible(row["domain"])
        sims = vecs @ index.vectors[cols].T
        nearest.append(list(dict.fromkeys(index.names[cols[int(np.argmax(s))]] for s in sims)))
    return {"open": strict, "open+nearest": nearest}


_BACKEND = None


def llm_backend(args):
    global _BACKEND
    if _BACKEND is None:
        from metakl.llm import get_backend

        cache = args.cache_dir or tempfile.mkdtemp(prefix="annotate-quality-cache-")
        _BACKEND = get_backend("openai", args.model, base_url=args.base_url, cache_dir=cache,
                               concurrency=args.concurrency)
    return _BACKEND


# ---------------------------------------------------------------- metrics


def scores(pred: list[list[str]], gold: list[list[str]], known: set[str]) -> dict:
    tp = fp = fn = 0
    valid = 0
    for p, g in zip(pred, gold):
        p = [u for u in dict.fromkeys(p)]
        valid += any(u in known for u in p)
        tp += len(set(p) & set(g))
        fp += len(set(p) - set(g))
        fn += len(set(g) - set(p))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {"valid": valid / len(pred) if pred else 0.0, "precision": prec, "recall": rec,
            "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "units_per_prompt": sum(len(p) for p in pred) / len(pred) if pred else 0.0}


def proxy_scores(pred: list[list[str]], rows: list[dict], area_of: dict[str, str | None]) -> dict:
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for p, r in zip(pred, rows):
        kind, subject = r["meta"]["proxy"], r["meta"]["subject"]
        allowed = {"math": MATH_AREAS, "mmlu": MMLU_AREAS, "xstest": XSTEST_AREAS}[kind].get(subject)
        if allowed is None:
            continue
        hits[kind][1] += 1
        hits[kind][0] += bool(p) and area_of.get(p[0]) in allowed
    return {k: round(h / t, 3) for k, (h, t) in sorted(hits.items())} | {"n": {k: t for k, (_, t) in sorted(hits.items())}}


def calibrate(embedder, seed_tax) -> dict:
    """Sweep the embedding tagger's thresholds on the dev split; the best micro F1 wins (ties: the simpler rule)."""
    from metakl.stages.unit_index import UnitIndex, prompt_text, retrieval_domain, select_by_similarity

    rows = checkset("dev")
    index = UnitIndex.build(seed_tax, embedder)
    vecs = embedder([prompt_text(r["question"], r["choices"]) for r in rows])
    idx, sim = index.search(vecs, [retrieval_domain(r["domain"], r["question"]) for r in rows], 3)
    gold = [r["units"] for r in rows]
    grid = []
    for floor in [x / 100 for x in range(0, 55, 5)]:
        for margin in [0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 1.0]:
            chosen = select_by_similarity(idx, sim, 3, floor, margin)
            s = scores([[index.names[j] for j in c] for c in chosen], gold, set(index.names))
            grid.append((round(s["f1"], 4), -margin, floor, s))
    best = max(grid, key=lambda g: (g[0], g[1], -g[2]))
    print(f"{'min_sim':>8} {'margin':>7} {'valid':>6} {'prec':>6} {'recall':>6} {'f1':>6}")
    for f1, neg_margin, floor, s in sorted(grid, key=lambda g: -g[0])[:12]:
        print(f"{floor:8.2f} {-neg_margin:7.2f} {s['valid']:6.2f} {s['precision']:6.3f} {s['recall']:6.3f} {f1:6.3f}")
    return {"min_similarity": best[2], "similarity_margin": -best[1], "dev_f1": best[0], "dev_prompts": len(rows)}


def run_tags(args, embedder, tax) -> None:
    """First-unit precision and coverage per source on the labelled real prompts, dev and test split apart."""
    rows, missing = tag_sample("all")
    if not rows:
        print(json.dumps({"bench": "annotate_tags", "skipped": f"no shared data under {DATA}", "pass": False}))
        return
    ds = as_dataset(rows, "tags")
    table: dict[str, dict[str, dict]] = {}
    for name in [a.strip() for a in args.annotators.split(",") if a.strip()]:
        t0 = time.perf_counter()
        units, _ = run_annotator(name, ds, args, embedder, tax)
        print(f"[{name}] {len(rows)} prompts in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for label, pred in (units if isinstance(units, dict) else {name: units}).items():
            for split in ("dev", "test"):
                keep = [i for i, r in enumerate(rows) if r["split"] == split]
                table[f"{label} {split}"] = first_unit_scores([pred[i] for i in keep], [rows[i] for i in keep])
    print(f"\nlabelled real prompts: {len(rows)} ({missing} not found under {DATA}); "
          f"taxonomy {tax.get('name')}; load average {os.getloadavg()[0]:.1f}")
    print_first_unit_table(table)
    test = {k: v["all"] for k, v in table.items() if k.endswith(" test")}
    emb = test.get("embedding test")
    out = {"bench": "annotate_tags", "prompts": len(rows), "missing": missing,
           **{k.replace(" ", "_"): {"precision": v["precision"], "coverage": v["coverage"]} for k, v in test.items()},
           "per_source_test": {s: [v["precision"], v["coverage"]] for s, v in table.get("embedding test", {}).items()},
           "target": {"embedding_test_first_unit_precision": 0.8},
           "pass": bool(emb and emb["precision"] is not None and emb["precision"] >= 0.8)}
    print(json.dumps(out))


def needs_llm(args) -> bool:
    """An LLM annotator is asked for (--calibrate asks no model). Without --base-url, llm_server then starts a local vLLM server."""
    return not args.calibrate and bool({"guided", "open"} & {a.strip() for a in args.annotators.split(",")})


def main() -> None:
    from metakl.stages.annotate import MIN_SIMILARITY, SIMILARITY_MARGIN

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default=os.environ.get("METAKL_BASE_URL"),
                    help="an OpenAI-compatible server serving --model (default: start a local vLLM server)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--cache-dir", default=None, help="request cache (default: a fresh temporary folder)")
    ap.add_argument("--annotators", default=None, help="default: embedding,guided,open (--tags: embedding)")
    ap.add_argument("--split", default="test", choices=["test", "dev", "all"])
    ap.add_argument("--quick", action="store_true", help="smaller proxy samples")
    ap.add_argument("--no-proxies", action="store_true")
    ap.add_argument("--calibrate", action="store_true", help="only calibrate the embedding tagger on the dev split")
    ap.add_argument("--tags", action="store_true",
                    help="only the labelled real prompts (benchmarks/data/tag_labels.jsonl): first-unit precision per source")
    ap.add_argument("--taxonomy", default=None, help="taxonomy to evaluate (default: the seed taxonomy)")
    ap.add_argument("--min-similarity", type=float, default=None,
                    help=f"embedding tagger floor (default: the taxonomy's own, else {MIN_SIMILARITY})")
    ap.add_argument("--similarity-margin", type=float, default=SIMILARITY_MARGIN)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--open-max-skills", type=int, default=4)
    args = ap.parse_args()
    args.annotators = args.annotators or ("embedding" if args.tags else "embedding,guided,open")
    with llm_server(args, needed=needs_llm(args)):
        run(args)


def run(args) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("METAKL_TORCH_THREADS", "1")))
    from metakl.embed import load_embedder
    from metakl.stages.annotate import load_annotation_taxonomy

    embedder = load_embedder("all-minilm-l6-v2", 128)
    seed_tax, _ = load_annotation_taxonomy(getattr(args, "taxonomy", None))
    known = set(seed_tax["units"])
    area_of = {u: e.get("area") for u, e in seed_tax["units"].items()}
    if args.calibrate:
        best = calibrate(embedder, seed_tax)
        print(json.dumps({"bench": "annotate_calibration", **best, "pass": True}))
        return
    if getattr(args, "tags", False):
        run_tags(args, embedder, seed_tax)
        return

    rows = checkset(args.split)
    ds = as_dataset(rows)
    gold = [r["units"] for r in rows]
    proxies = [] if args.no_proxies else proxy_rows(*((3, 1, 2) if args.quick else (15, 2, 5)))
    pds = as_dataset(proxies, "proxy") if proxies else None
    results: dict[str, dict] = {}
    for name in [a.strip() for a in args.annotators.split(",") if a.strip()]:
        t0 = time.perf_counter()
        units, report = run_annotator(name, ds, args, embedder, seed_tax)
        seconds = time.perf_counter() - t0
        variants = units if isinstance(units, dict) else {name: units}
        proxy_units = None
        if pds is not None:
            proxy_units, _ = run_annotator(name, pds, args, embedder, seed_tax)
        for label, pred in variants.items():
            res = scores(pred, gold, known)
            res["by_domain"] = {d: round(scores([p for p, r in zip(pred, rows) if r["domain"] == d],
                                                [r["units"] for r in rows if r["domain"] == d], known)["f1"], 3)
                                for d in ("math", "general", "safety")}
            res["seconds"] = round(seconds, 1)
            if proxy_units is not None:
                pp = proxy_units[label] if isinstance(proxy_units, dict) else proxy_units
                res["proxy_top_unit_in_subject"] = proxy_scores(pp, proxies, area_of)
            results[label] = res
        print(f"[{name}] done in {seconds:.1f} s; report errors: {report.get('errors')}", file=sys.stderr)

    print(f"\nlabelled check set ({args.split}: {len(rows)} prompts); load average {os.getloadavg()[0]:.1f}")
    print(f"{'annotator':<14} {'valid':>6} {'prec':>6} {'recall':>6} {'F1':>6} {'units/p':>7}  F1 math/general/safety"
          f"   proxy: MATH  MMLU  XSTest")
    for label, r in results.items():
        px = r.get("proxy_top_unit_in_subject", {})
        print(f"{label:<14} {r['valid']:6.1%} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} "
              f"{r['units_per_prompt']:7.2f}  {r['by_domain']['math']:.3f}/{r['by_domain']['general']:.3f}/"
              f"{r['by_domain']['safety']:.3f}        {px.get('math', float('nan')):.3f} "
              f"{px.get('mmlu', float('nan')):.3f} {px.get('xstest', float('nan')):.3f}")
    if proxies:
        print(f"proxy prompts: {dict(Counter(r['meta']['proxy'] for r in proxies))}")
    g, e, o = results.get("guided"), results.get("embedding"), results.get("open")
    checks = {}
    if g:
        checks["guided_valid_ge_95"] = g["valid"] >= 0.95
    if o and (g or e):
        checks["guided_or_embedding_beats_open"] = max(x["f1"] for x in (g, e) if x) > o["f1"]
    out = {"bench": "annotate_quality", "split": args.split, "prompts": len(rows),
           **{f"{k}_{m}": round(v[m], 3) for k, v in results.items() for m in ("valid", "precision", "recall", "f1")},
           **{f"{k}_proxy": {kk: vv for kk, vv in v.get("proxy_top_unit_in_subject", {}).items() if kk != "n"}
              for k, v in results.items()},
           "targets": {"guided_valid": 0.95, "beats_open_f1": True}, **checks,
           "load_average": round(os.getloadavg()[0], 2), "pass": all(checks.values()) if checks else False}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
