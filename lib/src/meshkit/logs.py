"""Structured logging for every service.

``setup(level, json_output)`` configures the root logger once. Records carry key/value context passed as
``extra={"kv": {...}}`` or through :func:`kv`; the text format prints them as ``key=value`` pairs, the JSON
format (``LOG_FORMAT=json``) as one object per line with ``time``, ``level``, ``scope``, ``msg`` and the fields.
Levels can be changed at run time per scope (ztunnel's ``/logging`` admin endpoint uses :func:`set_levels`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
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


def _timestamp(record: logging.LogRecord) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{base}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
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
        line = f"{_timestamp(record)}\t{record.levelname.lower()}\t{record.name}\t{record.getMessage()}"
        if pairs:
            line = f"{line}\t{pairs}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def setup(level: str = "info", json_output: bool = False, stream: Any = None) -> None:
    """Configure the root logger. ``level`` may be ``info`` or ``info,xds=debug,hbone=warning``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_output else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_levels(level)


def set_levels(spec: str) -> dict[str, str]:
    """Apply ``default[,scope=level...]``; returns the levels now in force. Raises ValueError on a bad level."""
    applied: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        scope, _, level = part.rpartition("=")
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {level!r} in {spec!r}")
        logging.getLogger(scope or None).setLevel(numeric)
        applied[scope or "default"] = level.lower()
    return applied


def current_levels(scopes: Mapping[str, logging.Logger] | None = None) -> dict[str, str]:
    loggers = scopes or {
        name: logger for name, logger in logging.root.manager.loggerDict.items() if isinstance(logger, logging.Logger)
    }
    levels = {"default": logging.getLevelName(logging.getLogger().level).lower()}
    for name, logger in sorted(loggers.items()):
        if logger.level != logging.NOTSET:
            levels[name] = logging.getLevelName(logger.level).lower()
    return levels
