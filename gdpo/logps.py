"""Sequence log-probs of response tokens without materializing [tokens x vocab] float32 logits for the whole batch.

The model runs once with `logits_to_keep=1` (so it builds logits for one position only) and returns its final hidden
states; the LM head is then applied only to the positions that predict a response token, in chunks, each chunk's
float32 logits reduced at once to the target token's log-prob (logit − logsumexp) and recomputed during backward
(activation checkpointing), so at most [chunk x vocab] float32 logits exist at a time.
Models whose logits are not a plain linear map of the last hidden state (soft-capping, logit scaling) and models
without `logits_to_keep` take the full-logits path, still reduced to response positions before the float32 cast.

`shared_prompt_logps` scores a group's G responses with the prompt run once: the prompt's KV cache is expanded to
its G responses (index_select, so gradients of all G flow back into the prompt's computation) and the responses run
on top of it with their own position ids. The attended keys, positions and masks are those of the G full sequences,
so the result equals `sequence_logps` up to float summation order; models or wrappers where that cannot be
guaranteed take the full-sequence path (`shared_prompt_supported`).

Picking the response positions out of a padded batch is a data-dependent shape: done on the device (a boolean mask,
`nonzero`) it makes the host wait for the GPU every micro-batch. `with_host_indices` computes those positions on the
host, where the collator builds the batch (GroupCollator's tensors are still on the CPU there), and the paths below
use them when the batch carries them, so a training step queues its kernels without waiting.
"""

from __future__ import annotations

import inspect

import torch
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import DynamicCache, DynamicLayer

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


INDEX_KEYS = ("logp_target_rows", "logp_target_cols", "logp_group_index", "logp_response_rows", "logp_response_cols")


def with_host_indices(batch: dict) -> dict:
    """The batch plus the long index tensors of its scored positions (computed where the batch still is: call it on
    the CPU batch of a gdpo.data.GroupCollator). Full sequences: (row, column) of each response token in
    input_ids[:, 1:]; shared prompt: each response's group, and (row, column) of each response token."""
    rows, cols = batch["response_mask"][:, 1:].bool().nonzero(as_tuple=True)
    batch["logp_target_rows"], batch["logp_target_cols"] = rows, cols
    if "group_mask" in batch:
        batch["logp_group_index"] = batch["group_mask"].nonzero()[:, 0]
    if "response_attention_mask" in batch:
        batch["logp_response_rows"], batch["logp_response_cols"] = batch["response_attention_mask"].bool().nonzero(as_tuple=True)
    return batch


def _target_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(dim=-1)


def _head_logps(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _target_logps(head(hidden), targets)


def _chunked_target_logps(model, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Log-probs of `targets` [M] from final hidden states [M, H], the LM head applied chunk by chunk (recomputed in backward)."""
    head = _unwrap(model).get_output_embeddings()
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_head_logps, head, h, t, use_reentrant=False))
        else:
            pieces.append(_head_logps(head, h, t))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def sequence_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    average: bool = False,
    chunk_size: int = 1024,
    target_index: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logps [N], token_counts [N]): each sequence's log-prob of its response tokens, summed (or averaged).

    `response_mask[n, t] = 1` marks token t of sequence n as a response token; it is scored from position t−1.
    chunk_size <= 0 forces the full-logits path. target_index: (rows, columns) of response_mask[:, 1:]'s ones, from
    `with_host_indices` (computed here, on the device, when absent).
    """
    target_mask = response_mask[:, 1:].bool()
    rows, cols = target_mask.nonzero(as_tuple=True) if target_index is None else (t.to(input_ids.device) for t in target_index)
    targets = input_ids[:, 1:][rows, cols]
    counts = target_mask.sum(dim=1)

    if chunk_size > 0 and _chunked_head_ok(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        token_logps = _chunked_target_logps(model, out.hidden_states[-1][:, :-1][rows, cols], targets, chunk_size)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        token_logps = _target_logps(logits[:, :-1][rows, cols], targets)
    seq_index = rows

    logps = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device).index_add(0, seq_index, token_logps)
    if average:
        logps = logps / counts.clamp(min=1)
    return logps, counts


def shared_prompt_supported(model) -> bool:
    """Whether `shared_prompt_logps` is exact for this model (else use `sequence_logps`).

    Needs: the chunked-head conditions (plain LM head, `logits_to_keep`), a bare model (DDP/DeepSpeed/FSDP wrappers
    expect one forward per backward; PEFT is fine), a forward taking `past_key_values` and `position_ids`, a
    causal decoder whose cache for its config is plain full-attention `DynamicLayer`s (no sliding window, linear
    attention or recurrent state, which a prefix cache would not reproduce), and no gradient checkpointing while
    training (transformers drops the cache there).
    """
    if hasattr(model, "module") or not _chunked_head_ok(model):
        return False
    inner = _unwrap(model)
    config = inner.config
    if config.is_encoder_decoder or not getattr(config, "is_causal", True):
        return False
    params = inspect.signature(inner.forward).parameters
    if not {"past_key_values", "position_ids", "attention_mask"} <= set(params):
        return False
    if getattr(inner, "is_gradient_checkpointing", False) and inner.training:
        return False
    if getattr(inner, "_supports_cache_class", True) is False:
        return False
    try:
        cache = DynamicCache(config=config)
    except Exception:  # a config the cache cannot lay out: not a standard decoder
        return False
    return len(cache.layers) > 0 and all(type(layer) is DynamicLayer for layer in cache.layers)


def shared_prompt_logps(
    model,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    response_input_ids: torch.Tensor,
    response_attention_mask: torch.Tensor,
    group_index: torch.Tensor,
    *,
    average: bool = False,
    chunk_size: int = 1024,
    response_index: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logps [N], token_counts [N]) like `sequence_logps`, each prompt run once for its whole group.

    prompt_input_ids / prompt_attention_mask: [B, P], one row per group (left or right padding);
    response_input_ids / response_attention_mask: [N, R], one row per response, right padded (real tokens first);
    group_index [N]: the prompt row of each response. Every response token is scored, the first one from the prompt's
    last real position. response_index: (rows, columns) of response_attention_mask's ones, from `with_host_indices`
    (computed here, on the device, when absent). Callers check `shared_prompt_supported(model)` first.
    """
    inner = _unwrap(model)
    prompt_mask = prompt_attention_mask.long()
    response_mask = response_attention_mask.long()
    prompt_lengths = prompt_mask.sum(dim=1)
    # Real tokens get the positions they have in the unpadded sequence prompt + response, whatever the padding.
    prompt_positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = DynamicCache(config=inner.config)
    out = model(
        input_ids=prompt_input_ids, attention_mask=prompt_mask, position_ids=prompt_positions, past_key_values=cache,
        use_cache=True, output_hidden_states=True, logits_to_keep=1,
    )
    cache = out.past_key_values
    # The prompt's keys and values, one copy per response (index_select: its backward sums the G gradients).
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, group_index)
        layer.values = layer.values.index_select(0, group_index)
    last_real = torch.where(prompt_mask.bool(), torch.arange(prompt_mask.shape[1], device=prompt_mask.device), -1).amax(dim=1)
    prompt_last_hidden = out.hidden_states[-1][torch.arange(prompt_mask.shape[0], device=prompt_mask.device), last_real]

    response_positions = prompt_lengths[group_index, None] + (response_mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(
        input_ids=response_input_ids, attention_mask=torch.cat([prompt_mask[group_index], response_mask], dim=1),
        position_ids=response_positions, past_key_values=cache, use_cache=True, output_hidden_states=True, logits_to_keep=1,
    )
    # Hidden state predicting response token t: the prompt's last one for t = 0, the response's own t − 1 after.
    hidden = torch.cat([prompt_last_hidden[group_index, None], out.hidden_states[-1][:, :-1]], dim=1)
    target_mask = response_mask.bool()
    counts = target_mask.sum(dim=1)
    device = response_input_ids.device
    rows, cols = target_mask.nonzero(as_tuple=True) if response_index is None else (t.to(device) for t in response_index)
    token_logps = _chunked_target_logps(model, hidden[rows, cols], response_input_ids[rows, cols], chunk_size)
    seq_index = rows
    logps = torch.zeros(response_input_ids.shape[0], dtype=torch.float32, device=response_input_ids.device).index_add(0, seq_index, token_logps)
    if average:
        logps = logps / counts.clamp(min=1)
    return logps, counts


def batch_logps(model, batch, *, average: bool = False, chunk_size: int = 1024, shared_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat [N] log-probs and token counts of a gdpo.data.GroupCollator batch: the shared-prompt path when asked for
    and supported (and chunk_size > 0), the full-sequence path otherwise."""
    if shared_prompt and chunk_size > 0 and "prompt_input_ids" in batch and shared_prompt_supported(model):
        device = batch["prompt_input_ids"].device
        group_index = batch["logp_group_index"] if "logp_group_index" in batch else batch["group_mask"].nonzero()[:, 0]
        response_index = (batch["logp_response_rows"], batch["logp_response_cols"]) if "logp_response_rows" in batch else None
        return shared_prompt_logps(
            model, batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["response_input_ids"],
            batch["response_attention_mask"], group_index.to(device), average=average, chunk_size=chunk_size,
            response_index=response_index,
        )
    target_index = (batch["logp_target_rows"], batch["logp_target_cols"]) if "logp_target_rows" in batch else None
    return sequence_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], average=average, chunk_size=chunk_size,
        target_index=target_index,
    )
