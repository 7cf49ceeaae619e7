"""The admin server (localhost:15000): ``/config_dump`` (sorted JSON, no private keys), ``/logging``,
``/quitquitquit``; plus the JSON rendering of ztunnel's state (wire-contracts.md §6).

Keys are camelCase as upstream; workloads are sorted by uid, services by hostname, policies by key,
certificates by identity. Certificates show PEM (base64), serial and validity, never the private key.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from meshkit import logs
from meshkit.identity.certs import WorkloadCertificate

from ztunnel.http import Handler, Request, Response
from ztunnel.state.records import Authorization, GatewayAddress, Match, Service, StringMatch, Workload
from ztunnel.state.state import State

__all__ = ["admin_routes", "config_dump", "dump_policy", "dump_service", "dump_workload"]


def _gw(gw: GatewayAddress | None) -> dict[str, Any] | None:
    return None if gw is None else {"destination": str(gw), "hboneMtlsPort": gw.hbone_port}


def _drop_empty(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v not in (None, "", [], {}, ())}


def dump_workload(wl: Workload) -> dict[str, Any]:
    return _drop_empty(
        {
            "uid": wl.uid,
            "workloadIps": list(wl.addresses),
            "waypoint": _gw(wl.waypoint),
            "networkGateway": _gw(wl.network_gateway),
            "protocol": wl.tunnel_protocol if wl.hbone else "TCP",
            "networkMode": wl.network_mode,
            "name": wl.name,
            "namespace": wl.namespace,
            "trustDomain": wl.trust_domain,
            "serviceAccount": wl.service_account,
            "network": wl.network,
            "workloadName": wl.workload_name,
            "workloadType": wl.workload_type,
            "canonicalName": wl.canonical_name,
            "canonicalRevision": wl.canonical_revision,
            "hostname": wl.hostname,
            "node": wl.node,
            "nativeTunnel": wl.native_tunnel or None,
            "authorizationPolicies": list(wl.authorization_policies),
            "status": "Healthy" if wl.healthy else "Unhealthy",
            "clusterId": wl.cluster_id,
            "locality": _drop_empty(
                {"region": wl.locality.region, "zone": wl.locality.zone, "subzone": wl.locality.subzone}
            ),
            "services": sorted(wl.services),
            "capacity": wl.capacity,
        }
    )


def dump_service(svc: Service, state: State) -> dict[str, Any]:
    eps = state.services.endpoints.get(svc.key, {})
    return _drop_empty(
        {
            "name": svc.name,
            "namespace": svc.namespace,
            "hostname": svc.hostname,
            "vips": [f"{n}/{ip}" for n, ip in svc.vips],
            "cidrVips": [f"{n}/{c}" for n, c in svc.cidr_vips],
            "ports": {str(p): t for p, t in sorted(svc.ports.items())},
            "endpoints": {
                uid: {
                    "workloadUid": uid,
                    "port": {str(p): t for p, t in sorted(ep.ports.items())},
                    "status": "Healthy",
                }
                for uid, ep in sorted(eps.items())
            },
            "subjectAltNames": list(svc.subject_alt_names),
            "waypoint": _gw(svc.waypoint),
            "weightedWaypoints": [{"destination": _gw(g), "weight": w} for g, w in svc.weighted_waypoints],
            "loadBalancer": None
            if svc.load_balancer is None
            else {
                "routingPreferences": list(svc.load_balancer.routing_preference),
                "mode": svc.load_balancer.mode,
                "healthPolicy": svc.load_balancer.health_policy,
            },
            "ipFamilies": svc.ip_families,
            "canonical": svc.canonical or None,
            "visibility": svc.visibility,
        }
    )


def _sm(m: StringMatch) -> dict[str, str]:
    return {m.kind: m.value}


def _match(m: Match) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in m.__slots__:
        value = getattr(m, name)
        if not value:
            continue
        camel = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
        if name.endswith(("namespaces", "principals")):
            out[camel] = [_sm(v) for v in value]
        elif name.endswith("ports"):
            out[camel] = sorted(value)
        elif name.endswith("accounts"):
            out[camel] = [{"namespace": ns, "serviceAccount": sa} for ns, sa in value]
        else:
            out[camel] = [str(v) for v in value]
    return out


def dump_policy(pol: Authorization) -> dict[str, Any]:
    return {
        "name": pol.name,
        "namespace": pol.namespace,
        "scope": pol.scope,
        "action": pol.action,
        "rules": [[[_match(m) for m in clause] for clause in rule] for rule in pol.rules],
        "dryRun": pol.dry_run,
    }


def _cert(pem: bytes) -> dict[str, Any]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    return {
        "pem": base64.b64encode(pem).decode(),
        "serialNumber": str(cert.serial_number),
        "validFrom": cert.not_valid_before_utc.isoformat().replace("+00:00", "Z"),
        "expirationTime": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
    }


def _split(pem: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" + marker + b"\n" for part in pem.split(marker) if part.strip()]


def dump_certificate(identity: str, state: str, cert: WorkloadCertificate | None) -> dict[str, Any]:
    out: dict[str, Any] = {"identity": identity, "state": state}
    if cert is not None:
        out["certChain"] = [_cert(p) for p in _split(cert.chain_pem)]
        out["rootCerts"] = [_cert(p) for p in _split(cert.roots_pem)]
    return out


def config_dump(
    state: State,
    certificates: list[dict[str, Any]],
    workload_state: dict[str, Any],
    config: dict[str, Any],
    static_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "workloads": [dump_workload(w) for _, w in sorted(state.workloads.by_uid.items())],
        "services": [
            dump_service(s, state)
            for s in sorted(state.services.by_key.values(), key=lambda s: (s.hostname, s.key))
        ],
        "policies": [dump_policy(p) for _, p in sorted(state.policies.by_key.items())],
        "stagedServices": {
            key: {uid: {"workloadUid": uid} for uid in sorted(eps)}
            for key, eps in sorted(state.services.staged().items())
        },
        "staticConfig": static_config or {},
        "version": {"version": "0.1.0", "istioVersion": "ambient-python"},
        "config": config,
        "certificates": sorted(certificates, key=lambda c: str(c["identity"])),
        "workloadState": workload_state,
    }


def admin_routes(
    dump: Callable[[], dict[str, Any]], quit_: Callable[[], None]
) -> dict[tuple[str, str], Handler]:
    """``/config_dump``, ``/logging`` (GET shows, POST ``?level=...`` changes levels), ``/quitquitquit``."""

    async def handle_dump(_request: Request) -> Response:
        body = json.dumps(dump(), indent=2, sort_keys=True).encode()
        return Response(body=body, content_type="application/json")

    async def handle_logging(request: Request) -> Response:
        level = request.query.get("level")
        if request.method == "POST" and level:
            try:
                logs.set_levels(level)
            except ValueError as exc:
                return Response(400, f"{exc}\n".encode())
        return Response(body=(json.dumps(logs.current_levels(), indent=2, sort_keys=True) + "\n").encode())

    async def handle_quit(_request: Request) -> Response:
        quit_()
        return Response(body=b"OK\n")

    return {
        ("GET", "/config_dump"): handle_dump,
        ("GET", "/logging"): handle_logging,
        ("POST", "/logging"): handle_logging,
        ("POST", "/quitquitquit"): handle_quit,
    }
