"""Sequence log-probs of response tokens without materializing [tokens x vocab] float32 logits for the whole batch.

The model runs once with `logits_to_keep=1` (so it builds logits for one position only) and returns its final hidden
states; the LM head is then applied only to the positions that predict a response token, in chunks, each chunk's
float32 logits reduced at once to the target token's log-prob (logit − logsumexp) and recomputed during backward
(activation checkpointing), so at most [chunk x vocab] float32 logits exist at a time.
Models whose logits are not a plain linear map of the last hidden state (soft-capping, logit scaling) and models
without `logits_to_keep` take the full-logits path, still reduced to response positions before the float32 cast.
"""

from __future__ import annotations

import inspect

import torch
from torch.utils.checkpoint import checkpoint

# Config fields that make logits more than lm_head(hidden): take the full path for such models.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def _unwrap(model):
    """The transformers PreTrainedModel inside DDP/DeepSpeed/PEFT wrappers (for config and signature checks)."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "module"):  # DDP / DeepSpeed engine
            inner = inner.module
        elif hasattr(inner, "get_base_model"):  # PEFT
            inner = inner.get_base_model()
        else:
            break
    return inner


def _chunked_head_ok(model) -> bool:
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    if config is None or inner.get_output_embeddings() is None:
        return False
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text_config, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return False
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _target_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(dim=-1)


def _head_logps(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _target_logps(head(hidden), targets)


def sequence_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    average: bool = False,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logps [N], token_counts [N]): each sequence's log-prob of its response tokens, summed (or averaged).

    `response_mask[n, t] = 1` marks token t of sequence n as a response token; it is scored from position t−1.
    chunk_size <= 0 forces the full-logits path.
    """
    target_mask = response_mask[:, 1:].bool()
    targets = input_ids[:, 1:][target_mask]
    counts = target_mask.sum(dim=1)
    seq_index = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(target_mask)[target_mask]

    if chunk_size > 0 and _chunked_head_ok(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        hidden = out.hidden_states[-1][:, :-1][target_mask]
        head = _unwrap(model).get_output_embeddings()
        pieces = []
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            if torch.is_grad_enabled() and h.requires_grad:
                pieces.append(checkpoint(_head_logps, head, h, t, use_reentrant=False))
            else:
                pieces.append(_head_logps(head, h, t))
        token_logps = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        token_logps = _target_logps(logits[:, :-1][target_mask], targets)

    logps = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device).index_add(0, seq_index, token_logps)
    if average:
        logps = logps / counts.clamp(min=1)
    return logps, counts
