"""What a run shows the person watching it: progress bars or progress lines, and each stage's closing line.

Shared by `metakl VERB`, `metakl run` (metakl.pipeline) and the demo; no CLI framework here.

A long step counts its work through `bar(total, desc, unit, enabled=...)`: a tqdm bar when `enabled` (stderr is a
terminal, or METAKL_PROGRESS=1; see `show_progress`); when stderr is not a terminal (a log file, a CI job, nohup) a
plain line every METAKL_PROGRESS_INTERVAL seconds (default 30) instead, so a 15-minute stage does not sit silent:

    embed all-minilm-l6-v2: 12,288/45,366 texts (27%), 71.3 texts/s, ETA 7 min 44 s

and a closing line when it printed any. A step shorter than the interval prints nothing; METAKL_PROGRESS=0 silences
both.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

INTERVAL_VAR = "METAKL_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0  # seconds between progress lines in a log


def show_progress() -> bool:
    """Progress bars for a person watching (stderr is a terminal), or when METAKL_PROGRESS=1 asks for them."""
    import os
    import sys

    forced = os.environ.get("METAKL_PROGRESS")
    return forced == "1" if forced in ("0", "1") else sys.stderr.isatty()


def log_interval() -> float:
    """Seconds between progress lines (METAKL_PROGRESS_INTERVAL; a UserError names a bad value)."""
    raw = os.environ.get(INTERVAL_VAR, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        from metakl.errors import UserError

        raise UserError(f"{INTERVAL_VAR}={raw!r}: expected the seconds between progress lines, a number above 0")
    return value


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, *args: object, **kwargs: object) -> None: ...  # tqdm's arguments, ignored
    def close(self) -> None: ...


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class LogProgress:
    """tqdm's update/close for a log: `desc: done/total unit (pct), rate, ETA` every `interval` seconds."""

    def __init__(self, total: int, desc: str, unit: str = "", interval: float = DEFAULT_INTERVAL, initial: int = 0,
                 file: Any = None, clock=time.monotonic) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit.strip(), interval
        self.done = self.start_done = initial
        self.file, self.clock = file, clock
        self.start = self.last = clock()
        self.printed = 0
        self.postfix = ""

    def line(self, final: bool = False) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        unit = f" {self.unit}" if self.unit else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        text = f"{self.desc}: {self.done:,}/{self.total:,}{unit}{pct}, {rate:,.1f}{unit}/s"
        if final:
            text += f", done in {_duration(elapsed)}"
        elif rate > 0 and self.total:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def _print(self, final: bool = False) -> None:
        print(self.line(final), file=self.file or sys.stderr, flush=True)
        self.printed += 1

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.interval and self.done < self.total:  # the last one is close()'s line
            self.last = now
            self._print()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        # a step that said it was under way, or ran longer than the interval, says it finished
        if self.printed or self.clock() - self.start >= self.interval:
            self._print(final=True)
        self.printed, self.interval = 0, float("inf")  # closed: nothing more


def bar(total: int, desc: str, unit: str = "", *, enabled: bool, initial: int = 0) -> Any:
    """A progress counter for `total` items: a tqdm bar when `enabled` (a person watching), else progress lines when
    stderr is not a terminal and METAKL_PROGRESS is not 0, else nothing. Has tqdm's update(n), set_postfix_str, close."""
    if total <= 0:
        return _NoBar()
    if enabled:
        from tqdm.auto import tqdm

        # tqdm shows rate and ETA; mininterval keeps redraws cheap on big batches.
        return tqdm(total=total, desc=desc, unit=f" {unit}" if unit else "it", mininterval=0.5, dynamic_ncols=True,
                    initial=initial)
    if os.environ.get("METAKL_PROGRESS") == "0" or getattr(sys.stderr, "isatty", lambda: False)():
        return _NoBar()
    return LogProgress(total, desc, unit, log_interval(), initial)


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


def embedding_counts(report: dict[str, Any]) -> dict[str, int] | None:
    """Texts a stage's embedder encoded and read from the cache (dedup and decontaminate: `embedding`; annotate's
    embedding retrieval: `retrieval.prompt_embeddings`), or None for a stage that embeds nothing."""
    for found in (report.get("embedding"), (report.get("retrieval") or {}).get("prompt_embeddings")):
        if isinstance(found, dict) and "encoded" in found:
            return {"encoded": int(found["encoded"]), "cache_hits": int(found.get("cache_hits") or 0)}
    return None


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
    embedded = embedding_counts(report)
    if embedded:
        parts.append(f"{embedded['encoded']:,} texts embedded ({embedded['cache_hits']:,} from the cache)")
    parts.append(f"{report.get('seconds', 0):.1f} s")
    return ", ".join(parts)
