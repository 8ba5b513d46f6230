"""PNG figures of the score and filter stages, rendered in memory (matplotlib's Agg canvas, no global backend
switch) and returned as bytes: the stage returns them as artifacts and `metakl.io.save_stage` writes them."""

from __future__ import annotations

import io
from typing import Any, Sequence


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def agreement_heatmap(agreement: dict[str, Any]) -> bytes:
    """Pearson correlation of unit proficiency between models (and average / strict) as an annotated heatmap."""
    import numpy as np

    names: Sequence[str] = agreement["models"]
    values = np.array([[np.nan if v is None else v for v in row] for row in agreement["pearson"]], dtype=float)
    size = max(3.5, 0.65 * len(names) + 2)
    fig = _figure(size + 1, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(values, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    for i in range(len(names)):
        for j in range(len(names)):
            v = values[i, j]
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if not np.isnan(v) and abs(v) > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Pearson r")
    ax.set_title(f"Unit proficiency agreement (units with >= {agreement['min_support']} prompts)", fontsize=9)
    return _png(fig)


def gap_figure(section: dict[str, Any], units: list[dict[str, Any]], rule: dict[str, Any]) -> bytes:
    """Two panels for one base model: every unit's selected prompts against its proficiency (with the target
    curve), and the weakest units' pool / selected / target counts."""
    import numpy as np

    fig = _figure(12, 5)
    left = fig.add_subplot(1, 2, 1)
    xs = np.array([u["proficiency_used"] for u in units], dtype=float)
    ys = np.array([u["selected"] for u in units], dtype=float)
    met = np.array([u["status"] == "met" for u in units], dtype=bool)
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, size=len(ys))
    if len(xs):
        left.scatter(xs[met], ys[met] + jitter[met], s=6, alpha=0.5, label="target met", color="tab:blue")
        left.scatter(xs[~met], ys[~met] + jitter[~met], s=8, alpha=0.7, label="short of target", color="tab:red")
    grid = np.linspace(0, 1, 50)
    curve = rule["reminders"] + (rule["max_target"] - rule["reminders"]) * (1 - grid)
    left.plot(grid, curve, color="black", lw=1, label="target(p)")
    left.set_yscale("symlog", linthresh=max(1, rule["max_target"]))  # linear up to the targets, log above
    left.set_xlim(-0.02, 1.02)
    left.set_xlabel("unit proficiency of the base model (shrunk)")
    left.set_ylabel("selected prompts with the unit (log above max_target)")
    left.set_title(f"{section['base_model']}: {section['coverage']['after']['units_at_target']} of "
                   f"{section['coverage']['units']} units at target", fontsize=9)
    left.legend(fontsize=8)

    right = fig.add_subplot(1, 2, 2)
    lacking = section["lacking"][:20][::-1]
    pos = np.arange(len(lacking))
    right.barh(pos, [u["pool"] for u in lacking], color="lightgray", label="prompts in pool")
    right.barh(pos, [u["selected"] for u in lacking], color="tab:blue", label="selected")
    right.scatter([u["target"] for u in lacking], pos, marker="|", s=120, color="black", label="target", zorder=3)
    right.set_yticks(pos, labels=[f"{u['unit'][:32]} ({u['proficiency']:.2f})" for u in lacking], fontsize=7)
    right.set_xlabel("prompts")
    right.set_title("weakest units with enough support (proficiency)", fontsize=9)
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    return _png(fig)
