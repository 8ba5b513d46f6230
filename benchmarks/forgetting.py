"""Which recipe forgets least at equal gain? SmolLM2-135M-Instruct trained on real teacher response groups with SFT,
DPO and GDPO's recipes, each at the same learning rates over several seeds, then evaluated against the untrained
model (issues 15 and 21; docs/results/forgetting.md).

Data (the project's own pipeline, from ../shared/data; nothing is downloaded):
  metakl ingest  mmlu_pro_math_model_outputs/<one model file> --preset mmlu-pro
  metakl import-responses  ... mmlu_pro_math_model_outputs --preset mmlu-pro   (8 models' real answers = a group)
  metakl reward  ...                                                          (project defaults)
  Every MMLU-Pro math question goes to the train or the eval side by gdpo.eval.data.part_of(id, SALT, EVAL_FRACTION);
  training groups are drawn (per seed) only from the train side's informative groups; the target evaluation reads only
  the eval side.
Design (issue 21):
  - controls at equal learning rates: every method runs at every rate in --lrs (default 2e-5 = 10 x the paper's GDPO
    rate, and 1e-4 = 10 x the paper's SFT rate), so SFT also runs at the preference methods' rate;
  - >= 5 seeds (each seed draws its own groups; every method of a seed trains on the same groups);
  - a target where the student starts above chance: `target_read`, held-out MMLU-Pro math questions with the end of the
    strongest teacher's correct reasoning shown (its final "The answer is" sentence cut), the options scored as cloze
    continuations (chance 0.1); plus the held-out gold option's log-prob without reasoning (target_mc);
  - headline forgetting metrics that no method trains directly: MMLU and CommonsenseQA cloze (held out, above chance
    for CSQA), KL from the base on the base model's own greedy answers (Alpaca) and on held-out text (LogiQA);
    the NLL of held-out teacher solutions (what SFT and the RPO term train) is a secondary column;
  - effect sizes with 95% t-intervals over seeds, and paired (same seed, same groups) differences between methods.
Methods: `gdpo train` settings read from the installed gdpo (`--list-methods`): sft, dpo, gdpo-paper (`--recipe paper`,
the default), gdpo-low-drift (`--recipe low-drift`), gdpo-paper-literal, listwise, and the older per-weighting names.
Output: OUT/summary.md and OUT/summary.json, one gdpo eval folder per run; last line: one JSON object.

    python benchmarks/forgetting.py --quick      # minutes: 1 seed, 2 groups, 2 steps, one rate, tiny evaluation
    python benchmarks/forgetting.py --jobs 2     # the full run (see forgetting.md for its time)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SHARED_DATA  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = SHARED_DATA
MMLU_PRO_DIR = "mmlu_pro_math_model_outputs"
QUESTIONS_FILE = "model_outputs_Meta-Llama-3_1-70B-Instruct_5shots.math.json"  # every file holds the same questions
SALT, EVAL_FRACTION = "forgetting-v1", 0.3
STUDENT = "smollm2-135m-instruct"
PAPER_LR = {"sft": 1e-5, "preference": 2e-6}
# teachers by MMLU-Pro math accuracy (SOURCES.md), strongest first: the gold solution is the first correct answer
TEACHER_ORDER = ["DeepSeek-Coder-V2", "Meta-Llama-3_1-70B-Instruct", "gemini-1.5-pro-002", "mathstral-7B",
                 "Meta-Llama-3_1-8B-Instruct", "Phi-3-mini-4k-instruct", "Mistral-7B-Instruct-v0.2", "Llama-2-7b-hf"]
READ_CHARS = 300  # target_read: the last characters of the teacher's reasoning shown before the options are scored

# Full: 5 seeds x 4 methods x 2 rates = 40 runs of 12 groups x 6 steps; the base model is evaluated once (its greedy
# answers for the KL columns are generated then), each trained model by forward passes only. The items are the same for
# every run, so the spread over seeds is the training's, and paired differences between methods are exact on them.
FULL = dict(seeds=[0, 1, 2, 3, 4], groups=12, steps=6, batch=2, max_length=256, lrs=[2e-5, 1e-4],
            n={"target_read": 40, "target_mc": 30, "target_gold": 12, "mmlu": 60, "csqa": 60, "drift_alpaca": 16, "text": 16},
            gen_toks={"drift": 64})
QUICK = dict(seeds=[0], groups=2, steps=2, batch=1, max_length=192, lrs=[2e-5],
             n={"target_read": 6, "target_mc": 6, "target_gold": 6, "mmlu": 6, "csqa": 0, "drift_alpaca": 4, "text": 4},
             gen_toks={"drift": 32})
FULL_METHODS = ["sft", "dpo", "gdpo-paper", "gdpo-low-drift"]
QUICK_METHODS = ["sft", "dpo", "gdpo-paper"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run(cmd: list[str], *, cwd: Path = ROOT, quiet: bool = True) -> str:
    """Run a project command; its stdout is returned, a failure ends the benchmark with the command's tail."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout + ("" if quiet else proc.stderr)


# ---- methods -------------------------------------------------------------------------------------------------------


def available_methods() -> dict[str, dict[str, str]]:
    """Every method the installed `gdpo train` offers, as its settings (read from gdpo at run time). The recipes are
    named by `--recipe`; the older per-weighting names spell out the settings of the run they were reported with, so a
    method means the same whatever the defaults."""
    from gdpo import losses, trainer

    loss_names = tuple(getattr(trainer, "LOSSES", ("gdpo", "dpo", "sft")))
    known = train_fields()
    rpo = "rpo_alpha" in known
    off = {"rpo_alpha": "0.0"} if rpo else {}
    methods: dict[str, dict[str, str]] = {"sft": {"loss": "sft"}, "dpo": {"loss": "dpo", **off}}
    if "recipe" in known:
        from gdpo.config import RECIPES

        for name in RECIPES:
            methods[f"gdpo-{name}"] = {"loss": "gdpo", "recipe": name}
    # the issue-15 run divided a gdpo group's loss by its counted pairs (the paper recipe: by G - 1)
    pairs = {"group_normalization": "pairs"} if "group_normalization" in known else {}
    for w in getattr(losses, "WEIGHTINGS", ("minmax",)):
        methods[f"gdpo-{w}"] = {"loss": "gdpo", "weighting": w, **off, **pairs}
    if "listwise" in loss_names:
        methods["listwise"] = {"loss": "listwise", "weighting": "minmax", **off}
    if rpo:  # plus the NLL of each group's best response (TRL's RPO term, alpha 1)
        methods["gdpo-minmax-rpo"] = {"loss": "gdpo", "weighting": "minmax", "rpo_alpha": "1.0", **pairs}
        methods["gdpo-none-rpo"] = {"loss": "gdpo", "weighting": "none", "rpo_alpha": "1.0", **pairs}
    return methods


def train_fields() -> set[str]:
    from dataclasses import fields

    from gdpo.trainer import GDPOConfig

    return {f.name for f in fields(GDPOConfig)}


def lr_for(method: dict[str, str], scale: float) -> float:
    """The paper's learning rate for a method (SFT 1e-5, preference 2e-6) times `scale`."""
    return (PAPER_LR["sft"] if method["loss"] == "sft" else PAPER_LR["preference"]) * scale


def run_name(method: str, lr: float) -> str:
    return f"{method}@{lr:g}"


# ---- data -----------------------------------------------------------------------------------------------------------


def prepare_data(out: Path) -> Path:
    """ingest → import-responses → reward with the project's CLIs (cached in OUT/data)."""
    d = out / "data"
    py = sys.executable
    src = DATA / MMLU_PRO_DIR
    if not (src / QUESTIONS_FILE).exists():
        raise SystemExit(f"error: {src / QUESTIONS_FILE} not found (set METAKL_SHARED_DATA to the shared data folder)")
    steps = [
        ("ingest", [py, "-m", "metakl", "ingest", str(src / QUESTIONS_FILE), "--preset", "mmlu-pro", "--out", str(d / "ingest")]),
        ("responses", [py, "-m", "metakl", "import-responses", str(d / "ingest"), str(src), "--preset", "mmlu-pro", "--out", str(d / "responses")]),
        ("reward", [py, "-m", "metakl", "reward", str(d / "responses"), "--out", str(d / "reward"), "--workers", "1"]),
    ]
    for name, cmd in steps:
        if not (d / name / "data.parquet").exists():
            log(f"data: {' '.join(cmd[2:4])} ...")
            run(cmd)
    return d / "reward"


def with_options(question: str, choices: list[str]) -> str:
    letters = "ABCDEFGHIJ"
    return question.strip() + "\nOptions:\n" + "\n".join(f"({letters[i]}) {c}" for i, c in enumerate(choices))


_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)


def reading_question(question: str, solution: str) -> str | None:
    """target_read's prompt: the question and the last READ_CHARS of a correct solution's reasoning, its final
    "The answer is" sentence cut (None when the solution has no such sentence or too little reasoning)."""
    cuts = [m.start() for m in _ANSWER_IS.finditer(solution)]
    reasoning = solution[: cuts[-1]].strip() if cuts else ""
    if len(reasoning) < 40:
        return None
    tail = reasoning[-READ_CHARS:]
    return f"{question.strip()}\nSolution: {'...' if len(reasoning) > READ_CHARS else ''}{tail}"


def split_sides(reward_dir: Path, out: Path) -> dict[str, int]:
    """The train pool (train side, informative groups, options in the question), the held-out gold solutions
    (target_gold) and the held-out reading items (target_read), each from the strongest teacher's correct answer."""
    from datasets import Dataset

    from gdpo.eval.data import part_of

    ds = Dataset.from_parquet(str(reward_dir / "data.parquet"))
    side = [part_of(i, SALT, EVAL_FRACTION) for i in ds["id"]]
    train = ds.select([i for i, s in enumerate(side) if s == "train"])
    held = ds.select([i for i, s in enumerate(side) if s == "eval"])
    informative = train.filter(lambda r: bool(r["responses"]) and not r["zero_variance"])
    pool = informative.map(lambda r: {"question": with_options(r["question"], r["choices"])})
    pool.to_parquet(str(out / "data" / "train_pool.parquet"))
    gold, read = [], []
    for r in held:
        by_model = {x["model"]: x for x in r["responses"] or [] if x["text"]}
        for m in TEACHER_ORDER:
            x = by_model.get(m)
            if x and x["answer"] and x["answer"].strip().upper() == r["reference"]:
                gold.append({"question": with_options(r["question"], r["choices"]), "answer": r["reference"], "solution": x["text"].strip(), "teacher": m})
                prompt = reading_question(r["question"], x["text"])
                if prompt:
                    read.append({"question": prompt, "choices": list(r["choices"]), "answer": r["reference"], "teacher": m})
                break
    for name, rows in (("heldout_gold", gold), ("heldout_read", read)):
        with open(out / "data" / f"{name}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    (out / "data" / "heldout_gold_mapping.yaml").write_text(
        "description: held-out MMLU-Pro math questions (options listed) with a correct teacher solution\n"
        "source: mmlu-pro-heldout\ndomain: math\nquestion: question\nreference: {field: answer, extract: text}\nmeta: [solution, teacher]\n"
    )
    (out / "data" / "heldout_read_mapping.yaml").write_text(
        "description: held-out MMLU-Pro math questions with the end of a correct teacher reasoning (answer sentence cut)\n"
        "source: mmlu-pro-read\ndomain: math\nquestion: question\nchoices: choices\nreference: {field: answer, extract: letter}\nmeta: [teacher]\n"
    )
    return {"questions": len(ds), "train_side": len(train), "eval_side": len(held), "train_pool": len(pool), "heldout_gold": len(gold), "heldout_read": len(read)}


def sample_groups(out: Path, seed: int, k: int) -> Path:
    from datasets import Dataset

    pool = Dataset.from_parquet(str(out / "data" / "train_pool.parquet"))
    folder = out / f"seed{seed}" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    pool.shuffle(seed=seed).select(range(min(k, len(pool)))).to_parquet(str(folder / "data.parquet"))
    return folder


def write_read_task(out: Path) -> Path:
    """target_read as an lm-eval task YAML (the shipped MMLU-Pro cloze task's hooks, on OUT/data/heldout_read.jsonl)."""
    path = out / "target_read.yaml"
    data = out / "data"
    path.write_text(
        "# held-out MMLU-Pro math: question + the end of a correct teacher reasoning; options scored as cloze continuations\n"
        "task: forgetting_target_read\n"
        "custom_dataset: !function gdpo.eval.data.load\n"
        f"dataset_kwargs: {{path: {json.dumps(str(data / 'heldout_read.jsonl'))}, mapping: {json.dumps(str(data / 'heldout_read_mapping.yaml'))}}}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: !function gdpo.eval.hooks.cloze_prompt\ndoc_to_choice: !function gdpo.eval.hooks.option_texts\n"
        "doc_to_target: !function gdpo.eval.hooks.gold_index\ntarget_delimiter: \" \"\n"
        "process_results: !function gdpo.eval.hooks.cloze_results\n"
        "metric_list:\n"
        + "".join(f"  - {{metric: {m}, aggregation: mean, higher_is_better: true}}\n" for m in ("acc", "acc_norm", "gold_logprob", "gold_logprob_per_char", "gold_prob"))
        + 'metadata: {version: 1, domain: math, primary: acc_norm, chat: false, title: "target: MMLU-Pro math, reading a teacher\'s reasoning"}\n'
    )
    return path


def write_suite(out: Path, cfg: dict) -> Path:
    import yaml

    n, gen = cfg["n"], cfg["gen_toks"]
    held = {"salt": SALT, "fraction": EVAL_FRACTION, "part": "eval"}
    tasks = [
        {"task": str(write_read_task(out)), "name": "target_read", "title": "target: reading a teacher's reasoning", "n": n["target_read"]},
        {"task": "mmlu_pro_math_cloze", "name": "target_mc", "title": "target: MMLU-Pro math (held out)", "n": n["target_mc"], "holdout": held},
        {"nll": "target_gold", "title": "target: gold solution NLL", "data": {"path": str(out / "data" / "heldout_gold.jsonl"), "mapping": str(out / "data" / "heldout_gold_mapping.yaml")},
         "n": n["target_gold"], "prompt": "question", "continuation": "meta.solution"},
        {"task": "mmlu_cloze", "name": "mmlu", "n": n["mmlu"]},
        {"task": "commonsenseqa_cloze", "name": "csqa", "n": n["csqa"]},
        {"selfgen": "drift_alpaca", "title": "drift: base answers (Alpaca)", "data": {"path": "refusal_direction_splits/harmless_test.json", "preset": "refusal-harmful"},
         "n": n["drift_alpaca"], "max_gen_toks": gen["drift"]},
        {"nll": "text", "title": "drift: LogiQA OOD text", "data": {"path": "logiqa2/ood_test.jsonl", "preset": "logiqa2"}, "n": n["text"], "prompt": None, "continuation": "question"},
    ]
    tasks = [t for t in tasks if t.get("n")]
    path = out / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "forgetting", "description": "benchmarks/forgetting.py", "defaults": {"seed": 0}, "tasks": tasks}, sort_keys=False))
    return path


# ---- training and evaluation -----------------------------------------------------------------------------------------


_TOKENS = re.compile(r"['\"]([a-z_]*tokens[a-z_]*)['\"]:\s*['\"]?([0-9.eE+-]+)")


def child_env(threads: int) -> dict[str, str]:
    # OpenMP threads that outnumber free cores spin and wait on each other (a step 10x slower on a busy machine)
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def train(data: Path, out_dir: Path, method: dict[str, str], lr: float, seed: int, cfg: dict, fields: set[str]) -> dict:
    settings = {
        **method,
        "learning_rate": lr,
        "max_steps": cfg["steps"],
        "per_device_train_batch_size": cfg["batch"],
        "gradient_accumulation_steps": 1,
        "max_length": cfg["max_length"],
        "seed": seed,
        "data_seed": seed,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "use_cpu": "true",
        "dtype": "float32",
        "beta": 0.1,
        "disable_tqdm": "true",
    }
    unknown = [k for k in settings if k not in fields and k not in ("dtype",)]
    for k in unknown:  # an option this gdpo does not have (older/newer branch): leave it out and say so
        log(f"  note: gdpo train has no '{k}' option here; left out")
        settings.pop(k)
    cmd = [sys.executable, "-m", "gdpo.cli", "train", "--data", str(data), "--model", STUDENT, "--output_dir", str(out_dir)]
    for k, v in settings.items():
        cmd += [f"--{k}", str(v)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(cfg["threads"]), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    tokens: dict[str, float] = {}
    for key, value in _TOKENS.findall(proc.stdout + proc.stderr):
        tokens[key] = tokens.get(key, 0.0) + float(value)
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"command": " ".join(cmd[1:]), "seconds": round(seconds, 1), "train_loss": final.get("train_loss"), "global_step": final.get("global_step"), "tokens": tokens}


def run_key(cfg: dict, method: dict | None, lr: float | None, seed: int | None) -> dict:
    """What a finished run depends on: a run folder whose run.json holds the same key is reused (threads, jobs, seeds
    and rates only change which runs exist and how fast they go)."""
    return {"cfg": {k: v for k, v in cfg.items() if k not in ("threads", "seeds", "lrs")}, "method": method, "lr": lr, "seed": seed, "student": STUDENT}


def finished(folder: Path, key: dict) -> dict | None:
    """The saved record of a run with this key (training info + evaluation result), or None."""
    record, result = folder / "run.json", folder / "eval" / "results.json"
    if not (record.exists() and result.exists()):
        return None
    saved = json.loads(record.read_text())
    if saved.get("key") != key:
        return None
    return {"info": saved["info"], "result": json.loads(result.read_text())}


def evaluate(model: str, suite_path: Path, out_dir: Path, baseline: dict | None, threads: int | None) -> dict:
    from gdpo.eval.runner import EvalSettings, evaluate_model, write_outputs
    from gdpo.eval.suite import load_suite

    settings = EvalSettings(backend="hf", dtype="float32", batch_size=16, data_dir=str(DATA), bootstrap_iters=1000, seed=0, max_length=1024, threads=threads)
    result = evaluate_model(model, load_suite(str(suite_path)), settings, baseline=baseline, log=lambda s: log("  " + s))
    write_outputs(result, out_dir, baseline)
    return result


def evaluate_in_child(model: str, suite_path: Path, out_dir: Path, base_results: Path, threads: int) -> dict:
    """evaluate() in its own process (parallel runs each hold their own torch threads and models)."""
    spec = json.dumps({"model": model, "suite": str(suite_path), "out": str(out_dir), "base": str(base_results), "threads": threads})
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--eval-child", spec], cwd=ROOT, env=child_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"evaluation of {model} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads((out_dir / "results.json").read_text())


def one_run(out: Path, data: Path, suite_path: Path, name: str, method: dict, lr: float, seed: int, cfg: dict, fields: set[str], keep: bool,
            summary_only: bool = False) -> dict | None:
    """Train one (method, rate, seed), evaluate it against the base model, save run.json; returns info + result
    (None with summary_only when the run has not finished)."""
    folder, key = out / f"seed{seed}" / run_name(name, lr), run_key(cfg, method, lr, seed)
    done = finished(folder, key)
    if done is not None:  # an earlier invocation with the same settings finished this one: a rerun adds runs
        log(f"seed {seed} {run_name(name, lr)}: reusing the finished run in {folder}")
        return {"info": {**done["info"], "reused": True}, "result": done["result"]}
    if summary_only:
        return None
    model_dir = folder / "model"
    log(f"seed {seed} {run_name(name, lr)}: training ({cfg['steps']} steps x {cfg['batch']} groups), load average {load_average()}")
    try:
        info = train(data, model_dir, method, lr, seed, cfg, fields)
        t1 = time.perf_counter()
        result = evaluate_in_child(str(model_dir), suite_path, folder / "eval", out / "base" / "results.json", cfg["threads"])
    except (SystemExit, Exception) as e:  # one failed run (e.g. killed for memory) must not end the others: said now, rerun later
        (folder / "error.txt").write_text(str(e)[-5000:])
        log(f"seed {seed} {run_name(name, lr)}: FAILED ({str(e).splitlines()[0][:300]}); details in {folder / 'error.txt'}; the same command reruns it")
        return None
    info.update({"method": name, "lr": lr, "seed": seed, "eval_seconds": round(time.perf_counter() - t1, 1)})
    log(f"seed {seed} {run_name(name, lr)}: trained in {info['seconds']} s (loss {info['train_loss']}), evaluated in {info['eval_seconds']} s")
    (folder / "run.json").write_text(json.dumps({"key": key, "info": info}, indent=1))
    if not keep:
        shutil.rmtree(model_dir, ignore_errors=True)
    return {"info": info, "result": result}


# ---- summary --------------------------------------------------------------------------------------------------------

# (task, metric, label, higher is better, role): role "gain" = the target skill, "forget" = headline forgetting metrics
# that no method trains directly, "secondary" = what SFT and the RPO term train (teacher solutions) or a noisy variant
COLUMNS = [
    ("target_read", "acc_norm", "target read acc", True, "gain"),
    ("target_mc", "gold_logprob", "target gold logp", True, "gain"),
    ("mmlu", "acc_norm", "MMLU acc", True, "forget"),
    ("mmlu", "gold_logprob", "MMLU gold logp", True, "forget"),
    ("csqa", "acc_norm", "CSQA acc", True, "forget"),
    ("csqa", "gold_logprob", "CSQA gold logp", True, "forget"),
    ("drift_alpaca", "kl_per_token", "KL base answers", False, "forget"),
    ("text", "kl_per_token", "KL text", False, "forget"),
    ("target_read", "gold_logprob", "target read logp", True, "secondary"),
    ("target_mc", "acc_norm", "target acc", True, "secondary"),
    ("target_gold", "nll_per_token", "target sol. NLL", False, "secondary"),
    ("drift_alpaca", "nll_per_token", "NLL base answers", False, "secondary"),
]
# two-sided 95% Student t quantiles by degrees of freedom (seeds - 1)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def value_of(result: dict, task: str, metric: str, delta: bool) -> float | None:
    t = result["tasks"].get(task)
    if t is None:
        return None
    if metric == "kl_per_token":  # a KL from the base is already a difference (0 for the base itself)
        m = t["metrics"].get(metric)
        return None if m is None else m["value"]
    src = t.get("delta", {}) if delta else t["metrics"]
    m = src.get(metric)
    return None if m is None else m["value"]


def interval(values: list[float]) -> dict:
    """Mean and 95% t-interval over seeds (no interval from one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "n": len(values), "lo": None, "hi": None, "values": values}
    half = T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "n": len(values), "lo": mean - half, "hi": mean + half, "values": values}


def fmt(iv: dict, hib: bool | None = None) -> str:
    if iv["lo"] is None:
        return f"{iv['mean']:+.4f}"
    mark = ""
    if hib is not None and (iv["lo"] > 0 or iv["hi"] < 0):  # the interval excludes 0: better or worse than the base
        mark = " ↑" if (iv["lo"] > 0) == hib else " ↓"
    return f"{iv['mean']:+.4f} [{iv['lo']:+.4f}, {iv['hi']:+.4f}]{mark}"


def summarize(base: dict, runs: dict[str, dict[int, dict]]) -> tuple[str, dict]:
    """runs: {run name: {seed: result}}. Per run, each column's delta from the base with a 95% interval over seeds;
    then paired differences (same seed, same groups) between every two runs at the same rate."""
    cols = [c for c in COLUMNS if c[0] in base["tasks"]]
    table: dict[str, dict] = {}
    lines = ["| run | " + " | ".join(c[2] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    base_values = [value_of(base, t, m, False) for t, m, *_ in cols]
    base_cells = ["0" if c[1] == "kl_per_token" else ("–" if v is None else f"{v:.4f}") for c, v in zip(cols, base_values)]
    lines.append("| base (value) | " + " | ".join(base_cells) + " |")
    for name, by_seed in runs.items():
        cells, entry = [], {}
        for task, metric, _, hib, _ in cols:
            vals = [v for v in (value_of(r, task, metric, delta=True) for r in by_seed.values()) if v is not None]
            if not vals:
                cells.append("–")
                continue
            entry[f"{task}.{metric}"] = interval(vals)
            cells.append(fmt(entry[f"{task}.{metric}"], None if metric == "kl_per_token" else hib))
        table[name] = entry
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    md = "\n".join(lines)
    md += ("\n\nCells: mean of (trained − base) over seeds and its 95% t-interval over seeds; KL columns are KL(base ‖ trained) in "
           "nats/token (0 for the base). ↑/↓ = the interval excludes 0, better/worse than the base. Accuracies are fractions; "
           "logp/NLL in nats. Columns in order: gain (target), forgetting (headline: no method trains them), secondary.\n")
    # paired differences: A − B per seed, for runs at the same rate, on the gain and headline forgetting columns
    pairs: dict[str, dict] = {}
    heads = [c for c in cols if c[4] in ("gain", "forget")]
    plines = ["| A − B (same rate, paired by seed) | " + " | ".join(c[2] for c in heads) + " |", "|---|" + "---|" * len(heads)]
    names = list(runs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a.split("@")[1] != b.split("@")[1]:
                continue
            seeds = sorted(set(runs[a]) & set(runs[b]))
            if len(seeds) < 2:
                continue
            cells, entry = [], {}
            for task, metric, _, hib, _ in heads:
                diffs = []
                for s in seeds:
                    va, vb = value_of(runs[a][s], task, metric, True), value_of(runs[b][s], task, metric, True)
                    if va is not None and vb is not None:
                        diffs.append(va - vb)
                if len(diffs) < 2:
                    cells.append("–")
                    continue
                iv = interval(diffs)
                entry[f"{task}.{metric}"] = iv
                mark = ""
                if iv["lo"] > 0 or iv["hi"] < 0:  # A better (↑) or worse (↓) than B, by this metric's direction
                    mark = " A" if (iv["lo"] > 0) == hib else " B"
                cells.append(f"{iv['mean']:+.4f} [{iv['lo']:+.4f}, {iv['hi']:+.4f}]{mark}")
            pairs[f"{a} − {b}"] = entry
            plines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    if len(plines) > 2:
        md += "\n### Paired differences\n\n" + "\n".join(plines)
        md += ("\n\nCells: mean over seeds of (A's delta − B's delta) with its 95% t-interval; a letter names the better run "
               "where the interval excludes 0 (for KL, lower is better).\n")
    return md, {"runs": table, "pairs": pairs}


def eval_child(spec: str) -> None:
    s = json.loads(spec)
    base = json.loads(Path(s["base"]).read_text())
    evaluate(s["model"], Path(s["suite"]), Path(s["out"]), base, s["threads"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few minutes: 1 seed, 2 groups x 2 steps, sft/dpo/gdpo-paper at one rate, tiny evaluation")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "forgetting", help="run folder (data, models, evals, summary)")
    ap.add_argument("--methods", help="comma-separated methods (default: sft,dpo,gdpo-paper,gdpo-low-drift; --list-methods shows all)")
    ap.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2,3,4; --quick: 0)")
    ap.add_argument("--lrs", help="comma-separated learning rates, every method runs at each (default: 2e-5,1e-4 = 10x the paper's GDPO and SFT rates)")
    ap.add_argument("--groups", type=int, help="training groups per seed (default 12; --quick 2)")
    ap.add_argument("--steps", type=int, help="optimizer steps for every method (default 6; --quick 2)")
    ap.add_argument("--batch", type=int, help="groups per optimizer step (default 2; --quick 1)")
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (default 1; 2 on 2 idle cores with --threads 1)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads per run (default 2; 1 with --jobs 2 or on a busy machine)")
    ap.add_argument("--eval-scale", type=float, default=1.0, help="multiplier on every evaluation sample size (wider intervals when < 1)")
    ap.add_argument("--keep-models", action="store_true", help="keep the trained model folders (about 0.5 GB each)")
    ap.add_argument("--list-methods", action="store_true", help="print the methods the installed gdpo train offers and exit")
    ap.add_argument("--summary-only", action="store_true", help="train nothing: summarize the runs of these settings that have finished (an interrupted run)")
    ap.add_argument("--eval-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.eval_child:
        eval_child(args.eval_child)
        return

    methods = available_methods()
    if args.list_methods:
        for name, m in methods.items():
            print(f"{name:20} {m}")
        return
    cfg = json.loads(json.dumps(QUICK if args.quick else FULL))
    for key in ("groups", "steps", "batch"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["threads"] = args.threads
    if args.eval_scale != 1.0:
        cfg["n"] = {k: max(1, round(v * args.eval_scale)) if v else 0 for k, v in cfg["n"].items()}
    if args.seeds:
        cfg["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.lrs:
        cfg["lrs"] = [float(x) for x in args.lrs.split(",")]
    wanted = args.methods.split(",") if args.methods else (QUICK_METHODS if args.quick else FULL_METHODS)
    missing = [m for m in wanted if m not in methods]
    if missing:
        raise SystemExit(f"error: method(s) {', '.join(missing)} not offered by this gdpo train; available: {', '.join(methods)}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    n_runs = len(wanted) * len(cfg["lrs"]) * len(cfg["seeds"])
    log(f"forgetting: {'quick' if args.quick else 'full'} mode, methods {', '.join(wanted)}, rates {cfg['lrs']}, seeds {cfg['seeds']} "
        f"({n_runs} runs), {args.jobs} job(s) x {args.threads} thread(s), load average {load_average()}")

    reward_dir = prepare_data(out)
    sides = split_sides(reward_dir, out)
    log(f"data: {json.dumps(sides)}")
    suite_path = write_suite(out, cfg)
    fields = train_fields()

    t0 = time.perf_counter()
    base_key, base_record = run_key(cfg, None, None, None), out / "base" / "run.json"
    if base_record.exists() and json.loads(base_record.read_text()).get("key") == base_key and (out / "base" / "results.json").exists():
        log(f"base model {STUDENT}: reusing the finished evaluation in {out / 'base'}")
        base = json.loads((out / "base" / "results.json").read_text())
        timings = {"base_eval_s": json.loads(base_record.read_text())["info"]["eval_seconds"], "base_reused": True}
    else:
        log(f"evaluating the base model {STUDENT}")
        base = evaluate(STUDENT, suite_path, out / "base", None, args.threads * args.jobs)
        timings = {"base_eval_s": round(time.perf_counter() - t0, 1)}
        base_record.write_text(json.dumps({"key": base_key, "info": {"eval_seconds": timings["base_eval_s"]}}, indent=1))

    jobs = []
    for seed in cfg["seeds"]:
        data = sample_groups(out, seed, cfg["groups"])
        for lr in cfg["lrs"]:
            for name in wanted:
                jobs.append((name, lr, seed, data))
    # DPO (a baseline, not a recipe choice) last, so an interrupted run has the recipes and SFT over the most seeds;
    # an interrupted run is continued by the same command (finished runs are reused)
    jobs.sort(key=lambda j: j[0] == "dpo")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [(name, lr, seed, pool.submit(one_run, out, data, suite_path, name, methods[name], lr, seed, cfg, fields, args.keep_models, args.summary_only))
                   for name, lr, seed, data in jobs]
        done = [(name, lr, seed, f.result()) for name, lr, seed, f in futures]
    missing_runs = [run_name(n, l) + f" seed {s}" for n, l, s, r in done if r is None]  # not run yet, or failed
    done = [d for d in done if d[3] is not None]
    if missing_runs:
        log(f"summary of the finished runs only; not run yet: {len(missing_runs)} ({', '.join(missing_runs[:8])}{', ...' if len(missing_runs) > 8 else ''})")
    runs: dict[str, dict[int, dict]] = {}
    for lr in cfg["lrs"]:  # rows grouped by rate, methods in the order asked
        for name in wanted:
            by_seed = {seed: r["result"] for n, l, seed, r in done if n == name and l == lr}
            if by_seed:
                runs[run_name(name, lr)] = by_seed
    trainings = [r["info"] for *_, r in done]

    total = time.perf_counter() - t_start
    md, table = summarize(base, runs)
    compute_min = (timings["base_eval_s"] + sum(t["seconds"] + t["eval_seconds"] for t in trainings)) / 60
    header = (f"# Forgetting ({'quick' if args.quick else 'full'} mode{', partial: ' + str(len(missing_runs)) + ' runs not finished' if missing_runs else ''})\n\nstudent {STUDENT}; {len(cfg['seeds'])} seed(s) {cfg['seeds']}; "
              f"rates {', '.join(f'{x:g}' for x in cfg['lrs'])} for every method; {cfg['groups']} groups per seed from {sides['train_pool']} "
              f"informative train-side groups; {cfg['steps']} steps x {cfg['batch']} groups; max_length {cfg['max_length']}; "
              f"evaluation items {json.dumps(cfg['n'])}; wall {total / 60:.1f} min this invocation ({args.jobs} job(s) x {args.threads} thread(s); "
              f"{sum(1 for t in trainings if t.get('reused'))} of {len(trainings)} runs reused from an earlier one), "
              f"{compute_min:.1f} min of training + evaluation in all, load average at the end {load_average()}\n\n")
    train_lines = ["| method | rate | seed | train s | eval s | loss | tokens (from gdpo train logs) | reused |", "|---|---|---|---|---|---|---|---|"]
    for t in trainings:
        train_lines.append(f"| {t['method']} | {t['lr']:g} | {t['seed']} | {t['seconds']} | {t['eval_seconds']} | {t['train_loss']} | {json.dumps(t['tokens'])} | {'yes' if t.get('reused') else ''} |")
    (out / "summary.md").write_text(header + md + "\n## Runs\n\n" + "\n".join(train_lines) + "\n")
    summary = {"mode": "quick" if args.quick else "full", "config": cfg, "methods": {n: methods[n] for n in wanted}, "data": sides, "base_summary": base["summary"],
               "base": {f"{t}.{m}": value_of(base, t, m, False) for t, m, *_ in COLUMNS if t in base["tasks"]},
               "table": table, "trainings": trainings, "timings": {**timings, "total_s": round(total, 1)}, "load_average_end": load_average()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(header + md)
    kl = {name: table["runs"][name].get("drift_alpaca.kl_per_token", {}).get("mean") for name in table["runs"]}
    verdict = {"bench": "forgetting", "mode": summary["mode"], "runs": len(trainings), "minutes": round(total / 60, 1), "compute_minutes": round(compute_min, 1),
               "kl_base_answers": kl, "target_read_acc_delta": {n: table["runs"][n].get("target_read.acc_norm", {}).get("mean") for n in table["runs"]}}
    print(json.dumps(verdict))


if __name__ == "__main__":
    main()
