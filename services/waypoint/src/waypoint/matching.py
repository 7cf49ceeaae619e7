"""String, header, query and path matchers: compiled once per config push, called per request.

Two families of matchers live here:

* route matchers (:class:`StrMatcher`), compiled from the ``StringMatch`` of our proto: exact, plain prefix
  (VirtualService), Gateway API ``PathPrefix`` (element-wise), suffix and RE2-style regex (Python ``re``,
  full match, as Envoy's ``safe_regex``);
* AuthorizationPolicy value matchers (:func:`istio_value`), compiled from Istio's wildcard syntax: ``*``
  (presence), ``x*`` (prefix), ``*x`` (suffix), anything else exact.

Invariants: a matcher is a pure function of its input; compiling never raises for a well-formed proto except
for a bad regex, which raises :class:`InvalidMatch` so the config updater can reject that resource alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "InvalidMatch",
    "StrMatcher",
    "compile_string_match",
    "istio_value",
    "path_prefix_matches",
]


class InvalidMatch(ValueError):
    """A matcher in the configuration cannot be compiled (e.g. a bad regex)."""


def path_prefix_matches(prefix: str, path: str) -> bool:
    """Gateway API PathPrefix: element-wise; ``/`` matches everything, a trailing ``/`` is ignored."""
    trimmed = prefix.rstrip("/")
    if not trimmed:
        return True
    if not path.startswith(trimmed):
        return False
    return len(path) == len(trimmed) or path[len(trimmed)] == "/"


@dataclass(frozen=True, slots=True)
class StrMatcher:
    """One compiled string match; ``kind`` is one of exact, prefix, path_prefix, suffix, regex, present."""

    kind: str
    value: str
    ignore_case: bool = False
    pattern: re.Pattern[str] | None = None

    def __call__(self, text: str | None) -> bool:
        if text is None:
            return False
        if self.kind == "present":
            return True
        if self.kind == "regex":
            assert self.pattern is not None
            return self.pattern.fullmatch(text) is not None
        subject = text.lower() if self.ignore_case else text
        if self.kind == "exact":
            return subject == self.value
        if self.kind == "prefix":
            return subject.startswith(self.value)
        if self.kind == "path_prefix":
            return path_prefix_matches(self.value, subject)
        return subject.endswith(self.value)


def compile_string_match(kind: str, value: str, ignore_case: bool = False) -> StrMatcher:
    """Build a :class:`StrMatcher`; ``kind`` ``""`` means presence."""
    if not kind:
        return StrMatcher("present", "")
    if kind == "regex":
        try:
            pattern = re.compile(value, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise InvalidMatch(f"bad regex {value!r}: {exc}") from None
        return StrMatcher("regex", value, ignore_case, pattern)
    if kind not in {"exact", "prefix", "path_prefix", "suffix"}:
        raise InvalidMatch(f"unknown string match kind {kind!r}")
    return StrMatcher(kind, value.lower() if ignore_case else value, ignore_case)


def istio_value(pattern: str, *, ignore_case: bool = False) -> Callable[[str | None], bool]:
    """AuthorizationPolicy string syntax: ``*`` presence, ``x*`` prefix, ``*x`` suffix, else exact."""
    norm: Callable[[str], str] = str.lower if ignore_case else str
    want = norm(pattern)
    if pattern == "*":
        return bool
    if pattern.endswith("*"):
        head = want[:-1]
        return lambda v: v is not None and norm(v).startswith(head)
    if pattern.startswith("*"):
        tail = want[1:]
        return lambda v: v is not None and norm(v).endswith(tail)
    return lambda v: v is not None and norm(v) == want
