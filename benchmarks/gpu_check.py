"""GPU check for GDPO (MetaGDPO, arXiv 2511.12113): a prepared script for a machine with CUDA; it skips without one.

On a random-init model of Qwen2.5-0.5B's shape (built from its config values, written out below: the Hub is not
needed) with SmolLM2's tokenizer and one real group of G responses (MATH solutions from ../shared/data, else synthetic):
1. gradients of a GDPO loss through the shared-prompt path vs full sequences, in float32 (TF32 off) and under bf16
   autocast on float32 weights (what `dtype: auto` does on a GPU): the largest relative difference over parameters;
2. one GDPO training step (precomputed reference, bf16 autocast, shared prompt) against SFT on the same tokens, and
   GDPO with full sequences; median step times after warm-up;
3. the bf16-autocast step keeps float32 master weights: the weights stay float32 and one AdamW step at the paper's
   lr 2e-6 changes (nearly) every weight that has a gradient (pure bf16 weights would round most such updates away);
4. host syncs per GDPO training step after the first (which runs the step-0 reference check): counted with
   torch.cuda.set_sync_debug_mode on CUDA (the dry run counts the gdpo package's host reads instead, as
   tests/test_gdpo_syncs.py does).
Targets: float32 gradients within 1e-3 (relative, per parameter tensor), bf16 within 5e-2, GDPO step <= 1.10x SFT,
master weights float32 with >= 99% of the weights with a gradient changed, <= 1 host sync per step.

    python benchmarks/gpu_check.py            # G=8, max_length 1024, 5 timed steps (CUDA only; skips otherwise)
    python benchmarks/gpu_check.py --quick    # G=4, max_length 512, 3 timed steps
    python benchmarks/gpu_check.py --dry-run  # the same code on CPU with a 2-layer model of the same family (a test)

Not run as part of this project's CI: no GPU machine was available when it was written (see README).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Qwen/Qwen2.5-0.5B-Instruct config.json (the shape; the weights are random).
QWEN25_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, use_sliding_window=False, sliding_window=32768, max_window_layers=21, hidden_act="silu",
    bos_token_id=151643, eos_token_id=151645,
)
DRY_RUN = dict(QWEN25_05B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def build_model(shape: dict, device: str, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**shape), dtype=torch.float32, attn_implementation="sdpa")
    return model.to(device)


def gradient_check(model, batch, autocast: str) -> dict:
    """Largest relative difference (per parameter tensor, in norm) between shared-prompt and full-sequence gradients."""
    import torch

    from gdpo.logps import batch_logps
    from gdpo.losses import gdpo_loss
    from gdpo.reference import autocast_context

    device = next(model.parameters()).device

    def grads(shared: bool):
        model.zero_grad(set_to_none=True)
        with autocast_context(autocast, device):
            logps, _ = batch_logps(model, batch, shared_prompt=shared)
        mask = batch["group_mask"]
        policy = torch.zeros(mask.shape, dtype=logps.dtype, device=device).masked_scatter(mask, logps)
        ref = policy.detach() - 0.3 * torch.arange(mask.shape[1], device=device)  # margins away from 0
        # minmax: with w = 1 and equal margins the adjacent chain telescopes and the middle responses' gradients
        # cancel, which would leave float noise to compare
        loss, _ = gdpo_loss(policy, ref, batch["rewards"], beta=0.1, weighting="minmax", mask=mask, tie_keys=batch.get("tie_keys"))
        loss.backward()
        return logps.detach().double(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}

    logps_full, full = grads(False)
    logps_shared, shared = grads(True)
    worst = max(((shared[n] - g).norm() / g.norm().clamp(min=1e-30)).item() for n, g in full.items())
    return {"max_rel_grad_diff": worst, "max_abs_logp_diff": (logps_shared - logps_full).abs().max().item(), "params": len(full)}


def count_host_syncs(fn) -> int:
    """Host syncs while fn() runs: CUDA's own count (set_sync_debug_mode warns on each synchronizing call), or on CPU
    the calls from the gdpo package that would synchronize on a GPU (host reads, nonzero, boolean-mask indexing)."""
    import warnings

    import torch

    if torch.cuda.is_available():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    import gdpo

    root = str(Path(gdpo.__file__).resolve().parent)
    count = 0
    saved = {}

    def counted(name):
        real = getattr(torch.Tensor, name)

        def wrapper(t, *a, **k):
            nonlocal count
            caller = sys._getframe(1).f_code
            if name != "__getitem__":
                count += caller.co_filename.startswith(root) and caller.co_name != "with_host_indices"
            elif any(torch.is_tensor(i) and i.dtype == torch.bool for i in (a[0] if isinstance(a[0], tuple) else (a[0],))):
                count += caller.co_filename.startswith(root)
            return real(t, *a, **k)

        saved[name] = real
        return wrapper

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero", "__getitem__"):
        setattr(torch.Tensor, name, counted(name))
    try:
        fn()
    finally:
        for name, real in saved.items():
            setattr(torch.Tensor, name, real)
    return count


def master_weights_check(model, tok, group: dict, max_length: int, bf16: bool) -> dict:
    """One GDPO step at lr 2e-6 (AdamW, bf16 autocast on float32 weights, what the shipped examples run): the share
    of the weights with a nonzero gradient that changed, and the weights' dtype after the step."""
    import torch

    step, _, trainer = make_stepper(model, tok, group, "gdpo", max_length, bf16, lr=2e-6, optim="adamw_torch", keep=True)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    grads: dict = {}
    real_step = trainer.optimizer.step

    def capture_then_step(*a, **k):
        grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        return real_step(*a, **k)

    trainer.optimizer.step = capture_then_step
    step()
    trainer.optimizer.step = real_step
    with_grad = changed = 0
    for n, p in trainer.model.named_parameters():
        if n in grads:
            nz = grads[n] != 0
            with_grad += int(nz.sum())
            changed += int(((p.detach() != before[n]) & nz).sum())
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in trainer.model.parameters()})
    return {"master_dtype": dtypes, "changed_share": changed / max(with_grad, 1), "weights_with_grad": with_grad}


def make_stepper(model, tok, group: dict, variant: str, max_length: int, bf16: bool, lr: float = 1e-6, optim: str = "adamw_torch",
                 keep: bool = False):
    import torch
    from datasets import Dataset

    from gdpo.reference import add_ref_logps, autocast_name
    from gdpo.trainer import GDPOConfig, GDPOTrainer

    cuda = torch.cuda.is_available()
    release = Dataset.from_list([group])
    common = dict(
        output_dir=tempfile.mkdtemp(prefix="gpu-check-"), learning_rate=lr, optim=optim, report_to=[], save_strategy="no", disable_tqdm=True,
        use_cpu=not cuda, bf16=bf16, dataloader_num_workers=0, seed=0, lr_scheduler_type="constant", max_length=max_length,
        per_device_train_batch_size=1,
    )
    if variant.startswith("gdpo"):
        release, _ = add_ref_logps(release, model, tok, max_length=max_length, batch_size=1, autocast=autocast_name(bf16), progress=False)
        args = GDPOConfig(loss="gdpo", shared_prompt=variant == "gdpo", **common)
    else:
        args = GDPOConfig(loss="sft", sft_threshold=float("-inf"), **common)
    trainer = GDPOTrainer(model, args, train_dataset=release, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    tokens = int(batch["response_attention_mask"].sum())
    # On the device once: the host-to-device copy of a batch is the data loader's business, not the step's (and a
    # blocking copy counts as a sync on CUDA).
    batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise (transformers 4.x reads it)
    trainer.model.train()

    def untimed() -> None:
        trainer.training_step(trainer.model, dict(batch))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        untimed()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    step.untimed = untimed
    return (step, tokens, trainer) if keep else (step, tokens)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="G=4, max_length 512, 3 timed steps")
    ap.add_argument("--dry-run", action="store_true", help="run on CPU with a 2-layer model of the same family (checks the script)")
    ap.add_argument("--steps", type=int)
    a = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not a.dry_run:
        result = {"bench": "gpu_check", "skipped": True, "reason": "no CUDA device", "pass": True}
        print("gpu_check: no CUDA device, skipped (use --dry-run to exercise the script on CPU)")
        print(json.dumps(result))
        return result

    from transformers import AutoTokenizer

    from gdpo.data import GroupCollator, tokenize_groups
    from gdpo.logps import shared_prompt_supported
    from metakl.llm.models import resolve_chat_model
    from train_step import build_group

    device = "cuda" if torch.cuda.is_available() and not a.dry_run else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    shape = DRY_RUN if a.dry_run else QWEN25_05B
    G = 4 if (a.quick or a.dry_run) else 8
    max_length = 128 if a.dry_run else (512 if a.quick else 1024)
    steps = a.steps or (2 if a.dry_run else 3 if a.quick else 5)
    bf16 = device == "cpu" or torch.cuda.is_bf16_supported()
    tok = AutoTokenizer.from_pretrained(resolve_chat_model("smollm2-135m-instruct"))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    group, source = build_group(G)

    groups, report = tokenize_groups(__import__("datasets").Dataset.from_list([group]), tok, max_length=max_length)
    batch = {k: v.to(device) for k, v in GroupCollator(tok.pad_token_id)([groups[0]]).items()}
    model = build_model(shape, device)
    supported = shared_prompt_supported(model)
    fp32 = gradient_check(model, batch, "none")
    bf = gradient_check(model, batch, "bfloat16" if bf16 else "float16")
    del model

    steppers = {v: make_stepper(build_model(shape, device), tok, group, v, max_length, bf16) for v in ("gdpo", "sft", "gdpo-fullseq")}
    times: dict[str, list[float]] = {v: [] for v in steppers}
    for _ in range(1):  # warm-up
        for step, _ in steppers.values():
            step()
    for _ in range(steps):
        for v, (step, _) in steppers.items():
            times[v].append(step())
    # After warm-up (the first step ran the step-0 reference check, which reads its numbers once): one more step each.
    syncs = {v: count_host_syncs(step.untimed) for v, (step, _) in steppers.items()}
    del steppers
    master = master_weights_check(build_model(shape, device), tok, group, max_length, bf16)
    median = {v: statistics.median(t) for v, t in times.items()}
    gdpo_over_sft = median["gdpo"] / median["sft"]
    fullseq_over_shared = median["gdpo-fullseq"] / median["gdpo"]

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    print(f"{'dry run: ' if a.dry_run else ''}device {name}, model Qwen2 {shape['num_hidden_layers']} layers × {shape['hidden_size']} "
          f"(random init), G={G}, max_length {max_length}, {report['responses']} responses ({source}), "
          f"bf16 autocast {bf16}, shared prompt supported: {supported}")
    print(f"gradients shared prompt vs full sequences: float32 max rel {fp32['max_rel_grad_diff']:.2e} "
          f"(log-probs max abs {fp32['max_abs_logp_diff']:.2e}); bf16 autocast max rel {bf['max_rel_grad_diff']:.2e} "
          f"(log-probs max abs {bf['max_abs_logp_diff']:.2e})")
    print(f"step s: gdpo {median['gdpo']:.4f}, sft {median['sft']:.4f}, gdpo full sequences {median['gdpo-fullseq']:.4f}; "
          f"gdpo/sft {gdpo_over_sft:.3f} (target <= 1.10), full/shared {fullseq_over_shared:.2f}x")
    print(f"host syncs per step ({'CUDA sync debug mode' if device == 'cuda' else 'gdpo host reads, dry run'}): {syncs} (target <= 1); "
          f"bf16 autocast master weights {master['master_dtype']}, one lr 2e-6 AdamW step changed {master['changed_share']:.2%} of "
          f"{master['weights_with_grad']} weights with a gradient (target >= 99%)")
    checks = {
        "shared_prompt_supported": supported,
        "fp32_grads": fp32["max_rel_grad_diff"] <= 1e-3,
        "bf16_grads": bf["max_rel_grad_diff"] <= 5e-2,
        "time": gdpo_over_sft <= 1.10,
        "syncs": all(n <= 1 for n in syncs.values()),
        "master_weights": master["master_dtype"] == ["float32"] and master["changed_share"] >= 0.99,
    }
    if a.dry_run:  # timings of a 2-layer model on a shared CPU say nothing
        checks.pop("time")
    result = {
        "bench": "gpu_check", "dry_run": a.dry_run, "device": name, "G": G, "max_length": max_length,
        "fp32_max_rel_grad_diff": fp32["max_rel_grad_diff"], "target_fp32": 1e-3,
        "bf16_max_rel_grad_diff": bf["max_rel_grad_diff"], "target_bf16": 5e-2,
        "step_s": {k: round(v, 5) for k, v in median.items()},
        "gdpo_over_sft_time": round(gdpo_over_sft, 4), "target_time": 1.10,
        "fullseq_over_shared_prompt_time": round(fullseq_over_shared, 4),
        "host_syncs_per_step": syncs, "target_syncs": 1, "master_weights": master,
        "checks": checks, "pass": all(checks.values()),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
