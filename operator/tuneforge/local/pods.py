"""How the local node agent runs a container of a Pod as a local process: a pure
translation from the Pod spec (and the ConfigMaps and Secrets it names) to a
`ProcessPlan` of argv, environment, working directory and the files to materialise.

The Pod spec stays exactly what a cluster gets. A local process differs from a container
in four ways, and each is told to it in one documented way (docs/local.md):

* **Its file tree.** Every volume mount is materialised under the Pod's `rootfs`
  directory at the same path (`<rootfs>/etc/tuneforge/run.json` for a ConfigMap mounted at
  `/etc/tuneforge`). Any command, argument or environment value that is an absolute path
  at, under or above a mount path is rewritten to the same path under `rootfs`: so
  `--run /etc/tuneforge/run.json` reads the materialised ConfigMap, and
  `TUNEFORGE_PVC_MOUNT_ROOT=/mnt/pvc` finds the claims mounted at `/mnt/pvc/<claim>`.
* **Its address.** `TUNEFORGE_BIND_HOST` is set to the Pod's own loopback IP, so servers
  of different Pods share ports as they would on separate network namespaces.
* **Its termination log.** `TUNEFORGE_TERMINATION_LOG` points at a per-container file
  that the agent reads back as the termination message, as a kubelet reads
  `terminationMessagePath`.
* **Its weight cache.** `TUNEFORGE_CACHE_DIR` is the machine's cache, whatever the Pod
  spec says: the spec points it into the Pod's cache emptyDir, which on a cluster lives
  as long as the Pod, and a local Pod would then dequantize a GGUF model at every start
  instead of once per machine.

Only tuneforge's own images run: a container's image must be one of the configured
trainer, inference or batch-runner (control-plane) images and its command one of that
image's entrypoints, resolved to the console scripts next to the agent's Python. Anything else is `UnsupportedContainer`.
"""

from __future__ import annotations

import base64
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.local.containerlogs import current_log
from tuneforge.local.hosts import pod_hostname

BIND_HOST_ENV = "TUNEFORGE_BIND_HOST"
TERMINATION_LOG_ENV = "TUNEFORGE_TERMINATION_LOG"
WEIGHT_CACHE_ENV = "TUNEFORGE_CACHE_DIR"
AGENT_ENV = (BIND_HOST_ENV, TERMINATION_LOG_ENV)
"""The variables through which the agent tells tuneforge's entrypoints where they run."""

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"


class UnsupportedContainer(ValueError):
    """A container this node cannot run as a local process (another image or command)."""


class MissingReference(LookupError):
    """A ConfigMap, Secret or key the container needs does not exist (yet): the kubelet's
    CreateContainerConfigError, retried until it appears."""


@dataclass(frozen=True)
class Image:
    """One image the node can run: its entrypoints and the default command (ENTRYPOINT)
    and arguments (CMD) used when the container sets none."""

    name: str
    entrypoints: frozenset[str]
    default_command: tuple[str, ...]
    default_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageCatalog:
    """The images this node runs, and the directory holding their console scripts."""

    images: Mapping[str, Image]
    scripts_dir: Path

    def image(self, container: Mapping[str, Any]) -> Image:
        image = self.images.get(container.get("image", ""))
        if image is None:
            offered = ", ".join(sorted(self.images))
            raise UnsupportedContainer(
                f"image {container.get('image')!r} cannot run on the local node; it runs only tuneforge's "
                f"own images ({offered})"
            )
        return image


@dataclass(frozen=True)
class PodSources:
    """The ConfigMaps and Secrets of the Pod's namespace, as `name -> {key: bytes}`;
    a name absent from the map does not exist."""

    config_maps: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    service_account_token: str | None = None
    """A token for the Pod's service account (TokenRequest API), for projected volumes."""


@dataclass(frozen=True)
class PodPlace:
    """Where on this machine a Pod lives."""

    root: Path
    """The Pod's directory: rootfs/, volumes/, and per-container logs."""
    pod_ip: str
    node_name: str
    host_ip: str
    shared_dirs: Mapping[str, Path] = field(default_factory=dict)
    """Directories of PersistentVolumeClaims by claim name (shared by all Pods)."""

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    def volume_dir(self, volume: str) -> Path:
        return self.root / "volumes" / volume


@dataclass(frozen=True)
class LocalFile:
    path: Path
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class ProcessPlan:
    """Everything needed to start one container as a process."""

    container: str
    argv: list[str]
    env: dict[str, str]
    workdir: Path
    log: Path
    """`<container>.log`, the link to the newest run's log (`tuneforge.local.containerlogs`)."""
    termination_log: Path
    termination_message_policy: str
    files: list[LocalFile]
    """Materialised ConfigMap and Secret volumes; written before the process starts."""
    directories: list[Path]
    """emptyDir volumes and claims; created before the process starts."""
    links: dict[Path, Path]
    """`rootfs` mount point -> the directory (or file, for subPath) it shows."""


# -- environment ---------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are substituted, undefined ones
    are left as written, and `$$` escapes a dollar."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, value)


_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    """The downward API: the value of a `fieldRef.fieldPath`."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    match = _FIELD_KEY.match(path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise UnsupportedContainer(f"fieldRef {path!r} is not a downward API field")


def _resource_value(container: Mapping[str, Any], ref: Mapping[str, Any], node_capacity: Mapping[str, str]) -> str:
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is None:  # an unset limit reads as the node's allocatable, as on a kubelet
        value = node_capacity.get(name, "0")
    return str(value)


def _lookup(sources: Mapping[str, Mapping[str, bytes]], kind: str, ref: Mapping[str, Any]) -> str | None:
    name, key, optional = ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional"))
    data = sources.get(name)
    if data is None or key not in data:
        if optional:
            return None
        missing = f"{kind} {name!r}" if data is None else f"key {key!r} in {kind} {name!r}"
        raise MissingReference(f"{missing} not found")
    return data[key].decode(errors="replace")


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    sources: PodSources,
    place: PodPlace,
    node_capacity: Mapping[str, str],
) -> dict[str, str]:
    """The container's environment from `envFrom` and `env`, in Kubernetes' order: envFrom
    first, then env entries (later ones win), each expanding `$(VAR)` against those before."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, pool, ref_key in (("ConfigMap", sources.config_maps, "configMapRef"),
                                    ("Secret", sources.secrets, "secretRef")):
            ref = source.get(ref_key)
            if ref is None:
                continue
            data = pool.get(ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise MissingReference(f"{kind} {ref.get('name')!r} not found")
            for key, value in data.items():
                env[prefix + key] = value.decode(errors="replace")
    for entry in container.get("env") or []:
        name = entry["name"]
        if "valueFrom" not in entry:
            env[name] = expand(entry.get("value", ""), env)
            continue
        source = entry["valueFrom"]
        if "configMapKeyRef" in source:
            value = _lookup(sources.config_maps, "ConfigMap", source["configMapKeyRef"])
        elif "secretKeyRef" in source:
            value = _lookup(sources.secrets, "Secret", source["secretKeyRef"])
        elif "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"], place.pod_ip, place.host_ip)
        elif "resourceFieldRef" in source:
            value = _resource_value(container, source["resourceFieldRef"], node_capacity)
        else:
            raise UnsupportedContainer(f"env {name!r}: unknown valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return env


# -- volumes -------------------------------------------------------------------------------


def _key_files(data: Mapping[str, bytes], items: list[Mapping[str, Any]] | None, what: str,
               optional: bool) -> dict[str, tuple[bytes, int | None]]:
    if items:
        files = {}
        for item in items:
            if item["key"] not in data:
                if optional:
                    continue
                raise MissingReference(f"key {item['key']!r} in {what} not found")
            files[item["path"]] = (data[item["key"]], item.get("mode"))
        return files
    return {key: (value, None) for key, value in data.items()}


def _downward_files(source: Mapping[str, Any], pod: Mapping[str, Any],
                    place: PodPlace) -> dict[str, tuple[bytes, int | None]]:
    files = {}
    for item in source.get("items") or []:
        if "fieldRef" not in item:
            raise UnsupportedContainer(f"downwardAPI item {item.get('path')!r}: only fieldRef is supported")
        value = field_value(pod, item["fieldRef"]["fieldPath"], place.pod_ip, place.host_ip)
        files[item["path"]] = (value.encode(), item.get("mode"))
    return files


def _projected(volume: Mapping[str, Any], pod: Mapping[str, Any], sources: PodSources,
               place: PodPlace) -> dict[str, tuple[bytes, int | None]]:
    """A projected volume: the service account token, ConfigMaps, Secrets and downward API
    fields in one directory (what every Pod gets as kube-api-access-*)."""
    files: dict[str, tuple[bytes, int | None]] = {}
    for source in volume["projected"].get("sources") or []:
        if "serviceAccountToken" in source:
            if sources.service_account_token is None:
                raise MissingReference("no token for the Pod's service account yet")
            files[source["serviceAccountToken"]["path"]] = (sources.service_account_token.encode(), None)
        for kind, key, pool in (("ConfigMap", "configMap", sources.config_maps), ("Secret", "secret", sources.secrets)):
            if key in source:
                ref = source[key]
                data = pool.get(ref.get("name", ""))
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise MissingReference(f"{kind} {ref.get('name')!r} for volume {volume['name']!r} not found")
                files.update(_key_files(data, ref.get("items"), f"{kind} {ref.get('name')!r}",
                                        bool(ref.get("optional"))))
        if "downwardAPI" in source:
            files.update(_downward_files(source["downwardAPI"], pod, place))
        unknown = set(source) - {"serviceAccountToken", "configMap", "secret", "downwardAPI"}
        if unknown:
            raise UnsupportedContainer(f"projected source {sorted(unknown)} is not supported on the local node")
    mode = volume["projected"].get("defaultMode")
    return {path: (content, own or mode) for path, (content, own) in files.items()}


def volume_contents(
    volume: Mapping[str, Any], sources: PodSources, place: PodPlace, pod: Mapping[str, Any]
) -> tuple[dict[str, tuple[bytes, int | None]] | None, Path]:
    """A volume as (files to write or None for a plain directory, the directory holding it)."""
    name = volume["name"]
    namespace = (pod.get("metadata") or {}).get("namespace", "")
    if "configMap" in volume or "secret" in volume:
        is_map = "configMap" in volume
        source = volume["configMap"] if is_map else volume["secret"]
        ref_name = source.get("name") if is_map else source.get("secretName")
        kind = "ConfigMap" if is_map else "Secret"
        data = (sources.config_maps if is_map else sources.secrets).get(ref_name or "")
        if data is None:
            if not source.get("optional"):
                raise MissingReference(f"{kind} {ref_name!r} for volume {name!r} not found")
            data = {}
        files = _key_files(data, source.get("items"), f"{kind} {ref_name!r}", bool(source.get("optional")))
        default_mode = source.get("defaultMode", 0o644)
        return {path: (content, mode or default_mode) for path, (content, mode) in files.items()}, \
            place.volume_dir(name)
    if "projected" in volume:
        return _projected(volume, pod, sources, place), place.volume_dir(name)
    if "downwardAPI" in volume:
        return _downward_files(volume["downwardAPI"], pod, place), place.volume_dir(name)
    if "emptyDir" in volume:
        return None, place.volume_dir(name)
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]["claimName"]
        directory = place.shared_dirs.get(claim)
        if directory is None:
            raise MissingReference(f"PersistentVolumeClaim {claim!r} in {namespace!r} not found")
        return None, directory
    kinds = sorted(k for k in volume if k != "name")
    raise UnsupportedContainer(f"volume {name!r} of type {', '.join(kinds)} is not supported on the local node")


def rewrite_path(value: str, mount_paths: list[str], rootfs: Path) -> str:
    """`value` under `rootfs` when it is an absolute path at, under or above a mount path;
    unchanged otherwise (see the module docstring)."""
    if not value.startswith("/"):
        return value
    path = posixpath.normpath(value)
    for mount in mount_paths:
        if path == mount or path.startswith(mount.rstrip("/") + "/") or mount.startswith(path.rstrip("/") + "/"):
            return str(rootfs) + path
    return value


# -- the plan ------------------------------------------------------------------------------


def plan_container(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    catalog: ImageCatalog,
    sources: PodSources,
    place: PodPlace,
    base_env: Mapping[str, str],
    node_capacity: Mapping[str, str],
) -> ProcessPlan:
    """The process that runs `container` of `pod`; raises UnsupportedContainer or
    MissingReference when it cannot run (now)."""
    spec = pod.get("spec") or {}
    image = catalog.image(container)
    command = list(container.get("command") or image.default_command)
    args = list(container.get("args") or ([] if container.get("command") else image.default_args))
    if not command or command[0] not in image.entrypoints:
        raise UnsupportedContainer(
            f"command {command[:1]} is not an entrypoint of image {image.name!r} "
            f"({', '.join(sorted(image.entrypoints))})"
        )

    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    files: list[LocalFile] = []
    directories: list[Path] = []
    links: dict[Path, Path] = {}
    materialised: dict[str, Path] = {}
    mount_paths: list[str] = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise UnsupportedContainer(f"volumeMount {mount['name']!r} names no volume of the Pod")
        if mount["name"] not in materialised:
            contents, directory = volume_contents(volume, sources, place, pod)
            materialised[mount["name"]] = directory
            directories.append(directory)
            for rel, (content, mode) in (contents or {}).items():
                files.append(LocalFile(directory / rel, content, mode or 0o644))
        mount_path = posixpath.normpath(mount["mountPath"])
        mount_paths.append(mount_path)
        target = materialised[mount["name"]]
        if mount.get("subPath"):
            target = target / mount["subPath"]
        links[place.rootfs / mount_path.lstrip("/")] = target

    env = dict(base_env)
    env["HOSTNAME"] = pod_hostname(pod)  # set by the container runtime; the spec's env may override it
    env.update(container_env(pod, container, sources, place, node_capacity))
    env = {key: rewrite_path(value, mount_paths, place.rootfs) for key, value in env.items()}
    if WEIGHT_CACHE_ENV in base_env:
        env[WEIGHT_CACHE_ENV] = base_env[WEIGHT_CACHE_ENV]
    name = container["name"]
    termination_log = place.root / f"{name}.termination-log"
    env[BIND_HOST_ENV] = place.pod_ip
    env[TERMINATION_LOG_ENV] = str(termination_log)

    argv = [expand(part, env) for part in [*command, *args]]
    argv = [rewrite_path(part, mount_paths, place.rootfs) for part in argv]
    argv[0] = str(catalog.scripts_dir / command[0])
    return ProcessPlan(
        container=name,
        argv=argv,
        env=env,
        workdir=_workdir(container.get("workingDir"), mount_paths, place),
        log=current_log(place.root, name),
        termination_log=termination_log,
        termination_message_policy=container.get("terminationMessagePolicy", "File"),
        files=files,
        directories=directories,
        links=links,
    )


def _workdir(working_dir: str | None, mount_paths: list[str], place: PodPlace) -> Path:
    """A workingDir inside a mount is honoured; any other lives in the image's file tree,
    which a local process does not have, so it starts in the Pod's directory instead."""
    if working_dir:
        rewritten = rewrite_path(working_dir, mount_paths, place.rootfs)
        if rewritten != working_dir:
            return Path(rewritten)
    return place.root


def decode_secret(data: Mapping[str, str] | None) -> dict[str, bytes]:
    """A Secret's `data` (base64) as bytes."""
    return {key: base64.b64decode(value) for key, value in (data or {}).items()}


def encode_config_map(data: Mapping[str, str] | None, binary: Mapping[str, str] | None) -> dict[str, bytes]:
    """A ConfigMap's `data` and `binaryData` as bytes."""
    out = {key: value.encode() for key, value in (data or {}).items()}
    out.update({key: base64.b64decode(value) for key, value in (binary or {}).items()})
    return out
