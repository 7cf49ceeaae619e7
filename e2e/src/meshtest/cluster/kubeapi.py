"""Minimal Kubernetes REST clients used by the cluster harness and the node agent.

Raw JSON over HTTPS with client certificates: the node agent needs only get/list/watch/create/patch/delete
on a
few resources, and owning the client keeps its retry and watch semantics obvious. :class:`SyncKube` serves the
``up``/``status`` CLI; :class:`AsyncKube` (aiohttp) serves the agent's event loop.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

Obj = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        try:
            message = str(json.loads(body).get("message", body))
        except ValueError:
            message = body[:300]
        super().__init__(f"API error {status}: {message}")
        self.status = status


def ssl_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class SyncKube:
    def __init__(self, server: str, ctx: ssl.SSLContext) -> None:
        self.server = server.rstrip("/")
        self.ctx = ctx

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        timeout: float = 10.0,
        content_type: str = "application/json",
    ) -> Obj:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read().decode(errors="replace")) from None
        return json.loads(raw) if raw.strip().startswith(b"{") else {"raw": raw.decode(errors="replace")}

    def get(self, path: str) -> Obj:
        return self.request("GET", path)

    def create(self, path: str, body: Obj) -> Obj:
        """POST; an existing object (409) is not an error here."""
        try:
            return self.request("POST", path, body)
        except ApiError as err:
            if err.status != 409:
                raise
            return {}


class AsyncKube:
    def __init__(self, server: str, ctx: ssl.SSLContext) -> None:
        self.server = server.rstrip("/")
        self.ctx = ctx
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ctx, limit=20))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> Obj:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        timeout = aiohttp.ClientTimeout(total=30)
        async with self.session.request(
            method, self.server + path, data=data, headers=headers, params=params, timeout=timeout
        ) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise ApiError(resp.status, raw.decode(errors="replace"))
        return json.loads(raw) if raw else {}

    async def get(self, path: str) -> Obj:
        return await self.request("GET", path)

    async def patch(self, path: str, body: Obj, *, kind: str = "merge") -> Obj:
        ctype = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
        }[kind]
        return await self.request("PATCH", path, body, content_type=ctype)

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[Obj]:
        """List, then watch from the list's resourceVersion. Yields a synthetic ADDED per listed object, one
        SYNCED event (``object.items`` = the list), then the stream; returns when the server ends the watch
        (callers loop and relist)."""
        listing = await self.request("GET", path, params=params)
        for item in listing.get("items", []):
            yield {"type": "ADDED", "object": item}
        # marks the end of the list: everything not listed is gone (a DELETED may have been missed)
        yield {"type": "SYNCED", "object": {"items": listing.get("items", [])}}
        query = dict(
            params,
            watch="1",
            resourceVersion=listing["metadata"]["resourceVersion"],
            allowWatchBookmarks="true",
            timeoutSeconds="300",
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_read=330)
        async with self.session.get(self.server + path, params=query, timeout=timeout) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, (await resp.read()).decode(errors="replace"))
            async for line in resp.content:
                if line.strip():
                    event: Obj = json.loads(line)
                    if event.get("type") == "ERROR":
                        return
                    yield event


async def retrying(coro_fn: Any, attempts: int = 5, delay: float = 0.5, max_delay: float = 30.0) -> Any:
    """Retry a coroutine factory on connection errors and 5xx (the API server may be starting), with
    exponential back-off from ``delay`` capped at ``max_delay``."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            return await coro_fn()
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            last = err
        except ApiError as err:
            if err.status < 500 and err.status != 429:
                raise
            last = err
        await asyncio.sleep(min(delay * (2**attempt), max_delay))
    assert last is not None
    raise last
