"""Merge step 3 (optional): each multi-group cluster shown to an LLM that answers `{merged_name: [existing skills]}`
(the paper's merge prompt); a valid answer splits/renames the cluster, an invalid one keeps step 2's result."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

from metakl.stages.knowledge_parse import check_skill_name, normalize_skill_name
from metakl.stages.merge.clustering import Group, Skill, most_frequent

if TYPE_CHECKING:
    from metakl.stages.merge.config import MergeConfig

LLMMerge = Callable[[list[list[str]], dict[str, Skill]], list[dict[str, list[str]] | None]]


def apply_llm_merge(clusters, skills, groups, llm_merge: LLMMerge, config: MergeConfig, stats: dict):
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
            named.append((most_frequent(names, skills), names))
            continue
        labels, answer = answer_of[i]
        problem = check_merge_answer(answer, labels) if not isinstance(answer, str) else answer
        if problem:
            outcome[f"fallback:{problem.split(':')[0]}"] += 1
            named.append((most_frequent(names, skills), names))
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
    from metakl.llm.json_repair import JSONRepairError, extract_json
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
            except JSONRepairError as exc:
                answers.append(f"{exc.kind}: {exc.message}")
                continue
            answers.append(next((v for v in values if isinstance(v, dict)), "wrong_shape: not a JSON object"))
        return answers

    ask.template = template.ref  # recorded in the summary
    return ask
