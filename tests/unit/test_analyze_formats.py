"""Format detection from content on real captured output, the parser registry, and garbage."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rich.console import Console

from cnitrace.analyze import costs
from cnitrace.analyze.analysis import analyze
from cnitrace.analyze.dumps import Dump, Skipped, read_text
from cnitrace.analyze.formats import FORMATS, MIN_CONFIDENCE, PARSERS, command_hints, detect, hinted_formats
from cnitrace.analyze.sections import split_sections

from cnitrace.reports.analyze.terminal import render_analysis

FIX = Path(__file__).parent.parent / "fixtures"
MODEL = costs.reference_model()

# fixture -> the format of its (last) output; every file carries its `# provenance:` line
CASES = {
    "iptables/local_legacy_v4_c.save": "iptables-save",
    "iptables/local_legacy_v4_noc.save": "iptables-save",
    "iptables/local_nft_v6.save": "iptables-save",
    "iptables/local_legacy_v4_S.txt": "iptables-save",
    "iptables/kubeproxy_kubernetes-75893.save": "iptables-save",
    "iptables/kubernetes-72370_prompt_fence_noc.save": "iptables-save",
    "iptables/local_legacy_v4_L_n_v.txt": "iptables-list",
    "iptables/kilo-247_L.txt": "iptables-list",
    "iptables/qifangsu-demo_nat_L_n_v.txt": "iptables-list",
    "nftables/kubeproxy_nftables_mode.json": "nft-json",
    "nftables/lab_nft_rules1000.json": "nft-json",
    "nftables/kubeproxy_nftables_mode.nft": "nft-text",
    "detect/calico_flannel_nft_ruleset.txt": "nft-text",
    "ipset/local_ipset_save.txt": "ipset",
    "ipset/local_ipset_list.txt": "ipset",
    "ovs/host-dump-flows.txt": "ovs-flows",
    "ovs/host-dump-flows-no-stats.txt": "ovs-flows",
    "ovs/antrea-antctl-get-of.txt": "ovs-flows",
    "ovs/host-dpctl-dump-flows-m.txt": "ovs-dpctl-flows",
    "ovs/host-dpctl-show.txt": "ovs-dpctl-show",
    "ovs/host-dpctl-show-s.txt": "ovs-dpctl-show",
    "ovs/host-dpif-show.txt": "ovs-dpif-show",
    "conntrack/host-conntrack-S.txt": "conntrack-stats",
    "conntrack/host-conntrack-S-null.txt": "conntrack-stats",
    "conntrack/vyos-1x-1489-conntrack-statistics.txt": "conntrack-stats",
    "conntrack/host-conntrack-L.txt": "conntrack-list",
    "conntrack/host-conntrack-L-extended.txt": "conntrack-list",
    "bpf/host-prog-show-id.json": "bpftool-prog-json",
    "bpf/host-net-show.json": "bpftool-net-json",
    "bpf/host-map-show.json": "bpftool-map-json",
    "bpf/host-prog-show.txt": "bpftool-prog-text",
    "bpf/host-net-show.txt": "bpftool-net-text",
    "bpf/host-map-show.txt": "bpftool-map-text",
    "detect/cilium_bpftool_net.txt": "bpftool-net-text",
    "bpf/host-tc-filter-show.json": "tc-filter-json",
    "bpf/host-tc-filter-ingress.txt": "tc-filter-text",
    "cilium/cilium-10059-status.txt": "cilium-status",
    "cilium/cilium-cli-979-status.txt": "cilium-status",
    "cilium/cilium-25984-status-ci-log.txt": "cilium-status",
    "cilium/cilium-7958-bpf-policy-get.txt": "cilium-policy-text",
    "calico/tigera-docs-counters-dump.txt": "calico-counters",
    "calico/tigera-docs-policy-dump.txt": "calico-policy",
    "detect/calico_ip_link.txt": "ip-link",
    "detect/antrea_ovs_vsctl_show.txt": "ovs-vsctl-show",
}


def text_of(name: str) -> str:
    body = (FIX / name).read_text(encoding="utf-8")
    assert body.startswith("# provenance:"), f"{name} lacks its provenance line"
    return body


@pytest.mark.parametrize("name,fmt", sorted(CASES.items()))
def test_real_output_is_detected_from_its_content(name, fmt):
    sections = split_sections(text_of(name))
    got = detect(sections[-1].text, sections[-1].command)
    assert got.format == fmt, got
    assert MIN_CONFIDENCE <= got.confidence <= 1.0 and got.reason


@pytest.mark.parametrize("name,fmt", sorted(CASES.items()))
def test_detection_needs_no_file_name_or_prompt(name, fmt):
    """The same text without its prompt (and under any name) is still recognised."""
    sections = split_sections(text_of(name))
    assert detect(sections[-1].text).format == fmt


def test_confidence_says_how_clean_the_text_is():
    clean = detect(text_of("iptables/local_legacy_v4_c.save").split("\n", 1)[1])
    fragment = detect(text_of("iptables/local_legacy_v4_grep.txt").split("\n", 1)[1])
    assert clean.format == fragment.format == "iptables-save"
    assert clean.confidence == 1.0 > fragment.confidence      # a grep has no *table header
    assert "without a *table header" in fragment.reason


def test_the_prompt_is_a_hint_not_a_verdict():
    flows = text_of("ovs/host-dump-flows.txt").split("\n", 1)[1]
    assert detect(flows, "ovs-ofctl dump-flows br-int").confidence >= detect(flows).confidence
    assert "the prompt ran" in detect(flows, "ovs-ofctl dump-flows br-int").reason
    # a prompt naming a tool does not make unknown text known
    assert detect("hello world\nthis is not a dump", "sudo iptables-save").format is None


def test_command_hints():
    assert hinted_formats("sudo ip6tables-save -c") == ("iptables-save",)
    assert hinted_formats("iptables -t nat -L -n -v") == ("iptables-list",)
    assert hinted_formats("nft -j list ruleset") == ("nft-json",)
    assert hinted_formats("bpftool -j prog show") == ("bpftool-prog-json",)
    assert hinted_formats("kubectl -n kube-system exec ds/cilium -- cilium-dbg status --verbose") == ("cilium-status",)
    assert command_hints("ip6tables-legacy-save") == {"family": "ipv6", "backend": "legacy"}
    assert command_hints("iptables -t nat -L -n -v")["table"] == "nat"
    assert command_hints("tc filter show dev eth0 egress") == {"iface": "eth0", "hook": "egress"}
    assert command_hints("ovs-ofctl -O OpenFlow13 dump-flows br-int")["bridge"] == "br-int"
    assert command_hints("calico-node -bpf policy dump cali12d4a061371 ingress") == {
        "iface": "cali12d4a061371", "hook": "ingress"}
    assert command_hints("calico-node -bpf counters dump --iface=eth0") == {"iface": "eth0"}


@pytest.mark.parametrize("text", ["", "   \n\n", "hello world", "{\"a\": 1}", "[1, 2, 3]",
                                  (FIX / "sweep" / "proc-stat-after.txt").read_text(),
                                  (FIX / "microvm" / "modules.dep-6.12.115-excerpt.txt").read_text()])
def test_unknown_text_is_unknown_with_a_reason(text):
    got = detect(text)
    assert got.format is None and got.reason


def test_registry_names_a_parser_for_every_format():
    assert set(PARSERS) == set(FORMATS)
    for fmt, p in PARSERS.items():
        assert p.module.startswith("cnitrace.") and p.function and p.description


EXISTING = ["iptables-save", "nft-json", "ovs-flows", "ovs-dpctl-flows", "ovs-dpctl-show", "conntrack-stats",
            "bpftool-prog-json", "bpftool-net-json", "bpftool-map-json", "tc-filter-json", "cilium-policy-json",
            "ip-link", "ovs-vsctl-show", "ovs-dpif-show"]


@pytest.mark.parametrize("fmt", EXISTING)
def test_registered_parsers_of_existing_collectors_load(fmt):
    assert callable(PARSERS[fmt].load())


def test_a_file_of_pasted_outputs_reads_as_several_dumps():
    ipt = text_of("iptables/local_legacy_v4_c.save").split("\n", 1)[1]
    flows = text_of("ovs/host-dump-flows.txt").split("\n", 1)[1]
    ct = text_of("conntrack/host-conntrack-S.txt").split("\n", 1)[1]
    paste = (f"Output from the node:\n\n```\nroot@node-1:~# iptables-save -c\n{ipt}"
             f"root@node-1:~# ovs-ofctl dump-flows br-int\n{flows}root@node-1:~# conntrack -S\n{ct}```\n")
    got = read_text(paste, "paste.txt")
    assert [type(x).__name__ for x in got] == ["Skipped", "Dump", "Dump", "Dump"]
    assert [d.format for d in got if isinstance(d, Dump)] == ["iptables-save", "ovs-flows", "conntrack-stats"]
    assert got[2].meta["bridge"] == "br-int" and got[1].meta["rule_counters"] is True
    assert isinstance(got[0], Skipped) and "Output from the node" in got[0].reason


def test_a_missing_parser_costs_its_section_only(monkeypatch):
    from cnitrace.analyze import formats

    monkeypatch.setitem(formats.PARSERS, "conntrack-stats",
                        formats.Parser("cnitrace.collectors.nonexistent", "parse", "conntrack -S"))
    got = read_text("cpu=0 found=1 invalid=2 insert=0\n", "x")
    assert isinstance(got[0], Skipped) and "no parser" in got[0].reason


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400))
def test_detection_and_analysis_never_raise_on_garbage(text):
    got = detect(text)
    assert got.format is None or got.format in FORMATS
    items = read_text(text, "fuzz")
    assert all(isinstance(item, (Dump, Skipped)) for item in items)
    analyze(items, MODEL)


LINES = st.sampled_from([
    "*filter", ":INPUT ACCEPT [0:0]", "-A INPUT -j X", "[1:2] -A X -p tcp -j ACCEPT", "COMMIT", "table inet t {",
    "chain c {", "}", "type filter hook input priority 0; policy accept;", "cpu=0 found=1 invalid=x",
    " cookie=0x0, table=0, n_packets=1, priority=1 actions=drop", "$ iptables-save", "```", "# provenance: x",
    "Chain INPUT (policy ACCEPT 0 packets, 0 bytes)", "create s hash:ip", "add s 1.2.3.4", "{\"nftables\": [",
    "12: sched_cls  name x  tag 0123456789abcdef", "filter protocol all pref 1 bpf chain 0", "| CATEGORY | TYPE |",
    ":X - [0:0]", ":Y - [0:0]", "[2:2] -A INPUT -j X", "[1:1] -A X -j INPUT", "-A X -g Y", "[5:5] -A Y -j X",
    "-A Y -m comment --comment \"a -> b\" -j RETURN", "jump X", "ip daddr vmap @m", "*nat",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINES, max_size=30))
def test_mixed_fragments_of_real_formats_never_raise(lines):
    items = read_text("\n".join(lines), "fuzz")
    assert all(isinstance(item, (Dump, Skipped)) for item in items)
    doc = analyze(items, MODEL).doc
    render_analysis(doc, Console(file=io.StringIO(), width=100))


def test_a_large_json_document_is_recognised_by_its_head():
    import json as _json

    rule = {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 1,
                     "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                                         "right": 80}}, {"accept": None}]}}
    doc = {"nftables": [{"metainfo": {"json_schema_version": 1}},
                        {"table": {"family": "inet", "name": "t", "handle": 1}},
                        {"chain": {"family": "inet", "table": "t", "name": "c", "handle": 2}}] + [rule] * 12_000}
    text = _json.dumps(doc)
    assert len(text) > 2_000_000
    got = detect(text)
    assert got.format == "nft-json" and got.confidence >= 0.9
    assert detect(text[:-5000]).format == "nft-json"     # cut short: still its head


def test_a_listing_command_without_t_names_the_filter_table():
    # `$ iptables -L` lists the filter table: no "does not name its table" guess, and -tnat is read too
    (d,) = read_text((FIX / "iptables" / "openstack-notes-linuxbridge_L_prompt.txt").read_text(), "n")
    assert isinstance(d, Dump) and d.detected.format == "iptables-list"
    assert {c.table for c in d.data.chains} == {"filter"}
    assert not any("does not name its table" in w for w in d.warnings)
    assert command_hints("iptables -tnat -nvL")["table"] == "nat"
    assert command_hints("sudo iptables -L -n -v")["table"] == "filter"
    assert "table" not in command_hints("iptables-save")
    assert command_hints("iptables --list-rules")["table"] == "filter"


def test_an_ovn_br_int_is_not_antrea():
    # br-int is OVN's too (OpenStack, OVN-Kubernetes, Kube-OVN): its flows, not its name, say Antrea
    text = (FIX / "ovs" / "openstack-notes-ovn-br-int-dump-flows.txt").read_text()
    dumps = [d for d in read_text(text, "n") if isinstance(d, Dump)]
    assert dumps and dumps[0].meta.get("bridge") == "br-int" and len(dumps[0].records) == 14
    from cnitrace.analyze.cni import detect as detect_cni
    assert detect_cni(dumps)["cni"] == []
    antrea = (FIX / "ovs" / "antrea-pipeline-doc-flows.txt").read_text().split("\n", 1)[1]
    dumps = [d for d in read_text("$ ovs-ofctl dump-flows br-int --names\n" + antrea, "a") if isinstance(d, Dump)]
    assert [c["cni"] for c in detect_cni(dumps)["cni"]] == ["antrea"]


def test_iptables_S_with_t_nat_needs_no_table_guess():
    (d,) = read_text((FIX / "iptables" / "kubernetes-67572_S_t_nat_prompt.txt").read_text(), "k")
    assert isinstance(d, Dump) and {c.table for c in d.data.chains} == {"nat"}
    assert not any("no *table header" in w for w in d.warnings)


def test_indented_calico_policy_dump_is_detected():
    assert detect((FIX / "calico" / "calico-12050-policy-dump-indented.txt").read_text()).format == "calico-policy"


def test_a_one_field_cilium_status_under_its_prompt_is_detected():
    text = (FIX / "cilium" / "cilium-32036-status-routing-excerpt.txt").read_text()
    (d,) = read_text(text, "c")
    assert isinstance(d, Dump) and d.detected.format == "cilium-status"


def test_a_jq_stream_of_bpftool_objects_after_kubectls_notice():
    (d,) = read_text((FIX / "bpf" / "cilium-18817-map-list-jq-stream.txt").read_text(), "b")
    assert isinstance(d, Dump) and d.detected.format == "bpftool-map-json"
    assert sorted(m.id for m in d.records) == [545, 552]


def test_the_commands_table_beats_the_guess_from_chain_names():
    # a mangle listing of PREROUTING alone looks like nat to the parser; `-t mangle` says which
    (d,) = read_text((FIX / "iptables" / "amazon-vpc-cni-304_t_mangle_L_nv.txt").read_text(), "m")
    assert isinstance(d, Dump) and {c.table for c in d.data.chains} == {"mangle"}
    assert {r.table for r in d.data.rules} == {"mangle"} and len(d.data.rules) == 2


def test_an_ovn_nodes_ovs_vsctl_show_is_not_antrea():
    # OVN's geneve port ovn-<chassis>-0 on br-int: OpenStack (or OVN-Kubernetes, Kube-OVN), not Antrea
    text = (FIX / "ovs" / "openstack-notes-ovn-vsctl-dpctl-show.txt").read_text()
    dumps = [d for d in read_text(text, "n") if isinstance(d, Dump)]
    assert [d.format for d in dumps] == ["ovs-vsctl-show", "ovs-dpctl-show"]
    from cnitrace.analyze.cni import detect as detect_cni
    assert detect_cni(dumps)["cni"] == []
    antrea = [d for d in read_text((FIX / "detect" / "antrea_ovs_vsctl_show.txt").read_text(), "a")
              if isinstance(d, Dump)]
    assert [c["cni"] for c in detect_cni(antrea)["cni"]] == ["antrea"]
