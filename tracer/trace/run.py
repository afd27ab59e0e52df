"""`cnitrace trace` orchestration under one Session: the cnitrace-owned nftrace table and one
`nft monitor trace` per traced namespace (recorded before they exist, removed on exit, SIGINT,
and by `cleanup` after SIGKILL), the marked probes (or a window of live matching packets), then
parse -> hops -> verdict -> policy -> the document (cnitrace.trace.output)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from cnitrace.core.faults import checkpoint
from cnitrace.core.errors import CnitraceError, UsageError
from cnitrace.core.records import PREFIX
from cnitrace.core.selection import parse_iface, validate_netns
from cnitrace.core.session import Interrupted, Session
from cnitrace.core.state import StateFile
from cnitrace.trace import netfilter, output, policy, tabletimes, timing
from cnitrace.trace.timing import KernelTimes
from cnitrace.trace.tabletimes import TableTimes
from cnitrace.trace.hops import Hop
from cnitrace.trace.plan import MARK_ID_BASE, TWIN_ID_BASE, TraceSpec

SETTLE_S = 1.0            # after the last probe: let the monitors flush
PROBE_SPORT = 41_000


@dataclasses.dataclass(frozen=True)
class TraceConfig:
    spec: TraceSpec
    lab: str | None = None
    iface: str | None = None
    netns: str | None = None
    from_netns: str | None = None
    window: float = 10.0      # --match: how long to wait for --count packets
    times: bool = True        # kernel timestamps from the transit/drops tracepoint probes (lab --probe)

    def validate(self) -> None:
        if sum(x is not None for x in (self.lab, self.iface, self.netns)) > 1:
            raise UsageError("give at most one of --lab, --iface, --netns")
        if self.netns:
            validate_netns(self.netns)
        if self.from_netns:
            validate_netns(self.from_netns, "--from-netns")
        if self.iface:
            parse_iface(self.iface)
        if self.spec.mode == "probe" and not (self.lab or self.from_netns):
            raise UsageError("--probe needs --lab (its client pod sends) or --from-netns NS")
        if not 0 < self.window <= 600:
            raise UsageError("--window must be in (0, 600] seconds")


@dataclasses.dataclass
class Target:
    namespaces: list[str | None]
    client_netns: str | None
    src: str | None
    dst: str | None
    iface_glob: str | None
    lab: Any = None        # cnitrace.lab.manager.Lab when tracing a lab


def _target(cfg: TraceConfig, runner) -> Target:
    if cfg.lab:
        from cnitrace.lab import manager
        try:
            lab = manager.load(cfg.lab)
        except Exception:
            raise UsageError(f"no lab named {cfg.lab!r} (see `cnitrace lab list`)") from None
        client = lab.topo.clients[0]
        namespaces = [client.netns, lab.topo.node_netns] if cfg.spec.mode == "probe" else [lab.topo.node_netns]
        return Target(namespaces, client.netns, client.ip, cfg.spec.dst or lab.topo.server.ip, None, lab)
    ns, glob = None, None
    if cfg.iface:
        ns_part, glob = parse_iface(cfg.iface)
        ns = ns_part or None
    if cfg.netns:
        ns = cfg.netns
    src = None
    if cfg.spec.mode == "probe":
        out = runner.run(["ip", "-4", "-o", "route", "get", cfg.spec.dst], netns=cfg.from_netns, check=False)
        words = out.stdout.split()
        if "src" not in words:
            raise CnitraceError(f"--from-netns {cfg.from_netns}: no route to {cfg.spec.dst}")
        src = words[words.index("src") + 1]
    # the sending pod's namespace first: its own output and postrouting hooks are on the path too
    namespaces = [cfg.from_netns, ns] if cfg.spec.mode == "probe" and cfg.from_netns != ns else [ns]
    return Target(namespaces, cfg.from_netns, src, cfg.spec.dst, glob)


def _expr(spec: TraceSpec, target: Target) -> str:
    spec2 = dataclasses.replace(spec, src=spec.src or (target.src if spec.mode == "probe" else None),
                                dst=spec.dst or target.dst)
    return spec2.nft_expr()


def _iptables_rules(runner, netns: str | None) -> dict[tuple[str, str, int], Any]:
    """iptables nft-backend rules by (table, chain, position), to print iptables text for nft trace hops."""
    from cnitrace.collectors.iptables.parse import parse_ruleset
    out = runner.run(["iptables-nft-save"], netns=netns, check=False)
    if not out.ok or not out.stdout.strip():
        return {}
    rs, _warnings = parse_ruleset(out.stdout, backend="nft")
    return {(r.table, r.chain, r.position): r for r in rs.rules}


def _legacy_rules(runner, netns: str | None) -> int:
    out = runner.run(["iptables-legacy-save"], netns=netns, check=False)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("-A ")) if out.ok else 0


def run_trace(cfg: TraceConfig, *, say: Callable[[str], None] = lambda s: None,
              state: StateFile | None = None) -> dict[str, Any]:
    cfg.validate()
    sess = Session(state=state)
    runner = sess.runner
    target = _target(cfg, runner)
    warnings: list[str] = []
    sent: list[dict[str, Any]] = []
    twins: list[dict[str, Any]] = []
    monitors: list[netfilter.Monitor] = []
    legacy: list[netfilter.NflogMonitor] = []
    interrupted = False
    kt: KernelTimes | None = None
    tt: TableTimes | None = None
    table = f"{netfilter.TABLE_PREFIX}-{os.getpid()}"
    expr = _expr(cfg.spec, target)
    if target.iface_glob:
        expr_pre = f'iifname "{target.iface_glob}" {expr}'
    else:
        expr_pre = expr
    with sess:
        log_dir = sess.state.dir
        try:
            # the brackets first (a compile): a monitor that is up means every probe is in place
            if cfg.times:
                say("attaching the netfilter bracket probes (table times, conntrack state)")
                tt = TableTimes(sess, [(n, target.iface_glob) if target.iface_glob and n != target.client_netns else n
                                       for n in target.namespaces],
                                cfg.spec.proto, cfg.spec.src or (target.src if cfg.spec.mode == "probe" else None),
                                cfg.spec.dst or target.dst, cfg.spec.port)
                if not tt.start():
                    warnings.append(tt.why_not)
                    tt = None
            for ns in target.namespaces:
                sess.track("nft-table", table, family="ip", netns=ns)
                # --iface: the interface is the way in (prerouting) or the way out (output)
                glob = target.iface_glob if ns != target.client_netns else None
                text = netfilter.trace_table(table, expr_pre if glob else expr,
                                             f'oifname "{glob}" {expr}' if glob else expr)
                runner.run(["nft", "-f", "-"], input=text, netns=ns)
                mon = netfilter.Monitor(sess, ns, log_dir)
                mon.start()
                monitors.append(mon)
                if _legacy_rules(runner, ns):
                    legacy.append(_start_nflog(sess, ns, log_dir, warnings))
            if cfg.times and cfg.spec.mode == "probe" and target.lab is not None:
                client = target.lab.topo.clients[0]
                say("attaching the transit/drops tracepoint probes (kernel times)")
                kt = KernelTimes(sess, target.lab.topo.node_netns, client.node_iface, cfg.spec.proto,
                                 target.src, target.dst, cfg.spec.port, bridge=_linux_bridge(target.lab, runner),
                                 others=(target.lab.topo.server.node_iface,))
                if not kt.start():
                    warnings.append(kt.why_not)
            time.sleep(0.5)    # monitors subscribe
            checkpoint("window")
            say(f"tracing in {', '.join(n or 'host' for n in target.namespaces)}: {expr}")
            if cfg.spec.mode == "probe":
                argv = [sys.executable, "-m", "cnitrace.trace.send", target.src, target.dst, cfg.spec.proto,
                        str(cfg.spec.port), str(cfg.spec.count), str(MARK_ID_BASE), str(PROBE_SPORT + os.getpid() % 10_000),
                        str(TWIN_ID_BASE if tt is not None else 0)]
                out = runner.run(argv, netns=target.client_netns, timeout=60)
                got = json.loads(out.stdout.strip().splitlines()[-1])
                sent, twins = got["sent"], got.get("twins", [])
                say(f"sent {len(sent)} marked {cfg.spec.proto} probe(s) to {target.dst}:{cfg.spec.port}")
                for _ in range(int(SETTLE_S * 10)):
                    if kt is not None:
                        kt.poll(100)
                    else:
                        time.sleep(0.1)
                    if tt is not None:
                        tt.poll()
            else:
                deadline = time.monotonic() + cfg.window
                while time.monotonic() < deadline:
                    n = len(_collect(monitors, legacy, runner, None))
                    if tt is not None:
                        tt.poll()
                    if n >= cfg.spec.count:
                        time.sleep(0.3)
                        break
                    time.sleep(0.2)
        except Interrupted:
            interrupted = True
        for m in (*monitors, *legacy):
            m.stop()
        if tt is not None:
            tt.close()
        flows, raw = _flows(cfg, target, monitors, legacy, runner, sent, warnings, kt, tt, twins)
    selection = {"lab": cfg.lab, "iface": cfg.iface, "netns": [n or "host" for n in target.namespaces],
                 "nft_expr": expr, "client_netns": target.client_netns}
    doc = output.document(cfg.spec.to_json(), flows, sent=len(sent), selection=selection,
                          warnings=warnings, interrupted=interrupted)
    doc["_packets"] = raw
    return doc


NF_LOG = "net.netfilter.nf_log.2"


def _linux_bridge(lab, runner) -> str:
    """The lab's node-side Linux bridge (not an OVS bridge: that is not a netdev the probes see)."""
    br = lab.topo.bridge
    if not br or "ovs_ctl" in lab.topo.extra:
        return ""
    out = runner.run(["ip", "-o", "link", "show", "dev", br, "type", "bridge"], netns=lab.topo.node_netns, check=False)
    return br if out.ok and out.stdout.strip() else ""


def _start_nflog(sess, ns, log_dir, warnings) -> netfilter.NflogMonitor:
    """Legacy iptables: the namespace's IPv4 nf_log backend -> nfnetlink_log (the original value
    recorded first, restored on exit), and a reader bound to NFLOG group 0."""
    runner = sess.runner
    orig = runner.run(["cat", "/proc/sys/net/netfilter/nf_log/2"], netns=ns, check=False).stdout.strip()
    if orig != "nfnetlink_log":
        sess.track("sysctl", NF_LOG, original=orig or "NONE", netns=ns)
        runner.run(["sysctl", "-q", "-w", f"{NF_LOG}=nfnetlink_log"], netns=ns)
    mon = netfilter.NflogMonitor(sess, ns, log_dir)
    mon.start()
    if not mon.wait_ready():
        warnings.append(f"{ns or 'host'}: the nfnetlink_log reader did not start "
                        f"(NFLOG group 0 taken?): legacy iptables rules are not traced: {mon.text()[-200:]}")
    return mon


def _key(p) -> tuple:
    return (p.get("saddr"), p.get("daddr"), p.get("proto"), p.get("sport"), p.get("dport"), p.get("ip_id"))


def _collect(monitors, legacy, runner, warnings, with_hops=False):
    """-> {(netns, packet key): [packet fields, nft packet, legacy records]} over every monitor."""
    from cnitrace.trace import nflog
    out: dict[tuple, list] = {}
    legacy_ns = {m.netns for m in legacy}
    for mon in monitors:
        w: list[str] = []
        for p in netfilter.packets(netfilter.parse_trace(mon.text(), w), mon.netns or ""):
            if any(not e.table.startswith(netfilter.TABLE_PREFIX) for e in p.events) or mon.netns not in legacy_ns:
                out.setdefault((mon.netns, _key(p.packet)), [p.packet, None, []])[1] = p
        if warnings is not None:
            warnings.extend(w)
    for mon in legacy:
        w = []
        for fields, recs in nflog.group(nflog.parse_log(mon.text(), w)):
            entry = out.setdefault((mon.netns, _key(fields)), [fields, None, []])
            entry[2].extend(recs)
        if warnings is not None:
            warnings.extend(w)
    return out


def _layer_hops(lab, fields, runner, warnings, start_order: int) -> list[Hop]:
    """OVS (ofproto/trace) and tc/XDP BPF (test-run) hops for the lab's path; [] where it has none."""
    pk = {"proto": fields.get("proto"), "src": fields.get("saddr"), "dst": fields.get("daddr"),
          "sport": fields.get("sport"), "dport": fields.get("dport"), "ip_id": fields.get("ip_id")}
    out: list[Hop] = []
    if "ovs_ctl" in lab.topo.extra and lab.topo.bridge:
        try:
            from cnitrace.trace.ovs import ovs_hops_for_lab
            out += ovs_hops_for_lab(lab, pk, runner=runner)
        except Exception as exc:
            warnings.append(f"OVS layer: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}")
    try:
        from cnitrace.trace.bpf import bpf_hops_for_lab
        out += bpf_hops_for_lab(lab, pk, runner=runner)
    except Exception as exc:
        warnings.append(f"BPF layer: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}")
    return [dataclasses.replace(h, order=start_order + i + 1) for i, h in enumerate(out)]


def _flows(cfg, target, monitors, legacy, runner, sent, warnings, kt=None, tt=None,
           twins=()) -> tuple[list[dict], list[bytes]]:
    from cnitrace.trace import nflog
    from cnitrace.collectors.iptables.parse import parse_ruleset
    lab = target.lab
    truth = lab.truth if lab is not None else None
    by_id = {s["ip_id"]: s for s in sent}
    twin_of = {s["ip_id"]: t for s, t in zip(sent, twins)}
    flows, raw = [], []
    cache: dict = {}
    timed: dict[int, list] = {}
    names, reasons = {}, {}
    if kt is not None and kt.ps is not None:
        timed = timing.assign(kt.events, sent)
        reasons = kt.reasons()
        for line in runner.run(["ip", "-o", "link", "show"], netns=kt.netns, check=False).stdout.splitlines():
            parts = line.split(":")
            if len(parts) > 2 and parts[0].strip().isdigit():
                names[int(parts[0])] = parts[1].strip().split("@")[0]

    def tables(ns):
        if ns not in cache:
            positions = netfilter.chain_positions(runner.run(["nft", "-a", "list", "ruleset"], netns=ns, check=False).stdout)
            ipt = _iptables_rules(runner, ns)
            leg = runner.run(["iptables-legacy-save"], netns=ns, check=False)
            rs, _w = parse_ruleset(leg.stdout, backend="legacy") if leg.ok and leg.stdout.strip() else (None, ())
            lrules = {(r.table, r.chain, r.position): r for r in rs.rules} if rs else {}
            lchains = {(c.table, c.name): c for c in rs.chains} if rs else {}
            cache[ns] = (positions, ipt, lrules, lchains)
        return cache[ns]

    # One packet is seen in each namespace it crosses (the sending pod's, then the node's): its
    # views are joined in that order. Probes are told apart by IP ID, live packets by 5-tuple + ID.
    probe = cfg.spec.mode == "probe"
    rank = {n: i for i, n in enumerate(target.namespaces)}
    per: dict[Any, list] = {}
    for (ns, k), v in sorted(_collect(monitors, legacy, runner, warnings).items(), key=lambda e: rank.get(e[0][0], 99)):
        fields = v[0]
        if probe and fields.get("ip_id") not in by_id:
            continue
        per.setdefault(fields.get("ip_id") if probe else k, []).append((ns, v))
    if probe and lab is not None:
        # probes the netfilter layer never saw (OVS / tc BPF datapaths) still get the other layers
        for s_ in sent:
            if s_["ip_id"] not in per:
                fields = {"saddr": target.src, "daddr": target.dst, "proto": cfg.spec.proto, "sport": s_["sport"],
                          "dport": cfg.spec.port, "ip_id": s_["ip_id"]}
                per[s_["ip_id"]] = [(lab.topo.node_netns, [fields, None, []])]
    node_ns = target.namespaces[-1]
    for views in per.values():
        fields = views[-1][1][0]
        hops: list[Hop] = []
        for ns, (_f, nftp, recs) in views:
            positions, ipt, lrules, lchains = tables(ns)
            hops += netfilter.to_hops(nftp, positions=positions, iptables_rules=ipt, start_order=len(hops)) if nftp else []
            hops += nflog.to_hops(recs, lrules, lchains, netns=ns or "", start_order=len(hops))
        if lab is not None and probe:
            hops += _layer_hops(lab, fields, runner, warnings, start_order=len(hops))
        if not hops:
            continue
        kernel = timing.hops_for(timed.get(fields.get("ip_id"), []), node_ns or "", names, reasons) if timed else []
        if kernel:      # received where the node's namespace begins (after the pod's hops); sent / freed at the end
            first = next((i for i, h in enumerate(hops) if h.netns == (node_ns or "")), len(hops))
            hops = ([*hops[:first], *(h for h in kernel if h.order < 0), *hops[first:],
                     *sorted((h for h in kernel if h.order >= 0), key=lambda h: h.order)])
            hops = [dataclasses.replace(h, order=i + 1) for i, h in enumerate(hops)]
        table_events = tabletimes.events_of(tt.events, fields) if tt is not None else []
        if table_events:
            fl = tabletimes.floors(tt.events, tt.keys)
            twin = twin_of.get(fields.get("ip_id"))
            twin_events = tabletimes.events_of(tt.events, {**fields, **twin}) if twin else []
            hops = tabletimes.table_hops(hops, table_events, tt.keys, fl, twin_events)
            ct = tabletimes.conntrack_hop(table_events, tt.keys)
            if ct is not None:
                hops = tabletimes.with_conntrack(hops, tabletimes.conntrack_hop(
                    table_events, tt.keys, _conntrack_entry(runner, ct.netns or None, fields), looked_up=True))
        hops, verdict, idx = policy.annotate(hops, truth=truth, lab=lab.spec.name if lab else "",
                                             proto=cfg.spec.proto)
        s = by_id.get(fields.get("ip_id"))
        f = output.flow(fields, hops, verdict, idx, node=node_ns or os.uname().nodename,
                        t_wall=s["wall"] if s else None, times="measured" if kernel or table_events else "none")
        if s:
            f["cnitrace"]["sent_t_ns"] = s["t_ns"]
        flows.append(f)
        raw.append(bytes.fromhex(s["bytes"]) if s else output.packet_bytes(fields))
        if cfg.spec.mode == "match" and len(flows) >= cfg.spec.count:
            break
    if cfg.spec.mode == "probe":
        seen = {f["cnitrace"]["ip_id"] for f in flows}
        missing = [s["ip_id"] for s in sent if s["ip_id"] not in seen]
        if missing:
            warnings.append(f"{len(missing)} probe(s) sent but not traced (IP IDs {missing[:5]})")
    return flows, raw


def _conntrack_entry(runner, netns: str | None, fields: dict) -> Any:
    """The packet's conntrack entry after the trace (`conntrack -L` filtered to its 5-tuple), or None."""
    from cnitrace.collectors.conntrack.parse import parse_conntrack_L
    if not fields.get("proto") or runner.which("conntrack") is None:
        return None
    argv = ["conntrack", "-L", "-p", str(fields["proto"]), "--orig-src", str(fields.get("saddr")),
            "--orig-dst", str(fields.get("daddr"))]
    if fields.get("sport") is not None and fields.get("dport") is not None:
        argv += ["--sport", str(fields["sport"]), "--dport", str(fields["dport"])]
    out = runner.run(argv, netns=netns, check=False)
    conns = parse_conntrack_L(out.stdout, netns or "").records if out.ok else ()
    return conns[0] if conns else None
