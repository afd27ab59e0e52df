"""Two lab nodes, one with many more policy rules (root, real kernel): their profiles merged by
`cnitrace merge`, and two `cnitrace agent`s read by the kubectl plugin's collection code through
its direct-URL fetcher; both name the heavier node with its policy chain. Each lab is a node: its
own node namespace with its own netfilter rules. Zero residue."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from cnitrace import cli
from cnitrace.cluster import plugin
from cnitrace.cluster.collect import UrlFetcher, collect
from cnitrace.cluster.merge import merge
from cnitrace.lab import manager
from cnitrace.reports.cluster.document import validate as validate_cluster
from cnitrace.traffic import generators as traffic
from tests.support.agentproc import AgentProc

pytestmark = pytest.mark.requires("nf_bpf", "tp_btf", "btf", "bcc", "iptables")

LIGHT, HEAVY = 0, 1000


def node_of(lab) -> str:
    return f"{socket.gethostname()}/{lab.spec.name}"


def check_named(doc: dict, light, heavy) -> dict:
    """The heavy node is named first, at its policy chain, above the light node's figure; the light
    node is never named."""
    assert validate_cluster(doc) == []
    named = [o for o in doc["outliers"] if o["kind"] != "conntrack"]
    assert named, doc["headline"]
    top = named[0]
    policy = heavy.truth.allowed["tcp"].chain
    assert top["node"] == node_of(heavy), [o["text"] for o in named]
    assert top["kind"] == "chain" and top["name"] == policy, [o["text"] for o in named]
    assert top["ns_per_packet"] > top["median_ns"]
    assert top["ratio"] is None or top["ratio"] > 1
    assert top["extra_evaluations"] > 0
    assert not any(o["node"] == node_of(light) for o in named), [o["text"] for o in named]
    assert doc["headline"].startswith(f"node {node_of(heavy)}: chain {policy} (")
    return top


def test_merge_names_the_node_with_more_rules(lab_factory, node_before_after, tmp_path, capsys):
    light, heavy = lab_factory("calico", LIGHT), lab_factory("calico", HEAVY)
    files = []
    for lab in (light, heavy):
        out = tmp_path / f"{lab.spec.name}.json"
        assert cli.main(["profile", "--lab", lab.spec.name, "--traffic", "probe", "--duration", "1",
                         "--json", str(out)]) == 0
        files.append(str(out))
    capsys.readouterr()
    merged, html = tmp_path / "cluster.json", tmp_path / "cluster.html"
    assert cli.main(["merge", *files, "--json", str(merged), "--html", str(html)]) == 0
    shown = capsys.readouterr().out
    doc = json.loads(merged.read_text())
    top = check_named(doc, light, heavy)
    assert top["text"].split(" (")[0] in shown
    # what each node measured stays as measured: the lab profiles time the filter table with probes
    table = next(f for f in doc["figures"] if f["kind"] == "table" and f["key"][2].startswith("filter"))
    assert {v["provenance"] for v in table["nodes"].values()} <= {"measured", "both"}
    # each node's rules, counted from its chains: a calico policy rule is two iptables rules (MARK, RETURN)
    counts = [n["rules"]["count"] for n in doc["nodes"]]
    assert {n["rules"]["source"] for n in doc["nodes"]} == {"chain rule counts"}
    assert counts[1] - counts[0] == 2 * (HEAVY - LIGHT), counts
    assert top["node"] in html.read_text()
    for lab in (light, heavy):
        manager.down(lab.spec.name)
    node_before_after()


# --- two agents, read by the plugin's collection code --------------------------------------------

class Probes(threading.Thread):
    """Crafted probes into each lab, round after round, until stopped: every agent window has
    traffic whatever its phase. Bounded in rounds and time."""

    def __init__(self, labs, rounds: int = 200, seconds: float = 240):
        super().__init__(daemon=True)
        self.labs, self.rounds, self.seconds = labs, rounds, seconds
        self.halt = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        end = time.monotonic() + self.seconds
        try:
            for _ in range(self.rounds):
                if self.halt.is_set() or time.monotonic() > end:
                    return
                for lab in self.labs:
                    self.sent += traffic.crafted_probes(lab.topo, count_per_port=2).packets_sent
                self.halt.wait(0.2)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=120)


def test_plugin_collects_two_agents_and_names_the_outlier(lab_factory, node_before_after, tmp_path, capsys):
    light, heavy = lab_factory("calico", LIGHT), lab_factory("calico", HEAVY)
    window = 4.0
    agents = [AgentProc(lab.spec.name, tmp_path, "--window", f"{window:g}", "--windows", "60") for lab in (light, heavy)]
    probes = Probes((light, heavy))
    try:
        for a in agents:
            a.wait_ready()
        probes.start()
        # two full windows after the traffic started, so the served window had traffic throughout
        start = [a.windows() for a in agents]
        end = time.monotonic() + 20 * window + 60
        while time.monotonic() < end and any(a.windows() < s + 2 for a, s in zip(agents, start)):
            assert all(a.proc.poll() is None for a in agents), "\n".join(a.log() for a in agents)
            assert probes.error is None, probes.error
            time.sleep(0.2)
        assert all(a.windows() >= s + 2 for a, s in zip(agents, start)), "\n".join(a.log() for a in agents)

        # The plugin's collection code, with the direct-URL fetcher instead of kubectl.
        docs, warnings = collect(UrlFetcher([a.url for a in agents]))
        assert warnings == [] and len(docs) == 2
        assert all(d["agent"]["windows_total"] >= 2 and d["traffic"]["kind"] == "none" for _, _, d in docs)
        check_named(merge(docs), light, heavy)

        # ... and the plugin's command end to end.
        out = tmp_path / "cluster.json"
        assert plugin.main(["report", "--all-nodes", "--endpoints", ",".join(a.url for a in agents),
                            "--json", str(out)]) == 0
        doc = json.loads(out.read_text())
        top = check_named(doc, light, heavy)
        assert f"node {node_of(heavy)}: chain {top['name']}" in capsys.readouterr().out
        assert [n["source"] for n in doc["nodes"]] == [a.url for a in agents]
        assert all(n["agent"] is not None for n in doc["nodes"])
    finally:
        probes.stop()
        codes = [a.stop() if a.proc.poll() is None else a.proc.returncode for a in agents]
        for a in agents:
            a.kill()
    assert probes.error is None and probes.sent > 0
    assert codes == [0, 0]
    for lab in (light, heavy):
        manager.down(lab.spec.name)
    node_before_after()
