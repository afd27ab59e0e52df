"""The BPF layer of `cnitrace trace`: the tc/XDP programs one packet crosses, each run on that
exact packet with BPF_PROG_TEST_RUN, with its return code and run time; for Cilium, the policy
map entry that decided.

Why test-run: this kernel has no kprobes and no fentry/fexit (so no per-program hook on a live
packet), but bpf(BPF_PROG_TEST_RUN) runs any loaded tc or XDP program on given bytes and returns
its return code and duration. It is a *replay*, not the live path: the program runs in the node
namespace on a copy of the packet built from the 5-tuple, and its map side effects happen (Cilium's
policy-entry and drop counters go up by one per replayed packet: every hop says so). Programs are
run in path order (XDP and tc ingress on the device the packet arrives on, tc egress on the device
towards the destination) and the replay stops at the first drop or redirect, as the kernel would.

Cilium's program does not say which map entry it used, so the policy is found the way the program
looks it up: the source's identity from the ipcache, then the destination endpoint's policy map
at {identity, dport, proto, ingress}, {identity, 0, proto}, {identity, 0, 0} (and identity 0, the
"any" wildcard of real Cilium). The lab's maps are pinned and named in its topology; on a real node
the caller names the policy map (and the identity is reported as "identity N" without labels).

Kernel objects: only fds of this process (closed before return); nothing to record or clean up.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import struct
import threading
from typing import Any, Callable, Mapping, Sequence

from cnitrace.core.errors import ToolError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.trace.hops import Hop, Policy

TC_ACT = {-1: "TC_ACT_UNSPEC", 0: "TC_ACT_OK", 1: "TC_ACT_RECLASSIFY", 2: "TC_ACT_SHOT", 3: "TC_ACT_PIPE",
          4: "TC_ACT_STOLEN", 5: "TC_ACT_QUEUED", 6: "TC_ACT_REPEAT", 7: "TC_ACT_REDIRECT", 8: "TC_ACT_TRAP"}
XDP_ACT = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
MARK_MAGIC_TO_PROXY = 0x0200          # Cilium: to the L7 proxy whose port is in mark >> 16
PROTO_NUM = {"tcp": 6, "udp": 17, "icmp": 1}
REPLAY_NOTE = ("BPF_PROG_TEST_RUN replay of the packet in the node namespace: the program's map side "
               "effects happen (e.g. policy/drop counters +1)")


def rc_name(kind: str, rc: int) -> str:
    if kind == "xdp":
        return XDP_ACT.get(rc, f"XDP rc {rc}")
    signed = rc - (1 << 32) if rc >= 1 << 31 else rc
    return TC_ACT.get(signed, f"TC rc {signed}")


def rc_verdict(kind: str, rc: int) -> str:
    """A program's return code as a hops.VERDICTS value."""
    name = rc_name(kind, rc)
    if name in ("TC_ACT_SHOT", "XDP_DROP", "XDP_ABORTED", "TC_ACT_STOLEN", "TC_ACT_TRAP"):
        return "dropped"
    if name in ("TC_ACT_REDIRECT", "XDP_REDIRECT", "XDP_TX"):
        return "redirected"
    if name in ("TC_ACT_OK", "TC_ACT_UNSPEC", "XDP_PASS", "TC_ACT_PIPE"):
        return "forwarded"
    return "unknown"


# --- packet bytes ----------------------------------------------------------------------------------

def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _mac(v: str | None, default: str) -> bytes:
    return bytes(int(x, 16) for x in (v or default).split(":"))


def packet_bytes(packet: Mapping[str, Any]) -> bytes:
    """An Ethernet/IPv4/TCP(SYN)|UDP frame for the 5-tuple (pure; checksums filled in)."""
    proto = str(packet.get("proto", "tcp")).lower()
    if proto not in ("tcp", "udp"):
        raise ToolError(f"BPF trace: unsupported protocol {proto!r}")
    src, dst = ipaddress.IPv4Address(packet["src"]).packed, ipaddress.IPv4Address(packet["dst"]).packed
    sport, dport = int(packet.get("sport") or 40000), int(packet["dport"])
    payload = bytes(packet.get("payload", b"")) if proto == "udp" else b""
    if proto == "tcp":
        l4 = bytearray(struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0))
    else:
        l4 = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    pseudo = src + dst + struct.pack("!BBH", 0, PROTO_NUM[proto], len(l4))
    struct.pack_into("!H", l4, 16 if proto == "tcp" else 6, _csum(pseudo + bytes(l4)) or 0xFFFF)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), int(packet.get("ip_id", 0)) & 0xFFFF,
                               0x4000, 64, PROTO_NUM[proto], 0, src, dst))
    struct.pack_into("!H", ip, 10, _csum(bytes(ip)))
    eth = _mac(packet.get("dst_mac"), "02:00:00:00:00:02") + _mac(packet.get("src_mac"), "02:00:00:00:00:01") + b"\x08\x00"
    return eth + bytes(ip) + bytes(l4)


def to_proxy(mark: int | None) -> int | None:
    """The L7 proxy port a Cilium program marked the packet for (MARK_MAGIC_TO_PROXY | port << 16)."""
    return mark >> 16 if mark and mark & 0xFFFF == MARK_MAGIC_TO_PROXY else None


def step_verdict(step: Any, res: Any) -> str:
    """A program run's verdict: its return code, or a redirect when it marked the packet for the
    proxy (the packet then leaves the datapath for the proxy, whatever the return code)."""
    if to_proxy(getattr(res, "mark", None)):
        return "redirected"
    return rc_verdict(step.kind, res.retval)


# --- which programs the packet crosses ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Step:
    """One program on the packet's path: kind 'xdp'|'tc', the device, the hook, the program."""

    kind: str
    iface: str
    hook: str
    prog_id: int
    prog_name: str


def route_dev(runner: Runner, netns: str, ip: str) -> str | None:
    done = runner.run(["ip", "-j", "route", "get", ip], netns=netns or None, check=False)
    if not done.ok:
        return None
    try:
        return json.loads(done.stdout)[0].get("dev")
    except (ValueError, IndexError, AttributeError, TypeError):
        return None


def path_steps(attachments: Sequence[Any], in_iface: str | None, out_iface: str | None) -> list[Step]:
    """The programs in the order the kernel runs them for a packet arriving on `in_iface` and
    leaving by `out_iface`: XDP(in), tc ingress(in), tc egress(out) (pure)."""
    def pick(kind: str, iface: str | None, hooks: tuple[str, ...]) -> list[Step]:
        return [Step(a.kind, a.target, a.hook, a.prog_id, a.prog_name.split(":")[0])
                for a in attachments if iface and a.target == iface and a.kind == kind
                and (kind == "xdp" or a.hook in hooks)]
    return (pick("xdp", in_iface, ()) + pick("tc", in_iface, ("ingress",))
            + pick("tc", out_iface, ("egress",)))


def attachments_in(runner: Runner, netns: str) -> list[Any]:
    from cnitrace.collectors.bpfprog.parse import parse_net_show
    done = runner.run(["bpftool", "-j", "net", "show"], netns=netns or None, check=False)
    if not done.ok:
        raise ToolError(f"bpftool net show failed in {netns or 'the host namespace'}: {done.stderr.strip()[:200]}")
    return list(parse_net_show(done.stdout, netns).records)


# --- test-run (the only syscalls) --------------------------------------------------------------------

def _setns(netns: str) -> None:
    import ctypes
    import os
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:          # CLONE_NEWNET, this thread only
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def run_programs(steps: Sequence[Step], data: bytes, netns: str = "") -> list[tuple[Step, Any]]:
    """BPF_PROG_TEST_RUN each step's program on `data` in `netns` (a private thread enters it),
    stopping after the first drop or redirect. Returns (step, TestRun | OSError)."""
    from cnitrace.probes import bpfsys
    out: list[tuple[Step, Any]] = []
    err: list[BaseException] = []

    def work() -> None:
        try:
            if netns:
                _setns(netns)
            for st in steps:
                try:
                    fd = bpfsys.prog_fd_by_id(st.prog_id)
                except OSError as exc:
                    out.append((st, exc))
                    continue
                try:
                    res = bpfsys.prog_test_run(fd, data, skb_ctx=st.kind == "tc")
                except OSError as exc:
                    res = exc
                finally:
                    import os
                    os.close(fd)
                out.append((st, res))
                if not isinstance(res, OSError) and step_verdict(st, res) in ("dropped", "redirected"):
                    break
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller's thread
            err.append(exc)
    t = threading.Thread(target=work, name="cnitrace-bpf-testrun")
    t.start()
    t.join()
    if err:
        raise ToolError(f"BPF test-run: {err[0]}")
    return out


# --- Cilium policy map ---------------------------------------------------------------------------

CILIUM_GLOBALS = "/sys/fs/bpf/tc/globals"


@dataclasses.dataclass(frozen=True)
class CiliumMaps:
    """Where the destination endpoint's policy lives: pinned maps, and identity labels if known.
    key_size 8: the hash-map policy_key {sec_label, dport, proto, egress} (the lab, Cilium < 1.16);
    12: the LPM-trie key {prefixlen, sec_label, egress, proto, dport} (Cilium >= 1.16), where one
    full-prefix lookup returns the longest match, as the datapath's does."""

    policy_map: str
    ipcache_map: str = ""
    identities: Mapping[int, str] = dataclasses.field(default_factory=dict)   # id -> label
    key_size: int = 8

    @classmethod
    def from_lab(cls, extra: Mapping[str, Any]) -> "CiliumMaps | None":
        if not extra.get("policy_map"):
            return None
        return cls(extra["policy_map"], extra.get("ipcache_map", ""),
                   {int(v): k for k, v in dict(extra.get("identities", {})).items()})

    @classmethod
    def discover(cls, dst_ip: str, *, runner: Runner = DEFAULT_RUNNER, root: str = CILIUM_GLOBALS,
                 exists: Callable[[str], bool] | None = None) -> "CiliumMaps | None":
        """On a Cilium node: the destination endpoint's id from cilium_lxc, then its policy map
        (cilium_policy_v2_<id> or cilium_policy_<id>) and its key size. None when not found
        (the caller then says the policy could not be named)."""
        import os
        exists = exists or os.path.exists
        raw = map_lookup(runner, f"{root}/cilium_lxc", endpoint_key(dst_ip))
        if raw is None or len(raw) < 8:
            return None
        ep_id = struct.unpack_from("<H", raw, 6)[0]
        for name in (f"cilium_policy_v2_{ep_id:05d}", f"cilium_policy_{ep_id:05d}", f"cilium_policy_v2_{ep_id}",
                     f"cilium_policy_{ep_id}"):
            path = f"{root}/{name}"
            if exists(path):
                ipc = next((f"{root}/{n}" for n in ("cilium_ipcache_v2", "cilium_ipcache") if exists(f"{root}/{n}")), "")
                return cls(path, ipc, {}, map_key_size(runner, path) or 8)
        return None


def endpoint_key(ip: str) -> bytes:
    """cilium_lxc's endpoint_key for an IPv4 address: addr[16], family (1), key, cluster_id."""
    return struct.pack("<16sBBH", ipaddress.IPv4Address(ip).packed.ljust(16, b"\0"), 1, 0, 0)


def map_key_size(runner: Runner, pin: str) -> int | None:
    done = runner.run(["bpftool", "-j", "map", "show", "pinned", pin], check=False)
    try:
        return int(json.loads(done.stdout)["bytes_key"]) if done.ok else None
    except (ValueError, KeyError, TypeError):
        return None


def _hexargs(b: bytes) -> list[str]:
    return [f"0x{x:02x}" for x in b]


def map_lookup(runner: Runner, pin: str, key: bytes) -> bytes | None:
    done = runner.run(["bpftool", "-j", "map", "lookup", "pinned", pin, "key", *_hexargs(key)], check=False)
    if not done.ok:
        return None
    try:
        return bytes(int(x, 16) for x in json.loads(done.stdout)["value"])
    except (ValueError, KeyError, TypeError):
        return None


def ipcache_key(ip: str) -> bytes:
    """The lab's / Cilium's IPv4 ipcache LPM key: prefixlen(32+32), cluster id, pad, family, addr[16]."""
    return struct.pack("<IHBB16s", 64, 0, 0, 1, ipaddress.IPv4Address(ip).packed.ljust(16, b"\0"))


POLICY_FULL_PREFIX = 64          # LPM key: sec_label 32 + egress 8 + protocol 8 + dport 16 bits


def policy_key(identity: int, dport: int, proto: int, egress: int = 0, key_size: int = 8) -> bytes:
    if key_size == 12:
        return struct.pack("<IIBB", POLICY_FULL_PREFIX, identity, egress, proto) + struct.pack(">H", dport)
    return struct.pack("<I", identity) + struct.pack(">H", dport) + struct.pack("<BB", proto, egress)


def lookup_order(identity: int, dport: int, proto: int, key_size: int = 8) -> list[tuple[int, int, int]]:
    """The keys in the order the program (and Cilium) tries them: L4-exact, any port, L3-only,
    then the identity-0 ("any peer") wildcards; with an LPM map, one full-prefix lookup per identity."""
    if key_size == 12:
        return [(identity, dport, proto)] + ([(0, dport, proto)] if identity else [])
    keys = [(identity, dport, proto), (identity, 0, proto), (identity, 0, 0)]
    if identity:
        keys += [(0, dport, proto), (0, 0, proto), (0, 0, 0)]
    return keys


def deciding_entry(runner: Runner, maps: CiliumMaps, packet: Mapping[str, Any]) -> dict[str, Any]:
    """The policy-map entry the packet's ingress lookup finds (or the keys that missed)."""
    from cnitrace.collectors.cilium.parse import decode_policy_key, decode_policy_value
    identity = None
    if maps.ipcache_map:
        raw = map_lookup(runner, maps.ipcache_map, ipcache_key(str(packet["src"])))
        identity = struct.unpack_from("<I", raw)[0] if raw else 2    # miss: reserved:world
    proto = PROTO_NUM[str(packet.get("proto", "tcp")).lower()]
    dport = int(packet["dport"])
    tried = []
    for ident, port, pr in lookup_order(identity or 0, dport, proto, maps.key_size):
        key = policy_key(ident, port, pr, key_size=maps.key_size)
        tried.append({"identity": ident, "dport": port, "proto": pr, "direction": "ingress"})
        raw = map_lookup(runner, maps.policy_map, key)
        if raw is None:
            continue
        ident2, direction, pr2, port2, _ = decode_policy_key(key)
        proxy, deny, packets, nbytes = decode_policy_value(raw)
        return {"identity": identity, "found": True, **({"lpm": "longest match of this full-prefix key"}
                                                        if maps.key_size == 12 else {}),
                "key": {"identity": ident2, "dport": port2, "proto": pr2, "direction": direction},
                "value": {"proxy_port": proxy, "deny": deny, "packets": packets, "bytes": nbytes},
                "tried": tried}
    return {"identity": identity, "found": False, "tried": tried}


def cilium_policy(entry: Mapping[str, Any], verdict: str, maps: CiliumMaps, ground_truth: Any = None,
                  proto: str = "") -> Policy:
    """The policy behind a Cilium verdict: the lab's ground truth where the key matches, else the
    map entry itself (identity N, port, proto, direction)."""
    ident = entry.get("identity")
    label = maps.identities.get(ident or -1, "")
    who = f"identity {ident}" + (f" ({label})" if label else "")
    detail = {"policy_map": maps.policy_map, **{k: v for k, v in entry.items() if k != "found"}}
    if ground_truth is not None:
        for p, ref in dict(getattr(ground_truth, "allowed", {}) or {}).items():
            if entry.get("found") and ref.kind == "bpf-map" and ref.table == maps.policy_map \
                    and dict(ref.key or {}) == dict(entry["key"]) and verdict != "dropped":
                return Policy("CiliumNetworkPolicy", f"lab allow {p} to the server ({who})", "lab ground truth",
                              {**detail, "ground_truth": "allowed"})
        den = getattr(ground_truth, "denied", None)
        if den is not None and den.kind == "bpf-map" and verdict == "dropped" and not entry.get("found"):
            return Policy("default-deny", f"lab default deny: no policy-map entry for {who}", "lab ground truth",
                          {**detail, "ground_truth": "denied", "drop_counter": den.table})
    if entry.get("found"):
        k = entry["key"]
        deny = entry["value"]["deny"]
        return Policy("CiliumNetworkPolicy",
                      f"{'deny' if deny else 'allow'} {who} -> {k['dport'] or 'any'}/{k['proto'] or 'any'} {k['direction']}",
                      "policy map key", detail)
    return Policy("default-deny", f"no policy-map entry for {who}", "policy map key", detail)


# --- the layer ---------------------------------------------------------------------------------------

def bpf_hops(packet: Mapping[str, Any], *, netns: str = "", ifaces: tuple[str | None, str | None] | None = None,
             attachments: Sequence[Any] | None = None, runner: Runner = DEFAULT_RUNNER, session: Any = None,
             cilium: CiliumMaps | None = None, ground_truth: Any = None,
             test_run: Callable[..., list] = run_programs, order_base: int = 0) -> list[Hop]:
    """Replay `packet` through the tc/XDP programs on its path in `netns` (the node namespace).

    ifaces: (in, out) devices; default: `ip route get` of the packet's source and destination
    in `netns` (a pod's host-side veth on routed CNIs). attachments: bpfprog Attachment records
    (default: `bpftool net show` in `netns`). cilium: the destination endpoint's maps, to name the
    deciding policy-map entry. `session` is accepted for symmetry: test-run creates no kernel
    object that outlives this call."""
    del session
    if ifaces is None:
        ifaces = (route_dev(runner, netns, str(packet["src"])), route_dev(runner, netns, str(packet["dst"])))
    atts = list(attachments) if attachments is not None else attachments_in(runner, netns)
    steps = path_steps(atts, *ifaces)
    if not steps:
        return []
    results = test_run(steps, packet_bytes(packet), netns)
    hops: list[Hop] = []
    decided_at = None
    verdicts = []
    for i, (st, res) in enumerate(results):
        if isinstance(res, OSError):
            verdicts.append(None)
            continue
        verdicts.append(step_verdict(st, res))
    for i, v in enumerate(verdicts):
        if v in ("dropped", "redirected"):
            decided_at = i
            break
    if decided_at is None:
        ok = [i for i, v in enumerate(verdicts) if v]
        decided_at = ok[-1] if ok else None
    for i, (st, res) in enumerate(results):
        where = f"{st.iface} {st.kind} {st.hook}" if st.kind == "tc" else f"{st.iface} xdp ({st.hook})"
        detail: dict[str, Any] = {"prog_id": st.prog_id, "prog_name": st.prog_name, "kind": st.kind,
                                  "hook": st.hook, "iface": st.iface, "replay": REPLAY_NOTE}
        if isinstance(res, OSError):
            hops.append(Hop("bpf", where, f"{st.prog_name}: test-run failed: {res.strerror or res}",
                            order=order_base + i + 1, netns=netns, detail={**detail, "error": str(res)}))
            continue
        name = rc_name(st.kind, res.retval)
        detail.update(rc=res.retval, rc_name=name, duration_ns=res.duration_ns)
        mark = res.mark
        if mark:
            detail["mark"] = f"0x{mark:x}"
            if to_proxy(mark):
                detail["to_proxy_port"] = to_proxy(mark)
        verdict = policy = rule = None
        if i == decided_at:
            verdict = verdicts[i]
            if cilium is None and st.prog_name.startswith("cil_"):
                try:
                    cilium = CiliumMaps.discover(str(packet["dst"]), runner=runner)
                except ToolError:
                    cilium = None
                if cilium is None:
                    policy = Policy("unknown", f"{st.prog_name} verdict", "program name",
                                    {"note": f"a Cilium program, but the destination endpoint's policy map was not "
                                             f"found under {CILIUM_GLOBALS}: the policy entry cannot be named"})
            if cilium is not None and st.prog_name in ("cil_to_container", "cil_from_container"):
                entry = deciding_entry(runner, cilium, packet)
                policy = cilium_policy(entry, verdict or "", cilium, ground_truth, str(packet.get("proto", "")))
                detail["policy_entry"] = {k: v for k, v in entry.items()}
                if entry.get("found"):
                    k = entry["key"]
                    rule = (f"{cilium.policy_map} key identity={k['identity']} dport={k['dport']} "
                            f"proto={k['proto']} {k['direction']}")
                else:
                    rule = f"{cilium.policy_map}: no entry (default deny)"
            else:
                rule = f"{st.prog_name} (prog {st.prog_id}) returned {name}"
        hops.append(Hop("bpf", where, f"{st.prog_name} rc={res.retval} ({name}) {res.duration_ns} ns",
                        order=order_base + i + 1, netns=netns, verdict=verdict, rule=rule, policy=policy,
                        cost_ns=float(res.duration_ns), detail=detail))
    return hops


def bpf_hops_for_lab(lab: Any, packet: Mapping[str, Any], *, runner: Runner = DEFAULT_RUNNER) -> list[Hop]:
    """bpf_hops on a cnitrace lab: its node namespace, pods' MACs, and (cilium) its pinned
    policy maps and ground truth. [] when the lab's path has no tc/XDP program."""
    topo = lab.topo
    pods = {p.ip: p for p in topo.pods}
    pk = dict(packet)
    if str(pk.get("src")) in pods:
        pk.setdefault("src_mac", pods[str(pk["src"])].mac)
    if str(pk.get("dst")) in pods:
        pk.setdefault("dst_mac", pods[str(pk["dst"])].mac)
    return bpf_hops(pk, netns=topo.node_netns, runner=runner, cilium=CiliumMaps.from_lab(topo.extra),
                    ground_truth=lab.truth)
