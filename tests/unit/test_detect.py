"""CNI and kube-proxy detection against real node output (tests/fixtures/detect, provenance in line 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnitrace.node import detect
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "detect"


def fixture(name: str) -> str:
    header, body = (FIXTURES / name).read_text().split("\n", 1)
    assert header.startswith("# provenance: "), f"{name} lacks its provenance line"
    return body


def cnis(ev: detect.Evidence) -> dict[str, detect.Detection]:
    return {d.cni: d for d in detect.detect_cnis(ev)}


@pytest.mark.parametrize("ev_kwargs, cni, evidence", [
    (lambda: {"iptables": {"legacy": fixture("calico_iptables_save.txt")}}, "calico",
     ("chain cali-INPUT (iptables-legacy)", "chain cali-OUTPUT (iptables-legacy)",
      "chain cali-failsafe-in (iptables-legacy)")),
    (lambda: {"ip_link": fixture("calico_ip_link.txt")}, "calico", ("interface cali6b54e6eda63",)),
    (lambda: {"bpftool_net": fixture("cilium_bpftool_net.txt")}, "cilium",
     ("tc program bpf_network.o:[from-network] on eth0", "tc program bpf_host_cilium_net.o:[to-host] on cilium_net",
      "tc program bpf_host.o:[to-host] on cilium_host", "+9 more")),
    (lambda: {"ip_link": fixture("cilium_ip_addr.txt")}, "cilium", ("interface cilium_net",)),
    (lambda: {"ovs": fixture("antrea_ovs_vsctl_show.txt")}, "antrea", ("OVS bridge br-int",)),
    (lambda: {"ip_link": fixture("antrea_ip_addr.txt")}, "antrea", ("interface antrea-gw0",)),
    (lambda: {"iptables": {"nft": fixture("kube_router_iptables_save.txt")}}, "kube-router",
     ("chain KUBE-POD-FW-TT2IUJ4CPAVNDDSJ (iptables-nft)", "chain KUBE-ROUTER-FORWARD (iptables-nft)")),
    (lambda: {"ip_link": fixture("flannel_ip_link.txt")}, "flannel", ("interface flannel.1", "interface cni0")),
    (lambda: {"ip_link": fixture("weave_ip_link.txt")}, "weave",
     ("interface vethwepl2b8a17b", "interface weave", "interface datapath")),
], ids=["calico-iptables", "calico-link", "cilium-bpftool", "cilium-link", "antrea-ovs", "antrea-link",
        "kube-router-iptables", "flannel-link", "weave-link"])
def test_each_cni_is_detected_alone_with_its_evidence(ev_kwargs, cni, evidence):
    found = cnis(detect.evidence_from(**ev_kwargs()))
    assert list(found) == [cni]
    assert found[cni].evidence == evidence
    assert found[cni].confidence == "strong"


def test_canal_style_node_shows_both_cnis_and_iptables_kube_proxy_from_nft_ruleset():
    ev = detect.evidence_from(nft=fixture("calico_flannel_nft_ruleset.txt"))
    found = cnis(ev)
    assert sorted(found) == ["calico", "flannel"]
    assert found["calico"].evidence == ("chain cali-PREROUTING (nft ruleset)",)
    assert found["flannel"].evidence == ("chain FLANNEL-FWD (nft ruleset)",)
    kp = detect.detect_kube_proxy(ev)
    assert (kp.mode, kp.reason) == ("iptables", "chain KUBE-SERVICES, 0 KUBE-SVC-* chain(s)")


def test_kube_proxy_ipvs_from_kube_ipvs0():
    ev = detect.evidence_from(ip_link=fixture("kube_proxy_ipvs_ip_addr.txt"))
    assert detect.detect_kube_proxy(ev).mode == "ipvs"
    assert detect.detect_cnis(ev) == []          # docker0/ens5 are not CNI evidence


def test_kube_proxy_nftables_and_none():
    assert detect.detect_kube_proxy(detect.Evidence(nft_tables=("ip kube-proxy", "ip6 kube-proxy"))).mode == "nftables"
    none = detect.detect_kube_proxy(detect.evidence_from(ip_link=fixture("flannel_ip_link.txt")))
    assert none.mode == "none" and "KUBE-SERVICES" in none.reason
    cil = detect.detect_kube_proxy(detect.evidence_from(bpftool_net=fixture("cilium_bpftool_net.txt")))
    assert cil.mode == "none" and "kube-proxy replacement" in cil.reason


def test_cni0_alone_is_weak_flannel_evidence():
    found = cnis(detect.Evidence(links=("lo", "eth0", "cni0")))
    assert found["flannel"].confidence == "weak"


def test_parsers_on_real_output():
    assert detect.parse_links(fixture("flannel_ip_link.txt")) == ("lo", "ens32", "docker0", "cni0", "flannel.1")
    assert detect.parse_links(fixture("cilium_ip_addr.txt"))[-2:] == ("veth87f33821", "cilium_net")
    assert detect.parse_ovs_show(fixture("antrea_ovs_vsctl_show.txt")) == ("br-int",)
    progs = detect.parse_bpftool_net(fixture("cilium_bpftool_net.txt"))
    assert len(progs) == 12 and progs[0] == ("eth0", "bpf_network.o:[from-network]")
    assert detect.parse_iptables_chains(":INPUT ACCEPT [0:0]\n-N cali-FORWARD\nChain WEAVE-NPC (1 references)\n") \
        == ("INPUT", "cali-FORWARD", "WEAVE-NPC")


def test_bpftool_json_and_malformed_input_never_crash():
    js = '[{"xdp":[],"tc":[{"devname":"lxc12ab34cd","ifindex":7,"kind":"clsact/ingress","name":"cil_from_container","id":9}],"flow_dissector":[]}]'
    assert detect.parse_bpftool_net(js) == (("lxc12ab34cd", "cil_from_container"),)
    for junk in ("[{broken", "\x00\x01garbage", "", "table", "Chain"):
        ev = detect.evidence_from(ip_link=junk, iptables={"nft": junk}, nft=junk, ovs=junk, bpftool_net=junk)
        assert detect.detect_cnis(ev) == []


def test_plain_host_is_not_mistaken_for_a_cni():
    ev = detect.evidence_from(ip_link="1: lo: <LOOPBACK,UP>\n2: eth0: <BROADCAST>\n3: lxcbr0: <BROADCAST>\n"
                                      "4: calico: <BROADCAST>\n",
                              iptables={"legacy": ":INPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n"})
    assert detect.detect_cnis(ev) == []
