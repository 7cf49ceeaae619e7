"""Fetches remote JWKS (``jwksUri``) for RequestAuthentication providers, and keeps them fresh.

Every new config snapshot is scanned for providers with a ``jwks_uri`` and no inline keys; a cached document
is installed at once, otherwise it is fetched (plain HTTP GET, ``timeout_s``). Documents are refreshed every
``refresh_s`` (Envoy's remote JWKS cache duration is minutes, too). Until a document arrives, tokens from that
issuer are rejected with 401 (``Jwks remote fetch is failed``), as upstream does.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from meshkit.drain import TaskOwner
from meshkit.logs import kv

from waypoint.jwtauth import JwtProvider
from waypoint.records import Snapshot

__all__ = ["JwksFetcher"]

log = logging.getLogger("waypoint.jwks")


def _providers(snap: Snapshot) -> list[JwtProvider]:
    return [*snap.jwt.providers, *(p for svc in snap.services for p in svc.jwt.providers)]


class JwksFetcher:
    def __init__(self, owner: TaskOwner, *, timeout_s: float = 5.0, refresh_s: float = 1200.0) -> None:
        self._owner = owner
        self._timeout = timeout_s
        self._refresh = refresh_s
        self.documents: dict[str, str] = {}
        self._current = Snapshot()
        self._fetched: dict[str, asyncio.Event] = {}
        self._session: aiohttp.ClientSession | None = None

    def attach(self, snap: Snapshot) -> None:
        """Install known documents into ``snap``'s providers and fetch the missing ones."""
        self._current = snap
        for provider in _providers(snap):
            uri = provider.jwks_uri
            if provider.keys is not None or not uri:
                continue
            if uri in self.documents:
                provider.set_jwks(self.documents[uri])
            elif uri not in self._fetched:
                self._fetched[uri] = asyncio.Event()
                self._owner.spawn(self._keep_fresh(uri), name=f"jwks {uri}")

    async def wait_fetched(self, uri: str) -> None:
        await self._fetched.setdefault(uri, asyncio.Event()).wait()

    async def _keep_fresh(self, uri: str) -> None:
        delay = 1.0
        while True:
            text = await self._fetch(uri)
            if text is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            delay = 1.0
            self.documents[uri] = text
            for provider in _providers(self._current):
                if provider.jwks_uri == uri:
                    provider.set_jwks(text)
            self._fetched[uri].set()
            await asyncio.sleep(self._refresh)

    async def _fetch(self, uri: str) -> str | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        try:
            async with self._session.get(uri) as resp:
                resp.raise_for_status()
                return await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("JWKS fetch failed", extra=kv(uri=uri, error=str(exc) or type(exc).__name__))
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
