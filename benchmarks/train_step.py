"""Cost of one GDPO (MetaGDPO, arXiv 2511.12113) training step against SFT and TRL's DPOTrainer on the same model and
the same response tokens.

Variants (same model, same group of G responses every step; timed in processes of at most three variants each, steps
interleaved round-robin, every process also timing gdpo-adjacent so that each ratio is taken within one process; peak
memory measured with each variant alone in its own process):
- gdpo-<pairing>: GDPOTrainer with precomputed reference log-probs (`gdpo ref-logps`), pairing adjacent/all/block;
- gdpo-adjacent-fullseq: the same with `shared_prompt=False` (G full prompt+response sequences instead of the prompt
  once per group), to show what the shared prompt saves (timed only);
- sft: GDPOTrainer loss=sft on all G responses (the same tokens);
- trl-dpo: trl.DPOTrainer with its default reference handling (a second model, a reference forward every step),
  on G/2 (chosen, rejected) pairs made of the same G responses;
- trl-dpo-precomputed: the same with `precompute_ref_log_probs=True` (reference log-probs computed once before
  training, like `gdpo ref-logps`): the fair comparison for GDPO with a precomputed reference.
Figures: median step time after warm-up; time per response token; peak memory during the timed steps (CUDA: peak
allocated; CPU: the process's peak resident set, reset after warm-up). Also the loss function alone per pairing.
Targets: gdpo/sft time <= 1.10 and peak <= 1.05; TRL DPO (default) time per response token / GDPO's >= 1.5; TRL DPO
with a precomputed reference / GDPO's >= 1.3 (issue 21: measured 1.47x when it was set).

    python benchmarks/train_step.py            # G=8, max_length 384, 6 timed steps
    python benchmarks/train_step.py --quick    # G=4, max_length 192, 3 timed steps
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SHARED_DATA  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = SHARED_DATA / "qwen25math_rm_maj_example" / "math_cot_100.jsonl"


def build_group(group_size: int) -> tuple[dict, str]:
    """One prompt with G responses: a real MATH problem's sampled solutions with RM-score rewards (synthetic text
    when ../shared/data is absent)."""
    if DATA.exists():
        rows = [json.loads(line) for line in DATA.read_text().splitlines()]
        row = next(r for r in rows if len(r["response"]) >= group_size and len(r["question"]) < 300)
        responses = [
            {"text": t, "reasoning": "", "answer": "", "reward": float(s[0]), "advantage": 0.0, "model": "qwen2.5-math", "finish_reason": "stop"}
            for t, s in list(zip(row["response"], row["pred_score"]))[:group_size]
        ]
        return {"question": row["question"], "responses": responses}, "qwen25math_rm_maj_example (RM scores)"
    text = "We add the two numbers step by step, carrying the tens, and check the result by subtraction. " * 20
    responses = [{"text": f"{text} The answer is {k}.", "reasoning": "", "answer": str(k), "reward": k / group_size, "advantage": 0.0, "model": "synthetic", "finish_reason": "stop"} for k in range(group_size)]
    return {"question": "What is 17 + 25?", "responses": responses}, "synthetic (shared data absent)"


# ---- child process: one variant -------------------------------------------------------------------------------------


def _peak_reset(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) on Linux
        except OSError:
            pass


def _peak_mib(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_stepper(variant: str, spec: dict):
    """(step, response_tokens): one full training step (forward, backward, optimizer) of `variant` on a fixed batch."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metakl.llm.models import resolve_chat_model

    cuda = torch.cuda.is_available()
    path = resolve_chat_model(spec["model"])
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    group = json.loads(Path(spec["group"]).read_text())
    common = dict(
        output_dir=tempfile.mkdtemp(prefix="bench-"), learning_rate=1e-6, report_to=[], save_strategy="no", disable_tqdm=True,
        use_cpu=not cuda, bf16=spec["bf16"], dataloader_num_workers=0, seed=0, lr_scheduler_type="constant", max_length=spec["max_length"],
    )
    if variant.startswith("trl-dpo"):
        from trl import DPOConfig, DPOTrainer

        ordered = sorted(group["responses"], key=lambda r: -r["reward"])
        half = len(ordered) // 2
        pairs = [
            {"prompt": [{"role": "user", "content": group["question"]}], "chosen": [{"role": "assistant", "content": ordered[k]["text"]}],
             "rejected": [{"role": "assistant", "content": ordered[half + k]["text"]}]}
            for k in range(half)
        ]
        # Default reference handling: TRL loads a second copy of the model and runs it every step; precomputed: the
        # reference log-probs are computed once in the constructor and read from the batch.
        precompute = variant == "trl-dpo-precomputed"
        trainer = DPOTrainer(
            model=model, args=DPOConfig(per_device_train_batch_size=half, beta=0.1, precompute_ref_log_probs=precompute, **common),
            train_dataset=Dataset.from_list(pairs), processing_class=tok,
        )
        assert (trainer.ref_model is None) == precompute
        batch = next(iter(trainer.get_train_dataloader()))
        assert not precompute or "ref_chosen_logps" in batch
        tokens = int(batch["completion_mask"][:, 1:].sum())
    else:
        from gdpo.reference import add_ref_logps, autocast_name
        from gdpo.trainer import GDPOConfig, GDPOTrainer

        release = Dataset.from_list([group])
        if variant.startswith("gdpo"):
            model.to("cuda" if cuda else "cpu")
            release, _ = add_ref_logps(
                release, model, tok, max_length=spec["max_length"], batch_size=1, autocast=autocast_name(spec["bf16"]), progress=False
            )
            args = GDPOConfig(
                loss="gdpo", pairing=variant.split("-")[1], shared_prompt=not variant.endswith("-fullseq"), per_device_train_batch_size=1, **common
            )
        else:
            args = GDPOConfig(loss="sft", sft_threshold=-math.inf, per_device_train_batch_size=1, **common)
        trainer = GDPOTrainer(model, args, train_dataset=release, processing_class=tok)
        assert trainer.ref_model is None  # precomputed reference (gdpo) or none needed (sft)
        batch = trainer.data_collator([trainer.train_dataset[0]])
        tokens = int(batch["response_mask"][:, 1:].sum())
    trainer.model.to("cuda" if cuda else "cpu")
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        trainer.training_step(trainer.model, dict(batch))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    return step, tokens


def run_child(mode: str, spec: dict) -> dict:
    """`time`: every variant in this process, steps interleaved round-robin (fair under a fluctuating load);
    `memory:<variant>`: one variant alone, its peak memory over the steps after warm-up."""
    import torch

    torch.set_num_threads(spec["threads"])
    cuda = torch.cuda.is_available()
    if mode.startswith("memory:"):
        step, tokens = make_stepper(mode.split(":", 1)[1], spec)
        for _ in range(spec["warmup"]):
            step()
        _peak_reset(cuda)
        for _ in range(max(1, spec["steps"] // 2)):
            step()
        return {"peak_mib": _peak_mib(cuda)}
    steppers = {v: make_stepper(v, spec) for v in spec["variants"]}
    times: dict[str, list[float]] = {v: [] for v in steppers}
    for _ in range(spec["warmup"]):
        for v, (step, _) in steppers.items():
            step()
    for _ in range(spec["steps"]):
        for v, (step, _) in steppers.items():
            times[v].append(step())
    return {
        v: {"variant": v, "step_s": statistics.median(times[v]), "response_tokens": steppers[v][1],
            "s_per_1k_tokens": 1000 * statistics.median(times[v]) / steppers[v][1], "device": "cuda" if cuda else "cpu"}
        for v in steppers
    }


# ---- parent: run the variants, the loss microbenchmark, print the table ---------------------------------------------


def loss_only_timings(reps: int) -> list[dict]:
    import torch

    from gdpo.losses import gdpo_loss

    out = []
    gen = torch.Generator().manual_seed(0)
    for G in (8, 16, 64):
        for rewards_kind in ("binary", "distinct"):
            groups = 32
            rewards = (torch.rand(groups, G, generator=gen) > 0.5).double() if rewards_kind == "binary" else torch.rand(groups, G, generator=gen, dtype=torch.float64)
            row = {"G": G, "rewards": rewards_kind}
            for pairing in ("adjacent", "all", "block"):
                policy = torch.randn(groups, G, requires_grad=True)
                ref = torch.randn(groups, G)
                times, pairs = [], 0
                for _ in range(reps):
                    t = time.perf_counter()
                    loss, metrics = gdpo_loss(policy, ref, rewards, beta=0.1, pairing=pairing)
                    loss.backward()
                    times.append(time.perf_counter() - t)
                    pairs = metrics["counted_pairs"]
                row[pairing] = {"ms": 1000 * statistics.median(times), "pairs": int(pairs)}
            out.append(row)
    return out


def _child(mode: str, spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--spec", json.dumps(spec)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line and "examples/s]" not in line]
        sys.stderr.write("\n".join(lines[-40:]) + "\n")
        raise SystemExit(f"benchmark child '{mode}' {spec.get('variants', '')} failed with exit code {proc.returncode}"
                         + (" (killed: out of memory?)" if proc.returncode < 0 else ""))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="G=4, max_length 192, 3 timed steps")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--group-size", type=int)
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--bf16", action="store_true", help="bf16 mixed precision for every variant (GPU)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_child(a.child, json.loads(a.spec))))
        return

    G = a.group_size or (4 if a.quick else 8)
    spec = {"model": a.model, "max_length": a.max_length or (192 if a.quick else 384), "steps": a.steps or (3 if a.quick else 6),
            "warmup": a.warmup, "threads": a.threads, "bf16": a.bf16}
    group, source = build_group(G)
    with tempfile.TemporaryDirectory() as tmp:
        spec["group"] = str(Path(tmp) / "group.json")
        Path(spec["group"]).write_text(json.dumps(group))
        # Each process holds its variants' models and optimizer states at once: three at a time keeps a 135M-parameter
        # model's run under ~8 GB. Every process times gdpo-adjacent too; each ratio is taken within one process.
        groups = [["gdpo-adjacent", "sft", "trl-dpo"], ["gdpo-adjacent", "trl-dpo-precomputed", "gdpo-adjacent-fullseq"]]
        if not a.quick:
            groups.append(["gdpo-adjacent", "gdpo-all", "gdpo-block"])
        runs = [_child("time", {**spec, "variants": variants}) for variants in groups]
        for v in ("gdpo-adjacent", "sft", "trl-dpo"):
            runs[0][v]["peak_mib"] = _child(f"memory:{v}", spec)["peak_mib"]
        for run in runs:
            for v in run:
                run[v].setdefault("peak_mib", float("nan"))
    loss_rows = loss_only_timings(5 if a.quick else 20)

    def ratio(run: dict, variant: str, key: str = "step_s") -> float:
        return run[variant][key] / run["gdpo-adjacent"][key]

    first, second = runs[0], runs[1]
    gdpo, sft = first["gdpo-adjacent"], first["sft"]
    time_ratio = gdpo["step_s"] / sft["step_s"]
    mem_ratio = gdpo["peak_mib"] / sft["peak_mib"]
    trl_speedup = ratio(first, "trl-dpo", "s_per_1k_tokens")
    trl_pre_ratio = ratio(second, "trl-dpo-precomputed", "s_per_1k_tokens")
    shared_speedup = ratio(second, "gdpo-adjacent-fullseq")

    print(f"model {a.model}, G={G}, max_length {spec['max_length']}, data: {source}, device {gdpo['device']}, "
          f"{spec['warmup']} warm-up + {spec['steps']} timed steps, {spec['threads']} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"{'process':<9}{'variant':<23}{'step s':>9}{'resp tokens':>13}{'s/1k tok':>10}{'/ gdpo':>8}{'peak MiB':>10}")
    for k, run in enumerate(runs):
        for r in run.values():
            print(f"{k + 1:<9}{r['variant']:<23}{r['step_s']:>9.3f}{r['response_tokens']:>13}{r['s_per_1k_tokens']:>10.3f}"
                  f"{ratio(run, r['variant'], 's_per_1k_tokens'):>8.2f}{r['peak_mib']:>10.0f}")
    print(f"gdpo/sft step time {time_ratio:.3f} (target <= 1.10), peak memory {mem_ratio:.3f} (target <= 1.05)")
    print(f"TRL DPO (default reference) time per response token / GDPO's: {trl_speedup:.2f}x (target >= 1.5)")
    print(f"TRL DPO (precompute_ref_log_probs) time per response token / GDPO's: {trl_pre_ratio:.2f}x (target >= 1.3)")
    print(f"shared prompt: GDPO step with full sequences / with the prompt once per group: {shared_speedup:.2f}x (no target)")
    print("loss alone (forward + backward over [32 groups, G] log-probs), ms and counted pairs:")
    for row in loss_rows:
        cells = "  ".join(f"{p} {row[p]['ms']:.2f} ms/{row[p]['pairs']} pairs" for p in ("adjacent", "all", "block"))
        print(f"  G={row['G']:<3} {row['rewards']:<9} {cells}")
    checks = {"time": time_ratio <= 1.10, "memory": mem_ratio <= 1.05, "trl": trl_speedup >= 1.5, "trl_precomputed": trl_pre_ratio >= 1.3}
    print(json.dumps({
        "bench": "train_step", "quick": a.quick, "device": gdpo["device"], "G": G, "max_length": spec["max_length"],
        "gdpo_over_sft_time": round(time_ratio, 4), "target_time": 1.10,
        "gdpo_over_sft_peak_memory": round(mem_ratio, 4), "target_memory": 1.05,
        "trl_dpo_over_gdpo_time_per_token": round(trl_speedup, 4), "target_trl": 1.5,
        "trl_dpo_precomputed_over_gdpo_time_per_token": round(trl_pre_ratio, 4), "target_trl_precomputed": 1.3,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "fullseq_over_shared_prompt_time": round(shared_speedup, 4),
        "step_s": [{k: round(v["step_s"], 4) for k, v in run.items()} for run in runs],
        "loss_only_ms_G64_binary": {p: round(loss_rows[-2][p]["ms"], 3) for p in ("adjacent", "all", "block")},
        "checks": checks, "pass": all(checks.values()),
    }))


if __name__ == "__main__":
    main()
