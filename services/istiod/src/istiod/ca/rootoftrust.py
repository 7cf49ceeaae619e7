"""Where the CA's key material comes from (issue #4, wire-contracts.md §4.4).

In order of preference:
1. a plug-in CA mounted as files (``/etc/cacerts``, the ``cacerts`` Secret as the Helm chart mounts it);
2. the ``cacerts`` Secret in istiod's namespace (``ca-cert.pem``, ``ca-key.pem``, ``root-cert.pem``,
   ``cert-chain.pem``), read through the API;
3. the self-signed root in the ``istio-ca-secret`` Secret, created once and never regenerated while it
   exists. Two replicas starting together race to create it: the loser gets AlreadyExists and re-reads the
   winner's Secret, so both sign with the same root.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from istiod.ca.authority import KeyCertBundle, generate_self_signed_root
from istiod.ca.errors import RootOfTrustError
from meshkit.logs import kv

__all__ = [
    "CACERTS_SECRET",
    "SELF_SIGNED_SECRET",
    "AlreadyExists",
    "KubeSecretStore",
    "SecretStore",
    "bundle_from_directory",
    "load_root_of_trust",
]

log = logging.getLogger("ca.rootoftrust")

CACERTS_SECRET = "cacerts"
SELF_SIGNED_SECRET = "istio-ca-secret"
SELF_SIGNED_TYPE = "istio.io/ca-root"
CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT = "ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"


class AlreadyExists(Exception):
    """Creating a Secret that another writer created first."""


class SecretStore(Protocol):
    async def get(self, namespace: str, name: str) -> Mapping[str, bytes] | None: ...

    async def create(self, namespace: str, name: str, data: Mapping[str, bytes], secret_type: str) -> None:
        """Create the Secret; raise :class:`AlreadyExists` if it is there already."""
        ...


class KubeSecretStore:
    """:class:`SecretStore` over the ``kubernetes`` client (blocking calls run in worker threads)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._client = client
        self._api = client.CoreV1Api(api_client)

    def _get(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self._api.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def _create(self, namespace: str, name: str, data: Mapping[str, bytes], secret_type: str) -> None:
        from kubernetes.client.exceptions import ApiException

        body = self._client.V1Secret(
            metadata=self._client.V1ObjectMeta(name=name, namespace=namespace),
            type=secret_type,
            data={k: base64.b64encode(v).decode() for k, v in data.items()},
        )
        try:
            self._api.create_namespaced_secret(namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise AlreadyExists(f"secret {namespace}/{name} already exists") from None
            raise

    async def get(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return await asyncio.to_thread(self._get, namespace, name)

    async def create(self, namespace: str, name: str, data: Mapping[str, bytes], secret_type: str) -> None:
        await asyncio.to_thread(self._create, namespace, name, data, secret_type)


def _bundle(data: Mapping[str, bytes], source: str) -> KeyCertBundle:
    missing = [k for k in (CA_CERT, CA_KEY) if not data.get(k)]
    if missing:
        raise RootOfTrustError(f"{source} lacks {', '.join(missing)}")
    return KeyCertBundle.from_pem(
        data[CA_CERT], data[CA_KEY], data.get(CERT_CHAIN, b""), data.get(ROOT_CERT, b""), source=source
    )


def bundle_from_directory(path: Path) -> KeyCertBundle | None:
    """The plug-in CA from a mounted directory, or None when it holds no ``ca-key.pem``."""
    if not (path / CA_KEY).is_file():
        return None
    data = {
        name: (path / name).read_bytes()
        for name in (CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT)
        if (path / name).is_file()
    }
    return _bundle(data, f"directory {path}")


async def load_root_of_trust(
    store: SecretStore,
    namespace: str,
    *,
    trust_domain: str,
    rsa_key_size: int = 2048,
    self_signed_ttl: dt.timedelta = dt.timedelta(days=3650),
    cacerts_dir: Path | None = None,
) -> KeyCertBundle:
    """The CA bundle to sign with (see the module docstring for the order)."""
    if cacerts_dir is not None and (bundle := bundle_from_directory(cacerts_dir)) is not None:
        log.info("using the plug-in CA from files", extra=kv(dir=str(cacerts_dir)))
        return bundle
    plugged = await store.get(namespace, CACERTS_SECRET)
    if plugged:
        log.info("using the plug-in CA", extra=kv(secret=f"{namespace}/{CACERTS_SECRET}"))
        return _bundle(plugged, f"secret {namespace}/{CACERTS_SECRET}")
    source = f"secret {namespace}/{SELF_SIGNED_SECRET}"
    existing = await store.get(namespace, SELF_SIGNED_SECRET)
    if existing:
        log.info("using the existing self-signed root", extra=kv(secret=f"{namespace}/{SELF_SIGNED_SECRET}"))
        return _bundle(existing, source)
    cert_pem, key_pem = generate_self_signed_root(
        trust_domain, rsa_key_size=rsa_key_size, ttl=self_signed_ttl
    )
    data = {CA_CERT: cert_pem, CA_KEY: key_pem, CERT_CHAIN: b"", ROOT_CERT: b""}
    try:
        await store.create(namespace, SELF_SIGNED_SECRET, data, SELF_SIGNED_TYPE)
    except AlreadyExists:
        # Another replica won the race: sign with its root, never with ours.
        winner = await store.get(namespace, SELF_SIGNED_SECRET)
        if not winner:
            raise RootOfTrustError(f"{source} was reported to exist but cannot be read") from None
        log.info(
            "another replica created the self-signed root; using it", extra=kv(secret=SELF_SIGNED_SECRET)
        )
        return _bundle(winner, source)
    log.info("created a self-signed root", extra=kv(secret=f"{namespace}/{SELF_SIGNED_SECRET}"))
    return _bundle(data, source)
