"""Cost of the reference fingerprint's weight digest (SHA-256 over every byte of every parameter) on SmolLM2-135M.

`gdpo ref-logps` and `gdpo train` on a precomputed reference digest the whole model once (gdpo.reference.model_digest),
so that a changed weight anywhere is caught. Measured side by side in one run: the digest of the float32 and the
bfloat16 weights, against a plain `hashlib.sha256` over the same number of bytes (the floor) and against one
reference forward over a group of G=4 responses (what `gdpo ref-logps` spends per prompt). Target: the digest runs at
>= 80% of raw SHA-256 speed (no copies beyond a CPU view of each tensor).

    python benchmarks/ref_fingerprint.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 repetitions instead of 7")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gdpo.reference import add_ref_logps, model_digest
    from metakl.llm.models import resolve_chat_model

    torch.set_num_threads(a.threads)
    reps = 3 if a.quick else 7
    path = resolve_chat_model(a.model)
    tok = AutoTokenizer.from_pretrained(path)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        digest_s = median_time(lambda: model_digest(model), reps)
        blob = os.urandom(nbytes)
        raw_s = median_time(lambda: hashlib.sha256(blob).digest(), reps)
        del blob
        rows.append({"dtype": str(dtype).removeprefix("torch."), "MiB": nbytes / 2**20, "digest_s": digest_s, "raw_sha256_s": raw_s})
    # One reference forward over a group of 4 short responses, float32 (what ref-logps pays per prompt).
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    text = "We add the two numbers step by step, carrying the tens, and check the result by subtraction. " * 6
    group = Dataset.from_list([{"question": "What is 17 + 25?", "responses": [{"text": f"{text} The answer is {k}.", "reward": k / 4} for k in range(4)]}])
    forward_s = median_time(lambda: add_ref_logps(group, model, tok, max_length=256, batch_size=1, progress=False), reps)
    digest_only_s = rows[0]["digest_s"]

    load = [round(x, 2) for x in os.getloadavg()]
    print(f"model {a.model}, {a.threads} torch thread(s), {reps} repetitions (median), load average {load}")
    print(f"{'weights':<10}{'MiB':>8}{'digest s':>10}{'MiB/s':>8}{'raw sha256 s':>14}{'digest/raw':>12}")
    for r in rows:
        print(f"{r['dtype']:<10}{r['MiB']:>8.0f}{r['digest_s']:>10.3f}{r['MiB'] / r['digest_s']:>8.0f}{r['raw_sha256_s']:>14.3f}{r['digest_s'] / r['raw_sha256_s']:>12.2f}")
    print(f"one `add_ref_logps` call on a G=4 group (~4 x 120 tokens), float32, digest included: {forward_s:.3f} s "
          f"(the digest is {digest_only_s / forward_s:.0%} of it; it is paid once per run, not per group)")
    efficiency = min(r["raw_sha256_s"] / r["digest_s"] for r in rows)
    checks = {"digest_at_least_80pct_of_raw_sha256": efficiency >= 0.8}
    print(json.dumps({
        "bench": "ref_fingerprint", "quick": a.quick, "model": a.model, "load_average": load,
        "digest_s": {r["dtype"]: round(r["digest_s"], 4) for r in rows},
        "MiB": {r["dtype"]: round(r["MiB"], 1) for r in rows},
        "raw_sha256_over_digest": round(efficiency, 3), "target": 0.8,
        "ref_logps_one_group_s": round(forward_s, 4),
        "checks": checks, "pass": all(checks.values()),
    }))


if __name__ == "__main__":
    main()
