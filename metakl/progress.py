"""What a run shows the person watching it: progress bars (or not) and each stage's closing line.

Shared by `metakl VERB`, `metakl run` (metakl.pipeline) and the demo; no CLI framework here.
"""

from __future__ import annotations

from typing import Any


def show_progress() -> bool:
    """Progress bars for a person watching (stderr is a terminal), or when METAKL_PROGRESS=1 asks for them."""
    import os
    import sys

    forced = os.environ.get("METAKL_PROGRESS")
    return forced == "1" if forced in ("0", "1") else sys.stderr.isatty()


def quiet_library_progress() -> None:
    """Hide the progress bars of datasets, transformers and huggingface_hub (caching a split, loading weights):
    during `metakl run` each stage has its own bar and closing line, and theirs would bury them."""
    import sys

    import datasets
    import huggingface_hub.utils

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    # transformers copies huggingface_hub's setting when it is imported; importing it here only for this would add
    # seconds to every run, including runs that never load a model.
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def closing_line(report: dict[str, Any]) -> str:
    """`stage: 24 rows in → 24 out, 2 rows with errors (no_answer 2), 1,234 tokens, 3.2 s`."""
    errors = report.get("errors") or {}
    llm = report.get("llm") or {}
    tokens = (llm.get("prompt_tokens") or 0) + (llm.get("completion_tokens") or 0)
    parts = [f"{report['stage']}: {report.get('rows_in')} rows in → {report.get('rows_out')} out"]
    parts.append(f"errors: {', '.join(f'{k} {v}' for k, v in errors.items())}" if errors else "no errors")
    if llm:
        parts.append(f"{tokens:,} tokens ({llm.get('cache_hits', 0)} cached requests)")
        if llm.get("cost_usd") is not None:
            parts.append(f"${llm['cost_usd']:.4f}")
    parts.append(f"{report.get('seconds', 0):.1f} s")
    return ", ".join(parts)
