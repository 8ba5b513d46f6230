"""Several teachers for one generate run: each its own backend (model, endpoints, request shape) and its own n.

The paper mixes teachers in one response group; `generate` asks every teacher for its n responses per prompt, records
the model on each response, and the group size is the sum. Other stages take one model: they get a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metakl.errors import UserError
from metakl.llm.base import _merge
from metakl.llm.types import RunStats


@dataclass
class Teacher:
    model: str
    backend: Any
    n: int | None = None  # responses per prompt; None: the stage's n


class Teachers:
    """The teachers of the `llm.teachers` list; `generate` reads `members`, accounting sums theirs."""

    kind = "teachers"

    def __init__(self, members: list[Teacher]) -> None:
        if not members:
            raise UserError("llm.teachers: the list is empty; name at least one teacher")
        self.members = members
        self.model = " + ".join(m.model for m in members)

    @property
    def stats(self) -> RunStats:
        total = RunStats()
        for member in self.members:
            _merge(total, member.backend.stats)
        return total

    def generate_all(self, requests: Any, progress: bool = True) -> Any:
        raise UserError("llm.teachers: only `generate` takes several teachers; give this stage its own llm: section "
                        "with one model")

    generate = generate_all

    def close(self) -> None:
        for member in self.members:
            member.backend.close()

    def __enter__(self) -> "Teachers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
