"""Structured logging for every service.

``setup(level, json_output)`` configures the root logger once. Records carry key/value context passed as
``extra={"kv": {...}}`` or through :func:`kv`; the text format prints them as ``key=value`` pairs after
``time<TAB>level<TAB>scope<TAB>msg`` (ztunnel's layout), the JSON format (``LOG_FORMAT=json``) as one
object per line with ``time``, ``level``, ``scope``, ``msg`` and the fields. Levels can be changed at run
time per scope (ztunnel's ``/logging`` admin endpoint uses :func:`set_levels`).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "kv"}


def kv(**fields: Any) -> dict[str, Any]:
    """Shorthand: ``log.info("connection closed", extra=kv(src=..., dst=...))``."""
    return {"kv": fields}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(getattr(record, "kv", None) or {})
    for key, value in vars(record).items():
        if key not in _STD_ATTRS and not key.startswith("_"):
            fields[key] = value
    return fields


def _level(levelno: int) -> str:
    """ztunnel's level words: ``warn`` rather than Python's ``warning``."""
    name = logging.getLevelName(levelno).lower()
    return "warn" if name == "warning" else name


def _timestamp(record: logging.LogRecord) -> str:
    """RFC 3339 in UTC with microseconds, as ztunnel prints them (behaviour.md §7.3)."""
    return datetime.fromtimestamp(record.created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _timestamp(record),
            "level": _level(record.levelno),
            "scope": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, sort_keys=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{k}={_quote(v)}" for k, v in _fields(record).items())
        line = f"{_timestamp(record)}\t{_level(record.levelno)}\t{record.name}\t{record.getMessage()}"
        if pairs:
            line = f"{line}\t{pairs}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _quote(value: Any) -> str:
    """Render one ``key=value`` value the way ztunnel's text log does (Rust ``Debug``).

    Strings are always quoted and escaped (``src.workload="curl-1"``); numbers and booleans are bare; other
    objects (addresses, enums) print via ``str`` and are quoted only if they would break the line apart.
    """
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if not text or any(ch.isspace() or ch == '"' for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def setup(level: str = "info", json_output: bool = False, stream: Any = None) -> None:
    """Configure the root logger. ``level`` may be ``info`` or ``info,xds=debug,hbone=warning``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_output else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_levels(level)


_ALIASES = {"trace": "DEBUG", "warn": "WARNING"}  # ztunnel's level names that Python spells differently


def _parse_level(level: str, spec: str) -> int:
    name = _ALIASES.get(level.strip().lower(), level.strip().upper())
    numeric = logging.getLevelNamesMapping().get(name)
    if numeric is None or name == "NOTSET":
        raise ValueError(f"unknown log level {level!r} in {spec!r}")
    return numeric


def set_levels(spec: str) -> dict[str, str]:
    """Apply ``default[,scope=level...]``; returns the levels it set.

    The whole spec is checked before anything changes: a bad level raises ValueError and leaves every logger
    as it was (the ``/logging`` admin endpoint relies on that to answer 400 without side effects).
    """
    parsed: list[tuple[str, int]] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        scope, _, level = part.rpartition("=")
        parsed.append((scope.strip(), _parse_level(level, spec)))
    applied: dict[str, str] = {}
    for scope, numeric in parsed:
        logging.getLogger(scope or None).setLevel(numeric)
        applied[scope or "default"] = _level(numeric)
    return applied


def current_levels(scopes: Mapping[str, logging.Logger] | None = None) -> dict[str, str]:
    """``{"default": root level, scope: level...}`` for every logger with an explicit level."""
    if scopes is None:
        registered = logging.root.manager.loggerDict.items()
        scopes = {name: lg for name, lg in registered if isinstance(lg, logging.Logger)}
    levels = {"default": _level(logging.getLogger().level)}
    for name, logger in sorted(scopes.items()):
        if logger.level != logging.NOTSET:
            levels[name] = _level(logger.level)
    return levels
