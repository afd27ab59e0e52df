"""`kubectl cnitrace`: the collection code over a fake `kubectl` on PATH (a script that records
its argv and answers with real-shaped output), the pure pod parser, and the direct-URL fetcher
against a local HTTP server. No cluster, no kubectl needed."""

from __future__ import annotations

import http.server
import json
import os
import stat
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnitrace.cluster import collect as C
from cnitrace.cluster import plugin
from cnitrace.core.errors import ToolError, UsageError
from cnitrace.reports.cluster.document import validate as validate_cluster
from tests.support.fixtures import fixture
from tests.unit.test_report_document import make_doc

PODS = fixture("k8s", "kubectl_get_pods_agents.json").split("\n", 1)[1]
RAW = "/api/v1/namespaces/cnitrace/pods/{pod}:9477/proxy/report.json"

FAKE = r'''#!{python}
"""A stand-in kubectl: records argv, answers get pods / get --raw / exec like kubectl would."""
import json, os, sys
d = os.environ["FAKE_KUBECTL_DIR"]
with open(os.path.join(d, "argv.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
a = sys.argv[1:]
if a[:2] == ["--context", "lab"]:
    a = a[2:]
if a[:2] == ["get", "pods"]:
    sys.stdout.write(open(os.path.join(d, "pods.json")).read())
elif a[:2] == ["get", "--raw"]:
    pod = a[2].split("/pods/")[1].split(":")[0]
    p = os.path.join(d, "docs", pod + ".json")
    if not os.path.exists(p):
        sys.stderr.write('Error from server (ServiceUnavailable): the server is currently unable to handle the request\n')
        sys.exit(1)
    sys.stdout.write(open(p).read())
elif a[:1] == ["exec"]:
    cmd = a[a.index("--") + 1:]
    if cmd[:2] == ["cnitrace", "profile"]:
        sys.stdout.write("95 % of per-packet time: ...\n")
        sys.stderr.write("wrote " + cmd[-1] + "\n")
    elif cmd[0] == "cat":
        sys.stdout.write(open(os.path.join(d, "profile.json")).read())
    elif cmd[:2] == ["rm", "-f"]:
        pass
    else:
        sys.exit(126)
else:
    sys.stderr.write("error: unknown command\n")
    sys.exit(1)
'''


def node_doc(host: str, n_rules: int) -> dict:
    doc = make_doc(n_rules)
    doc["host"]["hostname"] = host
    doc["agent"] = {"node": host, "window": 3, "windows_total": 3, "window_s": 30.0, "started_at": 1.0}
    return doc


@pytest.fixture
def kubectl(tmp_path, monkeypatch):
    """A fake kubectl first on PATH; returns (dir, argv list reader)."""
    d = tmp_path / "kube"
    (d / "docs").mkdir(parents=True)
    (d / "pods.json").write_text(PODS)
    exe = d / "kubectl"
    exe.write_text(FAKE.replace("{python}", sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_KUBECTL_DIR", str(d))

    def calls() -> list[list[str]]:
        p = d / "argv.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    return d, calls


def test_parse_pods_reads_node_phase_readiness_and_port():
    pods = C.parse_pods(PODS)
    assert [(p.name, p.node, p.phase, p.ready, p.port) for p in pods] == [
        ("cnitrace-agent-7xk2p", "worker-1", "Running", True, 9477),
        ("cnitrace-agent-m4q9d", "worker-2", "Running", True, 9477),
        ("cnitrace-agent-zr8tn", None, "Pending", False, 9477)]
    assert all(p.namespace == "cnitrace" for p in pods)


def test_parse_pods_takes_one_pod_and_the_named_port():
    one = json.loads(PODS)["items"][0]
    one["spec"]["containers"][0]["ports"][0]["containerPort"] = 9600
    (p,) = C.parse_pods(json.dumps(one))
    assert p.node == "worker-1" and p.port == 9600


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"kind": "List", "items": 3}'])
def test_parse_pods_bad_output_is_a_tool_error(text):
    with pytest.raises(ToolError):
        C.parse_pods(text)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
                    lambda x: st.one_of(st.lists(x, max_size=3),
                                        st.dictionaries(st.sampled_from(["kind", "items", "metadata", "spec", "status",
                                                                         "name", "nodeName", "phase", "containers",
                                                                         "ports", "conditions", "type"]), x, max_size=4)),
                    max_leaves=25))
def test_parse_pods_never_crashes(obj):
    try:
        pods = C.parse_pods(json.dumps(obj))
    except ToolError:
        return
    assert all(isinstance(p.name, str) and isinstance(p.port, int) for p in pods)


def test_proxy_path_quotes_its_parts():
    assert C.proxy_path("cnitrace", "cnitrace-agent-7xk2p", 9477) == RAW.format(pod="cnitrace-agent-7xk2p")
    assert "%2F" in C.proxy_path("a/b", "p", 1)


def test_kubectl_fetcher_argv_and_collection(kubectl):
    d, calls = kubectl
    for pod, host, n in (("cnitrace-agent-7xk2p", "worker-1", 10), ("cnitrace-agent-m4q9d", "worker-2", 1000)):
        (d / "docs" / f"{pod}.json").write_text(json.dumps(node_doc(host, n)))
    f = C.KubectlFetcher("cnitrace")
    docs, warnings = C.collect(f)
    kubectl_path = str(d / "kubectl")
    assert calls() == [
        ["get", "pods", "--namespace", "cnitrace", "-l", "app.kubernetes.io/name=cnitrace-agent", "-o", "json"],
        ["get", "--raw", RAW.format(pod="cnitrace-agent-7xk2p")],
        ["get", "--raw", RAW.format(pod="cnitrace-agent-m4q9d")]]
    assert f.kubectl == kubectl_path
    assert [(src, node) for src, node, _ in docs] == [("cnitrace/cnitrace-agent-7xk2p:9477", "worker-1"),
                                                      ("cnitrace/cnitrace-agent-m4q9d:9477", "worker-2")]
    assert warnings == ["pod cnitrace/cnitrace-agent-zr8tn: Pending, not scheduled: skipped"]


def test_context_is_passed_to_every_kubectl_call(kubectl):
    d, calls = kubectl
    (d / "docs" / "cnitrace-agent-7xk2p.json").write_text(json.dumps(node_doc("worker-1", 10)))
    C.collect(C.KubectlFetcher("cnitrace", context="lab"), nodes=["worker-1"])
    assert all(c[:2] == ["--context", "lab"] for c in calls())
    assert len(calls()) == 2      # pods, then only worker-1's report


def test_report_all_nodes_merges_and_names_the_outlier(kubectl, tmp_path, capsys):
    d, calls = kubectl
    for pod, host, n in (("cnitrace-agent-7xk2p", "worker-1", 10), ("cnitrace-agent-m4q9d", "worker-2", 1000)):
        (d / "docs" / f"{pod}.json").write_text(json.dumps(node_doc(host, n)))
    out = tmp_path / "c.json"
    rc = plugin.main(["report", "--all-nodes", "--json", str(out)])
    text = capsys.readouterr()
    assert "node worker-2: chain cali-pi-allow (filter)" in text.out
    assert "cnitrace-agent-zr8tn" in text.err            # the Pending pod is said, and...
    assert rc == 1                                         # ... makes the exit status say it too
    doc = json.loads(out.read_text())
    assert validate_cluster(doc) == [] and [n["name"] for n in doc["nodes"]] == ["worker-1", "worker-2"]
    assert doc["nodes"][1]["source"] == "cnitrace/cnitrace-agent-m4q9d:9477"
    assert doc["nodes"][1]["agent"]["windows_total"] == 3
    assert any("zr8tn" in w for w in doc["warnings"])


def test_an_agent_that_fails_is_a_warning_not_the_end(kubectl, capsys):
    d, _ = kubectl
    for pod, host in (("cnitrace-agent-7xk2p", "worker-1"),):
        (d / "docs" / f"{pod}.json").write_text(json.dumps(node_doc(host, 10)))
    docs, warnings = C.collect(C.KubectlFetcher("cnitrace"))
    assert len(docs) == 1
    assert any("ServiceUnavailable" in w and "cnitrace-agent-m4q9d" in w for w in warnings)


def test_report_node_shows_one_profile(kubectl, capsys):
    d, calls = kubectl
    (d / "docs" / "cnitrace-agent-m4q9d.json").write_text(json.dumps(node_doc("worker-2", 1000)))
    assert plugin.main(["report", "--node", "worker-2"]) == 0
    assert "cali-pi-allow" in capsys.readouterr().out
    assert [c[:2] for c in calls()] == [["get", "pods"], ["get", "--raw"]]


def test_report_unknown_node_is_one_line(kubectl, capsys):
    assert plugin.main(["report", "--node", "worker-9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "kubectl-cnitrace: no running cnitrace agent on node(s) worker-9 (agents on: worker-1, worker-2)"


def test_profile_runs_in_the_nodes_agent_pod(kubectl, tmp_path, capsys):
    d, calls = kubectl
    (d / "profile.json").write_text(json.dumps(node_doc("worker-1", 1000)))
    out = tmp_path / "p.json"
    assert plugin.main(["profile", "--node", "worker-1", "--iface", "cali*", "--duration", "2",
                        "--json", str(out)]) == 0
    c = calls()
    assert c[0][:2] == ["get", "pods"]
    prefix = ["exec", "--namespace", "cnitrace", "cnitrace-agent-7xk2p", "-c", "agent", "--"]
    assert all(x[:7] == prefix for x in c[1:]) and len(c) == 4
    run, cat, rm = (x[7:] for x in c[1:])
    tmp = run[-1]
    assert run == ["cnitrace", "profile", "--iface", "cali*", "--duration", "2", "--json", tmp]
    assert tmp.startswith("/tmp/cnitrace-kubectl-") and cat == ["cat", tmp] and rm == ["rm", "-f", tmp]
    assert json.loads(out.read_text())["kind"] == "profile"
    assert "cali-pi-allow" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["report"], "choose --all-nodes or --node"),
    (["report", "--all-nodes", "--node", "x"], "choose --all-nodes or --node"),
    (["profile", "--node", "worker-1", "--iface", "ca li"], "--iface"),
    (["report", "--all-nodes", "--endpoints", "ftp://x"], "--endpoints"),
])
def test_bad_options_are_one_line(kubectl, capsys, argv, msg):
    assert plugin.main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1, err


def test_no_kubectl_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert plugin.main(["report", "--all-nodes"]) == 1
    assert capsys.readouterr().err.strip() == \
        "kubectl-cnitrace: kubectl: not found on PATH (the plugin talks to the cluster through it)"


# --- the direct-URL fetcher -------------------------------------------------------------------------

class _Agent(http.server.BaseHTTPRequestHandler):
    docs: dict[int, bytes] = {}

    def do_GET(self):  # noqa: N802
        body = self.docs.get(self.server.server_address[1])
        if self.path != "/report.json" or body is None:
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def agents():
    servers = []

    def serve(doc: dict | None) -> str:
        s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Agent)
        if doc is not None:
            _Agent.docs[s.server_address[1]] = json.dumps(doc).encode()
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
        return f"http://127.0.0.1:{s.server_address[1]}"

    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


def test_url_fetcher_collects_and_the_plugin_merges(agents, capsys, tmp_path):
    a, b, down = agents(node_doc("n-a", 10)), agents(node_doc("n-b", 1000)), agents(None)
    docs, warnings = C.collect(C.UrlFetcher([a, b, down]))
    assert [src for src, _, _ in docs] == [a, b]
    assert warnings == [f"{down}/report.json: HTTP 503 Service Unavailable"]
    out = tmp_path / "m.json"
    assert plugin.main(["report", "--all-nodes", "--endpoints", f"{a},{b}", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [o["node"] for o in doc["outliers"]] == ["n-b"]
    assert plugin.main(["report", "--node", "n-a", "--endpoints", f"{a},{b}"]) == 0
    assert "cali-pi-allow" in capsys.readouterr().out


def test_url_fetcher_refuses_a_document_that_is_not_a_profile(agents):
    url = agents({"kind": "profile"})
    docs, warnings = C.collect(C.UrlFetcher([url]))
    assert docs == [] and warnings[0].startswith(f"{url}: not a valid cnitrace profile document")


def test_endpoints_parse():
    assert C.split_endpoints(["http://a:1,http://b:2/", "http://c:3"]) == ["http://a:1", "http://b:2/", "http://c:3"]
    assert C.parse_endpoint("http://b:2/") == "http://b:2"
    with pytest.raises(UsageError):
        C.parse_endpoint("127.0.0.1:9477")
