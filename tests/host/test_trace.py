"""`cnitrace trace` on lab datapaths: an allowed and a denied marked probe each name the exact
deciding rule (lab ground truth) and the policy, hops in order, N probes -> N traced packets;
--pcap opens in tshark; no residue after a normal exit, SIGINT, and SIGKILL + cleanup."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cnitrace.core.state import StateFile
from tests.unit.test_trace_output import _comment

pytestmark = pytest.mark.requires("iptables")

CLI = [sys.executable, "-m", "cnitrace"]
DATAPATHS = [("calico", "nft"), ("calico", "legacy"), ("kube-router", "nft"), ("kube-router", "legacy"),
             ("weave", "nft"), ("nft", "legacy"), ("flannel", "nft")]


def _cli(*args, timeout=120):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _trace(lab, proto, port, count, tmp_path, *extra):
    out = tmp_path / f"{proto}-{port}.json"
    p = _cli("trace", "--lab", lab.spec.name, "--probe", f"{proto}:{lab.topo.server.ip}:{port}",
             "--count", str(count), "--json", str(out), *extra)
    assert p.returncode == 0, p.stderr + p.stdout
    return json.loads(out.read_text())


def _matches(hop, ref):
    d = hop["detail"]
    if ref["kind"] == "iptables":
        return hop["where"].split()[1:] == [ref["table"], ref["chain"]] and d.get("position") == ref["index"]
    fam, table = ref["table"].split()
    return hop["where"] == f"{fam} {table} {ref['chain']}" and d.get("handle") == ref["handle"]


def _residue(lab) -> dict:
    """What a trace could leave in the lab: tables and TRACE rules in the node namespace, nf_log,
    monitor processes, live state records, log files."""
    ns = lab.topo.node_netns
    run = lambda *a: subprocess.run(["ip", "netns", "exec", ns, *a], capture_output=True, text=True).stdout
    ino = os.stat(f"/run/netns/{ns}").st_ino
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != ino:
                continue
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "monitor trace" in cmd or "cnitrace.trace" in cmd:
            procs.append(cmd)
    return {
        "nft-tables": sorted(run("nft", "list", "tables").split("\n")),
        "raw-legacy": run("iptables-legacy", "-t", "raw", "-S"),
        "nf_log": run("cat", "/proc/sys/net/netfilter/nf_log/2"),
        "procs": procs,
        "records": sorted((r.kind, r.name) for r in StateFile().live()
                          if (r.data.get("netns") == ns or r.name.endswith(f":{ns}") or r.name.endswith(f"-{ns}.log"))),
        "logs": sorted(p for p in os.listdir(StateFile().dir) if p.startswith("cnit-trace") and ns in p),
    }


@pytest.mark.parametrize("dp,backend", DATAPATHS, ids=[f"{d}-{b}" for d, b in DATAPATHS])
def test_allowed_and_denied_name_rule_and_policy(lab_factory, tmp_path, dp, backend):
    lab = lab_factory(dp, 3, backend=backend)
    before = _residue(lab)
    truth = lab.truth.to_json()
    for proto in ("tcp", "udp"):
        doc = _trace(lab, proto, lab.topo.allowed_port, 2, tmp_path)
        assert (doc["sent"], doc["traced"]) == (2, 2), doc["warnings"]
        for f in doc["flows"]:
            c = f["cnitrace"]
            assert f["verdict"] == "FORWARDED", c["hops"]
            assert c["times"] == "measured", doc["warnings"]
            hops = c["hops"]
            timed = [h for h in hops if h["t_ns"] is not None]
            assert timed[0]["where"].endswith(" receive") and timed[-1]["where"].endswith(" transmit")
            assert [h["t_ns"] for h in timed] == sorted(h["t_ns"] for h in timed), [(h["where"], h["t_ns"]) for h in timed]
            assert all(h["time"] == ("measured" if h["t_ns"] else "none") for h in hops)
            assert hops and [h["order"] for h in hops] == sorted(h["order"] for h in hops)
            ref = truth["allowed"][proto]
            assert _matches(hops[c["deciding_hop"]], ref), (c["where"], c["rule"], ref)
            assert c["policy"]["source"] == "lab ground truth" and c["policy"]["kind"] == "NetworkPolicy"
            assert f["ingress_allowed_by"][0]["kind"] == "NetworkPolicy"
            if ref.get("comment"):
                assert ref["comment"] in c["rule"]
    doc = _trace(lab, "tcp", lab.topo.denied_port, 3, tmp_path)
    assert (doc["sent"], doc["traced"]) == (3, 3), doc["warnings"]
    ids = sorted(f["cnitrace"]["ip_id"] for f in doc["flows"])
    assert len(set(ids)) == 3
    for f in doc["flows"]:
        c = f["cnitrace"]
        if truth["denied"] is None:          # flannel: no policy, the "denied" port is forwarded
            assert f["verdict"] == "FORWARDED"
            continue
        assert f["verdict"] == "DROPPED" and f["drop_reason_desc"] == "POLICY_DENIED", c["hops"]
        assert c["times"] == "measured"
        if "-j REJECT" not in c["rule"]:       # a REJECT's skb is not seen by skb:kfree_skb here
            assert c["hops"][-1]["layer"] == "drop"
            assert f["cnitrace_kernel_drop_reason"] == "NETFILTER_DROP"
        assert _matches(c["hops"][c["deciding_hop"]], truth["denied"]), (c["where"], c["rule"])
        assert c["policy"]["kind"] == "default-deny" and c["policy"]["source"] == "lab ground truth"
        assert f["ingress_denied_by"][0]["kind"] == "default-deny"
    assert _residue(lab) == before


@pytest.mark.parametrize("dp,layer", [("cilium", "bpf"), ("antrea", "ovs")])
def test_ovs_and_bpf_datapaths_decide_in_their_layer(lab_factory, tmp_path, dp, layer):
    """No netfilter policy here: the deciding hop is the tc program / OpenFlow flow (the layers'
    own modules), with the lab's ground-truth policy, between the kernel's receive and its end."""
    lab = lab_factory(dp, 3)
    for port, verdict, kind_ok in ((lab.topo.allowed_port, "FORWARDED", lambda k: k != "default-deny"),
                                   (lab.topo.denied_port, "DROPPED", lambda k: k == "default-deny")):
        doc = _trace(lab, "tcp", port, 2, tmp_path)
        assert (doc["sent"], doc["traced"]) == (2, 2), doc["warnings"]
        for f in doc["flows"]:
            c = f["cnitrace"]
            assert f["verdict"] == verdict, c["hops"]
            hop = c["hops"][c["deciding_hop"]]
            assert hop["layer"] == layer, hop
            assert c["policy"]["source"] == "lab ground truth" and kind_ok(c["policy"]["kind"]), c["policy"]
            timed = [h for h in c["hops"] if h["t_ns"] is not None]
            assert c["times"] == "measured" and timed[0]["where"].endswith(" receive")
            assert c["hops"][0]["netns"] == lab.topo.clients[0].netns     # the sending pod's own hook first
            assert [h["order"] for h in c["hops"]] == list(range(1, len(c["hops"]) + 1))


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (Debian package tshark)")
def test_pcap_opens_in_tshark(lab_factory, tmp_path):
    lab = lab_factory("calico", 3, backend="nft")
    pcap = tmp_path / "t.pcapng"
    doc = _trace(lab, "tcp", lab.topo.denied_port, 2, tmp_path, "--pcap", str(pcap))
    out = subprocess.run(["tshark", "-r", str(pcap), "-T", "json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pkts = json.loads(out.stdout)
    assert len(pkts) == doc["traced"] == 2
    for p, f in zip(pkts, doc["flows"]):
        got = json.loads(_comment(p))
        assert got["verdict"] == "DROPPED" and got["cnitrace"]["ip_id"] == f["cnitrace"]["ip_id"]
        assert int(p["_source"]["layers"]["ip"]["ip.id"], 16) == f["cnitrace"]["ip_id"]


def _start_match(lab):
    return subprocess.Popen([*CLI, "trace", "--lab", lab.spec.name, "--match", "tcp port 1", "--window", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_monitor(lab, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _residue(lab)["procs"]:
            return
        time.sleep(0.2)
    raise AssertionError("the trace never started its monitor")


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_no_residue_after_sigint(lab_factory, backend):
    lab = lab_factory("calico", 3, backend=backend)
    before = _residue(lab)
    p = _start_match(lab)
    _wait_monitor(lab)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=30)
    assert p.returncode == 130
    assert _residue(lab) == before


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_no_residue_after_sigkill_and_cleanup(lab_factory, backend):
    lab = lab_factory("calico", 3, backend=backend)
    before = _residue(lab)
    p = _start_match(lab)
    _wait_monitor(lab)
    time.sleep(0.5)
    p.kill()
    p.communicate(timeout=30)
    assert _residue(lab) != before               # it did leave something
    c = _cli("cleanup")
    assert c.returncode == 0, c.stderr
    time.sleep(0.3)
    assert _residue(lab) == before


def _pair(netns):
    """Two namespaces joined by a veth: a (10.99.7.1) -> b (10.99.7.2); b drops udp 9090 in an
    iptables-nft rule carrying a Calico-style rule id."""
    a, b = netns(), netns()
    sh = lambda *argv: subprocess.run(list(argv), check=True, capture_output=True)
    sh("ip", "link", "add", "cnitva", "netns", a, "type", "veth", "peer", "name", "cnitvb", "netns", b)
    for ns, dev, ip in ((a, "cnitva", "10.99.7.1/24"), (b, "cnitvb", "10.99.7.2/24")):
        sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "netns", "exec", b, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "9090", "-m", "comment",
       "--comment", "cali:abcdefghijklmnop", "-j", "DROP")
    return a, b


def test_netns_probe_from_netns(netns, tmp_path):
    a, b = _pair(netns)
    out = tmp_path / "t.json"
    p = _cli("trace", "--netns", b, "--probe", "udp:10.99.7.2:9090", "--from-netns", a, "--count", "2",
             "--json", str(out))
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert (doc["sent"], doc["traced"]) == (2, 2)
    for f in doc["flows"]:
        c = f["cnitrace"]
        assert f["verdict"] == "DROPPED" and c["where"] == "ip filter INPUT"
        assert c["rule"] == '-A INPUT -p udp -m udp --dport 9090 -m comment --comment "cali:abcdefghijklmnop" -j DROP'
        assert c["hops"][c["deciding_hop"]]["detail"]["position"] == 1
        # outside a lab too: the bracket probes time the table the packet died in (on its untraced twin)
        assert c["times"] == "measured"
        assert c["hops"][0]["netns"] == a and "output" in c["hops"][0]["where"]   # the sender's namespace first
        table = [h for h in c["hops"] if h["detail"].get("table") == "filter"]
        assert len(table) == 1 and table[0]["detail"]["dropped"] and table[0]["detail"]["hook"] == "INPUT"
        assert table[0]["detail"]["untraced_ns"] is not None and table[0]["cost_ns"] > 0
    p = _cli("trace", "--netns", b, "--probe", "udp:10.99.7.2:9091", "--from-netns", a, "--json", str(out))
    assert p.returncode == 0, p.stderr
    f = json.loads(out.read_text())["flows"][0]
    assert f["verdict"] == "FORWARDED" and f["cnitrace"]["policy"] is None
    assert subprocess.run(["ip", "netns", "exec", b, "nft", "list", "tables"], capture_output=True,
                          text=True).stdout.split() == ["table", "ip", "filter"]


def test_match_live_packets_at_most_count(netns, tmp_path):
    a, b = _pair(netns)
    out = tmp_path / "m.json"
    proc = subprocess.Popen([*CLI, "trace", "--netns", b, "--match", "udp dst 10.99.7.2 port 9090", "--count", "2",
                             "--window", "20", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ino = os.stat(f"/run/netns/{b}").st_ino
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        if any(_in_ns(p, ino) and b"monitor" in _cmd(p) for p in pids):
            break
        time.sleep(0.1)
    time.sleep(0.7)
    for _ in range(3):
        subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c",
                        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                        "s.sendto(b'x', ('10.99.7.2', 9090))"], check=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    doc = json.loads(out.read_text())
    assert doc["traced"] == 2 and doc["sent"] == 0
    assert all(f["verdict"] == "DROPPED" and f["l4"]["UDP"]["destination_port"] == 9090 for f in doc["flows"])
    for f in doc["flows"]:      # live packets have no twin: their table time is taken while traced, and says so
        assert f["cnitrace"]["times"] == "measured"
        table = [h for h in f["cnitrace"]["hops"] if h["detail"].get("table") == "filter"]
        assert len(table) == 1 and table[0]["detail"]["untraced_ns"] is None and "while traced" in table[0]["what"]
        ct = [h for h in f["cnitrace"]["hops"] if h["layer"] == "conntrack"]
        # no stateful rule in that namespace: conntrack never registered there, and the hop says so
        assert len(ct) == 1 and ct[0]["detail"]["ct"] == "none" and "not tracked" in ct[0]["what"]


def _table_hops(flow):
    return [h for h in flow["cnitrace"]["hops"] if "table" in h["detail"]]


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_table_times_per_hop_grow_with_the_policy(lab_factory, tmp_path, backend):
    """Per-table time on each traced packet (bracket probes): the policy table's time, taken on the
    probe's untraced twin, grows with the rules before the allow rule; the traced packet's own
    table times fit inside its measured time in the node's stack; conntrack is "new" at the table,
    and only an allowed packet leaves an entry."""
    medians = {}
    for n in (3, 1000):
        lab = lab_factory("calico", n, backend=backend)
        doc = _trace(lab, "tcp", lab.topo.allowed_port, 3, tmp_path)
        assert doc["traced"] == 3, doc["warnings"]
        untraced = []
        for f in doc["flows"]:
            c = f["cnitrace"]
            hops = c["hops"]
            assert hops[0]["netns"] == lab.topo.clients[0].netns            # the pod's own output hook first
            tables = _table_hops(f)
            filt = [h for h in tables if h["detail"]["hook"] == "FORWARD" and "filter" in h["detail"]["table"]]
            assert len(filt) == 1 and not filt[0]["detail"]["dropped"], tables
            untraced.append(filt[0]["detail"]["untraced_ns"])
            transmit = hops[-1]
            assert transmit["where"].endswith(" transmit")
            assert sum(h["detail"]["traced_ns"] for h in tables) < transmit["cost_ns"]
            ct = [h for h in hops if h["layer"] == "conntrack"]
            assert len(ct) == 1 and ct[0]["detail"]["ct"] == "new" and ct[0]["detail"]["entry_state"], ct
            timed = [h["t_ns"] for h in hops if h["t_ns"] is not None]
            assert timed == sorted(timed)
        medians[n] = sorted(untraced)[1]
        denied = _trace(lab, "tcp", lab.topo.denied_port, 1, tmp_path)["flows"][0]
        ct = [h for h in denied["cnitrace"]["hops"] if h["layer"] == "conntrack"]
        assert ct and ct[0]["detail"]["entry_state"] is None          # dropped before conntrack confirmed it
        assert [h["detail"]["dropped"] for h in _table_hops(denied) if h["detail"]["hook"] == "FORWARD"] == [True]
    assert medians[1000] > 3 * medians[3], medians


def _in_ns(pid, ino):
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == ino
    except OSError:
        return False


def _cmd(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return b""
