"""The dedup stage: embed each prompt, find its near-duplicates, mark them (`duplicate_of`) and cluster (`cluster`).

Two prompts are near-duplicates when the cosine of their embeddings is at least 1 − ε. Which one stays is the keep
rule's choice; the rule is applied greedily (see metakl.stages.dedup.search): visiting rows from the most to the least
wanted, a row is a duplicate when it is that close to a row already kept. `duplicate_of` holds the kept twin's id
("" for a kept row); `cluster` the k-means cluster the row was compared in (-1 for a row without a question).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import numpy as np
from datasets import Dataset

from metakl.embed import DEFAULT_EMBEDDING_DTYPE, DEFAULT_EMBEDDING_MODEL, PROMPT_MAX_SEQ_LENGTH, load_embedder
from metakl.errors import UserError
from metakl.schema import domain_mapping, for_domain
from metakl.stage import StageResult, replace_stage_errors, stage
from metakl.stages.dedup import search
from metakl.stages.unit_index import prompt_text

STAGE = "dedup"
# Cosine at or above 1 − ε marks a pair as near-duplicates (with the guards below). Chosen per domain by reading
# removals of 44K real prompts at each similarity (docs/dedup_threshold.md): rewordings of a harmful request are still
# the same request at 0.86 (69 of 70 read), while knowledge questions of one template reach 0.90-0.92 with another
# question (5 of 8 duplicates in [0.90, 0.92), 47 of 48 from 0.92 up).
DEFAULT_EPSILON = {"math": 0.08, "general": 0.08, "safety": 0.14}
OTHER_EPSILON = 0.08  # a domain without a default of its own
ENDING_THRESHOLD = 0.90  # endings of two long prompts must reach this cosine (see `ending`)
EXAMPLE_CHARS = 300


class Keep(str, Enum):
    """Which of two near-duplicates stays."""

    hard = "hard"  # lower base-model proficiency; without a proficiency column, the longer question
    easy = "easy"  # the opposite of hard
    random = "random"  # seeded
    first = "first"  # the earlier row (ingest order: the order the sources were given in)
    units = "units"  # more knowledge units (merge's `units`)
    reward = "reward"  # higher mean teacher reward (`responses[].reward`)
    proficiency = "proficiency"  # lower mean base-model accuracy (`proficiency[].accuracy`)


class Method(str, Enum):
    auto = "auto"  # exact up to `exact_limit` rows per group, clustered above
    exact = "exact"
    clustered = "clustered"


@dataclass
class DedupConfig:
    epsilon: float | None = None  # near-duplicates: cosine >= 1 - epsilon, every domain (None: DEFAULT_EPSILON)
    domain_epsilon: dict[str, float] = field(default_factory=dict)  # per-domain epsilon, over `epsilon`
    keep: Keep = Keep.hard
    across_domains: bool = False  # compare rows of different domains too
    drop: bool = False  # write only the kept rows
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    max_seq_length: int | None = PROMPT_MAX_SEQ_LENGTH  # tokens per prompt text (annotate's: its vectors are reused)
    batch_size: int = 64
    embedding_dtype: str = DEFAULT_EMBEDDING_DTYPE  # auto: bfloat16 where the CPU has it natively (metakl.embed)
    include_choices: bool = True  # embed the options with the question (MMLU stems repeat with other options)
    match_numbers: bool = True  # near-duplicates must contain the same numbers (see number_key)
    match_answers: bool = True  # near-duplicates must have the same reference answer (see answer_key)
    tail_chars: int = 300  # two prompts longer than this must also end alike (their last tail_chars; 0: off)
    ending_threshold: float = ENDING_THRESHOLD  # cosine the endings must reach
    method: Method = Method.auto
    exact_limit: int = 20_000  # rows per group up to which every pair is compared
    clusters: int | None = None  # k-means clusters in all (None: one per `leaf_size` rows)
    leaf_size: int = search.DEFAULT_LEAF_SIZE
    nprobe: int = search.DEFAULT_NPROBE  # clusters each row is compared with (its own included)
    seed: int = 0
    examples: int = 10  # example pairs in the report
    cache_dir: str | None = None  # embedding cache folder (None: $METAKL_CACHE_DIR or the user cache)
    threads: int | None = None  # faiss threads (None: OpenMP's default, the cores this process may use)

    def __post_init__(self) -> None:
        if self.epsilon is not None:
            self.epsilon = _check_epsilon(self.epsilon, "epsilon")
        self.domain_epsilon = {d: _check_epsilon(e, f"epsilon of domain '{d}'")
                               for d, e in domain_mapping(self.domain_epsilon, "dedup: domain_epsilon").items()}
        if isinstance(self.ending_threshold, bool) or not 0 <= self.ending_threshold <= 1:
            raise UserError(f"ending_threshold must be in [0, 1], got {self.ending_threshold!r}")
        try:
            self.keep = Keep(self.keep.value if isinstance(self.keep, Enum) else self.keep)
        except ValueError:
            raise UserError(f"keep: expected one of {', '.join(k.value for k in Keep)}, got {self.keep!r}") from None
        try:
            self.method = Method(self.method.value if isinstance(self.method, Enum) else self.method)
        except ValueError:
            raise UserError(f"method: expected one of {', '.join(m.value for m in Method)}, got {self.method!r}") from None
        for name, low in (("leaf_size", 2), ("nprobe", 1), ("batch_size", 1), ("exact_limit", 0), ("examples", 0)):
            if getattr(self, name) < low:
                raise UserError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.clusters is not None and self.clusters < 1:
            raise UserError(f"clusters must be at least 1, got {self.clusters}")
        if self.tail_chars < 0:
            raise UserError(f"tail_chars must be at least 0, got {self.tail_chars}")

    def epsilon_of(self, domain: str) -> float:
        """The ε that applies to `domain`: its own, else the one for every domain, else the default."""
        return for_domain(domain, self.domain_epsilon, self.epsilon, DEFAULT_EPSILON, OTHER_EPSILON)


def _check_epsilon(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UserError(f"{what} must be in (0, 1) (near-duplicates have cosine >= 1 - epsilon), got {value!r}")
    return float(value)


# ---------------------------------------------------------------- texts and keep order


def embedding_texts(questions: list[Any], choices: list[Any] | None = None) -> list[str]:
    """What is embedded for each row: the question, then its options as `A. text` lines."""
    out = []
    for i, q in enumerate(questions):
        text = q if isinstance(q, str) else ""
        opts = choices[i] if choices is not None else None
        if opts:
            text += "\n" + "\n".join(f"{chr(65 + j) if j < 26 else j + 1}. {c}" for j, c in enumerate(opts))
        out.append(text)
    return out


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def number_key(text: str) -> int:
    """A 64-bit digest of the numbers in `text` (as a sorted multiset; `6,000` = `6000`, `9.50` = `9.5`). Two prompts
    are near-duplicates only when their keys agree: the embedding barely sees numbers, so problems that differ only
    in them (another answer) would otherwise look like rewordings."""
    nums = []
    for m in _NUMBER.findall(text):
        m = m.replace(",", "")
        if "." in m:
            m = m.rstrip("0").rstrip(".") or "0"
        nums.append(m.lstrip("0") or "0")
    digest = hashlib.blake2b("|".join(sorted(nums)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


_OPTION_LABEL = re.compile(r"^\s*(?:\(?[A-Za-z]\)?[.):]\s*)+")


def answer_key(reference: Any, choices: list[str] | None = None) -> int:
    """A 64-bit digest of a row's expected answer, 0 when it has none: the text of the correct option for a choice
    letter, else the normalized reference (a final answer, yes/no, refuse/comply). Two prompts are near-duplicates
    only when their answers agree: questions that differ in one word (min/max, odd/even, "north of"/"south of", a
    safe question and its unsafe twin) embed alike but have other answers."""
    from metakl.schema import normalize_text

    if not isinstance(reference, str) or not reference.strip():
        return 0
    ref = reference.strip()
    if choices and len(ref) == 1 and ref.isalpha() and 0 <= ord(ref.upper()) - 65 < len(choices):
        ref = _OPTION_LABEL.sub("", choices[ord(ref.upper()) - 65])  # "A.text" (LogiQA) and "text" are one answer
    digest = hashlib.blake2b(("answer\x1f" + normalize_text(ref)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


def ending(text: str, chars: int) -> str | None:
    """The last `chars` characters of a longer `text`, from a word boundary (None for a text that short).

    A long prompt is mostly its passage or its template (a reading text, a shared context, MMLU's moral-scenarios
    preamble), which then dominates the embedding: two different questions on one passage score 0.93 to 0.97. The
    question and its options come last, so two long prompts count as near-duplicates only when their endings do too.
    """
    if chars <= 0 or len(text) <= chars:
        return None
    tail = text[-chars:]
    cut = tail.find(" ")
    return tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail


def _mean(values: list[float | None]) -> float:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else math.nan


# The column a keep rule reads (declared in `dedup`'s requires): hard and easy use proficiency only when present.
KEEP_READS = {Keep.units: "units", Keep.reward: "responses", Keep.proficiency: "proficiency"}


def _requires(config: "DedupConfig") -> dict[str, str]:
    column = KEEP_READS.get(config.keep)
    return {"question": "the prompts compared", **({column: f"keep={config.keep.value}"} if column else {})}


def keep_scores(ds: Dataset, keep: Keep) -> tuple[np.ndarray, str]:
    """A score per row (higher: kept first; nan: no value, kept last) and how the rule decided, in words."""
    n = len(ds)
    if keep in (Keep.first, Keep.random):
        return np.zeros(n), "dataset order" if keep is Keep.first else "seeded random order"
    if keep is Keep.units:
        col = ds["units"]
        return np.array([float(len(u)) if u is not None else math.nan for u in col]), "more knowledge units"
    if keep is Keep.reward:
        col = ds["responses"]
        scores = np.array([_mean([r.get("reward") for r in rs or []]) for rs in col])
        if np.isnan(scores).all():
            raise UserError("keep=reward: no response has a reward; run `metakl reward` first")
        return scores, "higher mean teacher reward"
    sign = 1.0 if keep is Keep.easy else -1.0
    if keep is Keep.proficiency or "proficiency" in ds.column_names:
        col = ds["proficiency"]
        acc = np.array([_mean([p.get("accuracy") for p in ps or []]) for ps in col])
        if not np.isnan(acc).all():
            words = "higher" if keep is Keep.easy else "lower"
            return sign * acc, f"{words} base-model proficiency (mean accuracy over models)"
        if keep is Keep.proficiency:
            raise UserError("keep=proficiency: the 'proficiency' column holds no accuracy; score the prompts first")
    lengths = np.array([float(len(q)) if isinstance(q, str) else math.nan for q in ds["question"]])
    words = "shorter" if keep is Keep.easy else "longer"
    return -sign * lengths, f"{words} question (no proficiency column to judge difficulty)"


def keep_rank(scores: np.ndarray, keep: Keep, seed: int) -> np.ndarray:
    """rank[i] = position of row i in the keep order (0: kept first). Ties and missing values: dataset order."""
    n = len(scores)
    if keep is Keep.random:
        order = np.random.default_rng(seed).permutation(n)
    else:
        missing = np.isnan(scores)
        order = np.lexsort((np.arange(n), -np.where(missing, 0.0, scores), missing))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank


# ---------------------------------------------------------------- the stage


class _Guards:
    """Which pairs at or above the search threshold count as duplicates: cosine at or above the threshold of both
    rows' domains (they differ only across domains), the same numbers (`keys`), the same reference answer (`answers`,
    0: unknown), and for two long prompts, endings at or above `ending_threshold`. Positions are indices into the
    embedded rows."""

    def __init__(self, tau: np.ndarray, keys: np.ndarray | None, answers: np.ndarray | None, tail_of: np.ndarray,
                 tail_vectors: np.ndarray, ending_threshold: float):
        self.tau, self.keys, self.answers, self.tail_of, self.tail_vectors = tau, keys, answers, tail_of, tail_vectors
        self.ending_threshold = ending_threshold
        self.counts = {"domain_threshold": 0, "numbers": 0, "answer": 0, "ending": 0}

    def __call__(self, a: np.ndarray, b: np.ndarray, s: np.ndarray) -> np.ndarray:
        ok = s >= np.maximum(self.tau[a], self.tau[b])
        self.counts["domain_threshold"] += int((~ok).sum())
        if self.keys is not None:
            same = self.keys[a] == self.keys[b]
            self.counts["numbers"] += int((ok & ~same).sum())
            ok &= same
        if self.answers is not None:
            aa, ab = self.answers[a], self.answers[b]
            same = (aa == ab) | (aa == 0) | (ab == 0)
            self.counts["answer"] += int((ok & ~same).sum())
            ok &= same
        ta, tb = self.tail_of[a], self.tail_of[b]
        both = ok & (ta >= 0) & (tb >= 0)
        if both.any():
            sims = np.einsum("ij,ij->i", self.tail_vectors[ta[both]], self.tail_vectors[tb[both]])
            alike = sims >= self.ending_threshold
            self.counts["ending"] += int((~alike).sum())
            ok[np.flatnonzero(both)[~alike]] = False
        return ok

    def restricted(self, local: np.ndarray) -> search.Accept:
        """The guard for a group whose point t is embedded row local[t]."""
        return lambda a, b, s: self(local[a], local[b], s)


def _column(ds: Dataset, name: str, default: Callable[[int], Any]) -> list:
    return ds[name] if name in ds.column_names else [default(i) for i in range(len(ds))]


def _set_threads(threads: int | None) -> None:
    """faiss's OpenMP threads: `threads` when given, else left as they are (OpenMP's default: the usable cores)."""
    if threads:
        import faiss

        faiss.omp_set_num_threads(threads)


@stage(STAGE, DedupConfig, batched=True, requires=_requires, provides=("duplicate_of", "cluster"), needs_embedder=True)
def dedup(ds: Dataset, config: DedupConfig, *, backend: Any = None, progress: bool = False,
          embedder: Callable[..., np.ndarray] | None = None, executor: Any = None) -> StageResult:
    """Mark near-duplicate prompts (`duplicate_of`) and cluster them (`cluster`); with `config.drop`, keep only the
    rows that stay. `embedder` replaces the configured embedding model (tests, benchmarks). `executor`
    (metakl.executors) embeds the prompts in batches (under Ray, on the cluster); shortening, the few long prompts'
    endings and the search stay here."""
    n = len(ds)
    if n == 0:
        raise UserError("input has no rows: nothing to deduplicate")
    _set_threads(config.threads)
    scores, keep_by = keep_scores(ds, config.keep)
    rank = keep_rank(scores, config.keep, config.seed)

    questions = ds["question"]
    choices = ds["choices"] if config.include_choices and "choices" in ds.column_names else None
    ids = [str(v) for v in _column(ds, "id", str)]
    sources = [str(v) for v in _column(ds, "source", lambda i: "unknown")]
    domains = [str(v) for v in _column(ds, "domain", lambda i: "all")]
    valid = np.array([isinstance(q, str) and bool(q.strip()) for q in questions])
    rows = np.flatnonzero(valid)
    epsilon = {d: config.epsilon_of(d) for d in sorted(set(domains))}
    tau = np.array([1.0 - epsilon[domains[i]] for i in rows], dtype=np.float32)  # per embedded row

    t0 = time.perf_counter()
    embedder, vectors, counts, keys, answers, tail_of, tail_vectors = _embed_prompts(
        ds, rows, questions, choices, config, embedder, executor, progress)
    t_embed = time.perf_counter() - t0
    guard = _Guards(tau, keys, answers, tail_of, tail_vectors, config.ending_threshold)

    t1 = time.perf_counter()
    dup_of, similarity, cluster, groups = _search_groups(vectors, rows, rank, tau, domains, guard, n, config, progress)
    t_search = time.perf_counter() - t1
    del vectors

    duplicate_of = [ids[j] if j >= 0 else "" for j in dup_of.tolist()]
    from metakl.schema import STAGE_FEATURES, error

    for col in ("duplicate_of", "cluster"):
        if col in ds.column_names:
            ds = ds.remove_columns(col)
    ds = ds.add_column("duplicate_of", duplicate_of, feature=STAGE_FEATURES["duplicate_of"])
    ds = ds.add_column("cluster", cluster.tolist(), feature=STAGE_FEATURES["cluster"])
    skipped = np.flatnonzero(~valid)
    ds = replace_stage_errors(ds, STAGE, {int(i): [error(STAGE, "empty_question", "no question to compare; kept")]
                                          for i in skipped})
    removed = dup_of >= 0
    report = _report(config, keep_by, epsilon, ids, sources, domains, questions, dup_of, similarity, cluster,
                     groups, skipped, embedder, counts, t_embed, t_search)
    report["pair_hits_ruled_out"] = guard.counts  # pairs above the threshold the guards refused (by guard)
    report["long_prompts"] = int((tail_of >= 0).sum())  # prompts whose endings were compared too
    if config.drop:
        ds = ds.select(np.flatnonzero(~removed).tolist())
    report["rows_in"] = n
    return StageResult(ds, report)


def _embed_prompts(ds: Dataset, rows: np.ndarray, questions: list, choices: list | None, config: DedupConfig,
                   embedder: Any, executor: Any, progress: bool) -> tuple:
    """The valid rows' prompt vectors and what the guards compare besides them: (the embedder used, vectors, the
    embedding counts, number keys, answer keys, each row's position in the tail vectors (-1: none), the tails'
    vectors)."""
    from metakl.executors import LOCAL, merge_stats

    given = embedder
    if embedder is None:  # here too: its tokenizer shortens long texts, and it embeds their endings
        embedder = load_embedder(config.embedding_model, config.max_seq_length, config.batch_size,
                                 config.embedding_dtype, config.cache_dir)
    texts = embedding_texts([questions[i] for i in rows], [choices[i] for i in rows] if choices is not None else None)
    # The vectors are of annotate's prompt text (metakl.embed: one text form per purpose), so a run that annotated
    # these prompts finds them in the cache; numbers and endings are read from the full question + options.
    embedded = [prompt_text(questions[i], choices[i] if choices is not None else None) for i in rows]
    keys = np.array([number_key(t) for t in texts], dtype=np.int64) if config.match_numbers else None
    answers = None
    if config.match_answers and "reference" in ds.column_names:
        references = ds["reference"]
        all_choices = ds["choices"] if "choices" in ds.column_names else None
        answers = np.array([answer_key(references[i], all_choices[i] if all_choices is not None else None)
                            for i in rows], dtype=np.int64)
    # Long prompts: their endings, embedded apart (see `ending`).
    tails = {pos: tail for pos, t in enumerate(texts) if (tail := ending(t, config.tail_chars)) is not None}
    del texts
    vectors, counts = (executor or LOCAL).embed(
        embedded, model=config.embedding_model, max_seq_length=config.max_seq_length, batch_size=config.batch_size,
        dtype=config.embedding_dtype, cache_dir=config.cache_dir, embedder=given, progress=progress)
    del embedded
    tail_of = np.full(len(rows), -1, dtype=np.int64)  # row position -> its row in tail_vectors
    tail_vectors = np.zeros((0, vectors.shape[1]), dtype=np.float32)
    if tails:
        tail_of[list(tails)] = np.arange(len(tails))
        tail_vectors, tail_counts = LOCAL.embed(list(tails.values()), model=config.embedding_model,
                                                embedder=embedder, progress=progress)
        counts = merge_stats([counts, tail_counts])
    return embedder, vectors, counts, keys, answers, tail_of, tail_vectors


def _search_groups(vectors: np.ndarray, rows: np.ndarray, rank: np.ndarray, tau: np.ndarray, domains: list[str],
                   guard: Any, n: int, config: DedupConfig, progress: bool) -> tuple:
    """Each group's duplicate search (each domain apart, or all at once): (duplicate_of index per row (-1: none),
    similarity to it, cluster per row, per-group statistics)."""
    group_of = np.array(["all" if config.across_domains else domains[i] for i in rows], dtype=object)
    names = sorted(set(group_of.tolist()))
    dup_of = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, np.nan, dtype=np.float32)
    cluster = np.full(n, -1, dtype=np.int64)
    groups: dict[str, dict[str, Any]] = {}
    from metakl.progress import bar as progress_bar

    bar = progress_bar(len(rows), "dedup", "rows", enabled=progress)
    next_cluster = 0
    try:
        for name in names:
            local = np.flatnonzero(group_of == name)  # positions in `rows` / `vectors`
            members = rows[local]
            x = vectors if len(local) == len(rows) else vectors[local]
            order = np.argsort(rank[members], kind="stable")
            local_rank = np.empty(len(members), dtype=np.int64)
            local_rank[order] = np.arange(len(members))
            k = None
            if config.clusters is not None:
                k = max(1, round(config.clusters * len(members) / len(rows)))
            res, part = search.find_duplicates(
                x, local_rank, float(tau[local].min()), method=config.method.value, exact_limit=config.exact_limit, clusters=k,
                leaf_size=config.leaf_size, nprobe=config.nprobe, seed=config.seed,
                accept=guard.restricted(local), tick=bar.update if bar is not None else None)
            del x
            found = res.dup_of >= 0
            dup_of[members[found]] = members[res.dup_of[found]]
            similarity[members[found]] = res.similarity[found]
            cluster[members] = part.leaf + next_cluster
            next_cluster += part.n_leaves
            groups[name] = {"rows": int(len(members)), "removed": int(found.sum()), **res.stats}
    finally:
        if bar is not None:
            bar.close()
    return dup_of, similarity, cluster, groups


def _report(config: DedupConfig, keep_by: str, epsilon: dict[str, float], ids: list[str], sources: list[str],
            domains: list[str], questions: list[Any], dup_of: np.ndarray, similarity: np.ndarray,
            cluster: np.ndarray, groups: dict, skipped: np.ndarray, embedder: Any, counts: dict[str, Any],
            t_embed: float, t_search: float) -> dict[str, Any]:
    removed = np.flatnonzero(dup_of >= 0)
    by_source: dict[str, dict[str, Any]] = defaultdict(lambda: {"rows": 0, "removed": 0})
    by_domain: dict[str, dict[str, Any]] = defaultdict(lambda: {"rows": 0, "removed": 0})
    for s, d in zip(sources, domains):
        by_source[s]["rows"] += 1
        by_domain[d]["rows"] += 1
    twins: Counter = Counter()
    for i in removed.tolist():
        by_source[sources[i]]["removed"] += 1
        by_domain[domains[i]]["removed"] += 1
        twins[(sources[i], sources[dup_of[i]])] += 1
    for table in (by_source, by_domain):
        for entry in table.values():
            entry["share_removed"] = round(entry["removed"] / entry["rows"], 4) if entry["rows"] else 0.0
    sims = similarity[removed]
    sizes = np.bincount(cluster[cluster >= 0]) if (cluster >= 0).any() else np.zeros(0, dtype=np.int64)
    sizes = sizes[sizes > 0]
    embedding: dict[str, Any] = {"model": config.embedding_model, "seconds": round(t_embed, 3)}
    embedding.update({k: counts[k] for k in ("encoded", "cache_hits") if k in counts})
    if hasattr(embedder, "dimension"):
        embedding["dimension"] = embedder.dimension
    if hasattr(embedder, "dtype_reason"):
        embedding["dtype"] = embedder.dtype_reason  # `auto` decides per CPU: say what it chose and why
    return {
        "epsilon": epsilon,  # by domain
        "threshold": {d: round(1 - e, 6) for d, e in epsilon.items()},
        "keep": config.keep.value,
        "keep_by": keep_by,
        "scope": "across domains" if config.across_domains else "within each domain",
        "removed": int(len(removed)),
        "kept": int(len(dup_of) - len(removed)),
        "dropped": bool(config.drop),
        "rows_without_question": int(len(skipped)),
        "by_domain": {k: by_domain[k] for k in sorted(by_domain)},
        "by_source": {k: by_source[k] for k in sorted(by_source)},
        "twin_sources": [{"removed": a, "kept": b, "pairs": c} for (a, b), c in twins.most_common()],
        "similarity_of_removed": _quantiles(sims),
        "examples": _examples(config, ids, sources, questions, dup_of, similarity, removed),
        "clusters": {"count": int(len(sizes)), "size_min": int(sizes.min()) if len(sizes) else 0,
                     "size_median": float(np.median(sizes)) if len(sizes) else 0.0,
                     "size_max": int(sizes.max()) if len(sizes) else 0},
        "groups": groups,
        "embedding": embedding,
        "seconds_embed": round(t_embed, 3),
        "seconds_search": round(t_search, 3),
    }


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return dict(zip(("min", "p10", "median", "p90", "max"), (round(float(v), 4) for v in q)))


def _short(text: Any) -> str:
    text = text if isinstance(text, str) else ""
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 3] + "..."


def _examples(config: DedupConfig, ids, sources, questions, dup_of, similarity, removed: np.ndarray) -> list[dict]:
    """Example pairs: half the removals closest to the threshold (the doubtful ones), half drawn at random."""
    if config.examples == 0 or len(removed) == 0:
        return []
    near = removed[np.argsort(similarity[removed], kind="stable")][: (config.examples + 1) // 2]
    rest = np.setdiff1d(removed, near)
    rng = np.random.default_rng(config.seed)
    extra = rng.choice(rest, size=min(len(rest), config.examples - len(near)), replace=False) if len(rest) else []
    out = []
    for i in list(near) + sorted(extra, key=lambda j: -similarity[j]):
        j = int(dup_of[i])
        out.append({"similarity": round(float(similarity[i]), 4),
                    "removed": {"id": ids[i], "source": sources[i], "question": _short(questions[i])},
                    "kept": {"id": ids[j], "source": sources[j], "question": _short(questions[j])}})
    return out
