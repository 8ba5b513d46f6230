"""GDPO you can trust (issue 10): the update does not depend on how a step is split, logged metrics are pooled
exactly, a stale reference is refused, data without a preference is refused or warned about, and tied responses are
ordered independently of storage. A tiny model built from SmolLM2's config (real tokenizer, random weights)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from gdpo_testing import GradCapture, tiny_smollm2
from transformers import AutoModelForCausalLM, AutoTokenizer

from gdpo.data import GroupCollator, load_release, tokenize_groups
from gdpo.losses import gdpo_loss, summarize
from gdpo.reference import add_ref_logps, model_digest
from gdpo.trainer import GDPOConfig, GDPOTrainer
from metakl.errors import UserError
from metakl.io import save_stage

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_inherited_mixed_precision(monkeypatch):
    """transformers 4.x's TrainingArguments(bf16=True) writes ACCELERATE_MIXED_PRECISION into the process environment,
    and every later TrainingArguments reads it: keep each test's precision its own."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


def response(text: str, reward) -> dict:
    return {"text": text, "reasoning": "", "answer": "", "reward": reward, "advantage": 0.0, "model": "hand", "finish_reason": "stop"}


# One informative group and one without a preference: the reproduction.
INFORMATIVE = {"question": "What is 2 + 3?", "responses": [response("2 + 3 = 5. The answer is 5.", 1.0), response("The answer is 6.", 0.0), response("It is 5, I think.", 0.5)]}
FLAT = {"question": "Is 7 a prime number?", "responses": [response("Yes, 7 is prime.", 1.0), response("Yes.", 1.0), response("7 is prime: only 1 and 7 divide it.", 1.0)]}
OTHER = {"question": "What is 2 + 3? Answer briefly.", "responses": [response("5.", 1.0), response("6.", 0.2), response("It is 5.", 0.9), response("Seven.", 0.0)]}


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


def tiny_model(smollm2_path, seed: int):
    return tiny_smollm2(smollm2_path, seed)


@pytest.fixture(scope="module")
def model_dirs(smollm2_path, tokenizer, tmp_path_factory):
    """(policy, reference): two different tiny models, so margins are not 0 and the metrics have something to say."""
    dirs = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"tiny-{seed}")
        tiny_model(smollm2_path, seed).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs.append(str(path))
    return dirs


def base_args(tmp_path, **overrides) -> dict:
    args = dict(
        output_dir=str(tmp_path / "out"), max_length=64, report_to=[], use_cpu=True, logging_steps=1, save_strategy="no",
        disable_tqdm=True, seed=0, dataloader_num_workers=0, max_steps=1, optim="sgd", learning_rate=1e-3,
        lr_scheduler_type="constant", max_grad_norm=0.0, beta=0.5, pairing="block",
    )
    args.update(overrides)
    return args


def one_step(model_dirs, release: list[dict], tmp_path, **overrides):
    tok = AutoTokenizer.from_pretrained(model_dirs[0])
    model = AutoModelForCausalLM.from_pretrained(model_dirs[0], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(model_dirs[1], dtype=torch.float32)
    capture = GradCapture()
    trainer = GDPOTrainer(model, GDPOConfig(**base_args(tmp_path, **overrides)), train_dataset=Dataset.from_list(release), processing_class=tok, ref_model=ref, callbacks=[capture])
    trainer.train()
    return capture.grads, trainer.state.log_history[0]


def assert_same_grads(a: dict, b: dict, rel: float = 1e-5):
    """Every parameter's gradient equal up to float32 summation order (relative to the tensor's norm)."""
    assert a.keys() == b.keys() and a
    assert sum(g.norm() for g in a.values()) > 0
    for name in a:
        assert (b[name] - a[name]).norm() <= rel * a[name].norm() + 1e-12, (name, (b[name] - a[name]).norm() / a[name].norm())


# ---- 1. the gradient does not depend on how the step is split ---------------------------------------------------


@pytest.mark.parametrize("loss", ["gdpo", "listwise", "dpo", "sft"])
def test_batch_size_and_accumulation_give_the_same_step(model_dirs, tmp_path, loss):
    """Two informative groups and a flat one in one optimizer step, split 3 × 1, 1 × 3 and 2 × 2 (batch × accumulation):
    the same gradient and logged loss. (Before: a mean per micro-batch, divided by the accumulation steps.)"""
    release = [INFORMATIVE, FLAT, OTHER]
    whole, log_whole = one_step(model_dirs, release, tmp_path, loss=loss, per_device_train_batch_size=3, gradient_accumulation_steps=1)
    for batch, accumulation in ((1, 3), (2, 2)):
        split, log_split = one_step(model_dirs, release, tmp_path, loss=loss, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
        assert_same_grads(whole, split)
        assert log_split["loss"] == pytest.approx(log_whole["loss"], rel=1e-5)
    if loss != "sft":
        # The step is the mean of the informative groups' losses: the flat group neither adds to it nor dilutes it.
        only, log_only = one_step(model_dirs, [INFORMATIVE, OTHER], tmp_path, loss=loss, per_device_train_batch_size=2)
        assert_same_grads(only, whole)
        assert log_only["loss"] == pytest.approx(log_whole["loss"], rel=1e-5)
        # Metrics are pooled over micro-batches: the flat micro-batch does not pull them toward 0.
        for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "logps/rejected"):
            assert log_split[key] == pytest.approx(log_only[key], rel=1e-5, abs=1e-7), key
        assert log_split["frac_reward_zero_std"] == pytest.approx(1 / 3) and log_split["counted_groups"] == 2


@pytest.mark.slow
def test_two_ranks_give_the_same_step(model_dirs, tmp_path):
    """Two CPU processes (torchrun, gloo), two groups each: the synchronized gradient equals one process with all four
    groups in one batch, and the logged metrics are gathered from both ranks."""
    release = [INFORMATIVE, FLAT, OTHER, dict(FLAT, question="Is 9 prime?")]
    # DDP-wrapped models take the full-sequence path (gdpo.logps): compare with the same path in one process.
    local, log_local = one_step(model_dirs, release, tmp_path, per_device_train_batch_size=4, shared_prompt=False)
    out = tmp_path / "ddp.pt"
    spec = {
        "model": model_dirs[0], "ref_model": model_dirs[1], "out": str(out), "release": release,
        "args": base_args(tmp_path / "ddp", per_device_train_batch_size=2, shared_prompt=False),
    }
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "gdpo_ddp_worker.py"), str(spec_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = torch.load(out)
    assert result["world"] == 2
    assert_same_grads(local, result["grads"])
    ddp_log = result["log"][0]
    assert ddp_log["loss"] == pytest.approx(log_local["loss"], rel=1e-5)
    assert ddp_log["counted_groups"] == log_local["counted_groups"] == 2
    assert ddp_log["frac_reward_zero_std"] == log_local["frac_reward_zero_std"] == 0.5
    for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "logps/rejected"):
        assert ddp_log[key] == pytest.approx(log_local[key], rel=1e-5, abs=1e-7), key


def test_eval_loss_and_metrics_are_pooled_over_the_set(model_dirs, tmp_path):
    """Eval batches of 1 over [informative, flat] give the same eval loss and metrics as one batch of 2, and they are
    the informative group's own (the flat batch logs nothing instead of 0)."""
    tok = AutoTokenizer.from_pretrained(model_dirs[0])
    results = []
    for batch in (1, 2):
        model = AutoModelForCausalLM.from_pretrained(model_dirs[0], dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(model_dirs[1], dtype=torch.float32)
        release = Dataset.from_list([INFORMATIVE, FLAT])
        trainer = GDPOTrainer(model, GDPOConfig(**base_args(tmp_path, per_device_eval_batch_size=batch)), eval_dataset=release, processing_class=tok, ref_model=ref)
        results.append(trainer.evaluate())
    one, two = results
    for key in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen", "eval_logps/chosen"):
        assert one[key] == pytest.approx(two[key], rel=1e-5), key
    assert one["eval_counted_groups"] == 1 and one["eval_frac_reward_zero_std"] == 0.5

    # By hand: the informative group's loss and margins from its log-probs.
    groups, _ = tokenize_groups(Dataset.from_list([INFORMATIVE]), tok, max_length=64, tie_seed=0)
    batch = GroupCollator(tok.pad_token_id)([groups[0]])
    with torch.no_grad():
        pol = trainer._logps(trainer.model.eval(), batch, False)[0]
        refl = trainer._logps(trainer.ref_model, batch, False)[0]
    a = trainer.args  # the resolved recipe (paper by default)
    loss, sums = gdpo_loss(pol[None], refl[None], batch["rewards"], beta=0.5, tie_keys=batch["tie_keys"], pairing=a.pairing,
                           weighting=a.weighting, link=a.link, group_normalization=a.group_normalization)
    assert one["eval_loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert one["eval_rewards/margins"] == pytest.approx(summarize(sums)["rewards/margins"], rel=1e-5)


# ---- 3. a stale reference is refused ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_reference(model_dirs, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_dirs[0], dtype=torch.float32)
    release = Dataset.from_list([INFORMATIVE, FLAT, dict(INFORMATIVE, question="What is 3 + 2?")])
    stored, report = add_ref_logps(release, model, tokenizer, max_length=64, batch_size=2, progress=False)
    return stored


def trainer_on(model_dirs, tokenizer, data: Dataset, tmp_path, model=None, **overrides):
    model = model or AutoModelForCausalLM.from_pretrained(model_dirs[0], dtype=torch.float32)
    return GDPOTrainer(model, GDPOConfig(**base_args(tmp_path, **overrides)), train_dataset=data, processing_class=tokenizer)


def test_fresh_reference_is_accepted(model_dirs, tokenizer, stored_reference, tmp_path):
    trainer = trainer_on(model_dirs, tokenizer, stored_reference, tmp_path)
    assert trainer.ref_model is None
    fp = json.loads(stored_reference["ref_logps_fingerprint"][0])
    assert fp["version"] == 2 and fp["dtype"] == "float32" and fp["autocast"] == "none"
    assert set(fp["data"]) == {"prompt", "responses", "rewards"} and fp["data"]["rewards"] == {"0": 1.0, "1": 0.0, "2": 0.5}


def test_edited_text_or_swapped_rewards_are_refused_naming_rows(model_dirs, tokenizer, stored_reference, tmp_path):
    rows = stored_reference.to_list()
    rows[0]["responses"][1]["text"] = "The answer is 7."  # edited text
    rows[2]["responses"][0]["reward"], rows[2]["responses"][1]["reward"] = 0.0, 1.0  # swapped rewards
    with pytest.raises(UserError) as err:
        trainer_on(model_dirs, tokenizer, Dataset.from_list(rows), tmp_path)
    message = str(err.value)
    assert "stale for 2 of 3 groups" in message
    assert "row 0: tokens of responses [1] differ" in message
    assert "row 2: rewards of responses [0] 1.0 -> 0.0, [1] 0.0 -> 1.0" in message
    assert "gdpo ref-logps" in message
    # Reordered responses (texts and rewards move together) are caught too: the kept responses' tokens moved.
    rows = stored_reference.to_list()
    rows[1]["responses"] = rows[1]["responses"][::-1]
    with pytest.raises(UserError, match=r"row 1: tokens of responses \[0, 2\] differ"):
        trainer_on(model_dirs, tokenizer, Dataset.from_list(rows), tmp_path)
    # A response whose reward became null is no longer trained on: the scored set differs.
    rows = stored_reference.to_list()
    rows[0]["responses"][2]["reward"] = None
    with pytest.raises(UserError, match=r"row 0: scored responses \[0, 1, 2\], now \[0, 1\]"):
        trainer_on(model_dirs, tokenizer, Dataset.from_list(rows), tmp_path)


def test_any_weight_change_is_refused(model_dirs, tokenizer, stored_reference, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(model_dirs[0], dtype=torch.float32)
    before = model_digest(model)
    with torch.no_grad():
        weight = model.model.layers[1].mlp.down_proj.weight
        weight.view(-1)[-1] += 1e-3  # the last value of one tensor: far past any sample of its first values
    assert model_digest(model) != before
    with pytest.raises(UserError, match="model: stored"):
        trainer_on(model_dirs, tokenizer, stored_reference, tmp_path, model=model)


def test_autocast_and_dtype_mismatch_are_refused(model_dirs, tokenizer, stored_reference, tmp_path):
    with pytest.raises(UserError, match="autocast: stored 'none', now 'bfloat16'"):
        trainer_on(model_dirs, tokenizer, stored_reference, tmp_path, bf16=True)
    bf16_model = AutoModelForCausalLM.from_pretrained(model_dirs[0], dtype=torch.bfloat16)
    with pytest.raises(UserError, match="dtype: stored 'float32', now 'bfloat16'"):
        trainer_on(model_dirs, tokenizer, stored_reference, tmp_path, model=bf16_model)


def test_accelerate_mixed_precision_is_what_counts(model_dirs, tokenizer, stored_reference, tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision bf16` (ACCELERATE_MIXED_PRECISION) runs the forward in bf16 even without
    --bf16: the trainer follows the accelerator, so the float32 reference is refused instead of silently used."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(UserError, match="autocast: stored 'none', now 'bfloat16'"):
        trainer_on(model_dirs, tokenizer, stored_reference, tmp_path)
    from gdpo.reference import args_autocast

    assert args_autocast(GDPOConfig(**base_args(tmp_path))) == "bfloat16"
    assert args_autocast(GDPOConfig(**base_args(tmp_path, fp16=False, bf16=True))) == "bfloat16"


def test_old_fingerprint_is_refused(model_dirs, tokenizer, stored_reference, tmp_path):
    old = json.loads(stored_reference["ref_logps_fingerprint"][0])
    for key in ("version", "dtype", "autocast", "data"):
        old.pop(key)
    data = stored_reference.remove_columns("ref_logps_fingerprint").add_column("ref_logps_fingerprint", [json.dumps(old)] * 3)
    with pytest.raises(UserError, match="version"):
        trainer_on(model_dirs, tokenizer, data, tmp_path)


def test_bf16_autocast_reference_matches_the_policy_at_step_0(model_dirs, tokenizer, tmp_path):
    """A reference precomputed under the same bf16 autocast gives log-ratios of float noise at step 0; the float32
    one is off by much more (which is why the fingerprint now records autocast)."""
    model = AutoModelForCausalLM.from_pretrained(model_dirs[0], dtype=torch.float32)
    release = Dataset.from_list([INFORMATIVE])
    stored_bf16, _ = add_ref_logps(release, model, tokenizer, max_length=64, batch_size=1, autocast="bfloat16", progress=False)
    stored_fp32, _ = add_ref_logps(release, model, tokenizer, max_length=64, batch_size=1, progress=False)
    trainer = trainer_on(model_dirs, tokenizer, stored_bf16, tmp_path, model=model, bf16=True)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[0]]))
    trainer.model.eval()
    with torch.no_grad():
        policy = trainer._logps(trainer.model, batch, False)[0].double()
    ref_bf16 = torch.tensor(stored_bf16["ref_logps"][0], dtype=torch.float64)
    ref_fp32 = torch.tensor(stored_fp32["ref_logps"][0], dtype=torch.float64)
    same = (policy - ref_bf16).abs().max().item()
    mixed = (policy - ref_fp32).abs().max().item()
    assert same <= 1e-5 * ref_bf16.abs().max().item() + 1e-6, (same, mixed)
    assert mixed > 10 * max(same, 1e-6), (same, mixed)


# ---- 4. no silent no-op training --------------------------------------------------------------------------------


def test_all_flat_groups_are_refused_unless_allowed(model_dirs, tokenizer, tmp_path):
    flat = Dataset.from_list([FLAT, dict(FLAT, question="Is 9 prime?")])
    with pytest.raises(UserError, match=r"2 of 2 groups \(100%\) have no reward preference.*--allow_zero_variance"):
        trainer_on(model_dirs, tokenizer, flat, tmp_path)
    with pytest.warns(UserWarning, match="2 of 2 groups"):
        trainer = trainer_on(model_dirs, tokenizer, flat, tmp_path, allow_zero_variance=True)
    assert trainer.data_reports["train"]["zero_variance_groups"] == 2
    # SFT trains on the best response whatever the spread: no refusal.
    trainer_on(model_dirs, tokenizer, flat, tmp_path, loss="sft")


def test_mostly_flat_groups_warn(model_dirs, tokenizer, tmp_path):
    data = Dataset.from_list([INFORMATIVE, FLAT, dict(FLAT, question="Is 9 prime?")])
    with pytest.warns(UserWarning, match=r"2 of 3 groups \(67%\) have no reward preference"):
        trainer_on(model_dirs, tokenizer, data, tmp_path)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_reward_is_a_data_error_naming_the_row(model_dirs, tokenizer, tmp_path, bad):
    data = Dataset.from_list([INFORMATIVE, {"question": "Q?", "responses": [response("a", 1.0), response("b", bad)]}])
    with pytest.raises(UserError, match=r"train dataset: row 1, responses\[1\]: reward (nan|inf|-inf) is not a finite number"):
        trainer_on(model_dirs, tokenizer, data, tmp_path)


@pytest.mark.parametrize("bad", ["0.5", True])
def test_non_numeric_reward_is_a_data_error(bad):
    from gdpo.data import check_release

    data = Dataset.from_list([{"question": "Q?", "responses": [response("a", bad), response("b", bad)]}])
    with pytest.raises(UserError, match=r"row 0, responses\[0\]: reward .* is not a finite number"):
        check_release(data)


def test_zero_variance_share_is_printed_by_the_cli(model_dirs, tmp_path):
    from typer.testing import CliRunner

    from gdpo.cli import app

    release = save_stage(Dataset.from_list([INFORMATIVE, FLAT]), tmp_path / "release")
    res = CliRunner().invoke(app, [
        "train", "--model", model_dirs[0], "--data", str(release), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
        "--max_length", "64", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--dtype", "float32",
    ])
    assert res.exit_code == 0, res.output
    assert "2 groups (1 = 50% without a reward preference, skipped)" in res.stderr


# ---- 5. ties do not depend on storage order ---------------------------------------------------------------------


def test_tie_keys_follow_content_and_seed_not_position(tokenizer):
    rows = [{"question": "Pick one.", "responses": [response("first", 1.0), response("second", 1.0), response("third", 0.0), response("fourth", 0.0)]}]
    reordered = [{"question": "Pick one.", "responses": rows[0]["responses"][::-1]}]
    a, _ = tokenize_groups(Dataset.from_list(rows), tokenizer, max_length=64, tie_seed=3)
    b, _ = tokenize_groups(Dataset.from_list(reordered), tokenizer, max_length=64, tie_seed=3)
    assert a["tie_keys"][0] == b["tie_keys"][0][::-1]
    c, _ = tokenize_groups(Dataset.from_list(rows), tokenizer, max_length=64, tie_seed=4)
    assert c["tie_keys"][0] != a["tie_keys"][0]
    # The trainer's loss on either storage order is the same.
    collate = GroupCollator(tokenizer.pad_token_id)
    ba, bb = collate([a[0]]), collate([b[0]])
    ell = torch.tensor([[0.3, -0.1, 0.2, -0.4]])
    for pairing in ("adjacent", "block"):
        la, _ = gdpo_loss(ell, torch.zeros_like(ell), ba["rewards"], beta=1.0, pairing=pairing, tie_keys=ba["tie_keys"])
        lb, _ = gdpo_loss(ell.flip(1), torch.zeros_like(ell), bb["rewards"], beta=1.0, pairing=pairing, tie_keys=bb["tie_keys"])
        assert la.item() == pytest.approx(lb.item(), rel=1e-7)


def test_load_release_rejects_a_nan_reward(tmp_path):
    release = save_stage(Dataset.from_list([INFORMATIVE, {"question": "R", "responses": [response("a", math.nan), response("b", 1.0)]}]), tmp_path / "r")
    with pytest.raises(UserError, match=r"row 1, responses\[0\]: reward nan is not a finite number"):
        load_release(release)
