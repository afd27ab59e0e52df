"""`cnitrace snapshot` end to end: --iface globs resolve veth peers and namespaces, --since gives
exact deltas, a glob that matches nothing exits 2 with one line listing what exists."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from tests.host.test_collect_conntrack import SEND, _track_new


def cnitrace(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnitrace", *args], capture_output=True, text=True,
                          timeout=timeout)


def _pod(netns: str) -> str:
    """A host-side veth cnit<hex> whose peer eth0 sits in `netns`; returns the host name."""
    host = f"cnit{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", netns],
                   check=True, timeout=30)
    return host


def test_iface_glob_resolves_peer_and_netns_and_since_gives_deltas(netns, tmp_path):
    ns = netns()
    host = _pod(ns)
    try:
        _track_new(ns)
        first = cnitrace("snapshot", "--iface", host[:-2] + "*", "--only", "conntrack", "--json")
        assert first.returncode == 0, first.stderr
        doc = json.loads(first.stdout)
        sel = doc["selection"]
        assert {(i["netns"], i["name"]) for i in sel["interfaces"]} == {("", host), (ns, "eth0")}
        assert sel["netns"] == ["", ns]
        saved = tmp_path / "before.json"
        saved.write_text(first.stdout)
        bad = 9
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SEND, str(bad), "0"], check=True,
                       timeout=30)
        second = cnitrace("snapshot", "--iface", host, "--only", "conntrack", "--since", str(saved), "--json")
        assert second.returncode == 0, second.stderr
        changes = json.loads(second.stdout)["collectors"]["conntrack"]["changes"]
        per_source = {}
        for c in changes:
            kind, cns, _cpu, source = c["key"]
            if cns == ns:
                per_source[source] = per_source.get(source, 0) + c["delta"].get("invalid", 0)
        assert per_source == {"procfs": 2 * bad, "conntrack -S": 2 * bad}
        text = cnitrace("snapshot", "--iface", host, "--only", "conntrack", "--since", str(saved))
        assert text.returncode == 0 and "conntrack: changes over" in text.stdout
    finally:
        subprocess.run(["ip", "link", "del", host], check=False, timeout=30)


def test_glob_matching_nothing_is_a_usage_error():
    r = cnitrace("snapshot", "--iface", "cnitnomatch*")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cnitrace: --iface 'cnitnomatch*' matches no interface; interfaces here: ")
    assert "lo" in lines[0]


def test_bad_since_file_is_one_line(tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    r = cnitrace("snapshot", "--only", "conntrack", "--since", str(junk))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "is not JSON" in r.stderr
    r = cnitrace("snapshot", "--iface", "bad glob")
    assert r.returncode == 2 and "invalid --iface" in r.stderr and "Traceback" not in r.stderr


def test_snapshot_of_a_private_ovs_since_saved(tmp_path):
    """`--ovs-rundir` reaches a private OVS; --since gives the exact per-flow delta."""
    from cnitrace.core.session import Session
    from tests.host.test_collect_ovs import PrivateOvs, _wire, send_udp

    with Session() as s:
        ovs = PrivateOvs(s).start()
        _wire(ovs)
        first = cnitrace("snapshot", "--only", "ovs", "--ovs-rundir", ovs.rundir, "--json")
        assert first.returncode == 0, first.stderr
        saved = tmp_path / "ovs.json"
        saved.write_text(first.stdout)
        assert json.loads(first.stdout)["collectors"]["ovs"]["available"] is True
        send_udp(ovs.pods[1], "10.99.0.2", 9999, 13)
        second = cnitrace("snapshot", "--only", "ovs", "--ovs-rundir", ovs.rundir, "--since", str(saved), "--json")
        assert second.returncode == 0, second.stderr
        changes = {tuple(c["key"]): c["delta"] for c in json.loads(second.stdout)["collectors"]["ovs"]["changes"]}
        assert changes[("flow", ovs.bridge, "0", 20, "udp,in_port=1,tp_dst=9999")] == {"packets": 13, "bytes": 13 * 52}
        assert changes[("flow", ovs.bridge, "10", 100, "udp,nw_dst=10.99.0.2")] == {"packets": 13, "bytes": 13 * 52}
        text = cnitrace("snapshot", "--only", "ovs", "--ovs-rundir", ovs.rundir, "--since", str(saved))
        assert text.returncode == 0 and "udp,in_port=1,tp_dst=9999" in text.stdout
