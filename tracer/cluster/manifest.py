"""The Kubernetes objects that run `cnitrace agent` on every node (pure: options in, YAML out).

A Namespace (labelled for the `privileged` Pod Security level the agent needs), a ServiceAccount
with no API token (the agent never calls the API server; the kubectl plugin reaches the agents
through the API server's pod proxy), a headless Service for Prometheus to discover the agents,
and the DaemonSet: privileged, host network and PID namespace (the kernel's datapath, the
node's network namespaces and processes), the host paths it reads mounted read-only where it
only reads them, bounded resources, the Linux node selector and a toleration of every taint
(a cliff on a tainted node is still a cliff), and a liveness probe on /healthz.

The shipped `daemonset.yaml` beside this file is `render(ManifestConfig())`; a unit test keeps
them equal. YAML is written by a small emitter here (no PyYAML dependency): every string that
plain YAML could misread (numbers, booleans, `*`, `:`) is double-quoted.
"""

from __future__ import annotations

import dataclasses
import json
import re
from importlib import resources
from typing import Any

from cnitrace import __version__
from cnitrace.core.errors import UsageError

APP = "cnitrace-agent"
CONTAINER = "agent"
COMMAND = ("cnitrace", "agent")       # the Containerfile's ENTRYPOINT (a unit test keeps them equal)
DEFAULT_NAMESPACE = "cnitrace"
DEFAULT_IMAGE = f"ghcr.io/cnitrace/cnitrace:{__version__}"
DEFAULT_PORT = 9477
NAME_LABEL = "app.kubernetes.io/name"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")


@dataclasses.dataclass(frozen=True)
class ManifestConfig:
    namespace: str = DEFAULT_NAMESPACE
    image: str = DEFAULT_IMAGE
    listen_port: int = DEFAULT_PORT
    node_selector: tuple[tuple[str, str], ...] = ()     # added to kubernetes.io/os=linux
    ifaces: tuple[str, ...] = ()                         # passed to the agent as --iface (default: its own)
    window: float | None = None                          # the agent's --window seconds (default: its own)

    def validate(self) -> None:
        if not _DNS_LABEL.match(self.namespace):
            raise UsageError(f"--namespace {self.namespace!r}: not a valid namespace name (RFC 1123 label)")
        if not _IMAGE.match(self.image):
            raise UsageError(f"--image {self.image!r}: not an image reference")
        if not 1 <= self.listen_port <= 65535:
            raise UsageError(f"--listen-port {self.listen_port}: choose 1..65535")
        for k, v in self.node_selector:
            if not _LABEL_KEY.match(k) or not _LABEL_VALUE.match(v):
                raise UsageError(f"--node-selector {k}={v}: not a valid label KEY=VALUE")
        for g in self.ifaces:
            if not re.match(r"^[A-Za-z0-9_.*?\[\]/-]{1,64}$", g):
                raise UsageError(f"--iface {g!r}: not an interface glob")
        if self.window is not None and not self.window > 0:
            raise UsageError(f"--window {self.window}: must be positive")


def parse_selector(text: str) -> tuple[str, str]:
    """'KEY=VALUE' → (key, value); one clear error otherwise."""
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise UsageError(f"--node-selector {text!r}: use KEY=VALUE")
    return k, v


def agent_args(cfg: ManifestConfig) -> list[str]:
    args = ["--listen", f"0.0.0.0:{cfg.listen_port}"]
    for g in cfg.ifaces:
        args += ["--iface", g]
    if cfg.window is not None:
        args += ["--window", f"{cfg.window:g}"]
    return args


# (name, host path, mount path, read-only, hostPath type, mount propagation or None, why)
MOUNTS: tuple[tuple[str, str, str, bool, str, str | None, str], ...] = (
    ("bpffs", "/sys/fs/bpf", "/sys/fs/bpf", False, "Directory", None, "BPF programs, maps and pins"),
    ("sys-kernel", "/sys/kernel", "/sys/kernel", True, "Directory", None,
     "tracefs (/sys/kernel/tracing), debugfs, BTF (/sys/kernel/btf)"),
    ("netns", "/run/netns", "/run/netns", True, "DirectoryOrCreate", "HostToContainer",
     "the node's named network namespaces, new ones included"),
    ("lib-modules", "/lib/modules", "/lib/modules", True, "Directory", None, "kernel headers for bcc (build link)"),
    ("usr-src", "/usr/src", "/usr/src", True, "Directory", None, "the headers /lib/modules/*/build points to"),
    ("host-proc", "/proc", "/host/proc", True, "Directory", None, "processes' network namespaces (/proc/PID/ns/net)"),
    ("run-cnitrace", "/run/cnitrace", "/run/cnitrace", False, "DirectoryOrCreate", None,
     "state files recording every object the agent creates, so a host `cnitrace cleanup` sees them"),
    ("cache", "/var/cache/cnitrace", "/var/cache/cnitrace", False, "DirectoryOrCreate", None,
     "the node's calibration cache, kept across restarts"),
    ("xtables-lock", "/run/xtables.lock", "/run/xtables.lock", False, "FileOrCreate", None,
     "iptables' lock, shared with kube-proxy and the CNI"),
)


def objects(cfg: ManifestConfig) -> list[dict[str, Any]]:
    """The Kubernetes objects, in apply order."""
    cfg.validate()
    labels = {NAME_LABEL: APP, "app.kubernetes.io/part-of": "cnitrace", "app.kubernetes.io/version": __version__}
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(cfg.listen_port),
              "prometheus.io/path": "/metrics"}
    meta = {"name": APP, "namespace": cfg.namespace, "labels": labels}
    port = {"name": "http", "containerPort": cfg.listen_port, "protocol": "TCP"}
    # /healthz is 503 until the first window closes (the calibration runs once before it): liveness
    # waits for that, readiness tells the Service when the agent serves figures.
    probe = {"httpGet": {"path": "/healthz", "port": cfg.listen_port}, "initialDelaySeconds": 120,
             "periodSeconds": 30, "timeoutSeconds": 5, "failureThreshold": 3}
    container = {
        "name": CONTAINER, "image": cfg.image, "imagePullPolicy": "IfNotPresent",
        "command": list(COMMAND), "args": agent_args(cfg),
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "CNITRACE_CACHE_DIR", "value": "/var/cache/cnitrace"}],
        "ports": [port],
        "securityContext": {"privileged": True, "runAsUser": 0, "allowPrivilegeEscalation": True},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                      "limits": {"cpu": "1", "memory": "1Gi"}},
        "livenessProbe": probe,
        "readinessProbe": {**probe, "initialDelaySeconds": 5, "periodSeconds": 10},
        "volumeMounts": [{"name": n, "mountPath": mp, "readOnly": ro, **({"mountPropagation": prop} if prop else {})}
                         for n, _, mp, ro, _, prop, _ in MOUNTS],
    }
    selector = {"kubernetes.io/os": "linux", **dict(cfg.node_selector)}
    pod = {
        "metadata": {"labels": labels, "annotations": scrape},
        "spec": {
            "serviceAccountName": APP, "automountServiceAccountToken": False,
            "hostNetwork": True, "hostPID": True, "dnsPolicy": "ClusterFirstWithHostNet",
            "nodeSelector": selector,
            "tolerations": [{"operator": "Exists"}],
            "terminationGracePeriodSeconds": 30,
            "containers": [container],
            "volumes": [{"name": n, "hostPath": {"path": hp, "type": t}} for n, hp, _, _, t, _, _ in MOUNTS],
        },
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": cfg.namespace, "labels": {"pod-security.kubernetes.io/enforce": "privileged",
                                                        "app.kubernetes.io/part-of": "cnitrace"}}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta, "automountServiceAccountToken": False},
        {"apiVersion": "v1", "kind": "Service", "metadata": {**meta, "annotations": scrape},
         "spec": {"clusterIP": "None", "selector": {NAME_LABEL: APP},
                  "ports": [{"name": "http", "port": cfg.listen_port, "targetPort": cfg.listen_port,
                             "protocol": "TCP"}]}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta,
         "spec": {"selector": {"matchLabels": {NAME_LABEL: APP}},
                  "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                  "template": pod}},
    ]


def render(cfg: ManifestConfig) -> str:
    """The objects as one multi-document YAML text, with a header saying how it was made."""
    head = ("# cnitrace agent on every node: generated by `cnitrace k8s manifest"
            + _argv_text(cfg) + "` (tracer/cluster/manifest.py).\n"
            "# Privileged with the host's network and PID namespaces: it attaches BPF programs to the node's\n"
            "# kernel and reads its iptables/nftables/OVS counters. Apply: kubectl apply -f daemonset.yaml\n")
    return head + "".join("---\n" + to_yaml(o) for o in objects(cfg))


def _argv_text(cfg: ManifestConfig) -> str:
    d = ManifestConfig()
    parts = []
    if cfg.namespace != d.namespace:
        parts.append(f"--namespace {cfg.namespace}")
    if cfg.image != d.image:
        parts.append(f"--image {cfg.image}")
    if cfg.listen_port != d.listen_port:
        parts.append(f"--listen-port {cfg.listen_port}")
    parts += [f"--node-selector {k}={v}" for k, v in cfg.node_selector]
    parts += [f"--iface '{g}'" for g in cfg.ifaces]
    if cfg.window is not None:
        parts.append(f"--window {cfg.window:g}")
    return "".join(" " + p for p in parts)


def shipped() -> str:
    """The default manifest as shipped in the package (tracer/cluster/daemonset.yaml)."""
    return resources.files("cnitrace.cluster").joinpath("daemonset.yaml").read_text(encoding="utf-8")


# --- a small YAML emitter -------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_RESERVED = {"y", "yes", "n", "no", "true", "false", "on", "off", "null", "~"}


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    s = str(v)
    if _PLAIN.match(s) and s.lower() not in _RESERVED:
        return s
    return json.dumps(s, ensure_ascii=False)   # a JSON string is a valid YAML double-quoted scalar


def _inline(v: Any) -> str:
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return _scalar(v)


def to_yaml(obj: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars (insertion order kept)."""
    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        out = []
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{_scalar(k)}:\n" + to_yaml(v, indent + (1 if isinstance(v, dict) else 0)))
            else:
                out.append(f"{pad}{_scalar(k)}: {_inline(v)}\n")
        return "".join(out)
    if isinstance(obj, list):
        out = []
        for v in obj:
            if isinstance(v, dict) and v:
                out.append(f"{pad}- " + to_yaml(v, indent + 1)[len(pad) + 2:])
            elif isinstance(v, list) and v:
                out.append(f"{pad}-\n" + to_yaml(v, indent + 1))
            else:
                out.append(f"{pad}- {_inline(v)}\n")
        return "".join(out)
    return pad + _scalar(obj) + "\n"
