"""OVS, BPF, conntrack and CNI-agent dumps summarised; the CNI read from dumps of one node."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnitrace.analyze import costs
from cnitrace.analyze.analysis import analyze
from cnitrace.analyze.dumps import read_text
from cnitrace.analyze.ovs import next_tables

FIX = Path(__file__).parent.parent / "fixtures"
MODEL = costs.reference_model()


def doc_of(*names: str) -> dict:
    items = []
    for n in names:
        items += read_text((FIX / n).read_text(encoding="utf-8"), n)
    return analyze(items, MODEL).doc


@pytest.mark.parametrize("actions,tables", [
    ("resubmit(,10)", ["10"]),
    ("ct(table=30,zone=65520),resubmit(,20),goto_table:IngressRule", ["30", "20", "IngressRule"]),
    ("resubmit(5,31)", ["31"]), ("output:2", []), ("NORMAL", []),
])
def test_next_tables(actions, tables):
    assert next_tables(actions) == tables


def test_ovs_tables_flows_priorities_and_pipeline():
    doc = doc_of("ovs/host-dump-flows.txt")
    (f,) = doc["ovs"]["flows"]
    t0, t10 = f["tables"]
    assert (t0["table"], t0["flows"], t0["next"], t0["packets"]) == ("0", 2, ["10"], 11)
    assert t10["priorities"] == {"distinct": 3, "min": 0, "max": 100} and t10["table_miss"]
    assert f["pipeline"] == ["0", "10"] and t10["provenance"] == "counters"
    assert doc["structure"]["ovs"]["flows"] == 6


def test_ovs_flows_without_stats_say_no_stats_never_zero():
    doc = doc_of("ovs/host-dump-flows-no-stats.txt")
    for t in doc["ovs"]["flows"][0]["tables"]:
        assert t["packets"] is None and t["stats"] == "no stats" and t["provenance"] is None


def test_antrea_pipeline_by_table_names():
    doc = doc_of("ovs/antrea-pipeline-doc-flows.txt")
    f = doc["ovs"]["flows"][0]
    assert len(f["tables"]) > 5 and len(f["pipeline"]) > 3


def test_megaflows_and_datapath():
    doc = doc_of("ovs/host-dpctl-dump-flows-m.txt", "ovs/host-dpctl-show-ports.txt")
    (m,) = doc["ovs"]["megaflows"]
    assert m["megaflows"] == 3 and m["packets"] == 8 and m["masks"] >= 2
    (dp,) = doc["ovs"]["datapaths"]
    assert (dp["hit"], dp["missed"]) == (13, 4) and "cnit-h2-v1h" in dp["ports"]


def test_bpf_programs_per_hook_with_ns_per_run_where_measured():
    doc = doc_of("bpf/host-prog-show.txt", "bpf/host-net-show.txt", "bpf/host-map-show.txt")
    b = doc["bpf"]
    timed = [a for a in b["attachments"] if a.get("ns_per_run") is not None]
    assert timed and all(a["ns_per_run"] == pytest.approx(a["run_time_ns"] / a["run_cnt"], abs=0.1) for a in timed)
    assert all(a["provenance"].startswith("measured") for a in timed)
    assert set(b["by_hook"]) <= {"tc ingress", "tc egress", "xdp generic", "xdp driver", "xdp offload"}


def test_bpf_programs_without_stats_are_not_zero_ns():
    doc = doc_of("bpf/host-prog-show-id.json")
    (p,) = doc["bpf"]["programs"]
    assert p["ns_per_run"] is None and p["stats"].startswith("no stats")


def test_conntrack_totals_and_unnamed_fields():
    doc = doc_of("conntrack/host-conntrack-S-null.txt", "conntrack/host-conntrack-L.txt")
    s = doc["conntrack"]["stats"]
    assert s["cpus"] == 2 and s["totals"]["invalid"] == 14 and s["provenance"] == "counters"
    assert s["unnamed"] and "(null)" in s["unnamed_note"]
    lst = doc["conntrack"]["list"]
    assert lst["entries"] == 6 and lst["by_proto"] == {"icmp": 1, "tcp": 3, "udp": 2}


def test_cni_agents_dumps_are_evidence_of_their_cni():
    cil = doc_of("cilium/cilium-7958-bpf-policy-get.txt", "cilium/cilium-10059-status.txt")
    assert [c["cni"] for c in cil["cni"]] == ["cilium"]
    assert cil["cilium"]["policy"]["entries"] == 7 and cil["cilium"]["policy"]["packets"] == 43
    assert cil["cilium"]["status"]["kube_proxy_replacement"] == "Strict"
    assert cil["kube_proxy"]["mode"].startswith("cilium")
    cal = doc_of("calico/tigera-docs-counters-dump.txt", "calico/tigera-docs-policy-dump.txt")
    assert [c["cni"] for c in cal["cni"]] == ["calico"]
    assert cal["calico"]["counters"]["interfaces"] == 1 and cal["calico"]["policy"]["rules"] >= 1


def test_cni_from_interfaces_and_tc_programs():
    doc = doc_of("detect/cilium_bpftool_net.txt")
    assert [c["cni"] for c in doc["cni"]] == ["cilium"]
    assert doc["kube_proxy"]["mode"] == "unknown"     # no ruleset among the dumps: not "none"


def test_ipsets():
    doc = doc_of("ipset/local_ipset_save.txt")
    assert doc["structure"]["ipsets"]["sets"] == 8
    assert {s["name"]: s["entries"] for s in doc["ipsets"]}["KUBE-CLUSTER-IP"] == 4


@pytest.mark.parametrize("name,cni,evidence", [
    # Antrea without a bridge name: its named tables and zone 65520, or its own `antctl get of`
    ("ovs/antrea-4475_named_tables_no_prompt.txt", "antrea", "named tables"),
    ("ovs/antrea-645_antctl_get_of_np.txt", "antrea", "antctl output"),
    # a partial `iptables -L` that names cilium's chains only as jump targets
    ("iptables/cilium-4825_L_jump_targets.txt", "cilium", "chain CILIUM_INPUT"),
    # weave-npc's ipsets alone
    ("ipset/weave-3289_list_set_comments.txt", "weave", "ipset weave-"),
])
def test_the_cni_from_partial_real_pastes(name, cni, evidence):
    found = {c["cni"]: c for c in doc_of(name)["cni"]}
    assert cni in found and any(evidence in e for e in found[cni]["evidence"]), found


@pytest.mark.parametrize("name,mode,why", [
    ("ipset/sealos-2108_list_prompt.txt", "ipvs", "ipset KUBE-CLUSTER-IP"),                 # IPVS's ipset alone
    ("iptables/submariner-subctl-1205_c_partial_sep.save", "iptables", "KUBE-SEP-"),      # no KUBE-SERVICES in it
    ("iptables/kubeproxy_kubernetes-75893.save", "iptables", "chain KUBE-SERVICES"),
])
def test_kube_proxy_mode_from_real_pastes(name, mode, why):
    kp = doc_of(name)["kube_proxy"]
    assert kp["mode"] == mode and why in kp["reason"], kp


def test_ipvs_mode_from_its_set_matches_in_the_rules():
    """kube-proxy's IPVS mode has KUBE-SERVICES too; its rules match KUBE-CLUSTER-IP (real rule form)."""
    text = ("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n"
            "-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment \"Kubernetes service cluster ip + port "
            "for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ\n"
            "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\nCOMMIT\n")
    d = analyze(read_text(text, "ipvs.save"), MODEL).doc
    assert d["kube_proxy"]["mode"] == "ipvs", d["kube_proxy"]


def doc_of_text(text: str, name: str = "paste.txt") -> dict:
    return analyze(read_text(text, name), MODEL).doc


# lines as real nodes print them (Calico eBPF on vxlan.calico, Cilium on a netdev, a redacted prompt)
CALICO_TC = ("$ tc filter show dev vxlan.calico ingress\nfilter protocol all pref 49152 bpf chain 0\n"
             "filter protocol all pref 49152 bpf chain 0 handle 0x1 calico_from_hos:[417] direct-action not_in_hw "
             "id 417 tag c53675a0f3db3f12 jited\n")
CILIUM_TC = ("tc filter show dev eth1 ingress\nfilter protocol all pref 1 bpf chain 0\nfilter protocol all pref 1 "
             "bpf chain 0 handle 0x1 cil_from_netdev-eth1 direct-action not_in_hw id 3640 tag e1f4a3d35ae9c0f0 jited\n")
REDACTED = ("root@<>:/home/cilium# tc filter show dev lxcb187183beddd ingress\nfilter protocol all pref 1 bpf chain 0\n"
            "filter protocol all pref 1 bpf chain 0 handle 0x1 bpf_lxc.o:[from-container] direct-action not_in_hw "
            "id 4481 tag 18a10b547e2fa35f jited\n")


@pytest.mark.parametrize("text,cni", [(CALICO_TC, "calico"), (CILIUM_TC, "cilium"), (REDACTED, "cilium")])
def test_the_cni_from_tc_program_names_as_tc_prints_them(text, cni):
    """`calico_from_hos:[417]` (newer tc appends the id) and `cil_from_netdev-eth1` were not matched."""
    d = doc_of_text(text)
    assert cni in {c["cni"] for c in d["cni"]}, d["cni"]


def test_a_redacted_host_prompt_still_names_the_device_and_hook():
    [a] = doc_of_text(REDACTED)["bpf"]["attachments"]
    assert (a["target"], a["hook"]) == ("lxcb187183beddd", "ingress"), a


def test_maps_listed_after_programs_are_maps():
    """`bpftool prog show` then `bpftool map show` pasted without a prompt between them: the map's
    header has the program's shape and was counted as a program of type percpu_hash."""
    text = ("1998: sched_cls  name cil_from_container  tag 41989045bb171bee  gpl\n"
            "\tloaded_at 2025-07-19T16:42:31+0000  uid 0\n\txlated 752B  jited 784B  memlock 4096B  map_ids 312,313,35\n"
            "\tbtf_id 667\n\n35: percpu_hash  name cilium_metrics  flags 0x1\n"
            "\tkey 8B  value 16B  max_entries 1024  memlock 19024B\n")
    b = doc_of_text(text)["bpf"]
    assert len(b["programs"]) == 1 and [m["type"] for m in b["maps"]] == ["percpu_hash"], b


def test_kube_proxy_from_an_interface_list_is_ipvs_or_unknown():
    """An interface list shows IPVS (kube-ipvs0, also in `ip addr`'s address lines when the paste
    starts below its header, weave#3327) but cannot show iptables or nftables mode."""
    addr = ("    inet 10.0.232.115/32 brd 10.0.232.115 scope global kube-ipvs0\n"
            "       valid_lft forever preferred_lft forever\n"
            "4: datapath: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1376 qdisc noqueue state UNKNOWN group default\n")
    assert doc_of_text(addr)["kube_proxy"]["mode"] == "ipvs"
    links = "3: flannel.1: <BROADCAST,MULTICAST> mtu 1450 qdisc noqueue state DOWN\n    link/ether 92:7f:1d:28:02:42\n"
    kp = doc_of_text(links)["kube_proxy"]
    assert kp["mode"] == "unknown", kp


def test_flannel_nftables_mode_table():
    text = ("table ip flannel-ipv4 {\n\tcomment \"rules for flannel-ipv4\"\n\tchain forward {\n"
            "\t\tcomment \"chain to accept flannel traffic\"\n"
            "\t\ttype filter hook forward priority filter; policy accept;\n\t\tip saddr 10.244.0.0/16 accept\n\t}\n}\n")
    assert "flannel" in {c["cni"] for c in doc_of_text(text)["cni"]}


FLOWER = ("filter protocol ip pref 1 flower chain 0\nfilter protocol ip pref 1 flower chain 0 handle 0x2 hw_tc 1\n"
          "  eth_type ipv4\n  ip_proto tcp\n  dst_ip 10.244.88.138\n  dst_port 6379\n  in_hw in_hw_count 1\n")


def test_a_flower_filter_beside_the_bpf_program_is_kept_and_diffed():
    """Intel's ADQ guide pastes `tc filter show dev vxlan.calico ingress` with a flower filter before
    Calico's program, then without it: the filter vanished from analyze, and diff said nothing."""
    from cnitrace.analyze.diff import diff
    head, rest = CALICO_TC.split("\n", 1)
    before = analyze(read_text(head + "\n" + FLOWER + rest, "before.txt"), MODEL)
    after = analyze(read_text(CALICO_TC, "after.txt"), MODEL)
    rows = before.doc["bpf"]["attachments"]
    assert {(r.get("filter"), r["prog_id"]) for r in rows} == {("flower", None), (None, 417)}, rows
    d = diff(before, after)
    assert d["bpf"] == [{"kind": "tc", "hook": "ingress", "target": "vxlan.calico", "change": "removed",
                         "what": "flower filter pref 1 handle 0x2"}], d["bpf"]
    assert diff(after, after)["bpf"] == []


# `bpftool -jp net` as the bpftool-net man page printed it for 4.19 (`tc_filters`, `prog_id`, tc
# devices by ifindex) and as it prints it now, with the page's trailing commas (not JSON)
OLD_NET_JSON = ('[{"xdp": [{"ifindex": 2, "devname": "eth0", "prog_id": 198}], "tc_filters": [{"ifindex": 2, '
                '"kind": "qdisc_clsact_ingress", "name": "fbflow_icmp", "prog_id": 130246, '
                '"tag": "3f265c7f26db62c9", "act": []}]}]\n')
BAD_NET_JSON = ('[{\n "xdp": [],\n "tc": [{\n  "devname": "eth0",\n  "ifindex": 2,\n  "kind": "clsact/egress",\n'
                '  "name": "fbflow_egress",\n  "id": 130245,\n }\n ]\n}\n]\n')


def test_bpftool_net_json_of_the_old_schema_is_read():
    rows = doc_of_text(OLD_NET_JSON)["bpf"]["attachments"]
    assert {(r["kind"], r["hook"], r["target"], r["prog_id"]) for r in rows} == {
        ("xdp", "xdp", "eth0", 198), ("tc", "ingress", "eth0", 130246)}, rows


def test_json_that_does_not_load_is_a_skipped_section_not_zero_programs():
    [s] = read_text(BAD_NET_JSON, "net.json")
    assert not hasattr(s, "data") and "not JSON" in s.reason, s


def test_kube_proxy_ipvs_from_its_ipv6_sets():
    text = ("Name: KUBE-6-CLUSTER-IP\nType: hash:ip,port\nRevision: 5\nHeader: family inet6 hashsize 1024 "
            "maxelem 65536\nSize in memory: 216\nReferences: 0\nNumber of entries: 0\nMembers:\n")
    assert doc_of_text(text)["kube_proxy"]["mode"] == "ipvs"


def test_ovs_vsctl_show_reports_its_bridges_and_ports():
    text = ("    Bridge breth0\n        fail_mode: standalone\n        Port breth0\n            Interface breth0\n"
            "                type: internal\n        Port eth0\n            Interface eth0\n    ovs_version: \"2.15.0\"\n")
    assert doc_of_text(text)["structure"]["ovs_bridges"] == {"bridges": 1, "ports": 2}


def test_diff_of_conntrack_dumps_reports_conntrack():
    """Two `conntrack -L` greps (aks-engine#1912): diff said "netfilter static cost unchanged" and
    nothing about the entries."""
    from cnitrace.analyze.diff import diff
    line = ("tcp      6 {t} ESTABLISHED src=10.244.2.6 dst=10.0.223.224 sport={p} dport=27017 src=10.244.1.7 "
            "dst=10.244.2.6 sport=27017 dport={p} [ASSURED] mark=0 use=1\n")
    before = analyze(read_text("".join(line.format(t=299 - i, p=34659 + i) for i in range(3)), "b.txt"), MODEL)
    after = analyze(read_text("".join(line.format(t=290 - i, p=34659 + i) for i in range(2)), "a.txt"), MODEL)
    d = diff(before, after)
    assert d["conntrack"] == [{"what": "entries (conntrack -L)", "before": 3, "after": 2, "delta": -1}]
    assert d["netfilter"] is False
