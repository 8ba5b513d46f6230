"""What `gdpo eval` costs over the model itself, and how long the `paper` suite would take on one H100.

Part 1, measured here (SmolLM2-135M-Instruct, this CPU, one process, the same torch threads and dtype on both sides):
  gdpo    gdpo eval's lm-eval path on a suite of two tasks: MMLU cloze (log-likelihood requests: each item's context
          with each option) and GSM8K (generation requests: chat template, greedy); timed around the lm-eval run
          (task building, requests, scoring), with the time inside the model's own loglikelihood / generate_until
          calls split out. Also lm-eval's plain HFLM (`EvalSettings(share_prefix=False)`) for the log-likelihoods.
  direct  the same requests (the contexts and continuations lm-eval built, read back from its samples) as plain
          transformers calls: batched forward passes over context + continuation, log-softmax in float32, the
          continuation's log-probs summed; `model.generate` (greedy, left-padded batches, stop at <|im_end|>).
          Both sides sort requests longest first and use the same batch size. The numbers are checked to agree.
The ratios are gdpo / direct (the median over timed rounds of each round's ratio, after a warm-up round); target <= 1.2.

Part 2, computed (no GPU here): the `paper` suite on one H100 for an 8B model, from the suite's own k and new-token
budgets (gdpo/eval/suites/paper.yaml), the benchmarks' published sizes, and published vLLM throughput figures
(sources below): generated tokens = items x k x mean new tokens, time = tokens / throughput; log-likelihood tasks
as prefill tokens / a prefill rate derived from the H100's spec-sheet FLOPs.

Usage: python benchmarks/eval_overhead.py [--quick] [--n-ll N] [--n-gen N] [--gen-tokens N] [--threads N];
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SHARED_DATA  # noqa: E402

TARGET = 1.2
DATA = SHARED_DATA

# ---- part 2: published figures ---------------------------------------------------------------------------------------

# vLLM output throughput of Llama-3.1-8B on one H100-80GB-SXM, from Lambda's vLLM benchmark report
# (https://github.com/LambdaLabsML/vllm-benchmark/blob/main/benchmark_v0.md, Sept. 2024):
#  - "Tensor Parallel v.s. Data Parallel" table, row 1xH100-80GB-SXM, column Meta-Llama-3.1-8B-FP8: 3400.4 output
#    tokens/s (vLLM v0.5.4, benchmark_serving.py, --num-prompts 320);
#  - "vLLM v0.5.4 v.s. v0.6.0" table, Llama 3.1 8B, tp=1, rps=inf, 5000 prompts, max-num-seq 256, max-seq-len 2048:
#    3958.40 tokens/s with v0.6.0 and 8088.35 with --num-scheduler-steps 10 (that table does not repeat the GPU).
THROUGHPUT_SOURCE = "https://github.com/LambdaLabsML/vllm-benchmark/blob/main/benchmark_v0.md"
THROUGHPUT = {"1xH100 Llama-3.1-8B-FP8, vLLM 0.5.4 (TP vs DP table)": 3400.4,
              "Llama-3.1-8B tp=1, vLLM 0.6.0 multi-step 10 (v0.5.4 vs v0.6.0 table)": 8088.35}
# Prefill (log-likelihood requests): H100 SXM dense BF16 peak 989.4 TFLOPS (NVIDIA H100 datasheet,
# https://www.nvidia.com/en-us/data-center/h100/), ~2 x 8e9 FLOPs per token for an 8B model, at an assumed 40% of peak.
H100_BF16_FLOPS, PREFILL_MFU, PARAMS = 989.4e12, 0.40, 8.0e9
PREFILL_TOKENS_PER_REQUEST = 150  # assumed: an MMLU / CommonsenseQA question with one option, Llama-3-style tokenizer
# The benchmarks' published sizes (items scored per run).
ITEMS = {
    "aime24": (30, "AIME 2024 I+II"), "amc23": (40, "math-ai/amc23"), "math500": (500, "MATH-500"),
    "gsm8k_test": (1319, "GSM8K test"), "olympiadbench": (674, "OlympiadBench OE_TO_maths_en_COMP"),
    "minerva_math": (272, "Minerva math"), "mmlu_cloze": (14042, "MMLU test"), "commonsenseqa_dev": (1221, "CommonsenseQA dev"),
    "gpqa_diamond": (198, "GPQA diamond"), "strongreject": (313, "StrongREJECT"), "wildjailbreak": (2210, "WildJailbreak eval"),
    # TrustLLM's safety files: sizes not checked here (approximate; give your file's counts with --items NAME=N)
    "trustllm_misuse": (1000, "TrustLLM misuse (approximate)"), "trustllm_jailbreak": (1400, "TrustLLM jailbreak (approximate)"),
}
OPTIONS = {"mmlu_cloze": 4, "commonsenseqa_dev": 5}


def h100_estimate(fraction: float = 1.0, items: dict[str, int] | None = None) -> dict:
    """The paper suite's paper benchmarks: generated tokens (items x k x fraction x budget) and the hours at each
    published throughput, plus the log-likelihood prefill."""
    import yaml

    from gdpo.eval.suite import SUITES_DIR, task_yaml

    class Loader(yaml.SafeLoader):  # the task YAMLs' !function hooks stay names: only sizes are read here
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))

    def load_task_config(name):
        return yaml.load(task_yaml(name).read_text(), Loader=Loader)

    raw = yaml.safe_load((SUITES_DIR / "paper.yaml").read_text())
    rows, gen_tokens, prefill_tokens = [], 0.0, 0.0
    for e in raw["tasks"]:
        if not e.get("paper"):
            continue
        name = e.get("name") or e["task"]
        cfg = load_task_config(e["task"])
        n = (items or {}).get(name, ITEMS[name][0])
        if cfg["output_type"] == "generate_until":
            k = int(e.get("samples", 1))
            budget = int(e.get("max_gen_toks", cfg["generation_kwargs"]["max_gen_toks"]))
            tokens = n * k * fraction * budget
            gen_tokens += tokens
            rows.append({"task": name, "items": n, "k": k, "max_gen_toks": budget, "tokens": tokens})
        else:
            tokens = n * OPTIONS[name] * PREFILL_TOKENS_PER_REQUEST
            prefill_tokens += tokens
            rows.append({"task": name, "items": n, "options": OPTIONS[name], "prefill_tokens": tokens})
    prefill_rate = H100_BF16_FLOPS * PREFILL_MFU / (2 * PARAMS)
    hours = {label: (gen_tokens / tps + prefill_tokens / prefill_rate) / 3600 for label, tps in THROUGHPUT.items()}
    return {"fraction_of_budget": fraction, "rows": rows, "generated_tokens": gen_tokens, "prefill_tokens": prefill_tokens,
            "prefill_tokens_per_s": prefill_rate, "hours": hours, "source": THROUGHPUT_SOURCE}


# ---- part 1: measured ----------------------------------------------------------------------------------------------


def _timed(lm, name: str, spent: dict) -> None:
    """Time an lm-eval LM's method on this instance (the model's share of the lm-eval run)."""
    inner = getattr(lm, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t

    setattr(lm, name, wrapper)


def _encode_pair(tok, context: str, continuation: str) -> tuple[list[int], int]:
    """lm-eval's HFLM encoding: trailing spaces of the context move to the continuation; the whole text is encoded
    once and the continuation is what follows the context's tokens."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    return whole, len(tok(context, add_special_tokens=False).input_ids)


def direct_loglik(model, tok, pairs: list[tuple[str, str]], batch_size: int) -> list[float]:
    import torch

    enc = [_encode_pair(tok, c, x) for c, x in pairs]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i][0]))
    out = [0.0] * len(enc)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = max(len(enc[i][0]) for i in idx)
        ids = torch.full((len(idx), width), tok.pad_token_id or 0)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(enc[i][0])] = torch.tensor(enc[i][0])
            mask[r, :len(enc[i][0])] = 1
        with torch.inference_mode():
            logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        for r, i in enumerate(idx):
            whole, c = enc[i]
            target = torch.tensor(whole[c:])
            out[i] = logp[r, c - 1:len(whole) - 1].gather(-1, target[:, None]).sum().item()
    return out


def direct_generate(model, tok, contexts: list[str], max_new: int, batch_size: int) -> list[str]:
    import torch

    stop = tok.convert_tokens_to_ids("<|im_end|>")
    tok.padding_side = "left"
    order = sorted(range(len(contexts)), key=lambda i: -len(tok(contexts[i], add_special_tokens=False).input_ids))
    out = [""] * len(contexts)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        enc = tok([contexts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        for r, i in enumerate(idx):
            out[i] = tok.decode(gen[r, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return out


def measure(n_ll: int, n_gen: int, gen_tokens: int, batch_size: int, threads: int, dtype: str, rounds: int) -> dict:
    """Both sides on the same requests, in turn (gdpo, direct, plain HFLM), one untimed warm-up round and then `rounds`
    timed ones; the ratio is the median over rounds of that round's gdpo / direct (paired: the first calls of each
    tensor shape pay kernel set-up, whoever makes them, and the shared machine's load moves between rounds)."""
    import torch

    from gdpo.eval import runner
    from gdpo.eval.runner import EvalSettings
    from gdpo.eval.suite import load_suite

    torch.set_num_threads(threads)
    runner._quiet_lm_eval()
    suite_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"eval_overhead_{os.getpid()}.yaml"
    suite_file.write_text(f"tasks:\n  - {{task: mmlu_cloze, n: {n_ll}, seed: 0}}\n"
                          f"  - {{task: gsm8k, n: {n_gen}, seed: 0, max_gen_toks: {gen_tokens}}}\n")
    try:
        suite = load_suite(str(suite_file))
    finally:
        suite_file.unlink()
    cfgs = []
    for spec in suite.tasks:
        cfg = dict(spec.config)
        cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_root": str(DATA)}
        cfgs.append(cfg)
    path = runner.resolve_model("smollm2-135m-instruct")
    settings = EvalSettings(batch_size=batch_size, data_dir=str(DATA), dtype=dtype)
    t = time.perf_counter()
    lm = runner.build_lm(path, settings)
    load_s = time.perf_counter() - t
    plain = runner.build_lm(path, EvalSettings(batch_size=batch_size, data_dir=str(DATA), dtype=dtype, share_prefix=False))
    spent: dict = {}
    for name in ("loglikelihood", "generate_until"):
        _timed(lm, name, spent)
    _timed(plain, "loglikelihood", spent.setdefault("plain", {}))
    times: dict[str, list[float]] = {}
    calls: dict[str, list[float]] = {}

    def lm_eval(model, cfg, chat, key, method, spent_in):
        before = spent_in.get(method, 0.0)
        t = time.perf_counter()
        samples = runner._run_lm_eval(model, [cfg], chat=chat, num_fewshot=0, settings=settings)[cfg["task"]]
        times.setdefault(key, []).append(time.perf_counter() - t)
        calls.setdefault(key, []).append(spent_in.get(method, 0.0) - before)
        return sorted(samples, key=lambda s: s["doc_id"])

    def direct(key, fn, *a):
        t = time.perf_counter()
        res = fn(*a)
        times.setdefault(key, []).append(time.perf_counter() - t)
        return res

    for _ in range(rounds + 1):
        ll_samples = lm_eval(lm, cfgs[0], False, "ll_gdpo", "loglikelihood", spent)
        pairs = [tuple(a) for s in ll_samples for a in s["arguments"]]
        direct_ll = direct("ll_direct", direct_loglik, lm.model, lm.tokenizer, pairs, batch_size)
        lm_eval(plain, cfgs[0], False, "ll_plain", "loglikelihood", spent["plain"])
        gen_samples = lm_eval(lm, cfgs[1], True, "gen_gdpo", "generate_until", spent)
        contexts = [s["arguments"][0][0] for s in gen_samples]
        direct_texts = direct("gen_direct", direct_generate, lm.model, lm.tokenizer, contexts, gen_tokens, batch_size)
    got = [float(r[0][0]) for s in ll_samples for r in s["resps"]]
    texts = [s["resps"][0][0] for s in gen_samples]
    import statistics

    times = {k: v[1:] for k, v in times.items()}  # the warm-up round is dropped
    calls = {k: v[1:] for k, v in calls.items()}
    best = {k: statistics.median(v) for k, v in times.items()}
    best_calls = {k: statistics.median(v) for k, v in calls.items()}

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(times[a], times[b])), 2)

    scale = max(1.0, max(abs(x) for x in direct_ll))
    return {
        "threads": threads, "batch_size": batch_size, "dtype": dtype, "rounds": rounds, "model_load_s": round(load_s, 2),
        "n_ll_items": n_ll, "n_gen_items": n_gen, "gen_tokens": gen_tokens,
        "loglik_requests": len(pairs), "gen_requests": len(contexts), "all_rounds_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "loglik": {"gdpo_s": round(best["ll_gdpo"], 2), "gdpo_model_calls_s": round(best_calls["ll_gdpo"], 2),
                   "plain_hflm_s": round(best["ll_plain"], 2), "plain_hflm_model_calls_s": round(best_calls["ll_plain"], 2),
                   "direct_s": round(best["ll_direct"], 2), "ratio": ratio("ll_gdpo", "ll_direct"),
                   "ratio_plain_hflm": ratio("ll_plain", "ll_direct"),
                   "max_rel_diff": max(abs(a - b) for a, b in zip(got, direct_ll)) / scale},
        "generation": {"gdpo_s": round(best["gen_gdpo"], 2), "gdpo_model_calls_s": round(best_calls["gen_gdpo"], 2),
                       "direct_s": round(best["gen_direct"], 2), "ratio": ratio("gen_gdpo", "gen_direct"),
                       "same_text": sum(a.strip() == b.strip() for a, b in zip(texts, direct_texts))},
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 MMLU items, 2 GSM8K items, 8 new tokens")
    ap.add_argument("--n-ll", type=int, default=8, help="MMLU items (4 log-likelihood requests each)")
    ap.add_argument("--n-gen", type=int, default=4, help="GSM8K items (one generation request each)")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="both sides (float32: no per-shape bf16 kernel set-up in the timings)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round, both sides in turn")
    ap.add_argument("--fraction", type=float, default=1.0, help="part 2: mean new tokens as a fraction of each budget")
    ap.add_argument("--skip-measure", action="store_true", help="only part 2")
    args = ap.parse_args()
    if args.quick:
        args.n_ll, args.n_gen, args.gen_tokens, args.rounds = 4, 2, 8, 1
    result: dict = {"cpu": _cpu_name(), "cores": os.cpu_count(), "load_before": os.getloadavg()}
    if not args.skip_measure:
        m = measure(args.n_ll, args.n_gen, args.gen_tokens, args.batch_size, args.threads, args.dtype, args.rounds)
        result["measured"] = m
        result["load_after"] = os.getloadavg()
        ll, gen = m["loglik"], m["generation"]
        print(f"log-likelihood: {m['loglik_requests']} requests ({m['n_ll_items']} MMLU items): gdpo eval {ll['gdpo_s']} s "
              f"(model calls {ll['gdpo_model_calls_s']} s), lm-eval plain HFLM {ll['plain_hflm_s']} s, direct transformers "
              f"{ll['direct_s']} s -> ratio {ll['ratio']} (plain HFLM {ll['ratio_plain_hflm']}); max relative difference "
              f"{ll['max_rel_diff']:.1e}")
        print(f"generation: {m['gen_requests']} requests x {m['gen_tokens']} new tokens: gdpo eval {gen['gdpo_s']} s "
              f"(model calls {gen['gdpo_model_calls_s']} s), direct {gen['direct_s']} s -> ratio {gen['ratio']}; "
              f"same text {gen['same_text']}/{m['gen_requests']}")
        print(f"target <= {TARGET}; {m['threads']} threads, dtype {m['dtype']}, batch {m['batch_size']}, median of {m['rounds']} rounds after a warm-up (times: medians; ratios: median of each round's); load "
              f"{result['load_before'][0]:.1f} -> {result['load_after'][0]:.1f}")
    est = h100_estimate(args.fraction)
    result["h100"] = est
    print(f"\npaper suite on one H100, 8B model, every sample using {args.fraction:.0%} of its budget:")
    for r in est["rows"]:
        if "k" in r:
            print(f"  {r['task']:<20} {r['items']:>6} items x k {r['k']} x {args.fraction:g} x {r['max_gen_toks']} = {r['tokens'] / 1e6:6.2f} M tokens")
        else:
            print(f"  {r['task']:<20} {r['items']:>6} items x {r['options']} options x {PREFILL_TOKENS_PER_REQUEST} = {r['prefill_tokens'] / 1e6:6.2f} M prefill tokens")
    print(f"  generated {est['generated_tokens'] / 1e6:.1f} M tokens; prefill {est['prefill_tokens'] / 1e6:.1f} M tokens at "
          f"{est['prefill_tokens_per_s']:,.0f} tokens/s")
    for label, h in est["hours"].items():
        print(f"  at {THROUGHPUT[label]:,} output tokens/s ({label}): {h:.2f} h")
    print(f"  source: {THROUGHPUT_SOURCE}")
    print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
