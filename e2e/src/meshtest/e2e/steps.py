"""Steps the scenarios share: deploy and wait, wait for enrolment, wait for a traffic outcome, background
load. Every wait is on an observed state with a bounded timeout (no fixed sleeps)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshtest.e2e.traffic import PodRef, failed, forward
from meshtest.echo import EchoResponse
from meshtest.kube import KubeCluster

Obj = dict[str, Any]
REDIRECTION = "ambient.istio.io/redirection"


def deploy(
    kube: KubeCluster,
    namespace: str,
    objects: Sequence[Obj],
    selector: str | None = None,
    *,
    count: int = 1,
    timeout: float = 120,
) -> list[PodRef]:
    kube.apply(list(objects), namespace)
    if selector is None:
        return []
    return [PodRef.of(p) for p in kube.ready_pods(namespace, selector, count, timeout)]


def pod(kube: KubeCluster, namespace: str, selector: str, timeout: float = 60) -> PodRef:
    """The ready pod matching ``selector``; on timeout the error says why not (waiting reason, Events)."""
    try:
        return PodRef.of(kube.ready_pods(namespace, selector, 1, timeout)[0])
    except AssertionError as err:
        raise AssertionError(f"{err}\n{why_not_ready(kube, namespace, selector)}") from None


def why_not_ready(kube: KubeCluster, namespace: str, selector: str) -> str:
    lines = []
    pods = kube.get("pods", namespace=namespace, selector=selector)["items"]
    events = kube.get("events", namespace=namespace)["items"] if pods else []  # once for all the pods
    for item in pods:
        name = item["metadata"]["name"]
        waiting = [
            c.get("state", {}).get("waiting", {}) for c in item.get("status", {}).get("containerStatuses", [])
        ]
        lines.append(f"pod {name}: phase {item.get('status', {}).get('phase')}, waiting {waiting}")
        for event in events:
            if event.get("involvedObject", {}).get("name") == name and event.get("type") == "Warning":
                lines.append(f"  {event.get('reason')}: {str(event.get('message'))[:400]}")
    return "\n".join(lines) or f"no pod matches {selector}"


def redirection(kube: KubeCluster, ref: PodRef) -> str:
    current = kube.get("pod", ref.name, ref.namespace)
    return str(current["metadata"].get("annotations", {}).get(REDIRECTION, ""))


def wait_redirection(kube: KubeCluster, ref: PodRef, want: str, timeout: float = 60) -> None:
    """Wait for the CNI agent's annotation: ``enabled`` (handed to ztunnel) or ``""`` (removed)."""
    kube.wait_for(
        f"{REDIRECTION}={want!r} on {ref.namespace}/{ref.name}",
        lambda: redirection(kube, ref) == want,
        timeout,
    )


def wait_traffic(
    kube: KubeCluster,
    src: PodRef,
    url: str,
    predicate: Callable[[list[EchoResponse]], bool],
    what: str,
    *,
    count: int = 3,
    timeout: float = 60,
    **kwargs: Any,
) -> list[EchoResponse]:
    """Repeat a call until its responses satisfy ``predicate`` (config takes a moment to spread)."""
    result: list[EchoResponse] = []

    def check() -> bool:
        nonlocal result
        try:
            result = forward(kube, src, url, count, **kwargs)
        except AssertionError as err:  # the driving pod itself unreachable: retried like a failed call
            result = [EchoResponse(fields={"Error": f"driver: {err}"})]
            return False
        return predicate(result)

    try:
        kube.wait_for(what, check, timeout, interval=0.5)
    except AssertionError as err:
        summary = [r.fields.get("Error") or r.code for r in result]
        raise AssertionError(f"{err}; last responses: {summary}") from None
    return result


def all_ok(responses: list[EchoResponse]) -> bool:
    return bool(responses) and not failed(responses)


def all_failed(responses: list[EchoResponse]) -> bool:
    return bool(responses) and all(r.code != "200" for r in responses)


def codes(responses: list[EchoResponse]) -> list[str]:
    return [r.code or ("error: " + r.get("Error"))[:80] for r in responses]


@dataclass
class Load:
    """Continuous requests from ``src`` to ``url`` on a thread, new connection each, until stopped."""

    kube: KubeCluster
    src: PodRef
    url: str
    batch: int = 10
    sent: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _first: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                responses = forward(self.kube, self.src, self.url, self.batch)
            except AssertionError as err:
                self.errors.append(str(err))
                continue
            self.sent += len(responses)
            self.errors += [r.get("Error") or f"status {r.code}" for r in failed(responses)]
            self._first.set()

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="e2e-load", daemon=True)
        self._thread.start()
        if not self._first.wait(60):
            raise AssertionError("load never completed a first batch")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)
