"""One stage's scope: what the backends of a stage share, whoever builds them (the verb's runner, `metakl run`, a
stage that builds one backend per model): the stage folder (batch mode keeps its batch ids there) and the money
spent (the budget is the stage's, not one backend's).

```python
with stage_scope(out):
    backend = options.build()      # sees the folder and the shared spending
    result = stage(data, config, backend=backend)
```
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from pathlib import Path


class StageScope:
    """What the backends of one stage share: its folder (batch mode keeps its ids there) and the money spent."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.spent = 0.0
        self._lock = threading.Lock()

    def spend(self, usd: float) -> float:
        with self._lock:
            self.spent += usd
            return self.spent


_scope: contextvars.ContextVar = contextvars.ContextVar("metakl_stage_scope", default=None)


@contextlib.contextmanager
def stage_scope(folder: str | Path | None) -> Iterator[StageScope]:
    """The stage whose backends are built and run inside this block (the runner and `metakl run` open one)."""
    scope = StageScope(None if folder is None else Path(folder))
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def current_scope() -> StageScope | None:
    return _scope.get()


