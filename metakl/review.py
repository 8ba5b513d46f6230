"""Human audit of annotations and merges, as the paper did (92.18% of merged units judged consistent).

`sample_items` draws N prompts from an annotated + merged stage folder or a release, stratified by domain and by
knowledge unit; each item is a prompt, its annotated skills `{skill: reason}` and the unit each skill was merged
into. `render_page` turns the items into one self-contained HTML page (no server, no network) where a reviewer marks
each item right or wrong and exports a verdicts file; `score` reads that file back (agreement with 95% Wilson
intervals, per domain) and `write_card_section` puts the result into a dataset card as its "## Human audit" section.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metakl.errors import UserError
from metakl.schema import DOMAINS

ITEMS_FILE = "items.jsonl"
PAGE_FILE = "review.html"
PAGE_TEMPLATE = "page.html.jinja"  # annotations/templates/review/ (not .j2: it is a page, not a chat prompt)
VERDICTS = ("right", "wrong")
SECTION = "## Human audit"
NO_UNIT = "(no unit)"  # the stratum of prompts whose skills merge gave no unit
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


# ----------------------------------------------------------------------------------------------------------------
# Reading the annotated data


def _hub_layout(folder: Path) -> bool:
    return (folder / "README.md").is_file() and (folder / "data").is_dir()


def _load_dataset(spec: str, config: str):
    """Every split of one config of a release (a folder in Hub layout or a Hub id), in the order the card lists them."""
    import datasets

    try:
        loaded = datasets.load_dataset(spec, config)
    except Exception as exc:  # the datasets library raises many kinds (offline, not found, no such config)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{spec}: cannot load config '{config}' with datasets.load_dataset ({first})") from None
    return datasets.concatenate_datasets(list(loaded.values())) if len(loaded) > 1 else next(iter(loaded.values()))


def _units_by_member(units: dict[str, list[str]]) -> dict[str, str]:
    return {m: unit for unit, members in units.items() for m in members}


def load_source(source: str | Path, taxonomy: str | Path | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(rows, skill -> unit) from a merge (or later) stage folder, its parquet file, a release folder in Hub layout
    or a Hub dataset id. The skill -> unit map comes from `taxonomy` (a file or a shipped name), else the stage
    folder's taxonomy.json or the release's `taxonomy` config; without any, a skill named like one of its row's units
    belongs to it and other skills show no unit."""
    from metakl.io import load_stage
    from metakl.stages.merge.taxonomy import load_taxonomy

    spec = str(source)
    path = Path(spec)
    unit_of: dict[str, str] = {}
    hub_id = not path.exists() and spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not path.exists() and not hub_id:
        raise UserError(f"{spec}: no such folder or file (expected a merge stage folder, a release folder or a Hub id "
                        "owner/name)")
    if hub_id or path.is_dir() and _hub_layout(path):
        try:
            ds = _load_dataset(spec, "all")
        except UserError as exc:
            raise UserError(f"{exc}" + ("; and no such local folder" if hub_id else "")) from None
        try:
            tax = _load_dataset(spec, "taxonomy")
        except UserError:
            tax = None  # a release without a taxonomy config: units come from the rows alone
        if tax is not None and {"unit", "members"} <= set(tax.column_names):
            unit_of = _units_by_member(dict(zip(tax["unit"], (m or [] for m in tax["members"]))))
    else:
        ds = load_stage(path)  # one line naming the file when it is missing or damaged
        tax_file = (path if path.is_dir() else path.parent) / "taxonomy.json"
        if tax_file.is_file() and taxonomy is None:
            taxonomy = tax_file
    if taxonomy is not None:
        unit_of = _units_by_member({u: list(e["members"]) for u, e in load_taxonomy(taxonomy)["units"].items()})
    missing = [c for c in ("id", "domain", "question", "knowledge", "units") if c not in ds.column_names]
    if missing:
        raise UserError(f"{spec}: missing column(s) {', '.join(missing)}; review needs annotated and merged prompts "
                        "(run `metakl annotate` and `metakl merge` first)")
    columns = [c for c in ("id", "source", "domain", "question", "choices", "knowledge", "units") if c in ds.column_names]
    return ds.select_columns(columns).to_list(), unit_of


def make_item(row: dict[str, Any], unit_of: dict[str, str]) -> dict[str, Any]:
    """One review item: the prompt, each annotated skill with its reason and the unit it was merged into."""
    from metakl.stages.knowledge_parse import normalize_skill_name

    units = list(row.get("units") or [])
    skills = []
    for k in row.get("knowledge") or []:
        name = k.get("skill") or ""
        key = normalize_skill_name(name)  # the form merge looked the skill up by
        unit = unit_of.get(key) or (key if key in units else None)
        skills.append({"skill": name, "reason": k.get("reason") or "", "unit": unit})
    return {"id": row["id"], "source": row.get("source") or "", "domain": row["domain"], "question": row["question"],
            "choices": list(row.get("choices") or []), "skills": skills, "units": units}


# ----------------------------------------------------------------------------------------------------------------
# Stratified sampling


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Split `n` over strata in proportion to their sizes (largest remainder; ties in the order given), at least one
    for every non-empty stratum while n allows, never more than a stratum holds."""
    total = sum(sizes.values())
    n = min(n, total)
    keys = [k for k, s in sizes.items() if s > 0]
    if n <= 0 or not keys:
        return {k: 0 for k in sizes}
    share = {k: n * sizes[k] / total for k in keys}
    out = {k: min(sizes[k], int(share[k])) for k in keys}
    for k in keys:  # every domain is seen, however small
        if out[k] == 0 and sum(out.values()) < n:
            out[k] = 1
    order = sorted(keys, key=lambda k: -(share[k] - int(share[k])))  # stable: ties keep the given order
    while sum(out.values()) < n:
        grew = False
        for k in order:
            if sum(out.values()) < n and out[k] < sizes[k]:
                out[k] += 1
                grew = True
        if not grew:
            break
    while sum(out.values()) > n:  # the "at least one" rule overshot: take back from the largest
        k = max(keys, key=lambda k: (out[k], -keys.index(k)))
        out[k] -= 1
    return {k: out.get(k, 0) for k in sizes}


def _spread_over_units(rows: list[dict[str, Any]], n: int, rng: random.Random) -> list[int]:
    """`n` row indices spread over the units: rounds over the units in a seeded order, each round giving every unit
    one more prompt that holds it; in the first round a unit already held by a chosen prompt is covered."""
    by_unit: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        for u in row["units"] or [NO_UNIT]:
            by_unit[u].append(i)
    units = sorted(by_unit)
    rng.shuffle(units)
    chosen: list[int] = []
    taken: set[int] = set()
    covered: set[str] = set()
    first = True
    while len(chosen) < n:
        progressed = False
        for u in units:
            if len(chosen) >= n:
                break
            if first and u in covered:
                continue
            free = [i for i in by_unit[u] if i not in taken]
            if not free:
                continue
            i = rng.choice(free)
            chosen.append(i)
            taken.add(i)
            covered.update(rows[i]["units"] or [NO_UNIT])
            progressed = True
        if not progressed and not first:
            break
        first = False
    return chosen


def sample_items(rows: list[dict[str, Any]], unit_of: dict[str, str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """N review items, stratified by domain (proportional, every domain seen) and within a domain spread over the
    knowledge units. Only prompts with at least one annotated skill are eligible; the same rows and seed give the
    same items, in domain order."""
    seen: set[str] = set()
    by_domain: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("knowledge") and row["id"] not in seen:
            seen.add(row["id"])
            by_domain[row["domain"]].append(row)
    domains = [d for d in DOMAINS if d in by_domain] + sorted(d for d in by_domain if d not in DOMAINS)
    quota = allocate({d: len(by_domain[d]) for d in domains}, n)
    items = []
    for d in domains:
        rng = random.Random(f"{seed}:{d}")  # one stream per domain: a domain's sample does not depend on the others
        for i in _spread_over_units(by_domain[d], quota[d], rng):
            items.append(make_item(by_domain[d][i], unit_of))
    return items


def json_line(item: dict[str, Any]) -> str:
    return json.dumps(item, ensure_ascii=False) + "\n"


def review_id(items: list[dict[str, Any]]) -> str:
    """A short digest of the items: the page keeps its verdicts under it, so two review sets never mix."""
    return hashlib.sha256(json.dumps([i["id"] for i in items]).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------------------------
# The page


def render_page(items: list[dict[str, Any]], title: str) -> str:
    """The review page: one HTML file with its CSS, JS and the items (as JSON that cannot close its script tag:
    Jinja's `tojson` escapes <, >, & and ')."""
    import jinja2

    from metakl import resources

    path = resources.find(f"{resources.TEMPLATES}/review", PAGE_TEMPLATE)  # $METAKL_ANNOTATIONS may override it
    if path is None:
        raise UserError(f"templates/review/{PAGE_TEMPLATE}: not found in the annotations folders")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(path.read_text(encoding="utf-8")).render(
        title=title, items=items, review_id=review_id(items), domains=sorted({i["domain"] for i in items}))


# ----------------------------------------------------------------------------------------------------------------
# Scoring


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of k successes in n trials (None for n = 0)."""
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def read_items(path: str | Path) -> list[dict[str, Any]]:
    """The items file `metakl review` wrote; every problem is one UserError naming the file and line."""
    from metakl.readers import Problem, read_jsonl

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such items file (expected the {ITEMS_FILE} that `metakl review --out` wrote)")
    items = []
    for where, record in read_jsonl(p):
        if isinstance(record, Problem):
            raise UserError(str(record))
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not isinstance(record.get("domain"), str):
            raise UserError(f"{where}: expected an item with string fields 'id' and 'domain'")
        items.append(record)
    if not items:
        raise UserError(f"{p}: no items")
    return items


def read_verdicts(path: str | Path, known: set[str]) -> list[dict[str, Any]]:
    """The verdicts file the page exports (JSON lines, or a JSON array): each {id, verdict, note, reviewer,
    timestamp}. An unknown item id, a verdict other than right/wrong or a second verdict of one reviewer for one item
    is one UserError naming the file and line."""
    from metakl.readers import Problem, file_kind, read_file

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such verdicts file")
    out: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], str] = {}
    for where, record in read_file(p, kind="json" if file_kind(p) == "json" else "jsonl"):
        if isinstance(record, Problem):
            raise UserError(str(record))
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a verdict object {{id, verdict, note, reviewer, timestamp}}, "
                            f"got {type(record).__name__}")
        item = record.get("id")
        if item not in known:
            raise UserError(f"{where}: field 'id': {item!r} is not an item of this review set (a verdicts file of "
                            "another review? check --items)")
        if record.get("verdict") not in VERDICTS:
            raise UserError(f"{where}: field 'verdict': expected 'right' or 'wrong', got {record.get('verdict')!r}")
        reviewer = str(record.get("reviewer") or "")
        if (item, reviewer) in seen:
            raise UserError(f"{where}: item {item!r} already has a verdict of reviewer {reviewer or '(unnamed)'!r} "
                            f"({seen[item, reviewer]}); keep one per reviewer")
        seen[item, reviewer] = where
        out.append(record)
    if not out:
        raise UserError(f"{p}: no verdicts")
    return out


@dataclass
class Agreement:
    right: int
    total: int

    @property
    def rate(self) -> float | None:
        return self.right / self.total if self.total else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.right, self.total)

    def as_dict(self) -> dict[str, Any]:
        lo_hi = self.interval
        return {"right": self.right, "reviewed": self.total, "agreement": self.rate,
                "ci95": list(lo_hi) if lo_hi else None}


def score(items: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement (share of verdicts `right`) overall and per domain with 95% Wilson intervals, the reviewers and the
    items nobody reviewed."""
    domain_of = {i["id"]: i["domain"] for i in items}
    right, total = Counter(), Counter()
    for v in verdicts:
        for key in ("all", domain_of[v["id"]]):
            total[key] += 1
            right[key] += v["verdict"] == "right"
    reviewed = {v["id"] for v in verdicts}
    domains = [d for d in DOMAINS if d in total] + sorted(d for d in total if d not in DOMAINS and d != "all")
    return {
        "items": len(items),
        "unreviewed": sum(1 for i in items if i["id"] not in reviewed),
        "reviewers": sorted({str(v.get("reviewer") or "") for v in verdicts}),
        "overall": Agreement(right["all"], total["all"]).as_dict(),
        "domains": {d: Agreement(right[d], total[d]).as_dict() for d in domains},
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _line(name: str, a: dict[str, Any]) -> str:
    ci = a["ci95"]
    return (f"{name}: {_pct(a['agreement'])} right ({a['right']}/{a['reviewed']}"
            + (f", 95% CI {_pct(ci[0])}–{_pct(ci[1])})" if ci else ")"))


def format_score(result: dict[str, Any]) -> list[str]:
    lines = [_line("agreement", result["overall"])]
    lines += ["  " + _line(d, a) for d, a in result["domains"].items()]
    lines.append(f"unreviewed: {result['unreviewed']} of {result['items']} items; reviewers: "
                 + (", ".join(r or "(unnamed)" for r in result["reviewers"])))
    return lines


# ----------------------------------------------------------------------------------------------------------------
# The dataset card


def card_section(result: dict[str, Any]) -> str:
    """The card's "## Human audit" section (markdown, ending in one blank line)."""
    o = result["overall"]
    rows = [f"| {d} | {a['reviewed']} | {a['right']} | {_pct(a['agreement'])} | "
            f"{_pct(a['ci95'][0]) + '–' + _pct(a['ci95'][1]) if a['ci95'] else '–'} |"
            for d, a in [("all", o), *result["domains"].items()]]
    reviewers = len(result["reviewers"])
    return "\n".join([
        SECTION, "",
        f"{result['items']} prompts were sampled for review (stratified by domain and knowledge unit, `metakl "
        "review`); for each, a reviewer judged whether its annotated skills fit the prompt and were merged into "
        f"fitting knowledge units. {reviewers} reviewer{'s' if reviewers != 1 else ''} gave {o['reviewed']} verdicts; "
        f"{result['unreviewed']} sampled prompts were not reviewed. The paper reports 92.18% consistency for its "
        "merged units.", "",
        "| domain | reviewed | right | agreement | 95% CI (Wilson) |", "|---|---|---|---|---|", *rows, "", ""])


def _section_bounds(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) of the existing audit section among the card's lines (keepends): from its heading to the next
    level-1/2 heading outside a code fence, or the end."""
    start, fence = None, False
    for i, line in enumerate(lines):
        text = line.rstrip("\r\n")
        if text.lstrip().startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        if start is None and text.rstrip() == SECTION:
            start = i
        elif start is not None and (text.startswith("## ") or text.startswith("# ")):
            return start, i
    return (start, len(lines)) if start is not None else None


def write_card_section(card: str | Path, result: dict[str, Any]) -> Path:
    """Write or replace the card's "## Human audit" section; every other byte of the card stays as it was. Written
    to a temporary file beside it and renamed, so an interruption leaves the old card."""
    p = Path(card)
    if not p.is_file():
        raise UserError(f"--card {p}: no such file (expected a release's README.md)")
    try:
        with open(p, encoding="utf-8", newline="") as f:  # newline="": keep the card's own line endings
            text = f.read()
    except UnicodeDecodeError:
        raise UserError(f"--card {p}: not a UTF-8 text file") from None
    lines = text.splitlines(keepends=True)
    section = card_section(result)
    if "\r\n" in text:
        section = section.replace("\n", "\r\n")
    bounds = _section_bounds(lines)
    if bounds is None:
        sep = "" if not text or text.endswith(("\n\n", "\r\n\r\n")) else ("\n" if text.endswith("\n") else "\n\n")
        new = text + sep + section
    else:
        new = "".join(lines[:bounds[0]]) + section + "".join(lines[bounds[1]:])
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.tmp-", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(new)
        os.chmod(tmp, p.stat().st_mode & 0o777)
        os.replace(tmp, p)
    except OSError as exc:
        raise UserError(f"--card {p}: cannot write it ({exc.strerror or exc}); the card is unchanged") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p
