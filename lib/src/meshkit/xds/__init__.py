"""Delta xDS for the mesh: the ztunnel-side client (core + asyncio shell) and the server-side stream core.

For the ztunnel engineer — the client interface:

* implement :class:`~meshkit.xds.client_core.Updater`: ``apply(type_url, upserts, removes) -> list[Rejected]``
  where ``upserts`` is ``[(resource_name, decoded_message)]`` (``workload_pb2.Address`` for
  :data:`~meshkit.xds.types.ADDRESS_TYPE`, ``authorization_pb2.Authorization`` for
  :data:`~meshkit.xds.types.AUTHORIZATION_TYPE`) and ``removes`` is ``[resource_name]`` (a Workload uid, a
  ``namespace/hostname`` Service key, or an Authorization ``namespace/name``). Apply every good item, return a
  :class:`~meshkit.xds.client_core.Rejected` ``(name, reason)`` for each bad one (e.g. an address that is not
  4 or 16 bytes, ``LEGACY_ISTIO_MTLS``, an Address with no oneof); never raise for a bad resource. The core
  NACKs with ``"<name>: <reason>; ..."`` and leaves rejected names out of the versions it resumes with.
* build the node with :func:`meshkit.xds.node.node_from_env` (wire-contracts.md §3.3), then::

      core = ClientCore(node_from_env(), updater)
      client = XdsClient(XdsClientConfig(address="istiod.istio-system.svc:15012", root_cert_pem=root,
                                         token="/var/run/secrets/tokens/istio-token"), core)
      owner.spawn(client.run(), name="xds")
      await client.synced.wait()          # readiness: every wildcard type answered once

The client subscribes Address (wildcard) then Authorization, reconnects with back-off, resumes with
``initial_resource_versions`` and never clears the stores while istiod is away.
"""
