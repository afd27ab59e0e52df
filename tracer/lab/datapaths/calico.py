"""Calico's iptables dataplane in miniature (legacy or nft backend).

The chain structure follows what Felix programs on a real node (see the provenance of
tests/fixtures/lab/calico-*.txt): FORWARD → cali-FORWARD → cali-from-wl-dispatch /
cali-to-wl-dispatch (one goto per cali<11hex> interface) → cali-fw-<iface> / cali-tw-<iface>
→ policy chain cali-pi-_<hash> for the server's ingress policy and profile chains
cali-pri-/cali-pro-kns.<ns>. Each policy rule is a MARK 0x10000 rule followed by a
"-m mark --mark 0x10000 -j RETURN", exactly as Felix renders an allow rule, so an allowed
NEW packet pays 2 iptables rules per policy rule before its own: the per-rule cost the study saw.
Pods are /32 with 169.254.1.1 as gateway, answered by proxy ARP on the cali interface.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from cnitrace.lab import l7proxy
from cnitrace.lab.datapath import iptables_restore
from cnitrace.lab.datapaths.mark_return import MarkReturnDatapath, allowed_refs
from cnitrace.lab.model import CounterRef, GroundTruth, LabSpec, Topology
from cnitrace.lab.policy import PortRule, port_rules, tag
from cnitrace.lab.topology import plumb_routed, short_hash

if TYPE_CHECKING:
    from cnitrace.core.runner import Runner
    from cnitrace.core.session import Session

NAMESPACE = "default"
MARK_ACCEPT = "0x10000"
MARK_PASS = "0x20000"
CALI_MAC = "ee:ee:ee:ee:ee:ee"     # Felix sets every cali interface to this MAC
L7_PORT = 15001
L7_CHAIN = "cnit-L7-DETOUR"
L7_COMMENT = "cnitrace L7 detour"

# Fixed positions (1-based) in the generated chains; ground_truth() relies on them.
TW_DROP_NO_POLICY = 7


def policy_chain(lab: str) -> str:
    return "cali-pi-_" + tag("policy", lab, "allow-client-to-server", n=19)


def src_ipset(lab: str) -> str:
    return "cali40s:" + tag("selector", lab, "role == 'client'", n=23)


def _c(*parts: object) -> str:
    return f'-m comment --comment "cali:{tag(*parts)}"'


def render_ipsets(topo: Topology) -> str:
    name = src_ipset(topo.lab)
    lines = [f"create {name} hash:net family inet hashsize 1024 maxelem 1048576"]
    lines += [f"add {name} {p.ip}" for p in topo.clients]
    return "\n".join(lines) + "\n"


def _policy_rules(topo: Topology, rules: tuple[PortRule, ...]) -> list[str]:
    chain, ipset = policy_chain(topo.lab), src_ipset(topo.lab)
    out = []
    for r in rules:
        out.append(f"-A {chain} -p {r.proto} {_c(chain, r.position, 'mark')} -m set --match-set {ipset} src "
                   f"-m multiport --dports {r.ports} -j MARK --set-xmark {MARK_ACCEPT}/{MARK_ACCEPT}")
        out.append(f"-A {chain} {_c(chain, r.position, 'return')} -m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN")
    return out


def _profiles(kind: str) -> list[str]:
    """Namespace profile chains (cali-pri-/cali-pro-kns.<ns>): allow-all, as for a default namespace."""
    ch = f"cali-{kind}-kns.{NAMESPACE}"
    return [f"-A {ch} {_c(ch, 0)} -j MARK --set-xmark {MARK_ACCEPT}/{MARK_ACCEPT}",
            f"-A {ch} {_c(ch, 1)} -m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN"]


def _endpoint_chain(chain: str, direction: str, policy: str | None) -> list[str]:
    """cali-tw-/cali-fw-<iface>: conntrack shortcut, policies (if any), then profiles."""
    prof = "pri" if direction == "tw" else "pro"
    out = [
        f'-A {chain} {_c(chain, 0)} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
        f'-A {chain} {_c(chain, 1)} -m conntrack --ctstate INVALID -j DROP',
        f'-A {chain} {_c(chain, 2)} -j MARK --set-xmark 0x0/{MARK_ACCEPT}',
    ]
    if policy:
        out += [
            f'-A {chain} {_c(chain, 3)} -m comment --comment "Start of policies" -j MARK --set-xmark 0x0/{MARK_PASS}',
            f'-A {chain} {_c(chain, 4)} -m mark --mark 0x0/{MARK_PASS} -j {policy}',
            f'-A {chain} {_c(chain, 5)} -m comment --comment "Return if policy accepted" '
            f'-m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN',
            f'-A {chain} {_c(chain, 6)} -m comment --comment "Drop if no policies passed packet" '
            f'-m mark --mark 0x0/{MARK_PASS} -j DROP',
        ]
    out += [
        f'-A {chain} {_c(chain, 7)} -j cali-{prof}-kns.{NAMESPACE}',
        f'-A {chain} {_c(chain, 8)} -m comment --comment "Return if profile accepted" '
        f'-m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN',
        f'-A {chain} {_c(chain, 9)} -j cali-{prof}-ksa.{NAMESPACE}.default',
        f'-A {chain} {_c(chain, 10)} -m comment --comment "Return if profile accepted" '
        f'-m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN',
        f'-A {chain} {_c(chain, 11)} -m comment --comment "Drop if no profiles matched" -j DROP',
    ]
    return out


def render_filter(topo: Topology, spec: LabSpec) -> str:
    """The whole filter table for `iptables-restore --noflush` (pure)."""
    rules = port_rules(topo, spec)
    pol = policy_chain(topo.lab)
    chains = ["cali-FORWARD", "cali-INPUT", "cali-wl-to-host", "cali-from-wl-dispatch", "cali-to-wl-dispatch",
              "cali-from-hep-forward", "cali-to-hep-forward", pol]
    for kind in ("pri", "pro"):
        chains += [f"cali-{kind}-kns.{NAMESPACE}", f"cali-{kind}-ksa.{NAMESPACE}.default"]
    for p in topo.pods:
        chains += [f"cali-fw-{p.node_iface}", f"cali-tw-{p.node_iface}"]
    out = ["*filter", *(f":{c} - [0:0]" for c in chains)]
    out += [
        f"-A INPUT {_c('INPUT')} -j cali-INPUT",
        f"-A FORWARD {_c('FORWARD')} -j cali-FORWARD",
        f"-A cali-INPUT -i cali+ {_c('cali-INPUT', 0)} -g cali-wl-to-host",
        f"-A cali-wl-to-host {_c('cali-wl-to-host', 0)} -j cali-from-wl-dispatch",
        f'-A cali-wl-to-host {_c("cali-wl-to-host", 1)} -m comment --comment '
        f'"Configured DefaultEndpointToHostAction" -j ACCEPT',
        f"-A cali-FORWARD {_c('cali-FORWARD', 0)} -j MARK --set-xmark 0x0/0xe0000",
        f"-A cali-FORWARD {_c('cali-FORWARD', 1)} -m mark --mark 0x0/{MARK_ACCEPT} -j cali-from-hep-forward",
        f"-A cali-FORWARD -i cali+ {_c('cali-FORWARD', 2)} -j cali-from-wl-dispatch",
        f"-A cali-FORWARD -o cali+ {_c('cali-FORWARD', 3)} -j cali-to-wl-dispatch",
        f"-A cali-FORWARD {_c('cali-FORWARD', 4)} -j cali-to-hep-forward",
        f'-A cali-FORWARD {_c("cali-FORWARD", 5)} -m comment --comment "Policy explicitly accepted packet." '
        f'-m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j ACCEPT',
    ]
    for p in topo.pods:
        out.append(f"-A cali-from-wl-dispatch -i {p.node_iface} {_c('fwd', p.node_iface)} -g cali-fw-{p.node_iface}")
    out.append(f'-A cali-from-wl-dispatch {_c("fwd", "unknown")} -m comment --comment "Unknown interface" -j DROP')
    for p in topo.pods:
        out.append(f"-A cali-to-wl-dispatch -o {p.node_iface} {_c('twd', p.node_iface)} -g cali-tw-{p.node_iface}")
    out.append(f'-A cali-to-wl-dispatch {_c("twd", "unknown")} -m comment --comment "Unknown interface" -j DROP')
    for p in topo.pods:
        out += _endpoint_chain(f"cali-fw-{p.node_iface}", "fw", None)
        out += _endpoint_chain(f"cali-tw-{p.node_iface}", "tw", pol if p.role == "server" else None)
    out += _policy_rules(topo, rules)
    out += _profiles("pri") + _profiles("pro")
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def render_l7_nat(topo: Topology, port: int = L7_PORT) -> str:
    """Detour allowed HTTP to the proxy in the node netns (Calico has no L7 of its own).

    DNAT to the node's address rather than REDIRECT: REDIRECT rewrites to the incoming
    interface's first address, and cali interfaces have none (the kernel drops the packet).
    """
    s = topo.server
    return "\n".join([
        "*nat", f":{L7_CHAIN} - [0:0]",
        f"-A PREROUTING -j {L7_CHAIN}",
        f"-A {L7_CHAIN} -i cali+ -d {s.ip}/32 -p tcp -m tcp --dport {topo.allowed_port} "
        f'-m comment --comment "{L7_COMMENT}" -j DNAT --to-destination {topo.node_ip}:{port}',
        "COMMIT", ""])


def _rule_comment(chain: str, position: int, what: str) -> str:
    return f"cali:{tag(chain, position, what)}"


class Calico(MarkReturnDatapath):
    name = "calico"
    description = "Calico iptables dataplane: cali-* chains, per-endpoint dispatch, MARK-and-RETURN policy rules"
    tools = ("ipset", "iptables-legacy-restore", "iptables-nft-restore")
    routed = True
    supports_l7 = True
    backends = ("legacy", "nft")

    def node_iface_name(self, lab: str, index: int) -> str:
        return "cali" + short_hash("calico", lab, NAMESPACE, f"p{index}", n=11)

    def plumb(self, runner: "Runner", topo: Topology) -> None:
        plumb_routed(runner, topo, node_mac=CALI_MAC)

    def render(self, topo: Topology, spec: LabSpec) -> tuple[str, str]:
        return render_ipsets(topo), render_filter(topo, spec)

    def ground_truth(self, topo: Topology, spec: LabSpec) -> GroundTruth:
        chain = policy_chain(topo.lab)
        allowed, evals = allowed_refs(topo, spec, chain, lambda pos: _rule_comment(chain, pos, "mark"))
        if spec.l7:
            # Allowed TCP is DNATed to the proxy before any filter chain: the nat rule counts each
            # new connection once, and the L7 policy is evaluated in the proxy, not in iptables.
            allowed["tcp"] = CounterRef(kind="iptables", netns=topo.node_netns, backend=spec.backend, table="nat",
                                        chain=L7_CHAIN, index=1, comment=L7_COMMENT)
            evals["tcp"] = 0
        tw = f"cali-tw-{topo.server.node_iface}"
        denied = CounterRef(kind="iptables", netns=topo.node_netns, backend=spec.backend, table="filter",
                            chain=tw, index=TW_DROP_NO_POLICY, comment=f"cali:{tag(tw, 6)}")
        notes = "evaluations count iptables rules in the policy chain (MARK + RETURN per rule)"
        if spec.l7:
            notes += "; --l7: allowed TCP is detoured to the proxy (nat), counted once per connection"
        return GroundTruth(allowed=allowed, denied=denied, evaluations=evals, notes=notes)

    def l7(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:
        proxy = l7proxy.start(session, topo, spec.l7_proxy, listen_port=L7_PORT,
                              upstream=(topo.server.ip, topo.allowed_port))
        # The DNAT delivers to the node itself: the client's egress policy still applies
        # (cali-INPUT → cali-wl-to-host → cali-from-wl-dispatch); the proxy enforces ingress L7.
        iptables_restore(session.runner, topo.node_netns, spec.backend, render_l7_nat(topo))
        return dataclasses.replace(topo, extra={**topo.extra, "l7": proxy.to_json()})
