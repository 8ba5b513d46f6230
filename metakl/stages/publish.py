"""Publish stage: a release folder in Hugging Face Hub layout, with a dataset card, and (optionally) the upload.

Layout (every part loads with `datasets.load_dataset(folder, CONFIG)`):

    README.md                          dataset card: YAML header (configs, dataset_info, license, ...) + sections
    data/all/train-00000-of-0000N.parquet    every row (config `all`, the default); `test` split when asked
    data/{math,general,safety}/...     the rows of one domain (configs of the same names)
    taxonomy/units.parquet             knowledge units: name, description, members, prompts (config `taxonomy`)
    proficiency/matrix.parquet         unit × base model → average proficiency, prompts (config `proficiency`)
    plots/*.png                        figures linked from the card
    metakl_build.json                  how it was built: the run's stages, settings, models, templates, tokens

The stage returns the release as artifacts under `release/`; `metakl publish --out DIR` writes them to DIR, a
pipeline run to RUN_DIR/NN-publish/release. The upload (`push_to_hub`) is one commit with huggingface_hub, the
token from HF_TOKEN or the saved login (never written anywhere by this code).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from datasets import Dataset

from metakl.config import check_settings, setting
from metakl.io import MARKER
from metakl.errors import UserError
from metakl.schema import DOMAINS
from metakl.stage import StageResult, stage

STAGE = "publish"
RELEASE = "release"  # the artifacts' folder inside a stage folder


@dataclass
class PublishConfig:
    """What `metakl publish` flags and a config's `publish:` section set (one declaration: metakl.config.setting)."""

    name: str = setting("MetaKL release", help="The dataset card's title.")
    description: str = setting("", help="A paragraph of your own at the top of the card.")
    license: str = setting("other", help="License of the release (e.g. cc-by-4.0); each source keeps its own.")
    test_size: float | None = setting(None, above=0.0, below=1.0, help=(
        "Share of each config's rows in a `test` split (default: train only)."))
    seed: int = setting(0, help="Seed of the train/test split.")
    drop_duplicates: bool = setting(True, help="Leave out rows marked duplicate_of another (metakl dedup).")
    shard_rows: int = setting(50_000, min=1, help="Rows per parquet file.")
    run_dir: str | None = setting(None, path=True, help=(
        "The `metakl run` folder the input is a stage of (default: the input's parent); the card describes the "
        "stages that led to the input, no other folder."))
    repo_id: str | None = setting(None, help="Repo shown in the card's loading example (default: --push-to-hub's).")
    push_to_hub: str | None = setting(None, help=(
        "Upload to this Hub dataset repo (owner/name) in one commit; token from HF_TOKEN or `hf auth login`."))
    private: bool = setting(False, flags=("--private",), help="Create the repo private.")
    revision: str | None = setting(None, help="Branch to push to (created if missing).")
    commit_message: str | None = setting(None, help="Commit message of the upload.")

    def __post_init__(self) -> None:
        check_settings(self, STAGE)


# ----------------------------------------------------------------------------------------------------------------
# What the run says about how the data was built


def lineage(run_dir: Path | None, input_dir: Path | None = None) -> tuple[list[Path], bool]:
    """(the stage folders whose outputs led to the input, oldest first; whether they come from a `metakl run`).

    A run folder's manifest lists its stages in order with their fingerprints; a stage folder belongs to the chain
    when its `.fingerprint` is the manifest's (an older output left in the folder does not), and it is planned in the
    run's config.yaml. The input's lineage is that chain up to the input (or all of it when the pipeline itself
    publishes: `input_dir` None). An input outside a run's chain has only itself: folders next to it may be anything
    (another run's stages, other experiments), so they are never read."""
    from metakl.pipeline import FINGERPRINT_FILE, MANIFEST, stage_order

    chain: list[Path] = []
    manifest = _json(run_dir / MANIFEST) if run_dir is not None else None
    if isinstance(manifest, dict) and isinstance(manifest.get("stages"), list):
        config = _yaml(run_dir / "config.yaml")
        planned = config.get("stages") if isinstance(config, dict) else None
        if planned is None and isinstance(config, dict):
            planned = [name for name in stage_order() if name in config]
        for entry in manifest["stages"]:
            if not isinstance(entry, dict) or entry.get("stage") == STAGE or not entry.get("folder"):
                continue
            folder = run_dir / str(entry["folder"])
            stored = _json(folder / FINGERPRINT_FILE)
            if (planned is None or entry.get("stage") in planned) and isinstance(stored, dict) \
                    and stored.get("fingerprint") == entry.get("fingerprint"):
                chain.append(folder)
    if input_dir is None:
        return chain, bool(chain)
    where = [i for i, folder in enumerate(chain) if folder.resolve() == input_dir.resolve()]
    if where:
        return chain[: where[0] + 1], True
    return ([input_dir] if input_dir.is_dir() else []), False


def read_run(run_dir: Path | None, input_dir: Path | None = None) -> dict[str, Any]:
    """Stage reports (by stage) and the taxonomy of the input's lineage (see `lineage`), and the run's manifest when
    the input is part of one; empty when none."""
    out: dict[str, Any] = {"reports": {}, "taxonomy": None, "manifest": None, "from_run": False}
    if run_dir is not None and not run_dir.is_dir():
        run_dir = None
    folders, from_run = lineage(run_dir, input_dir)
    out["from_run"] = from_run
    if from_run:
        from metakl.pipeline import MANIFEST

        out["manifest"] = _json(run_dir / MANIFEST)
    for folder in folders:
        for report in folder.glob("*_report.json"):
            data = _json(report)
            if isinstance(data, dict) and data.get("stage") and data["stage"] != STAGE:
                out["reports"][data["stage"]] = data
        tax = folder / "taxonomy.json"
        if tax.exists():
            out["taxonomy"] = _json(tax)  # the latest stage's
    return out


def _yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# Tables


def taxonomy_table(ds: Dataset, taxonomy: dict[str, Any] | None) -> Dataset:
    """One row per knowledge unit used by the release: name, description, members, number of prompts."""
    counts = Counter(u for units in (ds["units"] if "units" in ds.column_names else []) for u in units or [])
    units = (taxonomy or {}).get("units") or {}
    names = sorted(counts, key=lambda u: (-counts[u], u))
    return Dataset.from_dict({
        "unit": names,
        "description": [str((units.get(u) or {}).get("description") or "") for u in names],
        "members": [sorted((units.get(u) or {}).get("members") or {}) for u in names],
        "prompts": [counts[u] for u in names],
    })


def proficiency_table(ds: Dataset) -> Dataset:
    """Unit × base model → average proficiency (mean over the unit's prompts of the prompt's accuracy), with the
    model `average` (mean over models per prompt first: the paper's average proficiency)."""
    if "units" not in ds.column_names or "proficiency" not in ds.column_names:
        return Dataset.from_dict({"unit": [], "model": [], "proficiency": [], "prompts": []})
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for units, prof in zip(ds["units"], ds["proficiency"]):
        scored = [p for p in prof or [] if p.get("accuracy") is not None]
        if not scored:
            continue
        mean = sum(p["accuracy"] for p in scored) / len(scored)
        for u in units or []:
            for p in scored:
                acc[u, p["model"]].append(p["accuracy"])
            acc[u, "average"].append(mean)
    keys = sorted(acc)
    return Dataset.from_dict({
        "unit": [k[0] for k in keys], "model": [k[1] for k in keys],
        "proficiency": [sum(acc[k]) / len(acc[k]) for k in keys], "prompts": [len(acc[k]) for k in keys],
    })


def _splits(ds: Dataset, cfg: PublishConfig) -> dict[str, Dataset]:
    if cfg.test_size is None or len(ds) < 2:
        return {"train": ds}
    parts = ds.train_test_split(test_size=cfg.test_size, seed=cfg.seed)
    return {"train": parts["train"], "test": parts["test"]}


def _parquet(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.to_parquet(buf)
    return buf.getvalue()


def project_url() -> str | None:
    """The project's URL from the installed `metakl` distribution's metadata (pyproject's [project.urls]: Homepage,
    Repository or Source first, else the first; or Home-page), None where it has none: the card then names the
    project without a link rather than a made-up one."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        meta = metadata("metakl")
    except PackageNotFoundError:
        return None
    urls = [entry.partition(",")[::2] for entry in meta.get_all("Project-URL") or []]
    urls = [(label.strip().lower(), url.strip()) for label, url in urls if url.strip()]
    for wanted in ("homepage", "repository", "source"):
        for label, url in urls:
            if label == wanted:
                return url
    if urls:
        return urls[0][1]
    home = (meta.get("Home-page") or "").strip()
    return home if home and home.upper() != "UNKNOWN" else None


def _shards(ds: Dataset, folder: str, split: str, shard_rows: int) -> dict[str, Dataset]:
    n = max(1, math.ceil(len(ds) / shard_rows))
    return {f"{folder}/{split}-{i:05d}-of-{n:05d}.parquet": ds.select(range(i * shard_rows, min(len(ds), (i + 1) * shard_rows)))
            for i in range(n)}


# ----------------------------------------------------------------------------------------------------------------
# Statistics and plots


def statistics(ds: Dataset) -> dict[str, Any]:
    cols = set(ds.column_names)
    stats: dict[str, Any] = {"rows": len(ds), "domains": dict(Counter(ds["domain"])), "sources": dict(Counter(ds["source"]))}
    if "units" in cols:
        per_prompt = Counter(len(u or []) for u in ds["units"])
        stats["units_per_prompt"] = {str(k): v for k, v in sorted(per_prompt.items())}
        top = Counter(u for units in ds["units"] for u in units or [])
        stats["distinct_units"] = len(top)
        stats["top_units"] = top.most_common(15)
    if "responses" in cols:
        rewards: dict[str, list[float]] = defaultdict(list)
        sizes = []
        for domain, responses in zip(ds["domain"], ds["responses"]):
            sizes.append(len(responses or []))
            rewards[domain].extend(r["reward"] for r in responses or [] if r.get("reward") is not None)
        stats["responses"] = sum(sizes)
        stats["responses_per_prompt"] = {"min": min(sizes, default=0), "max": max(sizes, default=0)}
        stats["mean_reward"] = {d: round(sum(v) / len(v), 4) for d, v in sorted(rewards.items()) if v}
        models = Counter(r.get("model") for responses in ds["responses"] for r in responses or [])
        stats["teachers"] = dict(models.most_common())
    if "proficiency" in cols:
        per_model: dict[str, list[float]] = defaultdict(list)
        for prof in ds["proficiency"]:
            for p in prof or []:
                if p.get("accuracy") is not None:
                    per_model[p["model"]].append(p["accuracy"])
        stats["base_models"] = {m: {"prompts": len(v), "mean_accuracy": round(sum(v) / len(v), 4)}
                                for m, v in sorted(per_model.items())}
    if "zero_variance" in cols:
        stats["zero_variance_groups"] = sum(bool(z) for z in ds["zero_variance"])
    return stats


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plots(ds: Dataset, stats: dict[str, Any]) -> dict[str, bytes]:
    """Figures for the card, as PNG bytes by file name (none for columns the release lacks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(5, 3))
    domains = [d for d in DOMAINS if d in stats["domains"]]
    ax.bar(domains, [stats["domains"][d] for d in domains], color=["#4c72b0", "#55a868", "#c44e52"][: len(domains)])
    ax.set_ylabel("prompts")
    ax.set_title("Prompts per domain")
    out["domains.png"] = _png(fig)
    if stats.get("top_units"):
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(stats["top_units"]) + 1))
        names = [u for u, _ in stats["top_units"]][::-1]
        ax.barh(names, [c for _, c in stats["top_units"]][::-1], color="#4c72b0")
        ax.set_xlabel("prompts")
        ax.set_title("Most frequent knowledge units")
        out["top_units.png"] = _png(fig)
        fig, ax = plt.subplots(figsize=(5, 3))
        k = sorted(stats["units_per_prompt"], key=int)
        ax.bar(k, [stats["units_per_prompt"][x] for x in k], color="#55a868")
        ax.set_xlabel("knowledge units per prompt")
        ax.set_ylabel("prompts")
        out["units_per_prompt.png"] = _png(fig)
    if "responses" in ds.column_names:
        fig, ax = plt.subplots(figsize=(5, 3))
        for domain in DOMAINS:
            values = [r["reward"] for d, rs in zip(ds["domain"], ds["responses"]) if d == domain
                      for r in rs or [] if r.get("reward") is not None]
            if values:
                ax.hist(values, bins=20, range=(0, 1), alpha=0.6, label=domain)
        if ax.has_data():
            ax.set_xlabel("teacher reward")
            ax.set_ylabel("responses")
            ax.legend()
            out["rewards.png"] = _png(fig)
        else:
            plt.close(fig)
    if stats.get("base_models"):
        fig, ax = plt.subplots(figsize=(5, 3))
        for model in stats["base_models"]:
            values = [p["accuracy"] for prof in ds["proficiency"] for p in prof or []
                      if p["model"] == model and p.get("accuracy") is not None]
            ax.hist(values, bins=10, range=(0, 1), alpha=0.6, label=model)
        ax.set_xlabel("base-model accuracy per prompt")
        ax.set_ylabel("prompts")
        ax.legend(fontsize=7)
        out["proficiency.png"] = _png(fig)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The card


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _source_datasets(sources: list[str]) -> list[str]:
    """Hub ids of the presets whose `source` names appear in the release."""
    from metakl.stages.ingest import list_presets, load_preset

    ids = set()
    wanted = set(sources)
    for name in list_presets():
        m = load_preset(name)
        if m.source in wanted and m.hub.get("id"):
            ids.add(m.hub["id"])
    return sorted(ids)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def card(cfg: PublishConfig, configs: dict[str, dict[str, Dataset]], stats: dict[str, Any], run: dict[str, Any],
         figures: list[str], gap: dict[str, Any] | None, *, sizes: dict[str, dict[str, int]] | None = None) -> str:
    """The dataset card: a YAML header written with huggingface_hub's card classes, then the sections (the
    template annotations/templates/publish/card.j2, rendered with `card_values`)."""
    from huggingface_hub import DatasetCard

    header = _card_data(cfg, configs, stats, sizes).to_yaml()
    body = render_card_body(card_values(cfg, configs, stats, run, figures, gap))
    return DatasetCard("---\n" + header + "\n---\n\n" + body).content


def _card_data(cfg: PublishConfig, configs: dict[str, dict[str, Dataset]], stats: dict[str, Any],
               sizes: dict[str, dict[str, int]] | None):
    """The card's YAML header: pretty name, license, tags, and each config's files, features and sizes."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from huggingface_hub import DatasetCardData

    config_entries, infos = [], []
    for name, splits in configs.items():
        entry = {"config_name": name, "data_files": [{"split": s, "path": f"{_config_folder(name)}/{s}-*.parquet"}
                                                     for s in splits]}
        if name == "all":
            entry["default"] = True
        config_entries.append(entry)
        first = next(iter(splits.values()))
        info = DatasetInfo(features=first.features)
        split_dict = SplitDict()
        size = (sizes or {}).get(name, {})
        for s, d in splits.items():
            split_dict.add(SplitInfo(name=s, num_examples=len(d), num_bytes=size.get(s, 0)))
        info.splits = split_dict
        if size:  # the parquet files as written: what a user downloads, and the data's size on disk
            info.download_size = info.dataset_size = sum(size.values())
        infos.append({"config_name": name, **info._to_yaml_dict()})
    return DatasetCardData(
        pretty_name=cfg.name,
        license=cfg.license,
        task_categories=["text-generation"],
        tags=["metakl", "metagdpo", "distillation", "preference", "knowledge-units", "synthetic"],
        size_categories=[_size_category(stats["rows"])],
        source_datasets=_source_datasets(list(stats["sources"])),
        configs=config_entries,
        dataset_info=infos,
    )


def card_values(cfg: PublishConfig, configs: dict[str, dict[str, Dataset]], stats: dict[str, Any],
                run: dict[str, Any], figures: list[str], gap: dict[str, Any] | None) -> dict[str, Any]:
    """What the card template shows: the facts, worked out here; the wording is the template's."""
    reports = run.get("reports") or {}
    columns = set(next(iter(configs["all"].values())).column_names)
    stages = []
    for name, r in reports.items():
        llm = r.get("llm") or {}
        tokens = (llm.get("prompt_tokens") or 0) + (llm.get("completion_tokens") or 0)
        stages.append([name, r.get("rows_in"), r.get("rows_out"), llm.get("model") or "-", f"{tokens:,}",
                       ", ".join(r.get("templates") or []) or "-", r.get("seconds")])
    dedup = reports.get("dedup")
    removed = None
    if dedup:
        removed = dedup.get("removed") if isinstance(dedup.get("removed"), int) else dedup.get("duplicates")
    return {
        "name": cfg.name, "description": cfg.description, "license": cfg.license, "url": project_url(),
        "repo": cfg.repo_id or cfg.push_to_hub or "YOUR_NAME/your-metakl-release",
        "has": [text for column, text in _HAS.items() if column in columns],
        "columns": [text for column, text in _COLUMNS.items() if column in columns],
        "responses": "responses" in columns,  # GDPO learns from groups of scored responses
        "contents": [[n, ", ".join(s), sum(len(d) for d in s.values())] for n, s in configs.items()],
        "stages": stages, "manifest": run.get("manifest") or {}, "from_run": run.get("from_run"),
        "costs": _stage_costs(reports),
        "stats": stats,
        "domains": [[d, stats["domains"].get(d, 0)] for d in DOMAINS if d in stats["domains"]],
        "sources": sorted(stats["sources"].items(), key=lambda kv: -kv[1]),
        "base_models": [[m, v["prompts"], v["mean_accuracy"]] for m, v in (stats.get("base_models") or {}).items()],
        "dedup": bool(dedup), "dedup_removed": removed if removed is not None else "?",
        "decontamination": _decontamination_values(reports["decontaminate"]) if reports.get("decontaminate") else None,
        "gap": _gap_values(gap) if gap else None,
        "figures": figures,
    }


def _stage_costs(reports: dict[str, Any]) -> list[list[Any]]:
    """[stage, "$x"] for each stage whose model had a price (metakl.llm.cost), then the total; empty without."""
    costs = [(name, (r.get("llm") or {}).get("cost_usd")) for name, r in reports.items()]
    costs = [(name, c) for name, c in costs if c is not None]
    if not costs:
        return []
    return [[name, f"${c:.2f}"] for name, c in costs] + [["total", f"${sum(c for _, c in costs):.2f}"]]


def render_card_body(values: dict[str, Any]) -> str:
    """The card template rendered with `values` (one UserError for a broken template of a user's own)."""
    import jinja2

    from metakl.templates import load_template

    template = load_template(STAGE, "card")
    # Block tags on lines of their own leave no blank line behind (the card is Markdown: lines matter).
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, autoescape=False)
    env.filters.update(and_=_and, num=_num)
    env.globals["table"] = _table
    try:
        return env.from_string(template.source).render(values)
    except (jinja2.UndefinedError, jinja2.TemplateSyntaxError) as exc:
        raise UserError(f"template {template.ref}: {exc}") from None


# What the card says of each column, and of the rows that have it; only the release's own columns are described.
_COLUMNS = {
    "question": "`question`",
    "reference": "`reference` (gold answer, choice letter or expected behaviour `refuse`/`comply`)",
    "choices": "`choices`",
    "responses": "`responses` (list of `{text, reasoning, answer, reward, advantage, model, finish_reason}`)",
    "knowledge": "`knowledge` (`{skill, reason}`)",
    "units": "`units` (knowledge units)",
    "proficiency": "`proficiency` (per base model `{model, accuracy, samples}`)",
    "cluster": "`cluster`",
    "duplicate_of": "`duplicate_of`",
    "contamination": "`contamination` (benchmark items a prompt matches: `{benchmark, item_id, kind, score}`)",
    "errors": "`errors` (what each stage could not do, per row)",
}
_HAS = {
    "responses": "a group of teacher responses scored by rewards and group advantages",
    "units": "the metacognitive knowledge units needed to solve it",
    "proficiency": "how well base models already master them",
}


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _num(x: Any) -> str:
    return "–" if x is None else f"{x:.2f}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)


def _decontamination_values(r: dict[str, Any]) -> dict[str, Any]:
    """What `metakl decontaminate` checked the prompts against, how, and what it found (its report)."""
    method = r.get("method") or {}
    checks = []
    if method.get("ngram"):
        checks.append(f"shared {method['ngram']}-grams of words (normalisation: {method.get('normalize')}; an n-gram in "
                      f"more than {method.get('max_item_count')} benchmark items or {method.get('max_prompt_share')} "
                      "of the prompts is boilerplate and ignored)")
    if method.get("semantic"):
        thresholds = ", ".join(f"{d} {t}" for d, t in (method.get("threshold") or {}).items())
        checks.append(f"embedding cosine with {method.get('embedding_model')} at or above {thresholds or '?'}"
                      + (" with the same numbers" if method.get("match_numbers") else "")
                      + (" and the same answer" if method.get("match_answers") else ""))
    if method.get("answer_leakage"):
        checks.append("the same normalised problem with the same answer, however short")
    return {
        "checks": checks, "matched": r.get("rows_matched", 0), "mark_only": bool(r.get("mark_only")),
        "benchmarks": [[n, b.get("items"), b.get("ngram"), b.get("semantic"), b.get("answer"), b.get("rows")]
                       for n, b in (r.get("benchmarks") or {}).items()],
        "skipped": [s.get("benchmark", "?") for s in r.get("skipped_benchmarks") or []],
    }


def _gap_values(gap: dict[str, Any]) -> dict[str, Any]:
    """The filter's gap report for the card: coverage before → after, and the units the base model lacks most."""
    cov = gap.get("coverage") or {}
    before, after = cov.get("before") or {}, cov.get("after") or {}
    coverage = []
    if before or after:
        for key, label in (("prompts", "prompts"), ("units_with_prompts", f"units with prompts (of {_num(cov.get('units'))})"),
                           ("units_at_target", "units at their target"), ("weak_units_at_target", "weak units at their target"),
                           ("mean_proficiency_of_prompts", "mean proficiency of the prompts")):
            coverage.append((label, before.get(key), after.get(key)))
    return {
        "base_model": gap.get("base_model", "?"), "coverage": coverage,
        "lacking": [{k: u.get(k) for k in ("unit", "proficiency", "pool", "target", "selected", "status")}
                    for u in gap.get("lacking") or []],
        "short": {k: v for k, v in (gap.get("short_of_target") or {}).items() if v},
    }


def _config_folder(name: str) -> str:
    return {"taxonomy": "taxonomy", "proficiency": "proficiency"}.get(name, f"data/{name}")


def _gap_report(run: dict[str, Any]) -> dict[str, Any] | None:
    report = (run.get("reports") or {}).get("filter") or {}
    for key in ("knowledge_gap", "gap_report", "gap"):
        if key in report:
            return report[key]
    return None


# ----------------------------------------------------------------------------------------------------------------
# The stage


def finish_publish(result: StageResult, folder: Path, config: PublishConfig) -> str | None:
    """After saving: upload the release when `push_to_hub` is set."""
    release = Path(folder) / RELEASE if (Path(folder) / RELEASE).is_dir() else Path(folder)
    if not config.push_to_hub:
        return f"release: {release}"
    url = push_release(release, config)
    return f"release: {release}; pushed to {config.push_to_hub} ({url})"


def _check_input(ds: Dataset) -> None:
    """Refuse an input with no rows, or with an id on several rows."""
    if len(ds) == 0:
        raise UserError("publish: the input has no rows")
    counts = Counter(ds["id"])
    repeated = [i for i, n in counts.items() if n > 1]
    if repeated:
        raise UserError(f"publish: {len(repeated)} id(s) occur on more than one row ({sum(counts[i] for i in repeated)} "
                        f"rows), e.g. {', '.join(map(repr, repeated[:3]))}; each row needs its own id (were two stage "
                        "outputs put together?)")


@stage(STAGE, PublishConfig, requires={"id": "the release's rows", "domain": "the per-domain configs",
                                       "question": "the released prompts"},
       finish=lambda result, folder, config: finish_publish(result, folder, config),
       takes=("run_dir", "input_dir"), save=lambda result, out, overwrite: write_release(result, out, overwrite=overwrite))
def publish(ds: Dataset, config: PublishConfig, *, backend: Any = None, progress: bool = False,
            run_dir: str | Path | None = None, input_dir: str | Path | None = None) -> StageResult:
    """Build the release (as artifacts under `release/`); the returned dataset is the rows released.

    `input_dir`: the stage folder `ds` was read from (`metakl publish`); without it (a pipeline's own publish
    stage) the input is the last stage of `run_dir`'s run. The card describes that lineage only (`lineage`)."""
    _check_input(ds)
    dropped = 0
    if config.drop_duplicates and "duplicate_of" in ds.column_names:
        keep = [i for i, d in enumerate(ds["duplicate_of"]) if not d]
        dropped = len(ds) - len(keep)
        ds = ds.select(keep)
    input_dir = Path(input_dir) if input_dir else None
    folder = config.run_dir or run_dir or (input_dir.parent if input_dir else None)
    run = read_run(Path(folder) if folder else None, input_dir)
    stats = statistics(ds)
    stats["dropped_duplicates"] = dropped
    configs: dict[str, dict[str, Dataset]] = {"all": _splits(ds, config)}
    for domain in DOMAINS:
        rows = [i for i, d in enumerate(ds["domain"]) if d == domain]
        if rows:
            configs[domain] = _splits(ds.select(rows), config)
    configs["taxonomy"] = {"train": taxonomy_table(ds, run.get("taxonomy"))}
    prof = proficiency_table(ds)
    if len(prof):
        configs["proficiency"] = {"train": prof}
    artifacts: dict[str, Any] = {}
    sizes: dict[str, dict[str, int]] = defaultdict(dict)  # config -> split -> bytes of its parquet files
    for name, splits in configs.items():
        for split, part in splits.items():
            sizes[name][split] = 0
            for path, shard in _shards(part, _config_folder(name), split, config.shard_rows).items():
                # written here rather than by write_folder, so that the card's num_bytes is the files' real size
                artifacts[f"{RELEASE}/{path}"] = data = _parquet(shard)
                sizes[name][split] += len(data)
    figures = plots(ds, stats)
    for name, png in figures.items():
        artifacts[f"{RELEASE}/plots/{name}"] = png
    gap = _gap_report(run)
    artifacts[f"{RELEASE}/README.md"] = card(config, configs, stats, run, sorted(figures), gap, sizes=sizes)
    from metakl.stage import config_dict

    artifacts[f"{RELEASE}/metakl_build.json"] = {
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "publish": {k: v for k, v in config_dict(config).items()
                    if k not in ("push_to_hub", "private", "revision", "run_dir")},  # no machine paths
        "manifest": run.get("manifest"), "reports": run.get("reports"),
    }
    report = {"configs": {n: {s: len(d) for s, d in sp.items()} for n, sp in configs.items()},
              "files": sorted(a.removeprefix(f"{RELEASE}/") for a in artifacts), "statistics": stats,
              "run_reports": sorted(run["reports"])}
    return StageResult(ds, report, artifacts)


# ----------------------------------------------------------------------------------------------------------------
# Writing and uploading


def write_release(result: StageResult, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the release artifacts (without the stage's data.parquet) to `out`, atomically (`overwrite`: see
    metakl.io.write_folder)."""
    from metakl.io import write_folder

    files = {name.removeprefix(f"{RELEASE}/"): obj for name, obj in result.artifacts.items() if name.startswith(f"{RELEASE}/")}
    files["publish_report.json"] = result.report
    return write_folder(out, files, overwrite=overwrite)


def push_release(folder: str | Path, config: PublishConfig) -> str:
    """Upload the release folder to `config.push_to_hub` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    repo = config.push_to_hub
    api = HfApi()
    message = config.commit_message or f"Release built with metakl: {config.name}"
    try:
        api.create_repo(repo, repo_type="dataset", private=config.private, exist_ok=True)
        if config.revision:
            api.create_branch(repo, repo_type="dataset", branch=config.revision, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset",
                                 revision=config.revision, commit_message=message,
                                 ignore_patterns=["publish_report.json", MARKER])  # local bookkeeping only
    except Exception as exc:
        # The Hub said no, no token, or the endpoint is unreachable (huggingface_hub's own HTTP client errors):
        # all things the user can fix. Anything else is a bug and keeps its traceback.
        network = type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3")
        if not (isinstance(exc, (HfHubHTTPError, OSError, ValueError)) or network):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"push to {repo} failed: {type(exc).__name__}: {first}") from None
    return str(getattr(info, "commit_url", info))
