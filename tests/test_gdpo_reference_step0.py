"""Issue 21 defect 3 (second half): a precomputed reference column is checked against the reference model by its
numbers at step 0, so a column computed with another model, device or kernel (which a fingerprint cannot see) is
refused naming its rows. One process here; tests/test_gdpo_multirank.py runs it on 2 ranks (DDP and FSDP)."""

from __future__ import annotations

import re

import pytest
import torch
from datasets import Dataset
from gdpo_testing import save_tiny_smollm2
from transformers import AutoModelForCausalLM, AutoTokenizer

from gdpo.reference import STEP0_RTOL, add_ref_logps, step0_disagreements, step0_precision
from gdpo.trainer import GDPOConfig, GDPOTrainer
from metakl.errors import UserError

torch.set_num_threads(1)


def response(text: str, reward: float) -> dict:
    return {"text": text, "reasoning": "", "answer": "", "reward": reward, "advantage": 0.0, "model": "hand", "finish_reason": "stop"}


RELEASE = [
    {"question": "What is 2 + 3?", "responses": [response("2 + 3 = 5.", 1.0), response("6.", 0.0), response("It is 5, I think.", 0.5)]},
    {"question": "What is 4 * 4?", "responses": [response("16.", 1.0), response("8.", 0.0), response("4 * 4 = 16.", 0.9)]},
]


def test_tolerance_by_hand():
    """tol = rtol(precision) · (|stored| + tokens): scales with the sequence's log-prob and length."""
    stored, recomputed, tokens, rows = [-100.0, -10.0], [-100.02, -11.0], [50, 5], [3, 8]
    # float32: tol 2e-4·150 = 0.03 (0.02 passes), 2e-4·15 = 0.003 (1.0 fails)
    assert step0_disagreements(stored, recomputed, tokens, rows, precision="float32", average=False) == [(8, -10.0, -11.0, pytest.approx(0.003))]
    # bf16: 1e-2·15 = 0.15, still far below the 1-nat error; averaged log-probs count one "token"
    assert [b[0] for b in step0_disagreements(stored, recomputed, tokens, rows, precision="bfloat16", average=False)] == [8]
    assert step0_disagreements([-2.0], [-2.02], [40], [0], precision="bfloat16", average=True) == []  # tol 0.03
    assert step0_disagreements([-2.0], [float("nan")], [40], [0], precision="bfloat16", average=True)[0][0] == 0
    assert step0_precision("bfloat16", "float32") == "bfloat16" and step0_precision("none", "float16") == "float16"
    assert step0_precision("none", "float32") == "float32" and STEP0_RTOL["float32"] < STEP0_RTOL["float16"] < STEP0_RTOL["bfloat16"]


@pytest.fixture(scope="module")
def tiny(smollm2_path, tmp_path_factory):
    path = save_tiny_smollm2(smollm2_path, tmp_path_factory.mktemp("tiny"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # batch_size 2 and the full-sequence path: other shapes and kernels than the trainer's first micro-batch
    stored, _ = add_ref_logps(Dataset.from_list(RELEASE), model, tok, max_length=64, batch_size=2, shared_prompt=False, progress=False)
    return str(path), stored


def train_on(path, data, tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    args = GDPOConfig(
        output_dir=str(tmp_path / "out"), max_length=64, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
        dataloader_num_workers=0, max_steps=1, logging_steps=1, per_device_train_batch_size=1, learning_rate=1e-3, optim="sgd",
        loss="gdpo", weighting="minmax", rpo_alpha=0.0,
    )
    trainer = GDPOTrainer(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), args, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(path))
    assert trainer.ref_model is None  # the column is the reference
    trainer.train()
    return trainer


def test_fresh_column_passes_the_step0_check(tiny, tmp_path, monkeypatch):
    path, stored = tiny
    trainer = train_on(path, stored, tmp_path, monkeypatch)
    assert trainer._step0_checked and trainer.state.global_step == 1


def test_column_off_by_more_than_the_tolerance_is_refused_naming_its_row(tiny, tmp_path, monkeypatch):
    """The fingerprint (weights, tokens, rewards) still matches, only the numbers are off: 1 nat on one response of
    each row, ~10x the float32 tolerance for this sequence (2e-4 · (|log p| ≈ 50 + tokens))."""
    path, stored = tiny
    rows = stored.to_list()
    for row in rows:  # every row: whichever the first micro-batch holds
        assert abs(row["ref_logps"][1]) < 200
        row["ref_logps"][1] += 1.0
    with pytest.raises(UserError) as err:
        train_on(path, Dataset.from_list(rows), tmp_path, monkeypatch)
    message = str(err.value)
    assert re.search(r"disagree with the reference model at step 0 for rows \[[01]\] \(1 of 3 responses checked", message), message
    assert "for float32" in message
    assert "\n" not in message and "gdpo ref-logps" in message
