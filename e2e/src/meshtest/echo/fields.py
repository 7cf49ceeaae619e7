"""The ``Key=Value`` response format shared by server and client, and its parser.

One field per line; ``RequestHeader=<Name>:<value>`` and ``ResponseHeader=...`` repeat. The client prefixes
each
line with ``[<n>] `` for the n-th request (upstream ForwardEcho style); :func:`parse_responses` accepts both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_PREFIX = re.compile(r"^\[(\d+)\]\s?(.*)$")


@dataclass(slots=True)
class EchoResponse:
    """One parsed reply. ``fields`` keeps the last value of each key; headers are collected separately."""

    fields: dict[str, str] = field(default_factory=dict)
    request_headers: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    @property
    def ip(self) -> str:
        return self.get("IP")

    @property
    def hostname(self) -> str:
        return self.get("Hostname")

    @property
    def code(self) -> str:
        return self.get("StatusCode")

    @property
    def version(self) -> str:
        return self.get("ServiceVersion")


def render(fields: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{key}={value}\n" for key, value in fields)


def parse(text: str) -> EchoResponse:
    response = EchoResponse(body=text)
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "RequestHeader":
            name, _, header_value = value.partition(":")
            response.request_headers.setdefault(name.lower(), []).append(header_value)
        else:
            response.fields[key] = value
    return response


def parse_responses(text: str) -> list[EchoResponse]:
    """Split ``[n] Key=Value`` output into one response per request index (unprefixed text is one
    response)."""
    groups: dict[int, list[str]] = {}
    plain: list[str] = []
    for line in text.splitlines():
        match = _PREFIX.match(line)
        if match:
            groups.setdefault(int(match.group(1)), []).append(match.group(2))
        else:
            plain.append(line)
    if not groups:
        return [parse("\n".join(plain))] if any(plain) else []
    return [parse("\n".join(groups[index])) for index in sorted(groups)]
