"""Settings declared once (issue 22): a stage config's fields declared with `metakl.config.setting` are each a
flag of the verb and a YAML key, with one set of bounds. Walks every stage config and every verb."""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from pathlib import Path

import pytest
import yaml

from metakl.config import settings_of
from metakl.errors import UserError
from metakl.stages import STAGES, get_stage

# The verbs whose options are generated from their config (commands._runner.config_options). The others still
# declare their flags by hand; this list shrinks verb by verb until it is every stage.
GENERATED = ("generate", "reward", "publish", "filter", "decontaminate")


def test_every_stage_config_is_declared_whole_or_listed_as_remaining():
    """A config is all `setting` fields (a generated verb) or none yet: never half, so a verb is never half-drifted."""
    for name in STAGES:
        cls = get_stage(name).config_cls
        declared = {f.name for f, _ in settings_of(cls)}
        every = {f.name for f in dataclasses.fields(cls)}
        assert declared == (every if name in GENERATED else set()), (name, every - declared)


def _command(name: str):
    import typer.main

    from metakl.cli import _register_commands, app

    if not any(c.name == name for c in app.registered_commands):
        _register_commands()
    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("name", GENERATED)
def test_help_shows_every_field_as_a_flag_with_its_declared_help(name, cli):
    from metakl.cli import app

    params = {p.name: p for p in _command(name).params}
    text = cli.invoke(app, [name, "--help"], env={"COLUMNS": "400"}).output
    for f, meta in settings_of(get_stage(name).config_cls):
        assert f.name in params and params[f.name].help == meta["help"], f.name
        assert params[f.name].opts[-1] in text or params[f.name].opts[0] in text, f.name


LOCAL = Path(__file__).resolve().parent / "fixtures" / "ingest" / "local"
# Values that a type alone cannot make up: what the stage checks before it runs (benchmark sources, a suite name).
EXAMPLES = {("decontaminate", "benchmarks"): [f"gsm8k={LOCAL / 'gsm8k_train.jsonl'}"],
            ("decontaminate", "suite"): "none"}


def _other_value(tp, default, meta, tmp_path: Path):
    """A value of type `tp` that is not `default` and within the declared bounds."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = args[0] if len(args) == 1 else tp
    if typing.get_origin(tp) is dict:  # a per-domain mapping
        return {"math": 3 if typing.get_args(tp)[1] is int else 0.5}
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


class _Captured(Exception):
    pass


def _config_of(name: str, argv: list[str], cli, monkeypatch, tmp_path: Path):
    """The config a verb would run with (captured where the one-stage plan is handed to run_stage)."""
    import metakl.pipeline
    from metakl.cli import app

    def capture(plan, s, data_path, **kw):
        raise _Captured(s.config)

    monkeypatch.setattr(metakl.pipeline, "run_stage", capture)
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
    result = cli.invoke(app, [name, str(tmp_path / "in"), "--out", str(out), *argv])
    assert isinstance(result.exception, _Captured), (argv, result.output, result.exception)
    return result.exception.args[0]


@pytest.mark.parametrize("name", GENERATED)
def test_a_flag_and_a_yaml_key_give_the_same_config(name, cli, monkeypatch, tmp_path):
    for var in ("METAKL_SHARED_DATA", "METAKL_CACHE_DIR"):  # an option's env var would win over the YAML key
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "in").mkdir()
    cls = get_stage(name).config_cls
    hints = typing.get_type_hints(cls)
    params = {p.name: p for p in _command(name).params}
    for f, meta in settings_of(cls):
        value = EXAMPLES.get((name, f.name)) or _other_value(hints[f.name], f.default, meta, tmp_path)
        flag = params[f.name].opts[-1]
        if isinstance(value, bool):  # a true default is turned off by its --no-... form
            argv = [flag] if value else [params[f.name].secondary_opts[0]]
        elif isinstance(value, list):
            argv = [a for v in value for a in (flag, v)]
        elif isinstance(value, dict):
            argv = [a for k, v in value.items() for a in (flag, f"{k}={v}")]
        else:
            argv = [flag, str(value)]
        config_file = tmp_path / f"{f.name}.yaml"
        config_file.write_text(yaml.safe_dump({name: {f.name: value}}))
        by_flag = _config_of(name, argv, cli, monkeypatch, tmp_path)
        by_yaml = _config_of(name, ["--config", str(config_file)], cli, monkeypatch, tmp_path)
        assert by_flag == by_yaml != cls(), f.name
        assert getattr(by_flag, f.name) != f.default, f.name


@pytest.mark.parametrize("name", GENERATED)
def test_a_bound_holds_for_a_yaml_key_a_flag_and_a_library_call(name, cli, tmp_path):
    from metakl.cli import app
    from metakl.config import from_dict

    (tmp_path / "in").mkdir()
    cls = get_stage(name).config_cls
    bounded = [(f, meta) for f, meta in settings_of(cls) if meta["min"] is not None or meta["above"] is not None]
    assert bounded
    for f, meta in bounded:
        low = meta["min"] if meta["min"] is not None else meta["above"]
        bad = low - 1
        with pytest.raises(UserError, match=f"g.yaml: {name}: {f.name}: expected a number"):
            from_dict(cls, {f.name: bad}, "g.yaml")
        with pytest.raises(UserError, match=f"{name}: {f.name}: expected a number"):
            cls(**{f.name: bad})
        flag = next(p for p in _command(name).params if p.name == f.name).opts[-1]
        result = cli.invoke(app, [name, str(tmp_path / "in"), "--out", str(tmp_path / "o"), flag, str(bad)])
        assert result.exit_code == 2 and not (tmp_path / "o").exists(), (f.name, result.output)
    with pytest.raises(UserError, match="generate: top_p: expected a number > 0 and <= 1, got 0.0"):
        from_dict(get_stage("generate").config_cls, {"top_p": 0.0}, "g.yaml")  # an open bound: 0 < top_p
