"""The ``Node`` ztunnel sends on the first request of each type (wire-contracts.md §3.3), built from env.

``id`` = ``ztunnel~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local``; ``metadata``
holds NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME, then every proxy-metadata entry (mesh config
``defaultConfig.proxyMetadata``, passed in) and every ``ISTIO_META_<K>`` variable as ``<K>``, and last every
``ISTIO_METAJSON_<K>`` as a typed JSON value (overriding). Only ``id`` and ``metadata`` are set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from google.protobuf import struct_pb2
from meshproto.envoy.config.core.v3 import base_pb2

from meshkit.xds.types import NodeId

__all__ = ["node_from_env"]

DEFAULT_INSTANCE_IP = "1.1.1.1"


def node_from_env(
    environ: Mapping[str, str] | None = None, proxy_metadata: Mapping[str, str] | None = None
) -> base_pb2.Node:
    env = os.environ if environ is None else environ
    ip = env.get("INSTANCE_IP") or DEFAULT_INSTANCE_IP
    pod, namespace = env.get("POD_NAME", ""), env.get("POD_NAMESPACE", "")
    metadata = struct_pb2.Struct()
    metadata.update(
        {"NAME": pod, "NAMESPACE": namespace, "INSTANCE_IPS": ip, "NODE_NAME": env.get("NODE_NAME", "")}
    )
    metadata.update(dict(proxy_metadata or {}))
    metadata.update({k.removeprefix("ISTIO_META_"): v for k, v in env.items() if k.startswith("ISTIO_META_")})
    for key, value in env.items():
        if key.startswith("ISTIO_METAJSON_"):
            try:
                metadata.update({key.removeprefix("ISTIO_METAJSON_"): json.loads(value)})
            except ValueError:
                continue  # ztunnel ignores unparsable JSON metadata too
    return base_pb2.Node(id=str(NodeId.ztunnel(ip, pod, namespace)), metadata=metadata)
