"""Scores from per-item values: bootstrap intervals, paired deltas against a baseline, the markdown table in the
paper's layout (math | general | safety, per-domain averages, overall) and a bar plot of the deltas.

Every metric is a ratio of sums over items, Σ num / Σ den (den = 1 per item for accuracies and rates; tokens for
per-token NLL and KL), so one percentile bootstrap over items serves all of them. Deltas are paired: the same
resampled items for model and baseline (both were scored on identical items, checked by item hash).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

LEVEL = 0.95
ARROW_UP, ARROW_DOWN = "↑", "↓"

# metric -> (numerator field, denominator field or None)
RATIO_METRICS = {"nll_per_token": ("nll", "tokens"), "kl_per_token": ("kl", "tokens"), "nll_base_per_token": ("nll_base", "tokens"),
                 "strongreject_score": ("judge_score", "judge_scored")}  # mean over the replies the LLM judge scored


def _arrays(items: dict[str, list[float]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    num_key, den_key = RATIO_METRICS.get(metric, (metric, None))
    num = np.asarray(items[num_key], dtype=float)
    den = np.asarray(items[den_key], dtype=float) if den_key else np.ones_like(num)
    return num, den


def bootstrap_ci(num: Sequence[float], den: Sequence[float] | None = None, *, iters: int = 1000, seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """(Σnum/Σden, low, high): percentile bootstrap over items. With fewer than 2 items the interval is the value."""
    num = np.asarray(num, dtype=float)
    den = np.ones_like(num) if den is None else np.asarray(den, dtype=float)
    value = float(num.sum() / den.sum()) if den.sum() else float("nan")
    if len(num) < 2 or iters <= 0:
        return value, value, value
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(iters, len(num)))
    stats = num[idx].sum(1) / den[idx].sum(1)
    a = (1 - level) / 2
    return value, float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def paired_delta_ci(num_m, den_m, num_b, den_b, *, iters: int = 1000, seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """(model − baseline, low, high) with the same items resampled for both."""
    num_m, den_m, num_b, den_b = (np.asarray(x, dtype=float) for x in (num_m, den_m, num_b, den_b))
    if not (len(num_m) == len(num_b) == len(den_m) == len(den_b)):
        raise ValueError("paired delta needs the same items for model and baseline")
    delta = float(num_m.sum() / den_m.sum() - num_b.sum() / den_b.sum())
    if len(num_m) < 2 or iters <= 0:
        return delta, delta, delta
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num_m), size=(iters, len(num_m)))
    stats = num_m[idx].sum(1) / den_m[idx].sum(1) - num_b[idx].sum(1) / den_b[idx].sum(1)
    a = (1 - level) / 2
    return delta, float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def metric_summary(items: dict[str, list[float]], metrics: Sequence[str], *, iters: int, seed: int) -> dict[str, dict[str, Any]]:
    out = {}
    for m in metrics:
        value, lo, hi = bootstrap_ci(*_arrays(items, m), iters=iters, seed=seed)
        out[m] = {"value": value, "ci": [lo, hi]}
    return out


def delta_summary(items: dict[str, list[float]], base_items: dict[str, list[float]], metrics: Sequence[str], higher_is_better: dict[str, bool], *, iters: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per metric: delta, its paired CI, whether the CI excludes 0 (`outside_ci`), the direction arrow (↑ = the
    value went up) and `better` (whether that direction is an improvement for this metric)."""
    out = {}
    for m in metrics:
        nm, dm = _arrays(items, m)
        nb, db = _arrays(base_items, m)
        d, lo, hi = paired_delta_ci(nm, dm, nb, db, iters=iters, seed=seed)
        outside = bool(lo > 0 or hi < 0)
        hib = higher_is_better.get(m, True)
        out[m] = {
            "value": d,
            "ci": [lo, hi],
            "outside_ci": outside,
            "arrow": ARROW_UP if d > 0 else ARROW_DOWN if d < 0 else "=",
            "better": None if d == 0 else (d > 0) == hib,
        }
    return out


def oriented(value: float, higher_is_better: bool) -> float:
    """A rate as 'higher is better' for averaging: an over-refusal rate r counts as 1 − r."""
    return value if higher_is_better else 1.0 - value


def domain_summary(tasks: dict[str, dict[str, Any]], key: str = "metrics") -> dict[str, float | None]:
    """Mean of the primary scores (oriented, in %) per domain, and overall = mean over every task scored (as the
    paper averages its benchmarks). Drift tasks are not averaged. When some tasks are the paper's benchmarks
    (`paper` set), only those are averaged: stand-ins and extra benchmarks stay out of the paper's averages."""
    per: dict[str, list[float]] = {"math": [], "general": [], "safety": []}
    only_paper = any(t.get("paper") for t in tasks.values())
    for t in tasks.values():
        if t["domain"] in per and t.get(key) and (t.get("paper") or not only_paper):
            per[t["domain"]].append(100 * oriented(t[key][t["primary"]]["value"], t["higher_is_better"]))
    out: dict[str, float | None] = {d: (sum(v) / len(v) if v else None) for d, v in per.items()}
    every = [x for v in per.values() for x in v]
    out["overall"] = sum(every) / len(every) if every else None
    return out


def metric_label(metric: str, task: dict[str, Any]) -> str:
    """acc → "acc (avg@8)", pass_at_k → "pass@8", maj_at_k → "maj@8" for a task sampled 8 times per item."""
    dec = task.get("decoding") or {}
    k = dec.get("samples")
    if not k or k == 1:
        return metric
    return {"acc": f"acc (avg@{k})", "pass_at_k": f"pass@{dec.get('pass_k') or k}", "maj_at_k": f"maj@{k}"}.get(metric, metric)


def decoding_text(d: dict[str, Any]) -> str:
    """One task's decoding settings as a line: "temperature 0.6, top_p 0.95, 8 samples, 8192 new tokens, thinking on, seed 0"."""
    parts = [f"temperature {d['temperature']}, top_p {d['top_p']}" if d["temperature"] else "greedy"]
    if d.get("samples", 1) > 1:
        parts.append(f"{d['samples']} samples (pass@{d.get('pass_k') or d['samples']})")
    parts.append(f"{d['max_gen_toks']} new tokens")
    parts.append(f"thinking {d.get('thinking', 'auto')}")
    if "seed" in d:
        parts.append(f"seed {d['seed']}")
    return ", ".join(parts)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(t: dict[str, Any], key: str = "metrics") -> str:
    m = t[key][t["primary"]]
    return _fmt(100 * oriented(m["value"], t["higher_is_better"]))


def markdown(result: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """The report: the paper-layout table, per-task details (n, CI, delta), drift, unavailable benchmarks."""
    tasks = result["tasks"]
    lines = [f"# gdpo eval: {result['model']}", ""]
    how = "scored from an outputs file" if result["backend"] == "outputs" else f"backend {result['backend']}, dtype {result['dtype']}"
    lines.append(f"suite `{result['suite']}`, {how}, "
                 f"{LEVEL:.0%} percentile-bootstrap intervals ({result['bootstrap_iters']} resamples)"
                 + (f"; baseline {baseline['model']}" if baseline else ""))
    if result.get("outputs"):
        o = result["outputs"]
        lines.append("")
        lines.append(f"Scored from the outputs file `{Path(o['file']).name}`: {o['records']} items, {o['generations']} generations"
                     + (f"; agreement with the file's correctness flags {o['agreement']:.4f} ({o['flags_compared']} generations)"
                        if "agreement" in o else ""))
    lines.append("")
    cols: list[tuple[str, str]] = []
    header = ["model"]
    for d in ("math", "general", "safety"):
        names = [n for n, t in tasks.items() if t["domain"] == d]
        for n in names:
            t = tasks[n]
            header.append(t["title"] + ("" if t["higher_is_better"] else " (1−rate)"))
            cols.append((d, n))
        header.append(f"**{d} avg**")
        cols.append((d, "__avg__"))
    header.append("**overall**")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))

    def row(label: str, res: dict[str, Any]) -> str:
        summ = res["summary"]
        cells = [label]
        for d, n in cols:
            cells.append(_fmt(summ.get(d)) if n == "__avg__" else (_cell(res["tasks"][n]) if n in res["tasks"] else "–"))
        cells.append(_fmt(summ.get("overall")))
        return "| " + " | ".join(cells) + " |"

    if baseline:
        lines.append(row(f"{baseline['model']} (baseline)", baseline))
    lines.append(row(result["model"], result))
    if baseline:
        cells = ["Δ"]
        for d, n in cols:
            if n == "__avg__":
                a, b = result["summary"].get(d), baseline["summary"].get(d)
                cells.append(_fmt(a - b) if a is not None and b is not None else "–")
            else:
                t = tasks[n]
                dm = t.get("delta", {}).get(t["primary"])
                if dm is None:
                    cells.append("–")
                else:
                    v = 100 * (dm["value"] if t["higher_is_better"] else -dm["value"])
                    cells.append(f"{v:+.1f}{ARROW_UP if v > 0 else ARROW_DOWN if v < 0 else ''}{'*' if dm['outside_ci'] else ''}")
        a, b = result["summary"].get("overall"), baseline["summary"].get("overall")
        cells.append(_fmt(a - b) if a is not None and b is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Scores in % (rates where lower is better shown as 1 − rate, so higher is better everywhere). "
                     "Δ in points, ↑ better / ↓ worse; * = the paired 95% bootstrap interval of Δ excludes 0.")
    else:
        lines.append("")
        lines.append("Scores in % (rates where lower is better shown as 1 − rate, so higher is better everywhere).")
    if any(t.get("paper") for t in tasks.values()):
        lines.append("Domain and overall averages are over the paper's benchmarks only; the other columns are stand-ins or extra benchmarks.")
    lines.append("")
    lines.append("## Per task")
    lines.append("")
    head = "| task | domain | n | metric | value | 95% CI |" + (" baseline | Δ | Δ 95% CI | outside CI |" if baseline else "")
    lines.append(head)
    lines.append("|" + "---|" * (head.count("|") - 1))
    for n, t in tasks.items():
        for m, s in t["metrics"].items():
            cells = [n, t["domain"], str(t["n"]), metric_label(m, t) + (" (primary)" if m == t["primary"] else ""), _fmt(s["value"], 4), f"[{_fmt(s['ci'][0], 4)}, {_fmt(s['ci'][1], 4)}]"]
            if baseline:
                bm = baseline["tasks"].get(n, {}).get("metrics", {}).get(m)
                dm = t.get("delta", {}).get(m)
                cells += [_fmt(bm["value"], 4) if bm else "–"]
                if dm:
                    mark = "" if dm["better"] is None else (" (better)" if dm["better"] else " (worse)")
                    cells += [f"{dm['value']:+.4f} {dm['arrow']}{mark}", f"[{dm['ci'][0]:+.4f}, {dm['ci'][1]:+.4f}]", "yes" if dm["outside_ci"] else "no"]
                else:
                    cells += ["–", "–", "–"]
            lines.append("| " + " | ".join(cells) + " |")
    decoded = [(t["title"], t["decoding"]) for t in tasks.values() if "temperature" in (t.get("decoding") or {})]
    if decoded:
        lines += ["", "## Decoding", ""]
        lines += [f"- {title}: {decoding_text(d)}" for title, d in decoded]
        if result.get("thinking_switch") is False:
            lines.append("- the model's chat template renders the same with enable_thinking on and off: the thinking setting changed nothing")
    if result.get("unavailable"):
        lines.append("")
        lines.append("## Not run (offline-impossible)")
        lines.append("")
        for u in result["unavailable"]:
            lines.append(f"- {u['paper']} ({u['domain']}): {u['reason']}")
    notes = [f"- {t['title']}: {t['note']}" for t in tasks.values() if t.get("note")]
    if notes:
        lines += ["", "## Substitutions", "", *notes]
    return "\n".join(lines) + "\n"


def plot_deltas(result: dict[str, Any], path) -> None:
    """Bar plot of the primary-metric deltas (points, oriented so that up = better) with their 95% intervals; a second
    panel for drift (per-token NLL change and KL, nats)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"math": "#4c72b0", "general": "#55a868", "safety": "#c44e52", "drift": "#8172b2"}
    scored = [(n, t) for n, t in result["tasks"].items() if t["domain"] != "drift" and t.get("delta")]
    drift = [(n, t) for n, t in result["tasks"].items() if t["domain"] == "drift" and t.get("delta")]
    fig, axes = plt.subplots(1, 2 if drift else 1, figsize=(4 + 0.6 * len(scored) + (3 if drift else 0), 4.5),
                             gridspec_kw={"width_ratios": [max(1, len(scored)), max(1, 2 * len(drift))]} if drift else None)
    axes = np.atleast_1d(axes)
    ax = axes[0]
    for i, (n, t) in enumerate(scored):
        d = t["delta"][t["primary"]]
        sign = 1 if t["higher_is_better"] else -1
        v, lo, hi = (100 * sign * x for x in (d["value"], d["ci"][0], d["ci"][1]))
        lo, hi = min(lo, hi), max(lo, hi)
        ax.bar(i, v, color=colors[t["domain"]], alpha=0.9 if d["outside_ci"] else 0.45)
        ax.errorbar(i, v, yerr=[[v - lo], [hi - v]], color="black", capsize=3, lw=1)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(scored)), [t["title"] for _, t in scored], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("Δ vs baseline (points, up = better)")
    ax.set_title("primary score deltas (solid: 95% CI excludes 0)", fontsize=9)
    if drift:
        ax2 = axes[1]
        labels = []
        k = 0
        for n, t in drift:
            for m, color in (("nll_per_token", "#8172b2"), ("kl_per_token", "#937860")):
                d = t["delta"].get(m) if m != "kl_per_token" else None
                if m == "kl_per_token":
                    s = t["metrics"].get(m)
                    if s is None:
                        continue
                    v, lo, hi = s["value"], s["ci"][0], s["ci"][1]
                elif d is not None:
                    v, lo, hi = d["value"], d["ci"][0], d["ci"][1]
                else:
                    continue
                ax2.bar(k, v, color=color)
                ax2.errorbar(k, v, yerr=[[v - lo], [hi - v]], color="black", capsize=3, lw=1)
                labels.append(f"{t['title']}\n{'ΔNLL' if m == 'nll_per_token' else 'KL'}")
                k += 1
        ax2.axhline(0, color="black", lw=0.8)
        ax2.set_xticks(range(k), labels, rotation=40, ha="right", fontsize=8)
        ax2.set_ylabel("nats per token")
        ax2.set_title("drift (up = further from baseline)", fontsize=9)
    fig.suptitle(f"{result['model']} vs {result.get('baseline_model', 'baseline')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
