"""Image → local command: the one table that says what a container image runs on this cluster.

Pods run as processes from the workspace, not as containers, so every image a test or chart uses must be
listed
here; anything else fails loudly (the pod's container waits with reason ``ErrImagePull`` and a message naming
this module). An image matches on its repository's last path segment, so ``<any hub>/ztunnel:<any tag>``
runs our ztunnel. ``PYTHON`` in a command is replaced by the node agent's interpreter (the workspace venv).

A container's ``command`` replaces the image entrypoint as in a real runtime; since our images have no
filesystem of binaries, ``command[0]`` is looked up in the image's ``commands`` table (by basename) instead.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PYTHON = "PYTHON"


@dataclass(frozen=True, slots=True)
class ImageSpec:
    entrypoint: tuple[str, ...]
    commands: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


_ECHO = (PYTHON, "-m", "meshtest.echo")
IMAGES: Mapping[str, ImageSpec] = {
    # Istio's images, served by our services (upstream image names, see spec deploy-and-e2e §1.10)
    "pilot": ImageSpec((PYTHON, "-m", "istiod")),
    "ztunnel": ImageSpec((PYTHON, "-m", "ztunnel")),
    "install-cni": ImageSpec(
        (PYTHON, "-m", "istio_cni"),
        {"install-cni": (PYTHON, "-m", "istio_cni"), "istio-cni": (PYTHON, "-m", "istio_cni")},
    ),
    "proxyv2": ImageSpec((PYTHON, "-m", "waypoint")),
    # the echo test app (upstream `<hub>/app:<tag>`, entrypoint `server`; `client` also in the image)
    "app": ImageSpec((*_ECHO, "server"), {"server": (*_ECHO, "server"), "client": (*_ECHO, "client")}),
    "echo": ImageSpec((*_ECHO, "server"), {"server": (*_ECHO, "server"), "client": (*_ECHO, "client")}),
    "echo-client": ImageSpec((*_ECHO, "client"), {"client": (*_ECHO, "client")}),
    # a generic shell image for debugging pods and exec probes: command runs as given
    "busybox": ImageSpec(
        ("sh",), {"sh": ("sh",), "sleep": ("sleep",), "/bin/sh": ("sh",), "true": ("true",)}
    ),
}


class UnknownImage(LookupError):
    """No local command for this image; the pod status carries this message."""


def repository_name(image: str) -> str:
    """``docker.io/istio/ztunnel:1.2@sha256:..`` → ``ztunnel``."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def resolve(image: str, command: Sequence[str], args: Sequence[str], python: str | None = None) -> list[str]:
    """The argv to run for a container: mapped entrypoint or command, then args (already $(VAR)-expanded)."""
    spec = IMAGES.get(repository_name(image))
    if spec is None:
        raise UnknownImage(
            f"image {image!r} has no local command (known: {', '.join(sorted(IMAGES))}); "
            "add it to meshtest.cluster.images"
        )
    if command:
        head = command[0].rsplit("/", 1)[-1] if command[0] not in spec.commands else command[0]
        mapped = spec.commands.get(head)
        if mapped is None:
            raise UnknownImage(
                f"image {image!r} has no local command for {command[0]!r} (known: {sorted(spec.commands)})"
            )
        base = [*mapped, *command[1:]]
    else:
        base = list(spec.entrypoint)
    interpreter = python or sys.executable
    return [interpreter if part == PYTHON else part for part in base] + list(args)
