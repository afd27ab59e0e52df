"""Pure parser for `cilium status [--verbose]` / `cilium-dbg status` (the agent) and the cilium-cli
summary (the ASCII-art box): which datapath a node runs, read from what users paste.

The agent prints 'Key:   value' lines with indented detail blocks under some keys; every
top-level value is kept raw in `fields` (nothing is lost to a key this parser does not know),
and the datapath-deciding ones are decoded: kube-proxy replacement, host routing, masquerading,
tunnel vs native routing, proxy redirects, IPAM use, controllers, cluster health, map sizes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from cnitrace.collectors.base import Warnings, strip_provenance
from cnitrace.collectors.pasted import is_command, is_fence, prompt_command


@dataclasses.dataclass(frozen=True)
class CiliumStatus:
    """One `cilium status` dump. Fields the dump did not print are None (or empty)."""

    source: str                                   # 'agent' (cilium[-dbg] status) | 'cli' (cilium-cli box) | ''
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)   # every top-level 'Key: value', raw
    cilium_state: str | None = None               # 'Ok' / 'OK' / 'Warning' / '1 errors' ...
    version: str | None = None                    # '1.14.5' (agent line 'Cilium: Ok 1.14.5 (v1.14.5-...)')
    kvstore: str | None = None                    # 'Disabled', or the kvstore's state
    kubernetes: str | None = None                 # 'Ok' ...
    kube_proxy_replacement: str | None = None     # True/False/Strict/Partial/Probe/Disabled
    kpr_devices: tuple[str, ...] = ()
    host_routing: str | None = None               # 'BPF' | 'Legacy'
    routing_network: str | None = None            # 'Tunnel [vxlan]' | 'Native' (1.15+ 'Routing:' line)
    masquerading: str | None = None               # 'BPF' | 'IPTables' | 'Disabled'
    encryption: str | None = None                 # 'Disabled' | 'Wireguard ...' | 'IPsec ...'
    ipam: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)   # 'IPv4' -> (used, size)
    controllers: tuple[int, int] | None = None    # (healthy, total)
    proxy_ok: bool | None = None
    proxy_ip: str | None = None
    proxy_redirects: int | None = None
    proxy_ports: str | None = None                # '10000-20000'
    cluster_health: tuple[int, int] | None = None  # (reachable, total)
    bpf_maps: Mapping[str, int] = dataclasses.field(default_factory=dict)   # verbose 'BPF Maps' sizes
    components: Mapping[str, str] = dataclasses.field(default_factory=dict)  # cli box: 'Operator' -> 'OK'
    cluster_pods: tuple[int, int] | None = None   # cli: (managed, total)
    images: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # cli: 'cilium' -> images
    warnings: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.warnings)


_LOG_PREFIX = re.compile(r"^\[\d{4}-\d\d-\d\dT[^\]]{1,40}\]\s?")       # CI logs: '[2023-06-07T10:29:42.410Z] '
_ART = re.compile(r"^[\s/¯\\_]*(?=[A-Z])")                           # the cli box's ASCII art
_KV = re.compile(r"^([A-Z][\w .()/-]{0,40}?):(?:\s+(.*?))?\s*$")
_FRACTION = re.compile(r"(\d+)\s*/\s*(\d+)")
_BOX_KEYS = ("Cilium", "Operator", "Hubble", "Hubble Relay", "ClusterMesh", "Envoy DaemonSet", "Envoy")


def _first_word(v: str | None) -> str | None:
    return v.split()[0] if v and v.split() else None


def _fraction(v: str | None) -> tuple[int, int] | None:
    m = _FRACTION.search(v or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _lines(text: str) -> list[tuple[int, str]]:
    """(indent, line) without CI-log timestamps, fences, prompts, commands and kubectl notices;
    indentation kept relative to the shallowest 'Key:' line (docs indent whole blocks)."""
    raw: list[str] = []
    for line in strip_provenance(text).splitlines():
        # Cilium's CI harness prints ' \t ' before the first line of a command's output, '\t ' before the rest
        line = _LOG_PREFIX.sub("", line)
        line = (line[1:] if line.startswith(" \t") else line).replace("\t", " ").rstrip()
        s = line.strip()
        if (not s or is_fence(s) or s.startswith(("Defaulted container", "Stderr:", "Stdout:", "Exitcode:", "cmd:"))
                or s.strip(".…[]() ") == "" or s.lower() in ("<snip>", "(truncated)")):   # where a paste was cut
            continue
        if prompt_command(s) is not None or is_command(s, "cilium", "cilium-dbg"):
            continue
        raw.append(line)
    margins = [len(x) - len(x.lstrip()) for x in raw if _KV.match(x.strip())]
    base = min(margins) if margins else 0
    return [(len(x) - len(x.lstrip()) - base, x.strip()) for x in raw]


def _proxy(v: str) -> dict:
    """'OK, ip 10.0.0.1, 3 redirects active on ports 10000-20000, Envoy: embedded' (or 'port-range')."""
    out: dict = {"proxy_ok": v.upper().startswith("OK")}
    if (m := re.search(r"\bip ([0-9a-fA-F.:]+)", v)):
        out["proxy_ip"] = m.group(1).rstrip(",")
    if (m := re.search(r"(\d+) redirects active", v)):
        out["proxy_redirects"] = int(m.group(1))
    if (m := re.search(r"(?:ports|port-range) (\d+-\d+)", v)):
        out["proxy_ports"] = m.group(1)
    return out


def _kpr(v: str) -> dict:
    mode = _first_word(v)
    devs = re.search(r"\[(.*)\]", v)
    names = []
    if devs:
        for part in devs.group(1).split(","):
            w = part.split()
            if w and not w[0][0].isupper():   # '[NodePort, ExternalIPs]' (1.7) lists features, not devices
                names.append(w[0])
    return {"kube_proxy_replacement": mode, "kpr_devices": tuple(names)}


def _decode(fields: dict[str, str]) -> dict:
    """The datapath-deciding values of the agent's top-level fields."""
    out: dict = {}
    if "Cilium" in fields:
        c = fields["Cilium"].split()
        out["cilium_state"] = c[0] if c else None
        if len(c) > 1 and re.match(r"\d+\.\d+", c[1]):
            out["version"] = c[1]
    if "KVStore" in fields:
        # `Ok   Disabled` (no kvstore), `Ok   etcd: 1/1 connected: http://…:2379 - 3.2.5 (Leader)`,
        # `Failure   Err: …`: "Disabled", else the health word before the backend's own detail
        kv = fields["KVStore"].split()
        out["kvstore"] = "Disabled" if "Disabled" in kv[:2] else (kv[0] if kv else None)
    out["kubernetes"] = _first_word(fields.get("Kubernetes"))
    if "KubeProxyReplacement" in fields:
        out.update(_kpr(fields["KubeProxyReplacement"]))
    out["host_routing"] = _first_word(fields.get("Host Routing"))
    if "Routing" in fields:
        r = fields["Routing"]
        if (m := re.search(r"Network:\s*(.*?)\s*(?:Host:|$)", r)):
            out["routing_network"] = m.group(1).strip()
        if (m := re.search(r"Host:\s*(\S+)", r)):
            out["host_routing"] = m.group(1)
    out["masquerading"] = _first_word(fields.get("Masquerading"))
    out["encryption"] = fields.get("Encryption") or None
    ipam = {f: (int(a), int(b)) for f, a, b in re.findall(r"(IPv[46]):\s*(\d+)/(\d+)", fields.get("IPAM", ""))}
    out["ipam"] = ipam
    out["controllers"] = _fraction(fields.get("Controller Status"))
    if "Proxy Status" in fields:
        out.update(_proxy(fields["Proxy Status"]))
    out["cluster_health"] = _fraction(fields.get("Cluster health"))
    return out


def _cli(lines: list[tuple[int, str]], w: Warnings) -> dict:
    """The cilium-cli summary: box components, Cluster Pods, Image versions (continuation rows)."""
    comps: dict[str, str] = {}
    images: dict[str, list[str]] = {}
    pods = None
    block = ""
    for _, s in lines:
        t = _ART.sub("", s)
        m = _KV.match(t)
        if m and m.group(1) in _BOX_KEYS and t != s:
            comps[m.group(1)] = m.group(2) or ""
            continue
        if t.startswith("Image versions"):
            block = "images"
            t = t[len("Image versions"):].strip()
        elif m and m.group(1) == "Cluster Pods":
            pods = _fraction(m.group(2))
            block = ""
            continue
        elif m or t.startswith(("Deployment", "DaemonSet")):
            block = ""
            continue
        if block == "images":
            parts = t.split()
            if len(parts) >= 2:
                images.setdefault(parts[0], []).append(parts[1].rsplit(":", 1)[0] if parts[1].count(":") > 1 else parts[1])
    if not comps:
        w.add("cilium-cli summary without its component box")
    return {"components": comps, "cluster_pods": pods, "images": {k: tuple(v) for k, v in images.items()}}


def parse_status(text: str) -> CiliumStatus:
    """Parse `cilium status` / `cilium-dbg status [--verbose]` or cilium-cli's `cilium status`.
    Never raises: what cannot be read becomes a one-line warning."""
    w = Warnings()
    lines = _lines(text)
    if not lines:
        return CiliumStatus("", warnings=("empty cilium status",))
    if any("¯" in s or s.startswith(("/¯¯", "\\__")) for _, s in lines):
        cli = _cli(lines, w)
        comps = cli["components"]
        return CiliumStatus("cli", {k: v for k, v in comps.items()}, comps.get("Cilium"), None,
                            warnings=w.freeze(), **cli)
    fields: dict[str, str] = {}
    block = ""
    maps: dict[str, int] = {}
    for indent, s in lines:
        m = _KV.match(s)
        if indent <= 0 and m:
            block = m.group(1)
            fields[block] = m.group(2) or ""
            continue
        if block == "BPF Maps" and (mm := re.match(r"^(\S+)\s+(\d+)$", s)):
            maps[mm.group(1)] = int(mm.group(2))
        elif indent <= 0 and not m:
            w.add(f"unrecognised status line: {s[:120]}")
    if not fields:
        w.add("no 'Key: value' status lines")
    d = _decode(fields)
    return CiliumStatus("agent", fields, bpf_maps=maps, warnings=w.freeze(), **{k: v for k, v in d.items() if v is not None})
