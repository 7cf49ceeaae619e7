"""Enrolling and unenrolling pods on this node (behaviour.md §3.1): the one updater of the pod cache.

Enrol: open the pod netns → in-pod rules (failure is final for this attempt) → ``tcp_migrate_req`` (best
effort, :mod:`istio_cni.podsysctl`) → probe ipset → cache → hand
to the newest ztunnel over ZDS → on ack, annotate ``ambient.istio.io/redirection: enabled``; without
an ack the pod is annotated ``pending`` and retried every ``retry_interval`` (and it is in the next ztunnel's
snapshot). The annotation tells the truth within one retry interval: a ztunnel refusing a pod in its
snapshot makes it ``pending``; no ztunnel connected for a whole interval makes every pod ``pending``; a pod
that a previous agent left ``enabled`` keeps that mark across an agent restart while the ztunnel's snapshot
is still to come (so istiod sees no flap), under the same rule. The annotation is written only on change.
Unenrol (still running): ipset entry, in-pod rules, ``del`` to every ztunnel, annotation. Deleted pods: host
state and ztunnel only. Operations on one pod are serialized by a per-pod lock.

A failed enrol is rolled back (the pod is not cached, so nothing would remove its rules later) unless the
pod was already redirected (a previous agent's rules): those stay, failing closed, until a retry succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from meshkit.logs import kv
from meshkit.zds import WorkloadInfo

from istio_cni import enrolment
from istio_cni.hostrules import HostRules
from istio_cni.iptables import RuleError, apply_pod_rules, remove_pod_rules
from istio_cni.metrics import CniMetrics
from istio_cni.netns import Netns, NetnsError
from istio_cni.netnsfind import find_named_netns, find_netns_path
from istio_cni.podsysctl import enable_reqsk_migration
from istio_cni.rules import InvalidRuleConfig, PodRuleConfig
from istio_cni.zdshub import ZdsPod, ZtunnelHub

log = logging.getLogger("cni.dataplane")
PENDING, ENABLED = "pending", "enabled"


class Annotator(Protocol):
    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        """Merge-patch ``ambient.istio.io/redirection`` on the pod status; None removes it."""


@dataclass(frozen=True, slots=True)
class PodRecord:
    uid: str
    name: str
    namespace: str
    service_account: str
    ips: tuple[str, ...]
    netns: Netns | None
    state: str = PENDING

    def zds(self) -> ZdsPod:
        return ZdsPod(self.uid, WorkloadInfo(self.name, self.namespace, self.service_account), self.netns)


@dataclass(frozen=True, slots=True)
class DataplaneConfig:
    dns_capture: bool = True
    ipv6: bool = True
    host_proc: str = "/proc"
    netns_prefix: str = ""  # where the host's paths are mounted, e.g. /host
    retry_window_s: float = 5.0
    netns_dirs: tuple[str, ...] = ("/host/var/run/netns", "/var/run/netns", "/run/netns")
    probe_snat_v4: str = "169.254.7.127"
    probe_snat_v6: str = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"


def pod_ips(pod: Mapping[str, Any]) -> tuple[str, ...]:
    status = pod.get("status", {})
    ips = [p.get("ip", "") for p in status.get("podIPs") or []] or [status.get("podIP", "")]
    return tuple(ip for ip in ips if ip)


def rule_config(pod: Mapping[str, Any], cfg: DataplaneConfig) -> PodRuleConfig:
    ann = enrolment.annotations_of(pod)
    dns = ann.get(enrolment.DNS_CAPTURE_ANNOTATION)
    ifaces = tuple(i.strip() for i in ann.get(enrolment.REROUTE_INTERFACES, "").split(",") if i.strip())
    try:
        return PodRuleConfig(
            dns_capture=cfg.dns_capture if dns is None else dns.lower() == "true",
            ingress_mode=ann.get(enrolment.BYPASS_INBOUND, "").lower() == "true",
            reroute_interfaces=ifaces,
            probe_snat_v4=cfg.probe_snat_v4,
            probe_snat_v6=cfg.probe_snat_v6,
        )
    except InvalidRuleConfig as exc:
        raise RuleError(f"annotation {enrolment.REROUTE_INTERFACES}: {exc}") from None


class MeshDataplane:
    def __init__(
        self,
        cfg: DataplaneConfig,
        annotator: Annotator,
        metrics: CniMetrics,
        host: HostRules | None = None,
    ) -> None:
        self.cfg = cfg
        self.annotator = annotator
        self._metrics = metrics
        self.host = host
        self.pods: dict[str, PodRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._marks: dict[str, str | None] = {}  # the annotation value each cached pod carries
        self.hub: ZtunnelHub | None = None  # set by the app (the hub needs our snapshot, we need the hub)
        self.window_s = cfg.retry_window_s
        self._reqsk_warned = False

    def snapshot(self) -> list[ZdsPod]:
        return [rec.zds() for rec in self.pods.values()]

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def open_netns(self, path: str) -> Netns:
        prefixed = self.cfg.netns_prefix + path if self.cfg.netns_prefix else ""
        return Netns.open(prefixed if prefixed and os.path.exists(prefixed) else path)

    def find_netns(self, ips: tuple[str, ...]) -> Netns | None:
        """Blocking (run it in a thread): the netns of a running pod, by its IPs."""
        path = find_netns_path(self.cfg.host_proc, ips) or find_named_netns(self.cfg.netns_dirs, ips)
        return Netns.open(path) if path else None

    async def enrol(
        self,
        pod: Mapping[str, Any],
        netns: Netns | None = None,
        ips: tuple[str, ...] = (),
        *,
        apply_rules: bool = True,
    ) -> bool:
        """Put ``pod`` in the mesh; True once a ztunnel acked it. Takes ownership of ``netns``.

        ``apply_rules=False`` trusts rules a previous agent installed
        (``AMBIENT_RECONCILE_POD_RULES_ON_STARTUP=false``).
        """
        meta = pod.get("metadata", {})
        uid = str(meta.get("uid", ""))
        async with self._lock(uid):
            try:
                return await self._enrol(pod, uid, netns, ips or pod_ips(pod), apply_rules)
            except BaseException:
                self._metrics.enrolments.labels(op="enrol", result="error").inc()
                raise

    async def _enrol(
        self, pod: Mapping[str, Any], uid: str, netns: Netns | None, ips: tuple[str, ...], apply_rules: bool
    ) -> bool:
        meta = pod.get("metadata", {})
        existing = self.pods.get(uid)
        if netns is None and existing is not None:
            return existing.state == ENABLED  # already ours; nothing new to hand over
        if netns is None:
            netns = await asyncio.to_thread(self.find_netns, ips)
            if netns is None:
                raise NetnsError(f"no network namespace found on this node for pod IPs {ips}")
        if existing is not None and existing.netns is not None:
            if existing.netns.inode == netns.inode:
                netns.close()
                return existing.state == ENABLED
            existing.netns.close()  # new sandbox for the same pod: ztunnel replaces the proxy on add
        try:
            if apply_rules:
                await apply_pod_rules(netns, rule_config(pod, self.cfg), self.cfg.ipv6)
            await self._enable_reqsk_migration(netns)  # also for a previous agent's rules: idempotent
            if self.host is not None:
                await self.host.add_ips(ips)
        except BaseException:
            inherited = bool(enrolment.annotations_of(pod).get(enrolment.REDIRECTION_ANNOTATION))
            await self._roll_back(netns, ips, rules=apply_rules and not inherited)
            self.pods.pop(uid, None)
            raise
        sa = str(pod.get("spec", {}).get("serviceAccountName") or "default")
        rec = PodRecord(uid, str(meta.get("name")), str(meta.get("namespace")), sa, ips, netns)
        self.pods[uid] = rec
        acked = self.hub is not None and await self.hub.add(rec.zds())
        self._marks[uid] = enrolment.annotations_of(pod).get(enrolment.REDIRECTION_ANNOTATION)
        orphaned = self.hub is None or self.hub.connected == 0
        keep_mark = not acked and orphaned and self._marks[uid] == ENABLED  # the snapshot will confirm it
        await self._set_state(rec, ENABLED if acked or keep_mark else PENDING)
        self._metrics.enrolments.labels(op="enrol", result="ok" if acked else "pending").inc()
        log.info(
            "pod enrolled", extra=kv(pod=f"{rec.namespace}/{rec.name}", uid=uid, state=self.pods[uid].state)
        )
        return acked

    async def _enable_reqsk_migration(self, netns: Netns) -> None:
        reason = await enable_reqsk_migration(netns)
        if reason is not None and not self._reqsk_warned:
            self._reqsk_warned = True  # the cause (kernel, runtime) is the same for every pod of this node
            log.warning(
                "could not set net.ipv4.tcp_migrate_req in a pod network namespace (logged once): a ztunnel"
                " rollout may reset connections still queued on the old ztunnel's listeners",
                extra=kv(netns=netns.source, error=reason),
            )

    async def _roll_back(self, netns: Netns, ips: tuple[str, ...], *, rules: bool) -> None:
        """Undo a half-done enrol; left behind, the rules would send the pod's traffic to listeners that no
        ztunnel is told to open, even after the pod leaves the mesh."""
        try:
            if self.host is not None:
                await self.host.remove_ips(ips)
            if rules:
                await remove_pod_rules(netns)
        except Exception as exc:  # the original error is the one to report
            log.warning("could not roll back a failed enrol", extra=kv(netns=netns.source, error=str(exc)))
        finally:
            netns.close()

    async def _set_state(self, rec: PodRecord, state: str) -> None:
        """Record ``state``; patch the annotation only when the pod does not carry it already."""
        self.pods[rec.uid] = replace(rec, state=state)
        self._update_gauges()
        if self._marks.get(rec.uid) == state:
            return
        try:
            await self.annotator.set_redirection(rec.namespace, rec.name, state)
            self._marks[rec.uid] = state
        except Exception as exc:  # the pod may be gone; the annotation is advisory for istiod
            log.warning("could not annotate pod", extra=kv(pod=f"{rec.namespace}/{rec.name}", error=str(exc)))

    def _update_gauges(self) -> None:
        self._metrics.pods_enrolled.set(len(self.pods))
        self._metrics.pods_pending.set(sum(1 for r in self.pods.values() if r.state == PENDING))

    async def unenrol(self, uid: str, *, deleted: bool) -> None:
        """Take the pod out of the mesh; ``deleted`` pods only lose host and ztunnel state."""
        async with self._lock(uid):
            rec = self.pods.pop(uid, None)
            if rec is None:
                return
            try:
                if self.host is not None:
                    await self.host.remove_ips(rec.ips)
                if not deleted and rec.netns is not None:
                    await remove_pod_rules(rec.netns)
                if self.hub is not None:
                    await self.hub.delete(uid)
                if not deleted:
                    await self.annotator.set_redirection(rec.namespace, rec.name, None)
            finally:
                if rec.netns is not None:
                    rec.netns.close()
                self._locks.pop(uid, None)
                self._marks.pop(uid, None)
                self._update_gauges()
            self._metrics.enrolments.labels(op="unenrol", result="ok").inc()
            log.info("pod unenrolled", extra=kv(pod=f"{rec.namespace}/{rec.name}", uid=uid, deleted=deleted))

    async def on_snapshot_acked(self, accepted: list[str], refused: list[str]) -> None:
        """A ztunnel took its snapshot: accepted pods are ``enabled``, refused ones ``pending``."""
        for uids, state in ((accepted, ENABLED), (refused, PENDING)):
            for uid in uids:
                async with self._lock(uid):
                    rec = self.pods.get(uid)
                    if rec is not None:
                        await self._set_state(rec, state)

    async def retry_pending(self) -> int:
        """Offer every pending pod to the newest ztunnel again; returns how many were accepted.

        First demotes every pod to ``pending`` once no ztunnel has been connected for ``window_s``.
        """
        await self._demote_if_orphaned()
        accepted = 0
        for uid in [u for u, r in self.pods.items() if r.state == PENDING]:
            async with self._lock(uid):
                rec = self.pods.get(uid)
                if rec is None or rec.state != PENDING or self.hub is None:
                    continue
                if await self.hub.add(rec.zds()):
                    await self._set_state(rec, ENABLED)
                    accepted += 1
        return accepted

    async def _demote_if_orphaned(self) -> None:
        hub = self.hub
        if hub is None or hub.idle_since is None:
            return
        if asyncio.get_running_loop().time() - hub.idle_since < self.window_s:
            return
        for uid in [u for u, r in self.pods.items() if r.state == ENABLED]:
            async with self._lock(uid):
                rec = self.pods.get(uid)
                if rec is not None and rec.state == ENABLED and hub.connected == 0:
                    log.warning("no ztunnel connected; pod marked pending", extra=kv(uid=uid))
                    await self._set_state(rec, PENDING)

    async def retry_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)  # the retry window: a period, not a wait for an event
            await self.retry_pending()

    def close(self) -> None:
        for rec in self.pods.values():
            if rec.netns is not None:
                rec.netns.close()
        self.pods.clear()
