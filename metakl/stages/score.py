"""Score stage: how well each base model already answers each prompt, per prompt and per knowledge unit.

Base-model answers come from running models (`base_models`, k samples per prompt through metakl.llm, prompts from
annotations/templates/score/<domain>.j2) or from files of existing answers (`responses` read with a response
mapping, the machinery of `import-responses`); both are checked with the reward stage's verifiers (math
equivalence, choice letters, yes/no, free text; safe behaviour for safety prompts, judged by the refusal rules).

Output:
- the `proficiency` column: per row, `[{model, accuracy, samples}]` (a re-run replaces the entries of the models it
  scores and keeps the others; `replace` drops them all);
- `proficiency.json`: per unit and model (plus "average" and "strict", see metakl.stages.proficiency) the mean
  prompt accuracy, the number of prompts behind it and a Wilson interval;
- `agreement.json` / `agreement.png`: Pearson correlation of unit proficiency between models (units with at least
  `min_support` prompts on both sides), the appendix's Figure 1.
The base-model answers themselves are not stored in the rows (the `responses` column is for teacher responses).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

from datasets import Dataset, Features, Value

from metakl.config import check_settings, setting
from metakl.errors import UserError
from metakl.schema import DOMAINS, ERROR, PROFICIENCY, choice_letter, error
from metakl.stage import StageResult, replace_stage_errors, stage
from metakl.stages.proficiency import (AVERAGE, STRICT, STRICT_CORRECT, column, models_in, pearson_matrix,
                                       prompt_values, unit_stats, z_value)

STAGE = "score"
PROFICIENCY_FILE = "proficiency.json"
AGREEMENT_FILE = "agreement.json"
AGREEMENT_PNG = "agreement.png"
# Keys a per-model entry of `model_options` may set (the model options of metakl.llm.options.LLMOptions).
MODEL_OPTION_KEYS = ("backend", "model", "base_url", "concurrency", "cache_dir", "no_cache", "dtype")


@dataclass
class ScoreConfig:
    """What `metakl score` flags and a config's `score:` section set (one declaration: metakl.config.setting)."""

    base_models: tuple[str, ...] = setting((), flags=("--base-model",), help=(
        "A base model to run (repeatable): the name a server serves (with --base-url), an embedded model or an HF "
        "folder; each name is recorded in `proficiency`. Per-model settings: `model_options` in --config."))
    k: int = setting(4, flags=("-k", "--k"), min=1, help="Samples per prompt and model.")
    temperature: float = setting(0.7, min=0.0, max=2.0, help="Sampling temperature.")
    top_p: float = setting(0.95, above=0.0, max=1.0, help="Nucleus sampling top_p.")
    max_tokens: int = setting(1024, min=1, help=(
        "Token limit per answer (a cut answer usually has no final answer: wrong)."))
    seed: int | None = setting(0, help="Sampling seed (part of the request cache key).")
    responses: tuple[str, ...] = setting((), flags=("--responses",), path=True, help=(
        "Existing base-model answers: files (.jsonl, .json, .csv) or folders (repeatable); read with --preset or "
        "--mapping, one model per file or per record."))
    preset: str | None = setting(None, flags=("--preset", "-p"), help=(
        "Response mapping preset for --responses: mmlu-pro, xstest, qwen25math, generic."))
    mapping: str | None = setting(None, flags=("--mapping", "-m"), path=True, help=(
        "Your own response mapping YAML for --responses."))
    replace: bool = setting(False, flags=("--replace",), help=(
        "Drop the proficiency of models not scored in this run (default: keep them; a model scored again is "
        "replaced)."))
    min_support: int = setting(3, min=1, help="Prompts a unit needs on both sides to enter the Pearson agreement.")
    confidence: float = setting(0.95, min=0.5, max=0.999, help="Confidence of the Wilson intervals.")
    model_options: dict[str, Any] = setting({}, no_flag="a mapping of model options per base model", help=(
        "{base model: {backend, base_url, model, ...}}: the model options of one base model, over the shared ones."))
    templates_dir: str | None = setting(None, path=True, help="Your own templates folder (score/<domain>.j2).")
    math_timeout: float = setting(5.0, min=0.1, help="Seconds per math comparison.")
    workers: int | None = setting(None, min=1, help="Math worker processes (default: available cores).")
    plots: bool = setting(True, help="Write agreement.png.")

    def __post_init__(self) -> None:
        self.base_models = tuple(self.base_models)
        self.responses = tuple(str(r) for r in self.responses)
        check_settings(self, STAGE)
        if len(set(self.base_models)) != len(self.base_models):
            raise UserError(f"score: a base model is named twice in {list(self.base_models)}")
        if self.responses and bool(self.preset) == bool(self.mapping):
            raise UserError("score: --responses needs exactly one of --preset NAME or --mapping FILE.yaml")
        if (self.preset or self.mapping) and not self.responses:
            raise UserError("score: --preset/--mapping read answer files: give them with --responses FILE")
        for name, options in self.model_options.items():
            if not isinstance(options, dict):
                raise UserError(f"score: model_options.{name}: expected a mapping of model options, got {options!r}")
            unknown = sorted(set(options) - set(MODEL_OPTION_KEYS))
            if unknown:
                raise UserError(f"score: model_options.{name}: unknown key(s) {', '.join(unknown)}; "
                                f"expected some of {', '.join(MODEL_OPTION_KEYS)}")
        extra = sorted(set(self.model_options) - set(self.base_models))
        if extra:
            raise UserError(f"score: model_options name models that are not base models: {', '.join(extra)}")


_ROW_COLUMNS = ("id", "source", "domain", "question", "reference", "choices", "meta")  # source: imported answers match on it
_TALLY = {"model": Value("string"), "correct": Value("int64"), "samples": Value("int64")}
BATCH_FEATURES = Features({"tally": [_TALLY], "errors": [ERROR]})  # what score_batch returns per row


@stage(STAGE, ScoreConfig, needs_backend=lambda cfg: bool(cfg.base_models), batched=True,
       requires={"id": "the request cache key", "domain": "the answer check", "question": "the prompt",
                 "reference": "checking answers"},
       provides=("proficiency",), needs_base_models=lambda cfg: bool(cfg.base_models))
def score(ds: Dataset, config: ScoreConfig, *, backend: Any = None, progress: bool = False,
          backend_factory: Callable[[str, dict[str, Any]], Any] | None = None, pool: Any = None,
          executor: Any = None) -> StageResult:
    """Score the base models of `config` on every row of `ds`.

    Running models need `backend_factory(name, model_options[name]) -> Backend` (the CLI builds one per model,
    used and closed one after the other) or, for a single base model, `backend`. `pool`: a MathPool to reuse.
    `executor` (metakl.executors): where the batches run (requests and answer checks; under Ray each model is reached
    through a gateway actor); the tallies are added up into the `proficiency` column and the tables here.
    """
    from metakl.executors import LOCAL

    cfg = config
    names = _models_to_run(ds, cfg, backend, backend_factory)
    executor = executor or LOCAL
    rows_ds = ds.select_columns([c for c in _ROW_COLUMNS if c in ds.column_names])
    report: dict[str, Any] = {}
    # The rows with their imported answers, checked before any model runs.
    imported, sources = _import_answers(ds, rows_ds, cfg, names, report) if cfg.responses else (None, {})

    def build(name: str) -> Any:
        overrides = dict(cfg.model_options.get(name) or {})
        if backend_factory is None:
            return backend
        if hasattr(backend_factory, "options"):  # model options: the executor decides where the model is reached
            return executor.backend(backend_factory.options(name, overrides))
        return backend_factory(name, overrides)

    tallies, new_errors, stats = _score_passes(rows_ds, imported, names, build, backend, sources, cfg, executor,
                                               pool, progress)
    prof_column = _proficiency_column(ds, cfg, sources, tallies)
    out = ds.remove_columns("proficiency") if "proficiency" in ds.column_names else ds
    out = out.add_column("proficiency", prof_column, feature=[PROFICIENCY])
    out = replace_stage_errors(out, STAGE, new_errors)
    artifacts = _tables_and_report(out, column(ds, "domain"), prof_column, sources, stats, cfg, report)
    return StageResult(out, report, artifacts)


def _models_to_run(ds: Dataset, cfg: ScoreConfig, backend: Any, backend_factory: Any) -> list[str]:
    """The base models to run; refuses a run with nothing to score, no way to reach a model, or bad model options,
    before any model runs."""
    names = list(cfg.base_models)
    if not names and backend is not None and not cfg.responses:
        names = [backend.model]
    if not names and not cfg.responses:
        raise UserError("score: nothing to score: give --base-model NAME (run a model) or --responses FILE "
                        "--preset NAME (import existing answers)")
    if names and backend_factory is None and (backend is None or len(names) > 1):
        raise UserError(f"score: base model(s) {', '.join(names)} need a model backend "
                        f"({'one per model: a backend_factory' if len(names) > 1 else 'pass backend='})")
    check = getattr(backend_factory, "check", None)
    for name in names if check is not None else []:  # every model's options, before any model runs
        check(name, dict(cfg.model_options.get(name) or {}))
    return names


def _import_answers(ds: Dataset, rows_ds: Dataset, cfg: ScoreConfig, names: list[str],
                    report: dict[str, Any]) -> tuple[Dataset | None, dict[str, dict[str, Any]]]:
    """Imported answers matched to rows (a whole-dataset step; they are checked in batches like a model's answers):
    (the rows with their answers or None when none matched, the imported models as `sources`). Adds
    `report["import"]`."""
    from metakl.stages.import_responses import attach_responses, load_response_mapping

    mapping = load_response_mapping(cfg.mapping or cfg.preset)
    base = (Dataset.from_list([{**r, "responses": []} for r in rows_ds.to_list()]) if len(rows_ds)
            else ds.select_columns([]))
    attached, imp = attach_responses(base, list(cfg.responses), mapping, replace=True)
    report["import"] = {k: imp[k] for k in ("mapping", "source", "files", "records", "matched", "matched_by_id",
                                            "attached_to_several", "unmatched", "unmatched_examples", "ambiguous",
                                            "ambiguous_examples", "responses_per_model")}
    clash = sorted(set(imp["responses_per_model"]) & set(names))
    if clash:
        raise UserError(f"score: model(s) {', '.join(clash)} are both imported from files and run; rename one")
    sources = {model: {"source": "imported", "from": mapping.name} for model in imp["responses_per_model"]}
    return (attached if len(attached) else None), sources


def _score_passes(rows_ds: Dataset, imported: Dataset | None, names: list[str], build: Callable[[str], Any],
                  backend: Any, sources: dict[str, dict[str, Any]], cfg: ScoreConfig, executor: Any, pool: Any,
                  progress: bool) -> tuple[list[dict[str, list[int]]], dict[int, list[dict]], dict[str, Any]]:
    """Imported answers first (they need no model); then running models one at a time, each backend closed before
    the next one starts. Returns (per row: model -> [correct, samples], per-row errors, the batches' merged stats);
    adds each run model to `sources`."""
    from metakl.executors import merge_stats
    from metakl.verify import MathPool

    tallies: list[dict[str, list[int]]] = [{} for _ in range(len(rows_ds))]
    new_errors: dict[int, list[dict]] = defaultdict(list)
    parts: list[dict[str, Any]] = []
    own_pool = pool is None
    if own_pool:  # its processes start on the first math check
        pool = MathPool(workers=cfg.workers, timeout=cfg.math_timeout)
    try:
        for name in ([None] if imported is not None else []) + names:
            data = imported if name is None else rows_ds
            b = None if name is None else build(name)
            try:
                if name is not None:
                    sources[name] = {"source": "run", "model": getattr(b, "model", name), "backend": getattr(b, "kind", None)}
                out, stats = executor.map_batches(data, score_batch, BATCH_FEATURES,
                                                  kwargs={"config": cfg, "model": name, "backend": b},
                                                  local_kwargs={"pool": pool}, progress=progress,
                                                  desc=STAGE if name is None else f"{STAGE} {name}")
                parts.extend(stats)
                if name is not None:
                    sources[name]["llm"] = _stats(b)
            finally:
                if b is not None and b is not backend:
                    b.close()
            for ri, (row_tally, errs) in enumerate(zip(column(out, "tally"), column(out, "errors"))):
                for t in row_tally:
                    tallies[ri][t["model"]] = [t["correct"], t["samples"]]
                for e in errs:
                    if e not in new_errors[ri]:  # a bad row is reported by every model's pass: once
                        new_errors[ri].append(e)
    finally:
        if own_pool:
            pool.close()
    return tallies, dict(new_errors), merge_stats(parts)


def _proficiency_column(ds: Dataset, cfg: ScoreConfig, sources: dict[str, dict[str, Any]],
                        tallies: list[dict[str, list[int]]]) -> list[list[dict[str, Any]]]:
    """Proficiency entries: correct samples / samples per (row, model); other models' earlier entries stay unless
    `replace`."""
    scored = set(sources)
    previous = column(ds, "proficiency") if "proficiency" in ds.column_names else [[] for _ in range(len(ds))]
    prof_column = []
    for ri, entries in enumerate(previous):
        keep = [] if cfg.replace else [dict(e) for e in entries or [] if e.get("model") not in scored]
        for model in sources:
            t = tallies[ri].get(model)
            if t:
                keep.append({"model": model, "accuracy": t[0] / t[1], "samples": t[1]})
        prof_column.append(keep)
    return prof_column


def _tables_and_report(out: Dataset, domains: list[str], prof_column: list[list[dict[str, Any]]],
                       sources: dict[str, dict[str, Any]], stats: dict[str, Any], cfg: ScoreConfig,
                       report: dict[str, Any]) -> dict[str, Any]:
    """The proficiency and agreement tables (the artifacts returned) and the stage report (filled in `report`)."""
    tables = proficiency_tables(out, cfg.confidence, cfg.min_support)
    verify_stats = {"answers_checked": 0, "no_answer": 0, "safety_judged": 0, **stats.get("verify", {})}
    report.update(_report(domains, prof_column, sources, tables, verify_stats, cfg))
    if stats.get("templates"):
        report["templates"] = stats["templates"]
    run_llm = [s["llm"] for s in sources.values() if s.get("llm")]
    if run_llm:
        report["llm"] = _sum_stats(run_llm)
    artifacts: dict[str, Any] = {PROFICIENCY_FILE: tables["proficiency"], AGREEMENT_FILE: tables["agreement"]}
    if cfg.plots and tables["agreement"]["models"]:
        from metakl.stages.plots import agreement_heatmap

        try:
            artifacts[AGREEMENT_PNG] = agreement_heatmap(tables["agreement"])
        except ImportError as exc:  # matplotlib missing: the numbers are in agreement.json
            report["plots"] = f"no plot: {exc} (pip install matplotlib)"
    return artifacts


def score_batch(rows: list[dict[str, Any]], *, config: ScoreConfig, model: str | None = None, backend: Any = None,
                progress: bool = False, pool: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One batch of rows → per row `{tally: [{model, correct, samples}], errors: [...]}` and additive statistics.

    With `model` and `backend`: k answers per row from that model, checked. Without: the rows' `responses` (imported
    answers, each naming its model) are checked. Without a `pool`: this process's own (executor workers)."""
    from metakl.verify import process_pool

    cfg = config
    new_errors: dict[int, list[dict]] = defaultdict(list)
    items: list[tuple[int, str, str, str | None]] = []  # (row, model, text, answer or None)
    templates: dict[str, Any] = {}
    requests: list = []
    if model is None:
        for ri, row in enumerate(rows):
            for resp in row.get("responses") or []:
                items.append((ri, resp["model"], resp["text"] or "", resp["answer"]))
    else:
        requests, owners = _requests(rows, cfg, templates, new_errors)
        for result in backend.generate_all(requests, progress=progress) if requests else []:
            ri = owners[result.index]
            if not result.ok:
                new_errors[ri].append(error(STAGE, "llm_error", f"{model}: {str(result.error)[:300]}"))
                continue
            for text in result.completion.texts:
                items.append((ri, model, text or "", None))
    pool = pool if pool is not None else process_pool(cfg.workers, cfg.math_timeout)
    correct, verify_stats = _verify(rows, items, cfg, pool, progress, new_errors)
    counts: list[dict[str, list[int]]] = [{} for _ in rows]
    for (ri, name, _, _), ok in zip(items, correct):
        t = counts[ri].setdefault(name, [0, 0])
        t[0] += ok
        t[1] += 1
    out = [{"tally": [{"model": m, "correct": c, "samples": n} for m, (c, n) in counts[ri].items()],
            "errors": new_errors.get(ri, [])} for ri in range(len(rows))]
    return out, {"verify": verify_stats, "templates": sorted(t.ref for t in templates.values()), "requests": len(requests)}


def _requests(rows: list[dict], cfg: ScoreConfig, templates: dict, new_errors: dict) -> tuple[list, list[int]]:
    from metakl.llm import ChatRequest
    from metakl.templates import load_template

    requests, owners = [], []
    for ri, row in enumerate(rows):
        domain = row.get("domain")
        if domain not in DOMAINS or not (row.get("question") or "").strip() or not (row.get("reference") or "").strip():
            new_errors[ri].append(error(STAGE, "bad_row", f"cannot score: domain {domain!r}, question or reference missing"))
            continue
        if domain not in templates:
            templates[domain] = load_template("score", domain, cfg.templates_dir)
        choices = [{"letter": choice_letter(i), "text": c} for i, c in enumerate(row.get("choices") or [])]
        requests.append(ChatRequest(
            messages=templates[domain].render_messages(question=row["question"], choices=choices), n=cfg.k,
            temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed, tag=row["id"],
        ))
        owners.append(ri)
    return requests, owners


def _verify(rows: list[dict], items: list[tuple[int, str, str, str | None]], cfg: ScoreConfig, pool: Any,
            progress: bool, new_errors: dict) -> tuple[list[bool], dict[str, Any]]:
    """Correctness of every (row, model, text, answer) with the reward stage's verifiers; `pool` checks math."""
    from metakl.verify import answer_kind, answers_match, extract_answer, judge_safety, safe_behaviour

    correct = [False] * len(items)
    math_jobs, math_pairs, safety_jobs, safety_items = [], [], [], []
    no_answer = checked = 0
    for j, (ri, model, text, answer) in enumerate(items):
        row = rows[ri]
        kind = answer_kind(row["domain"], row.get("reference"), row.get("choices"))
        if kind is None:
            if row.get("reference") in ("refuse", "comply"):
                safety_jobs.append(j)
                safety_items.append((row["question"], text))
            continue
        checked += 1
        if not answer:
            answer = extract_answer(text, kind, n_choices=len(row.get("choices") or []) or None)
        if not answer:
            no_answer += 1
            continue
        if kind == "math":
            math_jobs.append(j)
            math_pairs.append((row["reference"], answer))
        else:
            correct[j] = answers_match(kind, row["reference"], answer)
    stats: dict[str, Any] = {"answers_checked": checked, "no_answer": no_answer, "safety_judged": len(safety_jobs)}
    if math_pairs:
        before = dict(pool.stats)
        for j, pair, result in zip(math_jobs, math_pairs, pool.check(math_pairs, progress=progress)):
            correct[j] = bool(result.equal)
            if result.status in ("timeout", "error"):
                ri, model = items[j][0], items[j][1]
                new_errors[ri].append(error(STAGE, f"math_{result.status}", f"{model}: answer {pair[1][:80]!r}"))
        stats["math"] = {key: value - before.get(key, 0) for key, value in pool.stats.items()}  # this batch's share
    if safety_items:
        for j, verdict in zip(safety_jobs, judge_safety(safety_items, None)):
            correct[j] = safe_behaviour(rows[items[j][0]]["reference"], verdict)
    return correct, stats


def proficiency_tables(ds: Dataset, confidence: float = 0.95, min_support: int = 3) -> dict[str, Any]:
    """`proficiency.json` and `agreement.json` from the dataset's `proficiency` and `units` columns."""
    z = z_value(confidence)
    prof = column(ds, "proficiency") if "proficiency" in ds.column_names else [[] for _ in range(len(ds))]
    units = column(ds, "units") if "units" in ds.column_names else [[] for _ in range(len(ds))]
    models = models_in(prof)
    per_row = [prompt_values(e) for e in prof]
    names = models + ([AVERAGE, STRICT] if models else [])
    stats = {m: unit_stats(units, [v.get(m) for v in per_row], z) for m in names}
    pool_counts: dict[str, int] = defaultdict(int)
    for us in units:
        for u in dict.fromkeys(us or []):
            pool_counts[u] += 1
    table = {
        u: {"prompts": pool_counts[u], **{m: stats[m][u].as_dict() for m in names}}
        for u in sorted(pool_counts, key=lambda u: (-pool_counts[u], u))
    } if names else {}
    proficiency = {
        "format": "metakl-proficiency", "version": 1, "models": models,
        "interval": f"Wilson score interval over prompts, {confidence:.0%} (conservative for fractional accuracies)",
        "average": "mean over the models that scored a prompt, then over the unit's prompts",
        "strict": f"a prompt counts as right when every model that scored it has accuracy >= {STRICT_CORRECT}",
        "confidence": confidence, "min_support": min_support, "units": table,
    }
    agreement = pearson_matrix(stats, min_support) if models else {"models": [], "min_support": min_support,
                                                                    "pearson": [], "units_compared": []}
    return {"proficiency": proficiency, "agreement": agreement, "stats": stats}


def _report(domains: list[str], column: list[list[dict]], sources: dict, tables: dict, verify_stats: dict,
            cfg: ScoreConfig) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for model, src in sources.items():
        accs: dict[str, list[float]] = defaultdict(list)
        samples = 0
        for domain, entries in zip(domains, column):
            for e in entries:
                if e["model"] == model:
                    accs[domain].append(e["accuracy"])
                    samples += e["samples"]
        every = [a for v in accs.values() for a in v]
        models[model] = {
            **{k: v for k, v in src.items() if k != "llm"},
            "prompts": len(every), "samples": samples,
            "accuracy": round(sum(every) / len(every), 6) if every else None,
            "accuracy_per_domain": {d: round(sum(v) / len(v), 6) for d, v in sorted(accs.items())},
        }
        if src.get("llm"):
            models[model]["llm"] = src["llm"]
    stats = tables["stats"]
    weakest = []
    if AVERAGE in stats:
        ranked = sorted(((u, s) for u, s in stats[AVERAGE].items() if s.n >= cfg.min_support),
                        key=lambda x: (x[1].mean, -x[1].n, x[0]))
        weakest = [{"unit": u, **s.as_dict()} for u, s in ranked[:10]]
    agreement = tables["agreement"]
    return {
        "models": models,
        "rows_scored": sum(1 for entries in column if entries),
        "units": len(tables["proficiency"]["units"]),
        "units_with_support": sum(1 for s in stats.get(AVERAGE, {}).values() if s.n >= cfg.min_support),
        "weakest_units": weakest,
        "agreement": _agreement_summary(agreement),
        "verify": verify_stats,
    }


def _agreement_summary(agreement: dict[str, Any]) -> dict[str, Any]:
    """Mean Pearson r between distinct models, and of average / strict against each model."""
    names = agreement["models"]
    if not names:
        return {}
    idx = {n: i for i, n in enumerate(names)}
    models = [n for n in names if n not in (AVERAGE, STRICT)]
    m = agreement["pearson"]

    def mean(pairs):
        vals = [m[idx[a]][idx[b]] for a, b in pairs if m[idx[a]][idx[b]] is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    return {
        "between_models": mean([(a, b) for i, a in enumerate(models) for b in models[i + 1:]]),
        "average_vs_models": mean([(AVERAGE, b) for b in models]),
        "strict_vs_models": mean([(STRICT, b) for b in models]),
    }


def _stats(backend: Any) -> dict[str, Any]:
    return backend.stats.as_dict() if hasattr(backend, "stats") else {}


def _sum_stats(all_stats: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in all_stats:
        for k, v in s.items():
            if isinstance(v, dict):
                d = out.setdefault(k, {})
                for kk, vv in v.items():
                    if isinstance(vv, (int, float)) and not isinstance(vv, bool):
                        d[kk] = d.get(kk, 0) + vv
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                digits = 6 if k == "cost_usd" else 3  # money to the micro-dollar
                out[k] = round(out.get(k, 0) + v, digits) if isinstance(v, float) else out.get(k, 0) + v
    return out
