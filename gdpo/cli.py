"""`gdpo` command line: `train` (Group Direct Preference Optimization, MetaGDPO arXiv 2511.12113; or the listwise,
DPO and SFT losses on a MetaKL release), `ref-logps` (precompute the reference) and `eval`.

`train` and `ref-logps` parse their settings with TRL's TrlParser: a `--config` YAML whose keys are field names, then
`--name value` flags (CLI wins; `--name-with-dashes` works too), over gdpo.config.ScriptArguments, TRL's ModelConfig
(gdpo.config.ModelArguments: model, dtype, LoRA via trl.get_peft_config) and gdpo.trainer.GDPOConfig (a
TrainingArguments). `gdpo train --help` lists every field with its help.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import typer

from metakl.errors import UserError, run_cli
from metakl.hardware import DTYPES  # auto | float32 | bfloat16 | float16

app = typer.Typer(
    name="gdpo",
    help="Fine-tune a causal LM on a MetaKL release with Group Direct Preference Optimization (MetaGDPO, arXiv "
    "2511.12113; not TRL's GDPO), its listwise variant, or the DPO / SFT baselines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SETTINGS_FILE = "gdpo_settings.json"
LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
               "lora_modules_to_save", "use_rslora", "use_dora")
_ALIASES = {"model": "model_name_or_path", "c": "config", "o": "out"}  # short names -> field names
_STALLED_REFUSE, _STALLED_WARN = 0.5, 0.01  # shares of trained weights a step cannot move (gdpo.precision)


def _types(verb: str) -> tuple:
    from gdpo.config import ModelArguments, RefLogpsArguments, ScriptArguments
    from gdpo.trainer import GDPOConfig

    return (ScriptArguments, ModelArguments, GDPOConfig) + ((RefLogpsArguments,) if verb == "ref-logps" else ())


class Settings:
    """TrlParser over the verb's dataclasses: YAML defaults + CLI flags, each error one UserError naming its source
    (the YAML file or the command line) and field. `given` holds the names set explicitly (YAML or CLI)."""

    def __init__(self, verb: str, description: str = ""):
        from trl import TrlParser

        class Parser(TrlParser):
            def error(self, message):  # argparse would print usage and exit 2 with several lines
                raise UserError(message)

        self.verb = verb
        # allow_abbrev off: `--model` must not silently mean `--model_revision`, nor `--learning-rat` anything.
        self.parser = Parser(_types(verb), prog=f"gdpo {verb}", description=description, allow_abbrev=False)
        self.dests = {a.dest for a in self.parser._actions} - {"help"}
        self.yaml_path: str | None = None
        self.from_yaml: dict[str, Any] = {}
        self.from_cli: dict[str, str] = {}

    @property
    def given(self) -> set[str]:
        return set(self.from_yaml) | set(self.from_cli)

    def help(self) -> str:
        return self.parser.format_help()

    def parse(self, argv: list[str]) -> tuple:
        # TrlParser.parse_args_and_config in ten lines, for one gap: it opens and parses the YAML itself, so a missing
        # file, a YAML syntax error or a non-mapping end in a traceback (FileNotFoundError, yaml errors, ValueError),
        # and an unknown key in "Unknown arguments from config file: [...]" without the file or the key's source;
        # metakl's read_yaml_mapping gives one line with file and line. The rest is TrlParser's own mechanism: YAML
        # values become parser defaults (set_defaults_with_config, `env:` exported), flags are parsed over them.
        argv = self._take_config(list(argv))
        self.from_cli = self._scan(argv)
        if self.yaml_path:
            self.from_yaml = self._read_yaml(self.yaml_path)
            self.parser.set_defaults_with_config(**self.from_yaml)
        self.parser.set_defaults_with_config(**_auto_precision(self.from_yaml | self.from_cli))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                parsed = self.parser.parse_args_into_dataclasses(args=argv)
        except UserError as exc:
            raise UserError(self._where(exc)) from None
        except ValueError as exc:  # TrainingArguments / ModelConfig checks of their own
            raise UserError(f"{self._source_of(None)}: {str(exc).strip().splitlines()[0]}") from None
        raw_said = False
        for w in caught:  # the recipe's raw-weighting warning as one line, once; any other warning as usual
            if issubclass(w.category, UserWarning) and str(w.message).startswith("weighting raw"):
                if not raw_said:
                    typer.secho(f"warning: {w.message}", err=True, fg="yellow")
                raw_said = True
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        model_args = parsed[1]
        lora = sorted(k for k in self.given if k in LORA_FIELDS)
        if lora and not model_args.use_peft:
            raise UserError(f"{self._source_of(lora[0])}: setting {', '.join(lora)} given but use_peft is false, so LoRA is "
                            "off and all weights would train; add --use_peft true (TRL's switch), or drop them")
        return parsed

    # -- sources ---------------------------------------------------------------------------------------------------

    def _take_config(self, argv: list[str]) -> list[str]:
        out, i = [], 0
        while i < len(argv):
            token = argv[i]
            if token in ("--config", "-c"):
                if i + 1 >= len(argv):
                    raise UserError("command line: --config needs a YAML file")
                self.yaml_path, i = argv[i + 1], i + 2
                continue
            if token.startswith("--config="):
                self.yaml_path = token.split("=", 1)[1]
            elif token == "-o":  # ref-logps: --out's short form
                out.append("--out")
            else:
                out.append(token)
            i += 1
        return out

    def _scan(self, argv: list[str]) -> dict[str, str]:
        """The settings given on the command line (dest -> raw value); unknown names refused with the list hint."""
        found: dict[str, str] = {}
        for i, token in enumerate(argv):
            if not token.startswith("-") or re.fullmatch(r"-\d.*", token):  # a value (maybe negative); argparse checks the rest
                continue
            name, _, value = token.partition("=")
            action = self.parser._option_string_actions.get(name)
            if action is None:
                raise UserError(f"command line: unknown setting '{name}'; {self._hint()}")
            found[action.dest] = value or (argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "true")
        return found

    def _read_yaml(self, path: str) -> dict[str, Any]:
        import os

        from metakl.io import read_yaml_mapping

        data = read_yaml_mapping(path, "config")
        env = data.pop("env", None)  # TrlParser's convention: environment variables for the run
        if env is not None:
            if not isinstance(env, dict):
                raise UserError(f"{path}: field 'env': expected a mapping of environment variables, got {type(env).__name__}")
            os.environ.update({str(k): str(v) for k, v in env.items()})
        out = {}
        for key, value in data.items():
            name = _ALIASES.get(str(key), str(key).replace("-", "_"))
            if name not in self.dests:
                raise UserError(f"{path}: unknown setting '{key}'; {self._hint()}")
            out[name] = value
        return out

    def _hint(self) -> str:
        return f"see `gdpo {self.verb} --help` for every setting (ScriptArguments, TRL's ModelConfig, GDPOConfig/TrainingArguments)"

    def _source_of(self, name: str | None) -> str:
        """Where a setting came from: the YAML file (when it set it and the command line did not) or the command line."""
        if name is not None and name in self.from_yaml and name not in self.from_cli:
            return str(self.yaml_path)
        if name is None and self.yaml_path:
            return f"{self.yaml_path} + command line"
        return "command line"

    def _where(self, exc: UserError) -> str:
        name = getattr(exc, "field", None)
        if name is None:  # argparse: "argument --name/--name-dashed: invalid float value: 'x'"
            match = re.search(r"argument --([\w-]+)", str(exc))
            name = match.group(1).replace("-", "_") if match else None
            name = "model_name_or_path" if name == "model" else name
        return f"{self._source_of(name)}: {exc}"


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _auto_precision(values: dict[str, Any]) -> dict[str, Any]:
    """`dtype: auto` (the default): float32 weights, plus bf16 (or fp16) autocast where metakl.hardware picks it —
    a GPU, or a CPU with native bfloat16. Pure bf16 weights would lose updates as small as the paper's lr 2e-6, so
    `auto` means mixed precision; `--bf16` / `--fp16` given explicitly win. Returns the defaults to set."""
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


def _load_model(model_args, name: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metakl.llm.models import resolve_chat_model

    name = name or model_args.model_name_or_path
    weights = "float32" if model_args.dtype == "auto" else model_args.dtype  # auto: autocast set by _auto_precision
    path = resolve_chat_model(name)
    kwargs = {"dtype": getattr(torch, weights), "revision": model_args.model_revision}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"model '{name}': cannot load it ({str(exc).strip().splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _check_weight_precision(model, model_args, cfg, allow: bool) -> None:
    """Refuse (or warn about) bf16/fp16 weights that a step of cfg.learning_rate mostly cannot change."""
    from gdpo.precision import stalled_share

    share = stalled_share(model, cfg.learning_rate)
    if share <= _STALLED_WARN:
        return
    message = (
        f"dtype {model_args.dtype}: a step of learning_rate {cfg.learning_rate:g} is below half a unit in the last place "
        f"of {share:.1%} of the trained weights, so they would not change; use dtype auto or float32 (float32 master "
        f"weights, with --bf16 true for bf16 autocast), or a larger learning rate"
    )
    if share > _STALLED_REFUSE and not allow:
        raise UserError(f"{message}, or --allow_low_precision_weights true to train anyway")
    typer.secho(f"warning: {message}", err=True, fg="yellow")


def _describe(settings: dict[str, Any]) -> str:
    given = set(settings["given"])
    parts = [f"{k} {settings[k]}{' (given)' if k in given else ''}" for k in settings if k not in ("recipe", "given")]
    return f"recipe {settings['recipe']}: " + ", ".join(parts)


def _write_model_card(trainer, output_dir: str, base_model: str, data: str, settings: dict[str, Any]) -> None:
    """TRL's model card (README.md in output_dir) plus the resolved loss settings."""
    from trl.trainer.utils import generate_model_card

    card = generate_model_card(
        base_model=base_model, model_name=Path(output_dir).name, hub_model_id=Path(output_dir).name, dataset_name=data,
        tags=["gdpo", "metagdpo", f"recipe-{settings['recipe']}"], wandb_url=None, trackio_url=None,
        trainer_name="GDPO (gdpo.trainer.GDPOTrainer)", paper_title="MetaGDPO: Alleviating Catastrophic Forgetting "
        "with Metacognitive Knowledge through Group Direct Preference Optimization", paper_id="2511.12113",
    )
    text = str(card) + "\n\n## GDPO settings\n\nResolved at the start of training (`given` = set explicitly, the rest " \
        "from the recipe or the defaults):\n\n```json\n" + json.dumps(settings, indent=2) + "\n```\n"
    (Path(output_dir) / "README.md").write_text(text)


class _CleanOutputDir:
    """Remove output_dir when this command created it and fails before training starts: no empty run left behind."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.existed = self.path is None or self.path.exists()
        self.started = False

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is not None and not self.started and not self.existed and self.path.is_dir():
            shutil.rmtree(self.path, ignore_errors=True)
        return False


_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}

def _parse_or_help(ctx: typer.Context, verb: str, help_text: str) -> tuple | None:
    """The verb's settings (its dataclasses, parsed), or None once its help is printed for -h/--help."""
    settings = Settings(verb, help_text)
    if any(a in ("-h", "--help") for a in ctx.args):
        typer.echo(settings.help())
        return None
    return settings.parse(ctx.args)


_TRAIN_HELP = """Train with GDPO (default), listwise, DPO or SFT. Settings come from a TRL-style `--config` YAML and
`--name value` flags (CLI wins; `--name-with-dashes` works too). With no loss flags the `paper` recipe runs: minmax
weights, sigmoid link, block (tie-aware O(G)) pairing, rpo_alpha 0, group_normalization paper. Examples:
`gdpo train --config examples/gdpo/gdpo_smollm2.yaml`;
`gdpo train --config x.yaml --data runs/release --recipe low-drift --use_peft true --lora_r 16`;
`accelerate launch --config_file examples/gdpo/accelerate/one_gpu.yaml -m gdpo.cli train --config x.yaml`."""


@app.command("train", context_settings=_CONTEXT, add_help_option=False, help=_TRAIN_HELP)
def train(ctx: typer.Context) -> None:
    from trl import get_peft_config

    from gdpo.config import loss_settings
    from gdpo.data import load_release
    from gdpo.trainer import GDPOTrainer

    parsed = _parse_or_help(ctx, "train", _TRAIN_HELP)
    if parsed is None:
        return
    script, model_args, cfg = parsed
    if not script.data:
        raise UserError("no training data: set `data` in the YAML or pass --data RELEASE")
    with _CleanOutputDir(cfg.output_dir) as cleanup:
        train_ds = load_release(script.data, script.split)
        eval_ds = load_release(script.eval_data, script.split) if script.eval_data else None
        model, tokenizer = _load_model(model_args)
        ref_model = _load_model(model_args, script.ref_model)[0] if script.ref_model else None
        peft_config = get_peft_config(model_args)
        trainer = GDPOTrainer(model, cfg, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                              ref_model=ref_model, peft_config=peft_config)
        _check_weight_precision(trainer.model, model_args, cfg, script.allow_low_precision_weights)
        report = trainer.data_reports["train"]
        run = loss_settings(cfg)
        run.update(model=model_args.model_name_or_path, ref_model=script.ref_model, data=script.data,
                   reference=trainer.reference_source, dtype=model_args.dtype,
                   autocast="bf16" if cfg.bf16 else "fp16" if cfg.fp16 else "none",
                   lora=peft_config.to_dict() if peft_config is not None else None)
        zero = report["zero_variance_groups"]
        typer.echo(_describe(loss_settings(cfg)), err=True)
        typer.echo(
            f"{report['groups']} groups ({zero} = {zero / report['groups']:.0%} without a reward preference"
            f"{', skipped' if cfg.loss != 'sft' else ''}), {report['responses']} responses "
            f"({report['truncated_responses']} truncated to max_length {cfg.max_length}, {report['dropped_long_prompts']} prompts too long, "
            f"{report['dropped_responses']} responses without text/reward); loss {cfg.loss}"
            + (f", reference: {trainer.reference_source}" if cfg.loss != "sft" else "")
            + f"; precision: {model_args.dtype} weights" + (", bf16 autocast" if cfg.bf16 else ", fp16 autocast" if cfg.fp16 else ""),
            err=True,
        )
        if trainer.is_world_process_zero():
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.output_dir) / SETTINGS_FILE).write_text(json.dumps(run, indent=2, default=str) + "\n")
        cleanup.started = True
    result = trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    trainer.save_model(cfg.output_dir)
    if trainer.is_world_process_zero():
        _write_model_card(trainer, cfg.output_dir, model_args.model_name_or_path, script.data, run)
    typer.echo(json.dumps({"output_dir": cfg.output_dir, "global_step": result.global_step, "train_loss": result.training_loss}))


_REF_HELP = """Compute reference log-probs once (no gradients) and store them with a fingerprint of the model's
weights, dtype/autocast, tokenizer, max_length, template and each row's tokens and rewards; `gdpo train` on the output
skips the reference forward and refuses a mismatch, naming what differs. Use the training config (same model or
ref_model, dtype, max_length, template) so the fingerprints agree: the reference is `ref_model` when set, else
`model`. Examples: `gdpo ref-logps --config x.yaml --out runs/release-ref`;
`gdpo ref-logps --model smollm2-135m-instruct --data runs/release --max_length 1024 --batch_size 8 --out runs/release-ref`."""


@app.command("ref-logps", context_settings=_CONTEXT, add_help_option=False, help=_REF_HELP)
def ref_logps(ctx: typer.Context) -> None:
    import torch

    from gdpo.data import load_release
    from gdpo.reference import add_ref_logps, args_autocast
    from metakl.io import save_stage

    parsed = _parse_or_help(ctx, "ref-logps", _REF_HELP)
    if parsed is None:
        return
    script, model_args, cfg, ref_args = parsed
    if not ref_args.out:
        raise UserError("no output folder: pass --out DIR (the release with ref_logps columns is written there)")
    if not script.data:
        raise UserError("no data: set `data` in the YAML or pass --data RELEASE")
    release = load_release(script.data, script.split)
    name = script.ref_model or model_args.model_name_or_path  # the model that is the reference of the training run
    model, tokenizer = _load_model(model_args, name)
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
        batch_size=ref_args.batch_size,
        chunk_size=cfg.logps_chunk_size,
        shared_prompt=cfg.shared_prompt,
        autocast=args_autocast(cfg),
    )
    report["model"] = name
    save_stage(ds, ref_args.out, report, "ref_logps_report.json")
    typer.echo(json.dumps({"out": str(ref_args.out), **{k: v for k, v in report.items() if k != "fingerprint"}}))


from gdpo.eval.cli import eval_command  # noqa: E402  (`gdpo eval`: lm-evaluation-harness suites, see gdpo/eval/)

app.command("eval")(eval_command)


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
