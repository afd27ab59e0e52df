"""The snapshot job without root: registry, JSON round trip, --since deltas, interval mode, OVS via recordings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnitrace.collectors import registry
from cnitrace.collectors.ovs.parse import OfFlow
from cnitrace.collectors.ovs.source import OPENFLOW_VERSIONS, OvsCollector, OvsTarget
from cnitrace.core.errors import UsageError
from cnitrace.core.runner import RecordedRunner

FIX = Path(__file__).parent.parent / "fixtures"


def body(*parts: str) -> str:
    return (FIX.joinpath(*parts)).read_text().split("\n", 1)[1]


def conntrack_runner(invalid: int) -> RecordedRunner:
    stat = body("conntrack", "host-proc-stat.txt").replace("0000001e", f"{invalid:08x}")
    return RecordedRunner({
        ("cat", "/proc/net/stat/nf_conntrack"): stat,
        ("cat", "/proc/sys/net/netfilter/nf_conntrack_count"): "20\n",
        ("cat", "/proc/sys/net/netfilter/nf_conntrack_max"): "262144\n",
    }, tools=["cat"])


class FakeSession:
    pass


def test_unknown_collector_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown collector 'pf'"):
        registry.build(["pf"])


def test_every_registered_collector_constructs():
    built = registry.build(None, registry.Context(runner=RecordedRunner({}, tools=[])))
    assert [c.name for c in built] == list(registry.NAMES)


def test_document_roundtrip_and_since_deltas(tmp_path):
    ctx = registry.Context(runner=conntrack_runner(30))
    first = registry.run(registry.Request(collectors=("conntrack",)), ctx, FakeSession())
    saved = tmp_path / "s.json"
    saved.write_text(json.dumps(first.document))
    back = registry.load_document(str(saved))
    assert set(back) == {"conntrack"}
    assert len(back["conntrack"].records) == 3  # 2 CPUs + table usage
    ctx2 = registry.Context(runner=conntrack_runner(30 + 14))
    second = registry.run(registry.Request(collectors=("conntrack",), since=str(saved)), ctx2, FakeSession())
    d = second.deltas["conntrack"]
    assert d.get(("cpu", "", 1, "procfs"), "invalid") == 14
    assert d.get(("cpu", "", 0, "procfs"), "invalid") == 0
    changes = second.document["collectors"]["conntrack"]["changes"]
    assert changes == [{"key": ["cpu", "", 1, "procfs"], "delta": {k: (14 if k == "invalid" else 0)
                                                                     for k in changes[0]["delta"]}}]


def test_interval_mode_diffs_two_snapshots():
    runner = conntrack_runner(30)
    reads = []
    stat_argv = ("cat", "/proc/net/stat/nf_conntrack")

    def stat():  # each take() reads it twice (available + snapshot); the second take sees +1 invalid
        reads.append(1)
        return conntrack_runner(30 + (len(reads) - 1) // 2).responses[stat_argv]

    runner.responses[stat_argv] = stat
    slept = []
    res = registry.run(registry.Request(collectors=("conntrack",), interval_s=2.5),
                       registry.Context(runner=runner), FakeSession(), sleep=slept.append)
    assert slept == [2.5] and len(reads) == 4
    assert res.deltas["conntrack"].get(("cpu", "", 1, "procfs"), "invalid") == 1


@pytest.mark.parametrize("content,msg", [("{", "is not JSON"), ('{"format": "x"}', "not a cnitrace snapshot"),
                                         ('{"format": "cnitrace-snapshot/1", "collectors": {"c": {"available": true, '
                                          '"records": [{"key": 1}]}}}', "malformed snapshot")])
def test_bad_saved_documents_are_usage_errors(tmp_path, content, msg):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(UsageError, match=msg):
        registry.load_document(str(f))


def test_ovs_collector_from_recorded_commands(tmp_path):
    ctl = tmp_path / "vswitchd.ctl"
    ctl.touch()
    (tmp_path / "db.sock").touch()
    t = OvsTarget(rundir=str(tmp_path), ctl=str(ctl))
    db = f"--db=unix:{tmp_path}/db.sock"
    app = ("ovs-appctl", "-t", str(ctl), "--timeout=5")
    br = f"unix:{tmp_path}/cnitbr.mgmt"
    runner = RecordedRunner({
        ("ovs-vsctl", db, "--timeout=5", "list-br"): "cnitbr\n",
        (*app, "revalidator/wait"): "",
        ("ovs-ofctl", "-O", OPENFLOW_VERSIONS, "--no-names", "dump-flows", br): body("ovs", "host-dump-flows.txt"),
        ("ovs-ofctl", "-O", OPENFLOW_VERSIONS, "--no-names", "dump-tables", br): body("ovs", "host-dump-tables.txt"),
        ("ovs-ofctl", "-O", OPENFLOW_VERSIONS, "--no-names", "dump-table-features", br):
            body("ovs", "host-dump-table-features.txt"),
        (*app, "dpctl/show"): body("ovs", "host-dpctl-show.txt"),
        (*app, "dpif/show"): body("ovs", "host-dpif-show.txt"),
        (*app, "dpctl/dump-flows", "netdev@ovs-netdev"): body("ovs", "host-dpctl-dump-flows.txt"),
        (*app, "upcall/show"): body("ovs", "host-upcall-show.txt"),
        (*app, "coverage/show"): body("ovs", "host-coverage-show.txt"),
        ("ovs-vsctl", db, "--timeout=5", "--format=json", "--columns=name,ofport,type,external_ids", "list",
         "Interface"): body("ovs", "host-vsctl-interface.json"),
    })
    col = OvsCollector(t, runner, resolve_peers=False)
    assert col.available()
    snap = col.snapshot()
    assert snap.warnings == ()
    assert len([r for r in snap.records if isinstance(r, OfFlow)]) == 6
    assert snap.meta["table_names"] == {"cnitbr": {"0": "Classifier", "10": "Forward"}}
    assert snap.meta["masks"] == {"netdev@ovs-netdev": 2}
    doc = registry.to_document([registry.Entry("ovs", col.available(), snap)])
    again = registry.from_document(json.loads(json.dumps(doc)))["ovs"]
    assert {r.key for r in again.records} == {tuple(registry._jsonable(r.key)) for r in snap.records}
