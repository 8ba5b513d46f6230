"""GDPO data, reference log-probs and trainer on CPU: a tiny model built from SmolLM2's config (real tokenizer,
random weights, 2 layers) where a real checkpoint is not needed, and the real SmolLM2 for the reference check."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset
from gdpo_testing import tiny_smollm2
from transformers import AutoModelForCausalLM, AutoTokenizer

from gdpo.data import GroupCollator, tokenize_groups
from gdpo.logps import sequence_logps
from gdpo.losses import dpo_loss, gdpo_loss
from gdpo.trainer import GDPOConfig, GDPOTrainer, lora_config
from metakl.errors import UserError

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def no_inherited_mixed_precision(monkeypatch):
    """transformers 4.x's TrainingArguments(bf16=True) writes ACCELERATE_MIXED_PRECISION into the process environment
    and later TrainingArguments read it: keep each test's precision its own."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


def make_release(groups: list[tuple[str, list[tuple[str, float]]]]) -> Dataset:
    rows = []
    for question, responses in groups:
        rows.append(
            {
                "question": question,
                "responses": [
                    {"text": t, "reasoning": "", "answer": "", "reward": r, "advantage": 0.0, "model": "hand", "finish_reason": "stop"}
                    for t, r in responses
                ],
            }
        )
    return Dataset.from_list(rows)


SMALL_RELEASE = [
    ("What is 2 + 3?", [("2 + 3 = 5. The answer is 5.", 1.0), ("The answer is 6.", 0.0), ("It is 5.", 1.0), ("I am not sure, maybe 7.", 0.0)]),
    ("Name the capital of France.", [("Paris is the capital of France.", 1.0), ("Lyon.", 0.2), ("The capital is Marseille, I believe.", 0.0), ("Paris.", 0.9)]),
    ("Is 7 a prime number?", [("Yes, 7 is prime.", 1.0), ("No, 7 = 3 * 2.", 0.0), ("Yes.", 0.8)]),
]


@pytest.fixture(scope="session")
def tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


def tiny_model(smollm2_path, seed: int = 0):
    return tiny_smollm2(smollm2_path, seed)


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_path, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-smollm2")
    tiny_model(smollm2_path).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def config(tmp_path, **overrides) -> GDPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_length=64, report_to=[], use_cpu=True,
        logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    base.update(overrides)
    return GDPOConfig(**base)


def test_tokenize_groups_labels_truncation_and_collation(tokenizer):
    release = make_release(SMALL_RELEASE[:2] + [("x " * 80, [("a", 1.0), ("b", 0.0)])])
    rows = release.to_list()
    rows[1]["responses"][1]["reward"] = None  # a failed reward: left out of its group and counted
    release = Dataset.from_list(rows)
    groups, report = tokenize_groups(release, tokenizer, max_length=48)
    assert report["dropped_long_prompts"] == 1 and report["dropped_responses"] == 1
    assert report["groups"] == 2 and report["responses"] == 7
    assert groups["response_index"][1] == [0, 2, 3]

    messages = [{"role": "user", "content": SMALL_RELEASE[0][0]}]
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(groups["prompt_ids"][0]) == prompt_text
    assert tokenizer.decode(groups["response_ids"][0][1]) == "The answer is 6.<|im_end|>\n"
    # A response longer than the room left is cut at the right and counted.
    long_groups, long_report = tokenize_groups(make_release(SMALL_RELEASE[:1]), tokenizer, max_length=len(groups["prompt_ids"][0]) + 4)
    assert long_report["truncated_responses"] == 4
    assert all(len(ids) == 4 for ids in long_groups["response_ids"][0])

    batch = GroupCollator(tokenizer.pad_token_id)([groups[0], groups[1]])
    assert batch["group_mask"].tolist() == [[True] * 4, [True, True, True, False]]
    assert batch["input_ids"].shape[0] == 7
    # Labels only on response tokens: the masked tokens of sequence 5 (group 1, third response) are that response.
    seq = 4 + 1
    picked = batch["input_ids"][seq][batch["response_mask"][seq].bool()].tolist()
    assert picked == groups["response_ids"][1][1]
    assert tokenizer.decode(picked).startswith("The capital is Marseille")
    assert batch["rewards"][1, :3].tolist() == [1.0, 0.0, 0.9]  # float64: ties stay exact


def test_response_formats_keep_the_reasoning_once(tokenizer):
    """The paper trains on reasoning + answer: the default joins a reasoning field or a <think> block of the text into
    one <think> block before the answer; `answer` drops it; `text` is the column as stored."""
    from gdpo.data import response_content

    field = {"text": "The answer is 5.", "reasoning": "2 + 3 = 5"}  # a reasoning server: the trace in its own field
    tagged = {"text": "<think>2 + 3 = 5</think>\nThe answer is 5.", "reasoning": "2 + 3 = 5"}  # tags left in the text
    plain = {"text": "  The answer is 5.\n", "reasoning": ""}
    joined = "<think>\n2 + 3 = 5\n</think>\n\nThe answer is 5."
    assert response_content(field, "reasoning+answer") == joined
    assert response_content(tagged, "reasoning+answer") == joined  # the reasoning once, not field + tags
    assert response_content({**tagged, "reasoning": ""}, "reasoning+answer") == joined  # from the tags alone
    assert response_content(plain, "reasoning+answer") == plain["text"]  # nothing to join: the text unchanged
    assert [response_content(r, "answer") for r in (field, tagged, plain)] == ["The answer is 5.", "The answer is 5.", plain["text"]]
    assert response_content(tagged, "text") == tagged["text"]
    with pytest.raises(UserError, match="response_format 'reasoning\\+text'"):
        response_content(field, "reasoning+text")

    rows = [{"question": "What is 2 + 3?", "responses": [{**field, "answer": "5", "reward": 1.0, "advantage": 0.0,
                                                          "model": "m", "finish_reason": "stop"},
                                                         {**plain, "answer": "5", "reward": 0.0, "advantage": 0.0,
                                                          "model": "m", "finish_reason": "stop"}]}]
    groups, _ = tokenize_groups(Dataset.from_list(rows), tokenizer, max_length=128)  # the default format
    assert tokenizer.decode(groups["response_ids"][0][0]) == joined + "<|im_end|>\n"
    assert GDPOConfig(output_dir="unused", use_cpu=True, report_to=[]).response_format == "reasoning+answer"


def test_chunked_logps_equal_full_logits(smollm2_path, tokenizer):
    model = tiny_model(smollm2_path)
    groups, _ = tokenize_groups(make_release(SMALL_RELEASE), tokenizer, max_length=64)
    batch = GroupCollator(tokenizer.pad_token_id)([groups[i] for i in range(len(groups))])
    args = (model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    chunked, counts = sequence_logps(*args, chunk_size=5)
    full, _ = sequence_logps(*args, chunk_size=0)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    assert counts.tolist() == [len(ids) for g in groups["response_ids"] for ids in g]
    avg, _ = sequence_logps(*args, chunk_size=5, average=True)
    torch.testing.assert_close(avg, chunked / counts, rtol=1e-6, atol=1e-6)


@pytest.mark.train
def test_g2_matches_trl_dpo_sigmoid_loss(smollm2_path, tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    policy, ref = tiny_model(smollm2_path, seed=0), tiny_model(smollm2_path, seed=1)
    pairs = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": rs[0][0]}], "rejected": [{"role": "assistant", "content": rs[1][0]}]}
            for q, rs in SMALL_RELEASE
        ]
    )
    args = DPOConfig(output_dir=str(tmp_path), beta=0.1, loss_type=["sigmoid"], per_device_train_batch_size=3, report_to=[], use_cpu=True, max_length=128, bf16=False)
    trl = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=pairs, processing_class=tokenizer)
    batch = next(iter(trl.get_train_dataloader()))
    trl_loss = trl.compute_loss(trl.model, batch).item()

    with torch.no_grad():  # the same log-probs, from our log-prob code on TRL's own token batch
        pol, _ = sequence_logps(policy, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        rl, _ = sequence_logps(ref, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    (pc, pr), (rc, rr) = pol.chunk(2), rl.chunk(2)
    ours, _ = gdpo_loss(torch.stack([pc, pr], 1), torch.stack([rc, rr], 1), torch.tensor([[1.0, 0.0]] * 3), beta=0.1, weighting="none", link="logsigmoid")
    dpo, _ = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert abs(trl_loss - math.log(2)) > 1e-3  # different policy and reference: not the trivial log 2
    assert ours.item() == pytest.approx(trl_loss, abs=1e-5)
    assert dpo.item() == pytest.approx(trl_loss, abs=1e-5)


def _logratios(trainer: GDPOTrainer, with_ref: bool = False):
    """ℓ = log π − log π_ref for every response, group by group, with the trained model (and log π_ref)."""
    model = trainer.model.eval()
    out, refs = [], []
    for i in range(len(trainer.train_dataset)):
        batch = trainer.data_collator([trainer.train_dataset[i]])
        with torch.no_grad():
            pol, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        ref = trainer.reference_logps(model, batch)
        out.append((pol - ref).tolist())
        refs.append(ref.tolist())
    return (out, refs) if with_ref else out


@pytest.mark.slow
def test_training_lowers_loss_and_orders_logratios(smollm2_path, tokenizer, tmp_path):
    release = make_release(SMALL_RELEASE)
    args = config(tmp_path, max_steps=20, learning_rate=2e-3, beta=0.5, pairing="block", weighting="minmax", rpo_alpha=0.0, per_device_train_batch_size=3, warmup_steps=0, lr_scheduler_type="constant")
    trainer = GDPOTrainer(tiny_model(smollm2_path), args, train_dataset=release, processing_class=tokenizer)
    # Policy == reference before training: the log-ratios are float32 summation noise (two code paths, other padding),
    # which grows with the summed log-prob (7.6e-6 on ~30 nats was seen on an AVX2-only CPU): relative tolerance.
    ell, ref = _logratios(trainer, with_ref=True)
    assert all(abs(x) <= 1e-5 * abs(r) + 1e-6 for gl, gr in zip(ell, ref) for x, r in zip(gl, gr)), (ell, ref)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 20
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.05, (logs[0], logs[-1])
    assert logs[-1]["rewards/accuracies"] > logs[0]["rewards/accuracies"]
    assert logs[-1]["rewards/chosen"] > 0 > logs[-1]["rewards/rejected"]
    assert {"rewards/margins", "logps/chosen", "logps/rejected", "counted_pairs", "frac_reward_zero_std"} <= set(logs[0])

    ell = _logratios(trainer)
    rewards = trainer.train_dataset["rewards"]
    for g, (ratios, rs) in enumerate(zip(ell, rewards)):
        best, worst = rs.index(max(rs)), rs.index(min(rs))
        assert ratios[best] > 0 > ratios[worst], (g, ratios, rs)
    # Across every strictly ordered pair the log-ratios follow the rewards' order in most cases.
    pairs = [(r[i] > r[j]) == (l[i] > l[j]) for r, l in zip(rewards, ell) for i in range(len(r)) for j in range(len(r)) if r[i] != r[j]]
    assert sum(pairs) / len(pairs) >= 0.75


@pytest.mark.train
def test_lora_changes_only_adapter_weights(smollm2_path, tokenizer, tmp_path):
    model = tiny_model(smollm2_path)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    args = config(tmp_path, max_steps=3, learning_rate=1e-2, per_device_train_batch_size=3)
    trainer = GDPOTrainer(model, args, train_dataset=make_release(SMALL_RELEASE), processing_class=tokenizer, peft_config=lora_config(4, target_modules=["q_proj", "v_proj"]))
    assert trainer.ref_model is None  # the reference is the base model with adapters disabled
    trainer.train()
    after = trainer.model.state_dict()
    lora = {k: v for k, v in after.items() if "lora_" in k}
    assert lora and any(k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in lora.items())
    changed = {k for k, v in after.items() if "lora_" not in k and not torch.equal(v, before[k.replace("base_model.model.", "").replace(".base_layer", "")])}
    assert changed == set()
    assert trainer.state.log_history[0]["counted_pairs"] > 0


@pytest.mark.slow
def test_precomputed_reference_equals_on_the_fly_real_smollm2(smollm2_path, tokenizer, tmp_path):
    from gdpo.reference import add_ref_logps

    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    release = make_release(SMALL_RELEASE)
    stored, report = add_ref_logps(release, model, tokenizer, max_length=64, batch_size=3, progress=False)
    assert report["groups"] == 3
    fp = json.loads(stored["ref_logps_fingerprint"][0])
    assert set(fp) >= {"model", "tokenizer", "template", "max_length"} and fp["max_length"] == 64

    # On the fly: a frozen copy of the same model, one group per batch (other padding than the precompute).
    trainer = GDPOTrainer(model, config(tmp_path, per_device_train_batch_size=1), train_dataset=release, processing_class=tokenizer)
    assert trainer.ref_model is not None
    for i in range(len(trainer.train_dataset)):
        batch = trainer.data_collator([trainer.train_dataset[i]])
        on_the_fly = trainer.reference_logps(trainer.model, batch)
        torch.testing.assert_close(on_the_fly.double(), torch.tensor(stored["ref_logps"][i], dtype=torch.float64), rtol=1e-5, atol=1e-5)

    # Training on the stored column needs no reference model and reads the stored values.
    pre = GDPOTrainer(model, config(tmp_path), train_dataset=stored, processing_class=tokenizer)
    assert pre.ref_model is None
    assert pre.train_dataset["ref_logps"][0] == pytest.approx(stored["ref_logps"][0])

    # A different max_length, template or model is refused with a message naming what differs.
    with pytest.raises(UserError, match="max_length: stored 64, now 80"):
        GDPOTrainer(model, config(tmp_path, max_length=80), train_dataset=stored, processing_class=tokenizer)
    with pytest.raises(UserError, match="template"):
        GDPOTrainer(model, config(tmp_path, system_prompt="Be brief."), train_dataset=stored, processing_class=tokenizer)
    with pytest.raises(UserError, match="model: stored"):
        GDPOTrainer(tiny_model(smollm2_path), config(tmp_path), train_dataset=stored, processing_class=tokenizer)


@pytest.mark.train
def test_dpo_and_sft_losses_train(smollm2_path, tokenizer, tmp_path):
    for loss in ("dpo", "sft"):
        args = config(tmp_path, max_steps=2, learning_rate=1e-3, loss=loss, per_device_train_batch_size=3)
        trainer = GDPOTrainer(tiny_model(smollm2_path), args, train_dataset=make_release(SMALL_RELEASE), processing_class=tokenizer)
        assert (trainer.ref_model is None) == (loss == "sft")
        trainer.train()
        first = trainer.state.log_history[0]
        assert math.isfinite(first["loss"])
        if loss == "sft":
            assert first["selected_responses"] == 3  # the best response of each group
            assert first["loss"] > 5  # NLL per token of a random 2-layer model on real text
        else:
            assert first["counted_pairs"] == 3 and first["loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_config_rejects_unknown_choices(tmp_path):
    with pytest.raises(UserError, match="pairing"):
        config(tmp_path, pairing="cyclic")
    with pytest.raises(UserError, match="weighting"):
        config(tmp_path, weighting="inverse")


@pytest.mark.train
def test_evaluate_reports_loss_and_pair_metrics(smollm2_path, tokenizer, tmp_path):
    release = make_release(SMALL_RELEASE)
    trainer = GDPOTrainer(tiny_model(smollm2_path), config(tmp_path, per_device_eval_batch_size=2), train_dataset=release, eval_dataset=release, processing_class=tokenizer)
    metrics = trainer.evaluate()
    # Before any step the policy equals the reference: every margin is 0, so each pair's -σ(0) = -0.5. The paper's
    # ÷ (G−1) per group (the default recipe): group 1 has rewards 1, 0, 1, 0 -> 2 block pairs / 3, groups 2 and 3 have
    # distinct rewards -> G−1 pairs / (G−1); the mean over the 3 groups is (-1/3 - 1/2 - 1/2) / 3 = -4/9.
    assert metrics["eval_loss"] == pytest.approx(-4 / 9, abs=1e-5)
    assert metrics["eval_counted_pairs"] > 0 and metrics["eval_rewards/accuracies"] == 0.0


@pytest.mark.train
def test_rpo_alpha_adds_the_best_responses_nll(smollm2_path, tokenizer, tmp_path):
    """At step 0 the policy is the reference, so GDPO's loss is -4/9 here; rpo_alpha adds alpha x the logged nll_loss,
    which is the token-mean NLL of each group's best response (a random model: several nats)."""
    release = make_release(SMALL_RELEASE)
    logs = {}
    for alpha in (0.0, 0.5):
        args = config(tmp_path, max_steps=1, learning_rate=1e-3, per_device_train_batch_size=3, rpo_alpha=alpha)
        trainer = GDPOTrainer(tiny_model(smollm2_path), args, train_dataset=release, processing_class=tokenizer)
        trainer.train()
        logs[alpha] = trainer.state.log_history[0]
    assert "nll_loss" not in logs[0.0] and logs[0.0]["loss"] == pytest.approx(-4 / 9, abs=1e-4)  # see test_evaluate_...
    nll = logs[0.5]["nll_loss"]
    assert nll > 5
    assert logs[0.5]["loss"] == pytest.approx(-4 / 9 + 0.5 * nll, rel=1e-3)
    with pytest.raises(UserError, match="rpo_alpha"):
        config(tmp_path, loss="sft", rpo_alpha=1.0)
    # defaults: the paper recipe (no NLL term, minmax weights); the low-drift recipe turns the term on for gdpo only
    assert config(tmp_path).rpo_alpha == 0.0 and config(tmp_path).weighting == "minmax"
    assert config(tmp_path, recipe="low-drift").rpo_alpha == 1.0 and config(tmp_path, recipe="low-drift").weighting == "none"
    assert [config(tmp_path, recipe="low-drift", loss=loss).rpo_alpha for loss in ("listwise", "dpo", "sft")] == [0.0, 0.0, 0.0]
