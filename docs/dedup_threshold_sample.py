"""Draw the removals reviewed in docs/dedup_threshold.md.

Runs the dedup stage on real prompts at several ε (embeddings through metakl.embed, cached), counts the removals per
domain at each, and prints a seeded sample of the removal pairs (removed prompt, kept twin, cosine) of the loosest ε,
stratified by domain and similarity band, for reading.

    metakl ingest ... --out /tmp/study/ingest        # the sources listed in docs/dedup_threshold.md
    python docs/dedup_threshold_sample.py /tmp/study/ingest --per-cell 6 > /tmp/study/sample.md
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EPSILONS = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10, 0.12, 0.14]
BANDS = [0.86, 0.88, 0.90, 0.92, 0.94, 0.96, 0.97, 0.98, 0.99, 1.0001]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", help="a stage folder (ingest output)")
    ap.add_argument("--per-cell", type=int, default=6, help="pairs per (domain, band)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a dedup setting for every run, e.g. --set match_answers=false")
    ap.add_argument("--json", help="also write the sampled pairs (ids, cosine, domain) to this file")
    args = ap.parse_args()
    import json

    import yaml

    settings = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.set)}

    from metakl.embed import Embedder
    from metakl.io import load_stage
    from metakl.stages.dedup import DedupConfig, dedup

    ds = load_stage(args.stage)
    emb = Embedder()
    domains = np.array(ds["domain"])
    names = sorted(set(domains.tolist()))
    results = {}
    print(f"# {len(ds)} prompts: {dict(Counter(ds['source']))}\n")
    print("| ε | cosine ≥ | " + " | ".join(f"{d} removed" for d in names) + " | pair hits refused (numbers / answer / ending) |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for eps in EPSILONS:
        r = dedup(ds, DedupConfig(epsilon=eps, keep="first", **settings), embedder=emb)
        results[eps] = r
        dup = np.array(r.dataset["duplicate_of"])
        cells = [f"{int((dup[domains == d] != '').sum())} / {int((domains == d).sum())}" for d in names]
        g = r.report["pair_hits_ruled_out"]
        print(f"| {eps} | {1 - eps:.2f} | " + " | ".join(cells) + f" | {g['numbers']} / {g.get('answer', 0)} / "
              f"{g['ending']} |")

    loose = results[max(EPSILONS)]
    out = loose.dataset
    index = {i: k for k, i in enumerate(out["id"])}
    dup = out["duplicate_of"]
    from metakl.stages.dedup.search import find_duplicates  # noqa: F401  (same code path as the stage)

    # Similarity of each removal to its twin, recomputed from the cached embeddings.
    from metakl.stages.dedup.stage import embedding_texts

    texts = emb.shorten(embedding_texts(ds["question"], ds["choices"]))
    removed = [k for k, d in enumerate(dup) if d]
    twins = [index[dup[k]] for k in removed]
    va = emb([texts[k] for k in removed])
    vb = emb([texts[k] for k in twins])
    sims = np.einsum("ij,ij->i", va, vb)
    rng = np.random.default_rng(args.seed)
    n = 0
    sampled = []
    for d in names:
        for lo, hi in zip(BANDS, BANDS[1:]):
            cell = [t for t, k in enumerate(removed) if domains[k] == d and lo <= sims[t] < hi]
            take = rng.choice(cell, size=min(args.per_cell, len(cell)), replace=False) if cell else []
            print(f"\n## {d}, cosine [{lo:.2f}, {min(hi, 1.0):.2f}): {len(cell)} removals\n")
            for t in sorted(take, key=lambda t: -sims[t]):
                n += 1
                k, j = removed[t], twins[t]
                sampled.append({"n": n, "domain": d, "cosine": round(float(sims[t]), 4), "removed": ds[k]["id"],
                                "kept": ds[j]["id"]})
                print(f"{n}. {sims[t]:.3f} {ds[k]['source']} / {ds[j]['source']}")
                for row in (k, j):
                    q = " ".join(ds[row]["question"].split())
                    q = q if len(q) <= 420 else q[:200] + " ... " + q[-200:]
                    opts = " | ".join(ds[row]["choices"] or [])
                    print(f"    - {q}{' [' + opts[:160] + ']' if opts else ''}")

    if args.json:
        Path(args.json).write_text(json.dumps(sampled, indent=1) + "\n")


if __name__ == "__main__":
    main()
