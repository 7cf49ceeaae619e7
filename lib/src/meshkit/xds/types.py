"""xDS constants and small values shared by the client and the server (wire-contracts.md §3).

* type URLs (§3.2);
* :class:`NodeId`: ``ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local``, parsed as istiod does (§3.3);
* :func:`content_version`: the resource version istiod puts on Address resources, the lowercase hex
  xxHash64 of the serialized ``Any`` (§3.5). We use the ``xxhash`` package (PyPI) so our versions equal
  upstream's and a real ztunnel's ``initial_resource_versions`` from an upstream istiod stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import xxhash

ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE = "type.googleapis.com/istio.security.Authorization"
WORKLOAD_TYPE = "type.googleapis.com/istio.workload.Workload"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
SHORT_NAMES = {ADDRESS_TYPE: "address", AUTHORIZATION_TYPE: "authorization", WORKLOAD_TYPE: "workload"}


class InvalidNodeId(ValueError):
    """A Node.id that is not ``type~ip~id~domain``."""


@dataclass(frozen=True, slots=True)
class NodeId:
    type: str
    ip: str
    pod_name: str
    pod_namespace: str
    domain: str

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """Split on ``~`` into exactly four parts; the third is ``<pod>.<namespace>``."""
        parts = text.split("~")
        if len(parts) != 4:
            raise InvalidNodeId(f"node id {text!r} must have 4 parts separated by '~'")
        proxy_type, ip, proxy_id, domain = parts
        if not proxy_type:
            raise InvalidNodeId(f"node id {text!r} has an empty proxy type")
        name, _, namespace = proxy_id.rpartition(".")  # a pod name may hold dots; a namespace never does
        return cls(proxy_type, ip, name, namespace, domain)

    @classmethod
    def ztunnel(cls, ip: str, pod_name: str, pod_namespace: str) -> NodeId:
        # the domain suffix is hard-coded by ztunnel (§3.3)
        return cls("ztunnel", ip, pod_name, pod_namespace, f"{pod_namespace}.svc.cluster.local")

    def __str__(self) -> str:
        return f"{self.type}~{self.ip}~{self.pod_name}.{self.pod_namespace}~{self.domain}"


def content_version(any_bytes: bytes) -> str:
    """Lowercase hex xxHash64 (no padding, like Go's strconv.FormatUint(h, 16)) of a serialized Any."""
    return format(xxhash.xxh64_intdigest(any_bytes), "x")


def short_type(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1].lower())
