"""HBONE: mTLS HTTP/2 CONNECT tunnels, the mesh transport shared by ztunnel and the waypoint.

Spec: behaviour.md §2 (followed to the letter), anchors.md §3c (defaults), python-perf.md (I/O design).

Interfaces (stable; other components code against these):

``meshkit.hbone.tls``
    ``server_context(cert) -> ssl.SSLContext`` / ``client_context(cert) -> ssl.SSLContext``: TLS 1.3 only,
    suites TLS_AES_256_GCM_SHA384 + TLS_AES_128_GCM_SHA256, ALPN h2, peer chain verified against
    ``cert.roots_pem`` (client cert required), no hostname check, no SNI (asyncio: ``server_hostname=""``).
    ``peer_identity(sslobj) -> Identity`` (first SPIFFE URI SAN), ``verify_server_identity(sslobj, expected)``
    (raises :class:`IdentityError` unless one SAN is in ``expected``), ``verify_client_identity(sslobj,
    trust_domain)``, ``ContextCache``.

``meshkit.hbone.core.HboneCore`` (sans-IO, over h2 4.4.1 with DATA fast paths)
    ``HboneCore(client_side, settings)``; ``initiate()``, ``receive_data(bytes) -> [events]``,
    ``data_to_send() -> bytes``, ``connect(authority, headers) -> stream_id``, ``respond(sid, status,
    headers)``, ``send_window(sid)``, ``send_data(sid, data, end_stream)`` (within the window),
    ``send_some(sid, data) -> n`` (as much as the window allows), ``end_stream(sid)``, ``reset_stream(sid,
    code)``, ``acknowledge(sid, n)`` (consumed bytes reopen windows), ``ping``, ``close(code)`` (NO_ERROR is
    a graceful GOAWAY: open streams finish, new ones get REFUSED_STREAM). Events in ``meshkit.hbone.events``.
    Malformed requests and streams past SETTINGS_MAX_CONCURRENT_STREAMS are stream errors, never fatal.

``meshkit.hbone.connection.HboneConnection``
    The asyncio ``BufferedProtocol`` of one connection (works on asyncio and uvloop transports): ``streams``,
    ``usable``, ``peer_identity``, ``peer_address``, ``local_address``, ``open_stream``, ``respond``,
    ``goaway()`` (drain), ``close()``, ``abort()``, ``await wait_closed()``; PING keepalive 10 s / 20 s.

``meshkit.hbone.request``
    ``connect_headers(SourceMetadata, client_addr, service_host=, traceparent=, forwarded_network=)``,
    ``parse_authority``, ``parse_request -> ConnectRequest`` (``.authority``, ``.traceparent``,
    ``.forwarded_host``, ``.baggage``, ``.forwarded_network``), ``baggage`` / ``parse_baggage`` (encode and
    decode ``SourceMetadata``), ``forwarded``, ``new_traceparent``.

``meshkit.hbone.server.HboneServer(sock, certificate, handler, settings)``
    ``await start()``, ``stop_accepting()``, ``await close(grace_s)`` (graceful drain: GOAWAY, open streams
    finish, each connection closes with its last stream; what is left at ``grace_s`` is aborted).
    ``sock`` is a listening socket (from a SocketFactory);
    ``certificate()`` returns the current server ``WorkloadCertificate`` (rotation-aware), or ``None`` to
    refuse new connections while there is none (``handshake_failure`` alert, an info log line);
    ``handler(peer: InboundPeer, request: ConnectRequest) -> Reject(status) | Forward(connect,
    response_headers, on_done) | Accept(serve, response_headers)``. Malformed HTTP/2 requests
    (``:scheme``/``:path`` on CONNECT, ``:protocol``, an empty ``:authority``) → RST_STREAM(PROTOCOL_ERROR) as
    upstream's h2; a method other than CONNECT or a missing/unparsable authority → 400 before the handler;
    handler raising → 503; ``Forward.connect()`` failing or timing out → 503; else 200 and relay. A client
    that resets streams faster than they are handled (rapid reset) is dropped with GOAWAY(ENHANCE_YOUR_CALM).

``meshkit.hbone.pool.ConnectionPool(certificate, connector, settings)``
    ``await pool.connect(PoolKey.of(src_id, src_ip, dst_ids, (ip, 15008)), "ip:port", headers) ->
    HboneStream`` (after 200; raises ``ConnectFailed(status=...)`` / ``IdentityError``). ``certificate(
    identity) -> WorkloadCertificate`` is read per stream (a changed cert → new connection);
    ``connector(key) -> connected socket`` (ztunnel dials from the pod netns with mark 1337).

``meshkit.hbone.stream.HboneStream``
    ``await read(n)`` (b"" at END_STREAM), ``write(data)`` + ``await drain()`` / ``await send(data)``,
    ``write_eof()`` (half-close), ``abort(code)`` (RST_STREAM), ``await wait_closed()``, ``status``,
    ``request_headers`` / ``response_headers``, ``bytes_sent`` / ``bytes_received``.

``meshkit.hbone.relay``
    ``await relay(tcp_socket, stream) -> RelayResult(sent, received, error)``: fast, callback-driven copy both
    ways with half-close and RST propagation; ``relay_streams(reader, writer, stream)`` for asyncio streams.
    A stream sink (``HboneStream.set_sink``) gets memoryviews of a reused buffer: copy before handing them to
    anything that keeps them (uvloop's ``transport.write`` does).

``meshkit.hbone.double.connect_double(pool, outer_key, authority, inner_cert, inner_ids, inner_headers=...)``
    Double HBONE (behaviour.md §2.9): outer pooled CONNECT to the E/W gateway, then mTLS + CONNECT to the
    final identities inside it; returns the inner stream. ``StreamTransport``: TLS over an ``HboneStream``.

``meshkit.hbone.tuning.tune_malloc()``: call once in a service's ``main`` (python-perf.md §3a).

``meshkit.hbone.settings.HboneSettings`` (ztunnel defaults; env vars HTTP2_STREAM_WINDOW_SIZE, ...),
``meshkit.hbone.errors`` (HboneError > IdentityError, ConnectFailed(status), StreamReset(code, remote),
ConnectionClosed), ``meshkit.hbone.testing.TestCA`` (test certificates: ``issue(identity)``;
``sign_csr(csr_pem, uris)`` answers a CSR as istiod's CA does; ``save(dir)`` / ``TestCA.load(dir)`` hand it to
another process).
"""

from __future__ import annotations

from meshkit.hbone.errors import ConnectFailed, ConnectionClosed, HboneError, IdentityError, StreamReset
from meshkit.hbone.settings import HboneSettings

__all__ = [
    "ConnectFailed",
    "ConnectionClosed",
    "HboneError",
    "HboneSettings",
    "IdentityError",
    "StreamReset",
]
