"""meshkit.settings: env-bound dataclass fields, parsers, and errors that name the variable and value."""

from __future__ import annotations

import enum
from dataclasses import FrozenInstanceError, dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from meshkit.settings import SettingsError, describe, env, load, parse_bool, parse_duration, parse_list


class Mode(enum.Enum):
    SHARED = "shared"
    DEDICATED = "dedicated"


@dataclass(frozen=True, slots=True)
class Demo:
    address: str = env("MK_ADDRESS", "istiod:15012", "Where istiod serves xDS.")
    port: int = env("MK_PORT", 15008, "HBONE port.")
    ratio: float = env("MK_RATIO", 0.5, "A ratio.")
    enabled: bool = env("MK_ENABLED", True, "Feature switch.")
    debounce: float = env("MK_DEBOUNCE", 0.1, "Push debounce.", parse=parse_duration)
    names: list[str] = env("MK_NAMES", ["a"], "Names.")
    cert_dir: Path = env("MK_CERT_DIR", Path("/var/run/secrets"), "Certificates.")
    cluster: str | None = env("MK_CLUSTER", None, "Cluster id, unset for none.")
    retries: int | None = env("MK_RETRIES", None, "Retry limit.")
    log_format: Literal["plain", "json"] = env("MK_LOG_FORMAT", "plain", "Log format.")
    mode: Mode = env("MK_MODE", Mode.SHARED, "Proxy mode.")
    not_from_env: int = 7
    extra: dict[str, str] = field(default_factory=dict)


def test_defaults_when_nothing_is_set() -> None:
    s = load(Demo, {})
    assert s == Demo()
    assert s.names == ["a"]
    assert s.names is not Demo().names  # mutable defaults are copied per instance
    assert (s.cluster, s.retries, s.mode, s.not_from_env) == (None, None, Mode.SHARED, 7)


def test_values_from_environment_mapping() -> None:
    s = load(
        Demo,
        {
            "MK_ADDRESS": "10.75.0.1:15012",
            "MK_PORT": "16008",
            "MK_RATIO": "0.25",
            "MK_ENABLED": "off",
            "MK_DEBOUNCE": "250ms",
            "MK_NAMES": " x, y ,,z ",
            "MK_CERT_DIR": "/tmp/certs",
            "MK_CLUSTER": "Kubernetes",
            "MK_RETRIES": "",
            "MK_LOG_FORMAT": "json",
            "MK_MODE": "dedicated",
            "UNRELATED": "ignored",
        },
    )
    assert s.address == "10.75.0.1:15012"
    assert (s.port, s.ratio, s.enabled, s.debounce) == (16008, 0.25, False, 0.25)
    assert s.names == ["x", "y", "z"]
    assert s.cert_dir == Path("/tmp/certs")
    assert (s.cluster, s.retries) == ("Kubernetes", None)
    assert (s.log_format, s.mode) == ("json", Mode.DEDICATED)
    with pytest.raises(FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MK_PORT", "1234")
    assert load(Demo).port == 1234


@pytest.mark.parametrize(
    ("var", "value", "reason"),
    [
        ("MK_PORT", "eighty", "invalid literal"),
        ("MK_RATIO", "half", "could not convert"),
        ("MK_ENABLED", "maybe", "expected true or false"),
        ("MK_DEBOUNCE", "5 parsecs", "expected a duration"),
        ("MK_RETRIES", "many", "invalid literal"),
        ("MK_LOG_FORMAT", "xml", "expected one of plain, json"),
        ("MK_MODE", "sidecar", "expected one of shared, dedicated"),
    ],
)
def test_bad_value_names_variable_and_value(var: str, value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as err:
        load(Demo, {var: value})
    assert err.value.variable == var
    assert err.value.value == value
    message = str(err.value)
    assert var in message
    assert repr(value) in message
    assert reason in message
    assert isinstance(err.value, ValueError)


def test_unsupported_type_is_a_declaration_error_even_when_unset() -> None:
    @dataclass(frozen=True)
    class Bad:
        pair: tuple[int, int] = env("MK_PAIR", (1, 2), "No parser for this.")

    with pytest.raises(TypeError, match="no parser for settings type"):
        load(Bad, {})


def test_custom_parser_errors_are_wrapped() -> None:
    def even(text: str) -> int:
        n = int(text)
        if n % 2:
            raise ValueError("must be even")
        return n

    @dataclass(frozen=True)
    class Custom:
        n: int = env("MK_EVEN", 2, "An even number.", parse=even)

    assert load(Custom, {"MK_EVEN": "4"}).n == 4
    with pytest.raises(SettingsError, match="MK_EVEN: must be even"):
        load(Custom, {"MK_EVEN": "3"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("1.5", 1.5),
        ("100ms", 0.1),
        ("5s", 5.0),
        ("2m", 120.0),
        ("24h", 86400.0),
        ("1m30s", 90.0),
        ("1h0m0.5s", 3600.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("10ns", 1e-8),
        (" 3s ", 3.0),
        (".5s", 0.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5 s", "5x", "-1s", "-3", "1s2", "inf", "nan", "m5", "1h 2m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("TRUE", True), ("yes", True), (" on ", True), ("0", False), ("False", False), ("", False)],
)
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_parse_bool_rejects() -> None:
    with pytest.raises(ValueError, match="expected true or false"):
        parse_bool("2")


def test_parse_list() -> None:
    assert parse_list("") == []
    assert parse_list("a,b , c,") == ["a", "b", "c"]


def test_describe_lists_env_fields_in_order() -> None:
    rows = describe(Demo)
    assert [r[0] for r in rows][:3] == ["MK_ADDRESS", "MK_PORT", "MK_RATIO"]
    assert ("MK_PORT", "15008", "HBONE port.") in rows
    assert ("MK_NAMES", "['a']", "Names.") in rows
    assert all(var.startswith("MK_") for var, _default, _help in rows)
    assert len(rows) == 11  # not_from_env and extra are not env-bound
