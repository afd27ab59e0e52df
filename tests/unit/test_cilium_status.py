"""`cilium status` pastes from Cilium issues: agent (1.7 to 1.17, plain, verbose, CI log, kubectl) and cilium-cli."""

from __future__ import annotations


from hypothesis import given, settings, strategies as st

from tests.support.fixtures import fixture
from cnitrace.collectors.cilium.status import CiliumStatus, parse_status

def fx(name: str) -> str:
    return fixture("cilium", name)


def test_agent_status_with_kpr_features_and_cluster_health_table():
    s = parse_status(fx("cilium-10059-status.txt"))
    assert s.source == "agent" and s.warnings == ()
    assert (s.kube_proxy_replacement, s.kpr_devices, s.kvstore, s.cilium_state) == ("Strict", (), "Disabled", "Ok")
    assert s.ipam == {"IPv4": (4, 65535)} and s.controllers == (17, 17) and s.cluster_health == (0, 1)
    assert (s.proxy_ok, s.proxy_ip, s.proxy_ports, s.proxy_redirects) == (True, "10.1.28.236", "10000-20000", None)
    assert s.fields["NodeMonitor"] == "Disabled" and len(s.fields) == 11  # the health table is not a field


def test_status_inside_a_ci_log():
    s = parse_status(fx("cilium-25984-status-ci-log.txt"))
    assert s.warnings == ()
    assert (s.host_routing, s.masquerading, s.encryption) == ("BPF", "BPF", "Disabled")
    assert (s.proxy_redirects, s.proxy_ports, s.proxy_ip) == (0, "10000-20000", "10.0.1.248")
    assert s.controllers == (38, 38) and s.cluster_health == (2, 2)
    assert s.fields["Global Identity Range"] == "min 256, max 65535"


def test_verbose_status_blocks_do_not_leak_into_fields():
    s = parse_status(fx("cilium-27142-status-verbose.txt"))
    assert s.warnings == () and (s.version, s.kube_proxy_replacement, s.kpr_devices) == ("1.14.0", "Strict", ("eth0",))
    assert (s.host_routing, s.masquerading, s.ipam) == ("BPF", "BPF", {"IPv4": (5, 254)})
    assert s.fields["Allocated addresses"] == "" and "10.0.1.19 (router)" not in s.fields
    k = parse_status(fx("cilium-35542-status-kubectl.txt"))
    assert k.warnings == () and (k.kube_proxy_replacement, k.version, k.kpr_devices) == ("True", "1.17.0-dev", ("eth0",))
    assert k.fields["SRv6"] == "Disabled"


def test_cilium_cli_summary_box():
    ok = parse_status(fx("cilium-cli-979-status.txt"))
    assert ok.source == "cli" and ok.warnings == ()
    assert ok.components == {"Cilium": "OK", "Operator": "OK", "Hubble": "disabled", "ClusterMesh": "disabled"}
    assert ok.cluster_pods == (6, 6) and ok.images["cilium"][0].startswith("quay.io/cilium/cilium:v1.11.6@sha256:")
    bad = parse_status(fx("kubeasz-1422-cilium-cli-errors.txt"))
    assert bad.cilium_state == "1 errors" and bad.components["Envoy DaemonSet"] == "1 errors"
    assert bad.components["Hubble Relay"] == "1 warnings" and bad.cluster_pods == (0, 0)


def test_empty_and_garbage():
    assert parse_status("").warnings == ("empty cilium status",)
    g = parse_status("hello world\nnot a status")
    assert isinstance(g, CiliumStatus) and g.partial and g.fields == {}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_random_text(s):
    r = parse_status(s)
    assert len(r.warnings) <= 51


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["cilium-10059-status.txt", "cilium-25984-status-ci-log.txt", "cilium-cli-979-status.txt"]),
       st.integers(0, 2500), st.text(alphabet="¯\\/_:[] \t\nOkDisabled0123456789", max_size=30))
def test_fuzz_mutated_real_dumps(name, cut, junk):
    text = fx(name)
    assert len(parse_status(text[:cut] + junk + text[cut:]).warnings) <= 51


def test_status_in_the_ci_harness_log_keeps_its_fields():
    # ' \t ' before the first status line, '\t ' before the rest, an 'Exitcode: 0' line above
    s = parse_status(fx("cilium-21735-status-ci-harness.txt"))
    assert s.warnings == () and s.source == "agent"
    assert (s.kvstore, s.kubernetes, s.kube_proxy_replacement) == ("Disabled", "Ok", "Disabled")
    assert "Exitcode" not in s.fields and s.fields["Host firewall"] == "Disabled"


def test_an_excerpt_cut_with_dots_reads_its_one_field():
    s = parse_status(fx("cilium-32036-status-routing-excerpt.txt"))
    assert s.warnings == ()
    assert (s.routing_network, s.host_routing) == ("Tunnel [vxlan]", "Legacy")


def test_an_etcd_kvstore_line_gives_its_health_not_its_last_word():
    """`KVStore: Ok   etcd: 1/1 connected: http://…:2379 - 3.2.5 (Leader)` (cilium#5111) read as
    "(Leader)" before; the state is the health word."""
    s = parse_status(fx("cilium-5111-status-etcd-kvstore.txt"))
    assert s.kvstore == "Ok" and s.cilium_state == "Ok" and s.controllers == (56, 56)
    assert parse_status("KVStore:   Failure   Err: not able to connect to any etcd endpoints\n").kvstore == "Failure"


def test_a_starship_prompt_is_a_prompt():
    """`❯ kubectl -n kube-system exec -ti cilium-qqkqn -- "cilium-dbg" status` (cilium#30910) was
    warned about as an unrecognised status line."""
    s = parse_status(fx("cilium-30910-dbg-status-starship-prompt.txt"))
    assert not any("❯" in w for w in s.warnings), s.warnings
    assert s.cilium_state == "Ok"
