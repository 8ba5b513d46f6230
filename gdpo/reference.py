"""Reference log-probs computed once and stored with the release, fingerprinted so a mismatch is refused.

The fingerprint has four parts, compared one by one so the error can say which differs:
- model: the architecture config (without its path), the parameter dtype and a digest of every base parameter's
  name, shape and first values (LoRA adapter weights excluded: the reference is the base model with adapters off);
  moving or renaming the model folder keeps it, a different checkpoint changes it;
- tokenizer: its class and full serialized vocabulary/merges (or vocab when not serializable);
- template: the chat template, system prompt and response format (gdpo.data.template_digest);
- max_length, plus whether log-probs are summed or averaged over tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
from datasets import Dataset

from gdpo.data import FINGERPRINT_COLUMN, REF_COLUMN, GroupCollator, template_digest, tokenize_groups
from gdpo.logps import _unwrap, batch_logps
from metakl.errors import UserError

_WEIGHT_SAMPLE = 256


def _base_param_name(name: str) -> str:
    for prefix in ("base_model.model.",):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace(".base_layer.", ".")


def model_digest(model) -> str:
    inner = _unwrap(model)
    config = inner.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache", "_attn_implementation_autoset"):
        config.pop(volatile, None)
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, param in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        h.update(_base_param_name(name).encode())
        h.update(str(tuple(param.shape)).encode())
        h.update(str(param.dtype).encode())
        sample = param.detach().reshape(-1)[:_WEIGHT_SAMPLE].float().cpu().numpy().tobytes()
        h.update(sample)
    return h.hexdigest()[:16]


def tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\x1f{body}".encode()).hexdigest()[:16]


def fingerprint(model, tokenizer, *, max_length: int, system_prompt: str | None, response_format: str, average: bool) -> dict[str, Any]:
    """The reference identity as a dict (the `ref_logps_fingerprint` column holds it as JSON)."""
    return {
        "model": model_digest(model),
        "model_name": str(getattr(_unwrap(model).config, "_name_or_path", "")).rstrip("/").split("/")[-1],
        "tokenizer": tokenizer_digest(tokenizer),
        "template": template_digest(tokenizer, system_prompt, response_format),
        "max_length": int(max_length),
        "logp_average": bool(average),
    }


def check_fingerprint(stored_json: str, expected: dict[str, Any], where: str = "dataset") -> None:
    """Raise UserError naming every part of the stored fingerprint that differs from the expected one."""
    try:
        stored = json.loads(stored_json)
    except (TypeError, json.JSONDecodeError):
        raise UserError(f"{where}: column '{FINGERPRINT_COLUMN}' is not a JSON fingerprint: {str(stored_json)[:80]}") from None
    parts = ("model", "tokenizer", "template", "max_length", "logp_average")
    diffs = [f"{p}: stored {stored.get(p)!r}, now {expected[p]!r}" for p in parts if stored.get(p) != expected[p]]
    if diffs:
        raise UserError(
            f"{where}: precomputed reference log-probs do not match this run ({'; '.join(diffs)}); "
            f"they were computed for model '{stored.get('model_name')}'. Recompute them with `gdpo ref-logps` "
            f"using the same model, tokenizer, max_length and template, or drop the '{REF_COLUMN}' column to compute "
            "the reference on the fly"
        )


@torch.no_grad()
def compute_group_logps(
    model,
    groups: Dataset,
    pad_token_id: int,
    *,
    batch_size: int = 4,
    average: bool = False,
    chunk_size: int = 1024,
    shared_prompt: bool = True,
    progress: bool = True,
) -> list[list[float]]:
    """Sequence log-probs of every response of every tokenized group, batched by groups, without gradients
    (each prompt run once per group where gdpo.logps supports it, unless shared_prompt=False)."""
    from tqdm.auto import tqdm

    collate = GroupCollator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[list[float]] = []
    try:
        for start in tqdm(range(0, len(groups), batch_size), desc="reference log-probs", disable=not progress):
            chunk = [groups[i] for i in range(start, min(start + batch_size, len(groups)))]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            logps, _ = batch_logps(model, batch, average=average, chunk_size=chunk_size, shared_prompt=shared_prompt)
            flat = logps.double().cpu().tolist()
            k = 0
            for g in chunk:
                n = len(g["response_ids"])
                results.append(flat[k : k + n])
                k += n
    finally:
        model.train(was_training)
    return results


def add_ref_logps(
    release: Dataset,
    model,
    tokenizer,
    *,
    max_length: int,
    system_prompt: str | None = None,
    response_format: str = "text",
    average: bool = False,
    batch_size: int = 4,
    chunk_size: int = 1024,
    shared_prompt: bool = True,
    progress: bool = True,
) -> tuple[Dataset, dict[str, Any]]:
    """The release with `ref_logps` (one value per response, NaN for responses not trained on) and
    `ref_logps_fingerprint` columns, and a report (truncation counts, fingerprint)."""
    release = release.remove_columns([c for c in (REF_COLUMN, FINGERPRINT_COLUMN) if c in release.column_names])
    groups, report = tokenize_groups(release, tokenizer, max_length=max_length, system_prompt=system_prompt, response_format=response_format, progress=progress)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    values = compute_group_logps(
        model, groups, pad, batch_size=batch_size, average=average, chunk_size=chunk_size, shared_prompt=shared_prompt, progress=progress
    )
    per_row: list[list[float]] = [[math.nan] * len(r) for r in release["responses"]]
    for row, index, logps in zip(groups["row"], groups["response_index"], values):
        for k, v in zip(index, logps):
            per_row[row][k] = v
    fp = fingerprint(model, tokenizer, max_length=max_length, system_prompt=system_prompt, response_format=response_format, average=average)
    fp_json = json.dumps(fp, sort_keys=True)
    out = release.add_column(REF_COLUMN, per_row).add_column(FINGERPRINT_COLUMN, [fp_json] * len(release))
    return out, {**report, "fingerprint": fp}
