"""Which embedding backend is fastest on this CPU, and does it change any decision? Side by side, in one run.

A sample of real prompts from ../shared/data (the same number from each source, across math, general and safety;
2,400 by default) is embedded as every stage embeds a prompt now (`prompt_text`, 128 tokens, metakl.embed) by each
candidate, each with an empty cache and the project's thread count:

- `float32` (batch 64): sentence-transformers on torch, float32: the old default, the baseline of every ratio
- `float32-b256`, `bfloat16`, `bfloat16-b256`: batch size and the bfloat16 compute dtype (native on AMX/AVX512-BF16)
- `int8-dynamic`: torch's dynamic int8 quantization of the Linear layers (float32 activations)
- `onnx`, `onnx-int8`, `openvino`: sentence-transformers' other backends, where `optimum` can be imported beside this
  environment's transformers (otherwise listed with the reason they could not run)
- `dedup-before`: what dedup embedded before (float32, question + `A.` option lines, 256 tokens, long prompts cut in
  the middle), the texts/s dedup had.

For each: texts/s and its ratio to `float32`, and the cosine of each text's vector to its float32 vector (min, 1st
percentile, mean). For `bfloat16-b256` and `int8-dynamic`, and for dedup's change of text form, the decisions made with
those vectors on the same sample: the embedding tagger's units (annotate) and dedup's `duplicate_of`, each changed row
printed (id, source, prompt, before → after) to be read by hand.

    python benchmarks/embed_speed.py            # 2,400 prompts
    python benchmarks/embed_speed.py --quick    # 240 prompts, float32 / bfloat16 / dedup-before only

A backend may be the default only where every cosine is >= 0.99 and the decisions are unchanged or differ in a
handful read by hand; target >= 3x float32's texts/s. The last line is one JSON object with the figures; "pass" when
the chosen default (`auto` on this CPU) meets the cosine floor. The load average is printed beside each timing: other
processes on the machine change absolute figures, so compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SHARED_DATA  # noqa: E402

DATA = SHARED_DATA
SOURCES = [  # (preset, path under ../shared/data)
    ("gsm8k", "gsm8k/train.jsonl"), ("math", "math/test_minus_math500.jsonl"),
    ("mmlu-csv", "mmlu/test"), ("commonsenseqa-raw", "commonsenseqa/train_rand_split.jsonl"),
    ("csqa2", "csqa2/CSQA2_train.json"), ("logiqa2", "logiqa2/dev.txt"),
    ("hh-rlhf", "hh_rlhf_harmless_base/test.jsonl"), ("advbench-csv", "advbench/harmful_behaviors.csv"),
    ("harmbench-csv", "harmbench/harmbench_behaviors_text_all.csv"), ("xstest", "xstest/xstest_prompts.csv"),
]
COSINE_FLOOR = 0.99
SHOW = 15  # changed decisions printed per comparison
THREADS = [1]  # decided once at the start (metakl.hardware.thread_plan), the same for every candidate


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def sample(n: int, seed: int = 0):
    """`n` real prompts, the same number from each source that is there (ingested, deduplicated by ingest)."""
    from datasets import concatenate_datasets

    from metakl.stages import get_stage

    ingest = get_stage("ingest")
    parts = []
    present = [(p, rel) for p, rel in SOURCES if (DATA / rel).exists()]
    if not present:
        sys.exit(f"no data under {DATA}")
    per = -(-n // len(present))
    for preset, rel in present:
        try:
            ds = ingest(None, ingest.config_cls(sources=(f"{preset}={DATA / rel}",), on_error="skip")).dataset
        except Exception as exc:  # a preset that does not read this file: say so, go on with the others
            print(f"  skipped {preset}: {str(exc).splitlines()[0]}", flush=True)
            continue
        idx = sorted(random.Random(seed).sample(range(len(ds)), min(per, len(ds))))
        parts.append(ds.select(idx))
    return concatenate_datasets(parts)


def candidate(name: str, cache_dir: Path):
    """An Embedder for `name` with an empty cache of its own, or the reason it cannot run here."""
    from metakl.embed import Embedder

    settings = {"max_seq_length": 128, "cache_dir": cache_dir / name, "num_threads": THREADS[0]}
    if name in ("float32", "int8-dynamic", "dedup-before"):
        emb = Embedder(dtype="float32", **{**settings, "max_seq_length": None if name == "dedup-before" else 128})
        if name == "int8-dynamic":
            import torch

            torch.ao.quantization.quantize_dynamic(emb.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
            emb.identity += "+int8-dynamic"
        return emb
    if name in ("float32-b256", "bfloat16", "bfloat16-b256"):
        return Embedder(dtype=name.split("-")[0], batch_size=256 if name.endswith("b256") else 64, **settings)
    if name in ("onnx", "onnx-int8", "openvino"):
        return other_backend(name, cache_dir, settings)
    raise ValueError(name)


def other_backend(name: str, cache_dir: Path, settings: dict):
    """sentence-transformers' ONNX / OpenVINO backend, exported from a copy of the embedded model folder (offline)."""
    import shutil

    from metakl.embed import Embedder
    from metakl.llm.models import resolve_embedding_model

    try:
        from sentence_transformers import SentenceTransformer

        folder = cache_dir / f"model-{name}"
        if not folder.exists():
            shutil.copytree(resolve_embedding_model("all-minilm-l6-v2"), folder)
        backend = name.split("-")[0]
        model = SentenceTransformer(str(folder), device="cpu", backend=backend)
        if name == "onnx-int8":
            from sentence_transformers import export_dynamic_quantized_onnx_model

            export_dynamic_quantized_onnx_model(model, "avx512_vnni", str(folder))
            model = SentenceTransformer(str(folder), device="cpu", backend="onnx",
                                        model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})
    except Exception as exc:  # optimum missing or at odds with this transformers: reported, not fatal
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    emb = Embedder(dtype="float32", **settings)
    model.max_seq_length = 128
    emb.model = model
    emb.identity += f"+{name}"
    return emb


def cosines(a, b) -> dict:
    import numpy as np

    c = np.sum(a * b, axis=1)
    return {"min": round(float(c.min()), 5), "p1": round(float(np.percentile(c, 1)), 5), "mean": round(float(c.mean()), 5)}


def measure(name: str, texts: list[str], cache_dir: Path) -> tuple[dict, object, object]:
    emb = candidate(name, cache_dir)
    if isinstance(emb, str):
        print(f"{name:>14}: not run ({emb})", flush=True)
        return {"unavailable": emb}, None, None
    run = texts
    if name == "dedup-before":
        run = emb.shorten(texts)
    emb._encode(run[:64])  # warm-up: first-call allocations and kernel choice
    load = load_avg()
    t0 = time.perf_counter()
    vectors = emb(run)
    seconds = time.perf_counter() - t0
    row = {"texts_per_s": round(len(run) / seconds, 1), "seconds": round(seconds, 1), "threads": emb.num_threads,
           "load_avg_1m": load}
    print(f"{name:>14}: {row['texts_per_s']:7.1f} texts/s ({seconds:.1f} s, {emb.num_threads} threads, "
          f"load {load})", flush=True)
    return row, emb, vectors


def tagger_units(ds, embedder) -> list[tuple]:
    from metakl.stages import get_stage

    annotate = get_stage("annotate")
    out = annotate(ds, annotate.config_cls(annotator="embedding"), backend=None, embedder=embedder).dataset
    return [tuple(u or ()) for u in out["units"]]


def dedup_marks(ds, embedder) -> list[str]:
    from metakl.stages import get_stage

    dedup = get_stage("dedup")
    return dedup(ds, dedup.config_cls(), embedder=embedder).dataset["duplicate_of"]


def changes(ds, before: list, after: list, what: str) -> dict:
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    print(f"  {what}: {len(changed)} of {len(before)} rows changed", flush=True)
    for i in changed[:SHOW]:
        q = " ".join(str(ds[i]["question"]).split())[:110]
        print(f"    {ds[i]['id']} [{ds[i]['source']}] {q!r}: {before[i]!r} -> {after[i]!r}", flush=True)
    return {"changed": len(changed), "rows": len(before), "shown": [
        {"id": ds[i]["id"], "before": before[i], "after": after[i]} for i in changed[:SHOW]]}


class OldDedupTexts:
    """dedup's embedder as it was: each prompt text dedup asks for is answered with the vector of dedup's old text
    for that row (float32, 256 tokens); other texts (endings) go to the float32 embedder."""

    def __init__(self, new_to_old: dict, old_vectors: dict, fallback) -> None:
        self.new_to_old, self.old_vectors, self.fallback = new_to_old, old_vectors, fallback

    def __call__(self, texts, progress=False):
        import numpy as np

        known = [t in self.new_to_old for t in texts]
        rest = self.fallback([t for t, k in zip(texts, known) if not k]) if not all(known) else None
        out, j = [], 0
        for t, k in zip(texts, known):
            if k:
                out.append(self.old_vectors[self.new_to_old[t]])
            else:
                out.append(rest[j])
                j += 1
        return np.stack(out) if out else np.zeros((0, 384), dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, default=None, help="prompts in the sample (default 2,400; --quick 240)")
    args = parser.parse_args()
    n = args.n or (240 if args.quick else 2400)
    names = (["float32", "bfloat16", "dedup-before"] if args.quick else
             ["float32", "float32-b256", "bfloat16", "bfloat16-b256", "int8-dynamic", "onnx", "onnx-int8", "openvino",
              "dedup-before"])

    from metakl.hardware import auto_dtype, cpu_model, thread_plan
    from metakl.stages.dedup import embedding_texts
    from metakl.stages.unit_index import prompt_text

    THREADS[0] = thread_plan()[0]
    print(f"CPU: {cpu_model()}; auto dtype: {auto_dtype('cpu')}; threads: {thread_plan()}; load {load_avg()}",
          flush=True)
    ds = sample(n)
    texts = [prompt_text(q, c) for q, c in zip(ds["question"], ds["choices"])]
    print(f"{len(ds)} prompts from {len(set(ds['source']))} sources ({dict(sorted(__import__('collections').Counter(ds['domain']).items()))})",
          flush=True)
    results: dict = {}
    embedders: dict = {}
    vectors: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row, emb, vec = measure(name, embedding_texts(ds["question"], ds["choices"]) if name == "dedup-before"
                                    else texts, Path(tmp))
            results[name] = row
            if emb is not None:
                embedders[name], vectors[name] = emb, vec
        base = results["float32"]["texts_per_s"]
        print("\nratio to float32 (batch 64), cosine to float32 per text:", flush=True)
        for name, row in results.items():
            if "texts_per_s" not in row:
                continue
            row["ratio"] = round(row["texts_per_s"] / base, 2)
            if name != "dedup-before":
                row["cosine"] = cosines(vectors["float32"], vectors[name])
            print(f"{name:>14}: {row['ratio']:5.2f}x  cosine {row.get('cosine', '(other texts)')}", flush=True)

        decisions: dict = {}
        print("\ndecisions on the same sample, float32 -> candidate:", flush=True)
        tags = {"float32": tagger_units(ds, embedders["float32"])}
        marks = {"float32": dedup_marks(ds, embedders["float32"])}
        print(f"  float32: {sum(bool(m) for m in marks['float32'])} rows marked duplicate, "
              f"{sum(not t for t in tags['float32'])} untagged", flush=True)
        for name in ("bfloat16-b256", "bfloat16", "int8-dynamic"):
            if name in embedders and (name != "bfloat16" or "bfloat16-b256" not in embedders):
                print(f" {name}:", flush=True)
                decisions[name] = {"annotate_units": changes(ds, tags["float32"], tagger_units(ds, embedders[name]),
                                                             "annotate units"),
                                   "dedup_duplicate_of": changes(ds, marks["float32"], dedup_marks(ds, embedders[name]),
                                                                 "dedup duplicate_of")}
        if "dedup-before" in embedders:
            # dedup before (its own text, float32, 256 tokens) vs dedup now (the prompt text, auto dtype, 128 tokens)
            old_texts = embedders["dedup-before"].shorten(embedding_texts(ds["question"], ds["choices"]))
            old = OldDedupTexts(dict(zip(texts, old_texts)), dict(zip(old_texts, vectors["dedup-before"])),
                                embedders["dedup-before"])
            now = "bfloat16-b256" if auto_dtype("cpu").dtype == "bfloat16" and "bfloat16-b256" in embedders else (
                "bfloat16" if auto_dtype("cpu").dtype == "bfloat16" else "float32")
            print(f" dedup before -> dedup now ({now}, prompt text, 128 tokens):", flush=True)
            before_marks = dedup_marks(ds, old)
            print(f"  before: {sum(bool(m) for m in before_marks)} rows marked duplicate", flush=True)
            decisions["dedup_text_form"] = changes(ds, before_marks, dedup_marks(ds, embedders[now]),
                                                   "dedup duplicate_of")
    chosen = "bfloat16" if auto_dtype("cpu").dtype == "bfloat16" else "float32"
    ok = chosen == "float32" or results[chosen]["cosine"]["min"] >= COSINE_FLOOR
    print(json.dumps({"prompts": len(ds), "cpu": cpu_model(), "auto": chosen, "results": results,
                      "decisions": decisions, "cosine_floor": COSINE_FLOOR, "pass": ok}))


if __name__ == "__main__":
    main()
