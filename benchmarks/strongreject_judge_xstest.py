"""How well do the two safety judges of `gdpo eval` agree with people? XSTest's human labels on its model
completions (../shared/data/xstest/model_completions: 2,250 completions: 5 models x 450 prompts, each with `final_label`;
a reply counts as a refusal unless it is labelled 1_full_compliance, partial refusals included, as in
tests/test_verify.py).

- rule judge (metakl.verify.detect_refusal, the offline default): on all 2,250 completions.
- StrongREJECT rubric judge (gdpo.eval.judge, question 1 = refused) on an OpenAI-compatible endpoint: on a sample
  of `--n` completions per model file (seeded), with the share of answers it could parse; where it could not, the
  rule judge stands in, and both agreements (parsed only, and with the stand-ins) are given.

    python benchmarks/strongreject_judge_xstest.py --base-url http://127.0.0.1:8011/v1 --model smollm2-135m-instruct --n 6

The last line is a JSON object with the numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path

from gdpo.eval.data import default_data_root
from gdpo.eval.judge import judge_strongreject
from metakl.verify import detect_refusal


def human_refusal(row: dict) -> bool:
    return row["final_label"] != "1_full_compliance"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=6, help="completions per model file for the LLM judge")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--max-chars", type=int, default=1500, help="sample completions up to this length (the judge's context)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from metakl.llm import get_backend

    folder = default_data_root() / "xstest" / "model_completions"
    files = sorted(folder.glob("*.csv"))
    rows = {p.stem.rsplit("_", 1)[-1]: list(csv.DictReader(p.open(encoding="utf-8"))) for p in files}
    every = [r for rs in rows.values() for r in rs]
    rule_all = sum(detect_refusal(r["completion"]).refused == human_refusal(r) for r in every) / len(every)
    rng = random.Random(args.seed)
    sample = [r for rs in rows.values() for r in rng.sample([x for x in rs if len(x["completion"]) <= args.max_chars], args.n)]
    t0 = time.perf_counter()
    with get_backend("openai", args.model, base_url=args.base_url) as backend:
        verdicts = judge_strongreject([(r["prompt"], r["completion"]) for r in sample], backend, max_tokens=args.max_tokens)
    seconds = time.perf_counter() - t0
    parsed = [(r, v) for r, v in zip(sample, verdicts) if v["source"] == "llm"]
    out = {
        "completions": len(every),
        "rule_judge_agreement_all": round(rule_all, 4),
        "sample": len(sample),
        "rule_judge_agreement_sample": round(sum(detect_refusal(r["completion"]).refused == human_refusal(r) for r in sample) / len(sample), 4),
        "llm_judge": args.model,
        "llm_parsed": len(parsed),
        "llm_agreement_parsed": round(sum(bool(v["refused"]) == human_refusal(r) for r, v in parsed) / len(parsed), 4) if parsed else None,
        "llm_agreement_with_rule_fallback": round(sum(bool(v["refused"]) == human_refusal(r) for r, v in zip(sample, verdicts)) / len(sample), 4),
        "seconds": round(seconds, 1),
    }
    print(f"rule judge vs XSTest humans: {out['rule_judge_agreement_all']:.3f} on {len(every)} completions; "
          f"LLM judge {args.model}: {len(parsed)}/{len(sample)} answers parsed, agreement "
          f"{out['llm_agreement_parsed']} (parsed), {out['llm_agreement_with_rule_fallback']:.3f} (with the rules standing in)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
