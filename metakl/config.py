"""Stage settings: a dataclass per stage, read from a YAML file and the command line, checked in one place.

`--config FILE.yaml` means the same thing for every verb: the verb's settings, either at the top level of the file
or under a key named after the verb (so that one file can hold several verbs' sections, as `metakl run` does). The
command line overrides the file; the dataclass defaults fill the rest. Unknown keys and wrong types are one
UserError naming the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from metakl.errors import UserError

C = TypeVar("C")


def setting(default: Any = None, *, help: str, flags: tuple[str, ...] = (), min: float | None = None,
            max: float | None = None, above: float | None = None, below: float | None = None,
            choices: tuple[str, ...] = (), path: bool = False, parse: Any = None,
            option: dict[str, Any] | None = None, argument: bool = False, no_flag: str | None = None) -> Any:
    """A config field declared once: its default, the help and flag names of the command-line option generated from
    it (`metakl.commands._runner.config_options`; default flag `--field-name`) and its bounds (`min`/`max`
    inclusive, `above`/`below` exclusive; `choices` for a string), which `check_settings` applies to a YAML key, a
    flag and a library call alike (the flag itself takes any number: one check, one message).
    `path`: the value names a file or folder (a Path on the command line, a string in the config). `parse`: how the
    items of a repeatable flag become the value (default for a mapping field, a per-domain setting: `DOMAIN=VALUE`
    items, values of the mapping's type; a UserError naming the flag).
    `option`: further settings of the command-line option only (`envvar`, `metavar`, `rich_help_panel`,
    `show_default`). `argument`: a positional argument of the verb instead of an option (ingest's SOURCES).
    `no_flag`: why the field is a YAML key only, never a flag (e.g. a mapping per model); every other field is both.
    A mapping or list default is copied for each config."""
    meta = {"help": help, "flags": tuple(flags), "min": min, "max": max, "above": above, "below": below, "path": path,
            "choices": tuple(choices), "parse": parse, "option": dict(option or {}), "argument": argument,
            "no_flag": no_flag}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"setting": meta})
    return dataclasses.field(default=default, metadata={"setting": meta})


def settings_of(cls: type) -> list[tuple[dataclasses.Field, dict[str, Any]]]:
    """The fields of a config dataclass declared with `setting`, with their declarations."""
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(cls) if "setting" in f.metadata]


def check_settings(config: Any, stage: str) -> None:
    """Every bound and choice a `setting` declares, in one message shape: `STAGE: field: expected ..., got VALUE`.
    Called by the config's __post_init__, so a YAML key, a flag and a library call meet the same check."""
    for f, meta in settings_of(type(config)):
        value = getattr(config, f.name)
        if meta["choices"] and value not in meta["choices"]:
            raise UserError(f"{stage}: {f.name}: expected one of {', '.join(meta['choices'])}, got {value!r}")
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high, above, below = meta["min"], meta["max"], meta["above"], meta["below"]
        if (low is not None and value < low) or (high is not None and value > high) or \
                (above is not None and value <= above) or (below is not None and value >= below):
            raise UserError(f"{stage}: {f.name}: expected a number {bounds_text(meta)}, got {value!r}")


def bounds_text(meta: dict[str, Any]) -> str:
    """A setting's bounds in words, e.g. `> 0 and <= 1` ("" when it has none): the check's message and the help."""
    low, high, above, below = meta["min"], meta["max"], meta["above"], meta["below"]
    lower = f"> {above:g}" if above is not None else f">= {low:g}" if low is not None else ""
    upper = f"< {below:g}" if below is not None else f"<= {high:g}" if high is not None else ""
    return " and ".join(filter(None, (lower, upper)))


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None)) + " (or null)"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, key: str) -> Any:
    """`value` as type `tp` where the conversion is lossless (int→float, list→tuple, str→Enum); else UserError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, key)
            except UserError as exc:
                errors.append(exc)
        raise UserError(f"{where}: '{key}': expected {_describe(tp)}, got {type(value).__name__} {value!r}")
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value.value if isinstance(value, Enum) else value)
        except ValueError:
            raise UserError(f"{where}: '{key}': expected {_describe(tp)}, got {value!r}") from None
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: '{key}': expected a list, got {type(value).__name__} {value!r}")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        items = [_coerce(v, args[0], where, key) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: '{key}': expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: '{key}': expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: '{key}': expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: '{key}': expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, Enum):
            return str(value.value)
        if not isinstance(value, str):
            raise UserError(f"{where}: '{key}': expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str) -> C:
    """Build the dataclass `cls` from `data`: unknown keys and wrong types are a UserError naming `where`."""
    data = dict(data or {})
    known = field_names(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown setting(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(v, hints.get(k, Any), where, k) for k, v in data.items()}
    try:
        return cls(**values)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}") from None


def read_section(path: str | Path | None, section: str) -> dict[str, Any]:
    """The verb's mapping from a YAML file: the `section` key when the file has one, else the whole file."""
    if path is None:
        return {}
    from metakl.io import read_yaml_mapping

    data = read_yaml_mapping(path, f"{section} settings")
    if section in data and isinstance(data[section], dict):
        return dict(data[section])
    return data


def load_config(cls: type[C], path: str | Path | None, overrides: dict[str, Any] | None = None, *,
                section: str, extra_keys: tuple[str, ...] = (),
                defaults: dict[str, Any] | None = None) -> tuple[C, dict[str, Any]]:
    """(config, extras): `defaults` (which replace the dataclass's), then the file's section, then `overrides`;
    `extras` holds the `extra_keys` found in the file (e.g. its `llm` mapping), not settings of the stage itself."""
    data = read_section(path, section)
    extras = {k: data.pop(k) for k in extra_keys if k in data}
    where = f"{path}" if path else f"{section} options"
    data = {**(defaults or {}), **data, **(overrides or {})}
    return from_dict(cls, data, where), extras
