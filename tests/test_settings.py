"""Settings declared once (issue 22): every field of every stage config is declared with `metakl.config.setting`, is
a flag of the stage's verb (or says why not) and a YAML key, shows its default in `--help`, and has one set of bounds,
checked by the config for a YAML key, a flag and a library call alike. Walks every stage config and every verb."""

from __future__ import annotations

import dataclasses
import functools
import typing
from enum import Enum
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from metakl.config import settings_of
from metakl.errors import UserError
from metakl.stages import STAGES, get_stage

VERBS = tuple(STAGES)  # every stage is run alone by the verb of its name


@functools.lru_cache(maxsize=None)
def _command(name: str):
    """The verb's click command (typer builds the whole app's commands for each invocation: once here)."""
    import typer.main

    from metakl.cli import _register_commands, app

    if not any(c.name == name for c in app.registered_commands):
        _register_commands()
    return typer.main.get_command(app).commands[name]


def _invoke(name: str, argv: list[str]) -> BaseException | None:
    """What `metakl NAME ARGV` raises, run in this process without the console script's error printing."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _command(name).main(args=[str(a) for a in argv], prog_name="metakl", standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - what the verb raised is the result
        return exc
    return None


def _flags(name: str) -> dict[str, object]:
    """Each flagged config field's click parameter, by field name (a field named like a model option, merge's
    batch_size, has a parameter named `<field>_setting`)."""
    params = {p.name: p for p in _command(name).params}
    return {f.name: params.get(f"{f.name}_setting", params.get(f.name))
            for f, meta in settings_of(get_stage(name).config_cls) if not meta["no_flag"]}


def test_every_verb_is_a_stage_and_every_stage_a_verb():
    import typer.main

    from metakl.cli import _register_commands, app

    if not any(c.name == "ingest" for c in app.registered_commands):
        _register_commands()
    assert set(VERBS) <= set(typer.main.get_command(app).commands)
    assert len(VERBS) == 11 and {"import-responses", "decontaminate"} <= set(VERBS)


@pytest.mark.parametrize("name", VERBS)
def test_every_field_of_the_stage_config_is_declared_once_with_help(name):
    """Fails on a config whose fields are plain dataclass fields (their flags written by hand in the command)."""
    cls = get_stage(name).config_cls
    declared = {f.name: meta for f, meta in settings_of(cls)}
    assert set(declared) == {f.name for f in dataclasses.fields(cls)}, name
    for field, meta in declared.items():
        assert meta["help"].strip(), (name, field)
        assert meta["no_flag"] is None or meta["no_flag"].strip(), (name, field)


@pytest.mark.parametrize("name", VERBS)
def test_every_field_is_a_flag_with_its_help_and_the_dataclass_default(name):
    import click

    cmd = _command(name)
    ctx = click.Context(cmd)
    flags = _flags(name)
    for f, meta in settings_of(get_stage(name).config_cls):
        if meta["no_flag"]:
            continue
        param = flags[f.name]
        assert param is not None, (name, f.name)
        flag_help, record = param.help, param.get_help_record(ctx)
        assert flag_help.startswith(meta["help"]), (name, f.name)
        if param.param_type_name == "argument":  # a positional argument shows no default
            continue
        shown = "[default: " in record[1]
        scalar = isinstance(f.default, (bool, int, float, str, Enum))
        if scalar and f.default != "" and meta["option"].get("show_default", True):
            # the default in --help is the dataclass's (a boolean by the name of its flag)
            if isinstance(f.default, bool):
                expected = (param.opts if f.default else param.secondary_opts or [""])[0].lstrip("-")
                assert not param.secondary_opts or f"[default: {expected}]" in record[1], (name, f.name, record)
            else:
                expected = f.default.value if isinstance(f.default, Enum) else f.default
                assert f"[default: {expected}]" in record[1], (name, f.name, record)
            assert param.default == f.default, (name, f.name)
        elif scalar:  # an empty text, or a default the verb sets itself (merge's --name: the --out folder's name)
            assert not shown and param.default == f.default, (name, f.name, record)
        else:  # None, a list or a mapping: the flag is unset unless given, and the config's default applies
            assert not shown and param.default in (None, False), (name, f.name, record)


LOCAL = Path(__file__).resolve().parent / "fixtures" / "ingest" / "local"
GSM8K = str(LOCAL / "gsm8k_train.jsonl")
# Values that a type alone cannot make up: what the stage checks before it runs (benchmark sources, a suite name),
# or a value that needs another setting beside it (score's answer files need a response mapping).
EXAMPLES = {("decontaminate", "benchmarks"): [f"gsm8k={GSM8K}"],
            ("decontaminate", "suite"): "none",
            ("annotate", "min_skills"): 2,  # at most max_skills (3 with a taxonomy)
            ("score", "responses"): [GSM8K], ("score", "preset"): "generic", ("score", "mapping"): GSM8K,
            ("ingest", "sources"): [f"gsm8k={GSM8K}"], ("ingest", "preset"): "gsm8k", ("ingest", "mapping"): GSM8K,
            ("ingest", "domains"): ["math", "safety"], ("generate", "reconstruct_domains"): ["math", "general"],
            ("import-responses", "files"): [GSM8K]}
BESIDE = {("score", "responses"): {"preset": "generic"}, ("score", "preset"): {"responses": [GSM8K]},
          ("score", "mapping"): {"responses": [GSM8K]}}


def _other_value(tp, default, meta, tmp_path: Path):
    """A value of type `tp` that is not `default` and within the declared bounds."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = args[0] if len(args) == 1 else tp
    if typing.get_origin(tp) is dict:  # a per-domain mapping
        value_type = typing.get_args(tp)[1]
        return {"math": 3 if value_type is int else "other" if value_type is str else 0.5}
    if typing.get_origin(tp) in (tuple, list):
        return ["first", "second"]
    if meta["choices"]:
        return next(c for c in meta["choices"] if c != default)
    if meta["path"]:
        return str(tmp_path / "some-folder")
    if tp is bool:
        return not default
    if isinstance(tp, type) and issubclass(tp, Enum):
        return next(m.value for m in tp if m != default)
    if tp in (int, float):
        low = meta["min"] if meta["min"] is not None else (meta["above"] or 0)
        high = meta["max"] if meta["max"] is not None else meta["below"]
        value = low + 3 if high is None else low + (high - low) / 4
        value = tp(value) if tp is int else round(value, 3)
        return value if value != default else value + 1
    return "other" if default != "other" else "another"


def _argv(param, value) -> list[str]:
    """`value` as the words of the command line that set it."""
    if param.param_type_name == "argument":
        return [str(v) for v in value]
    flag = param.opts[-1]
    if isinstance(value, bool):  # a true default is turned off by its --no-... form
        return [flag] if value else [param.secondary_opts[0]]
    if isinstance(value, list):
        return [a for v in value for a in (flag, str(v))]
    if isinstance(value, dict):
        return [a for k, v in value.items() for a in (flag, f"{k}={v}")]
    return [flag, str(value)]


class _Captured(Exception):
    pass


def _config_of(name: str, argv: list[str], tmp_path: Path):
    """The config a verb would run with (captured where the one-stage plan is handed to run_stage)."""
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
    inputs = [] if name == "ingest" else [str(tmp_path / "in")]  # ingest reads its SOURCES
    raised = _invoke(name, [*inputs, "--out", str(out), *argv])
    assert isinstance(raised, _Captured), (argv, raised)
    return raised.args[0]


@pytest.mark.parametrize("name", VERBS)
def test_a_flag_and_a_yaml_key_give_the_same_config(name, monkeypatch, tmp_path):
    """Every flagged field, set on the command line and as a key of the --config file (the section `metakl run`
    reads with the same `from_dict`), gives the same config, other than the default."""
    import metakl.pipeline

    def capture(plan, s, data_path, **kw):
        raise _Captured(s.config)

    monkeypatch.setattr(metakl.pipeline, "run_stage", capture)
    for var in ("METAKL_SHARED_DATA", "METAKL_CACHE_DIR"):  # an option's env var would win over the YAML key
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "in").mkdir()
    cls = get_stage(name).config_cls
    hints = typing.get_type_hints(cls)
    flags = _flags(name)
    base = {"sources": [f"gsm8k={GSM8K}"]} if name == "ingest" else {}  # ingest needs a source to plan at all
    for f, meta in settings_of(cls):
        if meta["no_flag"]:
            continue
        value = EXAMPLES.get((name, f.name)) or _other_value(hints[f.name], f.default, meta, tmp_path)
        beside = {**base, **BESIDE.get((name, f.name), {})}
        beside.pop(f.name, None)
        argv = _argv(flags[f.name], value) + [w for k, v in beside.items() for w in _argv(flags[k], v)]
        config_file = tmp_path / f"{f.name}.yaml"
        config_file.write_text(yaml.safe_dump({name: {f.name: value, **beside}}))
        by_flag = _config_of(name, argv, tmp_path)
        by_yaml = _config_of(name, ["--config", str(config_file)], tmp_path)
        assert by_flag == by_yaml, (name, f.name, by_flag, by_yaml)
        assert getattr(by_flag, f.name) != f.default, (name, f.name)


@pytest.mark.parametrize("name", VERBS)
def test_a_bound_holds_for_a_yaml_key_a_flag_and_a_library_call(name, tmp_path):
    """Below its bound, a setting is the same UserError on the command line, in the --config file and from a library
    call; through the console script, one `error:` line and exit 2 with nothing written."""
    from metakl.config import from_dict

    (tmp_path / "in").mkdir()
    cls = get_stage(name).config_cls
    flags = _flags(name)
    bounded = [(f, meta) for f, meta in settings_of(cls) if meta["min"] is not None or meta["above"] is not None]
    if name == "import-responses":
        assert not bounded  # no numbers to bound
        return
    assert bounded, name
    inputs = [] if name == "ingest" else [tmp_path / "in"]
    for i, (f, meta) in enumerate(bounded):
        low = meta["min"] if meta["min"] is not None else meta["above"]
        bad = low - 1
        message = f"{name}: {f.name}: expected a number"
        with pytest.raises(UserError, match=f"g.yaml: {message}"):
            from_dict(cls, {f.name: bad}, "g.yaml")
        with pytest.raises(UserError, match=message):
            cls(**{f.name: bad})
        config_file = tmp_path / "bad.yaml"
        config_file.write_text(yaml.safe_dump({name: {f.name: bad}}))
        for argv in ([flags[f.name].opts[-1], str(bad)], ["--config", config_file]):
            raised = _invoke(name, [*inputs, "--out", tmp_path / "o", *argv])
            assert isinstance(raised, UserError) and message in str(raised), (name, f.name, argv, raised)
            if i == 0:  # the console script's rendering of that UserError
                result = run_cli(name, *inputs, "--out", tmp_path / "o", *argv, in_process=True)
                assert result.returncode == 2 and result.stderr.count("\n") == 1, (name, f.name, result.stderr)
                assert result.stderr.startswith("error: ") and message in result.stderr, (name, result.stderr)
            assert not (tmp_path / "o").exists(), (name, f.name)
    with pytest.raises(UserError, match="generate: top_p: expected a number > 0 and <= 1, got 0.0"):
        from_dict(get_stage("generate").config_cls, {"top_p": 0.0}, "g.yaml")  # an open bound: 0 < top_p
