"""Random bad input files fed to every `metakl` verb's loader through the real CLI entry (`metakl.errors.run_cli`,
in-process): exit code 2, one `error:` line on stderr, nothing written to --out (issue 20).

Bad files: JSON/JSONL with broken lines, parquet that is empty (0 bytes), truncated, overwritten with junk, of 0 rows,
with a known column of the wrong type, or without the columns the verb reads.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metakl.cli import _register_commands, app
from metakl.io import save_stage
from metakl.stages import get_stage
from metakl.schema import features

# Every verb that reads a stage folder, with the options it needs to get as far as reading it (no model is reached:
# the loader refuses the file first). A closed port for the verbs that would call a model.
NO_MODEL = ["--base-url", "http://127.0.0.1:9/v1", "--no-cache"]
STAGE_VERBS = {
    "generate": NO_MODEL,
    "reward": [],
    "annotate": NO_MODEL,
    "merge": [],
    "score": ["--base-model", "smollm2-135m-instruct", *NO_MODEL],
    "dedup": [],
    "decontaminate": [],
    "filter": ["--base-model", "m"],
    "publish": [],
}

GOOD_ROW = {"id": "a1", "source": "s", "domain": "math", "question": "What is 2 + 2?", "reference": "4", "choices": [],
            "meta": "{}", "errors": []}


def metakl(argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """Run `metakl ARGV` as the console script does (one process, no subprocess): exit code and stderr."""
    import datasets

    import metakl.signals

    if not any(c.name == "reward" for c in app.registered_commands):
        _register_commands()
    datasets.disable_progress_bars()  # as metakl.cli.main does
    monkeypatch.setattr(sys, "argv", ["metakl", *argv])
    monkeypatch.setattr(metakl.signals, "stop_on_signals", lambda *a: [])  # keep pytest's own signal handlers
    from metakl.errors import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(app)
    return exit_.value.code, capsys.readouterr().err


def _parquet_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        save_stage(Dataset.from_list([GOOD_ROW] * 3, features=features()), tmp)
        return (Path(tmp) / "data.parquet").read_bytes()


GOOD_PARQUET = _parquet_bytes()


# The columns each verb reads, as its stage declares them (`requires` with the default settings); merge reads
# `knowledge`, which a good ingest row does not have yet, so any of its rows is refused.
READS = {verb: tuple(get_stage(verb).requires(get_stage(verb).config_cls())) for verb in STAGE_VERBS}


@st.composite
def bad_stage_file(draw, verb: str) -> tuple[str, object]:
    """(what, content): bytes for a damaged parquet file, or rows (a list of dicts) for a readable but wrong one."""
    kind = draw(st.sampled_from(["empty", "truncated", "junk", "zero_rows", "wrong_type", "missing"]))
    if kind == "empty":
        return kind, b""
    if kind == "truncated":
        return kind, GOOD_PARQUET[: draw(st.integers(1, len(GOOD_PARQUET) - 1))]
    if kind == "junk":  # the footer's magic bytes or its length: what every parquet reader checks first
        data = bytearray(GOOD_PARQUET)
        if draw(st.booleans()):
            data[-4:] = draw(st.binary(min_size=4, max_size=4).filter(lambda b: b != b"PAR1"))
        else:
            data[-8:-4] = draw(st.integers(len(data), 2**31 - 1)).to_bytes(4, "little")
        return kind, bytes(data)
    if kind == "zero_rows":
        return kind, []
    row = dict(GOOD_ROW)
    if kind == "wrong_type":
        column = draw(st.sampled_from(["id", "domain", "question", "reference", "choices", "errors"]))
        row[column] = draw(st.sampled_from([7, 2.5, True, {"a": 1}] if column != "choices" else [7, "A, B"]))
        return f"{kind}:{column}", [row]
    dropped = draw(st.lists(st.sampled_from(READS[verb]), min_size=1, unique=True))
    return f"{kind}:{','.join(dropped)}", [{k: v for k, v in row.items() if k not in dropped}]


def _write_stage(folder: Path, content: object) -> None:
    folder.mkdir(parents=True)
    if isinstance(content, bytes):
        (folder / "data.parquet").write_bytes(content)
    else:
        Dataset.from_list(content).to_parquet(str(folder / "data.parquet")) if content else \
            Dataset.from_list([GOOD_ROW], features=features()).select([]).to_parquet(str(folder / "data.parquet"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), verb=st.sampled_from(sorted(STAGE_VERBS)))
def test_every_stage_verb_refuses_a_bad_input_in_one_line(data, verb, capsys, monkeypatch):
    what, content = data.draw(bad_stage_file(verb), label="bad file")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        _write_stage(src, content)
        code, err = metakl([verb, str(src), "--out", str(out), *STAGE_VERBS[verb]], capsys, monkeypatch)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (verb, what, err)
        assert not out.exists() and sorted(p.name for p in Path(tmp).iterdir()) == ["in"], (verb, what)


@st.composite
def bad_jsonl(draw, answer: str = "answer", value=lambda i: f"#### {2 * i}",
              kinds: tuple[str, ...] = ("syntax", "not_object", "missing", "wrong_type")) -> tuple[str, str]:
    """(what, text) of a JSONL file of records {question, `answer`: value} with one broken line or record."""
    good = [json.dumps({"question": f"What is {i} + {i}?", answer: value(i)}) for i in range(3)]
    kind = draw(st.sampled_from(kinds))
    if kind == "syntax":
        bad = draw(st.sampled_from(['{"question": "x"', '{question: 1}', "[1, 2", '{"a": 1} trailing', "\x00\x01"]))
    elif kind == "not_object":
        bad = draw(st.sampled_from(["[1, 2]", '"text"', "42", "null"]))
    elif kind == "missing":
        bad = json.dumps(draw(st.sampled_from([{answer: value(1)}, {"question": "What?"}, {}])))
    else:
        bad = json.dumps(draw(st.sampled_from([{"question": 5, answer: value(1)}, {"question": ["a"], answer: value(1)},
                                               {"question": "What?", answer: {"x": 1}}])))
    at = draw(st.integers(0, len(good)))
    return kind, "\n".join(good[:at] + [bad] + good[at:]) + "\n"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=bad_jsonl())
def test_ingest_refuses_a_bad_jsonl_line_in_one_line(bad, capsys, monkeypatch):
    what, text = bad
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "train.jsonl", Path(tmp) / "out"
        src.write_text(text)
        code, err = metakl(["ingest", f"gsm8k={src}", "--out", str(out)], capsys, monkeypatch)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "train.jsonl" in lines[0], (what, text, err)
        assert not out.exists() and sorted(p.name for p in Path(tmp).iterdir()) == ["train.jsonl"], what


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# An answer record without a matching question is reported as unmatched, by design: only unreadable lines are errors.
@given(bad=bad_jsonl(answer="response", value=lambda i: [f"The answer is \\boxed{{{2 * i}}}."],
                     kinds=("syntax", "not_object")))
def test_import_responses_refuses_a_bad_answer_file_in_one_line(bad, capsys, monkeypatch):
    what, text = bad
    with tempfile.TemporaryDirectory() as tmp:
        prompts, answers, out = Path(tmp) / "in", Path(tmp) / "answers.jsonl", Path(tmp) / "out"
        save_stage(Dataset.from_list([GOOD_ROW], features=features()), prompts)
        answers.write_text(text)
        code, err = metakl(["import-responses", str(prompts), str(answers), "--preset", "qwen25math", "--out", str(out)],
                           capsys, monkeypatch)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (what, text, err)
        assert not out.exists(), what


def test_the_helper_runs_a_good_input_to_the_end(tmp_path, capsys, monkeypatch):
    """The helper above reaches the verb for real: a good input passes the loader (here: through dedup's own check)."""
    save_stage(Dataset.from_list([GOOD_ROW], features=features()), tmp_path / "in")
    code, err = metakl(["publish", str(tmp_path / "in"), "--out", str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 0, err
    assert (tmp_path / "out" / "README.md").exists()
    shutil.rmtree(tmp_path / "out")
