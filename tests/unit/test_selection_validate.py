"""The one validator of interface names, globs and namespace names (cnitrace.core.selection), and its
users: `cnitrace snapshot`, `cnitrace probe` (probes/command.py) and ProbeSet (probes/runtime.py)."""

from __future__ import annotations

import pytest

from cnitrace.cli import main
from cnitrace.core.errors import UsageError
from cnitrace.core.selection import (HOST, MAX_GLOB, MAX_IFNAME, Interface, Selection, namespaces_of, parse_iface,
                                     validate_glob, validate_ifname, validate_netns)
from cnitrace.probes import command
from cnitrace.probes.runtime import ProbeSet

# (text given to --iface, expected (netns, name) or None when refused)
IFACES = [
    ("eth0", (HOST, "eth0")),
    ("cali*", (HOST, "cali*")),
    ("x" * 15, (HOST, "x" * 15)),                              # IFNAMSIZ - 1: the longest name the kernel takes
    ("x" * 16, None),                                          # one more is refused
    ("cali1234567890a", (HOST, "cali1234567890a")),            # a real Calico name is 15
    ("cali1234567890ab", None),
    ("vxlan.calico", (HOST, "vxlan.calico")),
    ("eth0.100", (HOST, "eth0.100")),
    ("br-int", (HOST, "br-int")),
    ("lxc_health", (HOST, "lxc_health")),
    ("eth0@if5", (HOST, "eth0@if5")),
    ("cali[0-9a-f][0-9a-f]*", (HOST, "cali[0-9a-f][0-9a-f]*")),   # 21 characters, shortest match 6
    ("cali[!0]*", (HOST, "cali[!0]*")),
    ("?" * 15, (HOST, "?" * 15)),
    ("?" * 16, None),                                          # can only match 16-character names
    ("x" * 15 + "*", (HOST, "x" * 15 + "*")),
    ("x" * 16 + "*", None),
    ("[ab]" * 15, (HOST, "[ab]" * 15)),                        # 60 characters, shortest match 15
    ("*" * MAX_GLOB, (HOST, "*" * MAX_GLOB)),
    ("*" * (MAX_GLOB + 1), None),
    ("cnit-lab-node/cali*", ("cnit-lab-node", "cali*")),
    ("cnit-lab-node/eth0", ("cnit-lab-node", "eth0")),
    ("ns.a_b-1/x", ("ns.a_b-1", "x")),
    ("ns/" + "x" * 16, None),
    ("/eth0", None),                                           # empty namespace
    ("ns/", None),                                             # empty name
    ("../eth0", None),
    ("./eth0", None),
    ("a/b/eth0", None),                                        # '/' is not in a namespace name
    ("", None),
    (".", None),
    ("..", None),
    ("a b", None),
    ("eth0\n", None),                                          # '$' would have let a newline through
    ("x;rm", None),
    ("$(id)", None),
    ("ü*", None),
    ("eth0/", None),
    ("ns b/eth0", None),
]


@pytest.mark.parametrize("text,want", IFACES, ids=[repr(t)[:30] for t, _ in IFACES])
def test_parse_iface_table(text, want):
    if want is None:
        with pytest.raises(UsageError) as e:
            parse_iface(text)
        msg = e.value.message
        assert msg.startswith("invalid --iface ") and "\n" not in msg
        with pytest.raises(UsageError):
            validate_glob(text)
    else:
        assert parse_iface(text) == want
        assert validate_glob(text) == text
        assert validate_ifname(want[1]) == want[1]


@pytest.mark.parametrize("name,ok", [
    ("cnit-lab-node", True), ("cni-1234-abcd", True), ("a", True), ("x" * 255, True), ("x" * 256, False),
    ("", False), (".", False), ("..", False), ("a/b", False), ("a b", False), ("-x;y", False), ("n\n", False),
])
def test_validate_netns_table(name, ok):
    if ok:
        assert validate_netns(name) == name
    else:
        with pytest.raises(UsageError, match="invalid --netns"):
            validate_netns(name)


def test_messages_name_the_option_and_the_reason():
    with pytest.raises(UsageError, match=r"invalid --iface 'x{16}': bad interface name or glob \(16 characters, "
                                         r"the kernel allows 15\)"):
        validate_glob("x" * 16)
    with pytest.raises(UsageError, match="bad namespace name before '/'"):
        validate_glob("a b/eth0")
    with pytest.raises(UsageError, match="matches only names longer than 15"):
        validate_glob("?" * 16)
    assert MAX_IFNAME == 15


def test_host_namespace_is_spelled_one_way():
    assert HOST == ""
    assert Interface("eth0", None, 2).netns == HOST
    sel = Selection((Interface("eth0", None, 2),), (None, "pod-a"))
    assert sel.netns == (HOST, "pod-a") and sel.in_netns(None) == sel.in_netns(HOST)
    assert sel.to_json()["netns"] == ["", "pod-a"]
    assert namespaces_of(None) == (HOST,) and Selection().namespaces() == (HOST,)
    assert sel.namespaces() == (HOST, "pod-a")


def test_probe_command_converts_host_to_none_at_its_edge_and_validates():
    assert command.parse_iface("eth0") == (None, "eth0")
    assert command.parse_iface("cnit-lab-node/cali*") == ("cnit-lab-node", "cali*")
    for bad in ("x" * 16, "/eth0", "a b"):
        with pytest.raises(UsageError, match="bad interface name|bad namespace name"):
            command.parse_iface(bad)
    with pytest.raises(UsageError, match="invalid --netns"):
        command.validate(command.ProbeConfig(stages=("transit",), netns=("a/b",)))
    with pytest.raises(UsageError, match="bad interface name"):
        command.validate(command.ProbeConfig(stages=("transit",), ifaces=((None, "x" * 16),)))


@pytest.mark.parametrize("name", ["x" * 16, "a b", "", "eth0\n"])
def test_probeset_uses_the_same_validator(name):
    with pytest.raises(UsageError, match="bad interface name"):
        ProbeSet(["transit"], ifaces=[(None, name)])


def test_probeset_accepts_what_the_validator_accepts():
    ProbeSet(["transit"], ifaces=[(None, "x" * 15), ("ns", "cali[0-9a-f]*")])   # constructing attaches nothing


@pytest.mark.parametrize("argv,needle", [
    (["snapshot", "--iface", "x" * 16], "invalid --iface"),
    (["snapshot", "--iface", "ns b/eth0"], "bad namespace name"),
    (["snapshot", "--netns", "a/b"], "invalid --netns"),
])
def test_snapshot_refuses_bad_names_before_the_root_check(argv, needle, capsys, monkeypatch):
    def no_root():
        raise AssertionError("validation must come before the root check")

    monkeypatch.setattr("cnitrace.cli.require_root", no_root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_probe_refuses_a_16_character_name(capsys, monkeypatch):
    monkeypatch.setattr("cnitrace.cli.require_root", lambda: None)   # parsing comes before any kernel work
    assert main(["probe", "--iface", "x" * 16, "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert "bad interface name" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
