"""Defect 2 (issue 21): pure bf16 weights cannot take the paper's 2e-6 step. The shipped example trains float32
master weights (with bf16 autocast where the CPU has native bf16) and a 2e-6 step changes >= 99% of them; bf16
weights are refused by `gdpo train` unless --allow_low_precision_weights is given."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from typer.testing import CliRunner

from gdpo.precision import stalled_share
from metakl.errors import UserError
from metakl.io import save_stage

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "gdpo" / "gdpo_smollm2.yaml"
RELEASE = [
    {"question": "What is 2 + 3?", "responses": [{"text": "2 + 3 = 5. The answer is 5.", "reward": 1.0}, {"text": "The answer is 6.", "reward": 0.0},
                                                 {"text": "It is 5.", "reward": 1.0}, {"text": "Maybe 7.", "reward": 0.0}]},
    {"question": "Name the capital of France.", "responses": [{"text": "Paris.", "reward": 1.0}, {"text": "Lyon.", "reward": 0.2},
                                                              {"text": "Marseille, I believe.", "reward": 0.0}, {"text": "It is Paris.", "reward": 0.9}]},
]


@pytest.fixture(autouse=True)
def no_inherited_mixed_precision(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


def test_stalled_share_by_hand_and_against_torch_rounding():
    """bf16 keeps 8 significant bits: 1.0 has half-ulp 2^-8 = 0.0039, 0.001 = 0.512·2^-9 has half-ulp 2^-18 = 3.8e-6."""
    layer = torch.nn.Linear(2, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.001]]))
    assert stalled_share(layer, 1e-3) == 0.5  # 1.0 stays, 0.001 moves
    assert stalled_share(layer, 2e-6) == 1.0
    assert stalled_share(layer, 1e-5) == 0.5
    assert stalled_share(layer, 1e-2) == 0.0
    assert stalled_share(layer.float(), 2e-6) == 0.0  # float32 weights
    # The rule agrees with what bf16 rounding does to w + lr, on random weights of a typical scale.
    torch.manual_seed(0)
    w = (torch.randn(10_000) * 0.05).to(torch.bfloat16)
    layer = torch.nn.Linear(10_000, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(w[None])
    for lr in (2e-6, 1e-4, 1e-3):
        moved = ((w.float() + lr).to(torch.bfloat16) != w).float().mean().item()
        assert stalled_share(layer, lr) == pytest.approx(1 - moved, abs=0.01)


@pytest.mark.train
def test_shipped_example_step_changes_99_percent_of_weights(tmp_path):
    """The example's settings (dtype auto: float32 weights + bf16 autocast where metakl.hardware picks it), SmolLM2 via
    the model resolver, one optimizer step at the example's lr 2e-6 (warmup off so the step is 2e-6, not 0)."""
    from gdpo.cli import Settings, _check_weight_precision, _load_model
    from gdpo.trainer import GDPOTrainer
    from metakl.hardware import auto_dtype

    release = save_stage(Dataset.from_list(RELEASE), tmp_path / "release")
    script, model_args, cfg = Settings("train").parse([
        "--config", str(EXAMPLE), "--data", str(release), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
        "--warmup_steps", "0", "--gradient_accumulation_steps", "1", "--max_length", "64", "--save_strategy", "no",
        "--logging_steps", "1", "--use_cpu", "true",
    ])
    assert model_args.dtype == "auto" and cfg.learning_rate == 2e-6
    assert cfg.bf16 == (auto_dtype("cpu").dtype == "bfloat16")  # bf16 autocast exactly where the CPU has it natively
    model, tokenizer = _load_model(model_args)
    assert next(model.parameters()).dtype == torch.float32
    _check_weight_precision(model, model_args, cfg, allow=False)  # float32: nothing to say
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = GDPOTrainer(model, cfg, train_dataset=Dataset.from_list(RELEASE), processing_class=tokenizer)
    trainer.train()
    # Adam's intended update of each element, from its state after the step (step 1: m̂ = g, v̂ = g²): lr·g/(|g| + eps).
    # Elements whose gradient is ~100x below Adam's eps (1e-8: rare tokens' embedding entries, through the LM head, on 8
    # short responses) get a step below lr/100 and stay put in ANY dtype (1.7% of SmolLM2's elements here, float32 with
    # or without autocast alike): "trained" = the elements with a step >= lr/100, which a bf16 weight could not take.
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    total = changed = full = full_changed = 0
    for name, param in trainer.model.named_parameters():
        state = optimizer.state[param]
        beta1, beta2 = optimizer.defaults["betas"]
        m_hat = state["exp_avg"] / (1 - beta1)
        v_hat = state["exp_avg_sq"] / (1 - beta2)
        update = cfg.learning_rate * m_hat / (v_hat.sqrt() + optimizer.defaults["eps"])
        moved = param.detach() != before[name]
        big = update.abs() >= cfg.learning_rate / 100
        total, changed = total + param.numel(), changed + int(moved.sum())
        full, full_changed = full + int(big.sum()), full_changed + int((moved & big).sum())
    print(f"float32 weights{' + bf16 autocast' if cfg.bf16 else ''}, one 2e-6 step: {full_changed / full:.4%} of the "
          f"{full / total:.2%} of parameters with an Adam step >= lr/100 changed; {changed / total:.2%} of all {total}")
    assert full / total >= 0.9  # 95.4% measured here
    assert full_changed / full >= 0.99


@pytest.mark.train
def test_pure_bf16_weights_are_refused_at_the_paper_lr(smollm2_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from gdpo.cli import app

    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.bfloat16)
    share = stalled_share(model, 2e-6)
    print(f"SmolLM2-135M in bf16: a 2e-6 step is below half an ulp of {share:.2%} of the weights")
    assert share > 0.95
    release = save_stage(Dataset.from_list(RELEASE), tmp_path / "release")
    argv = ["train", "--data", str(release), "--output_dir", str(tmp_path / "out"), "--dtype", "bfloat16", "--max_steps", "1",
            "--use_cpu", "true", "--report_to", "none", "--max_length", "64", "--save_strategy", "no"]
    res = CliRunner().invoke(app, argv)
    assert isinstance(res.exception, UserError), res.output
    assert "dtype bfloat16: a step of learning_rate 2e-06 is below half a unit in the last place of" in str(res.exception)
    assert "--allow_low_precision_weights true" in str(res.exception)
    assert not (tmp_path / "out").exists()
