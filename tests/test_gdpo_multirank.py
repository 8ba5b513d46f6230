"""Issue 21, multi-rank on this machine: `accelerate launch --num_processes 2 --multi_gpu` runs GDPO training on two
CPU ranks (gloo, DDP; `--cpu` would start one process only, see two_ranks). Each run matches one process on the same
groups (the 2-rank gradient and update equal the 1-rank ones), logs metrics gathered over both ranks, and accepts a
reference precomputed in one process on both ranks, also when rank 1 loaded placeholder weights as under FSDP's
cpu_ram_efficient_loading (defect 3: a per-rank fingerprint refused the column there). accelerate's FSDP plugin needs
GPUs (MULTI_CPU is never FSDP, FSDP1's sync_module_states refuses CPU): sharded parameters are tested with torch's
FSDP2 `fully_shard` on 2 CPU ranks in test_fsdp2_sharded_fingerprint_step0_and_gradient. A tiny model of
SmolLM2's family (2 layers, random weights, SmolLM2's tokenizer) keeps each run well under 2 minutes on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from gdpo_testing import GradCapture, save_tiny_smollm2
from transformers import AutoModelForCausalLM, AutoTokenizer

from gdpo.reference import add_ref_logps
from gdpo.trainer import GDPOConfig, GDPOTrainer

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def response(text: str, reward: float) -> dict:
    return {"text": text, "reasoning": "", "answer": "", "reward": reward, "advantage": 0.0, "model": "hand", "finish_reason": "stop"}


# Four groups, one flat (no preference): two per rank.
RELEASE = [
    {"question": "What is 2 + 3?", "responses": [response("2 + 3 = 5. The answer is 5.", 1.0), response("The answer is 6.", 0.0), response("It is 5, I think.", 0.5)]},
    {"question": "Is 7 a prime number?", "responses": [response("Yes, 7 is prime.", 1.0), response("Yes.", 1.0), response("7 is prime: only 1 and 7 divide it.", 1.0)]},
    {"question": "What is 2 + 3? Answer briefly.", "responses": [response("5.", 1.0), response("6.", 0.2), response("It is 5.", 0.9), response("Seven.", 0.0)]},
    {"question": "What is 4 * 4?", "responses": [response("16.", 1.0), response("8.", 0.0), response("4 * 4 = 16.", 0.9)]},
]
LR = 0.5  # SGD: the update is -LR × gradient, large enough that float32 rounding of the weights does not hide it


@pytest.fixture(scope="module")
def tiny_dirs(smollm2_path, tmp_path_factory):
    """(policy, reference): two tiny models of SmolLM2's family with different random weights."""
    return [str(save_tiny_smollm2(smollm2_path, tmp_path_factory.mktemp(f"tiny-{seed}"), seed)) for seed in (0, 1)]


@pytest.fixture(scope="module")
def precomputed(tiny_dirs, tmp_path_factory):
    """The release with reference log-probs of the policy model, computed in one process (as `gdpo ref-logps` would)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[0], dtype=torch.float32)
    stored, _ = add_ref_logps(Dataset.from_list(RELEASE), model, AutoTokenizer.from_pretrained(tiny_dirs[0]), max_length=64,
                              batch_size=4, progress=False)
    path = tmp_path_factory.mktemp("release") / "data"
    stored.save_to_disk(str(path))
    return str(path), stored


def train_args(out: Path, **overrides) -> dict:
    args = dict(
        output_dir=str(out), max_length=64, report_to=[], use_cpu=True, logging_steps=1, save_strategy="no", disable_tqdm=True,
        seed=0, dataloader_num_workers=0, max_steps=1, optim="sgd", learning_rate=LR, lr_scheduler_type="constant",
        max_grad_norm=0.0, loss="gdpo", beta=0.5, pairing="block", weighting="minmax", link="sigmoid", rpo_alpha=0.5,
        shared_prompt=False,  # wrapped models take the full-sequence path: the same path in one process
    )
    args.update(overrides)
    return args


def one_process(tiny_dirs, data: Dataset, out: Path, ref: bool):
    """The same step in one process, all four groups in one micro-batch: (grads, full weights after, first log)."""
    tok = AutoTokenizer.from_pretrained(tiny_dirs[0])
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[0], dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(tiny_dirs[1], dtype=torch.float32) if ref else None
    capture = GradCapture()
    trainer = GDPOTrainer(model, GDPOConfig(**train_args(out, per_device_train_batch_size=4)), train_dataset=data,
                          processing_class=tok, ref_model=ref_model, callbacks=[capture])
    trainer.train()
    return capture.grads, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, trainer.state.log_history[0], trainer._ref_fingerprint




def two_ranks(tmp_path: Path, spec: dict) -> dict:
    """Run tests/gdpo_ddp_worker.py on 2 CPU ranks (DDP over gloo); rank 0's result."""
    spec = dict(spec, out=str(tmp_path / "result.pt"))
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "ACCELERATE_CONFIG_FILE": str(tmp_path / "no-accelerate-config.yaml")}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    # `accelerate launch --cpu` runs ONE process whatever --num_processes says (accelerate's simple launcher): --multi_gpu
    # starts 2 processes with torchrun, and on a machine without CUDA (or with use_cpu, as here) the Accelerator runs
    # them on the CPU over gloo (MULTI_CPU, DDP).
    cmd = [*launcher, "--num_processes", "2", "--num_machines", "1", "--multi_gpu", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "0", str(ROOT / "tests" / "gdpo_ddp_worker.py"), str(spec_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return torch.load(spec["out"])


def assert_close(a: torch.Tensor, b: torch.Tensor, name: str, rel: float = 1e-5):
    assert a.shape == b.shape, name
    assert (a - b).norm() <= rel * b.norm() + 1e-12, (name, ((a - b).norm() / b.norm()).item())


def check_same_step(result: dict, grads: dict, weights_after: dict, log: dict, weights_before: dict):
    assert result["world"] == 2
    # The update: full weights after one SGD step on 2 ranks vs 1 process, compared as the step itself
    # (after − before = −LR × gradient), relative to each tensor's update; works for FSDP's sharded parameters.
    moved = 0
    for name, before in weights_before.items():
        if name not in grads:  # buffers, tied copies
            continue
        one, two = weights_after[name] - before, result["weights"][name] - before
        assert_close(two, one, name, rel=1e-4)
        assert_close(-one / LR, grads[name], name, rel=1e-3)  # the 1-process step is the gradient it captured
        moved += bool(one.abs().max() > 0)
    assert moved >= len(grads) - 1  # every parameter with a gradient moves (the tied head shares the embedding's)
    two_log = result["log"][0]
    assert two_log["loss"] == pytest.approx(log["loss"], rel=1e-5)
    # Metrics pooled over both ranks: counts are totals over the 4 groups, means are the 1-process means.
    assert two_log["counted_groups"] == log["counted_groups"] == 3 and two_log["counted_pairs"] == log["counted_pairs"]
    assert two_log["frac_reward_zero_std"] == log["frac_reward_zero_std"] == 0.25
    assert two_log["response_tokens"] == log["response_tokens"]
    for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen", "nll_loss"):
        assert two_log[key] == pytest.approx(log[key], rel=1e-5, abs=1e-7), key


def test_two_ranks_with_a_reference_model_match_one_process(tiny_dirs, tmp_path):
    """A separate reference model (a copy on each rank): the synchronized gradient, the update and the pooled metrics
    equal one process with the four groups in one batch."""
    grads, after, log, _ = one_process(tiny_dirs, Dataset.from_list(RELEASE), tmp_path / "one", ref=True)
    before = AutoModelForCausalLM.from_pretrained(tiny_dirs[0], dtype=torch.float32).state_dict()
    result = two_ranks(tmp_path, {"model": tiny_dirs[0], "ref_model": tiny_dirs[1], "release": RELEASE,
                                  "args": train_args(tmp_path / "two", per_device_train_batch_size=2)})
    for name, g in grads.items():
        assert_close(result["grads"][name], g, name)
    check_same_step(result, grads, after, log, before)


@pytest.mark.parametrize("placeholders", [False, True], ids=["loaded", "rank1-placeholders"])
def test_two_ranks_accept_a_precomputed_reference_and_match_one_process(tiny_dirs, precomputed, tmp_path, placeholders):
    """The column computed in one process is accepted by both ranks (the same fingerprint on both, equal to the
    one-process one) and passes the step-0 check on both; the update equals the one-process update with that column.
    rank1-placeholders: rank 1 loaded zeros (FSDP-style efficient loading), yet its fingerprint is rank 0's full weights
    (b795326 hashed rank 1's zeros and refused the column there)."""
    path, stored = precomputed
    grads, after, log, fp_one = one_process(tiny_dirs, stored, tmp_path / "one", ref=False)
    before = AutoModelForCausalLM.from_pretrained(tiny_dirs[0], dtype=torch.float32).state_dict()
    result = two_ranks(tmp_path, {"model": tiny_dirs[0], "release_path": path, "placeholders": placeholders,
                                  "args": train_args(tmp_path / "two", per_device_train_batch_size=2)})
    assert (result["loaded"][0] != result["loaded"][1]) == placeholders  # rank 1 really held other weights
    fps = [json.loads(f) for f in result["fingerprints"]]
    assert len(fps) == 2 and fps[0] == fps[1] == fp_one
    assert fp_one["model"] == json.loads(stored["ref_logps_fingerprint"][0])["model"] == result["loaded"][0]
    for name, g in grads.items():
        assert_close(result["grads"][name], g, name)
    check_same_step(result, grads, after, log, before)


def test_two_ranks_refuse_a_perturbed_precomputed_reference(tiny_dirs, precomputed, tmp_path):
    """A column whose numbers are off by 2 nats on one response per row (fingerprint intact) is refused by the step-0
    check on both ranks, with one line naming the rows of both ranks' first micro-batches (gathered); the launch fails instead of
    a rank hanging in a collective."""
    _, stored = precomputed
    rows = stored.to_list()
    for row in rows:
        row["ref_logps"][0] -= 2.0
    path = tmp_path / "perturbed"
    Dataset.from_list(rows).save_to_disk(str(path))
    spec = {"model": tiny_dirs[0], "release_path": str(path), "args": train_args(tmp_path / "two", per_device_train_batch_size=2)}
    with pytest.raises(AssertionError) as err:
        two_ranks(tmp_path, spec)
    lines = [line for line in str(err.value).splitlines() if "disagree with the reference model at step 0" in line]
    assert len(lines) >= 2, str(err.value)[-3000:]  # both ranks say so
    # gathered over both ranks: all 4 groups (2 per rank), 13 responses, one perturbed in each group
    assert all("for rows [0, 1, 2, 3] (4 of 13 responses checked" in line for line in lines), lines


def test_fsdp2_sharded_fingerprint_step0_and_gradient(tiny_dirs, precomputed, tmp_path):
    """torch FSDP2 on 2 CPU ranks (`fully_shard`, gloo): every parameter is a DTensor holding half of its rows, yet
    the fingerprint is the full weights' one on both ranks (equal to the column's, computed in one process; b795326
    hashed each rank's shard), the column passes the step-0 check on both ranks' groups, and the GDPO gradient of the
    two ranks' groups, reduced by FSDP, equals one process's on all four groups."""
    from gdpo.data import GroupCollator, tokenize_groups
    from gdpo.logps import batch_logps
    from gdpo.losses import gdpo_loss

    path, stored = precomputed
    loss_args = dict(beta=0.5, pairing="block", weighting="minmax", link="sigmoid")
    spec = {"model": tiny_dirs[0], "release_path": path, "loss": loss_args, "out": str(tmp_path / "fsdp2.pt")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "gdpo_fsdp2_worker.py"), str(tmp_path / "spec.json")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = torch.load(spec["out"])
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[0], dtype=torch.float32)
    full_rows = sum(p.shape[0] for p in model.parameters())
    assert result["sharded"] == [True, True] and all(r < full_rows for r in result["local_rows"])  # really sharded
    stored_fp = json.loads(stored["ref_logps_fingerprint"][0])["model"]
    assert result["digests"] == [stored_fp, stored_fp]
    assert result["bad"] == [] and sum(result["checked"]) == 13

    # One process, all four groups in one batch.
    tok = AutoTokenizer.from_pretrained(tiny_dirs[0])
    groups, _ = tokenize_groups(stored, tok, max_length=64)
    batch = GroupCollator(tok.pad_token_id)([groups[i] for i in range(len(groups))])
    flat, _ = batch_logps(model, batch, shared_prompt=False)
    mask = batch["group_mask"]
    policy = torch.zeros(mask.shape, dtype=flat.dtype).masked_scatter(mask, flat)
    loss, _ = gdpo_loss(policy, batch["ref_logps"].to(policy.dtype), batch["rewards"], mask=mask, tie_keys=batch["tie_keys"], **loss_args)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads.keys() == result["grads"].keys()
    for name, g in grads.items():
        assert_close(result["grads"][name], g, name)
