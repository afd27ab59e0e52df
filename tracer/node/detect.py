"""Which CNI(s) and which kube-proxy mode a node runs, from node-local evidence only.

Why node-local: cnitrace runs where the API server may be unreachable (a broken node, a lab
VM), and a CNI leaves unmistakable traces in the kernel — interface names, iptables chain
prefixes, OVS bridges, pinned BPF maps, tc programs. Detection is a pure function of an
Evidence value (tested against real captured output); `gather_evidence` is the only I/O,
and it can look into any network namespace.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from cnitrace.core.errors import CnitraceError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner

CILIUM_GLOBALS = Path("/sys/fs/bpf/tc/globals")
OVSDB_SOCK = Path("/run/openvswitch/db.sock")


@dataclasses.dataclass(frozen=True)
class Evidence:
    links: tuple[str, ...] = ()
    iptables_chains: tuple[tuple[str, str], ...] = ()   # (backend "legacy"/"nft", chain)
    nft_tables: tuple[str, ...] = ()                    # "ip kube-proxy", "inet calico"
    ovs_bridges: tuple[str, ...] = ()
    bpf_pins: tuple[str, ...] = ()                      # names under /sys/fs/bpf/tc/globals
    tc_programs: tuple[tuple[str, str], ...] = ()       # (device, program name)
    warnings: tuple[str, ...] = ()                      # sources that could not be read
    ipsets: tuple[str, ...] = ()                        # ipset names (weave-*, KUBE-SRC-*, cali40*)


@dataclasses.dataclass(frozen=True)
class Detection:
    cni: str
    evidence: tuple[str, ...]
    confidence: str   # "strong": a CNI-specific trace; "weak": only traces other CNIs share (cni0)

    def to_json(self) -> dict[str, Any]:
        return {"cni": self.cni, "confidence": self.confidence, "evidence": list(self.evidence)}


@dataclasses.dataclass(frozen=True)
class KubeProxy:
    mode: str          # "iptables" | "ipvs" | "nftables" | "none"
    reason: str
    evidence: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Rule:
    """The traces one CNI leaves. Regexes match whole names; chain entries are prefixes."""

    links: tuple[str, ...] = ()
    weak_links: tuple[str, ...] = ()
    chains: tuple[str, ...] = ()
    nft_tables: tuple[str, ...] = ()
    bridges: tuple[str, ...] = ()
    pins: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    ipsets: tuple[str, ...] = ()


RULES: dict[str, Rule] = {
    "calico": Rule(links=(r"cali[0-9a-f]{4,}",), chains=("cali-",), nft_tables=(r"\S+ calico",),
                   pins=(r"cali_\w+",), programs=(r"cali(co)?_\w+",)),
    "cilium": Rule(links=(r"lxc[0-9a-f]{4,}", r"lxc_health", r"cilium_(host|net|vxlan|geneve)"),
                   chains=("CILIUM_",), pins=(r"cilium_\w+",),
                   programs=(r"cil_[\w-]+", r"bpf_(lxc|host|network|overlay|xdp|host_cilium_net)\.o:\[[\w-]+\]")),
    "antrea": Rule(links=(r"antrea-(gw|tun|egress)\d*",), chains=("ANTREA-",), bridges=(r"br-int",),
                   nft_tables=(r"\S+ antrea",)),
    "kube-router": Rule(links=(r"kube-bridge", r"kube-dummy-if"),
                        chains=("KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-")),
    # weave-npc's chains and weave-<shortName> ipsets; the weave bridge, vethwepl<id> pod veths and the
    # router's vethwe-bridge/-pcap/-datapath ports; "datapath" is fastdp's OVS datapath (weak alone).
    "weave": Rule(links=(r"weave", r"vethwe(-|pl)\S+", r"vxlan-6784"), weak_links=(r"datapath",),
                  chains=("WEAVE-NPC", "WEAVE"), ipsets=(r"weave-\S+", r"weaver-no-masq-local")),
    # flannel's nftables mode (EnableNFTables) keeps its masquerade and forward rules in
    # `ip flannel-ipv4` / `ip6 flannel-ipv6`
    "flannel": Rule(links=(r"flannel[.-]\S+",), weak_links=(r"cni0",), chains=("FLANNEL-",),
                    nft_tables=(r"\S+ flannel-ipv[46]",)),
}


# --- pure parsers (real output in tests/fixtures/detect) ---------------------------------------

_LINK = re.compile(r"^(?:\d+:\s+)?([^\s:@]+)(?:@[^\s:]+)?:\s+<")


# `inet 10.96.0.10/32 scope global kube-ipvs0`: `ip addr` ends an address line with the interface
# (or its label, `eth0:1`), so a paste that starts below an interface's header still names it
_ADDR_LABEL = re.compile(r"^\s*inet\s+\S+.*\sscope\s+\S+\s+(?:(?:secondary|dynamic|noprefixroute|deprecated|"
                         r"tentative|temporary)\s+)*([^\s:]+)(?::\S*)?\s*$")


def parse_links(text: str) -> tuple[str, ...]:
    """Interface names from `ip link` / `ip -o link` / `ip addr` output (the index may be cut off),
    and from `ip addr`'s address lines."""
    names = []
    for line in text.splitlines():
        m = _LINK.match(line) or _ADDR_LABEL.match(line)
        if m:
            names.append(m.group(1))
    return tuple(dict.fromkeys(names))


def parse_iptables_chains(text: str) -> tuple[str, ...]:
    """Chain names from iptables-save (':NAME'), iptables -S ('-N NAME') or iptables -L ('Chain NAME')."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(":") and len(line) > 1:
            out.append(line[1:].split()[0])
        elif line.startswith(("-N ", "-A ")) and len(line.split()) > 1:
            out.append(line.split()[1])
        elif line.startswith("Chain ") and len(line.split()) > 1:
            out.append(line.split()[1])
    return tuple(dict.fromkeys(out))


def parse_ipset_names(text: str) -> tuple[str, ...]:
    """Set names from `ipset list -n` (one per line), `ipset list` ('Name: X') or `ipset save` ('create X')."""
    out, bare = [], []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Name: "):
            out.append(line[6:].strip())
        elif line.startswith("create ") and len(line.split()) > 2:
            out.append(line.split()[1])
        elif line and not line.startswith("#") and len(line.split()) == 1 and ":" not in line[:1]:
            bare.append(line)
    return tuple(dict.fromkeys(out or bare))


def parse_nft_tables(text: str) -> tuple[str, ...]:
    """'family name' from `nft list tables` or `nft list ruleset`."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^table\s+(\w+)\s+([\w.-]+)", line.strip())
        if m:
            out.append(f"{m.group(1)} {m.group(2)}")
    return tuple(dict.fromkeys(out))


def parse_nft_chains(text: str) -> tuple[str, ...]:
    """Chains defined ('chain X {') or jumped to ('jump X', 'goto X') in `nft list ruleset`."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s*chain\s+([\w.-]+)\s*\{", line)
        if m:
            out.append(m.group(1))
        out += re.findall(r"\b(?:jump|goto)\s+([\w.-]+)", line)
    return tuple(dict.fromkeys(out))


def parse_ovs_show(text: str) -> tuple[str, ...]:
    """Bridge names from `ovs-vsctl show` (or one per line from `ovs-vsctl list-br`)."""
    named = re.findall(r"^\s*Bridge\s+\"?([\w.-]+)\"?\s*$", text, flags=re.M)
    if named or "Bridge" in text:
        return tuple(dict.fromkeys(named))
    return tuple(l.strip() for l in text.splitlines() if l.strip() and not l.startswith("#"))


def parse_bpftool_net(text: str) -> tuple[tuple[str, str], ...]:
    """(device, program) from `bpftool -j net show` (JSON) or `bpftool net show` (text)."""
    text = text.strip()
    out: list[tuple[str, str]] = []
    if text.startswith("["):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = []
        for block in doc if isinstance(doc, list) else []:
            for kind in ("tc", "xdp"):
                for e in block.get(kind, []) if isinstance(block, dict) else []:
                    name = e.get("name") or e.get("prog_name") or f"id {e.get('id', '?')}"
                    out.append((str(e.get("devname", "?")), str(name)))
        return tuple(out)
    for line in text.splitlines():
        m = re.match(r"^(\S+)\(\d+\)\s+(?:\S+/)?\S+\s+(\S+)(?:\s+id\s+\d+)?", line.strip())
        if m and not line.startswith(("xdp:", "tc:", "flow_dissector:")):
            out.append((m.group(1), m.group(2)))
    return tuple(out)


def evidence_from(*, ip_link: str = "", iptables: dict[str, str] | None = None, nft: str = "",
                  ovs: str = "", pins: Iterable[str] = (), bpftool_net: str = "",
                  warnings: Iterable[str] = (), ipset: str = "") -> Evidence:
    """Build Evidence from raw tool output.

    iptables maps backend name -> iptables-save text; nft is `nft list tables` or `nft list
    ruleset` (its chains count as backend "nftables": iptables-nft rules live there too);
    ovs is `ovs-vsctl show` or `ovs-vsctl list-br` output; ipset is `ipset list -n` (or list/save).
    """
    chains = [(backend, c) for backend, text in (iptables or {}).items() for c in parse_iptables_chains(text)]
    chains += [("nftables", c) for c in parse_nft_chains(nft)]
    return Evidence(parse_links(ip_link), tuple(dict.fromkeys(chains)), parse_nft_tables(nft),
                    parse_ovs_show(ovs), tuple(pins), parse_bpftool_net(bpftool_net), tuple(warnings),
                    parse_ipset_names(ipset))


# --- pure detection ----------------------------------------------------------------------------

def _full(patterns: Iterable[str], name: str) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)


def _cap(items: list[str], limit: int = 3) -> list[str]:
    """Keep the evidence list short: a few examples and a count of the rest."""
    return items if len(items) <= limit else [*items[:limit], f"+{len(items) - limit} more"]


_TC_ID = re.compile(r":\[\d+\]$")   # newer tc prints a program as `name:[id]` (`calico_from_hos:[417]`)


def detect_cnis(ev: Evidence) -> list[Detection]:
    """Every CNI whose traces are present, each with its evidence; several may be (e.g. Canal)."""
    found = []
    for cni, rule in RULES.items():
        strong: list[str] = []
        links = [l for l in ev.links if _full(rule.links, l)]
        strong += _cap([f"interface {l}" for l in links])
        chains = sorted({(c, b) for b, c in ev.iptables_chains if c.startswith(rule.chains)})
        strong += _cap([f"chain {c} ({'nft ruleset' if b == 'nftables' else 'iptables-' + b})"
                        for c, b in chains])
        strong += _cap([f"nft table {t}" for t in ev.nft_tables if _full(rule.nft_tables, t)])
        strong += [f"OVS bridge {b}" for b in ev.ovs_bridges if _full(rule.bridges, b)]
        strong += _cap([f"pinned map {p}" for p in ev.bpf_pins if _full(rule.pins, p)])
        strong += _cap([f"tc program {p} on {d}" if d else f"BPF program {p}" for d, p in ev.tc_programs
                        if _full(rule.programs, _TC_ID.sub("", p))])
        strong += _cap([f"ipset {s}" for s in ev.ipsets if _full(rule.ipsets, s)])
        weak = [f"interface {l}" for l in ev.links if _full(rule.weak_links, l)]
        if strong:
            found.append(Detection(cni, tuple(strong + weak), "strong"))
        elif weak:
            found.append(Detection(cni, tuple(weak), "weak"))
    return found


# kube-proxy's IPVS mode matches service addresses against these ipsets, from chains the iptables
# mode never creates (its NodePort chain is KUBE-NODEPORTS, plural)
IPVS_SETS = frozenset(f"KUBE-{v}{s}" for v in ("", "6-") for s in (   # KUBE-6-*: the IPv6 proxier's
    "CLUSTER-IP", "LOOP-BACK", "EXTERNAL-IP", "LOAD-BALANCER", "NODE-PORT-TCP", "NODE-PORT-UDP"))
IPVS_CHAINS = frozenset({"KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-LOOP-BACK"})


def detect_kube_proxy(ev: Evidence) -> KubeProxy:
    """kube-proxy's mode: IPVS (kube-ipvs0, or its KUBE-CLUSTER-IP ipset and IPVS-only chains),
    nftables (table kube-proxy), iptables (KUBE-SERVICES, or the per-service KUBE-SVC-/KUBE-SEP-
    chains a partial paste may hold without it)."""
    chains = {c for _, c in ev.iptables_chains}
    if "kube-ipvs0" in ev.links:
        return KubeProxy("ipvs", "interface kube-ipvs0", ("interface kube-ipvs0",))
    ipvs = [f"ipset {s}" for s in ev.ipsets if s in IPVS_SETS] + \
           [f"chain {c}" for c in sorted(chains & IPVS_CHAINS)]
    if ipvs:
        return KubeProxy("ipvs", ", ".join(ipvs[:3]), tuple(ipvs))
    nft = [t for t in ev.nft_tables if t.split()[-1] == "kube-proxy"]
    if nft:
        return KubeProxy("nftables", f"nft table {nft[0]}", tuple(f"nft table {t}" for t in nft))
    svcs = sum(1 for c in chains if c.startswith("KUBE-SVC-"))
    if "KUBE-SERVICES" in chains:
        return KubeProxy("iptables", f"chain KUBE-SERVICES, {svcs} KUBE-SVC-* chain(s)", ("chain KUBE-SERVICES",))
    seps = sum(1 for c in chains if c.startswith("KUBE-SEP-"))
    if svcs or seps:
        return KubeProxy("iptables", f"{svcs} KUBE-SVC-* and {seps} KUBE-SEP-* chain(s), no KUBE-SERVICES in the "
                         "dump (a partial one?)", (f"{svcs + seps} per-service chain(s)",))
    if any(d.cni == "cilium" for d in detect_cnis(ev)):
        return KubeProxy("none", "no kube-proxy traces; Cilium present (kube-proxy replacement?)")
    return KubeProxy("none", "no kube-proxy traces (no KUBE-SERVICES chain, kube-ipvs0 or nft table kube-proxy)")


# --- I/O: gather evidence from the node or one network namespace ---------------------------------

def gather_evidence(runner: Runner = DEFAULT_RUNNER, netns: str | None = None) -> Evidence:
    """Read the traces from the root namespace (netns=None) or the named one.

    Read-only. A source that fails becomes a warning and the rest is still returned.
    Node-wide sources (ovsdb, the bpffs pin directory) are only read for the root namespace.
    """
    warnings: list[str] = []

    def out(argv: list[str]) -> str:
        if runner.which(argv[0]) is None:
            return ""
        try:
            done = runner.run(argv, netns=netns, timeout=10.0, check=False)
        except CnitraceError as exc:
            warnings.append(exc.message)
            return ""
        if not done.ok:
            warnings.append(f"{' '.join(argv)}: {(done.stderr.strip() or 'failed').splitlines()[-1][:120]}")
            return ""
        return done.stdout

    ip_link = out(["ip", "-o", "link", "show"])
    iptables = {"legacy": out(["iptables-legacy-save"]), "nft": out(["iptables-nft-save"])}
    nft = out(["nft", "list", "tables"])
    bpftool = out(["bpftool", "-j", "net", "show"])
    ipset = out(["ipset", "list", "-n"])
    ovs = ""
    pins: list[str] = []
    if not netns:   # the host namespace (None or HOST)
        if OVSDB_SOCK.exists():
            ovs = out(["ovs-vsctl", "--timeout=3", "list-br"])
        try:
            pins = sorted(os.listdir(CILIUM_GLOBALS))
        except OSError:
            pins = []
    return evidence_from(ip_link=ip_link, iptables=iptables, nft=nft, ovs=ovs, pins=pins,
                         bpftool_net=bpftool, warnings=warnings, ipset=ipset)
