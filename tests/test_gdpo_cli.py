"""`gdpo ref-logps` and `gdpo train` end to end on CPU: a tiny model from SmolLM2's config, real MATH groups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset
from typer.testing import CliRunner

from conftest import shared_data
from gdpo.cli import app
from metakl.errors import UserError
from metakl.io import save_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_inherited_mixed_precision(monkeypatch):
    """transformers 4.x's TrainingArguments(bf16=True) writes ACCELERATE_MIXED_PRECISION into the process environment
    and later TrainingArguments read it: keep each test's precision its own."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


def qwen_math_release(n_groups: int, group_size: int, reward: str = "score") -> Dataset:
    """Groups of MATH solutions from ../shared/data: mixed-correctness, short problems first; reward = correctness or RM score."""
    path = shared_data("qwen25math_rm_maj_example", "math_cot_100.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows.sort(key=lambda r: (not 0 < sum(r["score"]) < len(r["score"]), len(r["question"])))
    out = []
    for r in rows[:n_groups]:
        responses = []
        for text, correct, rm in list(zip(r["response"], r["score"], r["pred_score"]))[:group_size]:
            value = float(correct) if reward == "score" else float(rm[0])
            responses.append({"text": text, "reasoning": "", "answer": "", "reward": value, "advantage": 0.0, "model": "qwen2.5-math", "finish_reason": "stop"})
        out.append({"question": r["question"], "responses": responses})
    return Dataset.from_list(out)


@pytest.fixture(scope="module")
def tiny_dir(smollm2_path, tmp_path_factory):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-smollm2")
    config = AutoConfig.from_pretrained(smollm2_path)
    config.update(dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(smollm2_path).save_pretrained(path)
    return path


def test_ref_logps_then_train_and_refuse_mismatch(tiny_dir, tmp_path):
    release = save_stage(qwen_math_release(3, 4), tmp_path / "release")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"model: {tiny_dir}\nmax_length: 160\nloss: gdpo\npairing: block\nlearning_rate: 1.0e-4\n"
        f"per_device_train_batch_size: 2\nreport_to: none\nuse_cpu: true\nsave_strategy: 'no'\nlogging_steps: 1\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    runner = CliRunner()
    from metakl import hardware

    hardware._announced.clear()  # the choice is printed once per process: earlier in-process tests may have printed it
    res = runner.invoke(app, ["ref-logps", "--config", str(cfg), "--data", str(release), "--out", str(tmp_path / "ref")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["groups"] == 3 and summary["truncated_responses"] > 0  # MATH solutions are longer than 160 tokens
    stored = Dataset.from_parquet(str(tmp_path / "ref" / "data.parquet"))
    assert len(stored["ref_logps"][0]) == 4 and all(v < 0 for v in stored["ref_logps"][0])
    fp = json.loads(stored["ref_logps_fingerprint"][0])
    assert fp["max_length"] == 160
    # dtype auto (the default): float32 weights, bf16 autocast exactly where metakl.hardware picks bfloat16 here.
    from metakl.hardware import auto_dtype

    assert fp["dtype"] == "float32" and fp["autocast"] == ("bfloat16" if auto_dtype("cpu").dtype == "bfloat16" else "none")
    assert "dtype auto:" in res.stderr

    res = runner.invoke(app, ["train", "--config", str(cfg), "--data", str(tmp_path / "ref"), "--max_steps", "2", "--pairing=all"])
    assert res.exit_code == 0, res.output
    done = json.loads(res.stdout.strip().splitlines()[-1])
    assert done["global_step"] == 2
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert "reference: precomputed ref_logps column, checked to be computed with the policy at step 0" in res.stderr
    assert "recipe paper: loss gdpo, beta 0.1, weighting minmax, pairing all (given)" in res.stderr
    assert "3 groups (0 = 0% without a reward preference, skipped)" in res.stderr

    # Training with an explicit float32 precision against the auto reference: refused where auto chose bf16 autocast.
    if fp["autocast"] != "none":
        os.environ.pop("ACCELERATE_MIXED_PRECISION", None)  # transformers 4.x leaks it from the commands above (one process here)
        res = runner.invoke(app, ["train", "--config", str(cfg), "--data", str(tmp_path / "ref"), "--max_steps", "1", "--bf16", "false"])
        assert isinstance(res.exception, UserError) and "autocast: stored 'bfloat16', now 'none'" in str(res.exception)

    # Unknown settings are refused with the file/field named.
    res = runner.invoke(app, ["train", "--config", str(cfg), "--data", str(release), "--learning-rat", "1"])
    assert isinstance(res.exception, UserError) and "unknown setting '--learning-rat'" in str(res.exception)

    # Through the console entry point: a mismatched max_length ends in one line and exit code 2.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "gdpo.cli", "train", "--config", str(cfg), "--data", str(tmp_path / "ref"), "--max_length", "128", "--max_steps", "1"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "max_length: stored 160, now 128" in lines[0] and "Traceback" not in proc.stderr


def test_accelerate_example_configs_parse():
    from accelerate.commands.config.config_args import ClusterConfig

    kinds = {}
    for name in ("one_gpu", "deepspeed_zero2", "fsdp"):
        kinds[name] = ClusterConfig.from_yaml_file(str(ROOT / "examples" / "gdpo" / "accelerate" / f"{name}.yaml"))
    assert str(kinds["deepspeed_zero2"].distributed_type) == "DistributedType.DEEPSPEED"
    assert kinds["deepspeed_zero2"].deepspeed_config["zero_stage"] == 2
    assert str(kinds["fsdp"].distributed_type) == "DistributedType.FSDP"


def test_example_training_config_parses():
    from gdpo.cli import Settings

    script, model, cfg = Settings("train").parse(["--config", str(ROOT / "examples" / "gdpo" / "gdpo_smollm2.yaml"),
                                                  "--use_peft", "true", "--lora_r", "8", "--beta", "0.2"])
    assert model.model_name_or_path == "smollm2-135m-instruct" and model.use_peft and model.lora_r == 8 and model.dtype == "auto"
    assert cfg.beta == 0.2 and cfg.recipe == "paper" and cfg.pairing == "block" and cfg.weighting == "minmax"
    assert cfg.learning_rate == 2e-6 and cfg.gradient_accumulation_steps == 8


def test_dtype_auto_and_explicit_precision(monkeypatch):
    import metakl.hardware
    from gdpo.cli import Settings
    from metakl.hardware import DtypeChoice

    monkeypatch.setattr(metakl.hardware, "auto_dtype", lambda device=None: DtypeChoice("bfloat16", "test: native bf16"))
    monkeypatch.setattr(metakl.hardware, "cuda_available", lambda: False)
    parse = lambda *argv: Settings("train").parse(list(argv))  # noqa: E731
    _, model, cfg = parse("--output_dir", "/tmp/x")
    assert model.dtype == "auto" and cfg.bf16 and not cfg.fp16 and cfg.use_cpu  # float32 weights + bf16 autocast
    _, _, cfg = parse("--use_cpu", "true", "--output_dir", "/tmp/x", "--bf16", "false")
    assert not cfg.bf16  # an explicit choice wins
    _, _, cfg = parse("--use_cpu", "true", "--output_dir", "/tmp/x", "--dtype", "float32")
    assert not cfg.bf16
    monkeypatch.setattr(metakl.hardware, "auto_dtype", lambda device=None: DtypeChoice("float32", "test: no native bf16"))
    _, _, cfg = parse("--use_cpu", "true", "--output_dir", "/tmp/x")
    assert not cfg.bf16 and not cfg.fp16
    with pytest.raises(UserError, match="setting 'dtype'"):
        parse("--dtype", "float64")
