"""Build every CA part from settings: the one call istiod's composition root makes.

Wiring (in ``istiod.app``)::

    ca = await build_ca(load(CaSettings), api_client, registry=registry, pod_lookup=pod_informer)
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(ca.servicer, grpc_server)  # same server as xDS
    grpc_server.add_secure_port("[::]:15012", ca.serving.credentials())
    owner.spawn(ca.publisher.run(ca.configmaps.watch()), name="root-cert-publisher")
    owner.spawn(ca.reloader.run(), name="cacerts-reload")  # picks up a rotated plug-in CA
    # xDS can authenticate its callers with the same ca.authenticator.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from istiod.ca.authority import CertificateAuthority, KeyCertBundle
from istiod.ca.metrics import CaMetrics
from istiod.ca.nodeauth import KubePodLookup, NodeAuthorizer, PodLookup
from istiod.ca.reload import RootOfTrustReloader
from istiod.ca.rootcert import KubeConfigMapStore, RootCertPublisher
from istiod.ca.rootoftrust import KubeSecretStore, SecretStore, load_root_of_trust
from istiod.ca.service import CertificateServicer
from istiod.ca.serving import RotatingServerCredentials, istiod_dns_names
from istiod.ca.settings import CaSettings
from istiod.security.authn import KubeJwtAuthenticator, KubeTokenReviewer, TokenReviewer
from prometheus_client import CollectorRegistry

__all__ = ["CaComponents", "build_ca"]


@dataclass(frozen=True, slots=True)
class CaComponents:
    ca: CertificateAuthority
    authenticator: KubeJwtAuthenticator
    node_authorizer: NodeAuthorizer
    servicer: CertificateServicer
    configmaps: KubeConfigMapStore
    publisher: RootCertPublisher
    serving: RotatingServerCredentials
    reloader: RootOfTrustReloader
    metrics: CaMetrics


async def build_ca(
    settings: CaSettings,
    api_client: Any,
    *,
    registry: CollectorRegistry,
    pod_lookup: PodLookup | None = None,
    token_reviewer: TokenReviewer | None = None,
    secret_store: SecretStore | None = None,
) -> CaComponents:
    store = secret_store or KubeSecretStore(api_client)

    async def load() -> KeyCertBundle:
        return await load_root_of_trust(
            store,
            settings.namespace,
            trust_domain=settings.trust_domain,
            rsa_key_size=settings.self_signed_rsa_key_size,
            self_signed_ttl=dt.timedelta(seconds=settings.self_signed_ttl),
            cacerts_dir=Path(settings.cacerts_dir) if settings.cacerts_dir else None,
        )

    bundle = await load()
    ca = CertificateAuthority(
        bundle, default_ttl_s=int(settings.default_cert_ttl), max_ttl_s=int(settings.max_cert_ttl)
    )
    metrics = CaMetrics(registry)
    metrics.root_expiry.set(min(r.not_valid_after_utc for r in bundle.roots).timestamp())
    metrics.chain_expiry.set(bundle.signing_cert.not_valid_after_utc.timestamp())
    authn = KubeJwtAuthenticator(
        token_reviewer or KubeTokenReviewer(api_client),
        audiences=settings.token_audiences,
        cluster_id=settings.cluster_id,
        trust_domain=settings.trust_domain,
        cache_ttl_s=settings.token_review_cache_ttl,
    )
    nodes = NodeAuthorizer(
        settings.trusted_node_accounts,
        pod_lookup or KubePodLookup(api_client),
        trust_domains=[settings.trust_domain, *settings.trust_domain_aliases],
    )
    configmaps = KubeConfigMapStore(api_client, settings.root_configmap)
    names = istiod_dns_names(settings.namespace, settings.revision, settings.custom_hosts)
    publisher = RootCertPublisher(configmaps, ca.roots_pem, settings.root_configmap)
    reloader = RootOfTrustReloader(ca, load)
    reloader.add_listener(lambda b: publisher.set_root(b.roots_pem))
    reloader.add_listener(lambda _b: publisher.reconcile_all())
    return CaComponents(
        ca=ca,
        authenticator=authn,
        node_authorizer=nodes,
        servicer=CertificateServicer(ca, authn, nodes, metrics),
        configmaps=configmaps,
        publisher=publisher,
        serving=RotatingServerCredentials(ca, names),
        reloader=reloader,
        metrics=metrics,
    )
