"""ztunnel: the per-node L4 proxy of the ambient mesh (in-pod capture, HBONE, L4 authorization, DNS proxy).

Subsystems, as upstream: ``state/`` (workload, service and policy stores behind one updater), ``proxy/``
(outbound 15001, inbound HBONE 15008, inbound plaintext 15006), ``inpod/`` (the ZDS client and the per-pod
listener sets), ``dns/`` (the per-pod DNS proxy on 15053), ``rbac`` (L4 authorization), ``admin``,
``metrics``, and ``app`` (the composition root with ``build(settings)``).
"""
