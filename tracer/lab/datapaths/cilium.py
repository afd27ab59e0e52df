"""The `cilium` lab datapath: tc BPF programs on lxc<hash> veths, Cilium-layout maps, pinned.

Why this shape: Cilium enforces policy in tc programs on each endpoint's host-side veth,
with one hash lookup in the endpoint's `cilium_policy_<ep>` map and the peer's identity
from the `cilium_ipcache` LPM trie; that is what makes its cost flat in N. The programs
(cilium_policy.bpf.c) are compiled through the one loader, the maps are filled with batch
updates, and programs and maps are pinned under /sys/fs/bpf/cnit-<lab>/ (recorded first),
so they outlive `lab up` and `lab down` / `cnitrace cleanup` remove them with the pin dir.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnitrace.core.errors import ToolError
from cnitrace.lab.datapaths import cilium_maps as cm
from cnitrace.lab import envoy, l7proxy
from cnitrace.lab.datapath import Datapath
from cnitrace.lab.model import CounterRef, GroundTruth, LabSpec, Topology
from cnitrace.lab.policy import port_rules
from cnitrace.lab.topology import plumb_routed, read_links, short_hash
from cnitrace.core.runner import Runner
from cnitrace.probes import loader

if TYPE_CHECKING:
    from cnitrace.core.session import Session

BPFFS = Path("/sys/fs/bpf")
SOURCE = "cilium_policy.bpf.c"
PROGRAMS = {"ingress": "cil_from_container", "egress": "cil_to_container"}   # tc hook -> program
FIRST_ENDPOINT_ID = 1000
L7_PORT = 15001          # the proxy's port, carried in the policy entry (Cilium's Envoy listener port)
MARK_MAGIC_TO_PROXY = 0x0200


def proxy_mark(port: int) -> int:
    """The mark cil_from_container puts on packets for the proxy: magic | port << 16."""
    return MARK_MAGIC_TO_PROXY | (port << 16)


def render_l7_nat(topo: Topology, proxy_port: int = L7_PORT) -> str:
    """iptables-restore input steering marked packets to the proxy in the node netns.

    Cilium TPROXYs them (CILIUM_PRE_mangle) to a transparent Envoy listener; Debian's nginx and
    haproxy listen normally, so the lab DNATs them to the node's address instead.
    """
    mark = proxy_mark(proxy_port)
    return (f"*nat\n:CILIUM_PRE_nat - [0:0]\n-A PREROUTING -j CILIUM_PRE_nat\n"
            f"-A CILIUM_PRE_nat -p tcp -m mark --mark 0x{mark:x}/0xffff0f00 -m comment --comment "
            f"\"cilium: to L7 proxy port {proxy_port}\" -j DNAT --to-destination {topo.node_ip}:{proxy_port}\n"
            "COMMIT\n")


def pin_dir(lab: str) -> Path:
    return BPFFS / f"cnit-{lab}"


def endpoint_id(index: int) -> int:
    return FIRST_ENDPOINT_ID + index


def policy_map_name(ep_id: int) -> str:
    return f"cilium_policy_{ep_id:05d}"


def map_size(entries: int, floor: int = 16384) -> int:
    """The policy map's max_entries: Cilium's default 16384, or the next power of two above N."""
    size = floor
    while size < entries:
        size *= 2
    return size


def bpffs_mounted(mounts: str, path: str = str(BPFFS)) -> bool:
    return any(line.split()[1:3] == [path, "bpf"] for line in mounts.splitlines() if line.strip())


def tc_batch(pods: list[tuple[str, str, str]]) -> str:
    """`tc -batch` lines: clsact and one direct-action filter per hook, from pinned programs."""
    lines = []
    for iface, from_pin, to_pin in pods:
        lines += [f"qdisc add dev {iface} clsact",
                  f"filter add dev {iface} ingress prio 1 handle 1 bpf da pinned {from_pin}",
                  f"filter add dev {iface} egress prio 1 handle 1 bpf da pinned {to_pin}"]
    return "\n".join(lines) + "\n"


def _ct_array(table: Any, which: str, blobs: list[bytes]) -> Any:
    cls = table.Key if which == "key" else table.Leaf
    if ctypes.sizeof(cls) != len(blobs[0]):
        raise ToolError(f"{which} layout mismatch: BPF {ctypes.sizeof(cls)} bytes, packed {len(blobs[0])}")
    arr = (cls * len(blobs))()
    for i, b in enumerate(blobs):
        ctypes.memmove(ctypes.byref(arr, i * len(b)), b, len(b))
    return arr


def batch_update(table: Any, pairs: list[tuple[bytes, bytes]]) -> None:
    """One BPF_MAP_UPDATE_BATCH call per map (10,000 rules load in milliseconds)."""
    if not pairs:
        return
    try:
        table.items_update_batch(_ct_array(table, "key", [k for k, _ in pairs]),
                                 _ct_array(table, "leaf", [v for _, v in pairs]))
    except ToolError:
        raise
    except Exception as exc:  # bcc raises bare Exception
        raise ToolError(f"BPF map batch update failed: {exc}") from None


class Cilium(Datapath):
    name = "cilium"
    policy_stage = "bpf"
    description = "Cilium: tc BPF on lxc veths, per-endpoint policy hash map, ipcache LPM trie"
    tools = ("tc", "nsenter", "mount")
    caps = ("tc_bpf",)
    routed = True
    supports_l7 = True

    def node_iface_name(self, lab: str, index: int) -> str:
        return f"lxc{short_hash(lab, 'endpoint', index, n=12)}"

    def build(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:

        r = session.runner
        plumb_routed(r, topo)
        topo = read_links(r, topo)
        self._ensure_bpffs(session)
        pins = pin_dir(topo.lab)
        session.track("path", str(pins))
        pins.mkdir(mode=0o700)
        rules = port_rules(topo, spec)
        entries = cm.policy_entries(rules, proxy_port=L7_PORT if spec.l7 else 0,
                                    l7_port=topo.allowed_port if spec.l7 else None)
        server_ep = endpoint_id(0)
        bpf = loader.load(SOURCE, {"POLICY_MAP_SIZE": map_size(len(entries)), "IPCACHE_SIZE": 1024,
                                   "LXC_MAP_SIZE": 256}, package="cnitrace.lab.datapaths")
        try:
            t0 = time.monotonic()
            batch_update(bpf["cilium_policy"], [(k.pack(), v.pack()) for k, v in entries])
            program_seconds = time.monotonic() - t0
            batch_update(bpf["cilium_lxc"], [(e.pack_key(), e.pack_value()) for e in self.endpoints(topo)])
            for ip, ident in self.identities(topo).items():   # LPM tries do not support batch ops
                t = bpf["cilium_ipcache"]
                t[t.Key.from_buffer_copy(cm.IpcacheKey(ip).pack())] = t.Leaf.from_buffer_copy(
                    cm.IpcacheValue(ident).pack())
            names = {"cilium_policy": policy_map_name(server_ep), "cilium_ipcache": "cilium_ipcache",
                     "cilium_lxc": "cilium_lxc", "cilium_metrics": "cilium_metrics"}
            for table, pin in names.items():
                loader.pin(bpf[table].map_fd, str(pins / pin))
            prog_pins = {}
            for fn in PROGRAMS.values():
                prog = bpf.load_func(fn, loader.prog_type("SCHED_CLS"))
                prog_pins[fn] = str(pins / fn)
                loader.pin(prog.fd, prog_pins[fn])
        finally:
            bpf.cleanup()   # the pins hold programs and maps now; drop this process's fds
        attach = [(p.node_iface, prog_pins[PROGRAMS["ingress"]], prog_pins[PROGRAMS["egress"]]) for p in topo.pods]
        r.run(["nsenter", f"--net=/run/netns/{topo.node_netns}", "tc", "-batch", "-"], input=tc_batch(attach))
        extra = dict(topo.extra, pin_dir=str(pins), policy_map=str(pins / names["cilium_policy"]),
                     ipcache_map=str(pins / "cilium_ipcache"), lxc_map=str(pins / "cilium_lxc"),
                     metrics_map=str(pins / "cilium_metrics"), endpoint_id=server_ep,
                     policy_entries=len(entries), program_seconds=program_seconds,
                     identities={"client": cm.ID_CLIENT, "server": cm.ID_SERVER, "host": cm.ID_HOST})
        return dataclasses.replace(topo, extra=extra)

    def l7(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:
        """The allow entry for HTTP already carries the proxy port (build saw --l7): start Envoy in
        the node netns behind Cilium's TPROXY redirect, enforcing N HTTP rules (N = --rules, at least
        one). Cilium's L7 proxy is Envoy, so --l7-proxy (the stand-ins' choice) does not apply."""
        proxy = envoy.start(session, topo, listen_port=L7_PORT, program_mark=proxy_mark(L7_PORT),
                            rules=envoy.http_rules(max(1, min(spec.rules, envoy.MAX_HTTP_RULES))),
                            backend=spec.backend)
        return dataclasses.replace(topo, extra={**topo.extra, "l7": proxy.to_json()})

    @staticmethod
    def _ensure_bpffs(session: "Session") -> None:
        """Real nodes mount bpffs at boot; where it is missing, mount it (recorded, unmounted when empty)."""
        if bpffs_mounted(Path("/proc/mounts").read_text()):
            return
        session.track("bpffs", str(BPFFS))
        session.runner.run(["mount", "-t", "bpf", "bpf", str(BPFFS)])

    @staticmethod
    def endpoints(topo: Topology) -> list[cm.Endpoint]:
        return [cm.Endpoint(p.ip, p.node_ifindex, endpoint_id(i),
                            cm.ID_SERVER if p.role == "server" else cm.ID_CLIENT,
                            cm.EP_FLAG_INGRESS_POLICY if p.role == "server" else 0)
                for i, p in enumerate(topo.pods)]

    @staticmethod
    def identities(topo: Topology) -> dict[str, int]:
        ids = {p.ip: cm.ID_SERVER if p.role == "server" else cm.ID_CLIENT for p in topo.pods}
        node_ip = getattr(topo, "node_ip", "")
        if node_ip:
            ids[node_ip] = cm.ID_HOST
        return ids

    def ground_truth(self, topo: Topology, spec: LabSpec) -> GroundTruth:
        pins = pin_dir(topo.lab)
        policy = str(pins / policy_map_name(endpoint_id(0)))
        allowed = {proto: CounterRef(kind="bpf-map", table=policy, comment="cilium_policy entry",
                                     key={"identity": cm.ID_CLIENT, "dport": topo.allowed_port,
                                          "proto": cm.PROTO[proto], "direction": "ingress"})
                   for proto in ("tcp", "udp")}
        denied = CounterRef(kind="bpf-map", table=str(pins / "cilium_metrics"), comment="policy drops (ingress)",
                            key={"index": 0, "reason": "policy-denied", "direction": "ingress"})
        return GroundTruth(
            allowed=allowed, denied=denied, evaluations={"tcp": 1, "udp": 1}, per="packet",
            notes="one hash lookup per packet in the endpoint's policy map, whatever N; every packet "
                  "towards the endpoint is looked up and counted (replies to it are not in the lab).")


def read_policy_entry(runner: Runner, map_pin: str, key: cm.PolicyKey) -> cm.PolicyEntry | None:
    """Look one entry up in a pinned policy map with bpftool (for tests and `lab status`)."""

    hexkey = [f"0x{b:02x}" for b in key.pack()]
    out = runner.run(["bpftool", "-j", "map", "lookup", "pinned", map_pin, "key", *hexkey], check=False)
    if not out.ok:
        return None
    value = json.loads(out.stdout)["value"]
    return cm.PolicyEntry.unpack(bytes(int(x, 16) for x in value))
