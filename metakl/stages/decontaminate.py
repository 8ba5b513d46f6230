"""The decontaminate stage: find prompts that carry benchmark items, mark them (`contamination`) and drop them.

Three checks, each against every benchmark item (the evaluation suite's tasks, plus the user's `benchmarks`):

- **ngram**: a prompt and an item share a word n-gram (default 13, on lower-cased words without punctuation, as the
  GPT-3 paper and NeMo Curator's task decontamination do). N-grams are hashed to int64 and matched with numpy
  (sorted arrays, `searchsorted`), so 40K prompts against 25K items take seconds. Boilerplate n-grams are ignored:
  one found in more than `max_item_count` benchmark items, or in more than `max_prompt_share` of the dataset's
  prompts ("Which of the following is the ..." in every MMLU item), says nothing about a particular item.
  Score: the share of the item's n-grams found in the prompt.
- **semantic**: the cosine of the prompt's and the item's embeddings (the shared embedding module, its cache, faiss
  inner product) at or above the threshold of the prompt's domain, with dedup's guards: the same numbers and the
  same reference answer, else the pair is a look-alike (the same problem with other numbers is not contamination).
- **answer**: the same normalised text with the same reference answer (or none given): catches items shorter than n
  words, where no n-gram exists ("What is 15% of 80?").

Declared, in the shape of the stage contract: the stage reads REQUIRES (and `reference`/`choices` when present), adds
PROVIDES, and uses an embedder (no chat model).
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from datasets import Dataset

from metakl.config import check_settings, setting
from metakl.embed import DEFAULT_EMBEDDING_DTYPE, DEFAULT_EMBEDDING_MODEL, PROMPT_MAX_SEQ_LENGTH, load_embedder
from metakl.errors import UserError
from metakl.schema import domain_mapping, for_domain, key_values, normalize_text
from metakl.stage import StageResult, stage

STAGE = "decontaminate"
# the columns read from every row, and what for (reference, choices: when present)
REQUIRES = {"id": "naming the matches", "domain": "the per-domain thresholds", "question": "the text compared"}
PROVIDES = ("contamination",)
KINDS = ("ngram", "semantic", "answer")
DEFAULT_NGRAM = 13
# Cosine at or above which a prompt is a rewording of an item (with the same numbers and answer). Lower than dedup's
# 0.92: leaking a test item costs more than losing a training prompt. Read at full size (40K prompts vs 24,112 items,
# bfloat16 MiniLM on 128-token prompt text; docs/results/decontamination.md): math and general 0.88 -> 0.86 finds
# 7 more of the 186 planted reworded items of those domains and adds no other match, neither among the 39,600
# unplanted prompts nor on the real pairs (GSM8K vs MATH, MMLU vs CommonsenseQA, MMLU vs MMLU-Pro math: 416 rows at
# 0.88 and at 0.84); the 8 MMLU-Pro pairs in [0.86, 0.88) the guards refuse are all look-alikes. Safety stays 0.86:
# below it 2 of the 10 prompts it adds are other requests on the same topic. Domains not measured keep 0.88.
DEFAULT_THRESHOLD = {"math": 0.86, "general": 0.86, "safety": 0.86}
OTHER_THRESHOLD = 0.88
NEIGHBOURS = 5  # benchmark items each prompt is compared with in the semantic pass (its nearest)
EXAMPLE_CHARS = 300
NORMALIZATIONS = ("words", "casefold", "none")
CONTAMINATION_FEATURE = [{"benchmark": "string", "item_id": "string", "kind": "string", "score": "float32"}]


@dataclass
class DecontaminateConfig:
    """What `metakl decontaminate` flags and a config's `decontaminate:` section set (one declaration:
    metakl.config.setting)."""

    benchmarks: tuple[str, ...] = setting((), flags=("--benchmark", "-b"), option={"metavar": "SOURCE"}, help=(
        "Also check against these items: PRESET=FILE or a Hub id, as `metakl ingest` takes them (repeatable)."))
    suite: str | None = setting("paper", help=(
        "The `gdpo eval` suite whose tasks' items are checked; 'none' for none. Tasks whose data is absent are "
        "listed as skipped in the report."))
    data_dir: str | None = setting(None, path=True, option={"envvar": "METAKL_SHARED_DATA"}, help=(
        "Where the suite's data lives (default: gdpo eval's data root)."))
    ngram: int = setting(DEFAULT_NGRAM, min=0, help=(
        "Words per n-gram (GPT-3 and NeMo Curator use 13); 0: no n-gram check."))
    normalize: str = setting("words", choices=NORMALIZATIONS, help=(
        "Words of the n-grams: words (case-folded, punctuation dropped), casefold, or none (as written)."))
    max_item_count: int = setting(10, min=1, help="An n-gram in more benchmark items than this is boilerplate and ignored.")
    max_prompt_share: float = setting(0.001, above=0.0, max=1.0, help=(
        "An n-gram in more than this share of the prompts (at least 10 prompts) is boilerplate too."))
    semantic: bool = setting(True, help="Also find reworded items by embedding cosine (cached on disk).")
    threshold: float | None = setting(None, above=0.0, max=1.0, help=(
        "Cosine for a semantic match in every domain (default: math 0.86, general 0.86, safety 0.86, others 0.88)."))
    domain_threshold: dict[str, float] = setting({}, option={"metavar": "DOMAIN=COSINE"}, parse=lambda items: domain_mapping(
        key_values(items, "--domain-threshold", "DOMAIN=COSINE", "math=0.9", float), "--domain-threshold"), help=(
        "Cosine of one domain, over --threshold (repeatable)."))
    match_numbers: bool = setting(True, flags=("--match-numbers/--any-numbers",), help=(
        "Semantic matches must hold the same numbers."))
    match_answers: bool = setting(True, flags=("--match-answers/--any-answers",), help=(
        "Semantic matches must have the same reference answer when both have one."))
    answer_leakage: bool = setting(True, help="The same normalised text with the same answer counts, however short.")
    mark_only: bool = setting(False, flags=("--mark-only",), help=(
        "Keep matched rows (marked in `contamination`) instead of dropping them."))
    embedding_model: str = setting(DEFAULT_EMBEDDING_MODEL, help=(
        "sentence-transformers model: embedded name, folder or Hub id."))
    batch_size: int = setting(64, min=1, help="Texts per embedding call.")
    cache_dir: str | None = setting(None, path=True, option={"envvar": "METAKL_CACHE_DIR"}, help=(
        "Embedding cache folder (default: the user cache)."))
    examples: int = setting(10, min=0, help="Example pairs per kind in the report.")

    def __post_init__(self) -> None:
        self.benchmarks = tuple(str(b) for b in self.benchmarks)
        if self.suite is not None and str(self.suite).strip().lower() in ("", "none"):
            self.suite = None
        check_settings(self, STAGE)
        if self.threshold is not None:
            self.threshold = float(self.threshold)
        self.domain_threshold = {d: _check_threshold(t, f"threshold of domain '{d}'") for d, t in domain_mapping(
            self.domain_threshold, "decontaminate: domain_threshold").items()}

    def threshold_of(self, domain: str) -> float:
        return for_domain(domain, self.domain_threshold, self.threshold, DEFAULT_THRESHOLD, OTHER_THRESHOLD)


def _check_threshold(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UserError(f"{what} must be a cosine in (0, 1], got {value!r}")
    return float(value)


# ---------------------------------------------------------------- benchmarks


@dataclass
class Benchmark:
    """One benchmark's items: ids, texts (question + options), domains and references."""

    name: str
    rows: Dataset
    origin: str  # the SOURCE or the suite task it came from


def read_benchmark(source: str) -> Benchmark:
    """One `--benchmark SOURCE` (PRESET=FILE or a Hub id), read by ingest with its presets; a record that does not
    parse is a UserError naming the file and line (ingest's own message)."""
    from pathlib import Path

    from metakl.stages.ingest import IngestConfig, ingest, split_source

    preset, spec = split_source(source)
    try:
        result = ingest(None, IngestConfig(sources=(source,), on_error="fail"))
    except UserError as exc:  # ingest's line names the file and line; its hint (--on-error) is not ours to offer
        raise UserError(f"benchmark {source}: " + str(exc).split(" Fix the input")[0]) from None
    name = Path(spec).stem if Path(spec).exists() else spec
    return Benchmark(name if preset is None else f"{preset}:{name}", result.dataset, source)


def check_benchmarks(config: DecontaminateConfig) -> None:
    """Before any stage of a run: every --benchmark names a known preset and an existing local file (or a Hub id),
    and the suite exists (a UserError naming the one that does not)."""
    from pathlib import Path

    from metakl.stages.ingest import IngestConfig, source_specs

    if config.benchmarks:
        for spec in source_specs(IngestConfig(sources=config.benchmarks)):
            looks_local = spec.spec.startswith((".", "/", "~")) or Path(spec.spec).suffix != ""
            if looks_local and not Path(spec.spec).expanduser().exists():
                raise UserError(f"'benchmarks': no such file or folder: {spec.spec}")
    if config.suite:
        try:
            from gdpo.eval.suite import load_suite
        except ImportError:
            return  # reported as skipped when the stage runs
        load_suite(config.suite)


def suite_benchmarks(suite: str = "paper", data_root: str | None = None) -> tuple[list[Benchmark], list[dict]]:
    """The items of every task of a `gdpo eval` suite, read exactly as the suite reads them (its task YAMLs, data
    kwargs and `gdpo.eval.data.read_rows`, all items: `n` only samples what one evaluation scores; a `holdout`
    keeps its side), and the tasks that were skipped with the reason (unavailable benchmarks, absent data files).
    Tasks reading the same data are read once, under the first task's name."""
    try:
        from gdpo.eval.data import read_rows
        from gdpo.eval.suite import load_suite
    except ImportError as exc:  # metakl installed without gdpo
        return [], [{"benchmark": f"suite {suite}", "reason": f"gdpo eval is not installed ({exc})"}]
    found: list[Benchmark] = []
    skipped: list[dict] = []
    seen: dict[str, str] = {}
    for task in load_suite(suite).tasks:
        if task.kind == "unavailable":
            skipped.append({"benchmark": task.name, "reason": task.reason or "unavailable"})
            continue
        if task.kind != "lm_eval":
            continue  # nll/selfgen entries measure drift on the model's own text, not items it is scored on
        kwargs = {k: v for k, v in (task.config or {}).get("dataset_kwargs", {}).items()
                  if k in ("path", "preset", "mapping", "keep", "holdout")}
        key = repr(sorted(kwargs.items()))
        if key in seen:
            continue
        seen[key] = task.name
        try:
            rows = read_rows(task=task.name, data_root=data_root, **kwargs)
        except UserError as exc:
            skipped.append({"benchmark": task.name, "reason": str(exc)})
            continue
        found.append(Benchmark(task.name, rows, f"suite {suite}: {task.name}"))
    return found, skipped


def suite_files(suite: str, data_root: str | None = None) -> list[Path]:
    """The data files (and mapping files) the suite's item tasks read, as `suite_benchmarks` would find them: what a
    run fingerprints, so that an edited benchmark file re-runs decontaminate. Tasks that cannot be resolved add
    nothing (suite_benchmarks reports them)."""
    try:
        from gdpo.eval.data import default_data_root
        from gdpo.eval.suite import load_suite
    except ImportError:  # metakl installed without gdpo
        return []
    root = Path(data_root).expanduser() if data_root else default_data_root()
    files: list[Path] = []
    for task in load_suite(suite).tasks:
        kwargs = (task.config or {}).get("dataset_kwargs", {}) if task.kind == "lm_eval" else {}
        for key in ("path", "mapping"):
            if kwargs.get(key):
                p = Path(str(kwargs[key])).expanduser()
                files.append(p if p.is_absolute() else root / p)
    return sorted(set(files))


def read_files(config: "DecontaminateConfig") -> list[Path]:
    """The local files decontaminate reads: its `benchmarks` (as ingest reads them: PRESET=FILE, a file, or a preset
    alone that names its own data) and the data of its suite's tasks."""
    from metakl.stages.ingest import IngestConfig, source_specs

    files = [Path(s.spec).expanduser() for s in source_specs(IngestConfig(sources=config.benchmarks))] if config.benchmarks else []
    return files + (suite_files(config.suite, config.data_dir) if config.suite else [])


# ---------------------------------------------------------------- text


_WORD = re.compile(r"\w+")


def words(text: str, normalize: str = "words") -> list[str]:
    """The words n-grams are made of: `words` case-folds and keeps runs of letters and digits (punctuation and
    spacing drop out, as NeMo Curator's decontamination does), `casefold` case-folds and splits on whitespace,
    `none` splits on whitespace."""
    if normalize == "words":
        return _WORD.findall(normalize_text(text))
    if normalize == "casefold":
        return normalize_text(text).split()
    return text.split()


def ngram_hashes(tokens: list[str], n: int) -> np.ndarray:
    """The distinct n-grams of `tokens` as int64 hashes (sorted; empty for fewer than n words)."""
    if n <= 0 or len(tokens) < n:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.fromiter((hash(tuple(tokens[i:i + n])) for i in range(len(tokens) - n + 1)),
                                 dtype=np.int64, count=len(tokens) - n + 1))


def _texts(ds: Dataset) -> list[str]:
    """Question and options as `A. text` lines, as the n-gram and answer matches read them (an MMLU stem repeats
    with other options)."""
    from metakl.stages.dedup import embedding_texts

    choices = _column(ds, "choices") if "choices" in ds.column_names else None
    return embedding_texts(_column(ds, "question"), choices)


def _column(ds: Dataset, name: str) -> list[Any]:
    """One column as a list. `ds[name]` is a lazy column whose `[i]` decodes one row per call: indexing 64K rows
    that way took ~40 of the 134 s of the full-size benchmark's cached pass."""
    return ds.select_columns([name]).to_dict()[name]


def _embedded_texts(ds: Dataset) -> list[str]:
    """The text embedded for each row: a prompt's one text form (metakl.embed), so rows annotate or dedup embedded
    in this run are read from the cache."""
    from metakl.stages.unit_index import prompt_text

    choices = _column(ds, "choices") if "choices" in ds.column_names else [None] * len(ds)
    return [prompt_text(q if isinstance(q, str) else "", c) for q, c in zip(_column(ds, "question"), choices)]


def _answers(ds: Dataset) -> np.ndarray:
    from metakl.stages.dedup.stage import answer_key

    if "reference" not in ds.column_names:
        return np.zeros(len(ds), dtype=np.int64)
    choices = _column(ds, "choices") if "choices" in ds.column_names else [None] * len(ds)
    return np.array([answer_key(r, c) for r, c in zip(_column(ds, "reference"), choices)], dtype=np.int64)


# ---------------------------------------------------------------- the three checks


def boilerplate_mask(hashes: np.ndarray, owners: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """For (hash, owner) pairs with each owner's hashes distinct: the distinct hashes, and which of them occur in
    more than `limit` owners (boilerplate)."""
    uniq, counts = np.unique(hashes, return_counts=True)
    return uniq, counts > limit


def ngram_matches(row_grams: list[np.ndarray], item_grams: list[np.ndarray], max_item_count: int,
                  max_prompt_count: int) -> tuple[dict[tuple[int, int], float], dict[str, int]]:
    """{(row, item): share of the item's n-grams found in the row} for every pair sharing a non-boilerplate n-gram,
    and how many distinct n-grams were ignored as boilerplate (in > max_item_count items, or > max_prompt_count
    rows)."""
    def flat(grams: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        sizes = np.fromiter((len(g) for g in grams), dtype=np.int64, count=len(grams))
        hashes = np.concatenate(grams) if grams else np.zeros(0, dtype=np.int64)
        return hashes, np.repeat(np.arange(len(grams), dtype=np.int64), sizes)

    ih, io = flat(item_grams)
    rh, ro = flat(row_grams)
    item_uniq, item_common = boilerplate_mask(ih, io, max_item_count)
    row_uniq, row_common = boilerplate_mask(rh, ro, max_prompt_count)
    common = np.union1d(item_uniq[item_common], row_uniq[row_common])
    stats = {"boilerplate_in_items": int(item_common.sum()), "boilerplate_in_prompts": int(row_common.sum())}
    order = np.argsort(ih, kind="stable")
    ih, io = ih[order], io[order]
    keep = np.isin(rh, ih) & ~np.isin(rh, common)
    rh, ro = rh[keep], ro[keep]
    lo, hi = np.searchsorted(ih, rh, "left"), np.searchsorted(ih, rh, "right")
    pairs: Counter = Counter()
    for r, a, b in zip(ro.tolist(), lo.tolist(), hi.tolist()):
        for item in io[a:b].tolist():  # at most max_item_count items per n-gram
            pairs[(r, item)] += 1
    sizes = [len(g) for g in item_grams]
    return {pair: shared / sizes[pair[1]] for pair, shared in pairs.items()}, stats


def answer_matches(row_texts: list[str], row_answers: np.ndarray, item_texts: list[str],
                   item_answers: np.ndarray) -> dict[tuple[int, int], float]:
    """{(row, item): 1.0} where the normalised texts are equal and the answers agree (or either has none)."""
    by_text: dict[str, list[int]] = defaultdict(list)
    for j, t in enumerate(item_texts):
        if key := " ".join(words(t)):
            by_text[key].append(j)
    out = {}
    for i, t in enumerate(row_texts):
        for j in by_text.get(" ".join(words(t)), ()):  # an empty text has no key: it matches nothing
            a, b = row_answers[i], item_answers[j]
            if a == b or a == 0 or b == 0:
                out[(i, j)] = 1.0
    return out


def semantic_matches(row_vectors: np.ndarray, item_vectors: np.ndarray, thresholds: np.ndarray,
                     accept: Callable[[np.ndarray, np.ndarray], np.ndarray], k: int = NEIGHBOURS,
                     ) -> tuple[dict[tuple[int, int], float], int]:
    """{(row, item): cosine} for each row's `k` nearest items (faiss, exact inner product on unit vectors) at or
    above the row's threshold and accepted by the guards, and how many pairs the guards refused."""
    import faiss

    if len(item_vectors) == 0 or len(row_vectors) == 0:
        return {}, 0
    index = faiss.IndexFlatIP(item_vectors.shape[1])
    index.add(np.ascontiguousarray(item_vectors, dtype=np.float32))
    sims, nearest = index.search(np.ascontiguousarray(row_vectors, dtype=np.float32), min(k, len(item_vectors)))
    rows, cols = np.nonzero((sims >= thresholds[:, None]) & (nearest >= 0))
    items = nearest[rows, cols]
    ok = accept(rows, items) if len(rows) else np.zeros(0, dtype=bool)
    found = {(int(r), int(j)): float(s) for r, j, s in zip(rows[ok], items[ok], sims[rows, cols][ok])}
    return found, int((~ok).sum())


def _semantic_pass(config: DecontaminateConfig, embedder: Any, progress: bool, row_texts: list[str],
                   item_texts: list[str], row_questions: list[Any], item_questions: list[Any], row_answers: np.ndarray,
                   item_answers: np.ndarray, domains: list[str]) -> tuple[dict, int, dict]:
    """Embed rows and items (cached), find each row's nearest items at its domain's threshold, and keep the pairs
    the guards accept: (pairs, pairs refused by the guards, embedding counts)."""
    from metakl.stages.dedup.stage import number_key

    if embedder is None:
        embedder = load_embedder(config.embedding_model, PROMPT_MAX_SEQ_LENGTH, config.batch_size,
                                 DEFAULT_EMBEDDING_DTYPE, config.cache_dir)
    before = embedder.stats.as_dict() if hasattr(embedder, "stats") else {}
    # (the embedder gives freed heap back after each chunk it encodes: metakl.embed.embedder.release_freed_heap)
    item_vectors = embedder(item_texts, progress=progress)
    row_vectors = embedder(row_texts, progress=progress)
    embedding: dict[str, Any] = {"model": config.embedding_model}
    if hasattr(embedder, "stats"):
        after = embedder.stats.as_dict()
        embedding.update({k: after[k] - before.get(k, 0) for k in ("encoded", "cache_hits")})
    # numbers of the question alone: a benchmark's copy may carry other options (MMLU-Pro adds six numeric
    # distractors to MMLU's four), and the answer guard compares the options that matter
    row_keys = np.array([number_key(q if isinstance(q, str) else "") for q in row_questions], dtype=np.int64)
    item_keys = np.array([number_key(q if isinstance(q, str) else "") for q in item_questions], dtype=np.int64)

    def accept(rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        ok = np.ones(len(rows), dtype=bool)
        if config.match_numbers:
            ok &= row_keys[rows] == item_keys[items]
        if config.match_answers:
            a, b = row_answers[rows], item_answers[items]
            ok &= (a == b) | (a == 0) | (b == 0)
        return ok

    thresholds = np.array([config.threshold_of(d) for d in domains], dtype=np.float32)
    pairs, refused = semantic_matches(row_vectors, item_vectors, thresholds, accept)
    return pairs, refused, embedding


# ---------------------------------------------------------------- the stage


def _benchmarks_for(config: DecontaminateConfig, benchmarks: list[Benchmark] | None) -> tuple[list[Benchmark], list[dict]]:
    """The benchmarks to check against (`benchmarks`, or the configured ones and the suite's), those with items,
    and the suite's benchmarks skipped for want of data."""
    skipped: list[dict] = []
    if benchmarks is None:
        check_benchmarks(config)
        benchmarks = [read_benchmark(s) for s in config.benchmarks]
        if config.suite:
            from_suite, skipped = suite_benchmarks(config.suite, config.data_dir)
            benchmarks = from_suite + benchmarks
    return [b for b in benchmarks if len(b.rows)], skipped


def _items(benchmarks: list[Benchmark]) -> tuple[list[str], list[str], list[int], np.ndarray]:
    """All items in one list: (texts, ids, `owner[j]` item j's benchmark, answer keys)."""
    item_texts: list[str] = []
    item_ids: list[str] = []
    owner: list[int] = []
    item_answers = []
    for b_i, b in enumerate(benchmarks):
        item_texts += _texts(b.rows)
        item_ids += [str(x) for x in _column(b.rows, "id")]
        owner += [b_i] * len(b.rows)
        item_answers.append(_answers(b.rows))
    return item_texts, item_ids, owner, (np.concatenate(item_answers) if item_answers else np.zeros(0, dtype=np.int64))


def _contamination_column(found: dict[str, dict[tuple[int, int], float]], benchmarks: list[Benchmark],
                          owner: list[int], item_ids: list[str], n: int) -> list[list[dict]]:
    """Each row's matches, `{benchmark, item_id, kind, score}`, by kind then item."""
    column: list[list[dict]] = [[] for _ in range(n)]
    for kind in KINDS:
        for (i, j), score in sorted(found.get(kind, {}).items()):
            column[i].append({"benchmark": benchmarks[owner[j]].name, "item_id": item_ids[j], "kind": kind,
                              "score": round(float(score), 4)})
    return column


@stage(STAGE, DecontaminateConfig, requires=REQUIRES, provides=PROVIDES, needs_embedder=lambda cfg: cfg.semantic,
       reads=read_files)
def decontaminate(ds: Dataset, config: DecontaminateConfig, *, backend: Any = None, progress: bool = False,
                  embedder: Callable[..., np.ndarray] | None = None,
                  benchmarks: list[Benchmark] | None = None) -> StageResult:
    """Mark each row's matches with benchmark items in `contamination` and drop the matched rows (kept, marked,
    with `config.mark_only`). `benchmarks` replaces the configured ones (tests); `embedder` the embedding model."""
    benchmarks, skipped = _benchmarks_for(config, benchmarks)
    n = len(ds)
    t0 = time.perf_counter()
    item_texts, item_ids, owner, item_answers_a = _items(benchmarks)
    row_texts = _texts(ds)
    row_answers = _answers(ds)
    domains = [str(d) for d in _column(ds, "domain")]

    found: dict[str, dict[tuple[int, int], float]] = {}
    ngram_stats: dict[str, int] = {}
    if config.ngram:
        row_grams = [ngram_hashes(words(t, config.normalize), config.ngram) for t in row_texts]
        item_grams = [ngram_hashes(words(t, config.normalize), config.ngram) for t in item_texts]
        prompt_limit = max(10, int(config.max_prompt_share * n))
        found["ngram"], ngram_stats = ngram_matches(row_grams, item_grams, config.max_item_count, prompt_limit)
        ngram_stats["items_shorter_than_n"] = sum(len(g) == 0 for g in item_grams)
        ngram_stats["max_prompt_count"] = prompt_limit
        del row_grams, item_grams
    t_ngram = time.perf_counter() - t0
    if config.answer_leakage:
        found["answer"] = answer_matches(row_texts, row_answers, item_texts, item_answers_a)
    t1 = time.perf_counter()
    refused, embedding = 0, {}
    if config.semantic and item_texts:
        item_questions = [q for b in benchmarks for q in _column(b.rows, "question")]
        found["semantic"], refused, embedding = _semantic_pass(
            config, embedder, progress, _embedded_texts(ds), [t for b in benchmarks for t in _embedded_texts(b.rows)],
            _column(ds, "question"), item_questions, row_answers,
            item_answers_a, domains)
    t_semantic = time.perf_counter() - t1

    column = _contamination_column(found, benchmarks, owner, item_ids, n)
    if "contamination" in ds.column_names:
        ds = ds.remove_columns("contamination")
    from datasets import Value

    feature = [{k: Value(v) for k, v in CONTAMINATION_FEATURE[0].items()}]
    ds = ds.add_column("contamination", column, feature=feature)
    matched = [i for i in range(n) if column[i]]
    report = _report(config, benchmarks, skipped, found, owner, item_ids, item_texts, ds, row_texts, matched,
                     ngram_stats, refused, embedding, t_ngram, t_semantic)
    if not config.mark_only:
        drop = set(matched)
        ds = ds.select([i for i in range(n) if i not in drop])
    report["rows_in"] = n
    return StageResult(ds, report)


def _short(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 3] + "..."


def _report(config: DecontaminateConfig, benchmarks: list[Benchmark], skipped: list[dict], found: dict, owner: list[int],
            item_ids: list[str], item_texts: list[str], ds: Dataset, row_texts: list[str], matched: list[int],
            ngram_stats: dict, refused: int, embedding: dict, t_ngram: float, t_semantic: float) -> dict[str, Any]:
    by_benchmark: dict[str, dict[str, Any]] = {
        b.name: {"items": len(b.rows), "origin": b.origin, **{k: 0 for k in KINDS}, "rows": 0} for b in benchmarks}
    rows_of: dict[str, set] = defaultdict(set)
    examples: dict[str, list[dict]] = {}
    ids = ds["id"]
    for kind in KINDS:
        pairs = found.get(kind, {})
        for (i, j), _ in pairs.items():
            name = benchmarks[owner[j]].name
            by_benchmark[name][kind] += 1
            rows_of[name].add(i)
        # the lowest scores first: the doubtful matches are the ones worth reading
        ex = sorted(pairs.items(), key=lambda kv: (kv[1], kv[0]))[: config.examples]
        examples[kind] = [{"score": round(s, 4), "benchmark": benchmarks[owner[j]].name,
                           "row": {"id": str(ids[i]), "text": _short(row_texts[i])},
                           "item": {"id": item_ids[j], "text": _short(item_texts[j])}} for (i, j), s in ex]
    for name, rows in rows_of.items():
        by_benchmark[name]["rows"] = len(rows)
    by_kind = {k: len({i for (i, _) in found.get(k, {})}) for k in KINDS}
    domains = sorted(set(_column(ds, "domain")))
    return {
        "benchmarks": by_benchmark,  # matches (row, item pairs) per kind and rows matched, per benchmark
        "skipped_benchmarks": skipped,
        "method": {
            "ngram": config.ngram, "normalize": config.normalize, "max_item_count": config.max_item_count,
            "max_prompt_share": config.max_prompt_share, "semantic": config.semantic,
            "threshold": {d: config.threshold_of(d) for d in domains}, "match_numbers": config.match_numbers,
            "match_answers": config.match_answers, "answer_leakage": config.answer_leakage,
            "embedding_model": config.embedding_model if config.semantic else None,
        },
        "rows_matched": len(matched),
        "rows_matched_by_kind": by_kind,
        "dropped": 0 if config.mark_only else len(matched),
        "mark_only": config.mark_only,
        "ngram": ngram_stats,
        "semantic_pairs_refused_by_guards": refused,
        "embedding": embedding,
        "examples": examples,
        "seconds_ngram": round(t_ngram, 3),
        "seconds_semantic": round(t_semantic, 3),
    }
