"""The replay datapath: a real node's ruleset loaded into a lab node namespace (`lab up --replay`).

`prepare()` reads the dumps and rewrites them (pure, cnitrace.lab.replay_plan) before anything is
created; `build()` plumbs pods shaped like the dump's (replay_map), routes every address the node
namespace does not own to the server pod (so probes toward service IPs and other pods' addresses
are forwarded through the replayed chains, then dropped by the server pod), and loads, in order:
the ipsets (`ipset restore -exist`; sets the rules need but no dump has are created empty),
the iptables dumps (`{ip,ip6}tables-{legacy,nft}-restore`, the dump's own backend) and the nft
dumps (`nft -f`, `nft -j -f`), all inside the node namespace, so they vanish with it.

A rule the kernel still refuses (a module this kernel lacks: `-m ipvs`, `-j CT --helper ftp`...)
is dropped at load time with the tool's message and the load retried, at most MAX_REFUSED
times; a legacy commit failure, which names no rule, is narrowed down by bisection.
There is no ground truth: the lab did not write these rules, so which packets they allow or deny
is what the profile observes (its exercised-rules section), never a claim made in advance.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import time
from typing import TYPE_CHECKING, Callable

from cnitrace.core.errors import ToolError, UsageError
from cnitrace.core.state import state_dir
from cnitrace.lab import replay_plan, topology
from cnitrace.lab.datapath import Datapath
from cnitrace.lab.model import MAX_PODS, GroundTruth, LabSpec, Topology
from cnitrace.lab.replay import SET_TYPES, Rewrite, Rewritten, read_sources
from cnitrace.lab.topology import plumb_bridge, plumb_routed, pod_mac
from cnitrace.traffic import replay as probes

if TYPE_CHECKING:
    from cnitrace.core.runner import Runner
    from cnitrace.core.session import Session

MAX_REFUSED = 20
CALI_MAC = "ee:ee:ee:ee:ee:ee"
NOTES = ("replayed ruleset: no ground truth. The lab did not write these rules, so it makes no claim "
         "about which packets they allow or deny; the profile reports which rules packets exercised.")
_FAILED = re.compile(r"line (\d+) failed")
_AT = re.compile(r"Error occurred at line: (\d+)")
_NFT_AT = re.compile(r"^[^:\n]*:(\d+):\d+(?:-\d+)?: Error: (.*)$", re.M)
_JSON_AT = re.compile(r"Parsing command array at index (\d+) failed")
_IPSET_AT = re.compile(r"Error in line (\d+): (.*)")


def report_path(lab: str):
    return state_dir() / "labs" / f"cnit-{lab}.replay"


def restore_argv(family: str, backend: str) -> list[str]:
    return [f"{'ip6' if family == 'ipv6' else 'ip'}tables-{backend}-restore", "-w", "5"]


def save_argv(family: str, backend: str) -> list[str]:
    return [f"{'ip6' if family == 'ipv6' else 'ip'}tables-{backend}-save"]


_CACHE: dict[tuple, replay_plan.Prepared] = {}


def prepare(spec: LabSpec) -> "Replay":
    """Read and rewrite the dumps (cached per process: `lab up` validates before and after the
    root check); UsageError with one line on anything that cannot be replayed."""
    if spec.l7 or spec.rules or spec.match_position is not None:
        raise UsageError("--replay loads a real ruleset: --rules, --match-position and --l7 do not apply")
    if not 1 <= spec.pods <= MAX_PODS:
        raise UsageError(f"--pods {spec.pods} out of range: 1..{MAX_PODS}")
    if spec.backend not in ("", "legacy", "nft"):
        raise UsageError(f"--backend {spec.backend!r}: choose legacy or nft")
    key = (spec.replay, tuple(_mtime(p) for p in spec.replay), spec.pods, spec.shape, spec.name, spec.backend)
    if key not in _CACHE:
        sources = read_sources(spec.replay, spec.backend or None)
        _CACHE.clear()
        _CACHE[key] = replay_plan.prepare(sources, pods=spec.pods, shape=spec.shape or None, lab=spec.name)
    return Replay(_CACHE[key])


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


class Replay(Datapath):
    name = "replay"
    description = "a real node's iptables/nft/ipset dump replayed in a lab node namespace"
    supports_l7 = False

    def __init__(self, prepared: replay_plan.Prepared):
        self.p = prepared
        m = prepared.mapping
        self.routed, self.bridge = m.routed, m.bridge
        kinds = {r.source.kind for r in prepared.rewritten}
        tools = {restore_argv(r.source.family, r.source.backend)[0] for r in prepared.rewritten
                 if r.source.kind == "iptables"}
        tools |= {"nft"} if kinds & {"nft", "nft-json"} else set()
        tools |= {"ipset"} if prepared.sets or "ipset" in kinds else set()
        self.tools = tuple(sorted(tools))

    def resolved(self, spec: LabSpec) -> LabSpec:
        """The spec as the lab records it: the backend the dumps use (the profile calibrates it)."""
        return dataclasses.replace(spec, datapath="replay", backend=self.p.backend)

    def node_iface_name(self, lab: str, index: int) -> str:
        return self.p.mapping.ifaces[index]

    def plan(self, spec: LabSpec) -> Topology:
        """topology.plan's names, with the dump's addresses (pure)."""
        m = self.p.mapping
        topo = topology.plan(spec, self)
        gw = topology.CALICO_GATEWAY if m.routed else str(next(ipaddress.IPv4Network(m.subnet).hosts()))
        prefix = 32 if m.routed else int(m.subnet.split("/")[1])
        pods = tuple(dataclasses.replace(p, ip=ip, mac=pod_mac(ip), prefix=prefix, gateway=gw)
                     for p, ip in zip(topo.pods, m.ips))
        return dataclasses.replace(topo, pods=pods, subnet=m.subnet, node_ip=m.node_ip)

    def build(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:
        r = session.runner
        if self.routed:
            plumb_routed(r, topo, node_mac=CALI_MAC if self.p.mapping.shape == "calico" else None)
            via = f"route add default via {topo.server.ip} dev {topo.server.node_iface}"
        else:
            plumb_bridge(r, topo)
            via = f"route add default via {topo.server.ip} dev {topo.bridge}"
        r.run(["ip", "-n", topo.node_netns, "-batch", "-"], input=via + "\n")
        _CACHE.clear()          # loading drops what the kernel refuses: the next lab reads the dumps afresh
        t0 = time.monotonic()
        load(r, topo.node_netns, self.p)
        program = time.monotonic() - t0
        kernel = kernel_rules(r, topo.node_netns, self.p)
        path = report_path(topo.lab)
        session.track("path", str(path))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(json.dumps(self.p.report(), indent=1))
        plan = probe_plan(self.p, topo)
        summary = self.p.summary()
        summary.update(report=str(path), kernel_rules=kernel, probes=[list(x) for x in plan],
                       load_s=round(program, 4))
        return topology.built(r, topo, program, replay=summary)

    def ground_truth(self, topo: Topology, spec: LabSpec) -> GroundTruth:
        return GroundTruth(allowed={}, denied=None, evaluations={}, notes=NOTES)


def probe_plan(p: replay_plan.Prepared, topo: Topology) -> list[tuple[str, int, str]]:
    """The probes for the rules as loaded (ipv4 iptables rules and nft rule lines)."""
    specs = (line.split(" ", 2)[2] if line.count(" ") >= 2 else "" for r in p.rewritten
             if r.source.kind == "iptables" and r.source.family == "ipv4" for line in r.lines if line.startswith("-A "))
    nft = [line for r in p.rewritten if r.source.kind == "nft" for line in r.lines]
    nft += [probes.nft_json_line(json.loads(line)["rule"]) for r in p.rewritten if r.source.kind == "nft-json"
            for line in r.lines if line.startswith('{"rule"')]
    return probes.plan(specs, nft, topo.server.ip, topo.allowed_port)


# --- loading (I/O, inside the node namespace) ------------------------------------------------------

def load(runner: "Runner", netns: str, p: replay_plan.Prepared) -> None:
    """ipsets, then iptables, then nft; each refused rule dropped with the tool's message."""
    if p.sets:
        _ipset(runner, netns, p.sets_text)
    for rw in p.rewritten:
        if rw.source.kind == "ipset" and rw.lines:
            _load_ipset(runner, netns, rw, p)
    for rw in p.rewritten:
        if rw.source.kind == "iptables" and rw.lines:
            argv = restore_argv(rw.source.family, rw.source.backend)
            _retry(runner, netns, argv, rw, lambda err: _iptables_refused(runner, netns, argv, rw, err))
    for rw in p.rewritten:
        if rw.source.kind == "nft" and rw.lines:
            _retry(runner, netns, ["nft", "-f", "-"], rw, lambda err: _nft_refused(rw, err))
        elif rw.source.kind == "nft-json" and rw.lines:
            _retry(runner, netns, ["nft", "-j", "-f", "-"], rw, lambda err: _json_refused(rw, err))


def _ipset(runner: "Runner", netns: str, text: str) -> None:
    runner.run(["ipset", "restore", "-exist"], input=text, netns=netns)


_PREFIX = re.compile(r"^\S*(?:tables|ipset|nft)\S*(?: v[\d.]+)?(?: \([^)]*\))?:\s*")


def _tail(err: str, warnings: bool = False) -> str:
    """The tool's reason in one line, without its name and version or the usage hint (and without
    libxtables' warnings about other lines, unless asked for them)."""
    lines = [re.sub(r"^line \d+: ", "", _PREFIX.sub("", l.strip())).strip() for l in err.splitlines()]
    lines = [l for l in lines if l and not l.startswith(("Try `", "# Warning", "Error occurred at line"))]
    if warnings:
        return next((l[:200] for l in lines if l.startswith("Warning:")), "")
    return next((l[:200] for l in lines if not l.startswith("Warning:")), lines[0][:200] if lines else "refused")


def _retry(runner: "Runner", netns: str, argv: list[str], rw: Rewritten,
           refused: Callable[[str], tuple[int, str] | None]) -> None:
    for _ in range(MAX_REFUSED + 1):
        done = runner.run(argv, input=rw.text, netns=netns, check=False, timeout=300)
        if done.ok:
            return
        err = done.stderr or done.stdout
        hit = refused(err)
        if hit is None:
            raise ToolError(f"{rw.source.path}: {argv[0]} refused it: {_tail(err)}")
        idx, why = hit
        alike = same_failure(rw.lines, idx, err) if rw.source.kind == "iptables" else []
        for j in sorted({idx, *alike}, reverse=True):
            rw.drop_output(j, f"refused at load: {why}")
    raise ToolError(f"{rw.source.path}: {argv[0]} refused more than {MAX_REFUSED} rules; first: "
                    f"{next((x.reason for x in rw.rewrites if x.reason.startswith('refused')), '?')}")


_NAMED = re.compile(r"`([^']{2,64})'|Extension (\S+) revision|Set (\S+) doesn't exist|Couldn't load (?:match|target) `([^']+)'")


def same_failure(lines: list[str], idx: int, err: str) -> list[int]:
    """Other rules that would fail the same way, so one retry drops them all (pure): when the tool's
    message names a word of the refused rule (`-m ipvs`, `--dport 65538`), every rule with that option
    and word. Without it, a module this kernel lacks costs one whole reload per rule."""
    m = _NAMED.search(err)
    word = next((g for g in m.groups() if g), None) if m else None
    toks = lines[idx].split()
    if not word or word not in toks[1:]:
        return []
    i = toks.index(word, 1)
    if not toks[i - 1].startswith("-"):
        return []
    sig = f" {toks[i - 1]} {word}"
    return [j for j, line in enumerate(lines) if j != idx and line.startswith("-A ") and
            (line.endswith(sig) or sig + " " in line)]


def _iptables_refused(runner: "Runner", netns: str, argv: list[str], rw: Rewritten, err: str) -> tuple[int, str] | None:
    m = _AT.search(err) or _FAILED.search(err) or re.search(r"line (\d+): ", err)
    if not m:
        return None
    idx = int(m.group(1)) - 1
    if not 0 <= idx < len(rw.lines):
        return None
    why = _tail(err)
    if rw.lines[idx] == "COMMIT":        # legacy: the kernel refused the table, not a named rule
        idx = _bisect_table(runner, netns, argv, rw.lines, idx)
        warn = _tail(err, warnings=True)
        m = _NAMED.search(warn)
        named = next((g for g in m.groups() if g), "") if m else ""
        why = "the kernel refused it (found by bisecting the table's commit)" + (
            f"; {warn}" if named and named in rw.lines[idx].split() else "")
    elif not rw.lines[idx].startswith("-A "):
        return None
    return idx, why


def _bisect_table(runner: "Runner", netns: str, argv: list[str], lines: list[str], commit: int) -> int:
    start = max(i for i in range(commit) if lines[i].startswith("*"))
    head = [l for l in lines[start:commit] if not l.startswith("-A ")]
    rules = [i for i in range(start, commit) if lines[i].startswith("-A ")]

    def fails(k: int) -> bool:
        text = "\n".join([*head, *(lines[i] for i in rules[:k]), "COMMIT"]) + "\n"
        return not runner.run(argv, input=text, netns=netns, check=False, timeout=300).ok

    if not rules:
        raise ToolError(f"{argv[0]}: the kernel refused table {lines[start][1:]} with no rules in it")
    return rules[replay_plan.bisect_first_failing(len(rules), fails) - 1]


def _nft_refused(rw: Rewritten, err: str) -> tuple[int, str] | None:
    m = _NFT_AT.search(err)
    if not m:
        return None
    idx = int(m.group(1)) - 1
    if not 0 <= idx < len(rw.lines) or rw.origin[idx] not in rw.rule_lines:
        return None
    line = rw.lines[idx]
    if line.count("{") != line.count("}"):
        return None
    return idx, m.group(2).strip()


def _json_refused(rw: Rewritten, err: str) -> tuple[int, str] | None:
    m = _JSON_AT.search(err)
    if not m:
        return None
    idx = int(m.group(1))
    if not 0 <= idx < len(rw.lines) or not rw.lines[idx].startswith('{"rule"'):
        return None
    return idx, _tail(err).replace("internal:0:0-0: Error: ", "")


def _load_ipset(runner: "Runner", netns: str, rw: Rewritten, p: replay_plan.Prepared) -> None:
    """`ipset restore -exist`; a set type this kernel lacks is recreated empty with a type that fits how
    the rules match it (its entries dropped), an entry it refuses is dropped."""
    dims = {n: d for r in p.rewritten for n, d in r.sets_used.items()}
    for _ in range(MAX_REFUSED + 1):
        done = runner.run(["ipset", "restore", "-exist"], input=rw.text, netns=netns, check=False, timeout=300)
        if done.ok:
            return
        m = _IPSET_AT.search(done.stderr)
        idx = int(m.group(1)) - 1 if m else -1
        if not 0 <= idx < len(rw.lines):
            raise ToolError(f"{rw.source.path}: ipset restore refused it: {_tail(done.stderr)}")
        why = m.group(2).strip()
        parts = rw.lines[idx].split()
        if parts[0] == "create":
            fam = "inet6" if "inet6" in parts else "inet"
            new = f"create {parts[1]} {SET_TYPES[min(max(dims.get(parts[1], 1), 1), 3)]} family {fam}"
            if new.split()[2] == parts[2]:
                raise ToolError(f"{rw.source.path}: ipset restore refused set {parts[1]}: {why}")
            rw.rewrites.append(Rewrite(rw.source.name, rw.origin[idx], rw.lines[idx], new,
                                       f"refused at load ({why}): recreated empty"))
            rw.lines[idx] = new
            for j in range(len(rw.lines) - 1, idx, -1):
                if rw.lines[j].startswith(f"add {parts[1]} "):
                    rw.drop_output(j, f"entry of set {parts[1]}, recreated empty")
        else:
            rw.drop_output(idx, f"refused at load: {why}")
    raise ToolError(f"{rw.source.path}: ipset restore refused more than {MAX_REFUSED} lines")


def kernel_rules(runner: "Runner", netns: str, p: replay_plan.Prepared) -> dict[str, int]:
    """Rules the kernel holds after loading, per iptables family/backend (`*-save`) and in the replayed nft
    tables (`nft -j list ruleset`): the count `lab up` prints beside the rewrite's."""
    out: dict[str, int] = {}
    for fam, be in sorted({(r.source.family, r.source.backend) for r in p.rewritten if r.source.kind == "iptables"}):
        text = runner.run(save_argv(fam, be), netns=netns, check=False).stdout
        out[f"{fam}/{be}"] = sum(1 for line in text.splitlines() if line.startswith("-A "))
    if any(r.source.kind in ("nft", "nft-json") for r in p.rewritten):
        mine = {t for r in p.rewritten if r.source.kind in ("nft", "nft-json") for t in r.tables}
        try:
            doc = json.loads(runner.run(["nft", "-j", "list", "ruleset"], netns=netns, check=False).stdout or "{}")
            out["nft"] = sum(1 for o in doc.get("nftables", []) if "rule" in o
                             and f"{o['rule'].get('family')} {o['rule'].get('table')}" in mine)
        except (ValueError, AttributeError, TypeError):
            pass
    return out
