"""The shared-prompt log-prob path (each prompt run once per group, its KV cache expanded to the group's responses)
against the full-sequence path: the real SmolLM2 for the values, a tiny model built from its config for gradients.

Both paths attend to the same keys at the same positions; they differ only in float summation order (other matmul
shapes), which in float32 moves a sequence log-prob of a few tens of nats by ~1e-5."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from gdpo_testing import tiny_smollm2
from transformers import AutoModelForCausalLM, AutoTokenizer

from gdpo.data import GroupCollator, tokenize_groups
from gdpo.logps import batch_logps, sequence_logps, shared_prompt_logps, shared_prompt_supported
from gdpo.losses import gdpo_loss

torch.set_num_threads(2)

# Prompts of different lengths, groups of sizes 4, 2 and 3 (so the batch's group_mask has holes).
GROUPS = [
    ("What is 2 + 3? Explain the addition step by step, please.", [("2 + 3 = 5. The answer is 5.", 1.0), ("The answer is 6.", 0.0), ("It is 5.", 1.0), ("I am not sure, maybe 7 or 8, it depends.", 0.0)]),
    ("Name the capital of France.", [("Paris is the capital of France.", 1.0), ("Lyon.", 0.2)]),
    ("Is 7 prime?", [("Yes, 7 is prime.", 1.0), ("No, 7 = 3 * 2.", 0.0), ("Yes.", 0.8)]),
]


def release() -> Dataset:
    return Dataset.from_list(
        [
            {"question": q, "responses": [{"text": t, "reasoning": "", "answer": "", "reward": r, "advantage": 0.0, "model": "hand", "finish_reason": "stop"} for t, r in rs]}
            for q, rs in GROUPS
        ]
    )


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="module")
def batch(tokenizer):
    groups, _ = tokenize_groups(release(), tokenizer, max_length=64)
    out = GroupCollator(tokenizer.pad_token_id)([groups[i] for i in range(len(groups))])
    assert out["group_mask"].sum(dim=1).tolist() == [4, 2, 3]
    lengths = out["prompt_attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) == 3  # three different prompt lengths in one batch
    return out


def right_padded_prompts(batch):
    """The same prompts moved to right padding."""
    ids, mask = batch["prompt_input_ids"].clone(), batch["prompt_attention_mask"].clone()
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        ids[b] = torch.cat([ids[b, -n:], ids[b, :-n]]) if n < ids.shape[1] else ids[b]
        mask[b] = torch.cat([mask[b, -n:], mask[b, :-n]]) if n < ids.shape[1] else mask[b]
    return ids, mask


def full_path(model, batch, average=False):
    return sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], average=average)


def shared_path(model, batch, prompt_ids=None, prompt_mask=None, average=False):
    group_index = batch["group_mask"].nonzero()[:, 0]
    return shared_prompt_logps(
        model,
        batch["prompt_input_ids"] if prompt_ids is None else prompt_ids,
        batch["prompt_attention_mask"] if prompt_mask is None else prompt_mask,
        batch["response_input_ids"],
        batch["response_attention_mask"],
        group_index,
        average=average,
    )


def test_collator_split_holds_the_same_tokens(batch):
    group_index = batch["group_mask"].nonzero()[:, 0]
    for n in range(batch["input_ids"].shape[0]):
        full = batch["input_ids"][n][batch["attention_mask"][n].bool()].tolist()
        b = int(group_index[n])
        prompt = batch["prompt_input_ids"][b][batch["prompt_attention_mask"][b].bool()].tolist()
        response = batch["response_input_ids"][n][batch["response_attention_mask"][n].bool()].tolist()
        assert full == prompt + response
        assert int(batch["response_mask"][n].sum()) == len(response)


def test_shared_prompt_logps_equal_full_sequences_on_smollm2(smollm2_path, batch, monkeypatch):
    import gdpo.logps

    calls = []
    real = gdpo.logps.shared_prompt_logps
    monkeypatch.setattr(gdpo.logps, "shared_prompt_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    assert shared_prompt_supported(model)
    with torch.no_grad():
        expected, expected_counts = batch_logps(model, batch, shared_prompt=False)  # the full-sequence path
        assert calls == []
        left, left_counts = batch_logps(model, batch)  # the default: shared prompt, collator's left padding
        assert calls == [1]
        right, _ = shared_path(model, batch, *right_padded_prompts(batch))
    assert torch.equal(left_counts, expected_counts)
    assert expected.abs().min() > 1.0  # real, non-trivial log-probs
    torch.testing.assert_close(left, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(right, expected, rtol=0, atol=1e-4)


def tiny_model(smollm2_path, seed=0, attn_implementation=None):
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return tiny_smollm2(smollm2_path, seed, **extra)


def gdpo_grads(model, logps, batch):
    group_mask = batch["group_mask"]
    policy = torch.zeros(group_mask.shape).masked_scatter(group_mask, logps)
    ref = torch.zeros_like(policy).masked_scatter(group_mask, logps.detach() + 0.3 * torch.arange(logps.shape[0]))
    loss, _ = gdpo_loss(policy, ref, batch["rewards"], beta=0.1, mask=group_mask)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_gradients_equal_full_sequences(smollm2_path, batch, attn):
    """On CPU in float32, with both attention implementations a CPU offers (the README's "exact where tested")."""
    model = tiny_model(smollm2_path, attn_implementation=attn).train()
    assert model.config._attn_implementation == attn
    loss_full, grads_full = gdpo_grads(model, full_path(model, batch)[0], batch)
    loss_shared, grads_shared = gdpo_grads(model, shared_path(model, batch)[0], batch)
    _, grads_right = gdpo_grads(model, shared_path(model, batch, *right_padded_prompts(batch))[0], batch)
    torch.testing.assert_close(loss_shared, loss_full, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        full_avg, counts = full_path(model, batch, average=True)
        shared_avg, _ = shared_path(model, batch, average=True)
    torch.testing.assert_close(shared_avg, full_avg, rtol=0, atol=1e-5)
    assert counts.min() > 1
    assert grads_full.keys() == grads_shared.keys() and len(grads_full) == len(list(model.parameters()))
    # Every layer's weights get gradient through the prompt's cache as well as through the responses.
    assert all(g.abs().sum() > 0 for g in grads_shared.values() if g.dim() > 1)
    for name, g in grads_full.items():
        torch.testing.assert_close(grads_shared[name], g, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(grads_right[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_unsupported_setups_fall_back_to_full_sequences(smollm2_path, batch):
    model = tiny_model(smollm2_path)
    model.gradient_checkpointing_enable()
    model.train()
    assert not shared_prompt_supported(model)  # transformers drops the cache under gradient checkpointing
    logps, _ = batch_logps(model, batch)
    torch.testing.assert_close(logps, full_path(model, batch)[0], rtol=0, atol=0)
    assert shared_prompt_supported(model.eval())
    wrapped = torch.nn.Module()
    wrapped.module = model  # a DDP/DeepSpeed-style wrapper: one forward per backward expected
    assert not shared_prompt_supported(wrapped)
