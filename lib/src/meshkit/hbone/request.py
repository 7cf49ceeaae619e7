"""The HBONE CONNECT request: what the client sends and what the server validates (behaviour.md §2.6, §2.7).

Client headers, always sent: ``baggage`` (source workload metadata, fixed key order, empty values omitted),
``forwarded`` (``for="<client ip:port>"`` plus ``;host=<service hostname>`` when service-addressed) and
``traceparent`` (W3C ``00-<32 hex>-<16 hex>-00``, random per outbound connection). Only the inner CONNECT of
double HBONE adds ``x-forwarded-network``.

Server validation here is the protocol part of §2.7: the method must be CONNECT and ``:authority`` must parse
as ``IP:port`` (IPv6 in brackets) or ``host:port``, else 400. Everything after that (workload lookup, policy,
upstream connect) is the caller's decision.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Authority",
    "BadRequest",
    "ConnectRequest",
    "SourceMetadata",
    "baggage",
    "connect_headers",
    "format_authority",
    "forwarded",
    "new_traceparent",
    "parse_authority",
    "parse_baggage",
    "parse_request",
]

MAX_AUTHORITY = 512  # longer than any DNS name plus a port; longer ones are a bad request
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9\-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,62}))*\.?")
_FORWARDED_HOST = re.compile(r'(?:^|;)\s*host="?([^";,]+)"?', re.IGNORECASE)
_NOT_KIND = frozenset({"k8s.cluster.name", "k8s.namespace.name"})  # k8s.*.name members naming no workload


class BadRequest(ValueError):
    """The request must be answered with 400."""


@dataclass(frozen=True, slots=True)
class Authority:
    """A parsed ``:authority``: ``host`` is an IP literal (``is_ip``) or a hostname."""

    host: str
    port: int
    is_ip: bool

    def __str__(self) -> str:
        return format_authority(self.host, self.port)


def format_authority(host: str, port: int) -> str:
    """``10.0.0.1:80``, ``[fd00::1]:80`` or ``reviews.ns.svc.cluster.local:9080``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_authority(text: str) -> Authority:
    """Parse ``IP:port``, ``[IPv6]:port``, else ``host:port``; raise :class:`BadRequest`.

    Strict where a lenient parse could mislead the checks that follow: the port is 1-65535 in ASCII digits,
    brackets hold an IPv6 address and nothing else, no IPv6 zone (``%eth0``), a hostname is DNS letters,
    digits, hyphens and dots.
    """
    if not text or len(text) > MAX_AUTHORITY:
        raise BadRequest("missing or oversized :authority")
    bracketed = text.startswith("[")
    if bracketed:
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
        sep = "" if ":" in host else sep
    if not sep:
        raise BadRequest(f"bad :authority {text!r}")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise BadRequest(f"bad port in :authority {text!r}")
    try:
        ip = ipaddress.IPv6Address(host) if bracketed else ipaddress.IPv4Address(host)
    except ValueError:
        if bracketed or not _HOST.fullmatch(host):
            raise BadRequest(f"bad host in :authority {text!r}") from None
        return Authority(host.lower(), int(port_text), is_ip=False)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise BadRequest(f"IPv6 zone in :authority {text!r}")
    return Authority(str(ip), int(port_text), is_ip=True)


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A validated CONNECT request as the server's handler sees it."""

    stream_id: int
    authority: Authority
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def traceparent(self) -> str | None:
        return self.header("traceparent")

    @property
    def baggage(self) -> str | None:
        return self.header("baggage")

    @property
    def forwarded_host(self) -> str | None:
        """The ``host=`` part of ``forwarded``: the only part the server uses (behaviour.md §2.6)."""
        value = self.header("forwarded")
        match = _FORWARDED_HOST.search(value) if value else None
        return match.group(1) if match else None

    @property
    def forwarded_network(self) -> str | None:
        return self.header("x-forwarded-network")


def parse_request(stream_id: int, headers: Iterable[tuple[str, str]]) -> ConnectRequest:
    """Validate method and authority (the 400 steps of behaviour.md §2.7)."""
    items = tuple(headers)
    pseudo = {k: v for k, v in items if k.startswith(":")}
    if pseudo.get(":method") != "CONNECT":
        raise BadRequest(f"method {pseudo.get(':method')!r} is not CONNECT")
    authority = parse_authority(pseudo.get(":authority", ""))
    return ConnectRequest(stream_id, authority, tuple((k, v) for k, v in items if not k.startswith(":")))


@dataclass(frozen=True, slots=True)
class SourceMetadata:
    """What ``baggage`` says about a workload (the fields of behaviour.md §2.6, in order)."""

    cluster_id: str = ""
    namespace: str = ""
    workload_type: str = "pod"
    workload_name: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    region: str = ""
    zone: str = ""


def baggage(meta: SourceMetadata) -> str:
    """``k8s.cluster.name=..,k8s.namespace.name=..,k8s.<type>.name=..,service.name=..,..``, no blanks."""
    pairs = (
        ("k8s.cluster.name", meta.cluster_id),
        ("k8s.namespace.name", meta.namespace),
        (f"k8s.{meta.workload_type.lower()}.name", meta.workload_name),
        ("service.name", meta.canonical_name),
        ("service.version", meta.canonical_revision),
        ("cloud.region", meta.region),
        ("cloud.availability_zone", meta.zone),
    )
    return ",".join(f"{k}={v}" for k, v in pairs if v)


def parse_baggage(value: str | None) -> SourceMetadata | None:
    """What a ``baggage`` header says about the source workload (the inverse of :func:`baggage`), or None
    without one. Keys and values are trimmed and empty values skipped; ``workload_type`` is ``""`` when no
    ``k8s.<type>.name`` member names the workload."""
    if not value:
        return None
    fields: dict[str, str] = {}
    for member in value.split(","):
        key, _, val = member.partition("=")
        key, val = key.strip(), val.strip()
        if key and val:
            fields[key] = val
    kind = next(
        (k for k in fields if k.startswith("k8s.") and k.endswith(".name") and k not in _NOT_KIND), ""
    )
    return SourceMetadata(
        cluster_id=fields.get("k8s.cluster.name", ""),
        namespace=fields.get("k8s.namespace.name", ""),
        workload_type=kind[len("k8s.") : -len(".name")],
        workload_name=fields.get(kind, ""),
        canonical_name=fields.get("service.name", ""),
        canonical_revision=fields.get("service.version", ""),
        region=fields.get("cloud.region", ""),
        zone=fields.get("cloud.availability_zone", ""),
    )


def forwarded(client: tuple[str, int], service_host: str | None = None) -> str:
    """``for="10.244.1.12:60059"`` (+ ``;host=<service hostname>`` when service-addressed)."""
    value = f'for="{format_authority(client[0], client[1])}"'
    return f"{value};host={service_host}" if service_host else value


def new_traceparent() -> str:
    """A random W3C traceparent, ``00-<32 hex>-<16 hex>-00`` (not tied to app tracing)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"


def connect_headers(
    source: SourceMetadata,
    client: tuple[str, int],
    *,
    service_host: str | None = None,
    traceparent: str | None = None,
    forwarded_network: str | None = None,
) -> list[tuple[str, str]]:
    """The non-pseudo headers of a ztunnel CONNECT, in upstream's order."""
    headers = [
        ("baggage", baggage(source)),
        ("forwarded", forwarded(client, service_host)),
        ("traceparent", traceparent or new_traceparent()),
    ]
    if forwarded_network:
        headers.append(("x-forwarded-network", forwarded_network))
    return headers
