"""The stages, in pipeline order. Each is a function under the stage contract (metakl.stage): a `@stage(name,
Config)`-wrapped function `(data, config, *, backend=None, progress=False) -> StageResult`."""

from __future__ import annotations

import importlib
from typing import Any, Callable

# name -> (module, function); imported on first use (several stages pull in torch or vLLM clients).
STAGES: dict[str, tuple[str, str]] = {
    "ingest": ("metakl.stages.ingest", "ingest"),
    "generate": ("metakl.stages.generate", "generate"),
    "import-responses": ("metakl.stages.import_responses", "import_responses"),
    "reward": ("metakl.stages.reward", "reward"),
    "annotate": ("metakl.stages.annotate", "annotate"),
    "merge": ("metakl.stages.merge", "merge"),
    "score": ("metakl.stages.score", "score"),
    "dedup": ("metakl.stages.dedup", "dedup"),
    "decontaminate": ("metakl.stages.decontaminate", "decontaminate"),
    "filter": ("metakl.stages.filter", "filter_prompts"),
    "publish": ("metakl.stages.publish", "publish"),
}


def get_stage(name: str) -> Callable[..., Any]:
    """The stage function called `name` (its `config_cls` attribute is its settings dataclass)."""
    module, attr = STAGES[name]
    return getattr(importlib.import_module(module), attr)
