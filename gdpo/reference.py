"""Reference log-probs computed once and stored with the release, fingerprinted so that a stale one is refused.

Each row's `ref_logps_fingerprint` is a JSON object. Its run parts are the same for every row and are compared one
by one, so the error can say which differs:
- model: the architecture config (without its path) and a SHA-256 of every base parameter's name, shape, dtype and
  ALL of its bytes (LoRA adapter weights excluded: the reference is the base model with adapters off); moving or
  renaming the model folder keeps it, any changed weight changes it;
- dtype: the parameters' dtype; autocast: the mixed-precision dtype the forward ran under (bfloat16, float16 or none):
  a float32 reference used for bf16-autocast training is off by ~0.1 nat per sequence before the first step;
- tokenizer: its class and full serialized vocabulary/merges (or vocab when not serializable);
- template: the chat template, system prompt and response format (gdpo.data.template_digest);
- max_length, plus whether log-probs are summed or averaged over tokens.
Its `data` part describes the row as it was scored: a digest of the prompt tokens, one digest per kept response
(its tokens after truncation, keyed by its index in the row) and the kept responses' rewards. Training re-tokenizes the
release and refuses rows whose data differs, naming them (edited texts, reordered or swapped responses, changed
rewards).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from typing import Any

import torch
from datasets import Dataset

from gdpo.data import FINGERPRINT_COLUMN, REF_COLUMN, GroupCollator, template_digest, tokenize_groups
from gdpo.logps import _unwrap, batch_logps, with_host_indices
from metakl.errors import UserError

FINGERPRINT_VERSION = 2
RUN_PARTS = ("model", "dtype", "autocast", "tokenizer", "template", "max_length", "logp_average")
_SHOWN_ROWS = 5


def _base_param_name(name: str) -> str:
    for prefix in ("base_model.model.",):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace(".base_layer.", ".")


def _base_parameters(model):
    for name, param in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        yield _base_param_name(name), param


_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _full_parameters(model):
    """(name, full tensor) of every base parameter, the same on every rank and in every layout.

    Why gather rather than hash the checkpoint files: the reference is what this process holds in memory (after
    dtype casts, tied weights, merged adapters), and a run need not come from files at all. Sharded parameters are
    gathered one at a time (collectives: every rank runs this in the same order): FSDP2 / tensor-parallel DTensors
    with full_tensor(), DeepSpeed ZeRO-3 partitions with GatheredParameters, FSDP1 flat parameters inside
    summon_full_params. A parameter on the meta device (a rank that has not loaded the weights, e.g. FSDP's
    cpu_ram_efficient_loading) yields None: see model_digest."""
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    fsdp1 = None
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            fsdp1 = FullyShardedDataParallel
    except ImportError:  # torch built without distributed
        pass
    context = fsdp1.summon_full_params(model, writeback=False, recurse=True) if fsdp1 else contextlib.nullcontext()
    with context, torch.no_grad():
        for name, param in _base_parameters(model):
            name = name.removeprefix("module.") if ddp else name
            for part in _WRAPPER_PARTS:
                name = name.replace(part, "")
            if hasattr(param, "full_tensor"):  # DTensor: FSDP2 (fully_shard) or tensor parallel
                yield name, param.full_tensor()
            elif hasattr(param, "ds_id"):  # DeepSpeed ZeRO-3 partition
                import deepspeed

                with deepspeed.zero.GatheredParameters([param]):
                    yield name, param.detach().clone()
            elif param.is_meta:
                yield name, None
            else:
                yield name, param.detach()


def _local_digest(model) -> str | None:
    inner = _unwrap(model)
    config = inner.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache", "_attn_implementation_autoset"):
        config.pop(volatile, None)
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    complete = True
    for name, data in _full_parameters(model):
        if data is None:
            complete = False
            continue  # keep going: the other parameters may need this rank in their gathers
        h.update(f"{name}\x1f{tuple(data.shape)}\x1f{data.dtype}\x1e".encode())
        # All bytes, in storage order (a view, no copy, for a contiguous CPU tensor).
        h.update(data.contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
    return h.hexdigest()[:16] if complete else None


def model_digest(model) -> str:
    """SHA-256 over the config (volatile keys removed) and every base parameter's name, shape, dtype and bytes, of the
    FULL weights (gathered where sharded, see _full_parameters).

    In a distributed run every rank returns rank 0's digest: rank 0 always holds (or gathers) the full weights, and
    its copy is the one DDP and FSDP (sync_module_states) give every rank, whereas another rank may hold placeholders
    until then (FSDP cpu_ram_efficient_loading loads weights on rank 0 only). So the fingerprint is identical on
    every rank, and the precomputed reference is accepted or refused by all of them alike."""
    digest = _local_digest(model)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        box = [digest]
        torch.distributed.broadcast_object_list(box, src=0)
        digest = box[0]
    if digest is None:
        raise RuntimeError("model_digest: rank 0 holds parameters on the meta device; load the weights before fingerprinting")
    return digest


def parameter_dtype(model) -> str:
    for _, param in _base_parameters(model):
        if param.is_floating_point():
            return str(param.dtype).removeprefix("torch.")
    return "none"


def tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\x1f{body}".encode()).hexdigest()[:16]


def autocast_name(bf16: bool = False, fp16: bool = False) -> str:
    return "bfloat16" if bf16 else "float16" if fp16 else "none"


def args_autocast(args) -> str:
    """The autocast a Trainer built from these TrainingArguments runs under: ACCELERATE_MIXED_PRECISION (set by
    `accelerate launch --mixed_precision`), overridden by the bf16 / fp16 flags, as transformers decides."""
    import os

    mixed = getattr(args, "mixed_precision", None) or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if args.fp16:
        mixed = "fp16"
    elif args.bf16:
        mixed = "bf16"
    if mixed not in ("no", "bf16", "fp16"):
        raise UserError(f"mixed precision '{mixed}': gdpo supports no, bf16 and fp16")
    return autocast_name(bf16=mixed == "bf16", fp16=mixed == "fp16")


def autocast_context(autocast: str, device: torch.device | str):
    """torch.autocast for `autocast` (bfloat16 | float16 | none) on the device's type; a null context for none."""
    if autocast == "none":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=getattr(torch, autocast))


def fingerprint(
    model, tokenizer, *, max_length: int, system_prompt: str | None, response_format: str, average: bool, autocast: str = "none"
) -> dict[str, Any]:
    """The run identity of a reference as a dict (each row's `ref_logps_fingerprint` adds its `data` part)."""
    return {
        "version": FINGERPRINT_VERSION,
        "model": model_digest(model),
        "model_name": str(getattr(_unwrap(model).config, "_name_or_path", "")).rstrip("/").split("/")[-1],
        "dtype": parameter_dtype(model),
        "autocast": autocast,
        "tokenizer": tokenizer_digest(tokenizer),
        "template": template_digest(tokenizer, system_prompt, response_format),
        "max_length": int(max_length),
        "logp_average": bool(average),
    }


def _ids_digest(ids) -> str:
    return hashlib.sha256(b"".join(int(t).to_bytes(4, "little") for t in ids)).hexdigest()[:12]


def group_data(group: dict[str, Any]) -> dict[str, Any]:
    """The `data` part of a row's fingerprint, from a tokenized group (gdpo.data.tokenize_groups)."""
    return {
        "prompt": _ids_digest(group["prompt_ids"]),
        "responses": {str(k): _ids_digest(ids) for k, ids in zip(group["response_index"], group["response_ids"])},
        "rewards": {str(k): float(r) for k, r in zip(group["response_index"], group["rewards"])},
    }


def _data_differences(stored: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    if not stored:
        return ["no data fingerprint (the row was not scored)"]
    out = []
    if stored.get("prompt") != now["prompt"]:
        out.append("prompt tokens differ")
    s_resp, n_resp = stored.get("responses") or {}, now["responses"]
    if set(s_resp) != set(n_resp):
        out.append(f"scored responses {sorted(map(int, s_resp))}, now {sorted(map(int, n_resp))}")
    changed = sorted(int(k) for k in set(s_resp) & set(n_resp) if s_resp[k] != n_resp[k])
    if changed:
        out.append(f"tokens of responses {changed} differ")
    s_rew, n_rew = stored.get("rewards") or {}, now["rewards"]
    moved = sorted(int(k) for k in set(s_rew) & set(n_rew) if s_rew[k] != n_rew[k])
    if moved:
        out.append("rewards of responses " + ", ".join(f"[{k}] {s_rew[str(k)]!r} -> {n_rew[str(k)]!r}" for k in moved))
    return out


def _fix_hint() -> str:
    return (
        f"recompute them with `gdpo ref-logps` using this run's config (model, dtype, max_length, template), or drop "
        f"the '{REF_COLUMN}' column to compute the reference on the fly"
    )


def check_reference(ds: Dataset, groups: Dataset, expected: dict[str, Any], where: str = "dataset") -> None:
    """Refuse precomputed reference log-probs that do not belong to this run or to these rows.

    ds: the release (with `ref_logps` and `ref_logps_fingerprint`); groups: its tokenization for this run;
    expected: `fingerprint(...)` of this run. Raises UserError naming the differing parts or rows.
    """
    if FINGERPRINT_COLUMN not in ds.column_names:
        raise UserError(f"{where}: column '{REF_COLUMN}' without '{FINGERPRINT_COLUMN}'; {_fix_hint()}")
    parsed: list[dict[str, Any]] = []
    for i, text in enumerate(ds[FINGERPRINT_COLUMN]):
        try:
            value = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            raise UserError(f"{where}: row {i}, column '{FINGERPRINT_COLUMN}' is not a JSON fingerprint: {str(text)[:80]}") from None
        if not isinstance(value, dict):
            raise UserError(f"{where}: row {i}, column '{FINGERPRINT_COLUMN}' is not a JSON object: {str(text)[:80]}")
        parsed.append(value)
    versions = {p.get("version") for p in parsed}
    if versions != {FINGERPRINT_VERSION}:
        raise UserError(
            f"{where}: the reference fingerprint has version {sorted(versions, key=str)}, this gdpo expects "
            f"{FINGERPRINT_VERSION} (it now covers all weights, dtype/autocast and each row's tokens and rewards); {_fix_hint()}"
        )
    runs: dict[str, list[int]] = {}
    for i, p in enumerate(parsed):
        runs.setdefault(json.dumps({k: p.get(k) for k in RUN_PARTS}, sort_keys=True), []).append(i)
    if len(runs) > 1:
        sample = "; ".join(f"rows {rows[:3]}{'...' if len(rows) > 3 else ''}" for rows in runs.values())
        raise UserError(f"{where}: the rows' reference log-probs come from {len(runs)} different runs ({sample}); {_fix_hint()}")
    stored = parsed[0] if parsed else {}
    diffs = [f"{p}: stored {stored.get(p)!r}, now {expected[p]!r}" for p in RUN_PARTS if stored.get(p) != expected[p]]
    if diffs:
        raise UserError(
            f"{where}: precomputed reference log-probs do not match this run ({'; '.join(diffs)}); they were computed "
            f"for model '{stored.get('model_name')}'. {_fix_hint()[0].upper()}{_fix_hint()[1:]}"
        )
    stale = []
    for group in groups.select_columns(["row", "prompt_ids", "response_ids", "response_index", "rewards"]):
        problems = _data_differences(parsed[group["row"]].get("data"), group_data(group))
        if problems:
            stale.append((group["row"], problems))
    if stale:
        shown = "; ".join(f"row {row}: {', '.join(p)}" for row, p in stale[:_SHOWN_ROWS])
        more = f"; and {len(stale) - _SHOWN_ROWS} more rows" if len(stale) > _SHOWN_ROWS else ""
        raise UserError(
            f"{where}: precomputed reference log-probs are stale for {len(stale)} of {len(groups)} groups, the data "
            f"changed since `gdpo ref-logps` ({shown}{more}); {_fix_hint()}"
        )
    for row, values in zip(groups["row"], groups[REF_COLUMN]):
        if any(v is None or math.isnan(v) for v in values):
            raise UserError(f"{where}: row {row}, column '{REF_COLUMN}': no reference log-prob for some kept responses; {_fix_hint()}")


# Relative tolerance of the step-0 check, by the precision the forward runs in: float32 kernels of different batch
# shapes, devices or TF32 agree to ~1e-5 of a sequence's log-prob (TF32: ~1e-4); bf16/fp16 keep 8/11 mantissa bits. A
# bf16 column in a float32 run, or another model, is off by more; margins move by β × the error.
STEP0_RTOL = {"float32": 2e-4, "float16": 4e-3, "bfloat16": 1e-2}


def step0_precision(autocast: str, dtype: str) -> str:
    """The coarsest of the autocast and the parameters' dtype: what limits how well two forwards agree."""
    if "bfloat16" in (autocast, dtype):
        return "bfloat16"
    return "float16" if "float16" in (autocast, dtype) else "float32"


def step0_disagreements(stored, recomputed, tokens, rows, *, precision: str, average: bool) -> list[tuple[int, float, float, float]]:
    """(row, stored, recomputed, tolerance) for each response whose precomputed reference log-prob differs from the
    reference model's at step 0 by more than rtol·(|stored| + tokens): the tolerance scales with the log-prob and its
    number of tokens (1 when averaged), rtol by the precision (STEP0_RTOL). Inputs: flat sequences of equal length."""
    rtol = STEP0_RTOL[precision]
    out = []
    for row, s, r, n in zip(rows, stored, recomputed, tokens):
        tol = rtol * (abs(s) + (1 if average else n))
        if not abs(s - r) <= tol:  # NaN disagrees
            out.append((int(row), float(s), float(r), tol))
    return out


def step0_error(where: str, bad: list[tuple[int, float, float, float]], checked: int, precision: str) -> UserError:
    rows = sorted({b[0] for b in bad})
    row, s, r, tol = max(bad, key=lambda b: abs(b[1] - b[2]) / b[3])
    return UserError(
        f"{where}: precomputed reference log-probs disagree with the reference model at step 0 for rows "
        f"{rows[:_SHOWN_ROWS]}{' and more' if len(rows) > _SHOWN_ROWS else ''} ({len(bad)} of {checked} responses "
        f"checked; row {row}: stored {s:.4f}, recomputed {r:.4f}, tolerance {tol:.4f} for {precision}): the column was "
        f"computed with another model, device or kernel. {_fix_hint()[0].upper()}{_fix_hint()[1:]}"
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
    autocast: str = "none",
    progress: bool = True,
) -> list[list[float]]:
    """Sequence log-probs of every response of every tokenized group, batched by groups, without gradients
    (each prompt run once per group where gdpo.logps supports it, unless shared_prompt=False), under `autocast`."""
    from tqdm.auto import tqdm

    collate = GroupCollator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[list[float]] = []
    try:
        for start in tqdm(range(0, len(groups), batch_size), desc="reference log-probs", disable=not progress):
            chunk = [groups[i] for i in range(start, min(start + batch_size, len(groups)))]
            batch = {k: v.to(device) for k, v in with_host_indices(collate(chunk)).items()}
            with autocast_context(autocast, device):
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
    response_format: str = "reasoning+answer",
    average: bool = False,
    batch_size: int = 4,
    chunk_size: int = 1024,
    shared_prompt: bool = True,
    autocast: str = "none",
    progress: bool = True,
) -> tuple[Dataset, dict[str, Any]]:
    """The release with `ref_logps` (one value per response, NaN for responses not trained on) and
    `ref_logps_fingerprint` (run identity + the row's data) columns, and a report (truncation counts, fingerprint)."""
    release = release.remove_columns([c for c in (REF_COLUMN, FINGERPRINT_COLUMN) if c in release.column_names])
    groups, report = tokenize_groups(release, tokenizer, max_length=max_length, system_prompt=system_prompt, response_format=response_format, progress=progress)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    values = compute_group_logps(
        model, groups, pad, batch_size=batch_size, average=average, chunk_size=chunk_size, shared_prompt=shared_prompt,
        autocast=autocast, progress=progress,
    )
    bad = [g["row"] for g, logps in zip(groups.select_columns(["row"]), values) if not all(math.isfinite(v) for v in logps)]
    if bad or len(values) != len(groups):
        # NaN marks "not trained on" in the column, so a computed NaN/inf would later read as missing: refuse it here.
        rows = bad or [g["row"] for g in groups.select_columns(["row"])][len(values):]
        shown = ", ".join(map(str, rows[:_SHOWN_ROWS])) + (f" and {len(rows) - _SHOWN_ROWS} more" if len(rows) > _SHOWN_ROWS else "")
        raise UserError(
            f"reference log-probs are not finite (NaN/inf) or missing for {len(rows)} of {len(groups)} groups (rows "
            f"{shown}); nothing written. Check the model's weights and dtype (float16 overflows easily; use float32 or bf16)"
        )
    per_row: list[list[float]] = [[math.nan] * len(r) for r in release["responses"]]
    data: list[dict[str, Any] | None] = [None] * len(release)
    columns = groups.select_columns(["row", "prompt_ids", "response_ids", "response_index", "rewards"])
    for group, logps in zip(columns, values):
        for k, v in zip(group["response_index"], logps):
            per_row[group["row"]][k] = v
        data[group["row"]] = group_data(group)
    fp = fingerprint(
        model, tokenizer, max_length=max_length, system_prompt=system_prompt, response_format=response_format, average=average, autocast=autocast
    )
    column = [json.dumps({**fp, "data": d}, sort_keys=True) for d in data]
    out = release.add_column(REF_COLUMN, per_row).add_column(FINGERPRINT_COLUMN, column)
    return out, {**report, "fingerprint": fp}
