"""GDPOConfig and GDPOTrainer: Group Direct Preference Optimization (MetaGDPO, arXiv 2511.12113), its listwise
variant, and the DPO / SFT baselines on transformers.Trainer.

Being a plain Trainer subclass, accelerate, DeepSpeed, FSDP, gradient accumulation, bf16, checkpointing and
logging integrations work as usual. One dataset row is one group (prompt + its responses), so
`per_device_train_batch_size` counts prompts, and a prompt's responses always share a micro-batch and a rank.

The update does not depend on how an optimizer step is split: before a step, `get_batch_samples` counts the groups
with a preference (SFT: the selected response tokens) in all its micro-batches on all ranks, and every micro-batch's
loss is its sum of group losses divided by that count (times the number of ranks, which DDP averages over). Batch
size × accumulation × ranks = 2 × 1 × 1, 1 × 2 × 1 and 1 × 1 × 2 give the same gradient.

Metrics are pooled as sums over every micro-batch and rank and turned into means when logged (gdpo.losses.summarize),
so a micro-batch without a counted pair does not pull an average down. The sums stay on the device, added up per
micro-batch, and are reduced over ranks and copied to the host once per logging step (and once per evaluation): the
loss path itself never waits for the device (tests/test_gdpo_syncs.py counts it).

The reference is an explicit `ref_model`, else the model before training (under PEFT: its base with the adapters
disabled; a ref_model with PEFT is refused). Its log-probs come from a precomputed `ref_logps` column where the
dataset has one (its fingerprint must match THE REFERENCE, this run and these rows, see gdpo.reference; a ref_model is
then only fingerprinted, not kept), else they are computed on the fly (ref_model, or a frozen copy of the model). Log-probs run under the autocast that `bf16` / `fp16` ask for, the reference
included, so policy and reference agree at step 0.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from gdpo.config import apply_recipe, bad_setting, check_bounds
from gdpo.data import REF_COLUMN, RESPONSE_FORMATS, GroupCollator, check_release, tokenize_groups
from gdpo.logps import batch_logps, with_host_indices
from gdpo.losses import (
    GROUP_NORMALIZATIONS, LINKS, PAIRINGS, SUM_METRICS, WEIGHTINGS, MetricSums, best_response_nll, dpo_group_loss, gdpo_loss, informative_groups,
    listwise_loss, sft_loss,
    sft_selection, summarize,
)
from gdpo.reference import (
    autocast_context, autocast_name, check_reference, fingerprint, parameter_dtype, step0_disagreements, step0_error, step0_precision,
)
from metakl.errors import UserError

LOSSES = ("gdpo", "listwise", "dpo", "sft")
_RECORDED = SUM_METRICS + ("response_tokens",)


@dataclass
class GDPOConfig(TrainingArguments):
    """TrainingArguments plus the GDPO loss and data settings (defaults: the paper's β = 0.1, lr 2e-6)."""

    recipe: str = field(default="paper", metadata={"help": "paper (default: minmax weights, sigmoid link, block pairing = the paper's O(G) chain made tie-aware, rpo_alpha 0, group_normalization paper) | paper-literal (raw weights, adjacent pairing: the formula as printed; A_i <= 0 gives infinite/negative weights that push the worst responses up) | low-drift (weighting none + rpo_alpha 1.0, group_normalization pairs: the previous default). Sets weighting, pairing, link, group_normalization and rpo_alpha where they are not given"})
    loss: str = field(default="gdpo", metadata={"help": "gdpo | listwise (Plackett–Luce over the group) | dpo (best vs worst of each group) | sft (NLL)"})
    beta: float = field(default=0.1, metadata={"help": "β: scale of the implicit reward β·log(π/π_ref)"})
    pairing: str | None = field(default=None, metadata={"help": "block (tie-aware O(G); = adjacent without ties) | adjacent (paper's O(G) chain) | all (O(G²)). Default: from the recipe"})
    weighting: str | None = field(default=None, metadata={"help": "minmax (this project's safe 1/A) | none (the paper's GDPO−A, w = 1) | raw (literal β/A_i, unsafe). Default: from the recipe"})
    link: str | None = field(default=None, metadata={"help": "sigmoid (paper: −σ(Δ)) | logsigmoid (DPO-style −log σ(Δ)). Default: from the recipe"})
    group_normalization: str | None = field(default=None, metadata={"help": "paper (a group's pair losses ÷ (G−1), ÷ G(G−1)/2 for pairing all, tied pairs counted) | pairs (÷ the group's informative pairs: with binary rewards and the adjacent chain a group weighs (G−1)× the paper's). Default: from the recipe"})
    eps: float = field(default=0.1, metadata={"help": "floor of the min-max scaled advantage; |A| guard for raw"})
    tie_seed: int | None = field(default=None, metadata={"help": "seed of the hash that orders tied responses (default: seed)"})
    allow_zero_variance: bool = field(default=False, metadata={"help": "train even when no group has a reward preference (loss 0)"})
    max_length: int = field(default=1024, metadata={"help": "prompt + response tokens; responses cut at the right"})
    logp_average: bool = field(default=False, metadata={"help": "average log-probs over response tokens instead of summing"})
    rpo_alpha: float | None = field(default=None, metadata={"help": "add rpo_alpha × the token-mean NLL of each group's best response to a preference loss (TRL's RPO term; counters the fall of the chosen responses' likelihood). Default: the recipe's with loss gdpo (paper 0, low-drift 1.0), 0 (off) with listwise and dpo"})
    sft_threshold: float | None = field(default=None, metadata={"help": "sft: train on responses with reward >= this (default: the best one)"})
    system_prompt: str | None = field(default=None, metadata={"help": "system message put before each question"})
    response_format: str = field(default="reasoning+answer", metadata={"help": "what the assistant turn holds: reasoning+answer (default, as the paper: '<think>\\n{reasoning}\\n</think>\\n\\n{answer}' where a response has reasoning, else its text) | answer (without the reasoning) | text (the text column as stored)"})
    shared_prompt: bool = field(default=True, metadata={"help": "run each prompt once per group, its responses on its KV cache (falls back to full sequences where unsupported)"})
    logps_chunk_size: int = field(default=1024, metadata={"help": "response positions per LM-head chunk; 0 = full logits"})
    learning_rate: float = field(default=2e-6, metadata={"help": "the paper's 2e-6 for GDPO"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "must stay False: the collator needs all group columns"})

    def __post_init__(self):
        check_bounds(self)  # every numeric field, before TrainingArguments acts on them
        super().__post_init__()
        self.recipe_given = apply_recipe(self)  # fills the loss fields not given; the names that were given
        for name, value, allowed in (
            ("loss", self.loss, LOSSES),
            ("pairing", self.pairing, PAIRINGS),
            ("weighting", self.weighting, WEIGHTINGS),
            ("link", self.link, LINKS),
            ("group_normalization", self.group_normalization, GROUP_NORMALIZATIONS),
            ("response_format", self.response_format, RESPONSE_FORMATS),
        ):
            if value not in allowed:
                raise bad_setting(name, f"one of {', '.join(allowed)}", value)
        if self.rpo_alpha and self.loss == "sft":
            raise bad_setting("rpo_alpha", "0 with loss sft (a number >= 0 with gdpo, listwise, dpo)", self.rpo_alpha)
        if self.tie_seed is None:
            self.tie_seed = self.seed
        self.remove_unused_columns = False


def _autocast_of(mixed_precision) -> str:
    value = str(getattr(mixed_precision, "value", mixed_precision) or "no")
    if value in ("no", "none"):
        return "none"
    if value in ("bf16", "fp16"):
        return autocast_name(bf16=value == "bf16", fp16=value == "fp16")
    raise UserError(f"mixed precision '{value}': gdpo supports no, bf16 and fp16")


def _to_groups(flat: torch.Tensor, group_mask: torch.Tensor) -> torch.Tensor:
    """[N] values of the real responses → [groups, G], zeros where the group has no response. A gather by each cell's
    running count (fixed shapes: no host sync, unlike masked_scatter's on CUDA)."""
    mask = group_mask.bool()
    if flat.numel() == 0:
        return torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device)
    index = (mask.reshape(-1).long().cumsum(0) - 1).clamp(min=0)
    return torch.where(mask, flat[index].reshape(mask.shape), 0).to(flat.dtype)


class _Collator(GroupCollator):
    """GroupCollator plus the host-side indices of the scored positions (gdpo.logps.with_host_indices) and each
    group's release row (for messages that name rows)."""

    def __call__(self, groups):
        batch = with_host_indices(super().__call__(groups))
        if all("row" in g for g in groups):
            batch["group_row"] = torch.tensor([g["row"] for g in groups], dtype=torch.long)
        return batch


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def _reference_source(needed: bool, precomputed: bool, on_the_fly: bool, explicit: bool, peft: bool) -> str:
    """In words, where the reference log-probs come from (printed by `gdpo train`)."""
    if not needed:
        return "none (sft)"
    model = "ref_model" if explicit else "the base model with adapters off" if peft else "the policy at step 0"
    parts = []
    if precomputed:
        parts.append(f"precomputed ref_logps column, checked to be computed with {model}")
    if on_the_fly:
        parts.append("ref_model, computed on the fly" if explicit else
                     "the base model with adapters off, on the fly" if peft else "a frozen copy of the model, on the fly")
    return "; ".join(parts)


class GDPOTrainer(Trainer):
    """Trainer whose loss is GDPO / listwise / DPO / SFT over groups of responses of a MetaKL release.

    train_dataset / eval_dataset: releases (rows with `question` and `responses`, optionally `ref_logps` +
    `ref_logps_fingerprint` from `gdpo ref-logps`). peft_config: a peft LoraConfig to train adapters only.
    After construction, `data_reports[name]` holds each dataset's tokenization report (truncations, drops,
    zero_variance_groups).
    """

    # compute_loss divides by the count of the whole optimizer step: Trainer must not divide by the accumulation steps.
    loss_is_scaled_for_ga = True

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
        if args.n_gpu > 1:
            raise UserError(
                f"{args.n_gpu} GPUs in one process (torch DataParallel) would split a batch's groups from their responses; "
                "launch one process per GPU with `accelerate launch` or `torchrun`, or set CUDA_VISIBLE_DEVICES to one GPU"
            )
        tokenizer = processing_class
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.needs_reference = args.loss != "sft"
        self._ref_fingerprint = None  # computed on first use, before any training step changes the weights
        self._step0_checked = False  # the precomputed column against the reference model, first train micro-batch
        self.data_reports: dict[str, dict[str, int]] = {}
        stored: list[tuple[str, Dataset, Dataset]] = []  # (name, release, groups) whose precomputed reference to check
        train_groups = self._prepare(train_dataset, tokenizer, args, "train", stored) if train_dataset is not None else None
        eval_groups = self._prepare(eval_dataset, tokenizer, args, "eval", stored) if eval_dataset is not None else None

        # Which model IS the reference: an explicit ref_model, else the policy as it is now (before any step; under
        # LoRA the base model with adapters off). A precomputed `ref_logps` column is checked against that model and,
        # when it matches, used instead of running it: a ref_model is then kept only for a dataset without the column.
        if ref_model is not None and _is_peft(model) and self.needs_reference:
            raise UserError(
                "ref_model with LoRA: the reference of a LoRA run is the base model with its adapters off, so a "
                "separate ref_model would sit unused; drop ref_model, or train without LoRA to use it"
            )
        self._reference_model = ref_model  # what a precomputed column must have been computed with (None: the policy)
        self.ref_model = None
        on_the_fly = any(g is not None and REF_COLUMN not in g.column_names for g in (train_groups, eval_groups))
        if self.needs_reference and not _is_peft(model) and on_the_fly:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model.eval().requires_grad_(False)
        self.reference_source = _reference_source(self.needs_reference, bool(stored), on_the_fly, ref_model is not None, _is_peft(model))

        super().__init__(
            model=model,
            args=args,
            data_collator=_Collator(pad),
            train_dataset=train_groups,
            eval_dataset=eval_groups,
            processing_class=tokenizer,
            **kwargs,
        )
        # transformers < 5 decides from this flag (and a non-None num_items_in_batch) not to divide by the
        # accumulation steps; our batches carry no `labels`, so nothing else reads it.
        self.model_accepts_loss_kwargs = True
        # The precision the forward really runs in is accelerate's (bf16/fp16 flags, but also `accelerate launch
        # --mixed_precision` or ACCELERATE_MIXED_PRECISION): log-probs, the reference and its fingerprint follow it.
        self.autocast = _autocast_of(self.accelerator.mixed_precision)
        for name, release, groups in stored:
            reference = self._reference_model if self._reference_model is not None else self.model
            check_reference(release, groups, self.reference_fingerprint(reference, tokenizer, args), f"{name} dataset")
        # An explicit ref_model whose column is used is not kept on the device; it is held (where it was loaded) only
        # until the step-0 check has compared the column's numbers with it, then released.
        train_column = any(name == "train" for name, _, _ in stored)
        self._step0_reference = self._reference_model if (train_column and self.ref_model is None) else None
        self._reference_model = None
        self._sums: dict[str, torch.Tensor | None] = {"train": None, "eval": None}  # device tensors in _RECORDED order
        if self.ref_model is not None:
            # ZeRO-1/2 and DDP keep whole parameters on each rank, so a plain copy on the device serves as the
            # reference; FSDP shards it like the policy. For ZeRO-3 precompute the reference (`gdpo ref-logps`).
            if self.is_fsdp_enabled:
                self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)
            else:
                self.ref_model = self.ref_model.to(self.args.device)

    def reference_fingerprint(self, model, tokenizer, args: GDPOConfig) -> dict:
        if self._ref_fingerprint is None:
            self._ref_fingerprint = fingerprint(
                model, tokenizer, max_length=args.max_length, system_prompt=args.system_prompt,
                response_format=args.response_format, average=args.logp_average, autocast=self.autocast,
            )
        return self._ref_fingerprint

    def _prepare(self, ds: Dataset, tokenizer, args: GDPOConfig, name: str, stored: list) -> Dataset:
        where = f"{name} dataset"
        check_release(ds, where)
        uses_ref = REF_COLUMN in ds.column_names and self.needs_reference
        if REF_COLUMN in ds.column_names and not uses_ref:
            ds = ds.remove_columns(REF_COLUMN)
        groups, report = tokenize_groups(
            ds, tokenizer, max_length=args.max_length, system_prompt=args.system_prompt, response_format=args.response_format,
            tie_seed=args.tie_seed,
        )
        if len(groups) == 0:
            raise UserError(f"{where}: no trainable group left after tokenization ({json.dumps(report)})")
        if uses_ref:
            stored.append((name, ds, groups))  # checked once the trainer knows its precision
        self.data_reports[name] = report
        if self.needs_reference:
            self._check_preferences(report, where, args)
        return groups

    @staticmethod
    def _check_preferences(report: dict[str, int], where: str, args: GDPOConfig) -> None:
        """Refuse a training set where no group has a preference (a silent no-op otherwise); warn above half."""
        n, zero = report["groups"], report["zero_variance_groups"]
        message = (
            f"{where}: {zero} of {n} groups ({zero / n:.0%}) have no reward preference (all rewards equal within "
            "1e-6, or a single response) and are skipped"
        )
        if zero == n and where.startswith("train") and not args.allow_zero_variance:
            raise UserError(
                f"{message}: {args.loss} would train on nothing (loss 0, zero gradient). Check the rewards "
                "(`metakl reward`), or pass --allow_zero_variance true to run anyway"
            )
        if zero > n / 2:
            warnings.warn(message, UserWarning, stacklevel=3)

    # ---- step normalization -------------------------------------------------------------------------------------

    def _batch_items(self, batch) -> torch.Tensor:
        """What one micro-batch adds to its optimizer step's normalizer: groups with a preference (gdpo, listwise,
        dpo) or selected response tokens (sft); a float64 tensor on the batch's device (no host copy)."""
        mask, rewards = batch["group_mask"].bool(), batch["rewards"]
        if self.args.loss != "sft":
            return informative_groups(rewards, mask).sum().double()
        selected = sft_selection(rewards, mask, self.args.sft_threshold, batch.get("tie_keys"))
        counts = _to_groups(batch["response_attention_mask"].sum(dim=1), mask)
        return (counts * selected).sum().double()

    def get_batch_samples(self, epoch_iterator, num_batches, *args, **kwargs):
        """The step's micro-batches and its normalizer, summed over the micro-batches and all ranks (the step's one
        collective of ours; it stays on the device)."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, *args, **kwargs)
        count = torch.zeros((), dtype=torch.float64, device=self.args.device)
        for b in batch_samples:
            count = count + self._batch_items(b).to(self.args.device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        return batch_samples, count

    # ---- loss -----------------------------------------------------------------------------------------------------

    def _logps(self, model, inputs, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast_context(self.autocast, self.args.device):
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
        """The micro-batch's loss. With `num_items_in_batch` (the step's normalizer from get_batch_samples) the sum of
        its group losses is divided by it and multiplied by the number of ranks; without it, the batch mean."""
        args = self.args
        mode = "train" if model.training else "eval"
        group_mask = inputs["group_mask"]
        rewards = inputs["rewards"]
        tie_keys = inputs.get("tie_keys")
        count = num_items_in_batch if mode == "train" else None
        average = args.logp_average and args.loss != "sft"
        flat_logps, flat_counts = self._logps(model, inputs, average)
        policy = _to_groups(flat_logps, group_mask)
        if args.loss == "sft":
            counts = _to_groups(flat_counts, group_mask)
            loss, metrics = sft_loss(policy, counts, rewards, mask=group_mask, threshold=args.sft_threshold, tie_keys=tie_keys, num_tokens=count)
        else:
            if REF_COLUMN in inputs:
                ref = inputs[REF_COLUMN].to(policy.device, policy.dtype)
                if mode == "train" and not self._step0_checked and self.state.global_step == 0:
                    self._check_reference_at_step0(model, inputs, flat_logps, flat_counts, average)
            else:
                flat_ref = self.reference_logps(model, inputs).to(policy.dtype)
                ref = _to_groups(flat_ref, group_mask)
            common = dict(beta=args.beta, mask=group_mask, tie_keys=tie_keys, num_groups=count)
            if args.loss == "gdpo":
                loss, metrics = gdpo_loss(policy, ref, rewards, pairing=args.pairing, weighting=args.weighting, link=args.link, eps=args.eps,
                                          group_normalization=args.group_normalization, **common)
            elif args.loss == "listwise":
                loss, metrics = listwise_loss(policy, ref, rewards, weighting=args.weighting, eps=args.eps, **common)
            else:
                loss, metrics = dpo_group_loss(policy, ref, rewards, **common)
            if args.rpo_alpha:
                counts = _to_groups(flat_counts, group_mask)
                nll, nll_metrics = best_response_nll(policy, counts, rewards, mask=group_mask, tie_keys=tie_keys,
                                                     num_groups=count, average=average)
                loss = loss + args.rpo_alpha * nll
                metrics = MetricSums(metrics.tensor + nll_metrics.tensor)  # the preference sums have nll_sum 0
        if count is not None and self.accelerator.num_processes > 1:
            loss = loss * self.accelerator.num_processes  # DDP/DeepSpeed/FSDP average gradients over ranks
        self._record(mode, torch.cat([metrics.tensor, flat_counts.sum().double().reshape(1)]))
        return (loss, {"policy_logps": policy.detach()}) if return_outputs else loss

    def _check_reference_at_step0(self, model, inputs, flat_logps, flat_counts, average: bool) -> None:
        """The precomputed column of this first micro-batch's groups against the reference model, before any update:
        a column computed on another device, kernel or model passes the fingerprint but not its numbers. Without a
        separate reference (no ref_model, no adapters) the policy is the reference at step 0: its log-probs of this
        forward serve, at no cost. One host copy and one gather of the disagreements, once per run; every rank refuses
        alike (no rank left waiting in a collective)."""
        self._step0_checked = True
        unwrapped = self.accelerator.unwrap_model(model)
        if self._step0_reference is not None:  # the explicit ref_model the column was computed with, once
            reference, self._step0_reference = self._step0_reference, None
            home = next(reference.parameters()).device
            with torch.no_grad():
                recomputed, _ = self._logps(reference.to(self.args.device), inputs, self.args.logp_average)
            reference.to(home)
        elif self.ref_model is not None or _is_peft(unwrapped):
            recomputed = self.reference_logps(model, inputs)
        else:
            recomputed = flat_logps.detach()
        mask = inputs["group_mask"].bool().cpu()
        stored = inputs[REF_COLUMN].double().cpu()[mask]
        rows = inputs["group_row"].cpu()[:, None].expand_as(mask)[mask] if "group_row" in inputs else torch.full_like(stored, -1, dtype=torch.long)
        precision = step0_precision(self.autocast, parameter_dtype(unwrapped))
        bad = step0_disagreements(stored.tolist(), recomputed.double().cpu().tolist(), flat_counts.cpu().tolist(), rows.tolist(),
                                  precision=precision, average=average)
        checked = len(stored)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            gathered = gather_object([(bad, checked)])
            bad = [b for part, _ in gathered for b in part]
            checked = sum(n for _, n in gathered)
        if bad:
            raise step0_error("train dataset", bad, checked, precision)

    def _record(self, mode: str, values: torch.Tensor) -> None:
        """Add this micro-batch's sums (_RECORDED order) on the device: no host copy, no collective per micro-batch."""
        values = values.detach().to(self.args.device)
        self._sums[mode] = values if self._sums[mode] is None else self._sums[mode] + values

    def _take(self, mode: str) -> dict[str, float]:
        """The sums since the last take, over all ranks: one reduce and one host copy. Every rank calls it (Trainer
        logs and evaluates on every rank), so the collective lines up."""
        sums = self._sums[mode]
        self._sums[mode] = None
        if sums is None:
            sums = torch.zeros(len(_RECORDED), dtype=torch.float64, device=self.args.device)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        return dict(zip(_RECORDED, sums.tolist()))

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

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        """Trainer's loop, then the loss and metrics pooled over the whole evaluation set: eval loss = Σ group
        losses / counted groups (sft: Σ NLL / tokens), not a mean of per-batch means."""
        self._take("eval")
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        sums = self._take("eval")
        denominator = sums["selected_tokens"] if self.args.loss == "sft" else sums["counted_groups"]
        output.metrics[f"{metric_key_prefix}_loss"] = sums["loss_sum"] / denominator if denominator else math.nan
        output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in summarize(sums).items()})
        output.metrics[f"{metric_key_prefix}_response_tokens"] = sums["response_tokens"]
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and not any(k.startswith("eval_") for k in logs):  # a training log: add the interval's metrics
            sums = self._take("train")
            logs.update(summarize(sums))
            if sums["response_tokens"]:
                logs["response_tokens"] = sums["response_tokens"]
        super().log(logs, start_time)


def lora_config(r: int, alpha: int | None = None, dropout: float = 0.05, target_modules: str | list[str] = "all-linear"):
    """A causal-LM LoraConfig (peft) with rank r; alpha defaults to 2r."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM")
