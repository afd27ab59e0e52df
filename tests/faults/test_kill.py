"""SIGKILL at each phase of each command, then `cnitrace cleanup`: the node as it was found.

Lab up and lab down are killed on every lab datapath; profile and snapshot on a kept calico lab
(their cleanup is the plain `cnitrace cleanup`, which must remove what the dead run left and keep
the lab: the picture compared is the node with the lab up); one sweep point with the calibration
cached; the per-shape calibration with an empty cache. See matrix.py for the phases.
"""

from __future__ import annotations

import json
import platform
import shutil
import uuid
from pathlib import Path

import pytest

from cnitrace.calibrate import rules
from tests.faults.matrix import DATAPATHS, RULES, Private, cells, kill_cell, picture

pytestmark = pytest.mark.requires("iptables", "tracepoints", "bcc")


def lab_name() -> str:
    return f"fm{uuid.uuid4().hex[:6]}"


def _ids(cs):
    return [phase for phase, _ in cs]


@pytest.mark.parametrize("phase", _ids(cells("lab up")))
@pytest.mark.parametrize("datapath", DATAPATHS)
def test_lab_up(priv, datapath, phase):
    name = lab_name()
    before = picture(priv)
    out = kill_cell(priv, "lab up", phase, ["lab", "up", "-d", datapath, "-n", RULES, "--name", name],
                    before=before, names=[f"cnit-{name}"], label=f"lab up {datapath}")
    assert out.survived, out.explain()


@pytest.mark.parametrize("phase", _ids(cells("lab down")))
@pytest.mark.parametrize("datapath", DATAPATHS)
def test_lab_down(priv, datapath, phase):
    name = lab_name()
    before = picture(priv)
    up = priv.cli("lab", "up", "-d", datapath, "-n", RULES, "--name", name)
    assert up.returncode == 0, up.stderr
    out = kill_cell(priv, "lab down", phase, ["lab", "down", "--name", name],
                    before=before, names=[f"cnit-{name}"], label=f"lab down {datapath}")
    assert out.survived, out.explain()


@pytest.fixture(scope="module")
def kept_lab():
    """A calico lab (100 rules) that outlives the profile and snapshot cells run against it."""
    p = Private.make()
    name = lab_name()
    try:
        up = p.cli("lab", "up", "-d", "calico", "-n", RULES, "--name", name)
        assert up.returncode == 0, up.stderr
        yield p, name
    finally:
        p.close()


@pytest.mark.parametrize("phase", _ids(cells("profile")))
def test_profile(kept_lab, phase):
    p, name = kept_lab
    before = picture(p)
    out = kill_cell(p, "profile", phase, ["profile", "--lab", name, "--traffic", "probe", "--duration", "1",
                                          "--no-calibrate"], before=before, names=[f"cnit-{name}"], cleanup=())
    assert out.survived, out.explain()


@pytest.mark.parametrize("kind, phase", [(k, ph) for k in ("rr", "stream") for ph in _ids(cells(f"profile {k}"))])
def test_profile_load(kept_lab, kind, phase):
    """A profile killed while its load runs leaves no load server and no redirect in the kept lab."""
    p, name = kept_lab
    before = picture(p)
    out = kill_cell(p, f"profile {kind}", phase, ["profile", "--lab", name, "--traffic", kind, "--duration", "3",
                                                  "--no-calibrate"], before=before, names=[f"cnit-{name}"], cleanup=())
    assert out.survived, out.explain()


@pytest.mark.parametrize("phase", _ids(cells("snapshot")))
def test_snapshot(kept_lab, phase):
    p, name = kept_lab
    before = picture(p)
    out = kill_cell(p, "snapshot", phase, ["snapshot", "--netns", f"cnit-{name}-node", "--interval", "1",
                                           "--bpf-stats", "sysctl", "--only", "bpf"],
                    before=before, names=[f"cnit-{name}"], cleanup=())
    assert out.survived, out.explain()


def _cache_keys() -> tuple[str, ...]:
    """The entries a legacy-backend sweep reads from the calibration cache (calibrate.rules)."""
    cpu = rules.cpu_model()
    return (f"shapes-v{rules.SHAPES_CACHE_VERSION}|{platform.release()}|{cpu}|legacy",
            f"nft-shapes-v{rules.NFT_SHAPES_CACHE_VERSION}|{platform.release()}|{cpu}")


@pytest.fixture(scope="module")
def warm_cache():
    """A private calibration cache holding what the sweep needs: the node's own entries when it has
    them, else measured once here (a sweep point would otherwise calibrate before its lab)."""
    d = Path(f"/tmp/cnit-fwarm-{uuid.uuid4().hex[:8]}")
    d.mkdir()
    try:
        node = rules.CACHE
        try:
            entries = json.loads(node.read_text())
        except (OSError, ValueError):
            entries = {}
        keys = _cache_keys()
        if isinstance(entries, dict) and all(k in entries for k in keys):
            (d / "calibration.json").write_text(json.dumps({k: entries[k] for k in keys}))
        else:
            p = Private.make(cache=d)
            try:
                r = p.python("from cnitrace.node import checks; from cnitrace.calibrate import rules; "
                             "checks.register_all(); rules.cached_or_measure_shapes()", timeout=600)
                assert r.returncode == 0, r.stderr
            finally:
                p.close(keep_cache=True)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("phase", _ids(cells("sweep point")))
def test_sweep_point(warm_cache, phase):
    p = Private.make(cache=warm_cache)
    try:
        before = picture(p)
        # a plain `cnitrace cleanup` (no --all): the sweep's own lab is not a kept `lab up` lab
        out = kill_cell(p, "sweep point", phase, ["sweep", "--datapath", "calico", "--rules", "0", "--quick"],
                        before=before, names=["cnit-sw"], cleanup=())
        assert out.survived, out.explain()
    finally:
        p.close(keep_cache=True)


CALIBRATE = ("from cnitrace.node import checks\n"
             "from cnitrace.calibrate import rules\n"
             "checks.register_all()\n"        # as the CLI does at start-up
             "rules.cached_or_measure_shapes(backend='legacy', nft=False, repeats=1, packets=200)\n")


@pytest.mark.parametrize("phase", _ids(cells("calibration")))
def test_calibration(priv, phase):
    before = picture(priv)
    out = kill_cell(priv, "calibration", phase, [CALIBRATE], python=True, before=before, names=["cnit-cal"])
    assert out.survived, out.explain()


@pytest.mark.parametrize("phase", _ids(cells("trace")))
def test_trace(kept_lab, phase):
    """A trace killed with its nftrace table and `nft monitor trace` up: cleanup removes both (and the
    monitor's log), and keeps the lab."""
    p, name = kept_lab
    before = picture(p)
    out = kill_cell(p, "trace", phase, ["trace", "--lab", name, "--probe", "tcp:10.65.0.2:8080"],
                    before=before, names=[f"cnit-{name}"], cleanup=())
    assert out.survived, out.explain()
