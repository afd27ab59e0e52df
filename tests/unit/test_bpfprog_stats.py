"""BPF stats switching without root: the sysctl path records the original value before writing,
and restores it on normal exit and on an exception; 'already on' is left alone."""

from __future__ import annotations

import pytest

from cnitrace.collectors.bpfprog import stats
from cnitrace.core.state import StateFile


class FakeSession:
    def __init__(self, tmp_path, sysctl_file):
        self.state = StateFile(tmp_path / "state")
        self.sysctl_file = sysctl_file
        self.seen_at_record: list[str] = []

    def track(self, kind, name, **data):
        self.seen_at_record.append(self.sysctl_file.read_text().strip())  # value when recorded
        return self.state.record("run:test", kind, name, **data)


@pytest.fixture
def sysctl(tmp_path, monkeypatch):
    f = tmp_path / "bpf_stats_enabled"
    f.write_text("0\n")
    monkeypatch.setattr(stats, "_SYSCTL_PATH", f)
    monkeypatch.setattr(stats, "enable_stats_fd", lambda: (_ for _ in ()).throw(stats.StatsUnavailable("old kernel")))
    return f


def test_sysctl_recorded_before_write_and_restored(tmp_path, sysctl):
    s = FakeSession(tmp_path, sysctl)
    with stats.stats_enabled(s, "auto") as how:
        assert how == "sysctl"
        assert sysctl.read_text().strip() == "1"
        (rec,) = s.state.live()
        assert (rec.kind, rec.name, rec.data) == ("sysctl", "kernel.bpf_stats_enabled", {"original": "0"})
    assert s.seen_at_record == ["0"]          # the record existed before the value changed
    assert sysctl.read_text().strip() == "0"
    assert s.state.live() == []


def test_restored_when_the_block_raises(tmp_path, sysctl):
    s = FakeSession(tmp_path, sysctl)
    with pytest.raises(KeyboardInterrupt):
        with stats.stats_enabled(s, "sysctl"):
            raise KeyboardInterrupt
    assert sysctl.read_text().strip() == "0" and s.state.live() == []


def test_already_enabled_is_left_alone(tmp_path, sysctl):
    sysctl.write_text("1\n")
    s = FakeSession(tmp_path, sysctl)
    with stats.stats_enabled(s, "auto") as how:
        assert how == "already"
    assert sysctl.read_text().strip() == "1" and s.seen_at_record == []


def test_sysctl_needs_a_session(sysctl):
    with pytest.raises(stats.StatsUnavailable, match="needs a session"):
        with stats.stats_enabled(None, "sysctl"):
            pass
    assert sysctl.read_text().strip() == "0"


def test_fd_mode_does_not_fall_back(sysctl):
    with pytest.raises(stats.StatsUnavailable, match="old kernel"):
        with stats.stats_enabled(None, "fd"):
            pass


def test_overlapping_runs_share_the_sysctl_and_the_last_one_restores(tmp_path, sysctl):
    """Two profiles at once (issue 16): the first one out must not turn stats off under the second,
    and the second must restore the value found before either, not the first one's '1'."""
    a, b = FakeSession(tmp_path, sysctl), FakeSession(tmp_path, sysctl)
    ca, cb = stats.stats_enabled(a, "sysctl"), stats.stats_enabled(b, "sysctl")
    assert ca.__enter__() == "sysctl" and cb.__enter__() == "sysctl"
    assert [r.data["original"] for r in a.state.live()] == ["0", "0"]
    ca.__exit__(None, None, None)
    assert sysctl.read_text().strip() == "1"        # b still needs them
    cb.__exit__(None, None, None)
    assert sysctl.read_text().strip() == "0" and a.state.live() == []


def test_cleanup_after_a_killed_run_does_not_turn_stats_off_under_a_live_one(tmp_path, sysctl):
    from cnitrace.core.records import Record
    from cnitrace.core.runner import RecordedRunner
    from cnitrace.core import state as st
    live = FakeSession(tmp_path, sysctl)
    # a run killed -9 while holding the sysctl: its record names a process that is gone
    dead = Record("dead01", "run:999999999", "sysctl", stats.SYSCTL, {"original": "0"}, 0.0, 999999999, "1")
    live.state._append({"op": "add", **dead.to_json()})
    sysctl.write_text("1\n")
    with stats.stats_enabled(live, "sysctl") as how:
        assert how == "sysctl"
        res = st.cleanup(live.state, owner="run:999999999", runner=RecordedRunner({}))
        assert [r.id for r in res.removed] == ["dead01"]
        assert sysctl.read_text().strip() == "1"    # released, not restored: the live run holds it
    assert sysctl.read_text().strip() == "0" and live.state.live() == []
