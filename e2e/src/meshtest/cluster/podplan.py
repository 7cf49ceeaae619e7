"""Pod spec → process plan: pure functions from a Pod object and the objects it references to what each
container runs (argv, environment, mounts) and what each volume contains.

No I/O here. The node agent first asks :func:`references` what to fetch (ConfigMaps, Secrets, tokens), fetches
it into a :class:`Sources`, then calls :func:`container_plan` and :func:`volume_files`. The rules follow the
kubelet: ``$(VAR)`` expansion in env values, command and args (``$$`` escapes, unknown references stay as they
are); ``envFrom`` before ``env``; downward-API field paths; resource quantities rounded up by the divisor.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from meshtest.cluster import images
from meshtest.cluster.config import CLUSTER_DOMAIN, KUBERNETES_SVC_IP

Obj = dict[str, Any]

#: hostPath prefixes that mean the real machine rather than the node's private root: namespaces and kernel
#: interfaces are shared by all nodes on one host anyway (the CNI agent reads /proc and /var/run/netns).
HOST_SHARED_PATHS = (
    "/proc",
    "/sys",
    "/dev",
    "/run/netns",
    "/var/run/netns",
    "/lib/modules",
    "/run/xtables.lock",
)


class PlanError(Exception):
    """The pod cannot be run as specified; ``reason`` goes into the container's waiting state."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Sources:
    """Objects fetched for one pod. Missing ConfigMaps/Secrets are simply absent."""

    configmaps: dict[str, Obj] = field(default_factory=dict)
    secrets: dict[str, Obj] = field(default_factory=dict)
    tokens: dict[tuple[str, int], str] = field(default_factory=dict)
    services: list[Obj] = field(default_factory=list)  # the pod's namespace's Services (service links)
    node_cpu: int = 2
    node_memory: int = 8 * 1024**3

    def configmap_data(self, name: str) -> dict[str, bytes] | None:
        cm = self.configmaps.get(name)
        if cm is None:
            return None
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        return data

    def secret_data(self, name: str) -> dict[str, bytes] | None:
        secret = self.secrets.get(name)
        if secret is None:
            return None
        data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        data.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
        return data


@dataclass(frozen=True, slots=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class ContainerPlan:
    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    mounts: tuple[Mount, ...]
    workdir: str | None
    capabilities: tuple[str, ...] | None = None  # None: all (privileged)


#: containerd's default capability set for a container that asks for nothing else
DEFAULT_CAPABILITIES = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    }
)


def capabilities(container: Obj) -> tuple[str, ...] | None:
    """The container's capability set: privileged → all (``None``); else the default set minus ``drop``
    (``ALL`` empties it) plus ``add`` (``ALL`` → all). Names without the ``CAP_`` prefix."""
    context = container.get("securityContext") or {}
    if context.get("privileged"):
        return None
    requested = context.get("capabilities") or {}
    drop = {str(c).upper().removeprefix("CAP_") for c in requested.get("drop") or []}
    add = {str(c).upper().removeprefix("CAP_") for c in requested.get("add") or []}
    if "ALL" in add:
        return None
    caps = set() if "ALL" in drop else set(DEFAULT_CAPABILITIES) - drop
    return tuple(sorted(caps | add))


@dataclass(frozen=True, slots=True)
class References:
    configmaps: frozenset[str]
    secrets: frozenset[str]
    tokens: frozenset[tuple[str, int]]


# ---- references
# ------------------------------------------------------------------------------------------------
def _all_containers(pod: Obj) -> list[Obj]:
    spec = pod.get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def references(pod: Obj) -> References:
    """Every ConfigMap, Secret and (audience, expiry) token this pod needs."""
    cms: set[str] = set()
    secrets: set[str] = set()
    tokens: set[tuple[str, int]] = set()
    for container in _all_containers(pod):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                cms.add(source["configMapRef"]["name"])
            if "secretRef" in source:
                secrets.add(source["secretRef"]["name"])
        for var in container.get("env", []):
            value_from = var.get("valueFrom", {})
            if "configMapKeyRef" in value_from:
                cms.add(value_from["configMapKeyRef"]["name"])
            if "secretKeyRef" in value_from:
                secrets.add(value_from["secretKeyRef"]["name"])
    for volume in pod.get("spec", {}).get("volumes", []):
        if "configMap" in volume:
            cms.add(volume["configMap"]["name"])
        if "secret" in volume:
            secrets.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []) or []:
            if "configMap" in source:
                cms.add(source["configMap"]["name"])
            if "secret" in source:
                secrets.add(source["secret"]["name"])
            if "serviceAccountToken" in source:
                tokens.add(token_key(source["serviceAccountToken"]))
    return References(frozenset(cms), frozenset(secrets), frozenset(tokens))


def token_key(source: Obj) -> tuple[str, int]:
    return (str(source.get("audience", "")), int(source.get("expirationSeconds", 3600)))


# ---- downward API and quantities
# -------------------------------------------------------------------------------
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Obj, path: str) -> str:
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    match = _SUBSCRIPT.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIP": status.get("podIP", ""),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs", [])),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs", [])),
    }
    if path in simple:
        return str(simple[path])
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise PlanError("CreateContainerConfigError", f"unsupported fieldRef fieldPath {path!r}")


_SUFFIX: dict[str, int | Decimal] = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def quantity(text: str | int | float) -> Decimal:
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in _SUFFIX:
        raise PlanError("CreateContainerConfigError", f"bad quantity {text!r}")
    return Decimal(match.group(1)) * Decimal(_SUFFIX[match.group(2)])


def resource_value(pod: Obj, container_name: str, ref: Obj, sources: Sources) -> str:
    resource = ref["resource"]
    container = next((c for c in _all_containers(pod) if c["name"] == container_name), None)
    if container is None:
        raise PlanError(
            "CreateContainerConfigError", f"resourceFieldRef names unknown container {container_name!r}"
        )
    kind, _, name = resource.partition(".")
    resources = container.get("resources", {})
    value_text = (resources.get(kind) or {}).get(name)
    if value_text is None and kind == "requests":
        value_text = (resources.get("limits") or {}).get(name)
    if value_text is None:  # kubelet: an unset limit is the node's allocatable; an unset request is 0
        node_default = {"cpu": sources.node_cpu, "memory": sources.node_memory, "ephemeral-storage": 0}
        value = Decimal(node_default.get(name, 0)) if kind == "limits" else Decimal(0)
    else:
        value = quantity(value_text)
    divisor = quantity(ref.get("divisor") or "1")
    return str(math.ceil(value / divisor))


# ---- environment
# -----------------------------------------------------------------------------------------------
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined references are replaced, ``$$`` yields ``$``, others stay."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REF.sub(sub, text)


def _missing(kind: str, name: str, optional: bool) -> None:
    if not optional:
        raise PlanError("CreateContainerConfigError", f"{kind} {name!r} not found")


def container_env(pod: Obj, container: Obj, sources: Sources) -> dict[str, str]:
    """The container's environment as the kubelet builds it (without the process's inherited variables)."""
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    env: dict[str, str] = {
        "HOSTNAME": spec.get("nodeName", "") if spec.get("hostNetwork") else meta.get("name", "")
    }
    if spec.get("enableServiceLinks", True):
        env.update(service_links(sources.services))
    # the API server's Service is always linked, whatever enableServiceLinks says
    kubernetes = {
        "metadata": {"name": "kubernetes"},
        "spec": {"clusterIP": KUBERNETES_SVC_IP, "ports": [{"name": "https", "port": 443}]},
    }
    env.update(service_links([kubernetes]))
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            data = sources.configmap_data(ref["name"])
        else:
            ref = source["secretRef"]
            data = sources.secret_data(ref["name"])
        if data is None:
            _missing(
                "configmap" if "configMapRef" in source else "secret", ref["name"], ref.get("optional", False)
            )
            continue
        env.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
    for var in container.get("env", []):
        value = _env_value(pod, container, var, env, sources)
        if value is not None:
            env[var["name"]] = value
    return env


def service_links(services: list[Obj]) -> dict[str, str]:
    """Docker-link style variables for Services with a ClusterIP: ``<NAME>_SERVICE_HOST``, ``_SERVICE_PORT``,
    ``_PORT_<port>_TCP`` and friends, as the kubelet sets them."""
    env: dict[str, str] = {}
    for service in sorted(services, key=lambda s: str(s["metadata"]["name"])):
        ip = service.get("spec", {}).get("clusterIP")
        ports = service.get("spec", {}).get("ports") or []
        if not ip or ip == "None" or not ports:
            continue
        name = str(service["metadata"]["name"]).upper().replace("-", "_")
        first = ports[0]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(first["port"])
        env[f"{name}_PORT"] = f"{str(first.get('protocol', 'TCP')).lower()}://{ip}:{first['port']}"
        for port in ports:
            proto = str(port.get("protocol", "TCP"))
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{str(port['name']).upper().replace('-', '_')}"] = str(port["port"])
            base = f"{name}_PORT_{port['port']}_{proto.upper()}"
            env[base] = f"{proto.lower()}://{ip}:{port['port']}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(port["port"])
            env[f"{base}_ADDR"] = ip
    return env


def _env_value(pod: Obj, container: Obj, var: Obj, env: Mapping[str, str], sources: Sources) -> str | None:
    if "valueFrom" not in var:
        return expand(str(var.get("value", "")), env)
    value_from = var["valueFrom"]
    if "fieldRef" in value_from:
        return field_value(pod, value_from["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in value_from:
        ref = value_from["resourceFieldRef"]
        return resource_value(pod, ref.get("containerName") or container["name"], ref, sources)
    for key, getter, kind in (
        ("configMapKeyRef", sources.configmap_data, "configmap"),
        ("secretKeyRef", sources.secret_data, "secret"),
    ):
        if key in value_from:
            ref = value_from[key]
            data = getter(ref["name"])
            if data is None or ref["key"] not in data:
                _missing(kind, f"{ref['name']}/{ref['key']}", ref.get("optional", False))
                return None
            return data[ref["key"]].decode(errors="replace")
    raise PlanError("CreateContainerConfigError", f"unsupported valueFrom in env {var['name']!r}")


# ---- containers
# ------------------------------------------------------------------------------------------------
def container_plan(
    pod: Obj,
    container: Obj,
    sources: Sources,
    *,
    volume_dirs: Mapping[str, str],
    python: str | None = None,
    implicit_mounts: Sequence[Mount] = (),
) -> ContainerPlan:
    """argv, env and mounts of one container. ``volume_dirs`` maps each volume name to its host directory
    (or file, for a file hostPath)."""
    env = container_env(pod, container, sources)
    command = [expand(part, env) for part in container.get("command", [])]
    args = [expand(part, env) for part in container.get("args", [])]
    try:
        argv = images.resolve(container.get("image", ""), command, args, python)
    except images.UnknownImage as err:
        raise PlanError("ErrImagePull", str(err)) from None
    mounts = list(implicit_mounts)
    for mount in container.get("volumeMounts", []):
        source = volume_dirs.get(mount["name"])
        if source is None:
            raise PlanError("CreateContainerConfigError", f"volumeMount {mount['name']!r} has no volume")
        if mount.get("subPath"):
            source = f"{source}/{mount['subPath']}"
        mounts.append(Mount(source, mount["mountPath"], bool(mount.get("readOnly", False))))
    return ContainerPlan(
        name=container["name"],
        argv=tuple(argv),
        env=tuple(env.items()),
        mounts=tuple(mounts),
        workdir=container.get("workingDir"),
        capabilities=capabilities(container),
    )


# ---- volumes
# ---------------------------------------------------------------------------------------------------
FileMap = dict[str, tuple[bytes, int]]


def _keyed_files(data: Mapping[str, bytes], items: Sequence[Obj] | None, mode: int) -> FileMap:
    if not items:
        return {key: (value, mode) for key, value in data.items()}
    files: FileMap = {}
    for item in items:
        if item["key"] in data:
            files[item["path"]] = (data[item["key"]], int(item.get("mode", mode)))
        elif not item.get("optional", False):
            raise PlanError("CreateContainerConfigError", f"key {item['key']!r} not found for volume item")
    return files


def _downward_files(pod: Obj, items: Sequence[Obj], mode: int, sources: Sources) -> FileMap:
    files: FileMap = {}
    for item in items:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"])
        else:
            ref = item["resourceFieldRef"]
            value = resource_value(pod, ref["containerName"], ref, sources)
        files[item["path"]] = (value.encode(), int(item.get("mode", mode)))
    return files


def volume_files(pod: Obj, volume: Obj, sources: Sources) -> FileMap | None:
    """Files of a content volume (configMap, secret, downwardAPI, projected); ``None`` for other kinds."""
    if "configMap" in volume:
        ref = volume["configMap"]
        data = sources.configmap_data(ref["name"])
        if data is None:
            _missing("configmap", ref["name"], ref.get("optional", False))
            return {}
        return _keyed_files(data, ref.get("items"), int(ref.get("defaultMode", 0o644)))
    if "secret" in volume:
        ref = volume["secret"]
        data = sources.secret_data(ref["secretName"])
        if data is None:
            _missing("secret", ref["secretName"], ref.get("optional", False))
            return {}
        return _keyed_files(data, ref.get("items"), int(ref.get("defaultMode", 0o644)))
    if "downwardAPI" in volume:
        ref = volume["downwardAPI"]
        return _downward_files(pod, ref.get("items", []), int(ref.get("defaultMode", 0o644)), sources)
    if "projected" in volume:
        return _projected_files(pod, volume["projected"], sources)
    return None


def _projected_files(pod: Obj, projected: Obj, sources: Sources) -> FileMap:
    mode = int(projected.get("defaultMode", 0o644))
    files: FileMap = {}
    for source in projected.get("sources", []) or []:
        if "serviceAccountToken" in source:
            ref = source["serviceAccountToken"]
            files[ref["path"]] = (sources.tokens[token_key(ref)].encode(), mode)
        elif "configMap" in source or "secret" in source:
            kind = "configMap" if "configMap" in source else "secret"
            ref = source[kind]
            data = (
                sources.configmap_data(ref["name"])
                if kind == "configMap"
                else sources.secret_data(ref["name"])
            )
            if data is None:
                _missing(kind.lower(), ref["name"], ref.get("optional", False))
                continue
            files.update(_keyed_files(data, ref.get("items"), mode))
        elif "downwardAPI" in source:
            files.update(_downward_files(pod, source["downwardAPI"].get("items", []), mode, sources))
        else:
            raise PlanError("CreateContainerConfigError", f"unsupported projected source {sorted(source)}")
    return files


def host_path(volume: Obj, node_root: str) -> tuple[str, str]:
    """(resolved source, type) of a hostPath volume: inside the node's own root unless host-shared."""
    path = volume["hostPath"]["path"].rstrip("/") or "/"
    kind = volume["hostPath"].get("type", "")
    if any(path == shared or path.startswith(shared + "/") for shared in HOST_SHARED_PATHS):
        return path, kind
    return node_root.rstrip("/") + path, kind


def resolv_conf(spec: Obj, namespace: str, dns_ip: str, host_resolv: str) -> str:
    """/etc/resolv.conf of a pod: cluster DNS for ClusterFirst (and ClusterFirstWithHostNet), the node's for
    Default or a hostNetwork pod without ClusterFirstWithHostNet, nothing for None; then ``dnsConfig``."""
    policy = spec.get("dnsPolicy", "ClusterFirst")
    host_network = bool(spec.get("hostNetwork"))
    config = spec.get("dnsConfig") or {}
    if policy == "Default" or (host_network and policy == "ClusterFirst"):
        if not config:
            return host_resolv
        nameservers, searches, options = _parse_resolv(host_resolv)
    elif policy == "None":
        nameservers, searches, options = [], [], []
    else:
        nameservers = [dns_ip]
        searches = [f"{namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN]
        options = ["ndots:5"]
    nameservers += [n for n in config.get("nameservers", []) if n not in nameservers]
    searches += [s for s in config.get("searches", []) if s not in searches]
    extra = {o["name"]: o.get("value") for o in config.get("options", [])}
    options = [o for o in options if o.split(":")[0] not in extra]
    options += [f"{name}:{value}" if value is not None else name for name, value in extra.items()]
    lines = ([f"search {' '.join(searches)}"] if searches else []) + [f"nameserver {n}" for n in nameservers]
    lines += [f"options {' '.join(options)}"] if options else []
    return "\n".join(lines) + "\n"


def _parse_resolv(text: str) -> tuple[list[str], list[str], list[str]]:
    nameservers, searches, options = [], [], []
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "nameserver":
            nameservers += parts[1:2]
        elif parts and parts[0] == "search":
            searches += parts[1:]
        elif parts and parts[0] == "options":
            options += parts[1:]
    return nameservers, searches, options


def hosts_file(spec: Obj, hostname: str, pod_ips: list[str]) -> str:
    """/etc/hosts of a (non-hostNetwork) pod: localhost, the pod's own name, then ``hostAliases``."""
    text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    text += "".join(f"{ip}\t{hostname}\n" for ip in pod_ips)
    for alias in spec.get("hostAliases") or []:
        text += f"{alias['ip']}\t{' '.join(alias.get('hostnames', []))}\n"
    return text
