"""Command-line flags derived from dataclasses: one definition gives defaults, types, help and the JSON.

Each dataclass field becomes `--field_name`; `metadata={"help": ..., "choices": ..., "min": ..., "max": ...}`
documents and bounds it. Values are layered: dataclass defaults, then a `--config` file (JSON or YAML), then
explicit flags, and every value from either source passes the same checks (`checked_settings`): numbers are
finite and within the field's bounds, choices are among its choices. Fields named `seed` or `*_seed` are
seeds: 0 to 2**32 - 1, the range numpy accepts (torch and Python accept it too). Other integers must fit
in 64 bits, the most any tensor or file offset they reach can hold.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar

from tinystories.errors import UserError, first_line
from tinystories.files import read_text_file

T = TypeVar("T")
SEED_RANGE = (0, 2**32 - 1)
INT64_RANGE = (-2**63, 2**63 - 1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose bad command line is a UserError (no usage dump), which run_main reports in one line."""

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{message} (see --help)")


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _optional_of(annotation: Any) -> Optional[type]:
    """X for Optional[X] (or X | None), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(arguments) == 1 and len(typing.get_args(annotation)) == 2:
            return arguments[0]
    return None


def _list_of(annotation: Any) -> Optional[type]:
    """X for list[X], else None."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None


def _parser_for(annotation: Any) -> tuple[Any, bool]:
    """(function turning a command-line string into the field's type, whether None is allowed); for a list
    field, the type of one element."""
    annotation = _list_of(annotation) or annotation
    inner = _optional_of(annotation)
    nullable = inner is not None
    base = inner if nullable else annotation
    convert = parse_bool if base is bool else base

    def parse(text: str) -> Any:
        if nullable and text.strip().lower() in ("none", "null"):
            return None
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {getattr(base, '__name__', base)}, got {text!r}") from None

    parse.__name__ = getattr(base, "__name__", "value")  # argparse names the type in its messages
    return parse, nullable


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, title: Optional[str] = None,
                            exclude: tuple[str, ...] = ()) -> argparse._ArgumentGroup:
    """Add one `--name` flag per field of dataclass `cls`.

    Flags not given on the command line are absent from the parsed namespace (argparse.SUPPRESS), so
    callers can layer them over other sources with `merge_dataclass`.
    """
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        parse, _ = _parser_for(hints[field.name])
        # A bare true/false flag (`--json`) means true; `--json false` also works. A list takes one or more values.
        switch = {"nargs": "?", "const": True} if hints[field.name] is bool else \
            {"nargs": "+"} if _list_of(hints[field.name]) else {}
        help_text = field.metadata.get("help", "")
        group.add_argument(f"--{field.name}", type=parse, default=argparse.SUPPRESS,
                           choices=field.metadata.get("choices"), metavar=field.metadata.get("metavar"),
                           help=f"{help_text} (default: {_field_default(field)})".strip(), **switch)
    return group


def parse_dataclasses(parser: argparse.ArgumentParser, groups: list[tuple[type, str]],
                      argv: Optional[list[str]] = None) -> list[Any]:
    """One flag group per (dataclass, title); parse argv; each dataclass's defaults with its flags applied."""
    for cls, title in groups:
        add_dataclass_arguments(parser, cls, title=title)
    namespace = parser.parse_args(argv)
    return [merge_dataclass(cls(), explicit_values(cls, namespace), "command line") for cls, _ in groups]


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def explicit_values(cls: type, namespace: argparse.Namespace) -> dict[str, Any]:
    """The fields of `cls` that were given on the command line."""
    names = {field.name for field in dataclasses.fields(cls)}
    return {name: value for name, value in vars(namespace).items() if name in names}


def merge_dataclass(base: T, overrides: dict[str, Any], source: str) -> T:
    """`base` with `overrides` applied, checked as `checked_settings` checks them."""
    return dataclasses.replace(base, **checked_settings(type(base), overrides, source))


def checked_settings(cls: type, overrides: dict[str, Any], source: str,
                     flag_names: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """`overrides` converted to the types of `cls`'s fields; unknown keys, wrong types, non-finite or
    out-of-range numbers and values outside a field's choices are a UserError naming `source` ("command line"
    names the flag). Layers of settings merged this way build the dataclass once, so that its checks across
    fields (min_lr <= learning_rate) see the final values, not a half-merged mix. `flag_names` maps a field to
    the name its script gives it (train.py's --split_seed is DataConfig's seed)."""
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields.keys())
    if unknown:
        raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)}")
    checked = {}
    for name, value in overrides.items():
        flag = (flag_names or {}).get(name, name)
        where = f"--{flag}" if source == "command line" else f"{source}: {flag}"
        checked[name] = _checked(_coerce(value, hints[name], where), fields[name], where)
    return checked


def _bounds(field: dataclasses.Field, value: Any) -> tuple[Any, Any]:
    """(lowest, highest) allowed value of a numeric field; None where unbounded."""
    if field.name == "seed" or field.name.endswith("_seed"):
        low, high = SEED_RANGE
    elif isinstance(value, int):
        low, high = INT64_RANGE
    else:
        low = high = None
    return field.metadata.get("min", low), field.metadata.get("max", high)


def _checked(value: Any, field: dataclasses.Field, where: str) -> Any:
    """`value` if it is finite, within the field's bounds and among its choices; else a UserError."""
    if value is None:
        return None
    choices = field.metadata.get("choices")
    if choices is not None and value not in choices:
        raise UserError(f"{where} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where} must be a finite number, got {value}")
    low, high = _bounds(field, value)
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = (f"between {low} and {high}" if low is not None and high is not None
                   else f"at least {low}" if low is not None else f"at most {high}")
        raise UserError(f"{where} must be {allowed}, got {value}")
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Accept JSON/YAML values of the field's type (ints where floats are expected, strings via the CLI parser)."""
    inner = _optional_of(annotation)
    if value is None:
        if inner is None:
            raise UserError(f"{where} may not be null")
        return None
    base = inner or annotation
    element = _list_of(base)
    if element is not None:
        values = value if isinstance(value, list) else [value]
        return [_coerce(item, element, where) for item in values]
    if isinstance(value, str) and base is not str:
        parse, _ = _parser_for(annotation)
        try:
            return parse(value)
        except argparse.ArgumentTypeError as error:
            raise UserError(f"{where}: {error}") from None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    exact_type = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if base in (int, float, str, bool) and not exact_type:
        raise UserError(f"{where}: expected {base.__name__}, got {value!r}")
    return value


def load_config_file(path: str) -> dict[str, Any]:
    """Settings from a JSON or YAML file (a mapping of field names to values)."""
    file = Path(path)
    text = read_text_file(file, f"config file {path}")
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            settings = yaml.safe_load(text)
        else:
            settings = json.loads(text)
    except Exception as error:  # yaml and json raise different types; either way the file is unreadable
        raise UserError(f"config file {path} could not be parsed: {first_line(error)}") from None
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise UserError(f"config file {path} must hold a mapping of setting names to values")
    return settings
