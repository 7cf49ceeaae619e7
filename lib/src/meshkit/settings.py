"""Typed settings read from environment variables.

Each service declares one frozen dataclass of settings. Every field carries its environment variable name,
a default and a docstring-like ``help`` in its metadata; :func:`load` builds the object once at start-up.
A value that does not parse raises :class:`SettingsError`, naming the variable and the offending value, so an
operator sees at once which line of the manifest is wrong.

Example::

    @dataclass(frozen=True, slots=True)
    class Settings:
        xds_address: str = env("XDS_ADDRESS", "https://istiod.istio-system.svc:15012", "istiod's xDS.")
        debounce: float = env("PILOT_DEBOUNCE_AFTER", 0.1, "Push debounce, seconds.", parse=parse_duration)

    settings = load(Settings)              # from os.environ
    settings = load(Settings, {"XDS_ADDRESS": "..."})   # from a mapping (tests)
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

_META_VAR = "meshkit.env"
_META_HELP = "meshkit.help"
_META_PARSE = "meshkit.parse"


class SettingsError(ValueError):
    """A setting could not be parsed. The message names the variable and the value."""

    def __init__(self, variable: str, value: str, reason: str) -> None:
        super().__init__(f"invalid value {value!r} for environment variable {variable}: {reason}")
        self.variable = variable
        self.value = value


def env(var: str, default: Any, help: str, *, parse: Callable[[str], Any] | None = None) -> Any:
    """Declare a dataclass field bound to environment variable ``var``."""
    meta = {_META_VAR: var, _META_HELP: help, _META_PARSE: parse}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from a Go-style duration (``100ms``, ``5s``, ``1m30s``, ``24h``) or a bare number of seconds.

    Istio's environment variables take Go durations, so the same manifest values work here.
    """
    value = text.strip()
    try:
        return _non_negative(float(value))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(value):
        raise ValueError("expected a duration such as 100ms, 5s, 1m30s or 24h")
    return total


def _non_negative(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a non-negative number of seconds")
    return seconds


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); an empty value is false."""
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def parse_list(text: str) -> list[str]:
    """Comma-separated list; blanks are dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _parser_for(annotation: Any) -> Callable[[str], Any]:
    simple: dict[Any, Callable[[str], Any]] = {bool: parse_bool, int: int, float: float, str: str, Path: Path}
    if annotation in simple:
        return simple[annotation]
    if annotation == list[str]:
        return parse_list
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType) and type(None) in args and len(args) == 2:
        inner = _parser_for(next(a for a in args if a is not type(None)))
        return lambda text: None if text.strip() == "" else inner(text)
    if origin is Literal:
        return _choice(tuple(str(a) for a in args), lambda text: next(a for a in args if str(a) == text))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        members = annotation
        return _choice(tuple(str(m.value) for m in members), lambda text: members(_enum_value(members, text)))
    raise TypeError(f"no parser for settings type {annotation!r}; pass parse=")


def _enum_value(members: type[enum.Enum], text: str) -> Any:
    return next(m.value for m in members if str(m.value) == text)


def _choice(allowed: tuple[str, ...], convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.strip() not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return convert(text.strip())

    return parse


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from ``environ`` (default ``os.environ``); unset variables keep their defaults.

    Raises :class:`SettingsError` for a value that does not parse, and TypeError for a field whose type has
    no parser (checked for every field, set or not, so a declaration bug shows up in the first test).
    """
    source = os.environ if environ is None else environ
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = field.metadata.get(_META_VAR)
        if var is None:
            continue
        parse = field.metadata.get(_META_PARSE) or _parser_for(hints[field.name])
        if var not in source:
            continue
        raw = source[var]
        try:
            values[field.name] = parse(raw)
        except (ValueError, TypeError) as exc:
            raise SettingsError(var, raw, str(exc) or type(exc).__name__) from None
    return cls(**values)


def describe(cls: type[Any]) -> list[tuple[str, str, str]]:
    """(variable, default, help) for every env-bound field: for --help output and docs."""
    rows = []
    for field in dataclasses.fields(cls):
        var = field.metadata.get(_META_VAR)
        if var is None:
            continue
        if field.default is not dataclasses.MISSING:
            default: Any = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = "<required>"
        rows.append((var, repr(default), field.metadata.get(_META_HELP, "")))
    return rows
