"""Knowledge merge: raw skill names -> knowledge units, a `units` column per row and a reusable taxonomy.

Step 1 (normalization): names in lower snake case; names whose stem signature agrees (Snowball stems of the words
  without stop words, as a sorted set) are one group: `adding_fractions`, `add_fractions`, `fractions_adding`.
Step 2 (semantic merge): each group is embedded once (its name's words, optionally mixed with its most frequent
  reason's embedding, `reason_weight`) with a sentence-transformers model, and the groups are clustered by average linkage on cosine distance with a threshold. Average linkage never joins two
  clusters without a pair closer than the threshold, so the single-linkage components of the thresholded
  nearest-neighbour graph split the problem exactly; each component is clustered on its own (exactly up to
  `exact_limit` groups, with sklearn's graph-constrained linkage above). Memory stays O(n*k), not O(n^2).
Step 3 (optional LLM merge): each multi-member cluster is shown to an LLM that answers
  `{merged_name: [existing skills]}` (the paper's merge prompt); a valid answer splits/renames the cluster, an
  invalid one keeps step 2's result.
A unit is named by its most frequent member. With an existing taxonomy, known names and stem signatures map
directly, other groups join the unit whose members they are closest to on average (within the threshold), and the
rest are clustered into new units.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from datasets import Dataset

from metakl.embed import Embedder, load_embedder  # noqa: F401  (re-exported: the stage's embedder)
from metakl.errors import UserError
from metakl.stage import StageResult, stage
from metakl.stages.knowledge_parse import check_skill_name, normalize_skill_name

STAGE = "merge"
TAXONOMY_FORMAT = "metakl-taxonomy"
TAXONOMY_VERSION = 1
TAXONOMY_FILE = "taxonomy.json"  # the artifact name in the stage folder

# Short on purpose: words that never distinguish two skills. ("not", "no" are kept: they change the meaning.)
STOP_WORDS = frozenset(
    """a an the of to in on at by for from with without into onto over under about as and or
    its it their this that these those is are be being been was were using use via based
    skill skills knowledge understanding concept concepts basic basics ability""".split()
)


@dataclass
class MergeConfig:
    embedding_model: str = "all-minilm-l6-v2"
    threshold: float = 0.15  # cosine distance under which clusters merge (average linkage)
    reason_weight: float = 0.0  # share of the reason's embedding in a skill's vector (0: the name alone)
    neighbors: int = 30  # nearest neighbours per group in the graph that bounds the merges
    exact_limit: int = 5000  # components up to this size get exact average linkage
    max_seq_length: int = 32  # tokens per embedded text (names are short; reasons are cut here)
    batch_size: int = 64
    embedding_dtype: str = "float32"  # or "bfloat16": about 1.5x faster on CPUs with AVX512-BF16
    examples_per_unit: int = 3
    seed: int = 0
    llm_merge: bool = False
    llm_max_cluster: int = 30  # larger clusters are not shown to the LLM (step 2 result kept)
    llm_max_tokens: int = 400
    taxonomy: str | None = None  # an existing taxonomy file to map skills onto
    name: str = "taxonomy"  # the name written into the new taxonomy
    templates_dir: str | None = None  # your own merge/merge.j2


# ---------------------------------------------------------------- step 1: stem signatures


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.snowball import SnowballStemmer

    return SnowballStemmer("english")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    s = _stemmer().stem(word)
    # Snowball gives adding -> "ad" but add -> "add": undouble a final consonant so the two agree.
    if len(s) > 2 and s[-1] == s[-2] and s[-1] not in "aeiou":
        s = s[:-1]
    return s


def skill_signature(name: str) -> str:
    """Stem signature of a normalized name: sorted unique stems of its non-stop words."""
    words = [w for w in name.split("_") if w]
    content = [w for w in words if w not in STOP_WORDS] or words
    return "_".join(sorted({_stem(w) for w in content}))


# ---------------------------------------------------------------- embeddings


def embed_skills(names: list[str], reasons: list[str], embedder, reason_weight: float = 0.0) -> np.ndarray:
    """Unit vectors for skills: the name's words, mixed with the reason's embedding when `reason_weight` > 0."""
    emb = embedder([n.replace("_", " ") for n in names])
    if reason_weight > 0 and len(names):
        r = embedder([reason or n.replace("_", " ") for n, reason in zip(names, reasons)])
        emb = (1.0 - reason_weight) * emb + reason_weight * r
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32)


# ---------------------------------------------------------------- step 2: clustering


def _neighbour_graph(emb: np.ndarray, k: int, max_distance: float, block: int = 1024):
    """Sparse symmetric graph of each point's k nearest neighbours closer than `max_distance` (cosine)."""
    from scipy.sparse import coo_matrix

    n = emb.shape[0]
    k = min(k, n - 1)
    rows, cols = [], []
    if k > 0:
        for start in range(0, n, block):
            sims = emb[start : start + block] @ emb.T
            idx = np.arange(start, min(start + block, n))
            sims[np.arange(len(idx)), idx] = -np.inf  # no self edges
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n - 1 else np.tile(np.arange(n), (len(idx), 1))
            top_sims = np.take_along_axis(sims, top, axis=1)
            keep = top_sims >= 1.0 - max_distance
            rows.append(np.repeat(idx, keep.sum(1)))
            cols.append(top[keep])
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    g = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n)).tocsr()
    return (g + g.T).tocsr()


def cluster_embeddings(emb: np.ndarray, threshold: float, neighbors: int = 30, exact_limit: int = 5000) -> np.ndarray:
    """Average-linkage clusters (cosine distance <= threshold); labels numbered by first appearance."""
    from scipy.sparse.csgraph import connected_components

    n = emb.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return labels
    graph = _neighbour_graph(emb, neighbors, threshold)
    n_comp, comp = connected_components(graph, directed=False)
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(comp):
        members[c].append(i)
    sub_labels = np.zeros(n, dtype=np.int64)
    for c, idx in members.items():
        if len(idx) == 1:
            continue
        if len(idx) <= exact_limit:
            sub_labels[idx] = _average_linkage(emb[idx], threshold)
        else:
            sub_labels[idx] = _graph_linkage(emb[idx], graph[idx][:, idx], threshold)
    # Relabel (component, sub-cluster) by first appearance so labels follow input order.
    seen: dict[tuple[int, int], int] = {}
    for i in range(n):
        labels[i] = seen.setdefault((int(comp[i]), int(sub_labels[i])), len(seen))
    return labels


def _average_linkage(emb: np.ndarray, threshold: float) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    dist = np.clip(pdist(emb.astype(np.float64), metric="cosine"), 0.0, 2.0)
    tree = linkage(dist, method="average")
    return fcluster(tree, t=threshold, criterion="distance")


def _graph_linkage(emb: np.ndarray, connectivity, threshold: float) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", connectivity=connectivity, distance_threshold=threshold
    )
    return model.fit_predict(emb)


# ---------------------------------------------------------------- skills and groups


@dataclass
class Skill:
    """One normalized skill name with its mentions: count, reasons seen (first ones), prompt ids."""

    name: str
    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        # most_common keeps insertion order among ties: deterministic for a fixed input order.
        return self.reasons.most_common(1)[0][0] if self.reasons else ""


def collect_skills(rows: Iterable[tuple[str, list[dict]]], examples_per_unit: int = 3) -> dict[str, Skill]:
    """(prompt id, knowledge) pairs -> skills by normalized name, in order of first mention."""
    skills: dict[str, Skill] = {}
    for prompt_id, knowledge in rows:
        for item in knowledge or []:
            name = normalize_skill_name(item.get("skill") or "")
            if check_skill_name(name):
                continue
            s = skills.get(name)
            if s is None:
                s = skills[name] = Skill(name)
            s.count += 1
            reason = (item.get("reason") or "").strip()
            if reason and (reason in s.reasons or len(s.reasons) < 5):
                s.reasons[reason] += 1
            if len(s.examples) < examples_per_unit and prompt_id not in s.examples:
                s.examples.append(prompt_id)
    return skills


@dataclass
class Group:
    """Names sharing a stem signature (step 1)."""

    signature: str
    names: list[str]
    count: int
    label: str  # its most frequent name
    reason: str  # the label's most frequent reason


def group_skills(skills: dict[str, Skill]) -> list[Group]:
    by_sig: dict[str, list[str]] = {}
    for name in skills:
        by_sig.setdefault(skill_signature(name), []).append(name)
    groups = []
    for sig, names in by_sig.items():
        label = _most_frequent(names, skills)
        groups.append(Group(sig, names, sum(skills[n].count for n in names), label, skills[label].reason))
    return groups


def _most_frequent(names: list[str], skills: dict[str, Skill]) -> str:
    # Ties go to the shorter, then alphabetically first name, so the choice does not depend on input order.
    return min(names, key=lambda n: (-skills[n].count, len(n), n))


# ---------------------------------------------------------------- taxonomy


def empty_taxonomy(name: str = "taxonomy") -> dict[str, Any]:
    return {"format": TAXONOMY_FORMAT, "version": TAXONOMY_VERSION, "name": name, "settings": {}, "units": {}}


def load_taxonomy(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such taxonomy file")
    try:
        tax = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    problems = validate_taxonomy(tax)
    if problems:
        raise UserError(f"{path}: {problems[0]}")
    return tax


def validate_taxonomy(tax: Any) -> list[str]:
    """Problems with a taxonomy object, each naming the field, what was expected and what was found."""
    if not isinstance(tax, dict):
        return [f"expected a JSON object, found {type(tax).__name__}"]
    if tax.get("format") != TAXONOMY_FORMAT:
        return [f"field 'format': expected '{TAXONOMY_FORMAT}', found {tax.get('format')!r}"]
    if tax.get("version") != TAXONOMY_VERSION:
        return [f"field 'version': expected {TAXONOMY_VERSION}, found {tax.get('version')!r}"]
    units = tax.get("units")
    if not isinstance(units, dict):
        return [f"field 'units': expected an object unit -> {{count, members, examples}}, found {type(units).__name__}"]
    problems = []
    owner: dict[str, str] = {}
    for unit, entry in units.items():
        members = entry.get("members") if isinstance(entry, dict) else None
        if not isinstance(members, dict) or not members:
            problems.append(f"unit '{unit}': field 'members': expected a non-empty object name -> {{count, reason}}")
            continue
        for m in members:
            if m in owner:
                problems.append(f"skill '{m}' is a member of both '{owner[m]}' and '{unit}'")
            owner[m] = unit
    return problems


def save_taxonomy(tax: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(tax, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(p)
    return p


def _taxonomy_lookup(tax: dict[str, Any]):
    """(member -> unit, signature -> unit, member names, member texts, member units) of an existing taxonomy."""
    by_name: dict[str, str] = {}
    by_sig: dict[str, str] = {}
    names, reasons, units = [], [], []
    for unit, entry in tax["units"].items():
        for member, info in entry["members"].items():
            by_name[member] = unit
            by_sig.setdefault(skill_signature(member), unit)
            names.append(member)
            reasons.append(info.get("reason", "") if isinstance(info, dict) else "")
            units.append(unit)
    return by_name, by_sig, names, reasons, units


# ---------------------------------------------------------------- the merge


LLMMerge = Callable[[list[list[str]], dict[str, Skill]], list[dict[str, list[str]] | None]]


def merge_skills(
    skills: dict[str, Skill],
    config: MergeConfig,
    embedder: Callable[[list[str]], np.ndarray],
    taxonomy: dict[str, Any] | None = None,
    llm_merge: LLMMerge | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Skill name -> unit name, plus statistics. Deterministic for a fixed input order."""
    stats: dict[str, Any] = {"skills": len(skills), "mentions": sum(s.count for s in skills.values())}
    t0 = time.perf_counter()
    groups = group_skills(skills)
    stats["step1_groups"] = len(groups)
    stats["seconds_step1"] = round(time.perf_counter() - t0, 3)

    unit_of: dict[str, str] = {}
    pending = groups
    if taxonomy is not None:
        pending, mapped = _map_onto_taxonomy(groups, taxonomy, config, embedder, stats)
        for g, unit in mapped:
            for n in g.names:
                unit_of[n] = unit

    t1 = time.perf_counter()
    emb = embed_skills([g.label for g in pending], [g.reason for g in pending], embedder, config.reason_weight)
    stats["seconds_embed"] = round(time.perf_counter() - t1, 3)
    t2 = time.perf_counter()
    labels = cluster_embeddings(emb, config.threshold, config.neighbors, config.exact_limit)
    clusters: dict[int, list[str]] = defaultdict(list)
    for g, lab in zip(pending, labels):
        clusters[int(lab)].extend(g.names)
    stats["seconds_cluster"] = round(time.perf_counter() - t2, 3)

    cluster_list = [clusters[k] for k in sorted(clusters)]
    named = [(_most_frequent(names, skills), names) for names in cluster_list]
    if llm_merge is not None:
        t3 = time.perf_counter()
        named = _apply_llm_merge(cluster_list, skills, groups, llm_merge, config, stats)
        stats["llm_merge"]["template"] = getattr(llm_merge, "template", None)
        stats["seconds_llm_merge"] = round(time.perf_counter() - t3, 3)

    taken = set(taxonomy["units"]) if taxonomy else set()
    for unit, names in named:
        if unit in taken:
            unit = _fresh_name(unit, taken)
        taken.add(unit)
        for n in names:
            unit_of[n] = unit
    stats["new_units"] = len(named)
    return unit_of, stats


def _fresh_name(unit: str, taken: set[str]) -> str:
    i = 2
    while f"{unit}_{i}" in taken:
        i += 1
    return f"{unit}_{i}"


def _map_onto_taxonomy(groups: list[Group], taxonomy: dict[str, Any], config: MergeConfig, embedder, stats: dict):
    by_name, by_sig, member_names, member_reasons, member_units = _taxonomy_lookup(taxonomy)
    mapped: list[tuple[Group, str]] = []
    rest: list[Group] = []
    how = Counter()
    for g in groups:
        known = sorted({by_name[n] for n in g.names if n in by_name})
        if known:
            mapped.append((g, by_name.get(g.label, known[0])))
            how["name"] += 1
        elif g.signature in by_sig:
            mapped.append((g, by_sig[g.signature]))
            how["signature"] += 1
        else:
            rest.append(g)
    pending: list[Group] = []
    if rest and member_names:
        # Average similarity to a unit's members = dot product with the mean of their (unit-length) embeddings.
        unit_names = list(dict.fromkeys(member_units))
        unit_index = {u: i for i, u in enumerate(unit_names)}
        member_emb = embed_skills(member_names, member_reasons, embedder, config.reason_weight)
        centroids = np.zeros((len(unit_names), member_emb.shape[1]), dtype=np.float64)
        sizes = np.zeros(len(unit_names))
        for e, u in zip(member_emb, member_units):
            centroids[unit_index[u]] += e
            sizes[unit_index[u]] += 1
        centroids /= sizes[:, None]
        rest_emb = embed_skills([g.label for g in rest], [g.reason for g in rest], embedder, config.reason_weight)
        for start in range(0, len(rest), 1024):
            sims = rest_emb[start : start + 1024] @ centroids.T.astype(np.float32)
            best = sims.argmax(axis=1)
            for j, b in enumerate(best):
                g = rest[start + j]
                if 1.0 - sims[j, b] <= config.threshold:
                    mapped.append((g, unit_names[b]))
                    how["embedding"] += 1
                else:
                    pending.append(g)
    else:
        pending = rest
    stats["mapped_to_taxonomy"] = dict(how)
    stats["groups_not_in_taxonomy"] = len(pending)
    return pending, mapped


def _apply_llm_merge(clusters, skills, groups, llm_merge: LLMMerge, config: MergeConfig, stats: dict):
    """Ask the LLM about each multi-group cluster; a valid answer replaces step 2's grouping of that cluster."""
    label_of = {}
    for g in groups:
        for n in g.names:
            label_of[n] = g
    asked_idx, asked = [], []
    too_large = 0
    for i, names in enumerate(clusters):
        labels = list(dict.fromkeys(label_of[n].label for n in names))
        if 2 <= len(labels) <= config.llm_max_cluster:
            asked_idx.append(i)
            asked.append(labels)
        elif len(labels) > config.llm_max_cluster:
            too_large += 1  # kept as step 2 made it
    answers = llm_merge(asked, skills) if asked else []
    outcome = Counter()
    named: list[tuple[str, list[str]]] = []
    answer_of = dict(zip(asked_idx, zip(asked, answers)))
    group_of_label = {g.label: g for g in groups}
    for i, names in enumerate(clusters):
        if i not in answer_of:
            named.append((_most_frequent(names, skills), names))
            continue
        labels, answer = answer_of[i]
        problem = check_merge_answer(answer, labels) if not isinstance(answer, str) else answer
        if problem:
            outcome[f"fallback:{problem.split(':')[0]}"] += 1
            named.append((_most_frequent(names, skills), names))
            continue
        outcome["accepted"] += 1
        named.extend(apply_merge_answer(answer, group_of_label))
    stats["llm_merge"] = {"clusters_asked": len(asked), "clusters_too_large": too_large, **dict(sorted(outcome.items()))}
    return named


def apply_merge_answer(answer: dict[str, list[str]], group_of_label: dict[str, Group]) -> list[tuple[str, list[str]]]:
    """A valid LLM answer -> (unit name, member names): each listed group brings all its stem-variant names."""
    return [(normalize_skill_name(merged), [n for label in labels for n in group_of_label[label].names]) for merged, labels in answer.items()]


def check_merge_answer(answer: Any, skills: list[str]) -> str | None:
    """Why an LLM merge answer {merged_name: [existing skills]} is unusable for these skills, or None."""
    if not isinstance(answer, dict) or not answer:
        return "wrong_shape: expected a non-empty object {merged_name: [existing skills]}"
    seen: Counter = Counter()
    for merged, members in answer.items():
        problem = check_skill_name(normalize_skill_name(merged))
        if problem:
            return f"bad_name: {problem}"
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            return f"wrong_shape: '{merged}' must map to a non-empty list of existing skill names"
        seen.update(members)
    unknown = sorted(set(seen) - set(skills))
    if unknown:
        return f"unknown_skill: {unknown[0]!r} is not one of the given skills"
    missing = [s for s in skills if s not in seen]
    if missing:
        return f"missing_skill: {missing[0]!r} is not assigned to any merged name"
    twice = sorted(s for s, c in seen.items() if c > 1)
    if twice:
        return f"duplicate_skill: {twice[0]!r} is assigned more than once"
    if len({normalize_skill_name(m) for m in answer}) != len(answer):
        return "duplicate_name: two merged names normalize to the same name"
    return None


def merge_json_schema(skills: list[str]) -> dict[str, Any]:
    """Structured output for the merge prompt: merged name -> non-empty list of the given skills."""
    return {
        "type": "object",
        "patternProperties": {
            r"^[a-z][a-z0-9]*(_[a-z0-9]+){0,9}$": {"type": "array", "items": {"enum": list(skills)}, "minItems": 1}
        },
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": len(skills),
    }


def llm_merger(backend: Any, config: MergeConfig, templates_dir: str | None = None, progress: bool = False) -> LLMMerge:
    """Step 3 through metakl.llm: one request per cluster; each answer a dict, or a string saying why it is unusable."""
    from metakl.llm import ChatRequest
    from metakl.stages.knowledge_parse import KnowledgeError, extract_json
    from metakl.templates import load_template

    template = load_template("merge", "merge", templates_dir)

    def ask(clusters: list[list[str]], skills: dict[str, Skill]) -> list[dict[str, list[str]] | str]:
        requests = [
            ChatRequest(
                messages=template.render_messages(skills=[{"name": n, "reason": skills[n].reason} for n in names]),
                max_tokens=config.llm_max_tokens,
                temperature=0.0,
                seed=config.seed,
                json_schema=merge_json_schema(names) if getattr(backend, "supports_json_schema", True) else None,
                tag=names[0],
            )
            for names in clusters
        ]
        answers: list[dict[str, list[str]] | str] = []
        for result in backend.generate_all(requests, progress=progress):
            if not result.ok:
                answers.append(f"backend_error: {result.error}")
                continue
            try:
                values = extract_json(result.completion.texts[0])
            except KnowledgeError as exc:
                answers.append(f"{exc.kind}: {exc.message}")
                continue
            answers.append(next((v for v in values if isinstance(v, dict)), "wrong_shape: not a JSON object"))
        return answers

    ask.template = template.ref  # recorded in the summary
    return ask


# ---------------------------------------------------------------- the stage


def build_taxonomy(
    unit_of: dict[str, str], skills: dict[str, Skill], config: MergeConfig, name: str, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Unit -> members (count, reason), total count and example prompt ids; units by decreasing count.

    Counts describe this run's data. Units and members of a previous taxonomy that this data does not mention are
    kept with count 0, so a taxonomy only grows when it is reused.
    """
    units: dict[str, dict[str, Any]] = {}
    if previous:
        for unit, entry in previous["units"].items():
            units[unit] = {
                "members": {
                    m: {"count": 0, "reason": info.get("reason", "") if isinstance(info, dict) else ""}
                    for m, info in entry["members"].items()
                },
                "examples": [],
            }
    for skill_name, unit in unit_of.items():
        s = skills[skill_name]
        entry = units.setdefault(unit, {"members": {}, "examples": []})
        entry["members"][skill_name] = {"count": s.count, "reason": s.reason}
    for unit, entry in units.items():
        members = entry["members"]
        ordered = sorted(members, key=lambda m: (-members[m]["count"], m))
        entry["members"] = {m: members[m] for m in ordered}
        entry["count"] = sum(v["count"] for v in members.values())
        examples: list[str] = []
        for m in ordered:
            for pid in skills[m].examples if m in skills else []:
                if pid not in examples and len(examples) < config.examples_per_unit:
                    examples.append(pid)
        prev_examples = (previous or {}).get("units", {}).get(unit, {}).get("examples", [])
        entry["examples"] = examples or list(prev_examples)[: config.examples_per_unit]
    ordered_units = sorted(units, key=lambda u: (-units[u]["count"], u))
    settings = {k: v for k, v in asdict(config).items() if k not in ("batch_size", "taxonomy", "name", "templates_dir")}
    return {
        "format": TAXONOMY_FORMAT,
        "version": TAXONOMY_VERSION,
        "name": name,
        "settings": settings,
        "units": {u: {"count": units[u]["count"], "members": units[u]["members"], "examples": units[u]["examples"]} for u in ordered_units},
    }


@stage(STAGE, MergeConfig, needs_backend=lambda cfg: cfg.llm_merge)
def merge(
    ds: Dataset,
    config: MergeConfig,
    *,
    backend: Any = None,
    progress: bool = False,
    taxonomy: dict[str, Any] | None = None,
    embedder: Callable[[list[str]], np.ndarray] | None = None,
    llm_merge: LLMMerge | None = None,
) -> StageResult:
    """Add a `units` column (the units of each row's skills, in order); the taxonomy is the `taxonomy.json` artifact.

    `taxonomy` (an object) or `config.taxonomy` (a file) is an existing taxonomy to map skills onto. With
    `config.llm_merge`, step 3 asks `backend`; `embedder` and `llm_merge` replace the defaults (tests, benchmarks).
    """
    if "knowledge" not in ds.column_names:
        raise UserError("input has no 'knowledge' column; run `metakl annotate` first")
    if taxonomy is None and config.taxonomy:
        taxonomy = load_taxonomy(config.taxonomy)
    if llm_merge is None and config.llm_merge:
        if backend is None:
            raise UserError("merge: llm_merge needs a model backend (--base-url/--model)")
        llm_merge = llm_merger(backend, config, config.templates_dir, progress=progress)
    if embedder is None:
        embedder = load_embedder(config.embedding_model, config.max_seq_length, config.batch_size, config.embedding_dtype)
    ids = ds["id"] if "id" in ds.column_names else [str(i) for i in range(len(ds))]
    knowledge = ds["knowledge"]
    skills = collect_skills(zip(ids, knowledge), config.examples_per_unit)
    unit_of, stats = merge_skills(skills, config, embedder, taxonomy=taxonomy, llm_merge=llm_merge)

    units_col = []
    for k in knowledge:
        names = [normalize_skill_name(item.get("skill") or "") for item in k or []]
        units_col.append(list(dict.fromkeys(unit_of[n] for n in names if n in unit_of)))
    if "units" in ds.column_names:
        ds = ds.remove_columns("units")
    from metakl.schema import STAGE_FEATURES

    ds = ds.add_column("units", units_col, feature=STAGE_FEATURES["units"])
    tax = build_taxonomy(unit_of, skills, config, config.name, previous=taxonomy)

    sizes = Counter(len(e["members"]) for e in tax["units"].values())
    counts = Counter(len(u) for u in units_col)
    summary = {
        "rows_without_units": counts.get(0, 0),
        **stats,
        "units": len(tax["units"]),
        "singleton_units": sizes.get(1, 0),
        "largest_units": [[u, e["count"], len(e["members"])] for u, e in list(tax["units"].items())[:10]],
        "members_per_unit": {str(k): v for k, v in sorted(sizes.items())},
        "units_per_prompt": {str(k): v for k, v in sorted(counts.items())},
        "settings": tax["settings"],
    }
    if getattr(llm_merge, "template", None):
        summary["templates"] = [llm_merge.template]
    if config.taxonomy:
        summary["taxonomy_in"] = config.taxonomy
    return StageResult(ds, summary, artifacts={TAXONOMY_FILE: tax})
