"""Does GDPO forget less than SFT? SmolLM2-135M-Instruct trained on real teacher response groups, then evaluated
against the untrained model on held-out target items and on prior abilities (issue 15; docs/results/forgetting.md).

Data (the project's own pipeline, from ../shared/data; nothing is downloaded):
  metakl ingest  mmlu_pro_math_model_outputs/<one model file> --preset mmlu-pro
  metakl import-responses  ... mmlu_pro_math_model_outputs --preset mmlu-pro   (8 models' real answers = a group)
  metakl reward  ...                                                          (project defaults: correctness 0.8,
                                                                               format 0.1, length 0.1)
  Every MMLU-Pro math question goes to the train or the eval side by gdpo.eval.data.part_of(id, SALT, EVAL_FRACTION);
  training groups are drawn (per seed) only from the train side's informative groups (rewards not all equal); the
  target-skill evaluation reads only the eval side. The question shown in training lists the options (the teachers'
  answers end in "The answer is (X)").
Methods (the same groups, the same optimizer steps and batch for every method; `gdpo train` options read from the
installed gdpo at run time):
  sft (best response, lr 10 x the paper's 1e-5), dpo (best vs worst), gdpo-<weighting> for every weighting gdpo.losses
  offers (minmax = this project's default, none = the paper's GDPO-A, raw = the literal beta/A_i), listwise when gdpo
  train offers it, gdpo-minmax-rpo and gdpo-none-rpo (plus rpo_alpha 1.0: the NLL of each group's best response); preference methods use lr 10 x the paper's 2e-6 (the paper's 5:1 SFT:GDPO ratio kept; x10 because
  a 135M model gets a few dozen steps here instead of epochs over 5.6K prompts), beta 0.1.
Evaluation (`gdpo eval` on a suite written to OUT/suite.yaml; the base model once, each trained model against it):
  target skill: MMLU-Pro math eval side, cloze accuracy + gold-option log-prob, and the per-token NLL of a correct
  teacher solution (the strongest model's correct answer); prior abilities: MMLU / CommonsenseQA cloze, AdvBench
  refusal, XSTest over-refusal, drift (NLL + KL to the base on its own greedy answers, GSM8K gold solutions and
  held-out LogiQA text).
Output: OUT/summary.md and OUT/summary.json (per method: mean and spread over seeds of each delta), one gdpo eval
folder per model; last line: one JSON object.

    python benchmarks/forgetting.py --quick      # minutes: 2 groups, 2 steps, sft/dpo/gdpo-minmax, 1 seed, tiny eval
    python benchmarks/forgetting.py              # the full run (~10 min per method and seed on 2 cores): see forgetting.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(os.environ.get("METAKL_SHARED_DATA", ROOT.parent / "shared" / "data"))
MMLU_PRO_DIR = "mmlu_pro_math_model_outputs"
QUESTIONS_FILE = "model_outputs_Meta-Llama-3_1-70B-Instruct_5shots.math.json"  # every file holds the same questions
SALT, EVAL_FRACTION = "forgetting-v1", 0.3
STUDENT = "smollm2-135m-instruct"
PAPER_LR = {"sft": 1e-5, "preference": 2e-6}
# teachers by MMLU-Pro math accuracy (SOURCES.md), strongest first: the gold solution is the first correct answer
TEACHER_ORDER = ["DeepSeek-Coder-V2", "Meta-Llama-3_1-70B-Instruct", "gemini-1.5-pro-002", "mathstral-7B",
                 "Meta-Llama-3_1-8B-Instruct", "Phi-3-mini-4k-instruct", "Mistral-7B-Instruct-v0.2", "Llama-2-7b-hf"]

# Full: the settings of the run in docs/results/forgetting.md (2 seeds, every method). Measured on 2 cores (float32,
# 1 thread, load ~1-2): training 3.5-7 min and evaluation 5-8 min per (method, seed), base evaluation 7.4 min; about
# 10 min per (method, seed) in all, so 7 methods x 2 seeds ~2.5 h. Within the 90 minutes: 4 methods x 2 seeds
# (--methods), or a rerun that adds methods or seeds to a finished run folder (finished runs are reused). Larger runs:
# --groups 24 --steps 12 --eval-scale 2 (the first design; about 3x the time).
FULL = dict(seeds=[0, 1], groups=16, steps=8, batch=2, max_length=320, lr_scale=10.0,
            n={"target_mc": 60, "target_gold": 50, "mmlu": 60, "csqa": 60, "advbench": 15, "xstest": 15,
               "drift_alpaca": 12, "gsm8k_gold": 20, "text": 20},
            gen_toks={"safety": 48, "drift": 80})
QUICK = dict(seeds=[0], groups=2, steps=2, batch=1, max_length=192, lr_scale=10.0,
             n={"target_mc": 6, "target_gold": 6, "mmlu": 6, "csqa": 0, "advbench": 4, "xstest": 4,
                "drift_alpaca": 4, "gsm8k_gold": 0, "text": 4},
             gen_toks={"safety": 24, "drift": 32})
QUICK_METHODS = ["sft", "dpo", "gdpo-minmax"]


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
    """Every method the installed `gdpo train` offers, as its settings (read from gdpo at run time). Settings whose
    default changed (weighting, rpo_alpha) are spelled out, so that a method means the same whatever the defaults."""
    from gdpo import losses, trainer

    loss_names = tuple(getattr(trainer, "LOSSES", ("gdpo", "dpo", "sft")))
    known = train_fields()
    rpo = "rpo_alpha" in known
    off = {"rpo_alpha": "0.0"} if rpo else {}
    # the run in forgetting.md divided a gdpo group's loss by its counted pairs (the paper recipe: by G - 1)
    pairs = {"group_normalization": "pairs"} if "group_normalization" in known else {}
    methods: dict[str, dict[str, str]] = {"sft": {"loss": "sft"}, "dpo": {"loss": "dpo", **off}}
    for w in getattr(losses, "WEIGHTINGS", ("minmax",)):
        methods[f"gdpo-{w}"] = {"loss": "gdpo", "weighting": w, **off, **pairs}
    if "listwise" in loss_names:
        methods["listwise"] = {"loss": "listwise", "weighting": "minmax", **off}
    if rpo:  # plus the NLL of each group's best response (TRL's RPO term, alpha 1; gdpo-none-rpo = --recipe low-drift)
        methods["gdpo-minmax-rpo"] = {"loss": "gdpo", "weighting": "minmax", "rpo_alpha": "1.0", **pairs}
        methods["gdpo-none-rpo"] = {"loss": "gdpo", "weighting": "none", "rpo_alpha": "1.0", **pairs}
    return methods


def train_fields() -> set[str]:
    from dataclasses import fields

    from gdpo.trainer import GDPOConfig

    return {f.name for f in fields(GDPOConfig)}


def lr_for(method: dict[str, str], scale: float) -> float:
    return (PAPER_LR["sft"] if method["loss"] == "sft" else PAPER_LR["preference"]) * scale


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


def split_sides(reward_dir: Path, out: Path) -> dict[str, int]:
    """The train pool (train side, informative groups, options in the question) and the held-out gold solutions."""
    from datasets import Dataset

    from gdpo.eval.data import part_of

    ds = Dataset.from_parquet(str(reward_dir / "data.parquet"))
    side = [part_of(i, SALT, EVAL_FRACTION) for i in ds["id"]]
    train = ds.select([i for i, s in enumerate(side) if s == "train"])
    held = ds.select([i for i, s in enumerate(side) if s == "eval"])
    informative = train.filter(lambda r: bool(r["responses"]) and not r["zero_variance"])
    pool = informative.map(lambda r: {"question": with_options(r["question"], r["choices"])})
    pool.to_parquet(str(out / "data" / "train_pool.parquet"))
    gold = []
    for r in held:
        by_model = {x["model"]: x for x in r["responses"] or [] if x["text"]}
        for m in TEACHER_ORDER:
            x = by_model.get(m)
            if x and x["answer"] and x["answer"].strip().upper() == r["reference"]:
                gold.append({"question": with_options(r["question"], r["choices"]), "answer": r["reference"], "solution": x["text"].strip(), "teacher": m})
                break
    with open(out / "data" / "heldout_gold.jsonl", "w") as f:
        for g in gold:
            f.write(json.dumps(g) + "\n")
    (out / "data" / "heldout_gold_mapping.yaml").write_text(
        "description: held-out MMLU-Pro math questions (options listed) with a correct teacher solution\n"
        "source: mmlu-pro-heldout\ndomain: math\nquestion: question\nreference: {field: answer, extract: text}\nmeta: [solution, teacher]\n"
    )
    return {"questions": len(ds), "train_side": len(train), "eval_side": len(held), "train_pool": len(pool), "heldout_gold": len(gold)}


def sample_groups(out: Path, seed: int, k: int) -> Path:
    from datasets import Dataset

    pool = Dataset.from_parquet(str(out / "data" / "train_pool.parquet"))
    folder = out / f"seed{seed}" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    pool.shuffle(seed=seed).select(range(min(k, len(pool)))).to_parquet(str(folder / "data.parquet"))
    return folder


def write_suite(out: Path, cfg: dict) -> Path:
    import yaml

    n, gen = cfg["n"], cfg["gen_toks"]
    held = {"salt": SALT, "fraction": EVAL_FRACTION, "part": "eval"}
    tasks = [
        {"task": "mmlu_pro_math_cloze", "name": "target_mc", "title": "target: MMLU-Pro math (held out)", "n": n["target_mc"], "holdout": held},
        {"nll": "target_gold", "title": "target: gold solution NLL", "data": {"path": str(out / "data" / "heldout_gold.jsonl"), "mapping": str(out / "data" / "heldout_gold_mapping.yaml")},
         "n": n["target_gold"], "prompt": "question", "continuation": "meta.solution"},
        {"task": "mmlu_cloze", "name": "mmlu", "n": n["mmlu"]},
        {"task": "commonsenseqa_cloze", "name": "csqa", "n": n["csqa"]},
        {"task": "advbench", "n": n["advbench"], "max_gen_toks": gen["safety"]},
        {"task": "xstest_safe", "name": "xstest", "n": n["xstest"], "max_gen_toks": gen["safety"]},
        {"selfgen": "drift_alpaca", "title": "drift: base answers (Alpaca)", "data": {"path": "refusal_direction_splits/harmless_test.json", "preset": "refusal-harmful"},
         "n": n["drift_alpaca"], "max_gen_toks": gen["drift"]},
        {"nll": "gsm8k_gold", "title": "drift: GSM8K gold solutions", "data": {"path": "gsm8k/train.jsonl", "preset": "gsm8k"}, "n": n["gsm8k_gold"],
         "prompt": "question", "continuation": "meta.answer", "clean": "gsm8k"},
        {"nll": "text", "title": "drift: LogiQA OOD text", "data": {"path": "logiqa2/ood_test.jsonl", "preset": "logiqa2"}, "n": n["text"], "prompt": None, "continuation": "question"},
    ]
    tasks = [t for t in tasks if t.get("n")]
    path = out / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "forgetting", "description": "benchmarks/forgetting.py", "defaults": {"seed": 0}, "tasks": tasks}, sort_keys=False))
    return path


# ---- training and evaluation -----------------------------------------------------------------------------------------


_TOKENS = re.compile(r"['\"]([a-z_]*tokens[a-z_]*)['\"]:\s*['\"]?([0-9.eE+-]+)")


def train(data: Path, out_dir: Path, method: dict[str, str], seed: int, cfg: dict, fields: set[str]) -> dict:
    settings = {
        **method,
        "learning_rate": lr_for(method, cfg["lr_scale"]),
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
        "disable_tqdm": "false",
    }
    unknown = [k for k in settings if k not in fields and k not in ("dtype",)]
    for k in unknown:  # an option this gdpo does not have (older/newer branch): leave it out and say so
        log(f"  note: gdpo train has no '{k}' option here; left out")
        settings.pop(k)
    cmd = [sys.executable, "-m", "gdpo.cli", "train", "--data", str(data), "--model", STUDENT, "--output_dir", str(out_dir)]
    for k, v in settings.items():
        cmd += [f"--{k}", str(v)]
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # threads: OpenMP threads that outnumber free cores spin and wait on each other (a step 10x slower on a busy machine)
    env.update({"OMP_NUM_THREADS": str(cfg["threads"]), "MKL_NUM_THREADS": str(cfg["threads"])})
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    tokens: dict[str, float] = {}
    for key, value in _TOKENS.findall(proc.stdout + proc.stderr):
        tokens[key] = tokens.get(key, 0.0) + float(value)
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"command": " ".join(cmd[1:]), "seconds": round(seconds, 1), "train_loss": final.get("train_loss"), "global_step": final.get("global_step"), "tokens": tokens}


def run_key(cfg: dict, method: dict | None, seed: int | None) -> dict:
    """What a finished run depends on: a run folder whose run.json holds the same key is reused (threads only change speed)."""
    return {"cfg": {k: v for k, v in cfg.items() if k not in ("threads", "seeds")}, "method": method, "seed": seed, "student": STUDENT}


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

    settings = EvalSettings(backend="hf", dtype="float32", batch_size=8, data_dir=str(DATA), bootstrap_iters=1000, seed=0, max_length=1024, threads=threads)
    result = evaluate_model(model, load_suite(str(suite_path)), settings, baseline=baseline, log=lambda s: log("  " + s))
    write_outputs(result, out_dir, baseline)
    return result


# ---- summary --------------------------------------------------------------------------------------------------------

# (task, metric, label, higher is better)
COLUMNS = [
    ("target_mc", "acc_norm", "target acc", True),
    ("target_mc", "gold_logprob", "target gold logp", True),
    ("target_gold", "nll_per_token", "target sol. NLL", False),
    ("mmlu", "acc_norm", "MMLU", True),
    ("mmlu", "gold_logprob", "MMLU gold logp", True),
    ("csqa", "acc_norm", "CSQA", True),
    ("advbench", "refusal", "AdvBench refusal", True),
    ("xstest", "refusal", "XSTest over-refusal", False),
    ("drift_alpaca", "kl_per_token", "KL base answers", False),
    ("drift_alpaca", "nll_per_token", "NLL base answers", False),
    ("gsm8k_gold", "kl_per_token", "KL GSM8K gold", False),
    ("text", "kl_per_token", "KL text", False),
]


def value_of(result: dict, task: str, metric: str, delta: bool) -> float | None:
    t = result["tasks"].get(task)
    if t is None:
        return None
    if metric == "kl_per_token":
        m = t["metrics"].get(metric)
        return None if m is None else m["value"]
    src = t.get("delta", {}) if delta else t["metrics"]
    m = src.get(metric)
    return None if m is None else m["value"]


def summarize(base: dict, runs: dict[str, list[dict]], meta: dict) -> tuple[str, dict]:
    cols = [c for c in COLUMNS if c[0] in base["tasks"]]
    table: dict[str, dict] = {}
    lines = ["| method | " + " | ".join(c[2] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    base_cells = []
    for task, metric, _, _ in cols:
        v = value_of(base, task, metric, delta=False)
        base_cells.append("0" if metric == "kl_per_token" else (f"{v:.4f}" if v is not None else "–"))
    lines.append("| base (value) | " + " | ".join(base_cells) + " |")
    for method, results in runs.items():
        cells, entry = [], {}
        for task, metric, label, hib in cols:
            vals = [v for v in (value_of(r, task, metric, delta=True) for r in results) if v is not None]
            outside = [bool(r["tasks"][task].get("delta", {}).get(metric, {}).get("outside_ci")) for r in results if metric != "kl_per_token"]
            if not vals:
                cells.append("–")
                continue
            mean = statistics.fmean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            entry[f"{task}.{metric}"] = {"mean": mean, "sd": sd, "values": vals, "outside_ci": outside}
            better = None if metric == "kl_per_token" or mean == 0 else (mean > 0) == hib
            mark = "" if better is None else (" ↑" if better else " ↓")
            star = "*" if outside and all(outside) else ""
            spread = f" ± {sd:.4f}" if len(vals) > 1 else ""  # one seed: no spread to show
            cells.append(f"{mean:+.4f}{spread}{mark}{star}")
        table[method] = entry
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    md = "\n".join(lines)
    md += ("\n\nCells: mean ± sd over seeds (no ± with one seed) of (trained − base), except KL columns (KL from base to the trained model, "
           "nats/token, 0 for the base). ↑ = better than base for that metric, ↓ = worse; * = the paired 95% bootstrap "
           "interval of the delta excludes 0 in every seed. Accuracies are fractions; logp/NLL in nats.\n")
    return md, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few minutes on an idle machine: 2 groups, 2 steps, sft/dpo/gdpo-minmax, 1 seed, tiny eval")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "forgetting", help="run folder (data, models, evals, summary)")
    ap.add_argument("--methods", help="comma-separated subset of the available methods (default: all; --quick: sft,dpo,gdpo-minmax)")
    ap.add_argument("--seeds", help="comma-separated seeds (default: 0,1; --quick: 0)")
    ap.add_argument("--groups", type=int, help="training groups per seed (default 16; --quick 2)")
    ap.add_argument("--steps", type=int, help="optimizer steps for every method (default 8; --quick 2)")
    ap.add_argument("--batch", type=int, help="groups per optimizer step (default 2; --quick 1)")
    ap.add_argument("--lr-scale", type=float, help="multiplier on the paper's learning rates (default 10)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads for training and evaluation (default: 2; use 1 on a shared, busy machine)")
    ap.add_argument("--eval-scale", type=float, default=1.0, help="multiplier on every evaluation sample size (e.g. 0.5 on a busy machine: wider intervals)")
    ap.add_argument("--keep-models", action="store_true", help="keep the trained model folders (about 0.5 GB each)")
    ap.add_argument("--list-methods", action="store_true", help="print the methods the installed gdpo train offers and exit")
    args = ap.parse_args()

    methods = available_methods()
    if args.list_methods:
        for name, m in methods.items():
            print(f"{name:14} {m}")
        return
    cfg = json.loads(json.dumps(QUICK if args.quick else FULL))
    for key in ("groups", "steps", "batch", "lr_scale"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["threads"] = args.threads
    if args.eval_scale != 1.0:
        cfg["n"] = {k: max(1, round(v * args.eval_scale)) if v else 0 for k, v in cfg["n"].items()}
    if args.seeds:
        cfg["seeds"] = [int(s) for s in args.seeds.split(",")]
    wanted = args.methods.split(",") if args.methods else (QUICK_METHODS if args.quick else list(methods))
    missing = [m for m in wanted if m not in methods]
    if missing:
        raise SystemExit(f"error: method(s) {', '.join(missing)} not offered by this gdpo train; available: {', '.join(methods)}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log(f"forgetting: {'quick' if args.quick else 'full'} mode, methods {', '.join(wanted)}, seeds {cfg['seeds']}, {args.threads} thread(s), load average {load_average()}")

    reward_dir = prepare_data(out)
    sides = split_sides(reward_dir, out)
    log(f"data: {json.dumps(sides)}")
    suite_path = write_suite(out, cfg)
    fields = train_fields()

    t0 = time.perf_counter()
    base_key, base_record = run_key(cfg, None, None), out / "base" / "run.json"
    if base_record.exists() and json.loads(base_record.read_text()).get("key") == base_key and (out / "base" / "results.json").exists():
        log(f"base model {STUDENT}: reusing the finished evaluation in {out / 'base'}")
        base = json.loads((out / "base" / "results.json").read_text())
        timings = {"base_eval_s": json.loads(base_record.read_text())["info"]["eval_seconds"], "base_reused": True}
    else:
        log(f"evaluating the base model {STUDENT}")
        base = evaluate(STUDENT, suite_path, out / "base", None, args.threads)
        timings = {"base_eval_s": round(time.perf_counter() - t0, 1)}
        base_record.write_text(json.dumps({"key": base_key, "info": {"eval_seconds": timings["base_eval_s"]}}, indent=1))
    runs: dict[str, list[dict]] = {m: [] for m in wanted}
    trainings: list[dict] = []
    for seed in cfg["seeds"]:
        data = sample_groups(out, seed, cfg["groups"])
        for name in wanted:
            folder, key = out / f"seed{seed}" / name, run_key(cfg, methods[name], seed)
            done = finished(folder, key)
            if done is not None:  # an earlier invocation with the same settings finished this one: a rerun adds methods or seeds
                log(f"seed {seed} {name}: reusing the finished run in {folder}")
                trainings.append({**done["info"], "reused": True})
                runs[name].append(done["result"])
                continue
            model_dir = folder / "model"
            log(f"seed {seed} {name}: training ({cfg['steps']} steps x {cfg['batch']} groups), load average {load_average()}")
            info = train(data, model_dir, methods[name], seed, cfg, fields)
            t1 = time.perf_counter()
            log(f"  trained in {info['seconds']} s (loss {info['train_loss']}); evaluating")
            res = evaluate(str(model_dir), suite_path, out / f"seed{seed}" / name / "eval", base, args.threads)
            info.update({"method": name, "seed": seed, "eval_seconds": round(time.perf_counter() - t1, 1)})
            trainings.append(info)
            runs[name].append(res)
            (folder / "run.json").write_text(json.dumps({"key": key, "info": info}, indent=1))
            if not args.keep_models:
                shutil.rmtree(model_dir, ignore_errors=True)
    total = time.perf_counter() - t_start
    md, table = summarize(base, runs, cfg)
    compute_min = (timings["base_eval_s"] + sum(t["seconds"] + t["eval_seconds"] for t in trainings)) / 60
    header = (f"# Forgetting ({'quick' if args.quick else 'full'} mode)\n\nstudent {STUDENT}; {len(cfg['seeds'])} seed(s) {cfg['seeds']}; "
              f"{cfg['groups']} groups per seed from {sides['train_pool']} informative train-side groups; {cfg['steps']} steps x {cfg['batch']} groups; "
              f"max_length {cfg['max_length']}; lr = {cfg['lr_scale']:g} x paper (sft {lr_for({'loss': 'sft'}, cfg['lr_scale']):g}, "
              f"preference {lr_for({'loss': 'gdpo'}, cfg['lr_scale']):g}); wall {total / 60:.1f} min this invocation "
              f"({sum(1 for t in trainings if t.get('reused'))} of {len(trainings)} runs reused from an earlier one), "
              f"{compute_min:.1f} min of training + evaluation in all, load average at the end {load_average()}\n\n")
    train_lines = ["| method | seed | train s | eval s | loss | tokens (from gdpo train logs) | reused |", "|---|---|---|---|---|---|---|"]
    for t in trainings:
        train_lines.append(f"| {t['method']} | {t['seed']} | {t['seconds']} | {t['eval_seconds']} | {t['train_loss']} | {json.dumps(t['tokens'])} | {'yes' if t.get('reused') else ''} |")
    (out / "summary.md").write_text(header + md + "\n## Runs\n\n" + "\n".join(train_lines) + "\n")
    summary = {"mode": "quick" if args.quick else "full", "config": cfg, "methods": {n: methods[n] for n in wanted}, "data": sides, "base_summary": base["summary"],
               "table": table, "trainings": trainings, "timings": {**timings, "total_s": round(total, 1)}, "load_average_end": load_average()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(header + md)
    kl = {m: table[m].get("drift_alpaca.kl_per_token", {}).get("mean") for m in table}
    verdict = {"bench": "forgetting", "mode": summary["mode"], "minutes": round(total / 60, 1), "kl_base_answers": kl,
               "target_nll_delta": {m: table[m].get("target_gold.nll_per_token", {}).get("mean") for m in table}, "compute_minutes": round(compute_min, 1), "target": 90, "pass": compute_min <= 90}
    print(json.dumps(verdict))


if __name__ == "__main__":
    main()
