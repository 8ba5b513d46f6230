"""The versions gdpo needs: the installed packages meet pyproject.toml's floors, and one GDPO step runs with them
(the shared-prompt path included, which uses transformers' layered DynamicCache). Run this file in an environment
with the floor versions installed (transformers==4.56.2, ...) to check the floors themselves."""

from __future__ import annotations

import math
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_inherited_mixed_precision(monkeypatch):
    """transformers 4.x's TrainingArguments(bf16=True) writes ACCELERATE_MIXED_PRECISION into the process environment
    and later TrainingArguments read it: keep each test's precision its own."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


def floors() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for spec in project["dependencies"] + project["optional-dependencies"]["train"]:
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([0-9][^,; ]*)", spec)
        if m:
            out[m.group(1).lower()] = Version(m.group(3))
    return out


def test_installed_versions_meet_the_floors():
    found = floors()
    assert found["transformers"] >= Version("4.56.2")  # the oldest version gdpo was run on
    for name in ("transformers", "torch", "peft", "accelerate", "datasets"):
        installed = Version(version(name).split("+")[0])
        assert installed >= found[name], f"{name} {installed} is below the floor {found[name]} in pyproject.toml"


@pytest.mark.train
def test_one_gdpo_step_runs(smollm2_path, tmp_path):
    from datasets import Dataset
    from gdpo_testing import tiny_smollm2
    from transformers import AutoTokenizer

    from gdpo.logps import shared_prompt_supported
    from gdpo.trainer import GDPOConfig, GDPOTrainer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    model = tiny_smollm2(smollm2_path)
    assert shared_prompt_supported(model)
    release = Dataset.from_list([{"question": "What is 2 + 3?", "responses": [{"text": "5.", "reward": 1.0}, {"text": "6.", "reward": 0.0}, {"text": "Maybe 5.", "reward": 0.5}]}])
    args = GDPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=1, report_to=[], use_cpu=True, logging_steps=1,
                      save_strategy="no", disable_tqdm=True, learning_rate=1e-3, max_length=64)
    trainer = GDPOTrainer(model, args, train_dataset=release, processing_class=tok)
    trainer.train()
    log = trainer.state.log_history[0]
    assert math.isfinite(log["loss"]) and log["counted_pairs"] == 2 and log["grad_norm"] > 0
