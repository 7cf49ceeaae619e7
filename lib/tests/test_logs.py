"""meshkit.logs: text and JSON formats, key/value context, run-time level changes."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import re
from collections.abc import Iterator

import pytest
from meshkit.logs import current_levels, kv, set_levels, setup

SCOPES = ("mktest", "mktest.xds", "mktest.hbone", "access")
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in SCOPES:
        logging.getLogger(name).setLevel(logging.NOTSET)


def _fail(exc: Exception) -> None:
    raise exc


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_format_matches_ztunnel_layout() -> None:
    out = io.StringIO()
    setup("info", stream=out)
    logging.getLogger("access").info(
        "connection complete",
        extra=kv(
            **{
                "src.addr": "10.75.0.12:58508",
                "src.workload": "curl-1",
                "dst.service": ipaddress.ip_address("10.75.0.10"),
                "direction": "outbound",
                "bytes_sent": 80,
                "mtls": True,
                "note": "",
            }
        ),
    )
    (line,) = _lines(out)
    ts, level, scope, msg, pairs = line.split("\t")
    assert re.fullmatch(TS, ts)
    assert (level, scope, msg) == ("info", "access", "connection complete")
    assert pairs == (
        'src.addr="10.75.0.12:58508" src.workload="curl-1" dst.service=10.75.0.10 direction="outbound" '
        'bytes_sent=80 mtls=true note=""'
    )


def test_text_format_quotes_objects_that_would_split_the_line() -> None:
    out = io.StringIO()
    setup("info", stream=out)

    class Spaced:
        def __str__(self) -> str:
            return 'a "b" c'

    logging.getLogger("mktest").warning("hello %s", "world", extra=kv(obj=Spaced(), n=1.5))
    (line,) = _lines(out)
    assert line.split("\t")[1:] == ["warn", "mktest", "hello world", 'obj="a \\"b\\" c" n=1.5']


def test_plain_extra_fields_are_included_too() -> None:
    out = io.StringIO()
    setup("info", stream=out)
    logging.getLogger("mktest").info("x", extra={"peer": "p1", **kv(a=1)})
    assert _lines(out)[0].endswith('\ta=1 peer="p1"')


def test_json_format() -> None:
    out = io.StringIO()
    setup("info", json_output=True, stream=out)
    logging.getLogger("mktest.xds").error(
        "stream ended", extra=kv(reason="eof", attempts=3, addr=("::1", 15012))
    )
    try:
        _fail(RuntimeError("kaput"))
    except RuntimeError:
        logging.getLogger("mktest.xds").exception("failed")
    first, second = (json.loads(line) for line in _lines(out))
    assert list(first)[:4] == ["time", "level", "scope", "msg"]
    assert re.fullmatch(TS, first["time"])
    assert first["level"] == "error"
    assert (first["scope"], first["msg"]) == ("mktest.xds", "stream ended")
    assert (first["reason"], first["attempts"], first["addr"]) == ("eof", 3, ["::1", 15012])
    assert "RuntimeError: kaput" in second["error"]


def test_json_format_stringifies_unknown_types() -> None:
    out = io.StringIO()
    setup("info", json_output=True, stream=out)
    logging.getLogger("mktest").info("x", extra=kv(ip=ipaddress.ip_address("10.75.0.1")))
    assert json.loads(out.getvalue())["ip"] == "10.75.0.1"


def test_text_exception_follows_the_line() -> None:
    out = io.StringIO()
    setup("info", stream=out)
    try:
        _fail(ValueError("bad"))
    except ValueError:
        logging.getLogger("mktest").exception("oops", extra=kv(k="v"))
    lines = _lines(out)
    assert lines[0].endswith('\terror\tmktest\toops\tk="v"')
    assert lines[-1] == "ValueError: bad"


def test_levels_per_scope() -> None:
    out = io.StringIO()
    setup("warn,mktest.xds=debug", stream=out)
    logging.getLogger("mktest.hbone").info("hidden")
    logging.getLogger("mktest.xds").debug("shown")
    logging.getLogger("mktest.hbone").warning("also shown")
    assert [line.split("\t")[3] for line in _lines(out)] == ["shown", "also shown"]
    assert current_levels()["default"] == "warn"
    assert current_levels()["mktest.xds"] == "debug"


def test_set_levels_returns_what_it_applied_and_accepts_ztunnel_names() -> None:
    applied = set_levels("info, mktest.xds=trace ,mktest.hbone=WARN")
    assert applied == {"default": "info", "mktest.xds": "debug", "mktest.hbone": "warn"}
    assert logging.getLogger("mktest.xds").getEffectiveLevel() == logging.DEBUG
    levels = current_levels()
    assert (levels["mktest.xds"], levels["mktest.hbone"]) == ("debug", "warn")


@pytest.mark.parametrize("spec", ["mktest=verbose", "info,mktest.xds=loud", "mktest=notset", "x=="])
def test_bad_level_changes_nothing(spec: str) -> None:
    set_levels("error,mktest=info")
    before = current_levels()
    with pytest.raises(ValueError, match="unknown log level"):
        set_levels(spec)
    assert current_levels() == before
    assert logging.getLogger().level == logging.ERROR


def test_current_levels_with_explicit_scopes() -> None:
    set_levels("mktest=error")
    scoped = current_levels(
        {"mktest": logging.getLogger("mktest"), "mktest.hbone": logging.getLogger("mktest.hbone")}
    )
    assert scoped["mktest"] == "error"
    assert "mktest.hbone" not in scoped  # NOTSET: inherits, so not listed
    assert "access" not in current_levels({})  # an empty mapping means no scopes, not all of them


def test_setup_replaces_handlers_instead_of_stacking() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup("info", stream=first)
    setup("info", stream=second)
    logging.getLogger("mktest").info("once")
    assert first.getvalue() == ""
    assert len(_lines(second)) == 1
