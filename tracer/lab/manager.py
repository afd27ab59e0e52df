"""`lab up / down / status / list`: the lab's lifetime, on top of the Session and state file.

`up` validates everything it can before creating anything (datapath, sizes, tools,
capabilities, name clash), then builds inside a Session owned by "lab:<name>" with keep=True:
on success the objects outlive the process; on any failure or signal midway, the Session
removes whatever was already created. The lab's description (spec, topology, ground truth)
is written last to <state dir>/labs/cnit-<name>.json, so a lab with that file is complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from cnitrace.core import faults
from cnitrace.core.errors import ToolError, UsageError
from cnitrace.core.files import exclusive, remove_if_unlocked
from cnitrace.lab.datapaths import registry, replay
from cnitrace.lab import l7proxy
from cnitrace.lab import policy, topology
from cnitrace.lab.model import GroundTruth, LabSpec, Topology
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.session import Session
from cnitrace.core.state import StateFile, cleanup, pid_alive, process_start_time, state_dir
from cnitrace.node import checks

BASE_TOOLS = ("ip", "sysctl")


def labs_dir() -> Path:
    return state_dir() / "labs"


def meta_path(name: str) -> Path:
    return labs_dir() / f"cnit-{name}.json"


def owner(name: str) -> str:
    return f"lab:{name}"


@dataclasses.dataclass(frozen=True)
class Lab:
    spec: LabSpec
    topo: Topology
    truth: GroundTruth
    created: float
    timings: dict[str, float]
    server_pid: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "spec": self.spec.to_json(), "topology": self.topo.to_json(),
                "ground_truth": self.truth.to_json(), "created": self.created, "timings": self.timings,
                "server_pid": self.server_pid}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Lab":
        return cls(LabSpec.from_json(d["spec"]), Topology.from_json(d["topology"]),
                   GroundTruth.from_json(d["ground_truth"]), d.get("created", 0.0), d.get("timings", {}),
                   d.get("server_pid", 0))


def preflight(spec: LabSpec, runner: Runner = DEFAULT_RUNNER) -> registry.Datapath:
    """Everything that can be refused before anything is built; raises with one line.
    A replay (spec.replay) reads and rewrites its dumps here, so bad ones are refused up front."""
    topology.validate_name(spec.name)
    if spec.replay:
        dp = replay.prepare(spec)
    else:
        policy.validate(spec)
        dp = registry.get(spec.datapath)
    if spec.l7 and not dp.supports_l7:
        raise UsageError(f"--l7 is not supported by the {dp.name} datapath")
    tools = [*BASE_TOOLS, *dp.tools]
    if spec.l7 and l7proxy.kind_for(spec.datapath, spec.l7_proxy) != "envoy":   # envoy: the venv's wheel
        tools.append(spec.l7_proxy)
    for tool in tools:
        if runner.which(tool) is None:
            raise ToolError(f"{tool}: not installed (needed by the {dp.name} datapath; run `make setup`)")
    if dp.caps:
        host = checks.host(runner)
        for cap in dp.caps:
            c = host.check(cap)
            if not c.usable:
                raise ToolError(f"{cap}: {c.reason}")
    return dp


def up(spec: LabSpec, *, runner: Runner = DEFAULT_RUNNER, state: StateFile | None = None,
       progress: Callable[[str], None] | None = None, temporary: bool = False) -> Lab:
    """Build the lab described by `spec`; all or nothing. `temporary`: a lab the calling run takes
    down itself (sweep, demo); if the run is killed, a plain `cnitrace cleanup` removes it, where
    a `lab up` lab is kept until named."""
    say = progress or (lambda msg: None)
    dp = preflight(spec, runner)
    state = state or StateFile()
    state.check_writable()      # read-only or full: refused before the lock file or anything else exists
    # One builder per name: two `lab up --name X` at once would create the same namespaces, and
    # the loser's cleanup would then remove the winner's. The lock makes the check and the build one step.
    with exclusive(meta_path(spec.name)):
        if meta_path(spec.name).exists() or state.live(owner(spec.name)):
            raise UsageError(f"lab {spec.name!r} already exists; run `cnitrace lab down --name {spec.name}` first")
        return _build(spec, dp, runner, state, say, temporary)


def _build(spec: LabSpec, dp: registry.Datapath, runner: Runner, state: StateFile, say: Callable[[str], None],
           temporary: bool = False) -> Lab:
    if spec.replay:
        spec = dp.resolved(spec)
        topo = dp.plan(spec)
    else:
        topo = topology.plan(spec, dp)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with Session(owner(spec.name), state=state, runner=runner, keep=True, mark_kept=not temporary) as s:
        s.track("path", str(meta_path(spec.name)))
        say(f"namespaces: node + {len(topo.pods)} pods")
        topology.create_namespaces(s, topo)
        topology.create_veths(runner, topo)
        say(f"datapath {dp.name}: " + (f"replay of {dp.p.rules_loaded} rules" if spec.replay else f"{spec.rules} rules"))
        t1 = time.monotonic()
        topo = dp.build(s, topo, spec)
        timings["build"] = time.monotonic() - t1
        faults.checkpoint("lab-built")
        if "program_seconds" in topo.extra:
            timings["program"] = float(topo.extra["program_seconds"])
        say("server pod listeners")
        pid = start_server(s, topo)
        if spec.l7:
            say(f"L7 proxy: {l7proxy.kind_for(spec.datapath, spec.l7_proxy)}")
            topo = dp.l7(s, topo, spec)
        truth = dp.ground_truth(topo, spec)
        timings["total"] = time.monotonic() - t0
        lab = Lab(spec, topo, truth, time.time(), timings, pid)
        faults.checkpoint("report")
        _write_meta(lab)
    return lab


def start_server(session: Session, topo: Topology) -> int:
    """Real listeners in the server pod: HTTP and UDP echo on the allowed and the denied port."""
    srv = topo.server
    argv = [sys.executable, "-m", "cnitrace.lab.servers"]
    for port in (topo.allowed_port, topo.denied_port):
        argv += ["--http", str(port), "--udp", str(port)]
    out = session.runner.run(argv, netns=srv.netns, timeout=30)
    pid = int(out.stdout.split()[0])
    # Recorded as soon as its pid exists; until then the namespace record covers it
    # (the netns remover kills every process inside before deleting the namespace).
    session.track("process", f"server:{topo.lab}", pid=pid, start_time=process_start_time(pid))
    return pid


def _write_meta(lab: Lab) -> None:
    path = meta_path(lab.spec.name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(lab.to_json(), indent=2, sort_keys=True))
    os.replace(tmp, path)


def load(name: str) -> Lab:
    """The description of a built lab; UsageError if there is none, a clear line if it is unreadable."""
    topology.validate_name(name)
    path = meta_path(name)
    try:
        return Lab.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UsageError(f"no lab named {name!r} (see `cnitrace lab list`)") from None
    except OSError as exc:
        raise ToolError(f"{path}: cannot read the lab description ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ToolError(f"{path}: unreadable lab description ({type(exc).__name__}); "
                        f"`cnitrace lab down --name {name}` removes it") from None


def prune_locks(state: StateFile | None = None) -> int:
    """Remove the build locks of labs that do not exist (no description, no records) and that no
    `lab up` holds: what a build killed -9 leaves in the labs directory. Returns how many."""
    state = state or StateFile()
    owners = {r.owner for r in state.live()}
    removed = 0
    for lock in labs_dir().glob("cnit-*.json.lock") if labs_dir().is_dir() else ():
        name = lock.name[len("cnit-"):-len(".json.lock")]
        if not meta_path(name).exists() and owner(name) not in owners:
            removed += remove_if_unlocked(meta_path(name))
    return removed


def names() -> list[str]:
    d = labs_dir()
    if not d.is_dir():
        return []
    return sorted(p.name[len("cnit-"):-len(".json")] for p in d.glob("cnit-*.json"))


def status(name: str, *, runner: Runner = DEFAULT_RUNNER, state: StateFile | None = None) -> dict[str, Any]:
    """The lab's description plus a liveness check of what it should have on the node."""
    lab = load(name)
    state = state or StateFile()
    netns = set(runner.run(["ip", "netns", "list"], check=False).stdout.split())
    wanted = [lab.topo.node_netns, *(p.netns for p in lab.topo.pods)]
    missing = [n for n in wanted if n not in netns]
    server_up = bool(lab.server_pid) and pid_alive(lab.server_pid)
    return {"name": name, "healthy": not missing and server_up, "missing_netns": missing,
            "server_running": server_up, "records": len(state.live(owner(name))), **lab.to_json()}


def down(name: str, *, runner: Runner = DEFAULT_RUNNER, state: StateFile | None = None) -> int:
    """Remove everything the lab owns; returns the number of objects removed."""
    topology.validate_name(name)
    state = state or StateFile()
    recs = state.live(owner(name))
    if not recs and not meta_path(name).exists():
        raise UsageError(f"no lab named {name!r} (see `cnitrace lab list`)")
    builder = next((r for r in recs if r.creator_alive()), None)
    if builder is not None:
        raise UsageError(f"lab {name!r} is in use by pid {builder.pid} (still being built, or a sweep's); "
                         f"wait for it, or `cnitrace cleanup --force`")
    result = cleanup(state, owner(name), runner)
    if not result.failed:
        # A description whose record was lost (a damaged state file) would list a lab forever.
        meta_path(name).unlink(missing_ok=True)
    meta_path(name).with_name(meta_path(name).name + ".lock").unlink(missing_ok=True)
    if result.failed:
        rec, why = result.failed[0]
        raise ToolError(f"could not remove {rec.kind} {rec.name}: {why}")
    return len(result.removed)
