"""The command line: options → config → one call → render → exit status.

Domain code never imports click. `main()` is the single error boundary: a CnitraceError
becomes one line on stderr and its exit status; Ctrl-C becomes 130; nothing else
prints a traceback unless --debug is given.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

import click

from cnitrace import __version__
from cnitrace.core.entry import run_click
from cnitrace.core.errors import ExitStatus, NotRootError
from cnitrace.node import checks
from cnitrace.collectors import registry
from cnitrace.core.errors import UsageError
from cnitrace.core.progress import steps
from cnitrace.core.selection import resolve, validate_glob, validate_netns
from cnitrace.core.session import Session
from cnitrace.core.state import StateFile
from cnitrace.core.state import cleanup as do_cleanup
from cnitrace.lab import manager
from cnitrace.lab.model import MAX_RULES, LabSpec
from cnitrace.lab.replay_plan import replay_summary
from cnitrace.lab.replay_plan import report_text as replay_report_text
from cnitrace.node.doctor import run_doctor
from cnitrace.outputs import write_document
from cnitrace.probes import command
from cnitrace.probes.command import parse_force
from cnitrace.probes.runtime import Filter
from cnitrace.profile.config import TRAFFIC, ProfileConfig
from cnitrace.profile.run import run_profile
from cnitrace.reports.doctor import render_doctor
from cnitrace.reports.snapshot import render_snapshot
from cnitrace.reports.document import fmt_ns
from cnitrace.reports.load import load_profile
from cnitrace.analyze.inputs import is_profile_document
from cnitrace.analyze.run import analyze_paths, diff_paths
from cnitrace.reports.analyze.html import render_html as render_analysis_html
from cnitrace.reports.analyze.terminal import render_analysis, render_diff
from cnitrace.reports.profile.diff import diff_docs
from cnitrace.reports.profile.html import render_html as render_profile_html
from cnitrace.reports.profile.terminal import render_profile
from cnitrace.reports.sweep.html import render_sweep_html
from cnitrace.reports.sweep.terminal import render_sweep
from cnitrace.sweep import run as sweep_mod
from cnitrace.sweep.model import make_config
from cnitrace.sweep.model import points


class Ctx:
    """Carried by the group to every command."""

    def __init__(self, debug: bool):
        self.debug = debug


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("this command needs root (run it with sudo)")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cnitrace")
@click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Node-local kernel datapath tracer and policy-cost profiler for Kubernetes CNIs."""
    checks.register_all()
    ctx.obj = Ctx(debug)


# --- doctor -----------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> int:
    """Check what this node can do and which probe backend each stage will use.

    Exit 0 when profiling can run (at least counters only), 1 otherwise.
    """

    report = run_doctor()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        render_doctor(report)
    return ExitStatus.OK if report.can_profile else ExitStatus.FAILURE


# --- cleanup ----------------------------------------------------------------------------------

@cli.command()
@click.option("--lab", "labs", multiple=True, metavar="NAME", help="Also remove this lab (repeatable).")
@click.option("--all", "all_labs", is_flag=True, help="Also remove every lab.")
@click.option("--force", is_flag=True, help="Also remove objects of runs that are still alive.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed and kept as JSON.")
def cleanup(labs: tuple[str, ...], all_labs: bool, force: bool, as_json: bool) -> int:
    """Remove what a killed cnitrace run or lab build left behind.

    Objects of runs still alive (another profile, a test in progress) and finished labs are
    kept and listed, unless named with --lab, or --all / --force is given.
    """

    require_root()
    result = do_cleanup(StateFile(), labs=None if all_labs or force else frozenset(labs), force=force)
    manager.prune_locks()
    if as_json:
        click.echo(json.dumps({
            "removed": [r.to_json() for r in result.removed],
            "failed": [{"record": r.to_json(), "error": e} for r, e in result.failed],
            "kept": [{"record": r.to_json(), "why": why} for r, why in result.kept],
        }, indent=2))
    else:
        for r in result.removed:
            click.echo(f"removed {r.kind} {r.name}")
        for r, e in result.failed:
            click.echo(f"could not remove {r.kind} {r.name}: {e}", err=True)
        kept: dict[tuple[str, str], int] = {}
        for r, why in result.kept:
            kept[(r.owner, why)] = kept.get((r.owner, why), 0) + 1
        for (owner, why), n in kept.items():
            click.echo(f"kept {n} object(s) of {owner}: {why}")
        if not result.removed and not result.failed and not result.kept:
            click.echo("nothing to clean up")
    return ExitStatus.FAILURE if result.failed else ExitStatus.OK


# --- profile / demo ---------------------------------------------------------------------------

def _write_outputs(doc: dict, json_out: str | None, html_out: str | None, render_html=None) -> None:
    """Write the JSON document and/or its HTML rendering (the profile's unless told otherwise)."""
    write_document(doc, json_out, html_out, render_html or render_profile_html)


def _say(msg: str) -> None:
    click.echo(f"· {msg}", err=True)


@cli.command()
@click.option("--iface", "ifaces", multiple=True, metavar="[NETNS/]GLOB", help="Interfaces to watch (e.g. 'cali*').")
@click.option("--netns", "netns", multiple=True, metavar="NAME", help="Watch every interface of a namespace.")
@click.option("--lab", "lab_name", default=None, metavar="NAME", help="Profile a cnitrace lab (and allow --traffic).")
@click.option("--duration", default=5.0, show_default=True, type=float, help="Window length in seconds.")
@click.option("--traffic", type=click.Choice(TRAFFIC), default="none",
              show_default=True, help="Traffic to send during the window, inside the lab or toward --target.")
@click.option("--target", metavar="HOST[:PORT]|URL",
              help="Send --traffic here (you run the server: iperf3 -s, sockperf server, an HTTP server).")
@click.option("--from-netns", metavar="NAME", help="Run the client toward --target in this namespace (default: host's).")
@click.option("--ports", metavar="LIST",
              help="--traffic probe --target: also probe these ports, e.g. '80,8000-8010,udp/53'.")
@click.option("--no-calibrate", is_flag=True, help="Skip the ns-per-rule micro-benchmark (no modelled time).")
@click.option("--probe-backend", "probe_backend", multiple=True, metavar="STAGE=BACKEND",
              help="Pin a stage's probe backend instead of the ladder's choice, e.g. netfilter=kprobe; "
                   "STAGE=counters attaches nothing (repeatable).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the JSON document here.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write the HTML report here.")
def profile(ifaces, netns, lab_name, duration, traffic, target, from_netns, ports, no_calibrate, probe_backend,
            json_out, html_out) -> int:
    """Profile where each packet's time goes in the selected datapath.

    Ctrl-C ends the window early and still prints the report.
    """

    cfg = ProfileConfig(tuple(ifaces), tuple(netns), lab_name, duration, traffic, not no_calibrate,
                        target=target, from_netns=from_netns, ports=ports,
                        force=tuple(parse_force(f, "--probe-backend") for f in probe_backend))
    cfg.validate()          # bad options are refused the same way with or without root
    require_root()
    with steps() as say:    # live on a terminal; one line per step otherwise
        doc = run_profile(cfg, say=say)
    render_profile(doc)
    _write_outputs(doc, json_out, html_out)
    return ExitStatus.OK


@cli.command()
@click.option("--datapath", default="calico", show_default=True, help="Lab datapath to profile.")
@click.option("--rules", default=1000, show_default=True, type=int, help="Policy rules in the lab.")
@click.option("--backend", default="legacy", show_default=True, help="iptables backend: legacy or nft.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the JSON document here.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write the HTML report here.")
def demo(datapath: str, rules: int, backend: str, json_out: str | None, html_out: str | None) -> int:
    """Bring up the built-in lab, profile it with crafted traffic, tear it down."""

    require_root()
    spec = LabSpec(name="demo", datapath=datapath, rules=rules, backend=backend)
    _say(f"lab up: {datapath}, {rules} rules ({backend})")
    manager.up(spec, progress=_say, temporary=True)
    try:
        doc = run_profile(ProfileConfig(lab="demo", duration=3.0, traffic="probe"), say=_say)
    finally:
        _say("lab down")
        manager.down("demo")
    render_profile(doc)
    _write_outputs(doc, json_out, html_out)
    return ExitStatus.OK


# --- report / diff ------------------------------------------------------------------------------

@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--html", "html_out", type=click.Path(dir_okay=False, writable=True), help="Also write an HTML report.")
def report(file: str, html_out: str | None) -> int:
    """Re-render a saved profile (JSON) in the terminal, and optionally as HTML."""

    doc = load_profile(file)
    render_profile(doc)
    if html_out:
        with open(html_out, "w", encoding="utf-8") as f:
            f.write(render_profile_html(doc))
        click.echo(f"wrote {html_out}")
    return ExitStatus.OK


@cli.command()
@click.argument("before")
@click.argument("after")
@click.option("--top", default=15, show_default=True, type=click.IntRange(1, 1000), help="Rows to show.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the diff as JSON here.")
def diff(before: str, after: str, top: int, json_out: str | None) -> int:
    """Show what grew between two saved profile runs, or between two sets of node dumps.

    BEFORE and AFTER are profile JSON documents, or node dumps (as `analyze` reads them: a file, a
    directory, or a comma-separated list), e.g. before and after an incident or a policy rollout.
    """

    kinds = {is_profile_document(before), is_profile_document(after)}
    if kinds == {False}:
        doc = diff_paths(before, after, top=top)
        render_diff(doc, top=top)
        _write_outputs(doc, json_out, None)
        return ExitStatus.OK
    if kinds == {True, False}:
        raise UsageError("diff: one side is a saved profile and the other node dumps; give two of a kind")
    changes = diff_docs(load_profile(before), load_profile(after))
    click.echo(f"{'node':58} {'before':>10} {'after':>10} {'change':>12}")
    for c in changes[:top]:
        ratio = f" ×{c.ratio:.2f}" if c.ratio else ""
        change = ("+" if c.delta_ns >= 0 else "-") + fmt_ns(abs(c.delta_ns))
        click.echo(f"{c.path[-58:]:58} {fmt_ns(c.before_ns):>10} {fmt_ns(c.after_ns):>10} {change:>12}{ratio}")
    _write_outputs({"kind": "profile-diff", "changes": [
        {"path": c.path, "kind": c.kind, "before_ns": c.before_ns, "after_ns": c.after_ns, "delta_ns": c.delta_ns}
        for c in changes]}, json_out, None)
    return ExitStatus.OK


# --- analyze ----------------------------------------------------------------------------------

@cli.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the JSON document here.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write the HTML report here.")
@click.option("--calibrate", is_flag=True,
              help="Measure this node's ns per rule shape first (root; cached) instead of the reference figures.")
def analyze(files: tuple[str, ...], json_out: str | None, html_out: str | None, calibrate: bool) -> int:
    """Analyse saved node output offline: the CNI, kube-proxy mode, rulesets and their static cost.

    Reads iptables-save (-c or not), iptables -L -v, nft list ruleset (text or -j), ipset, ovs-ofctl
    dump-flows, dpctl, conntrack -S/-L, bpftool, tc filter show, cilium status / bpf policy get and
    calico-node -bpf dumps, detected from their content. FILE may be a directory or a comma-separated
    list; all files are one node, and one file may hold several pasted outputs, each after its prompt.
    Costs use this node's cached calibration if it has one, else stated reference figures.
    """

    if calibrate:
        require_root()
    result = analyze_paths(files, calibrate=calibrate)
    render_analysis(result.doc)
    _write_outputs(result.doc, json_out, html_out, render_analysis_html)
    return ExitStatus.OK


# --- lab --------------------------------------------------------------------------------------

@cli.group()
def lab() -> None:
    """The built-in lab: a CNI's policy datapath in network namespaces, with N rules."""


@lab.command("up")
@click.option("--datapath", "-d", default=None,
              help="calico, kube-router, weave, nft, flannel, antrea, cilium; weave-fastdp (needs the openvswitch "
                   "kernel module) (with --replay: the pods' shape; default: the dump's).")
@click.option("--rules", "-n", default=0, show_default=True, type=int, help=f"Port-range rules (0..{MAX_RULES}).")
@click.option("--pods", default=1, show_default=True, type=int, help="Client pods (1..250).")
@click.option("--l7", is_flag=True, help="Detour allowed HTTP through a real L7 proxy (GET / only).")
@click.option("--l7-proxy", default="nginx", show_default=True, help="nginx or haproxy.")
@click.option("--backend", default=None, help="iptables backend: legacy or nft [default: legacy; with --replay: the dump's].")
@click.option("--match-position", type=int, default=None, help="Rules before the allow rule (default: N, last).")
@click.option("--replay", "replay_files", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Load a real node's iptables-save, nft list ruleset (text or -j) or ipset save (repeatable).")
@click.option("--report", "report_out", type=click.Path(dir_okay=False), metavar="FILE",
              help="With --replay: write every rewrite (original -> new, or dropped: reason) here.")
@click.option("--name", default="lab", show_default=True, help="Lab name (namespaces cnit-NAME-*).")
@click.option("--json", "as_json", is_flag=True, help="Print the lab description as JSON.")
def lab_up(datapath: str | None, rules: int, pods: int, l7: bool, l7_proxy: str, backend: str | None,
           match_position: int | None, replay_files: tuple[str, ...], report_out: str | None, name: str,
           as_json: bool) -> int:
    """Build a lab; it stays up until `cnitrace lab down`."""

    t0 = time.monotonic()
    if not replay_files and not datapath:
        raise UsageError("lab up needs --datapath NAME (or --replay FILE)")
    if report_out and not replay_files:
        raise UsageError("--report needs --replay FILE")
    spec = (LabSpec(name=name, datapath="replay", pods=pods, rules=rules, l7=l7, backend=backend or "",
                    match_position=match_position, replay=tuple(replay_files), shape=datapath or "")
            if replay_files else
            LabSpec(name=name, datapath=datapath, rules=rules, pods=pods, l7=l7, backend=backend or "legacy",
                    match_position=match_position, l7_proxy=l7_proxy))
    manager.preflight(spec)      # bad input is refused the same way with or without root
    require_root()
    built = manager.up(spec, progress=None if as_json else (lambda m: click.echo(f"  {m}", err=True)))
    if report_out:
        with open(report_out, "w", encoding="utf-8") as f:
            f.write(replay_report_text(json.loads(Path(built.topo.extra["replay"]["report"]).read_text())))
    if as_json:
        click.echo(json.dumps(built.to_json(), indent=2, sort_keys=True))
    elif replay_files:
        click.echo("\n".join(replay_summary(built, time.monotonic() - t0, report_out)))
    else:
        t = built.topo
        click.echo(f"lab {name} up: {datapath} with {rules} rules, server {t.server.ip} "
                   f"({t.server.netns}), {len(t.clients)} client(s), built in {built.timings['total']:.2f} s")
    return ExitStatus.OK


@lab.command("down")
@click.option("--name", default="lab", show_default=True, help="Lab name.")
def lab_down(name: str) -> int:
    """Remove a lab and everything it created."""

    require_root()
    n = manager.down(name)
    click.echo(f"lab {name} down: removed {n} objects")
    return ExitStatus.OK


@lab.command("status")
@click.option("--name", default="lab", show_default=True, help="Lab name.")
@click.option("--json", "as_json", is_flag=True, help="Print the full description as JSON.")
def lab_status(name: str, as_json: bool) -> int:
    """Show a lab's topology, ground truth and health. Exit 1 if it is broken."""

    st = manager.status(name)
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
    else:
        spec, topo = st["spec"], st["topology"]
        click.echo(f"lab {name}: {spec['datapath']} rules={spec['rules']} l7={spec['l7']} "
                   f"{'healthy' if st['healthy'] else 'BROKEN'}")
        for p in topo["pods"]:
            click.echo(f"  {p['role']:6} {p['netns']:24} {p['ip']:15} node-side {p['node_iface']}")
        if st["missing_netns"]:
            click.echo(f"  missing namespaces: {', '.join(st['missing_netns'])}")
    return ExitStatus.OK if st["healthy"] else ExitStatus.FAILURE


@lab.command("list")
def lab_list() -> int:
    """List the labs on this node."""

    labs = manager.names()
    for n in labs:
        click.echo(n)
    if not labs:
        click.echo("no labs", err=True)
    return ExitStatus.OK


# --- probe ------------------------------------------------------------------------------------

@cli.command()
@click.option("--stage", "-s", "stages", multiple=True, default=("transit", "drops"), show_default=True,
              help="transit, drops, l7_detour, netfilter, ovs_kernel (repeatable).")
@click.option("--iface", "-i", "ifaces", multiple=True, help="[NETNS/]NAME or glob whose packets to time (repeatable).")
@click.option("--netns", "netns", multiple=True, help="Only packets in this named network namespace (repeatable).")
@click.option("--proto", type=click.Choice(["tcp", "udp", "icmp"]), help="5-tuple filter: IP protocol.")
@click.option("--saddr", help="5-tuple filter: IPv4 source.")
@click.option("--daddr", help="5-tuple filter: IPv4 destination.")
@click.option("--sport", type=click.IntRange(0, 65535), default=0, help="5-tuple filter: source port.")
@click.option("--dport", type=click.IntRange(0, 65535), default=0, help="5-tuple filter: destination port.")
@click.option("--mark", help="Only skbs with this mark, VALUE[/MASK].")
@click.option("--duration", "-d", type=float, default=5.0, show_default=True, help="Seconds to measure.")
@click.option("--events", is_flag=True, help="Also stream per-packet events (ring or perf buffer).")
@click.option("--force", "force", multiple=True,
              help="STAGE=BACKEND: pin a backend (fentry, kprobe, tp_btf, raw_tracepoint, tracepoint).")
@click.option("--ready-file", type=click.Path(dir_okay=False), help="Written once the probes are attached.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def probe(stages, ifaces, netns, proto, saddr, daddr, sport, dport, mark, duration, events, force, ready_file,
          as_json) -> int:
    """Time packets per datapath stage in the kernel for a while, then print the figures.

    Each figure says which backend measured it (fentry, kprobe, tracepoint) or that it is
    modelled (counters only). Ctrl-C ends early; the probes are always detached.
    """

    require_root()
    mark_value, mark_mask = None, 0xFFFFFFFF
    if mark:
        v, _, m = mark.partition("/")
        try:
            mark_value, mark_mask = int(v, 0), (int(m, 0) if m else 0xFFFFFFFF)
        except ValueError:
            raise click.BadParameter(f"{mark!r} is not VALUE[/MASK]", param_hint="--mark") from None
    flt = Filter(mark=mark_value, mark_mask=mark_mask, proto={"tcp": 6, "udp": 17, "icmp": 1}.get(proto, 0),
                 saddr=saddr, daddr=daddr, sport=sport, dport=dport)
    cfg = command.ProbeConfig(stages=tuple(stages), ifaces=tuple(command.parse_iface(i) for i in ifaces),
                              netns=tuple(netns), filt=flt, duration=duration, events=events,
                              force=tuple(command.parse_force(f) for f in force), ready_file=ready_file)
    result = command.run(cfg)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
        return ExitStatus.OK
    for c in result["choices"]:
        click.echo(f"{c['stage']:10} {c['backend']:10} {c['signal']:8} {c['reason']}")
    for f in result["figures"]:
        key = " ".join(f"{k}={v}" for k, v in f["key"].items() if k not in ("netns", "location"))
        unit = f["unit"]
        click.echo(f"{f['stage']:10} {key}: n={f['count']} mean={f['mean']:.0f} {unit} "
                   f"p50={f['p50']:.0f} p99={f['p99']:.0f} [{f['backend']}]")
    click.echo(f"attached in {result['attach_seconds']:.2f} s")
    if result["events"]["enabled"]:
        ev = result["events"]
        click.echo(f"events: {ev['received']} received, {ev['lost']} lost (the kernel's buffer was full)")
    return ExitStatus.OK


# --- snapshot ---------------------------------------------------------------------------------

@cli.command()
@click.option("--iface", "ifaces", multiple=True, metavar="[NETNS/]GLOB",
              help="Interfaces to look at ('cali*', or 'ns/eth*' inside a namespace); their veth peers "
                   "and namespaces follow (repeatable).")
@click.option("--netns", "netns", multiple=True, metavar="NAME", help="A named network namespace (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (save it to pass to --since later).")
@click.option("--since", type=click.Path(dir_okay=False), metavar="FILE",
              help="Print the deltas since a snapshot saved with --json.")
@click.option("--interval", type=click.FloatRange(0.1, 3600), metavar="SECONDS",
              help="Take two snapshots this far apart and print the deltas (BPF run stats on between).")
@click.option("--only", "only", multiple=True, metavar="COLLECTOR",
              help="iptables, nftables, ovs, bpf, cilium or conntrack (repeatable; default all).")
@click.option("--ovs-rundir", type=click.Path(file_okay=False), help="A private OVS's run directory.")
@click.option("--bpf-stats", type=click.Choice(["auto", "fd", "sysctl"]), default="auto", hidden=True,
              help="How BPF run stats are enabled for --interval.")
def snapshot(ifaces: tuple[str, ...], netns: tuple[str, ...], as_json: bool, since: str | None,
             interval: float | None, only: tuple[str, ...], ovs_rundir: str | None, bpf_stats: str) -> int:
    """Print every available collector's counters, or their deltas (--since FILE, --interval S).

    Per-namespace state (iptables, nftables, conntrack, BPF attachments) is read inside every
    namespace the selection involves; with neither --iface nor --netns, the host namespace's.
    """
    for i in ifaces:        # bad input is refused before any kernel work
        validate_glob(i)
    for n in netns:
        validate_netns(n)
    if since and interval:
        raise UsageError("--since and --interval are exclusive")
    require_root()
    selection = resolve(ifaces, netns) if (ifaces or netns) else None
    ctx = registry.Context(selection=selection, ovs_rundir=ovs_rundir)
    req = registry.Request(collectors=only, interval_s=interval, since=since, bpf_stats=bpf_stats)
    with Session() as session:
        result = registry.run(req, ctx, session)
    if as_json:
        out = click.get_text_stream("stdout")   # streamed: a 100,000-rule document is ~80 MB
        registry.write_json(result.document, out.write)
        out.write("\n")
    else:
        render_snapshot(result)
    return ExitStatus.OK


# --- trace ------------------------------------------------------------------------------------

@cli.command()
@click.option("--lab", "lab_name", default=None, metavar="NAME", help="Trace in a cnitrace lab (its client pod sends --probe).")
@click.option("--iface", default=None, metavar="[NETNS/]GLOB", help="Trace packets entering/leaving these interfaces.")
@click.option("--netns", default=None, metavar="NAME", help="Trace inside this namespace.")
@click.option("--probe", "probe", default=None, metavar="PROTO:DST:PORT", help="Craft and send marked packets; trace only them.")
@click.option("--from-netns", default=None, metavar="NS", help="Send --probe from this namespace (default: the lab's client).")
@click.option("--match", "match", default=None, metavar="'PROTO [src A] [dst B] [port P]'", help="Trace live matching packets.")
@click.option("--count", default=None, type=int, help="Probes to send / live packets to trace [1 / 10].")
@click.option("--window", default=10.0, show_default=True, type=float, help="--match: seconds to wait for --count packets.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the trace document (Hubble flow fields) here.")
@click.option("--pcap", "pcap_out", type=click.Path(dir_okay=False), help="Write pcapng with each packet's trace JSON as its comment.")
@click.option("--no-times", is_flag=True, help="Skip the kernel tracepoint timestamps (no BPF compile).")
def trace(lab_name, iface, netns, probe, from_netns, match, count, window, json_out, pcap_out, no_times) -> int:
    """Trace packets through the node: every netfilter table, chain and rule they met, the verdict
    and the policy behind it. Only cnitrace's own table sets `nftrace`; it is removed on exit."""
    from cnitrace.trace.plan import parse_match, parse_probe
    from cnitrace.trace.run import TraceConfig, run_trace
    from cnitrace.trace.output import write_pcapng
    from cnitrace.reports.trace import render_trace

    if (probe is None) == (match is None):
        raise UsageError("give exactly one of --probe or --match")
    spec = parse_probe(probe, 1 if count is None else count) if probe else parse_match(match, 10 if count is None else count)
    cfg = TraceConfig(spec, lab=lab_name, iface=iface, netns=netns, from_netns=from_netns, window=window,
                      times=not no_times)
    cfg.validate()
    require_root()
    with steps() as say:
        doc = run_trace(cfg, say=say)
    raw = doc.pop("_packets", [])
    render_trace(doc)
    if json_out:
        Path(json_out).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if pcap_out:
        write_pcapng(pcap_out, doc["flows"], raw)
    if doc["interrupted"]:
        return ExitStatus.INTERRUPTED
    return ExitStatus.OK if doc["traced"] else ExitStatus.FAILURE


# --- sweep ------------------------------------------------------------------------------------

@cli.command()
@click.option("--datapath", "datapaths", metavar="LIST", help="Comma-separated datapaths (default: all seven).")
@click.option("--rules", metavar="LIST", help="Comma-separated rule counts (default 0,100,1000; --quick 0,1000).")
@click.option("--clients", metavar="LIST", help="Comma-separated client pod counts (default 1).")
@click.option("--l7", is_flag=True, help="Add an L7-policy twin of each point (calico, cilium, antrea) with ab load.")
@click.option("--placement", type=click.Choice(["intra", "inter"]), default="intra", show_default=True,
              help="inter: the client pod sits behind a second node joined by a VXLAN overlay.")
@click.option("--repeat", default=1, show_default=True, type=int, help="Measurements per point (spread reported).")
@click.option("--backend", default="legacy", show_default=True, metavar="legacy|nft",
              help="iptables backend of the iptables datapaths (calico, kube-router, weave): legacy or nft "
                   "(iptables-nft); calibration and modelled figures use the same backend.")
@click.option("--quick", is_flag=True, help="Shorter measurements and rules 0,1000 (under 2 minutes).")
@click.option("--attribute/--no-attribute", default=None,
              help="Profile-attribute crafted probes at every point (default: on, off with --quick).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the JSON document here.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write the HTML report here.")
def sweep(datapaths, rules, clients, l7, placement, repeat, backend, quick, attribute, json_out, html_out) -> int:
    """Measure cost curves as policies and clients grow, on the built-in lab.

    Every point gets a fresh lab, a semantics check (allowed ports pass, denied ports drop), then
    throughput, latency, CPU, memory and per-packet policy cost (measured and modelled).
    Ctrl-C keeps the finished points, writes the partial result and removes the lab.
    """
    # lazily: only the sweep's live progress bar needs rich.progress
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


    cfg = make_config(datapaths=datapaths, rules=rules, clients=clients, l7=l7, placement=placement,
                      repeat=repeat, quick=quick, attribute=attribute, backend=backend)
    require_root()
    total = len(points(cfg))
    err = Console(stderr=True, width=100)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
                  transient=False) as bar:
        task = bar.add_task("sweep", total=total)

        def progress(ev: dict) -> None:
            if ev["event"] == "calibrate":
                bar.update(task, description=f"calibrating ({ev['id']})")
            elif ev["event"] == "point":
                bar.update(task, description=f"{ev['id']}")
            elif ev["event"] == "done":
                bar.update(task, completed=ev["index"] + 1)

        doc = sweep_mod.run(cfg, progress=progress)
    render_sweep(doc)
    _write_outputs(doc, json_out, html_out, render_sweep_html)
    if doc["interrupted"]:
        return ExitStatus.INTERRUPTED
    if not doc["semantics_all_passed"] or any(p["status"] != "ok" for p in doc["points"]):
        return ExitStatus.FAILURE
    return ExitStatus.OK


# --- commands defined in their own packages (one line each) ------------------------------------
# (agent, merge, k8s, study: added here as their packages land)
from cnitrace.agent.command import agent  # noqa: E402
cli.add_command(agent)
from cnitrace.study.command import study  # noqa: E402
cli.add_command(study)
from cnitrace.cluster.command import k8s, merge  # noqa: E402
cli.add_command(merge)
cli.add_command(k8s)


def main(argv: list[str] | None = None) -> int:
    """Entry point and the one error boundary."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    # A 100,000-rule snapshot allocates millions of small objects and no cycles: the default
    # young-generation threshold (700) makes the collector rescan them all ~every millisecond.
    gc.set_threshold(100_000, 50, 100)
    return run_click(cli, "cnitrace", argv, debug)
