"""The host capability checks behind `cnitrace doctor`, the probe ladder and the test skips.

Each check returns a Check with a reason and never raises. Where a capability can be
tried, it is tried: one child process (cnitrace.probes.trial) compiles one BPF object and
attaches each program type in throwaway mount and network namespaces, counting real
frames; every check that needs it reads that one cached result, so doctor costs one
compile. Interpretation is split into pure functions (`*_from`) tested against fixtures.
"""

from __future__ import annotations

import ctypes
import gzip
import importlib.util
import json
import os
import platform
import re
import sys
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping

from cnitrace.core import capability
from cnitrace.core.capability import Check, Host, degraded, missing, ok
from cnitrace.core.errors import CnitraceError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.node import detect

TRIAL_TIMEOUT = 150.0   # one compile: <1 s on a node, ~30 s in a TCG microVM
BPF_STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")

_MEMO: "weakref.WeakKeyDictionary[Host, dict[str, Any]]" = weakref.WeakKeyDictionary()


def memo(host: Host, key: str, fn: Callable[[], Any]) -> Any:
    """Compute `fn()` once per Host: the trial, kernel config and evidence are shared by checks."""
    cache = _MEMO.setdefault(host, {})
    if key not in cache:
        cache[key] = fn()
    return cache[key]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


# --- pure interpretation -----------------------------------------------------------------------

def parse_kconfig(text: str) -> dict[str, str]:
    """'CONFIG_X=y' and '# CONFIG_X is not set' lines -> {'CONFIG_X': 'y' | 'n'}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v.strip('"')
        else:
            m = re.match(r"# (CONFIG_\w+) is not set", line)
            if m:
                out[m.group(1)] = "n"
    return out


def parse_lockdown(text: str | None) -> str | None:
    """'none [integrity] confidentiality' -> 'integrity' (the bracketed mode is the active one)."""
    if not text:
        return None
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else None


def headers_version(build_target: str) -> str | None:
    """'/usr/src/linux-headers-6.12.115+deb12-amd64' -> '6.12.115+deb12-amd64'."""
    m = re.search(r"linux-headers-(.+?)/?$", build_target)
    return m.group(1) if m else None


def kernel_headers_from(release: str, build_target: str | None, has_kconfig_h: bool) -> Check:
    """Matching headers are OK; another version's are a stand-in (tracepoints fine, struct reads not)."""
    if build_target is None:
        return missing("kernel_headers", f"no /lib/modules/{release}/build: bcc cannot compile",
                       release=release)
    ver = headers_version(build_target) or build_target
    if not has_kconfig_h:
        return missing("kernel_headers", f"build -> {build_target} lacks include/linux/kconfig.h "
                       "(Debian: link the -common headers at ../source)", release=release, headers=ver)
    if ver == release or build_target.rstrip("/").endswith(release):
        return ok("kernel_headers", f"matching headers for {release}", release=release, headers=ver)
    return degraded("kernel_headers", f"stand-in: headers {ver} for kernel {release} "
                    "(tracepoints and BTF offsets are correct; header struct layouts may not be)",
                    release=release, headers=ver)


def count_iptables(save_text: str) -> tuple[int, int]:
    """(chains, rules) in iptables-save output: ':CHAIN' lines and '-A' lines."""
    chains = rules = 0
    for line in save_text.splitlines():
        if line.startswith(":"):
            chains += 1
        elif line.startswith("-A "):
            rules += 1
    return chains, rules


def iptables_from(backends: Mapping[str, tuple[int, int] | str | None]) -> Check:
    """backends: name -> (chains, rules), an error string, or None when the tool is absent."""
    present = {k: v for k, v in backends.items() if isinstance(v, tuple)}
    detail = {k: ({"chains": v[0], "rules": v[1]} if isinstance(v, tuple) else {"error": v})
              for k, v in backends.items() if v is not None}
    if not present:
        why = "; ".join(f"{k}: {v}" for k, v in backends.items() if isinstance(v, str)) or "not installed"
        return missing("iptables", f"no iptables backend usable ({why})", **detail)
    holding = [k for k, (_, rules) in present.items() if rules]
    parts = [f"{k} ({v[1]} rules)" for k, v in present.items()]
    holds = f"rules in {', '.join(holding)}" if holding else "no rules in either"
    return ok("iptables", f"backends {', '.join(parts)}; {holds}", holding=holding, **detail)


def trial_check_from(name: str, trial: Mapping[str, Any], kconfig: Mapping[str, str]) -> Check:
    """Turn the child's result for one attach type into a Check with a reason that says why."""
    if "error" in trial:
        return missing(name, f"not tried: {trial['error']}")
    comp = trial.get("compile", {})
    if not comp.get("ok"):
        return missing(name, f"not tried: bcc could not compile ({comp.get('log') or comp.get('error')})")
    res = trial.get("attach", {}).get(name)
    if res is None:
        return missing(name, "not tried")
    dev = "loopback" if trial.get("device") == "lo" else "a veth"
    what = {"tracepoints": "net:netif_receive_skb", "raw_tracepoints": "raw netif_receive_skb",
            "tp_btf": "BTF-typed netif_receive_skb (tp_btf)",
            "kprobes": "kprobe __netif_receive_skb", "fentry": "fentry __netif_receive_skb",
            "tc_bpf": f"sched_cls on {dev} (clsact ingress)", "xdp": f"XDP on {dev}"}.get(name, name)
    if res.get("ok"):
        hits = res.get("hits")
        sent = res.get("sent")
        mode = f", {res['mode']} mode" if res.get("mode") else ""
        counted = ("" if hits is None else f"; fired on all {sent} test frames" if hits >= (sent or 0)
                   else f"; fired on {hits} of {sent} test frames")
        if hits == 0:
            return degraded(name, f"{what} attached{mode} but counted none of {sent} test frames",
                            hits=hits)
        return ok(name, f"{what} attached{mode}{counted}", hits=hits)
    return missing(name, _failure_reason(name, res, trial, kconfig), error=res.get("error"),
                   log=res.get("log"))


def _failure_reason(name: str, res: Mapping[str, Any], trial: Mapping[str, Any],
                    kconfig: Mapping[str, str]) -> str:
    log = res.get("log") or res.get("error") or "failed"
    if name == "kprobes":
        why = []
        if not trial.get("kprobe_pmu") and not trial.get("kprobe_events"):
            why.append("no kprobe PMU and no kprobe_events in tracefs")
        if kconfig.get("CONFIG_KPROBES") == "n":
            why.append("CONFIG_KPROBES is not set")
        return f"kprobe attach failed: {'; '.join(why) or log}"
    if name == "fentry":
        lock = parse_lockdown(trial.get("lockdown"))
        extra = f"; lockdown={lock}" if lock else ""
        if "not permitted" in log.lower():
            return f"loading a 'tracing' (fentry) program was refused: Operation not permitted{extra}"
        return f"fentry attach failed: {log}{extra}"
    if name == "tracepoints" and trial.get("tracefs", {}).get("state") == "unavailable":
        return f"tracefs unavailable ({trial['tracefs'].get('error')}): {log}"
    return f"{name} failed: {log}"


def tracefs_from(proc_mounts: str, trial: Mapping[str, Any]) -> Check:
    for line in proc_mounts.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "tracefs":
            return ok("tracefs", f"mounted at {parts[1]}", path=parts[1])
    state = trial.get("tracefs", {}).get("state")
    if state == "mounted-privately":
        return degraded("tracefs", "not mounted on the node, but mountable (tried in a private mount "
                        "namespace); to mount: mount -t tracefs tracefs /sys/kernel/tracing")
    if state == "unavailable":
        return missing("tracefs", f"not mounted and not mountable: {trial['tracefs'].get('error')}")
    return missing("tracefs", "not mounted (mount -t tracefs tracefs /sys/kernel/tracing)")


def bpf_stats_from(enable_stats_errno: int | None, sysctl_value: str | None) -> Check:
    """errno None means BPF_ENABLE_STATS returned an fd (stats stop when it closes: preferred)."""
    if enable_stats_errno is None:
        return ok("bpf_stats", "BPF_ENABLE_STATS works (run_time_ns per program; off again when the fd "
                  "closes)", method="BPF_ENABLE_STATS", sysctl=sysctl_value)
    why = os.strerror(enable_stats_errno)
    if sysctl_value is not None:
        return degraded("bpf_stats", f"BPF_ENABLE_STATS failed ({why}); will use sysctl "
                        f"kernel.bpf_stats_enabled (now {sysctl_value}, restored after)",
                        method="sysctl", sysctl=sysctl_value)
    return missing("bpf_stats", f"BPF_ENABLE_STATS failed ({why}) and no kernel.bpf_stats_enabled")


# --- I/O helpers ---------------------------------------------------------------------------------

def kconfig(host: Host) -> tuple[dict[str, str], str | None]:
    """The running kernel's config and where it came from (/proc/config.gz or /boot/config-*)."""
    def load() -> tuple[dict[str, str], str | None]:
        gz = Path("/proc/config.gz")
        if gz.exists():
            try:
                return parse_kconfig(gzip.decompress(gz.read_bytes()).decode(errors="replace")), str(gz)
            except (OSError, EOFError):
                pass
        boot = Path(f"/boot/config-{platform.release()}")
        text = _read(boot)
        return (parse_kconfig(text), str(boot)) if text is not None else ({}, None)
    return memo(host, "kconfig", load)


def trial_argv() -> list[str]:
    """The child command: fresh mount+net namespaces; it refuses to run in ours (passed as argv)."""
    ns = [os.readlink(f"/proc/self/ns/{n}") for n in ("mnt", "net")]
    return ["unshare", "--mount", "--net", "--propagation", "private", "--",
            sys.executable, "-m", "cnitrace.probes.trial", *ns]


def trial(host: Host) -> dict[str, Any]:
    """Run the attach trial once per Host; a dict with 'error' when it could not run."""
    def run() -> dict[str, Any]:
        if os.geteuid() != 0:
            return {"error": "needs root (loading BPF programs)"}
        if host.runner.which("unshare") is None:
            return {"error": "unshare (util-linux) not installed"}
        try:
            done = host.runner.run(trial_argv(), timeout=TRIAL_TIMEOUT, check=False)
        except CnitraceError as exc:
            return {"error": exc.message}
        for line in reversed(done.stdout.strip().splitlines()):
            try:
                return json.loads(line)
            except ValueError:
                continue
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"error": f"attach trial gave no result: {tail[:200]}"}
    return memo(host, "trial", run)


def bpf_enable_stats_errno() -> int | None:
    """Call bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME) via ctypes; close the fd at once."""

    libc = ctypes.CDLL(None, use_errno=True)
    nr_bpf = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
    if nr_bpf is None:
        return 38  # ENOSYS: unknown syscall number on this architecture
    attr = (ctypes.c_uint8 * 128)()   # union bpf_attr; enable_stats.type = BPF_STATS_RUN_TIME (0)
    fd = libc.syscall(nr_bpf, 32, ctypes.byref(attr), ctypes.sizeof(attr))  # 32: BPF_ENABLE_STATS
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return None


def run_quiet(host: Host, argv: list[str], timeout: float = 10.0, netns: str | None = None):
    """Run a read-only tool; None when it is missing or fails to start."""
    if host.runner.which(argv[0]) is None:
        return None
    try:
        return host.runner.run(argv, timeout=timeout, check=False, netns=netns)
    except CnitraceError:
        return None


# --- the checks ----------------------------------------------------------------------------------

def check_root(host: Host) -> Check:
    if os.geteuid() == 0:
        return ok("root", "running as root")
    return missing("root", "not root: loading probes and reading counters need root (run with sudo)")


def check_kernel(host: Host) -> Check:
    conf, source = kconfig(host)
    release = platform.release()
    if source is None:
        return degraded("kernel", f"{release}; no kernel config (/proc/config.gz, /boot/config-{release})",
                        release=release)
    keys = ("CONFIG_BPF_SYSCALL", "CONFIG_DEBUG_INFO_BTF", "CONFIG_KPROBES", "CONFIG_FUNCTION_TRACER",
            "CONFIG_NET_CLS_BPF", "CONFIG_OPENVSWITCH", "CONFIG_IKHEADERS")
    picked = {k: conf.get(k, "n") for k in keys}
    if conf.get("CONFIG_BPF_SYSCALL") != "y":
        return missing("kernel", f"{release}: CONFIG_BPF_SYSCALL is not set (from {source})",
                       release=release, config_source=source, config=picked)
    return ok("kernel", f"{release}, config from {source}", release=release, config_source=source,
              config=picked)


def check_btf(host: Host) -> Check:
    p = Path("/sys/kernel/btf/vmlinux")
    if p.exists():
        return ok("btf", f"{p} ({p.stat().st_size // 1024} KiB)", path=str(p))
    return missing("btf", f"no {p} (CONFIG_DEBUG_INFO_BTF off): no fentry, no BTF struct offsets")


def check_tracefs(host: Host) -> Check:
    mounts = _read(Path("/proc/self/mounts")) or ""
    t = trial(host) if "tracefs" not in mounts else {}
    return tracefs_from(mounts, t)


def check_lockdown(host: Host) -> Check:
    text = _read(Path("/sys/kernel/security/lockdown"))
    src = "securityfs"
    if text is None:
        text = trial(host).get("lockdown")
        src = "securityfs, mounted privately"
    mode = parse_lockdown(text)
    if mode is None:
        conf, _ = kconfig(host)
        forced = [k.rsplit("_", 1)[-1].lower() for k in ("CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY",
                                                          "CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY")
                  if conf.get(k) == "y"]
        if forced:
            return ok("lockdown", f"{forced[0]} (from kernel config; securityfs unreadable)", mode=forced[0])
        return ok("lockdown", "none (no lockdown LSM interface)", mode="none")
    if mode == "confidentiality":
        return degraded("lockdown", "confidentiality: BPF may not read kernel memory", mode=mode)
    return ok("lockdown", f"{mode} (from {src})", mode=mode)


def check_bcc(host: Host) -> Check:
    if importlib.util.find_spec("bcc") is None:
        return missing("bcc", "python module bcc not importable: install python3-bpfcc and create the "
                       "venv with --system-site-packages")
    t = trial(host)
    if "error" in t:
        return degraded("bcc", f"importable; compile not tried: {t['error']}")
    comp = t.get("compile", {})
    if comp.get("ok"):
        return ok("bcc", f"importable; compiled selftest.bpf.c in {comp.get('seconds', 0):.2f} s",
                  compile_seconds=comp.get("seconds"))
    return missing("bcc", f"importable but cannot compile: {comp.get('log') or comp.get('error')}")


def check_kernel_headers(host: Host) -> Check:
    release = platform.release()
    build = Path(f"/lib/modules/{release}/build")
    if not build.exists():
        return kernel_headers_from(release, None, False)
    target = str(build.resolve())
    source = Path(f"/lib/modules/{release}/source")
    has = any((d / "include/linux/kconfig.h").exists() for d in (build, source) if d.exists())
    return kernel_headers_from(release, target, has)


def _trial_backed(name: str) -> Callable[[Host], Check]:
    def fn(host: Host) -> Check:
        return trial_check_from(name, trial(host), kconfig(host)[0])
    fn.__name__ = f"check_{name}"
    fn.__doc__ = f"{name}: decided by attaching a real program in the trial child."
    return fn


TRIAL_BACKED = ("kprobes", "fentry", "tracepoints", "raw_tracepoints", "tp_btf", "tc_bpf", "xdp", "nf_bpf")


def check_bpf_stats(host: Host) -> Check:
    sysctl = _read(BPF_STATS_SYSCTL)
    err = bpf_enable_stats_errno() if os.geteuid() == 0 else 1  # EPERM without root
    return bpf_stats_from(err, sysctl.strip() if sysctl is not None else None)


def check_iptables(host: Host) -> Check:
    backends: dict[str, tuple[int, int] | str | None] = {}
    for name, tool in (("legacy", "iptables-legacy-save"), ("nft", "iptables-nft-save")):
        done = run_quiet(host, [tool])
        if done is None:
            backends[name] = None
        elif not done.ok:
            backends[name] = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:120]
        else:
            backends[name] = count_iptables(done.stdout)
    return iptables_from(backends)


def check_nft(host: Host) -> Check:
    done = run_quiet(host, ["nft", "list", "tables"])
    if done is None:
        return missing("nft", "nft not installed")
    if not done.ok:
        return missing("nft", f"nft list tables failed: {(done.stderr.strip() or '?').splitlines()[-1]}")
    tables = [l.split(None, 1)[1] for l in done.stdout.splitlines() if l.startswith("table ")]
    return ok("nft", f"nftables usable; {len(tables)} table(s)", tables=tables)


def check_ovs(host: Host) -> Check:
    """Userspace side: tools, ovsdb and bridges (the kernel datapath is check `ovs_kernel`)."""
    if host.runner.which("ovs-vsctl") is None:
        return missing("ovs", "Open vSwitch tools not installed")
    sock = Path("/run/openvswitch/db.sock")
    if not sock.exists():
        return degraded("ovs", f"tools installed; ovsdb not running ({sock} absent)", ovsdb=False)
    done = run_quiet(host, ["ovs-vsctl", "--timeout=3", "--format=json", "--columns=name,datapath_type",
                            "list", "Bridge"])
    if done is None or not done.ok:
        why = (done.stderr.strip().splitlines() or ["?"])[-1] if done else "failed"
        return degraded("ovs", f"ovsdb not reachable at {sock}: {why}", ovsdb=False)
    bridges = parse_ovs_bridges(done.stdout)
    kinds = sorted({dp or "system" for dp in bridges.values()})
    return ok("ovs", f"ovsdb reachable; {len(bridges)} bridge(s)"
              + (f", datapath types {', '.join(kinds)}" if bridges else ""), ovsdb=True, bridges=bridges)


def parse_ovs_bridges(json_text: str) -> dict[str, str]:
    """`ovs-vsctl --format=json --columns=name,datapath_type list Bridge` -> {name: datapath_type}."""
    doc = json.loads(json_text)
    cols = doc.get("headings", [])
    out = {}
    for row in doc.get("data", []):
        rec = dict(zip(cols, row))
        dp = rec.get("datapath_type", "")
        out[str(rec.get("name"))] = dp if isinstance(dp, str) else ""
    return out


def ovs_module_from(proc_modules: str, builtin: str, modinfo_ok: bool) -> Check:
    if any(l.split()[0] == "openvswitch" for l in proc_modules.splitlines() if l.strip()):
        return ok("ovs_kernel", "openvswitch kernel module loaded", module="loaded")
    if "openvswitch.ko" in builtin:
        return ok("ovs_kernel", "openvswitch built into the kernel", module="builtin")
    if modinfo_ok:
        return ok("ovs_kernel", "openvswitch kernel module loadable (not loaded)", module="loadable")
    return missing("ovs_kernel", "no openvswitch kernel module (not loaded, not built in, modinfo finds "
                   "none): userspace datapath only", module="none")


def check_ovs_kernel(host: Host) -> Check:
    release = platform.release()
    done = run_quiet(host, ["modinfo", "-F", "filename", "openvswitch"])
    return ovs_module_from(_read(Path("/proc/modules")) or "",
                           _read(Path(f"/lib/modules/{release}/modules.builtin")) or "",
                           bool(done and done.ok and done.stdout.strip()))


TOOLS = ("bpftool", "tc", "ip", "iptables-legacy-save", "iptables-nft-save", "nft", "ovs-vsctl",
         "ovs-ofctl", "conntrack", "ipset", "cilium-dbg", "cilium", "calicoctl", "antctl")


def check_tools(host: Host) -> Check:
    found = {t: host.runner.which(t) for t in TOOLS}
    have = [t for t, p in found.items() if p]
    if not found["bpftool"]:
        return degraded("tools", "bpftool missing (BPF program inventory unavailable)", tools=found)
    cni_tools = [t for t in ("cilium-dbg", "cilium", "calicoctl", "antctl") if found[t]]
    return ok("tools", f"{len(have)}/{len(TOOLS)} present; CNI tools: {', '.join(cni_tools) or 'none'}",
              tools=found)


def check_cni(host: Host) -> Check:
    ev = memo(host, "evidence", lambda: detect.gather_evidence(host.runner))
    found = detect.detect_cnis(ev)
    if not found:
        return missing("cni", "no CNI evidence (interfaces, chains, OVS bridges, Cilium pins, tc programs)")
    return ok("cni", "; ".join(f"{d.cni} ({d.evidence[0]}{', …' if len(d.evidence) > 1 else ''})"
                               for d in found),
              cnis=[d.to_json() for d in found])


def check_kube_proxy(host: Host) -> Check:
    ev = memo(host, "evidence", lambda: detect.gather_evidence(host.runner))
    kp = detect.detect_kube_proxy(ev)
    if kp.mode == "none":
        return missing("kube_proxy", kp.reason, mode=kp.mode)
    return ok("kube_proxy", f"{kp.mode} mode ({kp.reason})", mode=kp.mode)


# The one registry of this node's checks, in doctor's order; installed by register_all() at start-up.
CHECKS: dict[str, Callable[[Host], Check]] = {
    "root": check_root, "kernel": check_kernel, "btf": check_btf, "tracefs": check_tracefs,
    "lockdown": check_lockdown, "bcc": check_bcc, "kernel_headers": check_kernel_headers,
    **{name: _trial_backed(name) for name in TRIAL_BACKED},
    "bpf_stats": check_bpf_stats, "iptables": check_iptables, "nft": check_nft, "ovs": check_ovs,
    "ovs_kernel": check_ovs_kernel, "tools": check_tools, "cni": check_cni, "kube_proxy": check_kube_proxy,
}


def register_all() -> None:
    """Install CHECKS as the capability registry (the CLI, the tests and the benches call this first)."""
    capability.register(CHECKS)


def host(runner: Runner = DEFAULT_RUNNER) -> Host:
    """A Host that evaluates this node's checks: how the application makes one, so that code run
    outside the CLI (a script driving the lab, a test's child process) needs no set-up call."""
    register_all()
    return Host(runner)
