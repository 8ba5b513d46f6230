"""GDPOConfig and GDPOTrainer: GDPO (and DPO/SFT baselines) on transformers.Trainer.

Being a plain Trainer subclass, accelerate, DeepSpeed, FSDP, gradient accumulation, bf16, checkpointing and
logging integrations work as usual. One dataset row is one group (prompt + its responses), so
`per_device_train_batch_size` counts prompts, and a prompt's responses always share a micro-batch and a rank.

Reference log-probs come from, in order: a precomputed `ref_logps` column (its fingerprint must match this run, see
gdpo.reference), the PEFT model with its adapters disabled, an explicit `ref_model`, or a frozen copy of the
model taken before training.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from gdpo.data import FINGERPRINT_COLUMN, REF_COLUMN, RESPONSE_FORMATS, GroupCollator, check_release, tokenize_groups
from gdpo.logps import batch_logps
from gdpo.losses import LINKS, PAIRINGS, WEIGHTINGS, dpo_group_loss, gdpo_loss, sft_loss
from gdpo.reference import check_fingerprint, fingerprint
from metakl.errors import UserError

LOSSES = ("gdpo", "dpo", "sft")


@dataclass
class GDPOConfig(TrainingArguments):
    """TrainingArguments plus the GDPO loss and data settings (defaults: the paper's β = 0.1, lr 2e-6)."""

    loss: str = field(default="gdpo", metadata={"help": "gdpo | dpo (best vs worst of each group) | sft (NLL)"})
    beta: float = field(default=0.1, metadata={"help": "β: scale of the implicit reward β·log(π/π_ref)"})
    pairing: str = field(default="adjacent", metadata={"help": "adjacent (O(G) chain) | all (O(G²)) | block (tie-aware O(G))"})
    weighting: str = field(default="minmax", metadata={"help": "minmax (safe 1/A) | none (GDPO−A) | raw (literal β/A_i, unsafe)"})
    link: str = field(default="sigmoid", metadata={"help": "sigmoid (paper: −σ(Δ)) | logsigmoid (DPO-style −log σ(Δ))"})
    eps: float = field(default=0.1, metadata={"help": "floor of the min-max scaled advantage; |A| guard for raw"})
    max_length: int = field(default=1024, metadata={"help": "prompt + response tokens; responses cut at the right"})
    logp_average: bool = field(default=False, metadata={"help": "average log-probs over response tokens instead of summing"})
    sft_threshold: float | None = field(default=None, metadata={"help": "sft: train on responses with reward >= this (default: the best one)"})
    system_prompt: str | None = field(default=None, metadata={"help": "system message put before each question"})
    response_format: str = field(default="text", metadata={"help": "text | reasoning+text: what the assistant turn holds"})
    shared_prompt: bool = field(default=True, metadata={"help": "run each prompt once per group, its responses on its KV cache (exact; falls back to full sequences where unsupported)"})
    logps_chunk_size: int = field(default=1024, metadata={"help": "response positions per LM-head chunk; 0 = full logits"})
    learning_rate: float = field(default=2e-6, metadata={"help": "the paper's 2e-6 for GDPO"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "must stay False: the collator needs all group columns"})

    def __post_init__(self):
        super().__post_init__()
        for name, value, allowed in (
            ("loss", self.loss, LOSSES),
            ("pairing", self.pairing, PAIRINGS),
            ("weighting", self.weighting, WEIGHTINGS),
            ("link", self.link, LINKS),
            ("response_format", self.response_format, RESPONSE_FORMATS),
        ):
            if value not in allowed:
                raise UserError(f"config field '{name}': expected one of {', '.join(allowed)}, got {value!r}")
        if self.beta <= 0:
            raise UserError(f"config field 'beta': expected a positive number, got {self.beta}")
        if not 0 < self.eps <= 1:
            raise UserError(f"config field 'eps': expected a number in (0, 1], got {self.eps}")
        if self.max_length < 2:
            raise UserError(f"config field 'max_length': expected at least 2, got {self.max_length}")
        self.remove_unused_columns = False


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class GDPOTrainer(Trainer):
    """Trainer whose loss is GDPO / DPO / SFT over groups of responses of a MetaKL release.

    train_dataset / eval_dataset: releases (rows with `question` and `responses`, optionally `ref_logps` +
    `ref_logps_fingerprint` from `gdpo ref-logps`). peft_config: a peft LoraConfig to train adapters only.
    """

    def __init__(
        self,
        model,
        args: GDPOConfig,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class=None,
        ref_model=None,
        peft_config=None,
        **kwargs,
    ):
        if processing_class is None:
            raise UserError("GDPOTrainer needs the tokenizer as processing_class")
        tokenizer = processing_class
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.needs_reference = args.loss != "sft"
        # The reference identity, taken before any training step changes the weights.
        self.ref_fingerprint = (
            fingerprint(model, tokenizer, max_length=args.max_length, system_prompt=args.system_prompt, response_format=args.response_format, average=args.logp_average)
            if self.needs_reference
            else None
        )
        self.tokenize_reports: dict[str, dict[str, int]] = {}
        train_groups = self._prepare(train_dataset, tokenizer, args, "train") if train_dataset is not None else None
        eval_groups = self._prepare(eval_dataset, tokenizer, args, "eval") if eval_dataset is not None else None

        self.ref_model = None
        uses_precomputed = train_groups is None or REF_COLUMN in train_groups.column_names
        if self.needs_reference and not _is_peft(model):
            if ref_model is not None:
                self.ref_model = ref_model
            elif not uses_precomputed or (eval_groups is not None and REF_COLUMN not in eval_groups.column_names):
                self.ref_model = copy.deepcopy(model)
            if self.ref_model is not None:
                self.ref_model.eval().requires_grad_(False)

        super().__init__(
            model=model,
            args=args,
            data_collator=GroupCollator(pad),
            train_dataset=train_groups,
            eval_dataset=eval_groups,
            processing_class=tokenizer,
            **kwargs,
        )
        # compute_loss returns a per-micro-batch mean: let Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        if self.ref_model is not None:
            # ZeRO-1/2 and DDP keep whole parameters on each rank, so a plain copy on the device serves as the
            # reference; FSDP shards it like the policy. For ZeRO-3 precompute the reference (`gdpo ref-logps`).
            if self.is_fsdp_enabled:
                self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)
            else:
                self.ref_model = self.ref_model.to(self.args.device)

    def _prepare(self, ds: Dataset, tokenizer, args: GDPOConfig, name: str) -> Dataset:
        check_release(ds, f"{name} dataset")
        if REF_COLUMN in ds.column_names and self.needs_reference:
            if FINGERPRINT_COLUMN not in ds.column_names or len(ds) == 0:
                raise UserError(f"{name} dataset: column '{REF_COLUMN}' without '{FINGERPRINT_COLUMN}'; recompute it with `gdpo ref-logps`")
            for stored in set(ds[FINGERPRINT_COLUMN]):
                check_fingerprint(stored, self.ref_fingerprint, f"{name} dataset")
        elif REF_COLUMN in ds.column_names:
            ds = ds.remove_columns(REF_COLUMN)
        groups, report = tokenize_groups(
            ds, tokenizer, max_length=args.max_length, system_prompt=args.system_prompt, response_format=args.response_format
        )
        if len(groups) == 0:
            raise UserError(f"{name} dataset: no trainable group left after tokenization ({json.dumps(report)})")
        self.tokenize_reports[name] = report
        return groups

    # ---- loss -----------------------------------------------------------------------------------------------------

    def _logps(self, model, inputs, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_logps(model, inputs, average=average, chunk_size=self.args.logps_chunk_size, shared_prompt=self.args.shared_prompt)

    @torch.no_grad()
    def reference_logps(self, model, inputs) -> torch.Tensor:
        """Flat [N] reference log-probs computed on the fly (adapters off, or the frozen reference model)."""
        if self.ref_model is not None:
            logps, _ = self._logps(self.ref_model, inputs, self.args.logp_average)
            return logps
        unwrapped = self.accelerator.unwrap_model(model)
        if not _is_peft(unwrapped):
            raise RuntimeError("no reference available: no precomputed ref_logps, no ref_model and not a PEFT model")
        with unwrapped.disable_adapter():
            logps, _ = self._logps(model, inputs, self.args.logp_average)
        return logps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        group_mask = inputs["group_mask"]
        rewards = inputs["rewards"]
        average = args.logp_average and args.loss != "sft"
        flat_logps, flat_counts = self._logps(model, inputs, average)
        policy = torch.zeros(group_mask.shape, dtype=flat_logps.dtype, device=flat_logps.device).masked_scatter(group_mask, flat_logps)
        if args.loss == "sft":
            counts = torch.zeros(group_mask.shape, dtype=flat_counts.dtype, device=flat_counts.device).masked_scatter(group_mask, flat_counts)
            loss, metrics = sft_loss(policy, counts, rewards, mask=group_mask, threshold=args.sft_threshold)
        else:
            if REF_COLUMN in inputs:
                ref = inputs[REF_COLUMN].to(policy.device, policy.dtype)
            else:
                flat_ref = self.reference_logps(model, inputs).to(policy.dtype)
                ref = torch.zeros_like(policy).masked_scatter(group_mask, flat_ref)
            if args.loss == "gdpo":
                loss, metrics = gdpo_loss(
                    policy, ref, rewards, beta=args.beta, pairing=args.pairing, weighting=args.weighting, link=args.link, mask=group_mask, eps=args.eps
                )
            else:
                loss, metrics = dpo_group_loss(policy, ref, rewards, beta=args.beta, mask=group_mask)
        mode = "train" if model.training else "eval"
        for key, value in metrics.items():
            self._metrics[mode][key].append(float(value))
        self._metrics[mode]["response_tokens"].append(float(flat_counts.sum().item()))
        return (loss, {"policy_logps": policy.detach()}) if return_outputs else loss

    def _prepare_inputs(self, inputs):
        # Rewards and stored reference log-probs keep their float64 precision: DeepSpeed would cast them to bf16.
        exact = {k: inputs.pop(k) for k in ("rewards", REF_COLUMN) if k in inputs}
        inputs = super()._prepare_inputs(inputs)
        inputs.update({k: v.to(self.args.device) for k, v in exact.items()})
        return inputs

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        summed = {"counted_pairs", "skipped_groups", "groups", "response_tokens", "selected_responses", "selected_tokens"}
        for key, values in self._metrics[mode].items():
            if values:
                logs[f"{prefix}{key}"] = sum(values) if key in summed else sum(values) / len(values)
        self._metrics[mode].clear()
        super().log(logs, start_time)


def lora_config(r: int, alpha: int | None = None, dropout: float = 0.05, target_modules: str | list[str] = "all-linear"):
    """A causal-LM LoraConfig (peft) with rank r; alpha defaults to 2r."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM")
