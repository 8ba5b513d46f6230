"""The annotate stage's shape (issue 22): one annotator per module behind one interface, and the shared retry loop
returning its result instead of filling output parameters. The annotators themselves run against SmolLM2 and
all-MiniLM-L6-v2 in tests/test_annotate*.py; here a scripted backend pins the retry branch (an invalid first answer,
then a valid one), which a real model cannot be made to take on demand."""

from __future__ import annotations

import importlib
import inspect

from metakl.llm.types import Completion, Result
from metakl.stages.annotate import STRATEGIES, AnnotateConfig, Annotator
from metakl.stages.annotate.ask import Asked, ask
from metakl.stages.knowledge_parse import KnowledgeError


def test_each_annotator_is_one_module_behind_one_interface():
    assert set(STRATEGIES) == set(Annotator)
    modules = {a: STRATEGIES[a].__module__ for a in Annotator}
    assert len(set(modules.values())) == len(Annotator)  # one module each
    for annotator, module in modules.items():
        assert module.startswith("metakl.stages.annotate.") and importlib.import_module(module)
        strategy = STRATEGIES[annotator]
        assert list(inspect.signature(strategy.label).parameters) == ["self", "rows", "todo", "found", "progress"]
        assert isinstance(strategy.uses_taxonomy, bool)
        assert strategy.uses_taxonomy == (annotator != Annotator.open)


class _Scripted:
    """Answers each request with the next text of its row's script, and records the conversations it was sent."""

    def __init__(self, scripts: dict[str, list[str]]):
        self.scripts = scripts
        self.sent: list[list[dict]] = []

    def generate_all(self, requests, progress=False):
        out = []
        for k, r in enumerate(requests):
            self.sent.append(r.messages)
            text = self.scripts[r.tag].pop(0)
            out.append(Result(k, r, Completion([text], ["stop"], 1, 1, "scripted")))
        return out


def test_ask_retries_with_the_error_and_returns_its_result():
    backend = _Scripted({"a": ["not json", '{"x": "y"}'], "b": ["bad", "bad"]})

    def check(i: int, text: str):
        if text.startswith("{"):
            return [{"skill": "x", "reason": "y"}]
        raise KnowledgeError("no_json", f"row {i}: no JSON")

    base = {0: [{"role": "user", "content": "q0"}], 1: [{"role": "user", "content": "q1"}]}
    asked = ask(backend, AnnotateConfig(retries=1), base, ["a", "b"], schema_of=lambda i: None, check=check,
                feedback=lambda message: [{"role": "user", "content": f"fix: {message}"}])
    assert isinstance(asked, Asked)
    assert asked.knowledge == {0: [{"skill": "x", "reason": "y"}]}
    assert asked.failure == {1: ("no_json", "row 1: no JSON")}
    assert dict(asked.attempts) == {0: 2, 1: 2}
    assert dict(asked.first_failures) == {"no_json": 2}
    # The retry shows the model its own answer and the error.
    assert list(backend.sent[2]) == base[0] + [{"role": "assistant", "content": "not json"},
                                         {"role": "user", "content": "fix: row 0: no JSON"}]
    assert asked.seconds >= 0
