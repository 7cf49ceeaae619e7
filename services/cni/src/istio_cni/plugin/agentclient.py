"""HTTP/1.1 over a unix socket from the plugin to the node agent (``pluginevent.sock``); stdlib only."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

PLUGIN_EVENT_SOCKET = "pluginevent.sock"
ADD_PATH = "/cmdadd"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentUnavailable(Exception):
    """The node agent could not be reached or refused the pod (message is for the runtime log)."""


def post_add(socket_path: str, event: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    """POST the ADD event; returns the agent's JSON answer or raises :class:`AgentUnavailable`."""
    conn = _UnixConnection(socket_path, timeout_s)
    try:
        conn.request("POST", ADD_PATH, json.dumps(event), {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        raise AgentUnavailable(f"cannot reach the istio-cni node agent at {socket_path}: {exc}") from exc
    finally:
        conn.close()
    if response.status != 200:
        raise AgentUnavailable(
            f"istio-cni node agent refused the pod: HTTP {response.status}: {body.decode()}"
        )
    try:
        answer = json.loads(body or b"{}")
    except ValueError as exc:
        raise AgentUnavailable(
            f"istio-cni node agent answered with something other than JSON: {exc}"
        ) from exc
    if not isinstance(answer, dict):
        raise AgentUnavailable(f"istio-cni node agent answered {answer!r}, not a JSON object")
    return answer
