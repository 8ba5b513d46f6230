"""`gdpo` command line: `train` (Group Direct Preference Optimization, MetaGDPO arXiv 2511.12113; or the listwise,
DPO and SFT losses on a MetaKL release) and `ref-logps` (precompute the reference)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import typer

from metakl.errors import UserError, run_cli

app = typer.Typer(
    name="gdpo",
    help="Fine-tune a causal LM on a MetaKL release with Group Direct Preference Optimization (MetaGDPO, arXiv "
    "2511.12113; not TRL's GDPO), its listwise variant, or the DPO / SFT baselines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from metakl.hardware import DTYPES  # auto | float32 | bfloat16 | float16


@dataclass
class ScriptArguments:
    """What to train and on what; everything else is a GDPOConfig (TrainingArguments) field."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "HF folder, Hub id or embedded model name"})
    data: str | None = field(default=None, metadata={"help": "MetaKL release: folder, parquet/jsonl file or Hub id"})
    split: str = field(default="train", metadata={"help": "split when --data is a Hub id or dataset folder"})
    eval_data: str | None = field(default=None, metadata={"help": "optional release to evaluate the loss on"})
    ref_model: str | None = field(default=None, metadata={"help": "reference model (default: the model itself, frozen)"})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (float32 weights + bf16/fp16 autocast where the hardware has it natively, else float32) | float32 | bfloat16 | float16 weights"},
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights"})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default 2r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "'all-linear' or comma-separated module names"})


class _Parser:
    """YAML + CLI overrides -> (ScriptArguments, GDPOConfig), errors as UserError naming the source and key."""

    def __init__(self) -> None:
        from transformers import HfArgumentParser

        from gdpo.trainer import GDPOConfig

        class Parser(HfArgumentParser):
            def error(self, message):  # argparse would print usage and exit
                raise UserError(f"bad option: {message}")

        self.parser = Parser((ScriptArguments, GDPOConfig))
        self.known = {f.name for f in fields(ScriptArguments)} | {f.name for f in fields(GDPOConfig)}

    def parse(self, config: Path | None, overrides: list[str]) -> tuple[ScriptArguments, Any]:
        values: dict[str, Any] = {}
        if config is not None:
            values.update(self._yaml(config))
        values.update(self._overrides(overrides))
        values.update(_auto_precision(values))
        argv: list[str] = []
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                argv += [f"--{key}", *map(str, value)]
            elif isinstance(value, dict):
                argv += [f"--{key}", json.dumps(value)]
            else:
                argv += [f"--{key}", str(value)]
        script, cfg = self.parser.parse_args_into_dataclasses(args=argv)
        return script, cfg

    def _check_key(self, key: str, where: str) -> str:
        name = key.replace("-", "_")
        if name not in self.known:
            raise UserError(f"{where}: unknown setting '{key}'; expected a GDPOConfig/TrainingArguments field or one of: model, data, split, eval_data, ref_model, dtype, lora_r, lora_alpha, lora_dropout, lora_target_modules")
        return name

    def _yaml(self, path: Path) -> dict[str, Any]:
        from metakl.io import read_yaml_mapping

        data = read_yaml_mapping(path, "config")
        return {self._check_key(str(k), str(path)): v for k, v in data.items()}

    def _overrides(self, args: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        i = 0
        while i < len(args):
            token = args[i]
            if not token.startswith("--"):
                raise UserError(f"command line: unexpected argument '{token}' (settings are given as --name value)")
            key, _, value = token[2:].partition("=")
            name = self._check_key(key, "command line")
            if not value:
                if i + 1 < len(args) and not args[i + 1].startswith("--"):
                    value = args[i + 1]
                    i += 1
                else:
                    value = "true"
            out[name] = value
            i += 1
        return out


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _auto_precision(values: dict[str, Any]) -> dict[str, Any]:
    """`dtype: auto` (the default): float32 weights, plus bf16 (or fp16) autocast where metakl.hardware picks it —
    a GPU, or a CPU with native bfloat16. Pure bf16 weights would lose updates as small as the paper's lr 2e-6, so
    `auto` means mixed precision; `--bf16` / `--fp16` given explicitly win. Returns the settings to add."""
    dtype = str(values.get("dtype") or "auto")
    if dtype not in DTYPES:
        raise UserError(f"setting 'dtype': expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto" or "bf16" in values or "fp16" in values:
        return {}
    from metakl.hardware import cuda_available, resolve_dtype

    device = "cuda" if cuda_available() and not _truthy(values.get("use_cpu", False)) else "cpu"
    chosen = resolve_dtype("auto", device)
    if chosen == "float32":
        return {}
    typer.echo(f"dtype auto: float32 weights with {chosen} autocast", err=True)
    out: dict[str, Any] = {"bf16": True} if chosen == "bfloat16" else {"fp16": True}
    if device == "cpu":
        out["use_cpu"] = True  # TrainingArguments accepts bf16 without a GPU only with use_cpu
    return out


def _load_model(name: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metakl.llm.models import resolve_chat_model

    if dtype not in DTYPES:
        raise UserError(f"dtype '{dtype}': expected one of {', '.join(DTYPES)}")
    weights = "float32" if dtype == "auto" else dtype  # auto: the autocast part is set by _auto_precision
    path = resolve_chat_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, weights))
    except OSError as exc:
        raise UserError(f"model '{name}': cannot load it ({exc})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("train", context_settings=_CONTEXT)
def train(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="TRL-style YAML: ScriptArguments and GDPOConfig fields."),
) -> None:
    """Train with GDPO (default), listwise, DPO or SFT. Any setting can be given in the YAML or as `--name value`
    (CLI wins).

    Settings: model, data, split, eval_data, ref_model, dtype (auto|float32|bfloat16|float16),
    lora_r/lora_alpha/lora_dropout/lora_target_modules, and every GDPOConfig field: loss (gdpo|listwise|dpo|sft), beta,
    pairing (block|adjacent|all), weighting (none|minmax|raw), link (sigmoid|logsigmoid), eps, tie_seed,
    allow_zero_variance, max_length, logp_average, rpo_alpha (adds that × the NLL of each group's best response),
    sft_threshold, system_prompt, response_format, plus all of
    transformers' TrainingArguments (output_dir, learning_rate, num_train_epochs, per_device_train_batch_size =
    prompts per micro-batch, gradient_accumulation_steps, bf16, logging_steps, save_steps, report_to, ...).

    Examples:

      gdpo train --config examples/gdpo/gdpo_smollm2.yaml

      gdpo train --config x.yaml --data runs/release --pairing block --lora_r 16 --learning_rate 1e-5

      accelerate launch --config_file examples/gdpo/accelerate/deepspeed_zero2.yaml -m gdpo.cli train --config x.yaml
    """
    from gdpo.data import load_release
    from gdpo.trainer import GDPOTrainer, lora_config

    script, cfg = _Parser().parse(config, list(ctx.args))
    if not script.data:
        raise UserError("no training data: set `data` in the YAML or pass --data RELEASE")
    train_ds = load_release(script.data, script.split)
    eval_ds = load_release(script.eval_data, script.split) if script.eval_data else None
    model, tokenizer = _load_model(script.model, script.dtype)
    ref_model = _load_model(script.ref_model, script.dtype)[0] if script.ref_model else None
    peft_config = None
    if script.lora_r > 0:
        targets = script.lora_target_modules
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        peft_config = lora_config(script.lora_r, script.lora_alpha, script.lora_dropout, targets)
    trainer = GDPOTrainer(model, cfg, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer, ref_model=ref_model, peft_config=peft_config)
    report = trainer.data_reports["train"]
    reference = "precomputed" if "ref_logps" in train_ds.column_names else ("adapters off" if peft_config else "frozen copy")
    zero = report["zero_variance_groups"]
    typer.echo(
        f"{report['groups']} groups ({zero} = {zero / report['groups']:.0%} without a reward preference"
        f"{', skipped' if cfg.loss != 'sft' else ''}), {report['responses']} responses "
        f"({report['truncated_responses']} truncated to max_length {cfg.max_length}, {report['dropped_long_prompts']} prompts too long, "
        f"{report['dropped_responses']} responses without text/reward); loss {cfg.loss}"
        + (f", reference {reference}" if cfg.loss != "sft" else "")
        + f"; precision: {script.dtype} weights" + (", bf16 autocast" if cfg.bf16 else ", fp16 autocast" if cfg.fp16 else ""),
        err=True,
    )
    result = trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    trainer.save_model(cfg.output_dir)
    typer.echo(json.dumps({"output_dir": cfg.output_dir, "global_step": result.global_step, "train_loss": result.training_loss}))


@app.command("ref-logps", context_settings=_CONTEXT)
def ref_logps(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the release with `ref_logps` columns added."),
    config: Path = typer.Option(None, "--config", "-c", help="The training YAML: model, data, max_length, template settings are taken from it."),
    batch_size: int = typer.Option(4, help="Prompts (groups) per forward batch."),
) -> None:
    """Compute reference log-probs once (no gradients) and store them with a fingerprint of the model's weights,
    dtype/autocast, tokenizer, max_length, template and each row's tokens and rewards; `gdpo train` on the output
    skips the reference forward and refuses a mismatch, naming what differs.

    Use the same config as for training so the fingerprints agree. Examples:

      gdpo ref-logps --config x.yaml --out runs/release-ref

      gdpo ref-logps --model smollm2-135m-instruct --data runs/release --max_length 1024 --out runs/release-ref
    """
    import torch

    from gdpo.data import load_release
    from gdpo.reference import add_ref_logps, args_autocast
    from metakl.io import save_stage

    script, cfg = _Parser().parse(config, list(ctx.args))
    if not script.data:
        raise UserError("no data: set `data` in the YAML or pass --data RELEASE")
    release = load_release(script.data, script.split)
    model, tokenizer = _load_model(script.model, script.dtype)
    device = "cuda" if torch.cuda.is_available() and not cfg.use_cpu else "cpu"
    model.to(device)
    ds, report = add_ref_logps(
        release,
        model,
        tokenizer,
        max_length=cfg.max_length,
        system_prompt=cfg.system_prompt,
        response_format=cfg.response_format,
        average=cfg.logp_average,
        batch_size=batch_size,
        chunk_size=cfg.logps_chunk_size,
        shared_prompt=cfg.shared_prompt,
        autocast=args_autocast(cfg),
    )
    report["model"] = script.model
    save_stage(ds, out, report, "ref_logps_report.json")
    typer.echo(json.dumps({"out": str(out), **{k: v for k, v in report.items() if k != "fingerprint"}}))


from gdpo.eval.cli import eval_command  # noqa: E402  (`gdpo eval`: lm-evaluation-harness suites, see gdpo/eval/)

app.command("eval")(eval_command)


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
