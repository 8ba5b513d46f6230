"""Suites: YAML lists of tasks with sample sizes, seeds, few-shot and generation settings.

```yaml
name: cpu-small
description: one line
defaults: {n: 50, seed: 0}              # applied to every task entry (an entry's own keys win)
tasks:
  - task: gsm8k                         # a shipped task (gdpo/eval/tasks/gsm8k.yaml) or a path to an lm-eval YAML
    n: 20                               # items (a seeded random sample of the task's rows; omit for all)
    max_gen_toks: 256                   # generation tasks: new-token limit
    temperature: 0.6                    # generation tasks: sampling (default 0 = greedy), with top_p: 0.95
    samples: 8                          # generations per item: acc = avg@8, pass_at_k (pass_k, default 8), maj_at_k
    until: ["<|im_end|>"]               # stop sequences (default: the task YAML's)
    thinking: auto                      # chat tasks: the template's thinking switch, on | off | auto (its default)
    num_fewshot: 0
    holdout: {salt: s, fraction: 0.2, part: eval}   # keep one side of a hash split (gdpo.eval.data.part_of)
    path: gsm8k/train.jsonl             # another file of the same layout (relative to the data root)
  - nll: gsm8k_gold                     # native: mean per-token NLL of a continuation (+ KL to the baseline)
    data: {path: gsm8k/train.jsonl, preset: gsm8k}
    prompt: question                    # field for the prompt (chat template applied), or null for plain text
    continuation: meta.answer           # field for the scored text
    clean: gsm8k                        # optional: strip GSM8K's <<calc>> annotations and '#### n' line
  - selfgen: drift_alpaca               # native: the baseline's own greedy answers, NLL + KL to the baseline
    data: {path: refusal_direction_splits/harmless_test.json, preset: refusal-harmful}
    max_gen_toks: 128
  - unavailable: AIME24                 # a benchmark the suite cannot run here, with the reason
    domain: math
    reason: not in ../shared/data; the Hub is unreachable
```

Every task entry may also carry `paper: NAME` (the paper's benchmark it stands for) and `note:` (a substitution),
`hub: {id, config, split}` (the Hub dataset read when the local file is absent) and `when_missing: unavailable` (list
the benchmark as unavailable, saying what to provide, when neither its file nor the Hub is there; default: error).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metakl.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
TASKS_DIR = PACKAGE_DIR / "tasks"
SUITES_DIR = PACKAGE_DIR / "suites"
DOMAINS = ("math", "general", "safety")
_ENTRY_KEYS = {
    "task", "nll", "selfgen", "unavailable", "n", "seed", "max_gen_toks", "num_fewshot", "holdout", "path", "preset",
    "mapping", "keep", "paper", "note", "domain", "reason", "data", "prompt", "continuation", "clean", "chat", "title",
    "batch_size", "name", *("temperature", "top_p", "samples", "pass_k", "until", "thinking"), "hub", "when_missing",
}
DECODING_KEYS = ("temperature", "top_p", "samples", "pass_k", "until", "max_gen_toks", "thinking")
THINKING = ("on", "off", "auto")  # the chat template's enable_thinking: True, False, not passed (the template's default)


def thinking_value(value: Any, where: str) -> str:
    """on / off / auto from a suite entry or --thinking; YAML reads a bare on/off as a boolean."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in THINKING:
        raise UserError(f"{where}: thinking: expected one of {', '.join(THINKING)}, got {value!r}")
    return str(value)


@dataclass
class TaskSpec:
    """One suite entry, resolved: an lm-eval task config, a native drift/NLL task, or an unavailable benchmark."""

    name: str
    kind: str  # lm_eval | nll | selfgen | unavailable
    domain: str
    title: str
    primary: str = ""
    higher_is_better: bool = True
    chat: bool = False
    num_fewshot: int = 0
    config: dict[str, Any] | None = None  # lm-eval task config (lm_eval kind)
    native: dict[str, Any] = field(default_factory=dict)  # nll/selfgen settings
    paper: str | None = None
    note: str | None = None
    reason: str | None = None
    decoding: dict[str, Any] = field(default_factory=dict)  # generation tasks: temperature, top_p, samples, ...


@dataclass
class Suite:
    name: str
    description: str
    tasks: list[TaskSpec]

    def runnable(self) -> list[TaskSpec]:
        return [t for t in self.tasks if t.kind != "unavailable"]


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def list_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def task_yaml(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    shipped = TASKS_DIR / f"{name}.yaml"
    if shipped.exists():
        return shipped
    raise UserError(f"unknown task {name!r}: not a shipped task ({', '.join(list_tasks())}) nor a YAML file")


def load_task_config(name: str) -> dict[str, Any]:
    """A shipped (or user) lm-eval task YAML with its !function hooks resolved, via lm-eval's own loader."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        return load_yaml(task_yaml(name), resolve_func=True)
    except (ValueError, ImportError, AttributeError) as exc:
        raise UserError(f"task {name}: cannot load its YAML ({exc})") from None


def load_suite(name_or_path: str, *, n: int | None = None, only: list[str] | None = None, seed: int | None = None,
               data_root: str | Path | None = None, max_gen_toks: int | None = None, thinking: str | None = None) -> Suite:
    """Read a suite (shipped name or YAML path). `n`/`seed` override every entry's, `max_gen_toks` every generation
    task's new-token budget (a GPU suite's on a CPU), `thinking` every chat generation task's thinking switch; `only`
    keeps the named tasks.
    An entry with `when_missing: unavailable` whose data is neither a local file under `data_root` nor a reachable
    Hub dataset becomes an unavailable benchmark, with the reason saying what to provide."""
    from metakl.io import read_yaml_mapping

    p = Path(name_or_path)
    path = p if p.suffix in (".yaml", ".yml") else SUITES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise UserError(f"unknown suite {name_or_path!r}: shipped suites are {', '.join(list_suites())}, or give a YAML path")
    raw = read_yaml_mapping(path, "suite")
    entries = raw.get("tasks")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: `tasks` must be a non-empty list")
    defaults = dict(raw.get("defaults") or {})
    tasks = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UserError(f"{path}: tasks[{i}] must be a mapping, got {entry!r}")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise UserError(f"{path}: tasks[{i}]: unknown key(s) {', '.join(sorted(unknown))}; expected some of {', '.join(sorted(_ENTRY_KEYS))}")
        merged = {**defaults, **entry}
        if n is not None:
            merged["n"] = n
        if seed is not None:
            merged["seed"] = seed
        tasks.append(_resolve(merged, f"{path}: tasks[{i}]", data_root))
    if max_gen_toks is not None:
        if max_gen_toks < 1:
            raise UserError(f"--max-gen-toks: expected a positive number of tokens, got {max_gen_toks}")
        for t in tasks:
            if t.decoding:
                t.decoding["max_gen_toks"] = t.config["generation_kwargs"]["max_gen_toks"] = max_gen_toks
            elif t.kind == "selfgen":
                t.native["max_gen_toks"] = max_gen_toks
    if thinking is not None:
        value = thinking_value(thinking, "--thinking")
        for t in tasks:
            if t.decoding and t.chat:  # without the chat template there is no switch to set
                t.decoding["thinking"] = value
    names = [t.name for t in tasks]
    dup = {x for x in names if names.count(x) > 1}
    if dup:
        raise UserError(f"{path}: task names used twice: {', '.join(sorted(dup))} (give one of them `name:`)")
    if only:
        missing = [o for o in only if o not in names]
        if missing:
            raise UserError(f"--tasks: {', '.join(missing)} not in suite {raw.get('name', path.stem)} ({', '.join(names)})")
        tasks = [t for t in tasks if t.name in only]
    return Suite(str(raw.get("name", path.stem)), str(raw.get("description", "")), tasks)


def _data_kwargs(e: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    kw = dict(base or {})
    for k in ("path", "preset", "mapping", "keep", "holdout", "n", "seed", "hub"):
        if k in e and e[k] is not None:
            kw[k] = e[k]
    if "preset" in e:
        kw.pop("mapping", None)
    if "mapping" in e:
        kw.pop("preset", None)
    return kw


def _resolve(e: dict[str, Any], where: str, data_root: str | Path | None = None) -> TaskSpec:
    kinds = [k for k in ("task", "nll", "selfgen", "unavailable") if k in e]
    if len(kinds) != 1:
        raise UserError(f"{where}: give exactly one of task / nll / selfgen / unavailable")
    kind = kinds[0]
    if kind == "unavailable":
        domain = e.get("domain", "")
        if domain not in DOMAINS:
            raise UserError(f"{where}: unavailable entries need domain: one of {', '.join(DOMAINS)}")
        return TaskSpec(name=str(e["unavailable"]), kind="unavailable", domain=domain, title=str(e.get("paper") or e["unavailable"]),
                        paper=e.get("paper") or str(e["unavailable"]), reason=str(e.get("reason", "not available offline")))
    if kind == "task":
        cfg = copy.deepcopy(load_task_config(str(e["task"])))
        meta = dict(cfg.get("metadata") or {})
        name = str(e.get("name") or Path(str(e["task"])).stem)
        cfg["dataset_kwargs"] = _data_kwargs(e, cfg.get("dataset_kwargs"))
        cfg["dataset_kwargs"]["gdpo_task"] = name
        cfg["task"] = f"gdpo_{name}"
        chat = bool(e.get("chat", meta.get("chat", False)))
        decoding = _decoding(e, cfg, f"{where}: task {name}", chat=chat)
        domain = e.get("domain") or meta.get("domain")
        if domain not in DOMAINS:
            raise UserError(f"{where}: task {name} has no domain (metadata.domain in its YAML: one of {', '.join(DOMAINS)})")
        if e.get("when_missing", "error") not in ("error", "unavailable"):
            raise UserError(f"{where}: when_missing: expected error or unavailable, got {e['when_missing']!r}")
        if e.get("when_missing") == "unavailable":
            from gdpo.eval.data import data_source

            kw = cfg["dataset_kwargs"]
            try:
                data_source(name, kw.get("path"), kw.get("hub"), data_root, kw.get("preset"))
            except UserError as exc:  # neither the local file nor the Hub: listed as unavailable, with what to provide
                return TaskSpec(name=name, kind="unavailable", domain=domain, paper=e.get("paper"),
                                title=str(e.get("title") or meta.get("title") or name), note=e.get("note"),
                                reason=str(exc).removeprefix(f"task {name}: "))
        return TaskSpec(
            name=name, kind="lm_eval", domain=domain, title=str(e.get("title") or meta.get("title") or name),
            primary=str(meta.get("primary", "acc")), higher_is_better=bool(meta.get("higher_is_better", True)),
            chat=chat, num_fewshot=int(e.get("num_fewshot") or 0), config=cfg,
            paper=e.get("paper"), note=e.get("note"), decoding=decoding,
        )
    name = str(e[kind])
    data = e.get("data")
    if not isinstance(data, dict) or "path" not in data:
        raise UserError(f"{where}: {kind} {name} needs data: {{path: ..., preset: ...}}")
    data = _data_kwargs({**data, **{k: e[k] for k in ("n", "seed", "holdout") if k in e}})
    native = {
        "data": data,
        "prompt": e.get("prompt", "question"),
        "continuation": e.get("continuation", "answer_text"),
        "clean": e.get("clean"),
        "chat": bool(e.get("chat", True)),
        "max_gen_toks": int(e.get("max_gen_toks", 128)),
    }
    if kind == "selfgen" and not native["prompt"]:
        raise UserError(f"{where}: selfgen {name} needs a prompt field")
    return TaskSpec(name=name, kind=kind, domain="drift", title=str(e.get("title") or name), primary="nll_per_token",
                    higher_is_better=False, chat=native["chat"], native=native, paper=e.get("paper"), note=e.get("note"))


def _decoding(e: dict[str, Any], cfg: dict[str, Any], where: str, *, chat: bool = True) -> dict[str, Any]:
    """Merge an entry's decoding settings into a generation task's lm-eval config (in place) and return them all.

    temperature (0: greedy), top_p, max_gen_toks and until (stop sequences) go to lm-eval's generation_kwargs;
    samples: k > 1 generations per item (lm-eval's `repeats`, all k kept by its take_first_k filter), scored as
    avg@k (acc), unbiased pass@k (pass_at_k, k = pass_k, default samples) and, for math, maj@k (maj_at_k).
    thinking (on/off/auto) is the chat template's enable_thinking, set by the runner per group of tasks.
    """
    from gdpo.eval import hooks

    given = {k: e[k] for k in DECODING_KEYS if e.get(k) is not None}
    if cfg.get("output_type") != "generate_until":
        if given:
            raise UserError(f"{where}: {', '.join(given)} are for generation tasks; this one is {cfg.get('output_type')}")
        return {}
    gen = dict(cfg.get("generation_kwargs") or {})
    try:
        temperature = float(given.get("temperature", gen.get("temperature", 0.0)))
        top_p = float(given.get("top_p", gen.get("top_p", 1.0)))
        samples = int(given.get("samples", 1))
        pass_k = int(given.get("pass_k", samples))
        max_gen_toks = int(given.get("max_gen_toks", gen.get("max_gen_toks", 256)))
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: decoding settings must be numbers ({exc})") from None
    until = given.get("until", gen.get("until", []))
    until = [until] if isinstance(until, str) else until
    if not isinstance(until, list) or not all(isinstance(u, str) and u for u in until):
        raise UserError(f"{where}: until must be a stop string or a list of them, got {until!r}")
    if temperature < 0 or not 0 < top_p <= 1 or max_gen_toks < 1:
        raise UserError(f"{where}: expected temperature >= 0, 0 < top_p <= 1, max_gen_toks >= 1; got {temperature}, {top_p}, {max_gen_toks}")
    if samples < 1 or not 1 <= pass_k <= samples:
        raise UserError(f"{where}: expected samples >= 1 and 1 <= pass_k <= samples, got samples {samples}, pass_k {pass_k}")
    thinking = thinking_value(given.get("thinking", "auto"), where)
    if thinking != "auto" and not chat:
        raise UserError(f"{where}: thinking: {thinking} is a chat-template switch, and this task runs without the chat template (chat: false)")
    if samples > 1 and temperature == 0:
        raise UserError(f"{where}: samples {samples} with temperature 0 gives {samples} copies of the greedy answer; set temperature > 0")
    gen.update(until=until, max_gen_toks=max_gen_toks, do_sample=temperature > 0)
    if temperature > 0:
        gen.update(temperature=temperature, top_p=top_p)
    else:
        gen.pop("temperature", None)
        gen.pop("top_p", None)
    cfg["generation_kwargs"] = gen
    if samples > 1:
        cfg["repeats"] = samples
        cfg["filter_list"] = [{"name": "none", "filter": [{"function": "take_first_k", "k": samples}]}]
        if cfg.get("process_results") is hooks.math_results:
            cfg["process_results"] = functools.partial(hooks.math_results, pass_k=pass_k)
            cfg["metric_list"] = list(cfg.get("metric_list") or []) + [
                {"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("pass_at_k", "maj_at_k")]
        elif cfg.get("process_results") is not hooks.refusal_results:  # other hooks score one sample
            raise UserError(f"{where}: samples > 1 needs a task scored by math_results or refusal_results")
    return {"temperature": temperature, "top_p": top_p if temperature > 0 else 1.0, "samples": samples,
            "pass_k": pass_k, "max_gen_toks": max_gen_toks, "until": until, "thinking": thinking}
