"""The state file records before creation and cleanup undoes newest-first, idempotently."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cnitrace.core import state as st
from cnitrace.core.runner import RecordedRunner
from cnitrace.core.session import Interrupted, Session


@pytest.fixture
def sf(tmp_path, monkeypatch):
    monkeypatch.setenv("CNITRACE_STATE_DIR", str(tmp_path))
    return st.StateFile(tmp_path)


@pytest.fixture
def log_remover():
    removed: list[str] = []

    def rm(rec, runner):
        if rec.data.get("fail"):
            raise RuntimeError("boom")
        removed.append(rec.name)

    st.REMOVERS["test-kind"] = rm
    yield removed
    del st.REMOVERS["test-kind"]


def test_unknown_kind_is_refused_before_anything_is_written(sf):
    with pytest.raises(ValueError):
        sf.record("run:1", "no-such-kind", "x")
    assert sf.live() == []


def test_live_hides_forgotten_and_keeps_order(sf, log_remover):
    a = sf.record("run:1", "test-kind", "a")
    b = sf.record("run:1", "test-kind", "b")
    c = sf.record("lab:x", "test-kind", "c")
    sf.forget(b)
    assert [r.name for r in sf.live()] == ["a", "c"]
    assert [r.name for r in sf.live("lab:x")] == ["c"]
    assert a.id != c.id


def test_torn_last_line_is_ignored(sf, log_remover):
    sf.record("run:1", "test-kind", "a")
    with open(sf.path, "a") as f:
        f.write('{"op": "add", "id": "zz", "own')  # a write cut by kill -9
    assert [r.name for r in sf.live()] == ["a"]


def test_cleanup_removes_newest_first_and_keeps_failures(sf, log_remover):
    for n in ("first", "second", "third"):
        sf.record("run:1", "test-kind", n)
    sf.record("run:1", "test-kind", "stuck", fail=True)
    res = st.cleanup(sf, runner=RecordedRunner({}))
    assert log_remover == ["third", "second", "first"]
    assert [r.name for r, _ in res.failed] == ["stuck"]
    assert "boom" in res.failed[0][1]
    assert [r.name for r in sf.live()] == ["stuck"]   # a failed removal stays recorded


def test_cleanup_of_one_owner_leaves_the_others(sf, log_remover):
    sf.record("lab:a", "test-kind", "a1")
    sf.record("lab:b", "test-kind", "b1")
    st.cleanup(sf, owner="lab:a", runner=RecordedRunner({}))
    assert [r.name for r in sf.live()] == ["b1"]


def test_compact_deletes_file_when_empty(sf, log_remover):
    sf.record("run:1", "test-kind", "a")
    st.cleanup(sf, runner=RecordedRunner({}))
    assert not sf.path.exists()


def test_session_cleans_up_on_exception_but_lab_sessions_keep_on_success(sf, log_remover):
    with pytest.raises(RuntimeError):
        with Session("run:9", state=sf) as s:
            s.track("test-kind", "x")
            raise RuntimeError("fail midway")
    assert log_remover == ["x"] and sf.live() == []
    with Session("lab:k", state=sf, keep=True) as s:
        s.track("test-kind", "kept")
    assert [r.name for r in sf.live()] == ["kept"]


def test_session_callbacks_run_in_reverse(sf):
    order = []
    with Session("run:1", state=sf) as s:
        s.on_exit(lambda: order.append(1))
        s.on_exit(lambda: order.append(2))
    assert order == [2, 1]


def test_sigterm_unwinds_through_cleanup(sf, log_remover):
    with pytest.raises(Interrupted):
        with Session("run:2", state=sf) as s:
            s.track("test-kind", "y")
            os.kill(os.getpid(), signal.SIGTERM)
    assert log_remover == ["y"]


def test_path_remover_refuses_foreign_paths(tmp_path):
    rec = st.Record("i", "run:1", "path", "/etc/passwd", {}, 0.0)
    import cnitrace.core.removers  # noqa: F401
    with pytest.raises(ValueError):
        st.REMOVERS["path"](rec, RecordedRunner({}))


def test_kill_process_ignores_reused_pid():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        st.kill_process(p.pid, "definitely-not-its-start-time")
        assert p.poll() is None          # wrong start time: someone else's process, left alone
        st.kill_process(p.pid, st.process_start_time(p.pid))
        assert p.wait(timeout=5) != 0
    finally:
        p.kill()


def test_record_is_durable_before_the_object_exists(sf, log_remover, tmp_path):
    """A child that records and is then SIGKILLed leaves a record that cleanup can act on."""
    code = textwrap.dedent(f"""
        import os, signal
        from cnitrace.core import state as st
        st.REMOVERS['test-kind'] = lambda r, x: None
        st.StateFile(__import__('pathlib').Path({str(tmp_path)!r})).record('run:x', 'test-kind', 'orphan')
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", code], check=False)
    assert [r.name for r in sf.live()] == ["orphan"]
    line = sf.path.read_text().splitlines()[0]
    assert json.loads(line)["op"] == "add"


# --- node-wide cleanup respects the living ------------------------------------------------------

RECORD_AND_WAIT = """
import sys, time, pathlib
from cnitrace.core import state as st
st.REMOVERS['test-kind'] = lambda r, x: None
st.StateFile(pathlib.Path(sys.argv[1])).record(sys.argv[2], 'test-kind', 'theirs')
print('recorded', flush=True)
time.sleep(30)
"""


@pytest.fixture
def other_run(tmp_path):
    """Another live process that recorded an object (a second user's profile, a test run)."""
    p = subprocess.Popen([sys.executable, "-c", RECORD_AND_WAIT, str(tmp_path), "run:other"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "recorded"
    yield p
    p.kill()
    p.wait()


def test_cleanup_keeps_records_of_a_live_process_and_says_why(sf, log_remover, other_run):
    sf.record("run:dead", "test-kind", "orphan")   # made by this process: not "another live run"
    res = st.cleanup(sf, runner=RecordedRunner({}))
    assert log_remover == ["orphan"]
    assert [(r.name, why) for r, why in res.kept] == [("theirs", f"in use by pid {other_run.pid}")]
    assert [r.name for r in sf.live()] == ["theirs"]


def test_cleanup_removes_them_once_the_process_is_gone_or_forced(sf, log_remover, other_run):
    assert st.cleanup(sf, runner=RecordedRunner({}), force=True).removed
    other_run.kill()
    other_run.wait()
    sf.record("run:x", "test-kind", "later")
    # now dead: removed without force
    assert [r.name for r in st.cleanup(sf, runner=RecordedRunner({})).removed] == ["later"]


def test_a_reused_pid_does_not_keep_a_dead_runs_records(sf, log_remover, other_run):
    rec = sf.live()[0]
    forged = st.Record("f1", "run:old", "test-kind", "stale", {}, 0.0, other_run.pid, "not-its-start-time")
    assert rec.creator_alive() and not forged.creator_alive()


def test_finished_labs_are_kept_unless_named_or_all(sf, log_remover):
    with Session("lab:a", state=sf, keep=True) as s:
        s.track("test-kind", "a1")
    with Session("lab:b", state=sf, keep=True) as s:
        s.track("test-kind", "b1")
    res = st.cleanup(sf, runner=RecordedRunner({}))
    assert not res.removed and {r.name for r, _ in res.kept} == {"a1", "b1"}
    assert "cnitrace lab down --name a" in dict((r.name, w) for r, w in res.kept)["a1"]
    st.cleanup(sf, runner=RecordedRunner({}), labs=frozenset({"a"}))
    assert [r.name for r in sf.live()] == ["b1"]          # compact kept b's mark ...
    assert not st.cleanup(sf, runner=RecordedRunner({})).removed
    st.cleanup(sf, runner=RecordedRunner({}), labs=None)  # ... until --all
    assert sf.live() == []


def test_a_lab_build_interrupted_after_an_earlier_lab_is_not_kept(sf, log_remover):
    """Records made after the keep mark belong to a later, unfinished `lab up` of that name."""
    with Session("lab:a", state=sf, keep=True) as s:
        s.track("test-kind", "first")
    later = sf.record("lab:a", "test-kind", "half-built")
    object.__setattr__(later, "created", later.created + 1)  # (the clock may not tick between)
    marks = sf.marks()
    assert st.spared(later, marks, frozenset()) is None
    assert st.spared(sf.live()[0], marks, frozenset()) is not None


def test_records_from_before_pids_keep_labs_and_check_run_pids(sf, log_remover):
    old_lab = st.Record("o1", "lab:old", "test-kind", "x", {}, 0.0)
    dead_run = st.Record("o2", "run:999999999", "test-kind", "y", {}, 0.0)
    assert st.spared(old_lab, {}, frozenset()) and st.spared(old_lab, {}, None) is None
    assert st.spared(dead_run, {}, frozenset()) is None


def test_cli_cleanup_lists_what_it_kept(sf, log_remover, other_run, monkeypatch, capsys):
    from cnitrace import cli
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    assert cli.main(["cleanup"]) == 0
    assert f"kept 1 object(s) of run:other: in use by pid {other_run.pid}" in capsys.readouterr().out
    assert cli.main(["cleanup", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["removed"] == [] and doc["kept"][0]["why"].startswith("in use by pid")
