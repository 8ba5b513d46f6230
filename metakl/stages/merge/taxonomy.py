"""The taxonomy file: units with their member skills, counts and example prompts; load, validate, save, build, and
map new skills onto an existing taxonomy (by name, by stem signature, then by embedding)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metakl.errors import UserError
from metakl.io import write_json_atomic
from metakl.stages.knowledge_parse import normalize_skill_name
from metakl.stages.merge.clustering import Group, Skill, embed_skills, skill_signature

if TYPE_CHECKING:
    from metakl.stages.merge.config import MergeConfig

TAXONOMY_FORMAT = "metakl-taxonomy"
TAXONOMY_VERSION = 1
TAXONOMY_FILE = "taxonomy.json"  # the artifact name in the stage folder


def empty_taxonomy(name: str = "taxonomy") -> dict[str, Any]:
    return {"format": TAXONOMY_FORMAT, "version": TAXONOMY_VERSION, "name": name, "settings": {}, "units": {}}


# Optional per-unit fields a taxonomy may carry (the seed taxonomy has them); merge writes them through.
UNIT_INFO_FIELDS = ("description", "domain", "area", "example_prompts")


class _JSONObject(dict):
    """A parsed JSON object that remembers keys it saw more than once (json.loads keeps only the last)."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__(pairs)
        seen: set[str] = set()
        self.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]


def load_taxonomy(path: str | Path) -> dict[str, Any]:
    """Read and check a taxonomy file (or the name of one in annotations/taxonomies/, e.g. `seed`); any problem is
    one UserError naming the file (before any model is asked)."""
    from metakl.stages.unit_index import resolve_taxonomy

    p = resolve_taxonomy(path)  # UserError naming the shipped taxonomies when there is no such file
    try:
        tax = json.loads(p.read_text(encoding="utf-8"), object_pairs_hook=_JSONObject)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    units = tax.get("units") if isinstance(tax, dict) else None
    if isinstance(units, _JSONObject) and units.duplicates:
        raise UserError(f"{path}: duplicate unit name '{units.duplicates[0]}' (unit names must be unique)")
    for unit, entry in (units or {}).items() if isinstance(units, dict) else ():
        members = entry.get("members") if isinstance(entry, dict) else None
        if isinstance(members, _JSONObject) and members.duplicates:
            raise UserError(f"{path}: unit '{unit}': duplicate member '{members.duplicates[0]}'")
    problems = validate_taxonomy(tax)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UserError(f"{path}: {problems[0]}{more}")
    return tax


def validate_taxonomy(tax: Any) -> list[str]:
    """Problems with a taxonomy object, each naming the field, what was expected and what was found.

    Units map to {count, members, examples} and may carry a one-line `description`, a `domain` (math, general,
    safety), an `area` and `example_prompts` (prompts written for the unit, retrieved by in place of its
    description); the taxonomy may carry the embedding tagger's `min_similarity` calibrated for it; unit names are
    lower snake case (what merge and annotate write).
    """
    from metakl.schema import DOMAINS

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
    floor = tax.get("min_similarity")
    if floor is not None and not (isinstance(floor, (int, float)) and not isinstance(floor, bool) and -1 <= floor <= 1):
        problems.append(f"field 'min_similarity': expected a number from -1 to 1, found {floor!r}")
    owner: dict[str, str] = {}
    for unit, entry in units.items():
        if not unit or normalize_skill_name(unit) != unit:
            problems.append(f"unit {unit!r}: names are lower snake case, e.g. {normalize_skill_name(unit) or 'adding_fractions'!r}")
            continue
        members = entry.get("members") if isinstance(entry, dict) else None
        if not isinstance(members, dict) or not members:
            problems.append(f"unit '{unit}': field 'members': expected a non-empty object name -> {{count, reason}}")
            continue
        for key in ("description", "area"):
            if key in entry and not (isinstance(entry[key], str) and entry[key].strip()):
                problems.append(f"unit '{unit}': field '{key}': expected a non-empty string, found {entry[key]!r}")
        prompts = entry.get("example_prompts", [])
        if not (isinstance(prompts, list) and all(isinstance(p, str) and p.strip() for p in prompts)):
            problems.append(f"unit '{unit}': field 'example_prompts': expected a list of non-empty strings, "
                            f"found {prompts!r}")
        if "domain" in entry and entry["domain"] not in DOMAINS:
            problems.append(f"unit '{unit}': field 'domain': expected one of {', '.join(DOMAINS)}, found {entry['domain']!r}")
        for m in members:
            if m in owner:
                problems.append(f"skill '{m}' is a member of both '{owner[m]}' and '{unit}'")
            owner[m] = unit
    return problems


def save_taxonomy(tax: dict[str, Any], path: str | Path) -> Path:
    return write_json_atomic(path, tax, indent=1)


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
    for unit in tax["units"]:
        # A unit's own name maps to it even when it is not listed as a member (an LLM-merge name, a hand-written
        # unit): guided annotation stores unit names as skills, and merging them again must keep them in place.
        by_name.setdefault(unit, unit)
    return by_name, by_sig, names, reasons, units


def map_onto_taxonomy(groups: list[Group], taxonomy: dict[str, Any], config: MergeConfig, embedder, stats: dict):
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
        "units": {u: {**_unit_info(previous, u), "count": units[u]["count"], "members": units[u]["members"],
                      "examples": units[u]["examples"]} for u in ordered_units},
    }


def _unit_info(previous: dict[str, Any] | None, unit: str) -> dict[str, Any]:
    """The optional fields (description, domain, area) of `unit` in a previous taxonomy, to write them through."""
    entry = (previous or {}).get("units", {}).get(unit) or {}
    return {k: entry[k] for k in UNIT_INFO_FIELDS if k in entry}
