"""Typed settings read from environment variables.

Each service declares one frozen dataclass of settings. Every field carries its environment variable name,
a default and a docstring-like ``help`` in its metadata; :func:`load` builds the object once at start-up.
A value that does not parse raises :class:`SettingsError`, naming the variable and the offending value, so an
operator sees at once which line of the manifest is wrong.

Example::

    @dataclass(frozen=True, slots=True)
    class Settings:
        xds_address: str = env("XDS_ADDRESS", "https://istiod.istio-system.svc:15012", "Where istiod serves xDS.")
        debounce: float = env("PILOT_DEBOUNCE_AFTER", 0.1, "Push debounce, seconds.", parse=parse_duration)

    settings = load(Settings)              # from os.environ
    settings = load(Settings, {"XDS_ADDRESS": "..."})   # from a mapping (tests)
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, get_type_hints

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


def env(var: str, default: Any, help: str, *, parse: Callable[[str], Any] | None = None) -> Any:  # noqa: A002
    """Declare a dataclass field bound to environment variable ``var``."""
    meta = {_META_VAR: var, _META_HELP: help, _META_PARSE: parse}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Parse ``100ms``, ``5s``, ``2m``, ``24h`` or a bare number of seconds into seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError("expected a duration such as 100ms, 5s, 2m or 24h")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_bool(text: str) -> bool:
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
    if annotation is bool:
        return parse_bool
    if annotation is int:
        return int
    if annotation is float:
        return float
    if annotation is str:
        return str
    if annotation == list[str]:
        return parse_list
    raise TypeError(f"no parser for settings type {annotation!r}; pass parse=")


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from ``environ`` (default ``os.environ``)."""
    source = os.environ if environ is None else environ
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = field.metadata.get(_META_VAR)
        if var is None or var not in source:
            continue
        raw = source[var]
        parse = field.metadata.get(_META_PARSE) or _parser_for(hints[field.name])
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
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        rows.append((var, repr(default), field.metadata.get(_META_HELP, "")))
    return rows
