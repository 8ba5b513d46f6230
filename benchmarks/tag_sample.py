"""Draw the prompts of the labelled tag sample (benchmarks/data/tag_labels.jsonl) from ../shared/data.

The sample is references only (source, file, row id): the prompt texts stay in ../shared/data and are read at run
time. Two parts:
- stratified: a fixed number of prompts per source, drawn with a fixed seed;
- known failures (issue 26): from a seeded pool per source, the prompts the embedding tagger of main at f53ec39
  got visibly wrong at scale: GSM8K tagged first with stars_and_bars or pigeonhole_principle, CSQA2 with
  pigeonhole_principle, XSTest safe prompts tagged first with a harm unit, hh-rlhf / safety prompts left untagged.
Every drawn prompt goes to the dev or the test split by a hash of its id (DEV_SHARE to dev).

    python benchmarks/tag_sample.py > /tmp/draw.jsonl     # refs + the prompt text + the old tagger's units, to label

The failure part uses the tagger of the tree on PYTHONPATH: to draw the same prompts again, run it on a checkout of
f53ec39 (`git archive f53ec39 | tar -x -C /tmp/old`, PYTHONPATH=/tmp/old), with the same ../shared/data.

Labels are then written by reading each prompt (see tag_labels.jsonl: `units`, first = the most important one;
[] = no seed unit fits) and only the references and labels are kept in the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (source, ingest preset, file under ../shared/data, stratified count)
SOURCES = [
    ("gsm8k", "gsm8k", "gsm8k/train.jsonl", 30), ("math", "math", "math/test_minus_math500.jsonl", 30),
    ("mmlu", "mmlu-csv", "mmlu/test", 36),
    ("commonsenseqa", "commonsenseqa-raw", "commonsenseqa/train_rand_split.jsonl", 28),
    ("csqa2", "csqa2", "csqa2/CSQA2_train.json", 28), ("logiqa2", "logiqa2", "logiqa2/dev.txt", 20),
    ("hh-rlhf", "hh-rlhf", "hh_rlhf_harmless_base/test.jsonl", 32),
    ("advbench", "advbench-csv", "advbench/harmful_behaviors.csv", 18),
    ("harmbench", "harmbench-csv", "harmbench/harmbench_behaviors_text_all.csv", 18),
    ("xstest", "xstest", "xstest/xstest_prompts.csv", 30),
]
SEED = 26
DEV_SHARE = 0.4
POOL = {"gsm8k": 1500, "csqa2": 800, "xstest": 449, "hh-rlhf": 600}  # per source, for the failure cases
FAILURES = {"gsm8k:stars_and_bars": 8, "gsm8k:pigeonhole_principle": 8, "csqa2:pigeonhole_principle": 8,
            "xstest:safe_as_harm": 10, "hh-rlhf:untagged": 8}


def split_of(row_id: str) -> str:
    return "dev" if int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < DEV_SHARE else "test"


def main() -> None:
    from annotate_quality import DATA  # noqa: E402  (the same ../shared/data lookup)

    from metakl.embed import load_embedder
    from metakl.stages import get_stage
    from metakl.stages.annotate import AnnotateConfig, annotate, load_annotation_taxonomy

    ingest = get_stage("ingest")
    ds = ingest(None, ingest.config_cls(sources=tuple(f"{p}={DATA / r}" for _, p, r, _ in SOURCES),
                                        on_error="skip")).dataset
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(ds["source"]):
        by_source.setdefault(s, []).append(i)
    rng = random.Random(SEED)
    picked: dict[int, str] = {}
    for source, _, _, n in SOURCES:
        rows = list(by_source[source])
        rng.shuffle(rows)
        for i in rows[:n]:
            picked[i] = "stratified"
    # Known failures: the f53ec39 embedding tagger over a seeded pool of each source.
    pool = []
    for source, n in POOL.items():
        rows = [i for i in by_source[source] if i not in picked]
        rng.shuffle(rows)
        pool += rows[:n]
    sub = ds.select(pool)
    tax, _ = load_annotation_taxonomy(None)
    units = annotate(sub, AnnotateConfig(annotator="embedding"), embedder=load_embedder("all-minilm-l6-v2", 128),
                     taxonomy=tax).dataset["units"]
    harm = {u for u, e in tax["units"].items() if e.get("area") in ("harmful", "jailbreak")}
    left = dict(FAILURES)
    for i, u in zip(pool, units):
        row = ds[i]
        keys = []
        if u:
            keys.append(f"{row['source']}:{u[0]}")
            if row["source"] == "xstest" and row["reference"] == "comply" and u[0] in harm:
                keys.append("xstest:safe_as_harm")
        else:
            keys.append(f"{row['source']}:untagged")
        for k in keys:
            if left.get(k, 0) > 0:
                left[k] -= 1
                picked[i] = f"failure {k}"
                break
    where = {source: (preset, rel) for source, preset, rel, _ in SOURCES}
    for i, why in picked.items():
        row = ds[i]
        preset, rel = where[row["source"]]
        print(json.dumps({"source": row["source"], "preset": preset, "file": rel, "id": row["id"],
                          "split": split_of(row["id"]), "drawn": why, "question": row["question"],
                          "choices": row["choices"], "reference": row["reference"][:80]}))
    print(f"drawn {len(picked)}; failures not found: {({k: v for k, v in left.items() if v})}", file=sys.stderr)


if __name__ == "__main__":
    main()
