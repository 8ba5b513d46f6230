"""Issue 21 defect 4: the GDPO loss path does not make the host wait for the device. On this CPU-only machine a
host sync is counted where the code asks a tensor for a host value or for a data-dependent shape (`.item()`,
`.tolist()`, `.cpu()`, `bool()`, `float()`, `int()`, `nonzero`, boolean-mask indexing): each of these waits for the
GPU's queue on a CUDA device. Only calls made from the gdpo package count (Trainer's own are not ours to change);
benchmarks/gpu_check.py measures the same on a GPU with torch.cuda.set_sync_debug_mode."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from gdpo_testing import save_tiny_smollm2
from transformers import AutoModelForCausalLM, AutoTokenizer

import gdpo
from gdpo.trainer import GDPOConfig, GDPOTrainer

torch.set_num_threads(1)
GDPO_DIR = str(Path(gdpo.__file__).resolve().parent)
_HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero")


def response(text: str, reward: float) -> dict:
    return {"text": text, "reasoning": "", "answer": "", "reward": reward, "advantage": 0.0, "model": "hand", "finish_reason": "stop"}


RELEASE = [
    {"question": "What is 2 + 3?", "responses": [response("2 + 3 = 5.", 1.0), response("6.", 0.0), response("It is 5, I think.", 0.5)]},
    {"question": "Is 7 prime?", "responses": [response("Yes.", 1.0), response("Yes, 7 is prime.", 1.0), response("No.", 0.0)]},
    {"question": "Is 9 prime?", "responses": [response("No, 9 = 3 x 3.", 1.0), response("No.", 1.0), response("Yes.", 1.0)]},
    {"question": "What is 4 * 4?", "responses": [response("16.", 1.0), response("8.", 0.0), response("15.", 0.2), response("4 * 4 = 16.", 0.9)]},
]


class SyncCounter:
    """Patches torch.Tensor's host reads; records (what, file:line) for calls whose caller is in the gdpo package."""

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, str]] = []
        self.step = lambda: 0
        for name in _HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        real_getitem = torch.Tensor.__getitem__

        def getitem(t, index):
            parts = index if isinstance(index, tuple) else (index,)
            if any(torch.is_tensor(p) and p.dtype == torch.bool for p in parts):
                self._note("bool-mask index")
            return real_getitem(t, index)

        monkeypatch.setattr(torch.Tensor, "__getitem__", getitem)
        real_nonzero = torch.nonzero
        monkeypatch.setattr(torch, "nonzero", lambda *a, **k: self._note("torch.nonzero") or real_nonzero(*a, **k))

    def _note(self, what: str) -> None:
        caller = sys._getframe(2)
        # with_host_indices runs in the collator, on the batch's CPU tensors before it moves to the device: no sync.
        if caller.f_code.co_filename.startswith(GDPO_DIR) and caller.f_code.co_name != "with_host_indices":
            self.events.append((self.step(), what, f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"))

    def _wrap(self, name, real):
        def counted(t, *a, **k):
            self._note(name)
            return real(t, *a, **k)

        return counted


@pytest.fixture(scope="module")
def tiny_dir(smollm2_path, tmp_path_factory):
    return str(save_tiny_smollm2(smollm2_path, tmp_path_factory.mktemp("tiny")))


@pytest.mark.parametrize("loss, shared_prompt", [("gdpo", True), ("gdpo", False), ("listwise", True), ("dpo", True), ("sft", True)])
def test_no_host_sync_in_the_loss_path_outside_logging(tiny_dir, tmp_path, monkeypatch, loss, shared_prompt):
    """3 optimizer steps of 2 micro-batches (1 group each, a flat group among them), logged once, at step 3: the two
    steps before it make no host sync from gdpo at all (target <= 1 per step), and the logging step adds one (the
    pooled metric sums' single copy). Before: ~10 per micro-batch (pair loop on host lists, metric copies, a
    per-micro-batch reduce + copy, float() of counts, boolean-mask indexing of response positions)."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    args = GDPOConfig(
        output_dir=str(tmp_path / "out"), max_length=64, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
        dataloader_num_workers=0, max_steps=3, logging_steps=3, per_device_train_batch_size=1, gradient_accumulation_steps=2,
        learning_rate=1e-3, optim="sgd", lr_scheduler_type="constant", loss=loss, weighting="minmax", link="sigmoid",
        rpo_alpha=0.5 if loss == "gdpo" else 0.0, shared_prompt=shared_prompt, logging_nan_inf_filter=False, max_grad_norm=0.0,
    )
    trainer = GDPOTrainer(model, args, train_dataset=Dataset.from_list(RELEASE * 2), processing_class=tok)
    counter = SyncCounter(monkeypatch)
    counter.step = lambda: trainer.state.global_step
    trainer.train()
    monkeypatch.undo()
    before_logging = [e for e in counter.events if e[0] < 2]  # global_step 0 and 1: optimizer steps 1 and 2
    assert before_logging == [], before_logging
    assert len(counter.events) <= 1, counter.events
    log = trainer.state.log_history[0]
    assert log["step"] == 3 and "loss" in log
    if loss != "sft":
        assert log["counted_groups"] >= 1 and 0 <= log["rewards/accuracies"] <= 1
    else:
        assert log["selected_tokens"] > 0
