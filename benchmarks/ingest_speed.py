"""Ingest throughput and memory: 200K rows built from the real files in ../shared/data, repeated with perturbations.

Compared side by side in one run:
  - `columns`: the stage as shipped (rows mapped into column lists, one Dataset.from_dict at the end);
  - `row-dicts`: the same mapping, but collecting one dict per row and building with Dataset.from_list, the
    obvious alternative, to show what the column build saves.
Memory: the process's peak RSS after the first and after the second full pass of `columns` (target: the second
pass raises it by at most 5%), and the Python memory still allocated after a further pass, traced with tracemalloc
(target: under 1 MB, i.e. the stage keeps nothing between calls). Current RSS after each pass is printed too; it
moves by a few percent with the allocator's arenas and is not a target.

Usage: python benchmarks/ingest_speed.py [--quick] [--rows N]
Without ../shared/data (or METAKL_SHARED_DATA) the made-up fixtures under tests/fixtures/ingest are repeated instead.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SHARED_DATA  # noqa: E402

from datasets import Dataset  # noqa: E402

from metakl.stages import ingest as stage  # noqa: E402
from metakl.stages.ingest.extract import meta_from_file_name  # noqa: E402

SHARED = SHARED_DATA
FIXTURES = ROOT / "tests" / "fixtures" / "ingest" / "local"
TARGET_ROWS_PER_S = 20_000
# (preset, file under shared/data, fixture fallback, share of the rows)
MIX = [
    ("gsm8k", "gsm8k/train.jsonl", "gsm8k_train.jsonl", 0.25),
    ("math", "math/test_minus_math500.jsonl", "math_test.jsonl", 0.15),
    ("commonsenseqa-raw", "commonsenseqa/train_rand_split.jsonl", "commonsenseqa_train_rand_split.jsonl", 0.15),
    ("csqa2", "csqa2/CSQA2_train.json", "CSQA2_train.json", 0.1),
    ("logiqa2", "logiqa2/dev.txt", "logiqa2_dev.txt", 0.05),
    ("mmlu-csv", "mmlu/test/high_school_biology_test.csv", "mmlu/anatomy_test.csv", 0.15),
    ("xstest", "xstest/xstest_prompts.csv", "xstest_prompts.csv", 0.05),
    ("hh-rlhf", "hh_rlhf_harmless_base/test.jsonl", "hh_rlhf_test.jsonl", 0.1),
]


def _perturb(text: str, k: int) -> str:
    # A different, still natural-looking question per repetition; every 50th copy is an exact duplicate on purpose.
    return text if k % 50 == 49 else f"{text} (variant {k})"


def build_inputs(total: int, workdir: Path) -> tuple[list[tuple[str, Path]], str]:
    real = (SHARED / MIX[0][1]).exists()
    specs = []
    for preset, rel, fixture, share in MIX:
        src = SHARED / rel if real else FIXTURES / fixture
        n = int(total * share)
        out = workdir / f"{preset}{src.suffix}"
        if src.suffix == ".csv":
            with open(src, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            qkey = {"mmlu-csv": "question", "xstest": "prompt"}[preset]
            with open(out, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                for i in range(n):
                    r = dict(rows[i % len(rows)])
                    r[qkey] = _perturb(r[qkey], i // len(rows))
                    w.writerow(r)
            if preset == "mmlu-csv":  # a folder of per-subject files, as MMLU ships
                folder = workdir / "mmlu"
                folder.mkdir()
                out = out.rename(folder / "high_school_biology_test.csv").parent
        else:
            rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
            with open(out, "w", encoding="utf-8") as f:
                for i in range(n):
                    r = json.loads(json.dumps(rows[i % len(rows)]))
                    k = i // len(rows)
                    if preset == "commonsenseqa-raw":
                        r["question"]["stem"] = _perturb(r["question"]["stem"], k)
                    elif preset == "math":
                        r["problem"] = _perturb(r["problem"], k)
                    elif preset == "hh-rlhf":
                        r["chosen"] = r["chosen"].replace("\n\nAssistant:", f" (variant {k})\n\nAssistant:", 1) if k % 50 != 49 else r["chosen"]
                    else:
                        r["question"] = _perturb(r["question"], k)
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        specs.append((preset, out))
    return specs, "shared data" if real else "fixtures"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident memory (Linux /proc; falls back to the peak elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()


def run_columns(specs):
    sources = [stage.SourceSpec(str(p), stage.load_preset(name)) for name, p in specs]
    result = stage.ingest(sources)
    return len(result.dataset), result.report


def run_row_dicts(specs):
    """The alternative: a dict per row, Dataset.from_list at the end (same reading, mapping and validation)."""
    from metakl.schema import features, make_id

    rows = []
    for name, p in specs:
        mapping = stage.load_preset(name)
        for path, _, rec in stage.read_source(stage.SourceSpec(str(p), mapping)):
            row = stage.map_record(rec, mapping, meta_from_file_name(path, mapping))
            row["id"] = make_id(row["question"], row["source"], row["choices"])
            row["errors"] = []
            rows.append(row)
    return len(Dataset.from_list(rows, features=features()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20K rows instead of 200K")
    ap.add_argument("--rows", type=int, default=None)
    args = ap.parse_args()
    total = args.rows or (20_000 if args.quick else 200_000)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        specs, origin = build_inputs(total, Path(tmp))
        results = {}
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        n, report = run_columns(specs)
        results["columns_pass1"] = time.perf_counter() - t
        cpu1 = time.process_time() - c
        peak1 = peak_rss_mb()
        gc.collect()
        rss1 = rss_mb()
        t = time.perf_counter()
        n2, _ = run_columns(specs)
        results["columns_pass2"] = time.perf_counter() - t
        peak2 = peak_rss_mb()
        gc.collect()
        rss2 = rss_mb()
        # What a pass leaves behind, exactly: Python allocations still alive after a third (untimed) pass.
        import tracemalloc

        tracemalloc.start()
        run_columns(specs)
        gc.collect()
        retained_mb = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        gc.collect()
        t = time.perf_counter()
        n3 = run_row_dicts(specs)
        results["row_dicts"] = time.perf_counter() - t
    records = report["totals"]["records"]
    dups = report["totals"]["duplicates_within"] + report["totals"]["duplicates_across"]
    assert n3 == n + dups, (n3, n, dups)  # row-dicts keeps the duplicates: otherwise the same work
    best = min(results["columns_pass1"], results["columns_pass2"])  # rows_per_s: the better of the two passes
    rate = records / best
    rate_rows = records / results["row_dicts"]
    print(f"input: {records} records from {origin} ({len(specs)} sources); kept {n} "
          f"(duplicates {report['totals']['duplicates_within']}); {os.cpu_count()} CPUs")
    print(f"{'variant':<22}{'seconds':>10}{'rows/s':>12}")
    print(f"{'columns (pass 1)':<22}{results['columns_pass1']:>10.2f}{records / results['columns_pass1']:>12,.0f}")
    print(f"{'columns (pass 2)':<22}{results['columns_pass2']:>10.2f}{records / results['columns_pass2']:>12,.0f}")
    print(f"{'row dicts + from_list':<22}{results['row_dicts']:>10.2f}{rate_rows:>12,.0f}")
    print(f"CPU time of pass 1: {cpu1:.2f} s ({records / cpu1:,.0f} rows per CPU-second; wall time also counts "
          "other processes on a shared machine)")
    print(f"peak RSS after pass 1: {peak1:.0f} MB, after pass 2: {peak2:.0f} MB; "
          f"RSS once each pass is done: {rss1:.0f} MB, {rss2:.0f} MB")
    growth = peak2 / peak1 - 1
    rss_growth = rss2 / rss1 - 1
    print(f"Python memory still allocated after a further pass: {retained_mb:.2f} MB")
    ok = rate >= TARGET_ROWS_PER_S and growth <= 0.05 and retained_mb < 1.0 and n == n2
    print(json.dumps({
        "bench": "ingest_speed", "rows": records, "kept": n, "rows_per_s": round(rate), "rows_per_cpu_s": round(records / cpu1),
        "row_dicts_rows_per_s": round(rate_rows), "columns_over_row_dicts": round(rate / rate_rows, 2),
        "peak_rss_mb_pass1": round(peak1), "peak_rss_mb_pass2": round(peak2), "peak_growth": round(growth, 3),
        "rss_mb_after_pass1": round(rss1), "rss_mb_after_pass2": round(rss2), "rss_growth": round(rss_growth, 3),
        "retained_mb_after_pass": round(retained_mb, 3), "target_retained_mb": 1.0,
        "target_rows_per_s": TARGET_ROWS_PER_S, "target_peak_growth": 0.05, "data": origin, "pass": ok,
    }))


if __name__ == "__main__":
    main()
