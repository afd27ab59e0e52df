"""Rulesets and flow tables at production scale, for the scale test and benchmark.

`kube_proxy_ruleset(services)` is what kube-proxy in iptables mode programs for that many
ClusterIP services with one endpoint each (the shape of kube-proxy 1.2x's `iptables-save -t nat`):

    -A KUBE-SERVICES -d 10.96.x.y/32 -p tcp -m comment --comment "ns/svc:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-*
    -A KUBE-SVC-*   ! -s 10.244.0.0/16 -d 10.96.x.y/32 -p tcp ... -j KUBE-MARK-MASQ
    -A KUBE-SVC-*   -m comment --comment "ns/svc:http -> 10.244.a.b:8080" -j KUBE-SEP-*
    -A KUBE-SEP-*   -s 10.244.a.b/32 -m comment --comment ns/svc:http -j KUBE-MARK-MASQ
    -A KUBE-SEP-*   -p tcp -m comment --comment ns/svc:http -m tcp -j DNAT --to-destination 10.244.a.b:8080

five rules per service, so 20,000 services are 100,000 rules, plus the few fixed rules of
KUBE-MARK-MASQ / KUBE-POSTROUTING and the built-in chains' jumps (`FIXED_RULES`). Chain names
are kube-proxy's: a 16-character base32 hash of the service (and endpoint) name.

`ovs_flows(n)` is n flows over ten tables from 100 on (beyond Antrea's pipeline, which never
reaches them: the lab's forwarding is untouched), each matching one source IP and port.

The rest runs them: loading a lab's namespace or bridge, the ground truth read back from the kernel
(`count_rules`, `ovs_flow_count`), and `run_child`, which times a cnitrace child from outside
(wall, CPU of it and its tools, peak RSS).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

RULES_PER_SERVICE = 5
FIXED_RULES = 6   # PREROUTING/OUTPUT/POSTROUTING jumps, KUBE-MARK-MASQ, two in KUBE-POSTROUTING


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest())[:16].decode()


def kube_proxy_ruleset(services: int) -> str:
    """An `iptables-restore` input for the nat table: services x RULES_PER_SERVICE + FIXED_RULES rules."""
    if not 0 < services <= 60_000:
        raise ValueError("services must be in 1..60000")
    head = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-POSTROUTING - [0:0]",
            ":KUBE-SERVICES - [0:0]"]
    decl, body, svc_rules = [], [], []
    for i in range(services):
        name = f"ns{i % 100}/svc{i}:http"
        svc, sep = f"KUBE-SVC-{_hash(name + 'tcp')}", f"KUBE-SEP-{_hash(name + 'ep')}"
        vip = f"10.96.{i >> 8 & 255}.{i & 255}"
        pod = f"10.244.{i >> 8 & 255}.{i & 255}"
        decl += [f":{svc} - [0:0]", f":{sep} - [0:0]"]
        svc_rules.append(f'-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment "{name} cluster IP" '
                         f"-m tcp --dport 80 -j {svc}")
        body += [f'-A {svc} ! -s 10.244.0.0/16 -d {vip}/32 -p tcp -m comment --comment "{name} cluster IP" '
                 f"-m tcp --dport 80 -j KUBE-MARK-MASQ",
                 f'-A {svc} -m comment --comment "{name} -> {pod}:8080" -j {sep}',
                 f"-A {sep} -s {pod}/32 -m comment --comment {name} -j KUBE-MARK-MASQ",
                 f"-A {sep} -p tcp -m comment --comment {name} -m tcp -j DNAT --to-destination {pod}:8080"]
    fixed = ['-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
             '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
             '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
             "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
             "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
             "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0"]
    assert len(fixed) == FIXED_RULES
    return "\n".join([*head, *decl, *fixed, *svc_rules, *body, "COMMIT", ""])


def kube_proxy_rules(services: int) -> int:
    """How many rules kube_proxy_ruleset(services) loads."""
    return services * RULES_PER_SERVICE + FIXED_RULES


def ovs_flows(n: int, tables: int = 10) -> str:
    """An `ovs-ofctl add-flows` file of n flows spread over `tables` tables (ids 100..), each
    matching one source IP and port and continuing to the next table; none shadows another."""
    if not 0 < n <= 1_000_000:
        raise ValueError("n must be in 1..1000000")
    out = []
    for i in range(n):
        t = 100 + i % tables
        nxt = f"goto_table:{t + 1}" if t < 100 + tables - 1 else "drop"
        out.append(f"table={t},priority={100 + i % 50},tcp,nw_src=10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255},"
                   f"tp_dst={1 + i % 60000},actions={nxt}")
    return "\n".join(out) + "\n"


# --- running at scale: loading the lab, timing cnitrace as a child ----------------------------

SAVE_TOOLS = ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save")


@dataclasses.dataclass
class Child:
    """One cnitrace run as a child process: exit status, wall time, CPU time (user + system of it and
    of the tools it ran), its peak RSS, and its output."""
    rc: int
    wall_s: float
    cpu_s: float
    maxrss_mib: float
    stdout: str
    stderr: str


# A small launcher between the caller and the child: a process's peak RSS (ru_maxrss) starts from
# its parent's resident size at fork (the kernel keeps the pre-exec high-water mark), so a child
# forked straight from a benchmark holding an 80 MB document would report the benchmark's memory.
_LAUNCHER = """
import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "maxrss_kib": ru.ru_maxrss, "cpu_s": ru.ru_utime + ru.ru_stime}, f)
"""


def run_child(argv: Sequence[str], timeout: float = 300.0) -> Child:
    """Run argv through the launcher with stdout/stderr in temporary files (an 80 MB JSON through a
    pipe would cost the reader, not the child); its peak RSS includes at most the launcher's ~13 MiB."""
    with tempfile.TemporaryDirectory(prefix="cnit-child-") as tmp:
        usage = os.path.join(tmp, "usage.json")
        with open(os.path.join(tmp, "out"), "w+") as out, open(os.path.join(tmp, "err"), "w+") as err:
            t0 = time.monotonic()
            try:
                subprocess.run([sys.executable, "-c", _LAUNCHER, usage, *argv], stdout=out, stderr=err,
                               timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                pass
            wall = time.monotonic() - t0
            out.seek(0)
            err.seek(0)
            text, errs = out.read(), err.read()
        try:
            with open(usage, encoding="utf-8") as f:
                u = json.load(f)
        except (OSError, ValueError):
            u = {"rc": -1, "maxrss_kib": 0, "cpu_s": 0.0}
            errs += f"\n(killed after {timeout:g} s)"
    return Child(u["rc"], wall, u["cpu_s"], u["maxrss_kib"] / 1024, text, errs)


def cnitrace(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnitrace", *args]


def count_rules(runner: Any, netns: str) -> int:
    """`-A` lines in every table of both backends and families inside `netns` (the ground truth)."""
    n = 0
    for tool in SAVE_TOOLS:
        done = runner.run([tool], netns=netns, check=False, timeout=120)
        if done.ok:
            n += sum(1 for line in done.stdout.splitlines() if line.startswith("-A "))
    return n


def load_kube_proxy(runner: Any, netns: str, services: int, backend: str = "legacy", keep: bool = True) -> None:
    """kube_proxy_ruleset(services) into the nat table of `netns`: beside what is there (keep:
    --noflush), or replacing its nat table. iptables-nft-restore --noflush takes minutes at this size
    (seconds without), so a fresh namespace is loaded with keep=False."""
    tool = "iptables-legacy-restore" if backend == "legacy" else "iptables-nft-restore"
    runner.run([tool, *(["--noflush"] if keep else [])], input=kube_proxy_ruleset(services), netns=netns, timeout=300)


def add_ovs_flows(runner: Any, mgmt: str, n: int) -> None:
    """ovs_flows(n) into the bridge behind `mgmt` (unix:...mgmt), in one bundle."""
    fd, path = tempfile.mkstemp(prefix="cnit-flows-", suffix=".txt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(ovs_flows(n))
        runner.run(["ovs-ofctl", "-O", "OpenFlow15", "--bundle", "add-flows", mgmt, path], timeout=300)
    finally:
        os.unlink(path)


def ovs_flow_count(runner: Any, mgmt: str) -> int:
    out = runner.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-aggregate", mgmt], timeout=60).stdout
    return int(out.split("flow_count=")[1].split()[0])


def snapshot_records(doc: dict[str, Any], collector: str, kind: str) -> int:
    return sum(1 for r in doc["collectors"][collector]["records"] if r["kind"] == kind)


def tree_chain(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The first node of kind chain named `name` in a profile document's tree."""
    todo = [doc["tree"]]
    while todo:
        n = todo.pop()
        if n.get("kind") == "chain" and n.get("name") == name:
            return n
        todo += n.get("children", [])
    return None

