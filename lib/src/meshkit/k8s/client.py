"""A small synchronous JSON client over the ``kubernetes`` package's configured HTTP pool.

Why the synchronous ``kubernetes`` client in threads rather than ``kubernetes_asyncio``: it is already a
locked dependency, its configuration loaders (kubeconfig, in-cluster token refresh) are the reference
ones, and the informer needs only a handful of raw JSON calls. Each informer's blocking list+watch loop
runs in its own thread and hands results to the event loop (see :mod:`meshkit.k8s.informer`).

Errors are mapped at this boundary into one hierarchy: :class:`ApiError` (HTTP status from the API server),
with :class:`Gone` for 410 (the watch's resourceVersion is too old: relist), :class:`NotFound` and
:class:`Conflict` (optimistic concurrency lost: re-read and retry).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes
import urllib3

from meshkit.k8s.resources import Obj, Resource

__all__ = ["ApiError", "Conflict", "Gone", "KubeClient", "NotFound", "WatchStream"]

#: One connection per open watch plus headroom for lists and writes (urllib3's default of 10 is too few for
#: istiod's dozen informers).
POOL_SIZE = 32


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"kubernetes API error {status} {reason}: {message}".rstrip(": "))
        self.status = status
        self.reason = reason


class Gone(ApiError):
    """410: the requested resourceVersion is no longer available; the caller must relist."""


class NotFound(ApiError):
    """404."""


class Conflict(ApiError):
    """409: someone else wrote the object first (or it already exists)."""


def _error(status: int, body: bytes) -> ApiError:
    try:
        decoded = json.loads(body)
        reason, message = str(decoded.get("reason", "")), str(decoded.get("message", ""))
    except (ValueError, AttributeError):
        reason, message = "", body[:200].decode(errors="replace")
    cls = {410: Gone, 404: NotFound, 409: Conflict}.get(status, ApiError)
    return cls(status, reason, message)


class WatchStream:
    """One open watch response: iterate decoded events; :meth:`close` unblocks a reader in another thread."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Obj]:
        buffer = b""
        for chunk in self._response.stream(65536, decode_content=True):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
            if self._closed.is_set():
                return

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):  # fails harmlessly once the body was fully read
            self._response.shutdown()  # unblocks a read in progress in the watch thread
        self._response.release_conn()


class KubeClient:
    """Raw JSON calls against the API server. Thread-safe (one urllib3 pool shared by all threads)."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api = api_client

    @classmethod
    def from_config(cls, kubeconfig: str = "", context: str | None = None) -> KubeClient:
        """In-cluster config when ``kubeconfig`` is empty and we run in a pod, else the kubeconfig file."""
        configuration = kubernetes.client.Configuration()
        configuration.connection_pool_maxsize = POOL_SIZE
        if not kubeconfig:
            try:
                kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                return cls(kubernetes.client.ApiClient(configuration))
            except kubernetes.config.ConfigException:
                pass
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig or None, context=context, client_configuration=configuration
        )
        return cls(kubernetes.client.ApiClient(configuration))

    @classmethod
    def for_host(cls, host: str) -> KubeClient:
        """An unauthenticated client for ``host`` (tests against a fake API server)."""
        configuration = kubernetes.client.Configuration(host=host)
        configuration.connection_pool_maxsize = POOL_SIZE
        return cls(kubernetes.client.ApiClient(configuration))

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | tuple[float, float] | None = 30.0,
        content_type: str = "application/json",
    ) -> urllib3.BaseHTTPResponse:
        params = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in (query or {}).items() if v]
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method_, url, headers_, body_, _post = self.api.param_serialize(
            method, path, query_params=params, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self.api.rest_client.request(  # type: ignore[no-untyped-call]
            method_, url, headers=headers_, body=body_, _request_timeout=timeout
        ).response
        if not 200 <= response.status <= 299:
            data = response.read()
            response.release_conn()
            raise _error(response.status, data)
        return response  # type: ignore[no-any-return]

    def _json(self, method: str, path: str, **kwargs: Any) -> Obj:
        response = self._call(method, path, **kwargs)
        try:
            return json.loads(response.read())  # type: ignore[no-any-return]
        finally:
            response.release_conn()

    def get(self, resource: Resource, name: str, namespace: str | None = None) -> Obj:
        return self._json("GET", resource.path(namespace, name))

    def list_page(self, resource: Resource, namespace: str | None = None, **query: Any) -> Obj:
        """One page of a list (``limit``/``continue``, ``labelSelector``, ``fieldSelector`` pass through)."""
        return self._json("GET", resource.path(namespace), query=query)

    def list_all(
        self, resource: Resource, namespace: str | None = None, **query: Any
    ) -> tuple[list[Obj], str]:
        """Every item (paginated 500 at a time) and the list's resourceVersion."""
        items: list[Obj] = []
        token = ""
        while True:
            page = self.list_page(resource, namespace, limit=500, **{"continue": token}, **query)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items, str((page.get("metadata") or {}).get("resourceVersion", ""))

    def watch(
        self,
        resource: Resource,
        resource_version: str,
        namespace: str | None = None,
        timeout_s: int = 300,
        **query: Any,
    ) -> WatchStream:
        """Open a watch from ``resource_version`` with bookmarks; the server ends it after ``timeout_s``."""
        query = dict(
            query,
            watch=True,
            resourceVersion=resource_version,
            allowWatchBookmarks=True,
            timeoutSeconds=timeout_s,
        )
        response = self._call("GET", resource.path(namespace), query=query, timeout=(10.0, timeout_s + 30.0))
        return WatchStream(response)

    def create(self, resource: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        return self._json("POST", resource.path(namespace), body=obj)

    def replace(self, resource: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        name = obj["metadata"]["name"]
        return self._json("PUT", resource.path(namespace, name), body=obj)

    def patch_status(self, resource: Resource, name: str, patch: Obj, namespace: str | None = None) -> Obj:
        """A JSON merge patch of the ``status`` subresource."""
        return self._json(
            "PATCH",
            resource.path(namespace, name) + "/status",
            body=patch,
            content_type="application/merge-patch+json",
        )

    def replace_status(self, resource: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        """PUT the ``status`` subresource (with ``metadata.resourceVersion``: a stale write gets Conflict)."""
        return self._json("PUT", resource.path(namespace, obj["metadata"]["name"]) + "/status", body=obj)

    def delete(
        self, resource: Resource, name: str, namespace: str | None = None, grace_period_s: int | None = None
    ) -> Obj:
        """Delete; ``grace_period_s=0`` removes a pod at once (no kubelet confirmation)."""
        query = {} if grace_period_s is None else {"gracePeriodSeconds": str(grace_period_s)}
        return self._json("DELETE", resource.path(namespace, name), query=query)
