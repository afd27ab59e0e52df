"""Collecting per-node profile documents from the agents, through a fetcher.

A fetcher lists the agents (targets) and fetches one agent's `/report.json`. Two exist:
`KubectlFetcher` finds the agent pods with `kubectl get pods -l app.kubernetes.io/name=
cnitrace-agent -o json` and reaches each through the API server's pod proxy (`kubectl get --raw
/api/v1/namespaces/NS/pods/POD:PORT/proxy/report.json`), so nothing but kubectl's own access is
needed; `UrlFetcher` reads agents' URLs directly (`--endpoints`, for local agents and tests).
`collect()` is the same for both, so the plugin's collection code runs without a cluster.

Parsing (`parse_pods`) is pure; kubectl runs through the Runner seam with an argv list.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from cnitrace.cluster.manifest import APP, CONTAINER, DEFAULT_NAMESPACE, DEFAULT_PORT, NAME_LABEL
from cnitrace.core.errors import ToolError, UsageError
from cnitrace.core.runner import Runner
from cnitrace.reports.load import parse_profile

FETCH_TIMEOUT = 20.0


@dataclasses.dataclass(frozen=True)
class Target:
    """One agent: the node it runs on (None: learnt from its document) and where to reach it."""

    node: str | None
    where: str                 # pod (NS/POD:PORT) or URL: how reports and errors name the source
    pod: str | None = None
    namespace: str | None = None
    port: int | None = None
    url: str | None = None


class Fetcher(Protocol):
    def targets(self) -> tuple[list[Target], list[str]]: ...

    def fetch(self, target: Target) -> str: ...


# --- pure parsing -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AgentPod:
    name: str
    namespace: str
    node: str | None
    phase: str
    ready: bool
    port: int


def parse_pods(text: str, default_port: int = DEFAULT_PORT) -> list[AgentPod]:
    """`kubectl get pods -o json` (a v1 List, or one Pod) → the agent pods. The port is the
    container port named `http` of the agent container (the manifest's), else `default_port`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ToolError(f"kubectl get pods: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ToolError("kubectl get pods: not a JSON object")
    items = data.get("items") if data.get("kind") != "Pod" else [data]
    if not isinstance(items, list):
        raise ToolError("kubectl get pods: no items list in the output")
    out = []
    for it in items:
        if not isinstance(it, dict) or it.get("kind", "Pod") != "Pod":
            continue
        meta, spec, status = (it.get(k) if isinstance(it.get(k), dict) else {} for k in ("metadata", "spec", "status"))
        if not meta.get("name"):
            continue
        port = default_port
        for c in spec.get("containers") or ():
            if isinstance(c, dict) and (c.get("name") == CONTAINER or len(spec["containers"]) == 1):
                port = next((p["containerPort"] for p in c.get("ports") or ()
                             if isinstance(p, dict) and p.get("name") == "http" and isinstance(p.get("containerPort"), int)),
                            port)
        ready = any(isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or ())
        out.append(AgentPod(meta["name"], meta.get("namespace") or "", spec.get("nodeName") or None,
                            status.get("phase") or "Unknown", ready, port))
    return out


def proxy_path(namespace: str, pod: str, port: int, path: str = "report.json") -> str:
    """The API server's pod-proxy path to an agent's endpoint."""
    q = urllib.parse.quote
    return f"/api/v1/namespaces/{q(namespace, safe='')}/pods/{q(pod, safe='')}:{port}/proxy/{path}"


# --- fetchers ----------------------------------------------------------------------------------------

def find_kubectl() -> str:
    """kubectl from the user's PATH (as `kubectl cnitrace` itself was found)."""
    path = shutil.which("kubectl")
    if not path:
        raise ToolError("kubectl: not found on PATH (the plugin talks to the cluster through it)")
    return path


class KubectlFetcher:
    """Agents in a cluster, through kubectl: pods by label, documents through the pod proxy."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, *, context: str | None = None,
                 kubectl: str | None = None, runner: Runner | None = None, timeout: float = FETCH_TIMEOUT):
        self.namespace, self.context, self.timeout = namespace, context, timeout
        self.kubectl = kubectl or find_kubectl()
        self.runner = runner or Runner()

    def argv(self, *args: str) -> list[str]:
        return [self.kubectl, *(["--context", self.context] if self.context else []), *args]

    def pods_argv(self) -> list[str]:
        return self.argv("get", "pods", "--namespace", self.namespace, "-l", f"{NAME_LABEL}={APP}", "-o", "json")

    def pods(self) -> list[AgentPod]:
        done = self.runner.run(self.pods_argv(), timeout=self.timeout)
        return parse_pods(done.stdout)

    def targets(self) -> tuple[list[Target], list[str]]:
        pods = self.pods()
        if not pods:
            raise ToolError(f"no cnitrace agent pods in namespace {self.namespace} "
                            f"(label {NAME_LABEL}={APP}); deploy them with `cnitrace k8s manifest | kubectl apply -f -`")
        out, warnings = [], []
        for p in pods:
            if p.phase != "Running" or not p.node:
                warnings.append(f"pod {p.namespace}/{p.name}: {p.phase}"
                                + (f" on {p.node}" if p.node else ", not scheduled") + ": skipped")
                continue
            out.append(Target(p.node, f"{p.namespace}/{p.name}:{p.port}", pod=p.name,
                              namespace=p.namespace or self.namespace, port=p.port))
        return out, warnings

    def fetch(self, target: Target) -> str:
        done = self.runner.run(self.argv("get", "--raw", proxy_path(target.namespace, target.pod, target.port)),
                               timeout=self.timeout)
        return done.stdout

    def exec_argv(self, pod: str, *cmd: str) -> list[str]:
        return self.argv("exec", "--namespace", self.namespace, pod, "-c", CONTAINER, "--", *cmd)

    def profile(self, target: Target, ifaces: Sequence[str], duration: float,
                say: Callable[[str], None] = lambda _m: None) -> str:
        """Run `cnitrace profile` in the node's agent pod and return its JSON document.

        Three execs with argv lists (no shell in the pod): the profile writes its document to a
        file named for this run in the container's /tmp, `cat` reads it back, `rm` removes it.
        """
        out = f"/tmp/cnitrace-kubectl-{uuid.uuid4().hex[:12]}.json"
        cmd = ["cnitrace", "profile", *[a for g in ifaces for a in ("--iface", g)], "--duration", f"{duration:g}",
               "--json", out]
        say(f"{target.node}: cnitrace profile in pod {target.pod} ({duration:g} s)")
        try:
            self.runner.run(self.exec_argv(target.pod, *cmd), timeout=duration + 120.0)
            return self.runner.run(self.exec_argv(target.pod, "cat", out), timeout=self.timeout).stdout
        finally:
            self.runner.run(self.exec_argv(target.pod, "rm", "-f", out), timeout=self.timeout, check=False)


class UrlFetcher:
    """Agents at known URLs (`--endpoints http://127.0.0.1:9477,...`): their /report.json."""

    def __init__(self, endpoints: Iterable[str], timeout: float = FETCH_TIMEOUT):
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
        if not self.endpoints:
            raise UsageError("--endpoints: give at least one URL")

    def targets(self) -> tuple[list[Target], list[str]]:
        return [Target(None, u, url=u) for u in self.endpoints], []

    def fetch(self, target: Target) -> str:
        url = target.url.rstrip("/") + "/report.json"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as r:
                return r.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            raise ToolError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ToolError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def parse_endpoint(text: str) -> str:
    u = urllib.parse.urlsplit(text.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"--endpoints {text!r}: use http://HOST:PORT")
    return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path.rstrip("/"), "", ""))


def split_endpoints(values: Iterable[str]) -> list[str]:
    return [e for v in values for e in v.split(",") if e.strip()]


# --- collection --------------------------------------------------------------------------------------

def parse_document(text: str, where: str) -> dict[str, Any]:
    """An agent's answer → a valid profile document, or one clear error line."""
    try:
        return parse_profile(text, where)
    except UsageError as exc:       # the agent's answer, not the user's input
        raise ToolError(exc.message) from None


def collect(fetcher: Fetcher, nodes: Sequence[str] = ()) -> tuple[list[tuple[str, str | None, dict]], list[str]]:
    """Every agent's last-window document: [(source, node name or None, document)] and warnings
    (an agent that cannot be reached or answers badly is a warning, never the end of the rest)."""
    targets, warnings = fetcher.targets()
    if nodes:   # a pod skipped elsewhere is no news for the nodes asked about
        warnings = [w for w in warnings if any(f" on {n}:" in w for n in nodes)]
        known = {t.node for t in targets}
        missing = [n for n in nodes if n not in known and None not in known]
        if missing:
            raise UsageError(f"no running cnitrace agent on node(s) {', '.join(missing)}"
                             + (f" (agents on: {', '.join(sorted(k for k in known if k))})" if known else ""))
    docs = []
    for t in targets:
        if nodes and t.node is not None and t.node not in nodes:
            continue
        try:
            docs.append((t.where, t.node, parse_document(fetcher.fetch(t), t.where)))
        except ToolError as exc:
            warnings.append(exc.message)
    return docs, warnings


def named_docs(docs: Sequence[tuple[str, str | None, Mapping]], nodes: Sequence[str]) -> list:
    """With a fetcher that learns node names only from the documents (URLs), keep the asked nodes."""
    if not nodes:
        return list(docs)
    from cnitrace.cluster.merge import node_name
    return [d for d in docs if (d[1] or node_name(d[2])) in nodes]
