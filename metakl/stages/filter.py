"""Filter stage: knowledge-gap selection for one base model (MetaGDPO appendix, Algorithm 1).

Reads the `units` column (from merge or guided annotation) and the `proficiency` column (from `metakl score`),
keeps the selected rows (in their input order) and writes:
- `gap_report.json`: for the base model (and, for comparison, every other scored model and "average"): the units it
  lacks (lowest proficiency among units with at least `min_support` scored prompts), their pool / target / selected
  counts, units left short of their target and why (`not_enough_prompts`, `budget`, `quota`; for the other models
  also `other_targets`: the selection followed another model's targets), and coverage before → after;
- `gap_report.png`: selected prompts against proficiency per unit, and the weakest units' counts;
- `selection.json`: the selected ids in pick order, with the phase (`r` / `gap`) and gain of each pick.

What trains (rows with rewarded `responses`, i.e. after `metakl reward`): a group whose rewards are all equal
(population std <= metakl.schema.ZERO_VARIANCE_EPS, the reward stage's own test) gives GDPO no preference pair, so
it is skipped like a near-duplicate (`keep_zero_variance` keeps it). Among prompts that fill equally many gaps, a
group with a correct response (checked against the reference, in domains that have one: math and general; safety
behaviour needs the judge, so safety rows are never demoted) goes before one without: a tie-break, not an
eligibility rule, because a prompt every teacher got wrong is still the kind of knowledge the base model lacks (the
paper selects on knowledge, not on answers), but its pairs only rank wrong answers by format and length, so it
should not displace an equally useful group that has a right answer. Rows without responses (filter before generate)
are selected as before.

Why it stops: "budget" (spent), or "no_gap": every unit has min(target, candidates) prompts. When that happens short
of a budget, the report's `stop_reason` says so with the sum of the unit targets and what would change it: units
that stopped at their target ask for more with a larger `max_target`; units with fewer candidate prompts than their
target need more candidates (more input, or the rows skipped as zero-variance / near-duplicates).

Targets: a unit's target count falls linearly with the base model's proficiency on it, from `max_target` prompts
(proficiency 0) to `reminders` (proficiency 1), proficiency shrunk toward the model's overall mean by
`prior_strength` pseudo-prompts (metakl.stages.proficiency.TargetRule). The algorithm and its incremental form are
in metakl.stages.knowledge_gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from metakl.config import check_settings, setting
from metakl.errors import UserError
from metakl.schema import ZERO_VARIANCE_EPS, domain_mapping, key_values
from metakl.stage import StageResult, stage
from metakl.stages.knowledge_gap import BUDGET, PHASE_GAP, PHASE_R, Selection, select, tie_ranks
from metakl.stages.proficiency import (AVERAGE, TargetRule, UnitStat, clean_units, column, models_in, overall_mean,
                                       prompt_values, unit_stats, z_value)

STAGE = "filter"
GAP_REPORT_FILE = "gap_report.json"
GAP_REPORT_PNG = "gap_report.png"
SELECTION_FILE = "selection.json"
MET, NOT_ENOUGH, SHORT_BUDGET, SHORT_QUOTA, OTHER = "met", "not_enough_prompts", "budget", "quota", "other_targets"


@dataclass
class FilterConfig:
    """What `metakl filter` flags and a config's `filter:` section set (one declaration: metakl.config.setting)."""

    base_model: str = setting(AVERAGE, help=(
        "Whose knowledge gaps to fill: a model scored by `metakl score`, or 'average' (mean over the scored models)."))
    r: int = setting(6, flags=("--r",), min=0, help=(
        "Keep every prompt with at least r knowledge units first (the paper: more than 5); 0: off."))
    reminders: int = setting(2, min=0, help="Target prompts of a unit the base model has mastered (proficiency 1).")
    max_target: int = setting(20, min=0, help=(
        "Target prompts of a unit the base model always fails (proficiency 0); linear in between."))
    prior_strength: float = setting(2.0, min=0.0, help=(
        "Pseudo-prompts pulling a unit's proficiency toward the model's overall mean (few scored prompts: little "
        "evidence)."))
    budget: int | None = setting(None, min=0, help="At most this many prompts in all.")
    quotas: dict[str, int] = setting({}, flags=("--quota",), parse=lambda items: parse_quotas(items), help=(
        "At most COUNT prompts of a domain, as DOMAIN=COUNT (repeatable), e.g. --quota math=1547."))
    seed: int = setting(0, help="Last tie-breaker, after the base model's and the average accuracy (harder first).")
    min_support: int = setting(3, min=1, help=(
        "Scored prompts a unit needs to be listed among the units a model lacks."))
    confidence: float = setting(0.95, min=0.5, max=0.999, help="Confidence of the Wilson intervals in the report.")
    report_units: int = setting(20, min=0, help="Weakest units listed per model (and printed).")
    plots: bool = setting(True, help="Write gap_report.png.")
    keep_zero_variance: bool = setting(False, flags=("--keep-zero-variance",), help=(
        "Also pick groups whose rewards are all equal (skipped by default: no preference for GDPO)."))

    def __post_init__(self) -> None:
        check_settings(self, STAGE)
        if self.max_target < self.reminders:
            raise UserError(f"filter: need 0 <= reminders <= max_target, got reminders={self.reminders}, "
                            f"max_target={self.max_target}")
        self.quotas = domain_mapping(self.quotas, "filter: quotas")
        for domain, count in self.quotas.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise UserError(f"filter: quota for {domain}: expected a count >= 0, got {count!r}")

    @property
    def rule(self) -> TargetRule:
        return TargetRule(self.reminders, self.max_target, self.prior_strength)


def parse_quotas(values: list[str] | None) -> dict[str, int]:
    """`["math=1547", "safety=1121"]` (the repeatable --quota) -> {"math": 1547, "safety": 1121}."""
    return domain_mapping(key_values(values or [], "--quota", "DOMAIN=COUNT", "math=1500", _quota_count), "--quota")


def _quota_count(text: str) -> int:
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


@stage(STAGE, FilterConfig,
       requires={"id": "the selection", "domain": "the quotas", "units": "the knowledge units to fill",
                 "proficiency": "the base model's knowledge gaps"})
def filter_prompts(ds: Dataset, config: FilterConfig, *, backend: Any = None, progress: bool = False) -> StageResult:
    """Select the rows of `ds` that fill the base model's knowledge gaps (see the module docstring)."""
    cfg = config
    prof, models, units_col = _checked_input(ds, cfg)
    rows = _row_facts(ds, cfg, prof, units_col)
    z = z_value(cfg.confidence)
    plan = _targets(units_col, rows.values, rows.unit_names, cfg.rule, z)
    candidates = [[] if dup or fl else us for us, dup, fl in zip(rows.units_idx, rows.duplicates, rows.skip_flat)]
    sel = select(candidates, plan["targets"], rank=rows.rank, r=cfg.r, budget=cfg.budget, domains=rows.domains,
                 quotas=cfg.quotas or None)
    out = ds.select(sorted(sel.picked))

    full_domains = {d for d, q in cfg.quotas.items() if sum(1 for p in sel.picked if rows.domains[p] == d) >= q}
    order = [cfg.base_model] + [m for m in [*models, AVERAGE] if m != cfg.base_model]
    sections = {}
    for m in order:
        vals = rows.values if m == cfg.base_model else [v.get(m) for v in rows.per_row]
        p = plan if m == cfg.base_model else _targets(units_col, vals, rows.unit_names, cfg.rule, z)
        sections[m] = _section(m, m == cfg.base_model, p, sel, rows.units_idx, rows.unit_names, vals, rows.domains,
                               full_domains, cfg)
    ids = column(ds, "id") if "id" in ds.column_names else list(range(len(ds)))
    report, artifacts = _report_and_artifacts(cfg, models, rows, sel, plan, sections, ids)
    return StageResult(out, report, artifacts)


def _checked_input(ds: Dataset, cfg: FilterConfig) -> tuple[list, list[str], list[list[str]]]:
    """(the proficiency column, the scored models, each row's units); refuses an input filter cannot select from."""
    prof = column(ds, "proficiency")
    models = models_in(prof)
    if not models:
        raise UserError("filter: no row has a proficiency entry; run `metakl score` first")
    if cfg.base_model not in models and cfg.base_model != AVERAGE:
        raise UserError(f"filter: base model {cfg.base_model!r} was not scored in this input; scored: "
                        f"{', '.join(models)} (or 'average')")
    units_col = [clean_units(u) for u in column(ds, "units")]
    if not any(units_col):
        raise UserError(f"filter: none of the {len(ds)} rows has knowledge units (the `units` column is empty); "
                        "see annotate's errors, then run `metakl merge` (or guided annotation) again")
    return prof, models, units_col


@dataclass
class _RowFacts:
    """What the selection and the report read of each row."""

    domains: list[str]
    units_col: list[list[str]]
    units_idx: list[list[int]]  # the row's units as indices into unit_names
    unit_names: list[str]
    per_row: list[dict[str, float]]  # model -> the row's proficiency
    values: list[float | None]  # the base model's proficiency per row
    duplicates: list[bool]
    flat: list[bool]  # zero-variance groups
    skip_flat: list[bool]
    no_correct: list[bool]
    rank: list[int]


def _row_facts(ds: Dataset, cfg: FilterConfig, prof: list, units_col: list[list[str]]) -> _RowFacts:
    per_row = [prompt_values(e) for e in prof]
    names: dict[str, int] = {}
    units_idx = [[names.setdefault(u, len(names)) for u in us] for us in units_col]
    values = [v.get(cfg.base_model) for v in per_row]
    groups = _groups(ds)
    flat = [g is not None and g["zero_variance"] for g in groups]
    no_correct = [g is not None and g["correct"] is False for g in groups]
    rank = tie_ranks(values, [v.get(AVERAGE) for v in per_row], cfg.seed, demoted=no_correct)
    # rows `metakl dedup` marked as another row's near-duplicate are never picked (they still count for proficiency)
    duplicates = [bool(d) for d in column(ds, "duplicate_of")] if "duplicate_of" in ds.column_names else [False] * len(ds)
    skip_flat = [f and not cfg.keep_zero_variance for f in flat]
    return _RowFacts(column(ds, "domain"), units_col, units_idx, list(names), per_row, values, duplicates, flat,
                     skip_flat, no_correct, rank)


def _report_and_artifacts(cfg: FilterConfig, models: list[str], rows: _RowFacts, sel: Any, plan: dict[str, Any],
                          sections: dict[str, dict[str, Any]], ids: list) -> tuple[dict, dict]:
    """The stage report (with the gap report in brief) and the artifacts: the whole gap report, the selection, the
    figure."""
    domains, units_col, values, unit_names = rows.domains, rows.units_col, rows.values, rows.unit_names
    duplicates, flat, skip_flat, no_correct = rows.duplicates, rows.flat, rows.skip_flat, rows.no_correct
    main = sections[cfg.base_model]
    selected_domains = _count(domains[p] for p in sel.picked)
    report = {
        "base_model": cfg.base_model,
        "scored_models": models,
        "selected": len(sel.picked),
        "selected_per_domain": selected_domains,
        "by_phase": {PHASE_R: sel.phase.count(PHASE_R), PHASE_GAP: sel.phase.count(PHASE_GAP)},
        "stopped": sel.stopped,
        "quota_skipped": sel.quota_skipped,
        "rows_without_units": sum(1 for us in units_col if not us),
        "duplicates_skipped": sum(duplicates),
        # groups whose rewards are all equal (no preference for GDPO), skipped unless keep_zero_variance
        "zero_variance_groups": sum(flat),
        "zero_variance_skipped": sum(1 for f, d in zip(skip_flat, duplicates) if f and not d),
        # groups with a checkable reference and no correct response: picked after equally useful ones
        "groups_without_correct": sum(no_correct),
        "selected_without_correct": sum(1 for p in sel.picked if no_correct[p]),
        "stop_reason": _stop_reason(sel, plan["targets"], cfg, sum(1 for us in units_col if not us), len(units_col), {
            "near-duplicates": sum(duplicates),
            "zero-variance groups (--keep-zero-variance keeps them)": sum(1 for f, d in zip(skip_flat, duplicates)
                                                                          if f and not d)}),
        "rows_without_proficiency": sum(1 for v in values if v is None),
        "units": len(unit_names),
        # the gap report in brief (metakl publish puts it on the dataset card); the whole of it is gap_report.json
        "knowledge_gap": {
            "base_model": cfg.base_model, "coverage": main["coverage"], "short_of_target": main["short_of_target"],
            "lacking": [{k: u[k] for k in ("unit", "proficiency", "prompts", "target", "pool", "selected", "status")}
                        for u in main["lacking"][:10]],
        },
    }
    gap_report = {
        "format": "metakl-gap-report", "version": 1, "base_model": cfg.base_model,
        "target_rule": _rule_dict(cfg.rule),
        "stopped": sel.stopped, "stop_reason": report["stop_reason"], "selected": len(sel.picked),
        "selected_per_domain": selected_domains,
        "budget": cfg.budget, "quotas": dict(cfg.quotas),
        "models": {m: {k: v for k, v in s.items() if k != "unit_table"} for m, s in sections.items()},
        "units": main["unit_table"],
    }
    selection = {"ids": [ids[p] for p in sel.picked], "phase": sel.phase, "gain": sel.gain}
    artifacts: dict[str, Any] = {GAP_REPORT_FILE: gap_report, SELECTION_FILE: selection}
    if cfg.plots:
        try:
            from metakl.stages.plots import gap_figure

            table = [{"unit": u, **row} for u, row in main["unit_table"].items()]
            artifacts[GAP_REPORT_PNG] = gap_figure(main, table, _rule_dict(cfg.rule))
        except ImportError as exc:
            report["plots"] = f"no plot: {exc} (pip install matplotlib)"
    return report, artifacts


def _groups(ds: Dataset) -> list[dict[str, Any] | None]:
    """Per row, what its response group offers GDPO, or None where that is unknown (no rewarded responses: a filter
    before generate or reward): {"zero_variance": all rewards equal (the reward stage's test, ZERO_VARIANCE_EPS),
    "correct": a response matches the reference (None where the domain has no checkable reference: safety)}."""
    if "responses" not in ds.column_names:
        return [None] * len(ds)
    from metakl.stages.reward import group_advantages
    from metakl.verify import answer_kind, answers_match, check_math_batch
    from metakl.verify.mathcheck import fast_check

    out: list[dict[str, Any] | None] = []
    math_pairs: list[tuple[str, str]] = []
    math_rows: list[int] = []
    for i, row in enumerate(ds.select_columns([c for c in ("domain", "reference", "choices", "responses")
                                               if c in ds.column_names])):
        rewards = [r.get("reward") for r in row["responses"] or []]
        if not rewards or any(r is None for r in rewards):
            out.append(None)
            continue
        _, zero = group_advantages(rewards, ZERO_VARIANCE_EPS)
        reference = (row.get("reference") or "").strip()
        kind = answer_kind(row["domain"], reference, row.get("choices")) if reference else None
        answers = [r.get("answer") for r in row["responses"] if r.get("answer")]
        correct: bool | None = None
        if kind == "math":
            # Only "any answer right" matters: a row one answer settles without sympy (the fast path: same string or
            # number) sends nothing to math-verify. Checking every answer of every row cost ~0.06 s a pair in the
            # worker pool, 36 of the 44 s filter took on 44K prompts (issue 26).
            fast = [fast_check(reference, a) for a in answers]
            correct = any(f is not None and f.equal for f in fast)
            if not correct:
                undecided = [a for a, f in zip(answers, fast) if f is None]
                math_pairs += [(reference, a) for a in undecided]
                math_rows += [i] * len(undecided)
        elif kind is not None:
            correct = any(answers_match(kind, reference, a) for a in answers)
        out.append({"zero_variance": zero, "correct": correct})
    for i, check in zip(math_rows, check_math_batch(math_pairs) if math_pairs else []):
        out[i]["correct"] = out[i]["correct"] or check.equal  # type: ignore[index]
    return out


def _stop_reason(sel: Selection, targets: list[int], cfg: FilterConfig, untagged: int, rows: int,
                 not_candidates: dict[str, int]) -> dict[str, Any]:
    """Why the selection ended where it did, with the numbers behind it and what would change it.

    Under "no_gap" a unit stops asking either at its target (raising max_target raises it) or when its candidate
    prompts run out (only more candidates help: more input, or rows skipped as zero-variance / duplicates). Rows
    without a unit are never candidates: with the embedding tagger most of them are prompts it abstained on."""
    capped = sum(1 for t, c in zip(targets, sel.pool) if t > c)  # fewer candidates than the target
    bound = sum(1 for t, c in zip(targets, sel.pool) if t < c)  # stopped at the target: max_target moves it
    out: dict[str, Any] = {"targets_sum": sum(targets), "needs_sum": sum(sel.need), "units_short_of_candidates": capped,
                           "rows_without_units": untagged}
    if sel.stopped == BUDGET:
        out["text"] = f"the budget of {cfg.budget:,} prompts is spent"
        return out
    text = (f"no prompt adds a gap: every unit has its target or all its candidate prompts; the {len(targets):,} unit "
            f"targets add up to {out['targets_sum']:,}, {out['needs_sum']:,} within the units' candidates")
    if sel.quota_skipped:
        text += f"; {sum(sel.quota_skipped.values()):,} prompts were passed over because their domain's quota was full"
    if cfg.budget is not None and len(sel.picked) < cfg.budget:
        text += (f"; a prompt counts toward each of its units, so {len(sel.picked):,} prompts met them, short of the "
                 f"budget of {cfg.budget:,}")
        remedies = []
        if bound:
            remedies.append(f"raise --max-target (now {cfg.max_target}) to ask more prompts of each unit")
        if capped:
            skipped = ", ".join(f"{n:,} {what}" for what, n in not_candidates.items() if n)
            remedies.append(f"{capped:,} units have fewer candidate prompts than their target: add prompts"
                            + (f" (not candidates: {skipped})" if skipped else ""))
        text += "".join(f"; {r}" for r in remedies)
    if untagged:
        # the usual cause at scale: the embedding tagger abstains under its similarity floor (README, "Tags at scale")
        text += (f"; {untagged:,} of {rows:,} rows carry no knowledge unit and are not candidates (annotate left them "
                 "untagged: a lower `annotate --min-similarity` for the embedding tagger, or another annotator, tags "
                 "more of them)")
    out["text"] = text
    return out


def _rule_dict(rule: TargetRule) -> dict[str, Any]:
    return {"reminders": rule.reminders, "max_target": rule.max_target, "prior_strength": rule.prior_strength,
            "formula": "target = round(reminders + (max_target - reminders) * (1 - p~)), "
                       "p~ = (n * p + prior_strength * overall) / (n + prior_strength)"}


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


def _targets(units_col: list[list[str]], values: list[float | None], unit_names: list[str], rule: TargetRule,
             z: float) -> dict[str, Any]:
    stats = unit_stats(units_col, values, z)
    overall = overall_mean(values)
    used = [rule.shrink(stats.get(u), overall) for u in unit_names]
    return {"stats": stats, "overall": overall, "used": used, "targets": [rule.target(p) for p in used]}


def _section(model: str, selecting: bool, plan: dict[str, Any], sel: Selection, units_idx: list[list[int]],
             unit_names: list[str], values: list[float | None], domains: list[str], full_domains: set[str],
             cfg: FilterConfig) -> dict[str, Any]:
    """One model's gap report: lacking units, short units and why, coverage before → after.

    Why long: one pass over the units fills the table row and the short-of-target count of each together.
    """
    targets, stats = plan["targets"], plan["stats"]
    taken = set(sel.picked)
    blocked_elsewhere = [True] * len(unit_names)  # every unselected prompt of the unit is in a full-quota domain
    for p, us in enumerate(units_idx):
        if p not in taken and domains[p] not in full_domains:
            for u in us:
                blocked_elsewhere[u] = False

    table: dict[str, dict[str, Any]] = {}
    short: dict[str, int] = {NOT_ENOUGH: 0, SHORT_BUDGET: 0, SHORT_QUOTA: 0}
    if not selecting:
        short[OTHER] = 0
    for k, name in enumerate(unit_names):
        s: UnitStat = stats.get(name) or UnitStat(0, None, None, None)
        chosen, pool, target = sel.selected[k], sel.pool[k], targets[k]
        if chosen >= target:
            status = MET
        elif chosen == pool:
            status = NOT_ENOUGH
        elif blocked_elsewhere[k] and full_domains:
            status = SHORT_QUOTA
        elif selecting or sel.stopped == BUDGET:
            status = SHORT_BUDGET
        else:
            status = OTHER
        if status != MET:
            short[status] += 1
        table[name] = {**s.as_dict(), "proficiency_used": round(plan["used"][k], 6), "target": target,
                       "r_k": round(min(1.0, target / pool), 6) if pool else None,  # the paper's ratio
                       "pool": pool, "selected": chosen, "status": status}
    supported = [(name, row) for name, row in table.items() if row["prompts"] >= cfg.min_support]
    supported.sort(key=lambda x: (x[1]["proficiency"], -x[1]["prompts"], x[0]))
    lacking = [{"unit": name, **row} for name, row in supported[: cfg.report_units]]

    def mean_of(prompts) -> float | None:
        known = [values[p] for p in prompts if values[p] is not None]
        return round(sum(known) / len(known), 6) if known else None

    weak = [k for k, name in enumerate(unit_names)
            if (stats.get(name) and stats[name].n >= cfg.min_support and stats[name].mean < 0.5)]
    coverage = {
        "units": len(unit_names),
        "before": {"prompts": len(units_idx), "units_with_prompts": sum(1 for c in sel.pool if c > 0),
                   "units_at_target": sum(1 for c, t in zip(sel.pool, targets) if c >= t),
                   "weak_units_at_target": sum(1 for k in weak if sel.pool[k] >= targets[k]),
                   "mean_proficiency_of_prompts": mean_of(range(len(units_idx)))},
        "after": {"prompts": len(sel.picked), "units_with_prompts": sum(1 for c in sel.selected if c > 0),
                  "units_at_target": sum(1 for c, t in zip(sel.selected, targets) if c >= t),
                  "weak_units_at_target": sum(1 for k in weak if sel.selected[k] >= targets[k]),
                  "mean_proficiency_of_prompts": mean_of(sel.picked)},
        "weak_units": len(weak),
        "weak_threshold": 0.5,
    }
    return {
        "base_model": model, "selecting": selecting, "overall_proficiency": round(plan["overall"], 6),
        "units_with_support": len(supported), "lacking": lacking, "short_of_target": short,
        "coverage": coverage, "unit_table": table,
    }


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}"


def gap_summary(r: dict[str, Any], gap: dict[str, Any]) -> list[str]:
    """The lines `metakl filter` and the demo print: the base model's knowledge gaps, weakest first, the coverage
    before and after, and what was selected and why it stopped (from the stage report and gap_report.json)."""
    main = gap["models"][r["base_model"]]
    lines = [f"knowledge gaps of {r['base_model']} (units with >= {r['config']['min_support']} scored prompts, weakest first)",
             f"{'unit':36} {'prof':>5} {'interval':>13} {'pool':>6} {'target':>6} {'chosen':>6}  status"]
    for u in main["lacking"]:
        lines.append(f"{u['unit'][:36]:36} {_f(u['proficiency']):>5} {'[' + _f(u['ci'][0]) + ', ' + _f(u['ci'][1]) + ']':>13} "
                     f"{u['pool']:>6} {u['target']:>6} {u['selected']:>6}  {u['status']}")
    if not main["lacking"]:
        lines.append("(no unit has enough scored prompts)")
    c = main["coverage"]
    b, a = c["before"], c["after"]
    lines.append(f"coverage: prompts {b['prompts']:,} → {a['prompts']:,}; units with prompts {b['units_with_prompts']:,} → "
                 f"{a['units_with_prompts']:,} of {c['units']:,}; units at target {b['units_at_target']:,} → "
                 f"{a['units_at_target']:,}; weak units (< {c['weak_threshold']}) at target {b['weak_units_at_target']} → "
                 f"{a['weak_units_at_target']} of {c['weak_units']}; mean proficiency of the prompts "
                 f"{_f(b['mean_proficiency_of_prompts'])} → {_f(a['mean_proficiency_of_prompts'])}")
    short = ", ".join(f"{k} {v}" for k, v in main["short_of_target"].items() if v) or "none"
    per_domain = ", ".join(f"{d} {n:,}" for d, n in r["selected_per_domain"].items())
    first = f"{r['by_phase']['r']:,} with >= {r['config']['r']} units, " if r["config"]["r"] else ""
    lines.append(f"selected {r['selected']:,} ({per_domain or 'none'}; {first}{r['by_phase']['gap']:,} by gap); "
                 f"units short of target: {short}")
    if r["zero_variance_groups"]:
        kept = "kept (--keep-zero-variance)" if r["config"]["keep_zero_variance"] else f"{r['zero_variance_skipped']:,} skipped"
        lines.append(f"zero-variance groups (all rewards equal, no preference): {r['zero_variance_groups']:,}, {kept}")
    if r["groups_without_correct"]:
        lines.append(f"groups without a correct response: {r['groups_without_correct']:,} (picked after equal gaps), "
                     f"{r['selected_without_correct']:,} selected")
    lines.append(f"stopped: {r['stop_reason']['text']}")
    return lines
