"""Draw the pairs reviewed in docs/dedup_threshold.md: real prompts, all pairs within a domain by exact cosine,
pairs counted per similarity band and a seeded sample of each band printed for reading.

    metakl ingest ... --out /tmp/study/ingest        # the sources listed in docs/dedup_threshold.md
    python docs/dedup_threshold_sample.py /tmp/study/ingest --per-band 10 > /tmp/study/sample.md

Embeddings go through metakl.embed (the user cache, or $METAKL_CACHE_DIR), exactly as `metakl dedup` embeds them.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BANDS = [0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.96, 0.98, 1.0001]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", help="a stage folder (ingest output)")
    ap.add_argument("--per-band", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cached-only", action="store_true", help="use only prompts already in the embedding cache")
    args = ap.parse_args()

    from metakl.embed import Embedder
    from metakl.embed.cache import text_key
    from metakl.io import load_stage
    from metakl.stages.dedup.stage import embedding_texts, last_paragraph, number_key

    ds = load_stage(args.stage)
    emb = Embedder()
    full = embedding_texts(ds["question"], ds["choices"])
    keys = np.array([number_key(t) for t in full])
    texts = emb.shorten(full)
    rows = np.arange(len(ds))
    if args.cached_only:
        found = emb.cache.get_many(emb.identity, [text_key(t) for t in texts], emb.dimension)
        rows = np.array([i for i, t in enumerate(texts) if text_key(t) in found])
    vectors = emb([texts[i] for i in rows])
    # Prompts with a passage: the question proper too (the stage's question guard). A pair counts at threshold t
    # when both cosines reach t, so its effective similarity is the smaller one.
    tails = {int(i): last_paragraph(ds[int(i)]["question"]) for i in rows}
    tails = {i: t + embedding_texts([""], [ds[i]["choices"]])[0] for i, t in tails.items() if t is not None}
    tail_vec = dict(zip(tails, emb(emb.shorten(list(tails.values()))))) if tails else {}
    domains = np.array(ds["domain"])[rows]
    sources = np.array(ds["source"])[rows]
    questions = ds["question"]
    choices = ds["choices"]
    pairs = []  # (sim, i, j) with i, j indices into ds
    for domain in sorted(set(domains)):
        idx = np.flatnonzero(domains == domain)
        x = vectors[idx]
        for start in range(0, len(idx), 2048):
            sims = x[start : start + 2048] @ x.T
            r, c = np.nonzero(sims >= BANDS[0])
            keep = c > r + start
            for a, b, s in zip(r[keep] + start, c[keep], sims[r[keep], c[keep]]):
                i, j = int(rows[idx[a]]), int(rows[idx[b]])
                if i in tail_vec and j in tail_vec:
                    s = min(float(s), float(tail_vec[i] @ tail_vec[j]))
                    if s < BANDS[0]:
                        continue
                pairs.append((float(s), i, j))
    other = [p for p in pairs if keys[p[1]] != keys[p[2]]]  # the "same numbers" guard rules these out
    pairs = [p for p in pairs if keys[p[1]] == keys[p[2]]]
    print(f"pairs ruled out by the numbers guard: {len(other)} (by band: "
          + ", ".join(f"{lo:.2f}: {sum(lo <= p[0] < hi for p in other)}" for lo, hi in zip(BANDS, BANDS[1:])) + ")\n")
    sims = np.array([p[0] for p in pairs])
    print(f"prompts with a passage: {len(tails)}\n")
    print(f"# {len(rows)} prompts ({dict(Counter(sources.tolist()))}); {len(pairs)} pairs at cosine >= {BANDS[0]}\n")
    print("| band | pairs | rows in a pair | by source pair (top 5) |\n|---|---|---|---|")
    for lo, hi in zip(BANDS, BANDS[1:]):
        sel = [p for p in pairs if lo <= p[0] < hi]
        rows_in = len({i for _, i, _ in sel} | {j for _, _, j in sel})
        by = Counter(tuple(sorted((ds[i]["source"], ds[j]["source"]))) for _, i, j in sel).most_common(5)
        print(f"| [{lo:.2f}, {min(hi, 1.0):.2f}) | {len(sel)} | {rows_in} | "
              f"{', '.join(f'{a}/{b} {n}' for (a, b), n in by)} |")
    rng = np.random.default_rng(args.seed)
    for lo, hi in zip(BANDS, BANDS[1:]):
        sel = np.flatnonzero((sims >= lo) & (sims < hi))
        take = rng.choice(sel, size=min(args.per_band, len(sel)), replace=False) if len(sel) else []
        print(f"\n## [{lo:.2f}, {min(hi, 1.0):.2f})\n")
        for t in sorted(take, key=lambda t: -sims[t]):
            s, i, j = pairs[t]
            print(f"- {s:.3f} {ds[i]['source']} / {ds[j]['source']}")
            for k in (i, j):
                q = " ".join(questions[k].split())
                opts = " | ".join(choices[k] or [])
                print(f"    - {q[:400]}{' ...' if len(q) > 400 else ''}{' [' + opts[:200] + ']' if opts else ''}")


if __name__ == "__main__":
    main()
