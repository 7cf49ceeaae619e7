"""Typed records for ZDS requests and the events the client core emits (wire-contracts.md §5.2).

Protobuf messages are converted to these frozen records at the protocol boundary so the rest of the code
never handles generated classes. ``uid`` is always the Kubernetes pod ``metadata.uid`` (not a WDS uid).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshproto.istio.workload.zds import zds_pb2

__all__ = [
    "WorkloadAdded",
    "WorkloadDeleted",
    "WorkloadInfo",
    "WorkloadKept",
    "ZdsAck",
    "ZdsEvent",
    "ZdsSnapshotSent",
]


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    """What the CNI agent knows about a pod: ztunnel matches it to a WDS Workload by these three fields."""

    name: str
    namespace: str
    service_account: str

    def to_proto(self) -> zds_pb2.WorkloadInfo:
        return zds_pb2.WorkloadInfo(
            name=self.name, namespace=self.namespace, service_account=self.service_account
        )

    @classmethod
    def from_proto(cls, msg: zds_pb2.WorkloadInfo) -> WorkloadInfo:
        return cls(msg.name, msg.namespace, msg.service_account)


@dataclass(frozen=True, slots=True)
class WorkloadAdded:
    """``AddWorkload``: start (or restart) the in-pod proxy; the receiver owns and closes ``netns_fd``."""

    uid: str
    info: WorkloadInfo
    netns_fd: int
    in_snapshot: bool


@dataclass(frozen=True, slots=True)
class WorkloadKept:
    """``KeepWorkload`` (snapshot only): the pod still exists but its netns is not available to re-send."""

    uid: str


@dataclass(frozen=True, slots=True)
class WorkloadDeleted:
    """``DelWorkload``: the pod is gone; tear its proxy down at once."""

    uid: str


@dataclass(frozen=True, slots=True)
class ZdsSnapshotSent:
    """``SnapshotSent``: ``named`` holds every uid added or kept on this connection; drop all others."""

    named: frozenset[str]


ZdsEvent = WorkloadAdded | WorkloadKept | WorkloadDeleted | ZdsSnapshotSent


@dataclass(frozen=True, slots=True)
class ZdsAck:
    """ztunnel's answer to one request (server side); ``error`` is empty on success."""

    request: str
    uid: str
    error: str

    @property
    def ok(self) -> bool:
        return not self.error
