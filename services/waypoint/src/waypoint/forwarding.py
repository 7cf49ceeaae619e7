"""Forwarding a routed request to its cluster: admission, endpoint choice, retries, timeouts, mirroring.

:class:`Forwarder` owns the upstream side of the waypoint: the :class:`~waypoint.routing.Balancer` (LB state,
outlier detection), the keep-alive HTTP/1.1 tunnels (:class:`~waypoint.upstream.UpstreamPool`), the
multiplexed h2c connections (:class:`~waypoint.h2c.H2UpstreamPool`) and the per-cluster connectionPool
limits. :meth:`Forwarder.forward` never raises: every failure becomes a local reply and an
:class:`Outcome` (response flags and details for the access log), as Envoy's router does:

* no endpoint: 503 ``no healthy upstream`` (UH); connectionPool overflow: 503 (UO);
* connect failure / reset before a response: 503 with the reset reason (UF / UC), retried per policy;
* route timeout or per-try timeout: 504 ``upstream request timeout`` (UT);
* retries: Istio's default policy unless the route has one; never the same endpoint twice while another
  is left (``previous_hosts``); jittered exponential back-off from 25 ms; a stale keep-alive tunnel is
  retried once on a fresh one without counting as a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

from meshkit.drain import TaskOwner
from meshkit.hbone.errors import HboneError

from waypoint import records as rec
from waypoint.h2c import H2UpstreamPool
from waypoint.http1 import BadMessage, Request, Response, ResponseParser, serialize_request, simple_response
from waypoint.routing import Balancer, endpoint_key
from waypoint.upstream import StreamOpener, UpstreamError, UpstreamPool

__all__ = ["DEFAULT_RETRY", "Forwarder", "Outcome"]


@dataclass(slots=True)
class Outcome:
    """What happened to one request, for telemetry."""

    flags: str = "-"
    details: str = "via_upstream"
    route: str = ""
    cluster: rec.Cluster | None = None
    endpoint: rec.Endpoint | None = None
    attempts: int = 0
    error: str = ""
    extra: dict[str, str] = field(default_factory=dict)


#: Istio's default route retry policy (applied when a route has none): 2 retries on connect failure,
#: refused stream, gRPC unavailable/cancelled, or 503; never the same host twice (previous_hosts).
DEFAULT_RETRY = rec.RetryPolicy(
    attempts=2,
    retry_on=frozenset(
        {"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}
    ),
    retriable_status_codes=frozenset({503}),
)


class Forwarder:
    """The upstream half of the proxy (see the module docstring)."""

    def __init__(self, opener: StreamOpener, rng: random.Random, owner: TaskOwner) -> None:
        self.rng = rng
        self._open = opener
        self.balancer = Balancer(rng)
        self.upstreams = UpstreamPool(opener)
        self._owner = owner
        self.h2_upstreams = H2UpstreamPool(opener, lambda coro: owner.spawn(coro, name="h2c-upstream"))
        self.limits: dict[str, _Limiter] = {}

    async def forward(
        self, route: rec.Route, cluster: rec.Cluster, req: Request, source_ip: str, out: Outcome
    ) -> Response:
        """Admission (connectionPool), route timeout, attempts with retries; always returns a response."""
        if cluster.max_connections:
            if not await self._admit(cluster):
                out.flags, out.details = "UO", "upstream_overflow"
                return simple_response(
                    503, "upstream connect error or disconnect/reset before headers. reset reason: overflow"
                )
            try:
                return await self._forward_admitted(route, cluster, req, source_ip, out)
            finally:
                self.limits[cluster.name].release()
        return await self._forward_admitted(route, cluster, req, source_ip, out)

    async def _forward_admitted(
        self, route: rec.Route, cluster: rec.Cluster, req: Request, source_ip: str, out: Outcome
    ) -> Response:
        policy = route.retries if route.retries is not None else DEFAULT_RETRY
        try:
            if route.timeout_s > 0:
                async with asyncio.timeout(route.timeout_s):
                    return await self._attempts(policy, cluster, req, source_ip, out)
            return await self._attempts(policy, cluster, req, source_ip, out)
        except TimeoutError:
            out.flags, out.details = "UT", "upstream_response_timeout"
            return simple_response(504, "upstream request timeout")

    async def _admit(self, cluster: rec.Cluster) -> bool:
        """connectionPool: wait for a free connection slot, or refuse when the pending queue is full."""
        limiter = self.limits.get(cluster.name)
        if limiter is None:
            limiter = self.limits[cluster.name] = _Limiter()
        return await limiter.acquire(cluster.max_connections, cluster.max_pending_requests)

    async def _attempts(
        self, policy: rec.RetryPolicy, cluster: rec.Cluster, req: Request, source_ip: str, out: Outcome
    ) -> Response:
        data = b"" if req.http2 else serialize_request(req)
        tried: set[str] = set()
        resp: Response | None = None
        for attempt in range(policy.attempts + 1):
            ep = self.balancer.pick(cluster, req, source_ip, tried)
            if ep is None:
                out.flags, out.details = "UH", "no_healthy_upstream"
                return simple_response(503, "no healthy upstream")
            tried.add(endpoint_key(ep))
            out.endpoint, out.attempts = ep, attempt + 1
            try:
                resp = await self._try(policy, cluster, ep, req, data)
            except UpstreamError as exc:
                self.balancer.outcome(cluster, ep, 0)
                out.flags, out.error = exc.flag, exc.detail
                if exc.kind == "timeout":
                    out.details = "upstream_per_try_timeout"
                    resp = simple_response(504, "upstream request timeout")
                else:
                    out.details = "upstream_reset_before_response_started{" + exc.kind + "}"
                    resp = simple_response(
                        503,
                        "upstream connect error or disconnect/reset before headers. "
                        f"reset reason: {exc.kind}",
                    )
                if not _retriable_error(policy, exc) or attempt == policy.attempts:
                    return resp
            else:
                self.balancer.outcome(cluster, ep, resp.status)
                out.flags, out.details, out.error = "-", "via_upstream", ""
                if not _retriable_status(policy, resp.status) or attempt == policy.attempts:
                    return resp
                out.flags = "URX" if attempt + 1 == policy.attempts else "-"
            await asyncio.sleep(self.rng.uniform(0, 0.025 * (2**attempt)))  # Envoy's jittered backoff
        assert resp is not None
        return resp

    async def _try(
        self, policy: rec.RetryPolicy, cluster: rec.Cluster, ep: rec.Endpoint, req: Request, data: bytes
    ) -> Response:
        head = req.method == "HEAD"
        self.balancer.started(cluster.name, ep)
        try:
            for fresh_retry in (False, True):
                try:
                    if policy.per_try_timeout_s > 0:
                        async with asyncio.timeout(policy.per_try_timeout_s):
                            return await self._exchange(cluster, ep, req, data, head)
                    return await self._exchange(cluster, ep, req, data, head)
                except UpstreamError as exc:
                    # A stale keep-alive tunnel the backend closed: retry once on a fresh one.
                    if not (exc.reused and exc.kind == "reset") or fresh_retry:
                        raise
                except TimeoutError:
                    raise UpstreamError("timeout", "per-try timeout") from None
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self.balancer.finished(cluster.name, ep)

    async def _exchange(
        self, cluster: rec.Cluster, ep: rec.Endpoint, req: Request, data: bytes, head: bool
    ) -> Response:
        if req.http2 and cluster.tls is None:
            return await self.h2_upstreams.request(ep.address, ep.port, req)
        if req.http2:  # TLS origination is HTTP/1.1 only
            data, req.http2 = serialize_request(req), False
        return await self.upstreams.exchange(
            ep.address,
            ep.port,
            data,
            head=head,
            tls=cluster.tls,
            sni=cluster.tls_sni,
            max_requests=cluster.max_requests_per_connection,
        )

    def mirror(self, snap: rec.Snapshot, name: str, percent: float, req: Request, source_ip: str) -> None:
        """A fire-and-forget copy of ``req`` to ``name`` (``percent`` of requests), Host ``<host>-shadow``."""
        cluster = snap.clusters.get(name)
        if cluster is None or self.rng.random() * 100 >= (percent or 100):
            return
        ep = self.balancer.pick(cluster, req, source_ip)
        if ep is None:
            return
        shadow = Request(req.method, req.path, req.query, list(req.headers), req.body)
        shadow.set_header("host", f"{req.authority.rsplit(':', 1)[0]}-shadow")
        data = serialize_request(shadow)

        async def send() -> None:
            with contextlib.suppress(UpstreamError, TimeoutError):
                async with asyncio.timeout(5.0):
                    await self.upstreams.exchange(ep.address, ep.port, data)

        self._owner.spawn(send(), name="mirror")

    async def upgrade(self, cluster: rec.Cluster, req: Request, source_ip: str, out: Outcome) -> Response:
        """An HTTP/1.1 Upgrade (WebSocket): a dedicated tunnel, no retries; a 101 carries the tunnel along."""
        ep = self.balancer.pick(cluster, req, source_ip)
        if ep is None:
            out.flags, out.details = "UH", "no_healthy_upstream"
            return simple_response(503, "no healthy upstream")
        out.endpoint, out.attempts = ep, 1
        try:
            stream = await self._open(ep.address, ep.port)
        except Exception as exc:
            out.flags, out.error = "UF", str(exc)
            return simple_response(503, "upstream connect error or disconnect/reset before headers")
        parser = ResponseParser()
        done: list[Response] = []
        try:
            stream.write(serialize_request(req))
            while not done and (data := await stream.read()):
                done = parser.feed(data)
        except (HboneError, BadMessage) as exc:
            out.error = str(exc)
        if not done:
            stream.abort()
            out.flags, out.error = "UC", out.error or "upstream closed before answering the upgrade"
            return simple_response(503, "upstream connect error or disconnect/reset before headers")
        resp = done[0]
        if resp.status == 101:
            resp.upgraded = (stream, parser.leftover)
        else:
            stream.abort()
        return resp

    def config_changed(self, snap: rec.Snapshot) -> None:
        """A new config: drop idle upstream tunnels to endpoints it no longer has."""
        keep = {e.address for c in snap.clusters.values() for e in c.endpoints}
        keep.update(s.workload.address for s in snap.services if s.workload is not None)
        self.upstreams.prune(keep)

    def close(self) -> None:
        self.upstreams.close()
        self.h2_upstreams.close()


class _Limiter:
    """In-flight requests of one cluster (connectionPool maxConnections) with a bounded wait queue."""

    def __init__(self) -> None:
        self.active = 0
        self.waiters: list[asyncio.Future[None]] = []
        self.queued = asyncio.Event()  # set whenever a request starts waiting (observability, tests)

    async def acquire(self, limit: int, max_pending: int) -> bool:
        if self.active < limit and not self.waiters:
            self.active += 1
            return True
        if max_pending and len(self.waiters) >= max_pending:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.queued.set()
        try:
            await waiter  # release() hands its slot over: active is unchanged
        except asyncio.CancelledError:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled
            raise
        return True

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1


def _retriable_error(policy: rec.RetryPolicy, exc: UpstreamError) -> bool:
    on = policy.retry_on
    if "5xx" in on or "gateway-error" in on:
        return True
    if exc.kind == "connect-failure":
        return "connect-failure" in on or "reset" in on
    if exc.kind == "reset":
        return "reset" in on
    return False


def _retriable_status(policy: rec.RetryPolicy, status: int) -> bool:
    on = policy.retry_on
    if "5xx" in on and status >= 500:
        return True
    if "gateway-error" in on and status in (502, 503, 504):
        return True
    return "retriable-status-codes" in on and status in policy.retriable_status_codes
