"""Which tool printed a text, from its content, and the parser that reads it (pure).

File names lie (`dump.txt`, `node1.log`), so detection reads the text: each format has the
lines only it prints (`*filter` and `COMMIT`, `Chain INPUT (policy ACCEPT 0 packets, 0 bytes)`,
`table inet filter {`, ` actions=`), and a text's score for a format is the share of its first
lines that look like that format, kept high only where the format's unmistakable marker is
there. The prompt's command, when the paste has one, is a hint: it lifts a format the content
already supports and supplies what content cannot say (IPv6, the tc device, the OVS bridge);
it never makes unknown content known.

`PARSERS` is the registry: format -> the collector function that parses it, named by module
and attribute and imported when used, so analyze imports no collector it does not need (and
none at all to detect).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from typing import Any, Callable, Iterable

from cnitrace.analyze.sections import tool_words

SAMPLE_LINES = 400      # lines read to decide; a 100,000-rule dump is decided by its head
MIN_CONFIDENCE = 0.35   # below this the text is reported as unknown


@dataclasses.dataclass(frozen=True)
class Detected:
    """A format (None: unknown), how sure (0..1) and why, in words a user can check."""

    format: str | None
    confidence: float
    reason: str


@dataclasses.dataclass(frozen=True)
class Parser:
    """A collector's parse function, by name: imported on first use."""

    module: str
    function: str
    description: str
    extra: tuple[str, ...] = ()   # more functions of the module whose records join (dpctl show's ports)

    def load(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.function)

    def load_extra(self) -> list[Callable[..., Any]]:
        """The extra functions this build has (they only add detail)."""
        mod = importlib.import_module(self.module)
        return [f for name in self.extra if (f := getattr(mod, name, None)) is not None]


_C = "cnitrace.collectors."
PARSERS: dict[str, Parser] = {
    "iptables-save": Parser(_C + "iptables.parse", "parse_ruleset",
                            "iptables-save / ip6tables-save (with or without -c, legacy or nft backend; also -S)"),
    "iptables-list": Parser(_C + "iptables.listing", "parse_listing", "iptables -L -n -v [-x]"),
    "nft-text": Parser(_C + "nftables.text", "parse_text", "nft list ruleset"),
    "nft-json": Parser(_C + "nftables.parse", "parse", "nft -j list ruleset"),
    "ipset": Parser(_C + "ipset.parse", "parse_save", "ipset save / ipset list"),
    "ovs-flows": Parser(_C + "ovs.parse", "parse_dump_flows", "ovs-ofctl dump-flows"),
    "ovs-dpctl-flows": Parser(_C + "ovs.parse", "parse_dpctl_dump_flows", "ovs-appctl dpctl/dump-flows [-m]"),
    "ovs-dpctl-show": Parser(_C + "ovs.parse", "parse_dpctl_show", "ovs-dpctl show / dpctl/show",
                             ("parse_dpctl_show_ports",)),
    "ovs-dpif-show": Parser(_C + "ovs.parse", "parse_dpif_show", "ovs-appctl dpif/show"),
    "conntrack-stats": Parser(_C + "conntrack.parse", "parse_conntrack_S", "conntrack -S"),
    "conntrack-list": Parser(_C + "conntrack.parse", "parse_conntrack_L", "conntrack -L"),
    "bpftool-prog-json": Parser(_C + "bpfprog.parse", "parse_prog_show", "bpftool -j prog show"),
    "bpftool-net-json": Parser(_C + "bpfprog.parse", "parse_net_show", "bpftool -j net show"),
    "bpftool-map-json": Parser(_C + "bpfprog.parse", "parse_map_show", "bpftool -j map show"),
    "bpftool-prog-text": Parser(_C + "bpfprog.text", "parse_prog_show_text", "bpftool prog show"),
    "bpftool-net-text": Parser(_C + "bpfprog.text", "parse_net_show_text", "bpftool net show"),
    "bpftool-map-text": Parser(_C + "bpfprog.text", "parse_map_show_text", "bpftool map show"),
    "tc-filter-text": Parser(_C + "bpfprog.tc", "parse_tc_filters_text", "tc filter show"),
    "tc-filter-json": Parser(_C + "bpfprog.parse", "parse_tc_filters", "tc -j filter show"),
    "cilium-status": Parser(_C + "cilium.status", "parse_status", "cilium status [--verbose]"),
    "cilium-policy-text": Parser(_C + "cilium.parse", "parse_policy_get_text", "cilium-dbg bpf policy get"),
    "cilium-policy-json": Parser(_C + "cilium.parse", "parse_policy_get_json", "cilium-dbg bpf policy get -o json"),
    "calico-counters": Parser(_C + "calico.parse", "parse_counters_dump", "calico-node -bpf counters dump"),
    "calico-policy": Parser(_C + "calico.parse", "parse_policy_dump", "calico-node -bpf policy dump"),
    "ip-link": Parser("cnitrace.node.detect", "parse_links", "ip link / ip addr"),
    "ovs-vsctl-show": Parser("cnitrace.node.detect", "parse_ovs_show", "ovs-vsctl show"),
}
FORMATS = tuple(PARSERS)


# --- the command hint ---------------------------------------------------------------------------

def hinted_formats(command: str | None) -> tuple[str, ...]:
    """Formats the prompt's command would print (empty when it names no known tool)."""
    w = tool_words(command)
    if not w:
        return ()
    tool, args = w[0], w[1:]
    text = " ".join(args)
    if tool.endswith("-save"):
        return ("iptables-save",)
    if tool.startswith(("iptables", "ip6tables")):
        if re.search(r"(^|\s)-(\w*L\w*|-list)\b", text):
            return ("iptables-list",)
        return ("iptables-save",)     # -S prints the same rule lines
    if tool == "nft":
        return ("nft-json",) if re.search(r"(^|\s)(-j|--json)\b", text) or re.search(r"-\w*j", text) else ("nft-text",)
    if tool == "ipset":
        return ("ipset",)
    if tool == "ovs-ofctl":
        return ("ovs-flows",)
    if tool in ("ovs-appctl", "ovs-dpctl"):
        if "dump-flows" in text:
            return ("ovs-dpctl-flows",)
        if "dpif/show" in text:
            return ("ovs-dpif-show",)
        return ("ovs-dpctl-show",)
    if tool == "ovs-vsctl":
        return ("ovs-vsctl-show",)
    if tool == "conntrack":
        return ("conntrack-stats",) if re.search(r"(^|\s)(-S|--stats)\b", text) else ("conntrack-list",)
    if tool == "bpftool":
        js = bool(re.search(r"(^|\s)(-j|-p|--json|--pretty)\b", text))
        obj = next((a for a in args if a in ("prog", "net", "map", "p", "n", "m")), "")
        kind = {"p": "prog", "n": "net", "m": "map"}.get(obj, obj)
        return (f"bpftool-{kind}-{'json' if js else 'text'}",) if kind else ()
    if tool == "tc":
        return ("tc-filter-json",) if "-j" in args or "-json" in args else ("tc-filter-text",)
    if tool in ("cilium", "cilium-dbg"):
        if "policy" in args:
            return ("cilium-policy-json",) if "json" in text else ("cilium-policy-text",)
        return ("cilium-status",)
    if tool == "calico-node":
        return ("calico-policy",) if "policy" in args else ("calico-counters",)
    if tool == "antctl":
        return ("ovs-flows",)
    if tool == "ip":
        return ("ip-link",)
    return ()


def command_hints(command: str | None) -> dict[str, Any]:
    """What the command says that the output may not: family, backend, table, device, hook, bridge."""
    w = tool_words(command)
    out: dict[str, Any] = {}
    if not w:
        return out
    tool, args = w[0], w[1:]
    if tool.startswith("ip6tables"):
        out["family"] = "ipv6"
    elif tool.startswith("iptables"):
        out["family"] = "ipv4"
    if "-legacy" in tool:
        out["backend"] = "legacy"
    elif "-nft" in tool:
        out["backend"] = "nft"
    for flag in ("-t", "--table"):
        if flag in args and args.index(flag) + 1 < len(args):
            out["table"] = args[args.index(flag) + 1]
    if tool.startswith(("iptables", "ip6tables")) and "table" not in out and not tool.endswith("-save"):
        from cnitrace.collectors.iptables.listing import _listed_table   # '-tnat', '--table=nat', filter by default
        listed = _listed_table(" ".join(w))
        if listed:
            out["table"] = listed
        elif any(a in ("-S", "--list-rules") for a in args):   # `iptables -S` prints filter too
            out["table"] = "filter"
    if tool == "tc" and "dev" in args and args.index("dev") + 1 < len(args):
        out["iface"] = args[args.index("dev") + 1]
        out["hook"] = "egress" if "egress" in args else "ingress"
    if tool == "calico-node":
        m = re.search(r"--iface[= ](\S+)", " ".join(args))
        if m:
            out["iface"] = m.group(1)
        if "policy" in args and "dump" in args:
            rest = args[args.index("dump") + 1:]
            if rest:
                out["iface"] = rest[0]
            if len(rest) > 1 and rest[1] in ("ingress", "egress", "xdp"):
                out["hook"] = rest[1]
    if tool == "ovs-ofctl" and "dump-flows" in args:
        rest = [a for a in args[args.index("dump-flows") + 1:] if not a.startswith("-")]
        if rest:
            out["bridge"] = rest[0]
    return out


# --- detection ----------------------------------------------------------------------------------

def _sample(text: str) -> list[str]:
    out = []
    for line in text.split("\n", SAMPLE_LINES * 4)[:SAMPLE_LINES * 4]:
        s = line.strip()
        if s:
            out.append(s)
            if len(out) >= SAMPLE_LINES:
                break
    return out


def _share(lines: list[str], *patterns: re.Pattern) -> float:
    if not lines:
        return 0.0
    return sum(1 for l in lines if any(p.search(l) for p in patterns)) / len(lines)


def _any(lines: Iterable[str], pattern: re.Pattern) -> bool:
    return any(pattern.search(l) for l in lines)


_R = re.compile
IPT_TABLE, IPT_CHAIN = _R(r"^\*(filter|nat|mangle|raw|security)$"), _R(r"^:\S+ (\S+) \[\d+:\d+\]$")
IPT_RULE, IPT_COMMIT = _R(r"^(\[\d+:\d+\] )?-A \S+( |$)"), _R(r"^COMMIT$")
IPT_S, IPT_HEADER = _R(r"^-[PN] \S+"), _R(r"^# (Generated|Completed) by ip6?tables(-legacy|-nft)?-save")
IPT_COMMENT = _R(r"^# (Warning|Generated|Completed|Table)")
IPL_CHAIN = _R(r"^Chain \S+ \((policy \w+( \d+[KMGT]? packets, \d+[KMGT]? bytes)?|\d+ references)\)$")
IPL_HEAD = _R(r"^(num\s+)?(pkts\s+bytes\s+)?target\s+prot\s+opt\s+(in\s+out\s+)?source\s+destination")
IPL_RULE = _R(r"^(\d+\s+)?(\d+[KMGT]?\s+\d+[KMGT]?\s+)?(\S+\s+)?\S+\s+(--|-f|!f)\s+\S+\s+\S+")
NFT_TABLE = _R(r"^table (ip|ip6|inet|arp|bridge|netdev) \S+ \{\s*(#.*)?$")
NFT_CHAIN, NFT_HOOK = _R(r"^chain \S+ \{\s*(#.*)?$"), _R(r"^type (filter|nat|route) hook \w+")
NFT_BODY = _R(r"^(\}|(set|map|flowtable|counter|quota|ct \w+) \S+ \{|elements = |flags |policy |type \S+|"
              r"(ip6?|ct|meta|tcp|udp|th|iifname|oifname|iif|oif|fib|mark|jump|goto|counter|accept|drop|"
              r"return|reject|log|dnat|snat|masquerade|redirect|notrack|xt|@)\b|#)")
IPSET_SAVE, IPSET_ADD = _R(r"^create \S+ (hash|bitmap|list):\S+"), _R(r"^add \S+ \S+")
IPSET_LIST = _R(r"^(Name: \S+|Type: (hash|bitmap|list):\S+|Revision: \d+|Header: .*|Size in memory: \d+|"
                r"References: \d+|Number of entries: \d+|Members:)$")
OVS_FLOW = _R(r"(^|[ ,])actions=")
OVS_FLOW_INFO = _R(r"(cookie=0x[0-9a-f]+|priority=\d+|table=\w+|n_packets=\d+)")
OVS_REPLY = _R(r"^(NXST|OFPST)_FLOW reply")
DP_FLOW = _R(r"(in_port|recirc_id|eth_type|eth|ipv4|ipv6|skb_mark)\(.*packets:\d+, bytes:\d+, used:")
DP_DUMP = _R(r"^flow-dump from ")
DP_HEAD, DP_LOOKUPS = _R(r"^\S+@\S+:$"), _R(r"^lookups: hit:\d+ missed:\d+")
DP_LINE = _R(r"^(port \d+: |flows: \d+|masks: hit:|caches:|masks-cache:|lookups: |[RT]X (packets|bytes):|"
             r"collisions:\d+|\d+: masks-cache )")
DPIF_HEAD = _R(r"^\S+@\S+: hit:\d+ missed:\d+")
DPIF_LINE = _R(r"^(\S+:$|\S+ (\d+|none)/(\d+|none):|flows:|offloaded )")
CT_CPU = _R(r"^cpu=\d+\s+\w+=\d+")
CT_PROC = _R(r"^(entries|found|invalid|insert|insert_failed|drop|early_drop|search_restart|clashres|"
             r"chainlength|icmp_error|new|ignore|delete|expect_new|expect_create|expect_delete)\s+\d+$")
CT_LIST = _R(r"^((ipv4|ipv6)\s+\d+\s+)?(tcp|udp|icmp|icmpv6|sctp|dccp|gre|udplite|unknown)\s+\d+\s+(\d+\s+)?.*src=")
CT_SUMMARY = _R(r"conntrack v\S+ \(conntrack-tools\): \d+ flow entries have been shown")
BPF_PROG = _R(r"^\d+: \w+\s+(name \S+\s+)?tag [0-9a-f]{16}")
BPF_PROG_MORE = _R(r"^(loaded_at |xlated \d+B|btf_id \d+|pids |run_time_ns )")
BPF_MAP = _R(r"^\d+: \w+\s+(name \S+\s+)?flags 0x[0-9a-f]+")
BPF_MAP_MORE = _R(r"^(key \d+B\s+value \d+B\s+max_entries \d+|frozen|btf_id \d+|pids |loaded_at )")
BPF_NET_HEAD = _R(r"^(xdp|tc|flow_dissector|netfilter|netkit|tcx):$")
BPF_NET = _R(r"^\S+\(\d+\) ((clsact|tcx|netkit)/(ingress|egress)|driver|generic|offload|multi)\b")
TC_FILTER = _R(r"^filter (parent \S+ )?protocol \S+ pref \d+ \w+")
TC_MORE = _R(r"^(filter |\s*action order|\s*index \d+|\s*not_in_hw|\s*Sent \d+ bytes|\s*backlog )")
CILIUM_KEY = _R(r"^(?:[/\\¯_ ]*\s)?(KVStore|Operator|Envoy DaemonSet|Hubble Relay|ClusterMesh|Containers|"
                r"Kubernetes|Kubernetes APIs|KubeProxyReplacement|Host firewall|SRv6|CNI Chaining|"
                r"CNI Config file|Cilium|NodeMonitor|Cilium health daemon|IPAM|IPv4 BIG TCP|IPv6 BIG TCP|"
                r"BandwidthManager|Routing|Attach Mode|Device Mode|Masquerading|Controller Status|Proxy Status|"
                r"Global Identity Range|Hubble|Encryption|Cluster health|Modules Health|Clock Source for BPF|"
                r"Host Routing|IP Masquerade|Cluster Pods|Allocated addresses|XDP Acceleration):")
CILIUM_POLICY_HEAD = _R(r"^(POLICY\s+)?DIRECTION\s+(LABELS|IDENTITY)")
CILIUM_POLICY_ROW = _R(r"^((Allow|Deny)\s+)?(Ingress|Egress)\s+\S+.*\s(ANY|\d+/\w+)\s+(NONE|\d+)\s|"
                       r"^/sys/fs/bpf/\S*cilium_policy\w*:$")
CALICO_TABLE = _R(r"^\|\s*CATEGORY\s*\|\s*TYPE\s*\|")
CALICO_ROW = _R(r"^(\+-[-+]+\+|\|.*\|\s*(\d+|N/A)?\s*\||dumped \S+ counters\.?)$")
CALICO_DUMPED = _R(r"^dumped \S+ counters\.?$")
CALICO_POLICY = _R(r"^(IfaceName: \S+|Hook: .+|Error:.*|Policy Info:|// (Start|End) of (tier|policy|rule)\b.*|"
                   r"// count = \d+|// (Program|Start of|End of) .*|"
                   r"(End )?(Tier|Policy|Profile): .+|Rule: \S+( +Action: \S+)?|Hit count: \d+|IP sets: .*|Match: .*)$")
IP_LINK = _R(r"^(\d+:\s+)?[^\s:@]+(@\S+)?:\s+<[A-Z_,-]*>")
IP_LINK_MORE = _R(r"^(link/\w+|inet6? |valid_lft|altname )")
OVS_VSCTL = _R(r"^([0-9a-f]{8}-[0-9a-f-]{27}|Bridge \S+|Port \S+|Interface \S+|type: \S+|options: \{.*\}|"
               r"ovs_version: \S+|Controller \S+|fail_mode: \S+|tag: \d+|is_connected: \w+|"
               r"datapath_type: \S+|error: .*)$")


JSON_WHOLE = 2_000_000   # a bigger JSON document is recognised by its head (the parser decodes it once)


def _json_format(text: str) -> tuple[str | None, float, str]:
    """JSON documents: which tool by the keys they carry."""
    head = text[:4000]
    doc, whole = None, False
    if len(text) <= JSON_WHOLE:
        try:
            doc = json.loads(text)
            whole = True
        except ValueError:
            pass
    sure = 0.95 if whole else 0.9 if len(text) > JSON_WHOLE else 0.7
    cut = "" if whole or len(text) > JSON_WHOLE else " (the document does not parse as a whole: cut or malformed)"

    def keys_of(d: Any) -> set[str]:
        if isinstance(d, dict):
            return set(d)
        if isinstance(d, list) and d and isinstance(d[0], dict):
            return set(d[0])
        return set()

    ks = keys_of(doc) if whole else set(re.findall(r'"(\w+)"\s*:', head))
    if "nftables" in ks:
        return "nft-json", sure, "a JSON document with an `nftables` array" + cut
    if {"xdp", "tc"} & ks and ("flow_dissector" in ks or "devname" in head or ks <= {"xdp", "tc", "flow_dissector",
                                                                                       "netfilter", "tcx", "netkit"}):
        return "bpftool-net-json", sure, "a JSON list of xdp/tc attachment blocks (bpftool net show)" + cut
    if {"bytes_key", "bytes_value", "max_entries"} <= ks or ("max_entries" in ks and "bytes_key" in head):
        return "bpftool-map-json", sure, "JSON objects with bytes_key/bytes_value/max_entries (bpftool map show)" + cut
    if "tag" in ks and {"id", "type"} <= ks and ({"loaded_at", "bytes_xlated", "gpl_compatible", "run_cnt"} & ks):
        return "bpftool-prog-json", sure, "JSON objects with id/type/tag/loaded_at (bpftool prog show)" + cut
    if "pref" in ks and "kind" in ks or '"kind":"bpf"' in head.replace(" ", ""):
        return "tc-filter-json", sure * 0.95, "JSON filters with pref/kind (tc -j filter show)" + cut
    if {"EndpointID", "Content"} & ks or ("Key" in ks and "Identity" in head):
        return "cilium-policy-json", sure, "JSON policy-map entries with Key/Identity (cilium-dbg bpf policy get)" + cut
    return None, 0.0, "JSON, but of no known tool"


def _scores(lines: list[str]) -> dict[str, tuple[float, str]]:
    """Each line format's score on the sampled lines, with the evidence in words."""
    s: dict[str, tuple[float, str]] = {}
    body = [l for l in lines if not (l.startswith("#") and IPT_COMMENT.search(l))]
    if _any(lines, IPT_TABLE) or _any(body, IPT_RULE) or _any(body, IPT_S):
        share = _share(body, IPT_TABLE, IPT_CHAIN, IPT_RULE, IPT_COMMIT, IPT_S)
        marker = _any(lines, IPT_TABLE) or _any(lines, IPT_HEADER)
        why = ("*table, :chain and -A lines" if marker else "-A/-N/-P rule lines without a *table header")
        s["iptables-save"] = (share if marker else share * 0.85, why)
    if _any(lines, IPL_CHAIN):
        share = _share(lines, IPL_CHAIN, IPL_HEAD, IPL_RULE)
        s["iptables-list"] = (share if _any(lines, IPL_HEAD) else share * 0.8,
                              "`Chain X (policy ...)` blocks with pkts/bytes/target columns")
    if _any(lines, NFT_TABLE) or _any(lines, NFT_CHAIN):
        share = _share(lines, NFT_TABLE, NFT_CHAIN, NFT_HOOK, NFT_BODY)
        marker = _any(lines, NFT_TABLE)
        s["nft-text"] = (share if marker or _any(lines, NFT_HOOK) else share * 0.8,
                         "`table FAMILY NAME {` / `chain NAME {` blocks")
    if _any(lines, IPSET_SAVE) or _any(lines, IPSET_LIST):
        share = max(_share(lines, IPSET_SAVE, IPSET_ADD), _share(lines, IPSET_LIST) * 3)
        s["ipset"] = (min(share, 1.0), "`create NAME hash:...` / `Name:`, `Type:`, `Members:` lines")
    if _any(lines, OVS_FLOW):
        flows = [l for l in lines if OVS_FLOW.search(l) and OVS_FLOW_INFO.search(l)]
        share = (len(flows) + sum(1 for l in lines if OVS_REPLY.search(l))) / len(lines)
        s["ovs-flows"] = (share, "OpenFlow lines with table=/priority= ... actions=")
    if _any(lines, DP_FLOW):
        s["ovs-dpctl-flows"] = (_share(lines, DP_FLOW, DP_DUMP), "datapath flows with packets:/bytes:/used:")
    if _any(lines, DP_LOOKUPS):
        s["ovs-dpctl-show"] = (_share(lines, DP_HEAD, DP_LINE) if _any(lines, DP_HEAD) else 0.5,
                               "a datapath header with `lookups: hit: missed:`")
    if _any(lines, DPIF_HEAD):
        s["ovs-dpif-show"] = (_share(lines, DPIF_HEAD, DPIF_LINE), "`dp@name: hit:N missed:N` with bridge ports")
    if _any(lines, CT_CPU):
        s["conntrack-stats"] = (min(_share(lines, CT_CPU) * 1.5, 1.0), "`cpu=N found=... invalid=...` lines")
    elif sum(1 for l in lines if CT_PROC.search(l)) >= 3:
        s["conntrack-stats"] = (_share(lines, CT_PROC), "conntrack statistics as `name value` lines")
    if _any(lines, CT_LIST) or _any(lines, CT_SUMMARY):
        s["conntrack-list"] = (_share(lines, CT_LIST, CT_SUMMARY), "connection lines `proto N timeout ... src= dst=`")
    if _any(lines, BPF_PROG):
        s["bpftool-prog-text"] = (_share(lines, BPF_PROG, BPF_PROG_MORE), "`ID: TYPE name X tag HEX` program lines")
    if _any(lines, BPF_MAP):
        s["bpftool-map-text"] = (_share(lines, BPF_MAP, BPF_MAP_MORE), "`ID: TYPE name X flags 0x..` map lines")
    if _any(lines, BPF_NET) or sum(1 for l in lines if BPF_NET_HEAD.search(l)) >= 2:
        s["bpftool-net-text"] = (_share(lines, BPF_NET, BPF_NET_HEAD), "xdp:/tc: sections of `dev(ifindex) hook` lines")
    if _any(lines, TC_FILTER):
        s["tc-filter-text"] = (min(_share(lines, TC_FILTER, TC_MORE) * 1.2, 1.0),
                               "`filter protocol X pref N KIND` lines")
    keys = {m.group(1) for l in lines if (m := CILIUM_KEY.search(l))}
    if len(keys) >= 3:
        s["cilium-status"] = (min(0.5 + 0.1 * len(keys), 0.98), f"{len(keys)} `cilium status` fields "
                              f"({', '.join(sorted(keys)[:3])}, ...)")
    if _any(lines, CILIUM_POLICY_HEAD) or _any(lines, CILIUM_POLICY_ROW):
        share = _share(lines, CILIUM_POLICY_HEAD, CILIUM_POLICY_ROW)
        s["cilium-policy-text"] = (share if _any(lines, CILIUM_POLICY_HEAD) else share * 0.8,
                                   "POLICY/DIRECTION/LABELS policy-map rows")
    if _any(lines, CALICO_TABLE):
        s["calico-counters"] = (max(_share(lines, CALICO_ROW), 0.6), "a | CATEGORY | TYPE | counters table")
    elif _any(lines, CALICO_DUMPED) or _share(lines, CALICO_ROW) > 0.6 and any("packets" in l for l in lines):
        s["calico-counters"] = (_share(lines, CALICO_ROW) * 0.85, "rows of a calico-node counters table "
                                "(| TYPE | INGRESS | EGRESS |, `dumped X counters.`)")
    if _any(lines, CALICO_POLICY):
        share = _share(lines, CALICO_POLICY)
        marker = any(l.startswith(("IfaceName:", "// Start of")) for l in lines)
        s["calico-policy"] = (share if marker else share * 0.5, "IfaceName:/Hook: and `// Start of policy` lines")
    if _any(lines, IP_LINK):
        s["ip-link"] = (_share(lines, IP_LINK, IP_LINK_MORE), "`N: NAME: <FLAGS>` interface lines")
    if _any(lines, OVS_VSCTL) and any(l.startswith("Bridge ") for l in lines):
        s["ovs-vsctl-show"] = (_share(lines, OVS_VSCTL), "Bridge/Port/Interface blocks")
    return s


def detect(text: str, command: str | None = None) -> Detected:
    """The format of one tool output, how sure, and why (pure; never raises)."""
    if not isinstance(text, str):
        return Detected(None, 0.0, f"not text ({type(text).__name__})")
    stripped = text.lstrip()
    if not stripped:
        return Detected(None, 0.0, "empty")
    hinted = hinted_formats(command)
    if stripped[0] in "[{" and not IPT_RULE.match(stripped[:400]):
        fmt, conf, why = _json_format(stripped)
        if fmt is not None:
            if fmt in hinted:
                conf, why = min(conf + 0.05, 1.0), why + f"; the prompt ran `{command}`"
            return Detected(fmt, round(conf, 3), why)
    lines = _sample(text)
    scores = _scores(lines)
    if "cilium-status" in hinted and "cilium-status" not in scores:
        # under its own prompt a status cut by grep or `...` keeps one or two fields
        keys = {m.group(1) for l in lines if (m := CILIUM_KEY.search(l))}
        if keys:
            scores["cilium-status"] = (0.45 + 0.1 * len(keys), f"{len(keys)} `cilium status` field(s)")
    if not scores:
        say = f" (the prompt ran `{command}`)" if command else ""
        return Detected(None, 0.0, f"no known tool's output{say}; first line: {lines[0][:80]!r}")
    ranked = sorted(scores.items(), key=lambda kv: (-(kv[1][0] + (0.15 if kv[0] in hinted else 0.0)), kv[0]))
    fmt, (conf, why) = ranked[0]
    if fmt in hinted:
        conf, why = min(conf + 0.15, 1.0), why + f"; the prompt ran `{command}`"
    if len(ranked) > 1 and ranked[1][1][0] > 0.5 * conf:
        why += f" (also looks like {ranked[1][0]})"
        conf *= 0.9
    conf = round(max(0.0, min(conf, 1.0)), 3)
    if conf < MIN_CONFIDENCE:
        return Detected(None, conf, f"unsure: looks most like {fmt} ({why}) but only {conf:.0%} of its lines do")
    return Detected(fmt, conf, why)
