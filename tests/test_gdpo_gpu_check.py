"""benchmarks/gpu_check.py is prepared for a GPU machine: without CUDA it skips cleanly, and its --dry-run (the same
code on CPU with a 2-layer model of Qwen2.5's family) runs and checks the shared-prompt gradients, the float32 master
weights under bf16 autocast and the host-sync count."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_inherited_mixed_precision(monkeypatch):
    """transformers 4.x's TrainingArguments(bf16=True) writes ACCELERATE_MIXED_PRECISION into the process environment
    and later TrainingArguments read it: keep each test's precision its own."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run for real")
def test_skips_without_cuda(capsys):
    result = load().main([])
    assert result == {"bench": "gpu_check", "skipped": True, "reason": "no CUDA device", "pass": True}
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"bench": "gpu_check"')


@pytest.mark.train
def test_dry_run_on_cpu(smollm2_path):
    torch.set_num_threads(1)
    result = load().main(["--dry-run", "--steps", "1"])
    assert result["dry_run"] and result["checks"]["shared_prompt_supported"]
    assert result["fp32_max_rel_grad_diff"] <= 1e-3 and result["pass"], result
    assert set(result["step_s"]) == {"gdpo", "sft", "gdpo-fullseq"}
    # bf16 autocast on float32 master weights: the weights stay float32 and a 2e-6 step moves the ones with a gradient
    master = result["master_weights"]
    assert master["master_dtype"] == ["float32"] and master["changed_share"] >= 0.99 and master["weights_with_grad"] > 0
    # host syncs of a step after the first (the dry run counts gdpo's host reads; CUDA's own count on a GPU)
    assert result["host_syncs_per_step"] == {"gdpo": 0, "sft": 0, "gdpo-fullseq": 0} and result["checks"]["syncs"]
