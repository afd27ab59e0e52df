"""`cnitrace k8s manifest`: the agent DaemonSet, generated and shipped (tracer/cluster/daemonset.yaml),
parsed back and checked for what a node agent of this kind needs; the Containerfile beside it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cnitrace.cluster import manifest as K
from cnitrace.core.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def parse(text: str) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Namespace", "ServiceAccount", "Service", "DaemonSet"]
    return dict(zip(kinds, docs))


def test_shipped_file_is_the_generators_default_output():
    assert K.shipped() == K.render(K.ManifestConfig())
    assert (REPO / "tracer" / "cluster" / "daemonset.yaml").read_text() == K.render(K.ManifestConfig())


def test_yaml_parses_back_to_the_objects():
    cfg = K.ManifestConfig(namespace="obs", image="registry.local:5000/cnitrace@sha256:" + "a" * 64,
                           listen_port=9500, node_selector=(("node-role.kubernetes.io/worker", ""), ("pool", "net")),
                           ifaces=("cali*", "cnit-x-node/veth*"), window=10)
    assert [d for d in yaml.safe_load_all(K.render(cfg)) if d] == K.objects(cfg)


def test_daemonset_required_fields_security_and_scheduling():
    o = parse(K.shipped())
    ds = o["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1" and ds["metadata"]["namespace"] == "cnitrace"
    sel = ds["spec"]["selector"]["matchLabels"]
    tpl = ds["spec"]["template"]
    assert sel.items() <= tpl["metadata"]["labels"].items()
    assert sel == {"app.kubernetes.io/name": "cnitrace-agent"}   # what the kubectl plugin selects
    spec = tpl["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert {"operator": "Exists"} in spec["tolerations"]           # every node, tainted ones too
    assert spec["serviceAccountName"] == o["ServiceAccount"]["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    assert c["name"] == "agent" and c["command"] == ["cnitrace", "agent"]
    assert c["args"][:2] == ["--listen", "0.0.0.0:9477"]
    assert c["securityContext"]["privileged"] is True
    for part in ("requests", "limits"):
        assert set(c["resources"][part]) == {"cpu", "memory"}
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c["env"]
    assert o["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_probes_and_ports_point_at_the_agents_endpoint():
    o = parse(K.shipped())
    (c,) = o["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": 9477}
    assert c["livenessProbe"]["initialDelaySeconds"] >= c["readinessProbe"]["initialDelaySeconds"]
    assert c["ports"] == [{"name": "http", "containerPort": 9477, "protocol": "TCP"}]


def test_mounts_and_read_only_where_it_only_reads():
    spec = parse(K.shipped())["DaemonSet"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    vols = {v["name"]: v["hostPath"] for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {m["name"] for m in c["volumeMounts"]} == set(vols)
    host = {mounts[p]["mountPath"]: vols[mounts[p]["name"]]["path"] for p in mounts}
    for path in ("/sys/fs/bpf", "/sys/kernel", "/run/netns", "/lib/modules"):
        assert host[path] == path
    assert host["/host/proc"] == "/proc"
    for ro in ("/sys/kernel", "/run/netns", "/lib/modules", "/usr/src", "/host/proc"):
        assert mounts[ro]["readOnly"] is True, ro
    assert mounts["/sys/fs/bpf"]["readOnly"] is False                  # pins
    assert mounts["/run/cnitrace"]["readOnly"] is False                # state files for cleanup
    assert mounts["/run/netns"]["mountPropagation"] == "HostToContainer"  # namespaces made later
    assert all(v["type"] in ("Directory", "DirectoryOrCreate", "FileOrCreate") for v in vols.values())


def test_service_is_headless_with_prometheus_annotations():
    o = parse(K.shipped())
    svc = o["Service"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == o["DaemonSet"]["spec"]["selector"]["matchLabels"]
    want = {"prometheus.io/scrape": "true", "prometheus.io/port": "9477", "prometheus.io/path": "/metrics"}
    assert want.items() <= svc["metadata"]["annotations"].items()
    assert want.items() <= o["DaemonSet"]["spec"]["template"]["metadata"]["annotations"].items()


def test_options_reach_the_objects():
    cfg = K.ManifestConfig(namespace="obs", image="example.org/c:1", listen_port=9500,
                           node_selector=(("pool", "net"),), ifaces=("cali*",), window=10)
    o = parse(K.render(cfg))
    assert all(d["metadata"].get("namespace", "obs") == "obs" for d in o.values())
    assert o["Namespace"]["metadata"]["name"] == "obs"
    spec = o["DaemonSet"]["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "net"}
    (c,) = spec["containers"]
    assert c["image"] == "example.org/c:1"
    assert c["args"] == ["--listen", "0.0.0.0:9500", "--iface", "cali*", "--window", "10"]
    assert c["livenessProbe"]["httpGet"]["port"] == 9500
    assert o["Service"]["metadata"]["annotations"]["prometheus.io/port"] == "9500"


@pytest.mark.parametrize("cfg,msg", [
    (K.ManifestConfig(namespace="Bad_NS"), "--namespace"),
    (K.ManifestConfig(image="bad image"), "--image"),
    (K.ManifestConfig(listen_port=0), "--listen-port"),
    (K.ManifestConfig(node_selector=(("a b", "c"),)), "--node-selector"),
    (K.ManifestConfig(ifaces=("cali*; rm",)), "--iface"),
    (K.ManifestConfig(window=0), "--window"),
])
def test_bad_options_are_one_line_errors(cfg, msg):
    with pytest.raises(UsageError) as e:
        K.render(cfg)
    assert e.value.message.startswith(msg)


def test_command_prints_and_writes(tmp_path, capsys):
    from cnitrace import cli

    assert cli.main(["k8s", "manifest"]) == 0
    assert capsys.readouterr().out == K.shipped()
    out = tmp_path / "ds.yaml"
    assert cli.main(["k8s", "manifest", "--namespace", "obs", "--node-selector", "pool=net", "-o", str(out)]) == 0
    assert parse(out.read_text())["DaemonSet"]["metadata"]["namespace"] == "obs"
    capsys.readouterr()
    assert cli.main(["k8s", "manifest", "--node-selector", "novalue"]) == 2
    err = capsys.readouterr().err
    assert "KEY=VALUE" in err and len(err.strip().splitlines()) == 1


def test_containerfile_runs_the_provision_script_and_the_manifests_command():
    text = (REPO / "vagrant" / "Containerfile").read_text()
    assert re.search(r"^FROM debian:bookworm", text, re.M)
    assert "vagrant/provision.sh" in text and re.search(r"^RUN bash \S*provision\.sh", text, re.M)
    assert "--system-site-packages" in text
    (entry,) = re.findall(r"^ENTRYPOINT (.+)$", text, re.M)
    spec = parse(K.shipped())["DaemonSet"]["spec"]["template"]["spec"]
    assert json.loads(entry) == spec["containers"][0]["command"] == list(K.COMMAND)
    assert f"EXPOSE {K.DEFAULT_PORT}" in text


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20))
trees = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text("abcxyz-./", min_size=1, max_size=8), inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text("abcxyz-./", min_size=1, max_size=8), trees, min_size=1, max_size=5))
def test_emitter_roundtrips_through_a_yaml_parser(obj):
    assert yaml.safe_load(K.to_yaml(obj)) == obj
