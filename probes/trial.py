"""Try every BPF attach type doctor reports on, in throwaway namespaces, and print JSON.

Run as a child by cnitrace.node.checks:
    unshare --mount --net --propagation private -- python -m cnitrace.probes.trial MNT_ID NET_ID
Why a child in fresh namespaces: tracefs and securityfs can be mounted when the node has
not mounted them, the veth pair lives in an anonymous network namespace, and every object —
programs, links, mounts, interfaces — disappears with the process even if it is killed, so
doctor leaves the node as it found it without a state-file entry. One compile serves all
tries, and each hook must count real frames, not merely attach.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.probes import bpfsys as bs
from cnitrace.probes import loader
from cnitrace.probes.bpfsys import BPF_TRACE_RAW_TP
from cnitrace.probes.bpfsys import attach_tracing
from cnitrace.probes.bpfsys import load_tracing

SOURCE = "selftest.bpf.c"
KPROBE_TARGET = "__netif_receive_skb"   # must match KFUNC_PROBE(...) in selftest.bpf.c
SLOTS = {"tracepoints": 0, "raw_tracepoints": 1, "kprobes": 2, "fentry": 3, "tc_bpf": 4, "xdp": 5, "tp_btf": 6}
TX, RX = "cnitd0", "cnitd1"             # the veth pair, only ever inside this process's netns
FRAMES = 4
TRACEFS = "/sys/kernel/tracing"
SECURITYFS = "/sys/kernel/security"


def namespace_ids() -> list[str]:
    """This process's mount and network namespace ids, e.g. ['mnt:[4026531832]', 'net:[...]']."""
    return [os.readlink(f"/proc/self/ns/{ns}") for ns in ("mnt", "net")]


def in_private_namespaces(outer: list[str]) -> bool:
    """True only when both namespaces differ from the parent's (given as argv): the safety gate."""
    try:
        mine = namespace_ids()
    except OSError:
        return False
    return len(outer) == 2 and all(m != o for m, o in zip(mine, outer))


def _mounted(fstype: str) -> str | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == fstype:
            return parts[1]
    return None


def _mount(fstype: str, target: str) -> str:
    """Mount a pseudo filesystem (private to this namespace); '' on success, else why not."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(fstype.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        if _mounted(fstype):
            return ""  # mount(2) may report EBUSY for a fs the kernel mounted meanwhile
        return os.strerror(err)
    return ""


def ensure_fs(fstype: str, target: str) -> dict[str, Any]:
    where = _mounted(fstype)
    if where:
        return {"state": "mounted", "path": where}
    err = _mount(fstype, target)
    if err:
        return {"state": "unavailable", "path": target, "error": err}
    return {"state": "mounted-privately", "path": _mounted(fstype) or target}


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture fd 2 (libbcc and clang print there, not to sys.stderr) into a list of lines."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(l for l in tmp.read().decode(errors="replace").splitlines() if l.strip())


def _log_hint(lines: list[str]) -> str:
    """The most telling line libbcc printed (skip clang warning noise)."""
    useful = [l.strip() for l in lines if "warning" not in l and not l.startswith((" ", "\t", "#"))
              and "note:" not in l and l.strip() not in ("^",)]
    errors = [l for l in useful if "error" in l.lower() or "failed" in l.lower() or "bpf:" in l]
    pick = errors or useful
    return pick[-1][:200] if pick else ""


def attempt(fn: Callable[[], Any]) -> dict[str, Any]:
    with captured_stderr() as lines:
        try:
            fn()
            result: dict[str, Any] = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception; we report, not crash
            result = {"ok": False, "error": f"{exc}".splitlines()[0][:200] if str(exc) else type(exc).__name__}
    hint = _log_hint(lines)
    if hint and not result["ok"]:
        result["log"] = hint
    return result


def make_device(runner: Runner) -> str:
    """The device the hooks watch: RX of a veth pair, or loopback where veth is unavailable
    (a minimal VM without the veth module; we do not load modules). Both are in our netns."""
    runner.run(["ip", "link", "set", "lo", "up"], timeout=5)
    # No IPv6 on the new links (this private netns only): their link-up MLD reports and router
    # solicitations would reach the hooks beside the counted frames.
    runner.run(["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"], timeout=5, check=False)
    done = runner.run(["ip", "link", "add", TX, "type", "veth", "peer", "name", RX], timeout=5, check=False)
    if not done.ok:
        return "lo"
    for dev in (TX, RX):
        runner.run(["ip", "link", "set", dev, "up"], timeout=5)
    return RX


def mac(dev: str, runner: Runner = DEFAULT_RUNNER) -> bytes:
    # Not /sys/class/net: this process's sysfs still shows the parent's network namespace.
    info = json.loads(runner.run(["ip", "-j", "link", "show", "dev", dev], timeout=5).stdout)
    return bytes.fromhex(info[0]["address"].replace(":", ""))


def send_frames(dev: str, count: int = FRAMES) -> int:
    """Send `count` packets that arrive on `dev` through every ingress hook, and nothing else."""
    if dev == "lo":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            rx.bind(("127.0.0.1", 0))   # a listener, so no ICMP unreachable doubles the count
            return sum(1 for _ in range(count) if tx.sendto(b"cnitrace-doctor", rx.getsockname()) > 0)
    dst, src = mac(RX), mac(TX)
    frame = dst + src + b"\x88\xb5" + b"cnitrace-doctor".ljust(46, b"\0")  # 0x88b5: local experimental
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((TX, 0))
        return sum(1 for _ in range(count) if s.send(frame) == len(frame))


def wait_hits(table: Any, slots: list[int], sent: int, timeout: float = 1.0) -> dict[int, int]:
    """Poll the counters until every slot saw all `sent` frames or the (short) deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        got = {i: int(table[ctypes.c_int(i)].value) for i in slots}
        if all(v >= sent for v in got.values()) or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def attach_tc(dev: str, fd: int, name: str) -> None:
    from pyroute2 import IPRoute   # lazily: pyroute2 is slow to import and the trial child is timed
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=dev)[0]
        ipr.tc("add", "clsact", idx)
        ipr.tc("add-filter", "bpf", idx, ":1", fd=fd, name=name, parent="ffff:fff2",
               classid=1, direct_action=True)


def nf_bpf_trial(count: int = FRAMES) -> dict[str, int]:
    """BPF netfilter programs (6.4+): load a minimal program (it counts, returns NF_ACCEPT) as
    BPF_PROG_TYPE_NETFILTER, link it at ipv4 LOCAL_IN in this process's private netns, and
    send UDP datagrams over loopback: it must run once per datagram. No compile: the program
    is assembled by cnitrace.probes.bpfsys. Every fd is closed before returning."""

    fds: list[int] = []
    try:
        m = bs.map_create(bs.BPF_MAP_TYPE_ARRAY, 4, 8, 1, "cnit_nf_trial")
        fds.append(m)
        prog = bs.load_program(bs.counting_program(m), prog_type=bs.BPF_PROG_TYPE_NETFILTER,
                               attach_type=bs.BPF_NETFILTER, name="cnit_nf_trial")
        fds.append(prog)
        try:
            fds.append(bs.link_netfilter(prog, bs.NFPROTO_IPV4, 1, 0))   # NF_INET_LOCAL_IN, priority 0
        except OSError as exc:
            raise RuntimeError(f"BPF_LINK_CREATE (netfilter, ipv4 LOCAL_IN): {exc.strerror}") from None
        sent = send_frames("lo", count)
        deadline = time.monotonic() + 1.0
        hits = bs.map_lookup_u64(m, 0)
        while hits < sent and time.monotonic() < deadline:
            time.sleep(0.02)
            hits = bs.map_lookup_u64(m, 0)
        return {"hits": hits, "sent": sent}
    finally:
        for fd in reversed(fds):    # the link first: detached before its program goes
            os.close(fd)


def run_trial(runner: Runner = DEFAULT_RUNNER) -> dict[str, Any]:

    out: dict[str, Any] = {"tracefs": ensure_fs("tracefs", TRACEFS)}
    sec = ensure_fs("securityfs", SECURITYFS)
    lockdown = Path(SECURITYFS, "lockdown")
    out["lockdown"] = lockdown.read_text().strip() if lockdown.exists() else None
    out["kprobe_pmu"] = Path("/sys/bus/event_source/devices/kprobe/type").exists()
    out["kprobe_events"] = Path(out["tracefs"]["path"], "kprobe_events").exists()
    out["securityfs"] = sec
    dev = out["device"] = make_device(runner)

    t0 = time.monotonic()
    holder: dict[str, Any] = {}
    with captured_stderr() as lines:
        try:
            holder["b"] = loader.load(SOURCE, autoload=False)
            out["compile"] = {"ok": True}
        except Exception as exc:  # noqa: BLE001
            out["compile"] = {"ok": False, "error": str(exc).splitlines()[0][:200]}
    out["compile"]["seconds"] = round(time.monotonic() - t0, 3)
    if not out["compile"]["ok"]:
        out["compile"]["log"] = _log_hint(lines)
        return out
    b = holder["b"]
    BPF = type(b).__mro__[1] if type(b).__name__ == "BPFNoAutoload" else type(b)

    att: dict[str, dict[str, Any]] = {}
    att["tracepoints"] = attempt(lambda: b.attach_tracepoint(tp=b"net:netif_receive_skb", fn_name=b"on_tracepoint"))
    att["raw_tracepoints"] = attempt(lambda: b.attach_raw_tracepoint(tp=b"netif_receive_skb",
                                                                     fn_name=b"on_raw_tracepoint"))
    links: list[int] = []      # tp_btf link fds: the program runs while they are open

    def tp_btf() -> None:
        fd = load_tracing(b.dump_func(b"on_tp_btf"), attach_type=BPF_TRACE_RAW_TP, target_fd=0, name="on_tp_btf",
                          btf_id=loader.vmlinux_btf_id("netif_receive_skb", BPF_TRACE_RAW_TP))
        links.extend((fd, attach_tracing(fd)))
    att["tp_btf"] = attempt(tp_btf)
    att["kprobes"] = attempt(lambda: b.attach_kprobe(event=KPROBE_TARGET.encode(), fn_name=b"on_kprobe"))
    att["fentry"] = attempt(lambda: b.attach_kfunc(fn_name=KPROBE_TARGET.encode()))

    def tc() -> None:
        fn = b.load_func(b"on_tc", BPF.SCHED_CLS)
        attach_tc(dev, fn.fd, fn.name.decode())
    att["tc_bpf"] = attempt(tc)

    hits = b["hits"]
    sent = send_frames(dev)
    got = wait_hits(hits, [SLOTS[k] for k, v in att.items() if v["ok"]], sent)
    for k, v in att.items():
        if v["ok"]:
            v["hits"], v["sent"] = got[SLOTS[k]], sent

    nf: dict[str, int] = {}
    att["nf_bpf"] = attempt(lambda: nf.update(nf_bpf_trial()))
    att["nf_bpf"].update(nf)

    # XDP last: on a veth it switches the receive path to NAPI, which bypasses the kprobe target.
    def xdp() -> None:
        fn = b.load_func(b"on_xdp", BPF.XDP)
        try:
            BPF.attach_xdp(dev, fn, 0)
            att["xdp"]["mode"] = "native"
        except Exception:  # noqa: BLE001 - fall back to generic (skb) mode
            BPF.attach_xdp(dev, fn, 1 << 1)
            att["xdp"]["mode"] = "generic"
    att["xdp"] = {}
    att["xdp"].update(attempt(xdp))
    if att["xdp"]["ok"]:
        xdp_sent = send_frames(dev)
        att["xdp"]["hits"] = wait_hits(hits, [SLOTS["xdp"]], xdp_sent)[SLOTS["xdp"]]
        att["xdp"]["sent"] = xdp_sent
    out["attach"] = att
    return out


def main(argv: list[str] | None = None) -> int:
    """argv: the parent's mount and net namespace ids; we refuse to touch anything in those."""
    outer = list(sys.argv[1:] if argv is None else argv)
    if not in_private_namespaces(outer):
        print(json.dumps({"error": "refusing to run outside private mount and network namespaces"}))
        return 2
    if os.geteuid() != 0:
        print(json.dumps({"error": "needs root"}))
        return 2
    try:
        result = run_trial()
    except Exception as exc:  # noqa: BLE001 - the parent wants JSON, never a traceback
        result = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
