"""Mesh identity: SPIFFE ids, workload certificates, the CA client and the certificate manager.

- :mod:`~meshkit.identity.spiffe`: :class:`Identity` (``spiffe://<td>/ns/<ns>/sa/<sa>``).
- :mod:`~meshkit.identity.certs`: :class:`WorkloadCertificate`, the record HBONE builds its TLS contexts from.
- :mod:`~meshkit.identity.csr` / :mod:`~meshkit.identity.pem`: CSRs, PEM chains, response validation.
- :mod:`~meshkit.identity.caclient`: :class:`CaClient` for istiod's CreateCertificate.
- :mod:`~meshkit.identity.manager`: :class:`CertificateManager`, one certificate per identity on the node.
- :mod:`~meshkit.identity.clock`: the injected clock (``ManualClock`` for fake-time tests).
"""

from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity, InvalidIdentity

__all__ = ["Identity", "InvalidIdentity", "WorkloadCertificate"]
