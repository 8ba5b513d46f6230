"""Settings of the `gdpo` verbs: named recipes for the loss, the bounds every numeric setting must respect, and the
script/model/ref-logps argument dataclasses that the command line parses with TRL's TrlParser.

Recipes (`recipe`, default `paper`) fill the loss settings the user did not give; a setting given explicitly (in the
YAML, on the command line or in Python), even one equal to a recipe's value, always wins. The loss fields of
GDPOConfig default to None ("from the recipe") so that "given" needs no bookkeeping.

Bounds: every numeric setting's allowed range is declared once, in BOUNDS (by field name: GDPOConfig's own fields,
those it inherits from transformers' TrainingArguments, TRL's ModelConfig's, ScriptArguments' and
RefLogpsArguments'); `check_bounds` runs in each of these dataclasses' __post_init__. (A table, not field metadata:
HfArgumentParser hands every metadata key to argparse.)
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

from trl import ModelConfig

from metakl.errors import UserError

# ---- recipes ---------------------------------------------------------------------------------------------------------

RECIPE_FIELDS = ("weighting", "pairing", "link", "group_normalization", "rpo_alpha")

RECIPES: dict[str, dict[str, Any]] = {
    # The paper's method in its safe reading (DESIGN.md): 1/A_i as min-max scaled advantages in [eps, 1] (positive,
    # finite, decreasing with advantage), the σ link, the O(G) chain in its tie-aware form (`block`: exactly the
    # paper's adjacent chain when rewards are distinct; with ties every response stays in play instead of one
    # informative pair per group), no NLL term, and the paper's ÷ (G−1) per group.
    "paper": dict(weighting="minmax", pairing="block", link="sigmoid", group_normalization="paper", rpo_alpha=0.0),
    # The formula as printed: β/A_i and the adjacent chain. A_i ≤ 0 makes the weight infinite or negative: see RAW_WARNING.
    "paper-literal": dict(weighting="raw", pairing="adjacent", link="sigmoid", group_normalization="paper", rpo_alpha=0.0),
    # The previous default (docs/results/forgetting.md): GDPO−A (w = 1) plus TRL's RPO term on each group's best
    # response, a group's loss the mean over its informative pairs.
    "low-drift": dict(weighting="none", pairing="block", link="sigmoid", group_normalization="pairs", rpo_alpha=1.0),
}
DEFAULT_RECIPE = "paper"

RAW_WARNING = (
    "weighting raw is the paper's formula as printed, w_i = 1/A_i: A_i = 0 (a response at its group's mean reward) "
    "has an infinite weight (clamped here to 1/eps) and A_i < 0 (every response below the mean) a negative one, which "
    "flips the sign of its term, so minimising the loss pushes the likelihood of the worst responses UP; use it only to "
    "reproduce the formula (the `paper` recipe uses the safe `minmax` weights)"
)


def apply_recipe(cfg) -> list[str]:
    """Fill cfg's loss fields left at None from its recipe; return the names the user gave explicitly.

    The recipe's rpo_alpha applies to `loss: gdpo`; listwise and dpo default to 0 (off) and sft must keep 0."""
    if cfg.recipe not in RECIPES:
        raise bad_setting("recipe", f"one of {', '.join(RECIPES)}", cfg.recipe)
    given = [name for name in RECIPE_FIELDS if getattr(cfg, name) is not None]
    for name, value in RECIPES[cfg.recipe].items():
        if getattr(cfg, name) is None:
            if name == "rpo_alpha" and cfg.loss != "gdpo":
                value = 0.0
            setattr(cfg, name, value)
    if cfg.weighting == "raw" and cfg.loss in ("gdpo", "listwise"):
        warnings.warn(RAW_WARNING, UserWarning, stacklevel=3)
    return given


def loss_settings(cfg) -> dict[str, Any]:
    """Every setting that decides the loss, resolved: printed at start, saved with the run and in the model card."""
    keys = ["recipe", "loss", "beta", *RECIPE_FIELDS, "eps", "logp_average", "max_length", "tie_seed", "sft_threshold",
            "learning_rate", "system_prompt", "response_format"]
    out = {k: getattr(cfg, k) for k in keys}
    out["given"] = list(getattr(cfg, "recipe_given", []))
    return out


# ---- bounds ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """An allowed range: low/high (None = unbounded), open ends excluded; `also` lists extra allowed values (-1)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()

    def holds(self, value: float) -> bool:
        if value in self.also:
            return True
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"a number {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"a number {'<' if self.high_open else '<='} {self.high:g}"
        else:
            text = "a number"
        return " or ".join([*(f"{v:g}" for v in self.also), text])


POSITIVE = Bound(0, low_open=True)
NON_NEGATIVE = Bound(0)
AT_LEAST_1 = Bound(1)
UNIT_OPEN = Bound(0, 1, high_open=True)

BOUNDS: dict[str, Bound] = {
    # GDPOConfig's own
    "beta": POSITIVE,
    "eps": Bound(0, 1, low_open=True),
    "max_length": Bound(2),
    "rpo_alpha": NON_NEGATIVE,
    "logps_chunk_size": NON_NEGATIVE,
    # RefLogpsArguments
    "batch_size": AT_LEAST_1,
    # transformers.TrainingArguments
    "learning_rate": POSITIVE,
    "per_device_train_batch_size": AT_LEAST_1,
    "per_device_eval_batch_size": AT_LEAST_1,
    "gradient_accumulation_steps": AT_LEAST_1,
    "eval_accumulation_steps": AT_LEAST_1,
    "num_train_epochs": POSITIVE,
    "max_steps": Bound(1, also=(-1,)),
    "warmup_steps": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "adam_beta1": UNIT_OPEN,
    "adam_beta2": UNIT_OPEN,
    "adam_epsilon": POSITIVE,
    "max_grad_norm": NON_NEGATIVE,
    "label_smoothing_factor": UNIT_OPEN,
    "logging_steps": POSITIVE,
    "save_steps": POSITIVE,
    "eval_steps": POSITIVE,
    "save_total_limit": NON_NEGATIVE,
    "seed": NON_NEGATIVE,
    "data_seed": NON_NEGATIVE,
    "dataloader_num_workers": NON_NEGATIVE,
    # trl.ModelConfig
    "lora_r": AT_LEAST_1,
    "lora_alpha": POSITIVE,
    "lora_dropout": UNIT_OPEN,
}


def bad_setting(name: str, expected: str, value: Any) -> UserError:
    """A UserError about one setting; `.field` lets the parser say where (YAML file or command line) it came from."""
    error = UserError(f"setting '{name}': expected {expected}, got {value!r}")
    error.field = name
    return error


def check_bounds(obj) -> None:
    """Refuse a numeric field outside its bounds, NaN, or ±inf (None passes: "not set")."""
    for f in fields(obj):
        bound = BOUNDS.get(f.name)
        value = getattr(obj, f.name)
        if bound is None or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad_setting(f.name, bound.describe(), value)
        if not math.isfinite(value) or not bound.holds(value):
            raise bad_setting(f.name, bound.describe(), value)


# ---- the script's own arguments --------------------------------------------------------------------------------------


@dataclass
class ScriptArguments:
    """What to train on, and the checks around it; the model is a ModelArguments, the rest a GDPOConfig."""

    data: str | None = field(default=None, metadata={"help": "MetaKL release: folder, parquet/jsonl file or Hub id"})
    split: str = field(default="train", metadata={"help": "split when --data is a Hub id or dataset folder"})
    eval_data: str | None = field(default=None, metadata={"help": "optional release to evaluate the loss on"})
    ref_model: str | None = field(
        default=None,
        metadata={"help": "reference model (default: the model itself at step 0, frozen; the base model with adapters "
                          "off under LoRA). With a precomputed ref_logps column the column is used and must have been "
                          "computed with this model; refused with LoRA"},
    )
    allow_low_precision_weights: bool = field(
        default=False,
        metadata={"help": "train bfloat16/float16 weights even when most updates at this learning rate are below "
                          "their resolution (refused otherwise; use dtype auto/float32 with bf16 autocast)"},
    )

    def __post_init__(self):
        check_bounds(self)


@dataclass
class ModelArguments(ModelConfig):
    """TRL's ModelConfig (model_name_or_path, dtype, attn_implementation, use_peft and the lora_* fields, fed to
    trl.get_peft_config) with this project's defaults: the embedded SmolLM2, `--model` as a short name, dtype `auto`
    meaning float32 weights + autocast (TRL's `auto` takes the checkpoint's dtype: bf16 weights for most models, too
    coarse for lr 2e-6), and LoRA on all linear layers."""

    model_name_or_path: str | None = field(
        default="smollm2-135m-instruct",
        metadata={"help": "HF folder, Hub id or embedded model name (also: --model)", "aliases": ["--model"]},
    )
    dtype: str | None = field(
        default="auto",
        metadata={"help": "weights dtype. auto (default): float32 weights, plus bf16 (or fp16) autocast where "
                          "metakl.hardware finds it native (a GPU, a CPU with AVX512-BF16/AMX), unless --bf16/--fp16 "
                          "are given | float32 | bfloat16 | float16 (pure low-precision weights: refused when lr is "
                          "below their resolution, see allow_low_precision_weights)",
                  "choices": ["auto", "bfloat16", "float16", "float32"]},
    )
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "LoRA target modules: all-linear (default) or module names"},
    )

    def __post_init__(self):
        super().__post_init__()
        check_bounds(self)
        if self.load_in_8bit or self.load_in_4bit:
            # A gap in this trainer, not in TRL: the quantized base would need bitsandbytes and k-bit preparation.
            raise bad_setting("load_in_8bit" if self.load_in_8bit else "load_in_4bit", "false (quantized training is not supported by gdpo)", True)


@dataclass
class RefLogpsArguments:
    """`gdpo ref-logps` only."""

    out: str | None = field(default=None, metadata={"help": "folder for the release with ref_logps columns added (required)"})
    batch_size: int = field(default=4, metadata={"help": "prompts (groups) per forward batch"})

    def __post_init__(self):
        check_bounds(self)
