"""Writing volume contents on the node: content volumes (ConfigMap, Secret, downwardAPI, projected) are
synced file by file with atomic replaces, so a container reading a refreshed token never sees a torn file;
hostPath sources are created per their ``type``."""

from __future__ import annotations

from pathlib import Path

from meshtest.cluster import podplan


def sync_files(target: Path, files: podplan.FileMap) -> None:
    """Write ``files`` below ``target`` atomically per file; remove files no longer present."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for rel, (content, mode) in files.items():
        path = target / rel
        wanted.add(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.read_bytes() == content:
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(content)
        tmp.chmod(mode)
        tmp.replace(path)
    for path in list(target.rglob("*")):
        if path.is_file() and path not in wanted and not path.name.startswith("."):
            path.unlink()


def ensure_host_path(path: str, kind: str) -> None:
    p = Path(path)
    if kind in ("", "DirectoryOrCreate") and not p.exists():
        p.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate" and not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    elif kind in ("Directory", "File", "Socket", "CharDevice", "BlockDevice") and not p.exists():
        raise podplan.PlanError("CreateContainerConfigError", f"hostPath {path} ({kind}) does not exist")
