"""The node agent's end of the plugin socket: HTTP over ``<run dir>/pluginevent.sock`` (behaviour.md §3.1).

``POST /cmdadd`` carries one :class:`PluginAddEvent`. The handler enrols the pod before answering, so the
runtime does not start the pod's containers until its netns is redirected. Answers: 200 with
``{"enrolled": bool, "reason": str}``; 500 with the error text when enrolment failed (the plugin then fails
the ADD and the runtime retries the sandbox).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from meshkit.logs import kv

from istio_cni.metrics import CniMetrics

log = logging.getLogger("cni.events")


@dataclass(frozen=True, slots=True)
class PluginAddEvent:
    pod_name: str
    pod_namespace: str
    pod_uid: str
    netns: str
    container_id: str
    ifname: str
    ips: tuple[str, ...]

    @classmethod
    def from_json(cls, body: dict[str, object]) -> PluginAddEvent:
        ips = body.get("ips") or []
        return cls(
            pod_name=str(body["pod_name"]),
            pod_namespace=str(body["pod_namespace"]),
            pod_uid=str(body.get("pod_uid") or ""),
            netns=str(body["netns"]),
            container_id=str(body.get("container_id") or ""),
            ifname=str(body.get("ifname") or ""),
            ips=tuple(str(ip) for ip in ips) if isinstance(ips, list) else (),
        )


@dataclass(frozen=True, slots=True)
class AddOutcome:
    enrolled: bool
    reason: str = ""


AddHandler = Callable[[PluginAddEvent], Awaitable[AddOutcome]]


class PluginEventServer:
    """Serves ``/cmdadd`` on a unix socket; one request at a time per pod is the plugin's own behaviour."""

    def __init__(self, path: str, handler: AddHandler, metrics: CniMetrics | None = None) -> None:
        self.path = path
        self._handler = handler
        self._metrics = metrics
        self._runner: web.AppRunner | None = None

    async def _cmdadd(self, request: web.Request) -> web.Response:
        try:
            event = PluginAddEvent.from_json(await request.json())
        except (ValueError, KeyError, TypeError) as exc:
            return web.Response(status=400, text=f"bad plugin event: {exc}")
        try:
            outcome = await self._handler(event)
        except Exception as exc:
            self._count("error")
            log.warning(
                "pod add from CNI plugin failed",
                extra=kv(pod=f"{event.pod_namespace}/{event.pod_name}", error=str(exc)),
            )
            return web.Response(status=500, text=str(exc))
        self._count("enrolled" if outcome.enrolled else "skipped")
        return web.Response(text=json.dumps({"enrolled": outcome.enrolled, "reason": outcome.reason}))

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.plugin_events.labels(result=result).inc()

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket from a previous agent
        app = web.Application()
        app.router.add_post("/cmdadd", self._cmdadd)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, self.path).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
